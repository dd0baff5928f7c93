//! One `Config`, loaded from the environment (and `.env`) and validated as a
//! whole at start. `.env.example` documents every variable.

use std::time::Duration;

/// The development secret: known to everyone, so production refuses it.
const DEV_JWT_SECRET: &str = "development-only-secret-do-not-use-in-production!";
const MIN_SECRET_LEN: usize = 32;

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

/// A value that must never reach a log line.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
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

#[derive(Clone, Debug)]
pub struct Config {
    pub env: AppEnv,
    pub database_url: Secret,
    pub jwt_secret: Secret,
    /// True when JWT_SECRET was not set and the development secret is used.
    pub jwt_secret_is_default: bool,
    pub port: u16,
    pub log_level: String,
    pub log_format: LogFormat,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    /// Accepted without an SMS round trip in development.
    pub dev_login_code: Option<String>,
    pub sms_resend_interval: Duration,
    pub sms_daily_limit: u32,
    /// Offset of the business day (for daily draw limits) from UTC.
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
    pub max_body_bytes: usize,
    /// The largest receipt image accepted.
    pub upload_max_bytes: usize,
    pub storage: StorageBackend,
    /// Prefix of `image_url`s, e.g. `https://api.example.com`; empty gives
    /// root-relative URLs (`/uploads/...`).
    pub public_base_url: String,
    /// Seed demo prizes, a merchant and products into an empty database.
    pub seed_demo_data: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Reads `.env` (if present) and the environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        let _ = dotenvy::dotenv();
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Builds and validates a config from any key lookup, so that the rules
    /// can be tested without touching the process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let mut problems = Vec::new();

        let env = match get("APP_ENV").as_deref().map(str::trim) {
            None | Some("development") | Some("dev") => AppEnv::Development,
            Some("production") | Some("prod") => AppEnv::Production,
            Some(other) => {
                problems.push(format!(
                    "APP_ENV must be development or production, not {other:?}"
                ));
                AppEnv::Development
            }
        };

        let database_url = get("DATABASE_URL");
        if database_url.is_none() {
            problems
                .push("DATABASE_URL is not set (scripts/run provides a private MariaDB)".into());
        }

        let (jwt_secret, jwt_secret_is_default) = match get("JWT_SECRET") {
            Some(s) if env == AppEnv::Production && s.len() < MIN_SECRET_LEN => {
                problems.push(format!(
                    "JWT_SECRET is too weak: at least {MIN_SECRET_LEN} characters are required in production"
                ));
                (s, false)
            }
            Some(s) if env == AppEnv::Production && s == DEV_JWT_SECRET => {
                problems.push("JWT_SECRET is the public development secret".into());
                (s, false)
            }
            Some(s) => (s, false),
            None if env == AppEnv::Production => {
                problems.push("JWT_SECRET is not set; production requires a random secret of at least 32 characters".into());
                (String::new(), false)
            }
            None => (DEV_JWT_SECRET.to_string(), true),
        };

        let log_format = match get("LOG_FORMAT").as_deref() {
            Some("json") => LogFormat::Json,
            Some("pretty") => LogFormat::Pretty,
            None if env == AppEnv::Production => LogFormat::Json,
            None => LogFormat::Pretty,
            Some(other) => {
                problems.push(format!("LOG_FORMAT must be json or pretty, not {other:?}"));
                LogFormat::Pretty
            }
        };

