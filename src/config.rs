//! One `Config`, loaded from the environment (and `.env`) and validated as a
//! whole at start. `.env.example` documents every variable; SECURITY.md the
//! limits.
//!
//! Unconfigured is production: development (the fixed login code, the demo
//! seed, the built-in token secret) exists only with `APP_ENV=development`.
//! Production refuses to start and names every missing or weak variable.

use std::net::SocketAddr;
use std::time::Duration;

use crate::net::{HttpLimits, RateSpec, TrustedProxies};
pub use crate::secret::Secret;
use crate::sms::SmsSettings;

/// The development secret: known to everyone, so production refuses it.
const DEV_JWT_SECRET: &str = "development-only-secret-do-not-use-in-production!";
const MIN_SECRET_LEN: usize = 32;
/// Accepted as a login code in development only.
const DEV_LOGIN_CODE: &str = "123456";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppEnv {
    Development,
    Production,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Where receipt images are stored.
#[derive(Clone, Debug)]
pub enum StorageBackend {
    Local {
        dir: std::path::PathBuf,
    },
    /// S3 or any S3-compatible service (MinIO, Sealos object storage, ...).
    S3 {
        /// `None`: AWS itself.
        endpoint: Option<String>,
        bucket: String,
        region: String,
        access_key_id: String,
        secret_access_key: Secret,
    },
}

/// Per-client-IP limits of the public endpoints.
#[derive(Clone, Debug)]
pub struct IpLimits {
    pub send_code: RateSpec,
    pub login: RateSpec,
    pub refresh: RateSpec,
    pub upload: RateSpec,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub env: AppEnv,
    pub database_url: Secret,
    pub jwt_secret: Secret,
    /// True when JWT_SECRET was not set and the development secret is used.
    pub jwt_secret_is_default: bool,
    pub bind_addr: SocketAddr,
    pub log_level: String,
    pub log_format: LogFormat,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    /// Accepted without an SMS round trip; development only.
    pub dev_login_code: Option<String>,
    pub sms: SmsSettings,
    pub sms_resend_interval: Duration,
    pub sms_daily_limit: u32,
    pub ip_limits: IpLimits,
    /// Plain HTTP connections: timeouts, caps, and the trusted proxies
    /// (`TRUSTED_PROXIES`) whose `X-Forwarded-For` is believed.
    pub http: HttpLimits,
    /// Offset of the business day (daily limits, quotas) from UTC.
    pub business_utc_offset_minutes: i32,
    pub heartbeat_interval: Duration,
    pub ws_max_sockets_per_user: usize,
    pub ws_max_connections: usize,
    pub ws_read_buffer_bytes: usize,
    pub ws_max_frame_bytes: usize,
    pub ws_outbox_capacity: usize,
    /// Sustained commands per second per socket, and the burst above it.
    pub ws_commands_per_sec: u32,
    pub ws_command_burst: u32,
    /// The most events one `sync` replays before answering "too old".
    pub sync_replay_limit: u32,
    pub event_retention: Duration,
    pub db_max_connections: u32,
    pub db_acquire_timeout: Duration,
    pub db_connect_retries: u32,
    pub shutdown_grace: Duration,
    /// How often each instance checks whether the wheel changed elsewhere.
    pub wheel_reload_interval: Duration,
    /// How often old rows are pruned and orphan images swept.
    pub maintenance_interval: Duration,
    pub max_body_bytes: usize,
    /// The largest receipt image accepted.
    pub upload_max_bytes: usize,
    pub upload_daily_limit: u32,
    pub upload_pending_limit: u32,
    pub upload_daily_bytes: u64,
    pub upload_max_in_flight: usize,
    /// Lifetime of a signed receipt URL.
    pub upload_url_ttl: Duration,
    pub review_award_multiplier: i64,
    pub review_award_max: i64,
    pub adjust_max_per_call: i64,
    pub adjust_max_per_day: i64,
    pub storage: StorageBackend,
    /// Redis shared by several instances (`None`: one instance).
    pub redis_url: Option<Secret>,
    /// Channels are named `{prefix}:u:{shard}`, `{prefix}:all`, `{prefix}:control`.
    pub redis_channel_prefix: String,
    /// Prefix of `image_url`s, e.g. `https://api.example.com`; empty gives
    /// root-relative URLs (`/uploads/...`).
    pub public_base_url: String,
    /// Seed demo prizes, a merchant and products into an empty database;
    /// development only.
    pub seed_demo_data: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// Reads variables and collects every problem, so one failed start names
/// all there is to fix.
struct Reader<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<String>,
}

impl Reader<'_> {
    fn get(&self, key: &str) -> Option<String> {
        (self.get)(key).filter(|v| !v.trim().is_empty())
    }

    fn num(&mut self, key: &str, default: u64, min: u64, max: u64) -> u64 {
        match self.get(key) {
            None => default,
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => n,
                _ => {
                    self.problems.push(format!(
                        "{key} must be a whole number from {min} to {max}, not {v:?}"
                    ));
                    default
                }
            },
        }
    }

    fn millis(&mut self, key: &str, default: u64, min: u64, max: u64) -> Duration {
        Duration::from_millis(self.num(key, default, min, max))
    }

    fn rate(&mut self, key: &str, default: &str) -> RateSpec {
        let text = self.get(key).unwrap_or_else(|| default.to_string());
        RateSpec::parse(&text).unwrap_or_else(|why| {
            self.problems.push(format!("{key}: {why}"));
            RateSpec::Off
        })
    }

    fn env(&mut self) -> AppEnv {
        match self.get("APP_ENV").as_deref().map(str::trim) {
            // Unset is production: a forgotten variable must not open the server.
            None | Some("production") | Some("prod") => AppEnv::Production,
            Some("development") | Some("dev") => AppEnv::Development,
            Some(other) => {
                self.problems.push(format!(
                    "APP_ENV must be development or production, not {other:?}"
                ));
                AppEnv::Production
            }
        }
    }

    fn jwt_secret(&mut self, env: AppEnv) -> (String, bool) {
        let production = env == AppEnv::Production;
        match self.get("JWT_SECRET") {
            Some(s) if production && s.len() < MIN_SECRET_LEN => {
                self.problems.push(format!(
                    "JWT_SECRET is too weak: at least {MIN_SECRET_LEN} characters are required in production"
                ));
                (s, false)
            }
            Some(s) if production && s == DEV_JWT_SECRET => {
                self.problems
                    .push("JWT_SECRET is the public development secret".into());
                (s, false)
            }
            Some(s) => (s, false),
            None if production => {
                self.problems.push(
                    "JWT_SECRET is not set; production requires a random secret of at least 32 characters (openssl rand -base64 48)"
                        .into(),
                );
                (String::new(), false)
            }
            None => (DEV_JWT_SECRET.to_string(), true),
        }
    }

    fn bind_addr(&mut self) -> SocketAddr {
        let default: SocketAddr = ([127, 0, 0, 1], 3000).into();
        match self.get("BIND_ADDR") {
            None => default,
            Some(v) => v.trim().parse().unwrap_or_else(|_| {
                self.problems.push(format!(
                    "BIND_ADDR must be an address and port such as 127.0.0.1:3000 or 0.0.0.0:3000, not {v:?}"
                ));
                default
            }),
        }
    }

    fn trusted_proxies(&mut self) -> TrustedProxies {
        let list = self.get("TRUSTED_PROXIES").unwrap_or_default();
        TrustedProxies::parse(&list).unwrap_or_else(|e| {
            self.problems.push(format!(
                "TRUSTED_PROXIES must be comma-separated CIDRs such as 127.0.0.1/32: {e}"
            ));
            TrustedProxies::default()
        })
    }

    fn log_format(&mut self, env: AppEnv) -> LogFormat {
        match self.get("LOG_FORMAT").as_deref() {
            Some("json") => LogFormat::Json,
            Some("pretty") => LogFormat::Pretty,
            None if env == AppEnv::Production => LogFormat::Json,
            None => LogFormat::Pretty,
            Some(other) => {
                self.problems
                    .push(format!("LOG_FORMAT must be json or pretty, not {other:?}"));
                LogFormat::Pretty
            }
        }
    }

    fn storage(&mut self) -> StorageBackend {
        let local = |dir: Option<String>| StorageBackend::Local {
            dir: dir.unwrap_or_else(|| ".data/uploads".into()).into(),
        };
        match self.get("STORAGE_BACKEND").as_deref().unwrap_or("local") {
            "local" => local(self.get("UPLOAD_DIR")),
            "s3" => {
                let mut need = |k: &str| {
                    self.get(k).unwrap_or_else(|| {
                        self.problems
                            .push(format!("{k} is required with STORAGE_BACKEND=s3"));
                        String::new()
                    })
                };
                let bucket = need("S3_BUCKET");
                let access_key_id = need("S3_ACCESS_KEY_ID");
                let secret_access_key = Secret::new(need("S3_SECRET_ACCESS_KEY"));
                StorageBackend::S3 {
                    endpoint: self.get("S3_ENDPOINT"),
                    bucket,
                    region: self.get("S3_REGION").unwrap_or_else(|| "us-east-1".into()),
                    access_key_id,
                    secret_access_key,
                }
            }
            other => {
                self.problems.push(format!(
                    "STORAGE_BACKEND must be local or s3, not {other:?}"
                ));
                local(None)
            }
        }
    }

    fn http(&mut self) -> HttpLimits {
        HttpLimits {
            header_timeout: self.millis("HTTP_HEADER_TIMEOUT_MS", 10_000, 100, 300_000),
            body_timeout: self.millis("HTTP_BODY_TIMEOUT_MS", 30_000, 100, 600_000),
            idle_timeout: self.millis("HTTP_IDLE_TIMEOUT_MS", 75_000, 100, 3_600_000),
            max_connections: self.num("HTTP_MAX_CONNECTIONS", 4_000, 1, 1_000_000) as usize,
            max_per_ip: self.num("HTTP_MAX_CONNECTIONS_PER_IP", 64, 1, 1_000_000) as usize,
            trusted: self.trusted_proxies(),
        }
    }

    fn ip_limits(&mut self) -> IpLimits {
        IpLimits {
            send_code: self.rate("RATE_LIMIT_SEND_CODE", "200/h:20"),
            login: self.rate("RATE_LIMIT_LOGIN", "300/min:150"),
            refresh: self.rate("RATE_LIMIT_REFRESH", "600/min:120"),
            upload: self.rate("RATE_LIMIT_UPLOAD", "60/min:20"),
        }
    }
}

impl Config {
    /// Reads `.env` (if present) and the environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        let _ = dotenvy::dotenv();
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Builds and validates a config from any key lookup, so that the rules
    /// can be tested without touching the process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut r = Reader {
            get: &get,
            problems: Vec::new(),
        };
        let env = r.env();
        let production = env == AppEnv::Production;
        let development = !production;

        let database_url = r.get("DATABASE_URL");
        if database_url.is_none() {
            r.problems.push(
                "DATABASE_URL is not set (scripts/run provides a private MariaDB in development)"
                    .into(),
            );
        }
        let (jwt_secret, jwt_secret_is_default) = r.jwt_secret(env);
        let sms = SmsSettings::from_lookup(&get, production, &mut r.problems);
        let bind_addr = r.bind_addr();
        let log_format = r.log_format(env);
        let storage = r.storage();
        let http = r.http();
        let ip_limits = r.ip_limits();
        let redis_url = r.get("REDIS_URL");
        if let Some(url) = &redis_url
            && !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("redis+unix://"))
        {
            r.problems
                .push("REDIS_URL must be a redis:// URL such as redis://127.0.0.1:6379/".into());
        }
        let redis_channel_prefix = r.get("REDIS_CHANNEL_PREFIX").unwrap_or_else(|| "rp".into());
        if !redis_channel_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            r.problems
                .push("REDIS_CHANNEL_PREFIX must be letters, digits, _ - or .".into());
        }

        let config = Config {
            env,
            database_url: Secret::new(database_url.unwrap_or_default()),
            jwt_secret: Secret::new(jwt_secret),
            jwt_secret_is_default,
            bind_addr,
            log_level: r.get("LOG_LEVEL").unwrap_or_else(|| "info".into()),
            log_format,
            access_token_ttl: Duration::from_secs(r.num(
                "ACCESS_TOKEN_TTL_S",
                7200,
                60,
                86_400 * 7,
            )),
            refresh_token_ttl: Duration::from_secs(r.num(
                "REFRESH_TOKEN_TTL_S",
                30 * 86_400,
                3600,
                365 * 86_400,
            )),
            dev_login_code: development.then(|| DEV_LOGIN_CODE.to_string()),
            sms,
            sms_resend_interval: Duration::from_secs(60),
            sms_daily_limit: 10,
            ip_limits,
            http,
            business_utc_offset_minutes: 8 * 60,
            heartbeat_interval: r.millis("HEARTBEAT_INTERVAL_MS", 30_000, 100, 600_000),
            ws_max_sockets_per_user: r.num("WS_MAX_SOCKETS_PER_USER", 5, 1, 100) as usize,
            ws_max_connections: r.num("WS_MAX_CONNECTIONS", 19_000, 1, 10_000_000) as usize,
            ws_read_buffer_bytes: r.num("WS_READ_BUFFER_BYTES", 256, 256, 1 << 20) as usize,
            ws_max_frame_bytes: r.num("WS_MAX_FRAME_BYTES", 16 * 1024, 256, 1 << 20) as usize,
            ws_outbox_capacity: r.num("WS_OUTBOX_CAPACITY", 64, 4, 65_536) as usize,
            ws_commands_per_sec: r.num("WS_COMMANDS_PER_SEC", 20, 1, 100_000) as u32,
            ws_command_burst: r.num("WS_COMMAND_BURST", 40, 1, 100_000) as u32,
            sync_replay_limit: r.num("SYNC_REPLAY_LIMIT", 1000, 1, 100_000) as u32,
            event_retention: Duration::from_secs(
                r.num("EVENT_RETENTION_DAYS", 30, 1, 3650) * 86_400,
            ),
            db_max_connections: r.num("DB_MAX_CONNECTIONS", 16, 1, 1000) as u32,
            db_acquire_timeout: r.millis("DB_ACQUIRE_TIMEOUT_MS", 5000, 10, 600_000),
            db_connect_retries: r.num("DB_CONNECT_RETRIES", 10, 0, 1000) as u32,
            shutdown_grace: r.millis("SHUTDOWN_GRACE_MS", 10_000, 0, 600_000),
            wheel_reload_interval: Duration::from_secs(10),
            maintenance_interval: Duration::from_secs(r.num(
                "MAINTENANCE_INTERVAL_S",
                600,
                1,
                86_400,
            )),
            max_body_bytes: 64 * 1024,
            upload_max_bytes: r.num("UPLOAD_MAX_BYTES", 5 * 1024 * 1024, 1024, 64 * 1024 * 1024)
                as usize,
            upload_daily_limit: r.num("UPLOAD_DAILY_LIMIT", 20, 1, 10_000) as u32,
            upload_pending_limit: r.num("UPLOAD_PENDING_LIMIT", 10, 1, 10_000) as u32,
            upload_daily_bytes: r.num("UPLOAD_DAILY_BYTES", 50 * 1024 * 1024, 1024, 1 << 40),
            upload_max_in_flight: r.num("UPLOAD_MAX_IN_FLIGHT", 16, 1, 10_000) as usize,
            upload_url_ttl: Duration::from_secs(r.num("UPLOAD_URL_TTL_S", 900, 60, 86_400)),
            review_award_multiplier: r.num("REVIEW_AWARD_MULTIPLIER", 10, 1, 1000) as i64,
            review_award_max: r.num("REVIEW_AWARD_MAX", 50_000, 1, 1_000_000) as i64,
            adjust_max_per_call: r.num("ADJUST_MAX_PER_CALL", 10_000, 1, 1_000_000) as i64,
            adjust_max_per_day: r.num("ADJUST_MAX_PER_DAY", 100_000, 1, 100_000_000) as i64,
            storage,
            redis_url: redis_url.map(Secret::new),
            redis_channel_prefix,
            public_base_url: r.get("PUBLIC_BASE_URL").unwrap_or_default(),
            seed_demo_data: development,
        };
        if !r.problems.is_empty() {
            return Err(ConfigError(r.problems.join("; ")));
        }
        Ok(config)
    }

    pub fn is_production(&self) -> bool {
        self.env == AppEnv::Production
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    const SMS: [(&str, &str); 5] = [
        ("SMS_PROVIDER", "aliyun"),
        ("SMS_ACCESS_KEY_ID", "LTAIexample"),
        ("SMS_ACCESS_KEY_SECRET", "secret"),
        ("SMS_SIGN_NAME", "餐厅"),
        ("SMS_TEMPLATE_CODE", "SMS_1"),
    ];

    #[test]
    fn unconfigured_is_production_and_names_every_missing_variable() {
        let err = load(&[]).unwrap_err().to_string();
        for name in [
            "DATABASE_URL",
            "JWT_SECRET",
            "SMS_PROVIDER",
            "SMS_ACCESS_KEY_ID",
            "SMS_ACCESS_KEY_SECRET",
            "SMS_SIGN_NAME",
            "SMS_TEMPLATE_CODE",
        ] {
            assert!(err.contains(name), "{name} not named in: {err}");
        }
    }

    #[test]
    fn production_with_a_weak_secret_refuses_to_start() {
        let mut vars = vec![
            ("APP_ENV", "production"),
            ("DATABASE_URL", "mysql://x/y"),
            ("JWT_SECRET", "short"),
        ];
        vars.extend(SMS);
        let err = load(&vars).unwrap_err();
        assert!(err.to_string().contains("JWT_SECRET is too weak"), "{err}");
    }

    #[test]
    fn production_configured_has_no_development_code_or_seed_and_binds_loopback() {
        let secret = "s".repeat(40);
        let mut vars = vec![
            ("DATABASE_URL", "mysql://x/y"),
            ("JWT_SECRET", secret.as_str()),
        ];
        vars.extend(SMS);
        let c = load(&vars).unwrap();
        assert!(c.is_production());
        assert_eq!(c.dev_login_code, None);
        assert!(!c.seed_demo_data);
        assert_eq!(c.bind_addr.to_string(), "127.0.0.1:3000");
    }

    #[test]
    fn development_only_when_asked_falls_back_to_the_dev_secret_and_says_so() {
        let c = load(&[("APP_ENV", "development"), ("DATABASE_URL", "mysql://x/y")]).unwrap();
        assert!(c.jwt_secret_is_default);
        assert_eq!(c.dev_login_code.as_deref(), Some("123456"));
        assert!(
            !format!("{c:?}").contains(DEV_JWT_SECRET),
            "secrets stay out of Debug"
        );
    }

    #[test]
    fn bad_values_are_reported_together() {
        let err = load(&[
            ("APP_ENV", "development"),
            ("DATABASE_URL", "mysql://x/y"),
            ("BIND_ADDR", "everywhere"),
            ("HEARTBEAT_INTERVAL_MS", "5"),
            ("RATE_LIMIT_LOGIN", "lots"),
            ("TRUSTED_PROXIES", "10.0.0.0/8, nginx"),
        ])
        .unwrap_err()
        .to_string();
        for name in [
            "BIND_ADDR",
            "HEARTBEAT_INTERVAL_MS",
            "RATE_LIMIT_LOGIN",
            "TRUSTED_PROXIES",
        ] {
            assert!(err.contains(name), "{name}: {err}");
        }
    }
}