        let mut num = |key: &str, default: u64, min: u64, max: u64| -> u64 {
            match get(key) {
                None => default,
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(n) if (min..=max).contains(&n) => n,
                    _ => {
                        problems.push(format!(
                            "{key} must be a whole number from {min} to {max}, not {v:?}"
                        ));
                        default
                    }
                },
            }
        };

        let port = num("PORT", 3000, 0, 65535) as u16;
        let heartbeat_ms = num("HEARTBEAT_INTERVAL_MS", 30_000, 100, 600_000);
        let ws_max_sockets_per_user = num("WS_MAX_SOCKETS_PER_USER", 5, 1, 100) as usize;
        let ws_max_connections = num("WS_MAX_CONNECTIONS", 19_000, 1, 10_000_000) as usize;
        let ws_read_buffer_bytes = num("WS_READ_BUFFER_BYTES", 256, 256, 1 << 20) as usize;
        let ws_max_frame_bytes = num("WS_MAX_FRAME_BYTES", 16 * 1024, 256, 1 << 20) as usize;
        let ws_outbox_capacity = num("WS_OUTBOX_CAPACITY", 64, 4, 65_536) as usize;
        let ws_commands_per_sec = num("WS_COMMANDS_PER_SEC", 20, 1, 100_000) as u32;
        let ws_command_burst = num("WS_COMMAND_BURST", 40, 1, 100_000) as u32;
        let db_max_connections = num("DB_MAX_CONNECTIONS", 32, 1, 1000) as u32;
        let db_acquire_timeout_ms = num("DB_ACQUIRE_TIMEOUT_MS", 5000, 10, 600_000);
        let db_connect_retries = num("DB_CONNECT_RETRIES", 10, 0, 1000) as u32;
        let shutdown_grace_ms = num("SHUTDOWN_GRACE_MS", 10_000, 0, 600_000);
        let access_ttl = num("ACCESS_TOKEN_TTL_S", 7200, 60, 86_400 * 7);
        let refresh_ttl = num("REFRESH_TOKEN_TTL_S", 30 * 86_400, 3600, 365 * 86_400);
        let sync_replay_limit = num("SYNC_REPLAY_LIMIT", 1000, 1, 100_000) as u32;
        let event_retention_days = num("EVENT_RETENTION_DAYS", 30, 1, 3650);
        let upload_max_bytes =
            num("UPLOAD_MAX_BYTES", 5 * 1024 * 1024, 1024, 64 * 1024 * 1024) as usize;

        let storage = match get("STORAGE_BACKEND").as_deref().unwrap_or("local") {
            "local" => StorageBackend::Local {
                dir: get("UPLOAD_DIR")
                    .unwrap_or_else(|| ".data/uploads".into())
                    .into(),
            },
            "s3" => {
                let mut need = |k: &str| {
                    get(k).unwrap_or_else(|| {
                        problems.push(format!("{k} is required with STORAGE_BACKEND=s3"));
                        String::new()
                    })
                };
                let bucket = need("S3_BUCKET");
                let access_key_id = need("S3_ACCESS_KEY_ID");
                let secret_access_key = Secret(need("S3_SECRET_ACCESS_KEY"));
                StorageBackend::S3 {
                    endpoint: get("S3_ENDPOINT"),
                    bucket,
                    region: get("S3_REGION").unwrap_or_else(|| "us-east-1".into()),
                    access_key_id,
                    secret_access_key,
                }
            }
            other => {
                problems.push(format!(
                    "STORAGE_BACKEND must be local or s3, not {other:?}"
                ));
                StorageBackend::Local {
                    dir: ".data/uploads".into(),
                }
            }
        };

        if !problems.is_empty() {
            return Err(ConfigError(problems.join("; ")));
        }

        Ok(Config {
            env,
            database_url: Secret(database_url.unwrap_or_default()),
            jwt_secret: Secret(jwt_secret),
            jwt_secret_is_default,
            port,
            log_level: get("LOG_LEVEL").unwrap_or_else(|| "info".into()),
            log_format,
            access_token_ttl: Duration::from_secs(access_ttl),
            refresh_token_ttl: Duration::from_secs(refresh_ttl),
            dev_login_code: (env == AppEnv::Development).then(|| "123456".to_string()),
            sms_resend_interval: Duration::from_secs(60),
            sms_daily_limit: 10,
            business_utc_offset_minutes: 8 * 60,
            heartbeat_interval: Duration::from_millis(heartbeat_ms),
            ws_max_sockets_per_user,
            ws_max_connections,
            ws_read_buffer_bytes,
            ws_max_frame_bytes,
            ws_outbox_capacity,
            ws_commands_per_sec,
            ws_command_burst,
            sync_replay_limit,
            event_retention: Duration::from_secs(event_retention_days * 86_400),
            db_max_connections,
            db_acquire_timeout: Duration::from_millis(db_acquire_timeout_ms),
            db_connect_retries,
            shutdown_grace: Duration::from_millis(shutdown_grace_ms),
            wheel_reload_interval: Duration::from_secs(10),
            max_body_bytes: 64 * 1024,
            upload_max_bytes,
            storage,
            public_base_url: get("PUBLIC_BASE_URL").unwrap_or_default(),
            seed_demo_data: env == AppEnv::Development,
        })
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

    #[test]
    fn production_without_a_secret_refuses_to_start_and_names_the_variable() {
        let err = load(&[("APP_ENV", "production"), ("DATABASE_URL", "mysql://x/y")]).unwrap_err();
        assert!(err.to_string().contains("JWT_SECRET"), "{err}");
    }

    #[test]
    fn production_with_a_weak_secret_refuses_to_start() {
        let err = load(&[
            ("APP_ENV", "production"),
            ("DATABASE_URL", "mysql://x/y"),
            ("JWT_SECRET", "short"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("JWT_SECRET is too weak"), "{err}");
    }

    #[test]
    fn development_falls_back_to_the_dev_secret_and_says_so() {
        let c = load(&[("DATABASE_URL", "mysql://x/y")]).unwrap();
        assert!(c.jwt_secret_is_default);
        assert_eq!(c.dev_login_code.as_deref(), Some("123456"));
        assert!(
            !format!("{c:?}").contains(DEV_JWT_SECRET),
            "secrets stay out of Debug"
        );
    }

    #[test]
    fn bad_numbers_are_reported_together() {
        let err = load(&[
            ("DATABASE_URL", "mysql://x/y"),
            ("PORT", "http"),
            ("HEARTBEAT_INTERVAL_MS", "5"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("PORT") && err.contains("HEARTBEAT_INTERVAL_MS"),
            "{err}"
        );
    }
}
