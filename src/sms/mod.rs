//! Sending login codes by SMS. One interface, two doors out: [`LogSms`]
//! writes the code to the log (development only) and [`AliyunSms`] sends it
//! through Alibaba Cloud's Dysmsapi. Which one runs is decided once, at
//! start, by [`SmsSettings::from_lookup`].
//!
//! Failures come back as [`SmsError`]; the caller logs them once, in its
//! request span, and answers 1008. Nothing here logs an error itself.

mod aliyun;

pub use aliyun::AliyunSms;

use crate::secret::Secret;
use futures::future::BoxFuture;
use reqwest::Url;
use std::sync::Arc;
use std::time::Duration;

/// Dysmsapi's public endpoint; `SMS_ENDPOINT` overrides it (tests point it
/// at a local server).
pub const DEFAULT_ENDPOINT: &str = "https://dysmsapi.aliyuncs.com";

/// Whole-request bound (connect, send, answer). Dysmsapi asks callers to
/// allow at least 1 s; a login page cannot usefully wait much longer than 5.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub trait SmsProvider: Send + Sync {
    /// Sends `code` to `phone` (a validated mainland mobile, 11 ASCII digits).
    fn send_code<'a>(
        &'a self,
        phone: &'a str,
        code: &'a str,
    ) -> BoxFuture<'a, Result<(), SmsError>>;

    /// Short name for logs and the health page: `log` or `aliyun`.
    fn name(&self) -> &'static str;
}

/// Why a code was not sent. Carries what the operator needs to act on
/// (the provider's `Code`, `Message` and `RequestId`) and never the secret,
/// the code, or the request URL (whose query holds both phone and code).
#[derive(Debug, thiserror::Error)]
pub enum SmsError {
    /// The provider answered with its own error `Code`, e.g.
    /// `isv.BUSINESS_LIMIT_CONTROL` (rate limit per phone) or
    /// `SignatureDoesNotMatch`.
    #[error("SMS provider refused (HTTP {status}): {code}: {message} (request id {request_id:?})")]
    Refused {
        status: u16,
        code: String,
        message: String,
        request_id: Option<String>,
    },
    /// The provider answered something that is not its JSON answer: a proxy
    /// error page, an empty body, a 500. `body` is a short prefix.
    #[error("SMS provider answered HTTP {status} without a Code: {body:?}")]
    Unexpected { status: u16, body: String },
    #[error("SMS provider did not answer within {0:?}")]
    Timeout(Duration),
    /// Connection refused, TLS failure, DNS, ...
    #[error("SMS provider unreachable: {0}")]
    Transport(String),
    /// The HTTP client could not be built (at start).
    #[error("SMS client setup failed: {0}")]
    Setup(String),
}

/// Which provider to run, parsed from the environment.
#[derive(Clone, Debug)]
pub enum SmsSettings {
    Log,
    Aliyun(AliyunSettings),
}

/// Everything [`AliyunSms`] needs. `Debug` is safe to log: the secret
/// prints as `***`.
#[derive(Clone, Debug)]
pub struct AliyunSettings {
    pub access_key_id: String,
    pub access_key_secret: Secret,
    /// The approved signature (签名) shown at the start of the message.
    pub sign_name: String,
    /// An approved template whose one variable is `${code}`.
    pub template_code: String,
    /// Scheme, host and port only; any path is ignored (Dysmsapi is RPC
    /// style: the path is always `/`).
    pub endpoint: Url,
    /// Bound on the whole request; [`REQUEST_TIMEOUT`] unless a test
    /// shortens it.
    pub timeout: Duration,
}

impl SmsSettings {
    /// Reads SMS_PROVIDER, SMS_ACCESS_KEY_ID, SMS_ACCESS_KEY_SECRET,
    /// SMS_SIGN_NAME, SMS_TEMPLATE_CODE and SMS_ENDPOINT. In production
    /// `SMS_PROVIDER` must be `aliyun` (log is refused) and every aliyun
    /// variable must be set; one message per missing or invalid variable,
    /// naming it, is pushed into `problems`. With problems the returned
    /// value is meaningless (the server refuses to start).
    pub fn from_lookup(
        get: &dyn Fn(&str) -> Option<String>,
        production: bool,
        problems: &mut Vec<String>,
    ) -> SmsSettings {
        // Values are trimmed: a secret pasted with a trailing newline would
        // otherwise fail every signature with nothing in the config to see.
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let use_aliyun = match get("SMS_PROVIDER").as_deref() {
            Some("aliyun") => true,
            Some("log") if production => {
                problems.push(
                    "SMS_PROVIDER=log only writes codes to the log; production requires SMS_PROVIDER=aliyun"
                        .into(),
                );
                false
            }
            Some("log") => false,
            None if production => {
                problems.push(
                    "SMS_PROVIDER is not set; production requires SMS_PROVIDER=aliyun".into(),
                );
                // Still name every missing aliyun variable, so that one
                // failed start lists all there is to fix.
                true
            }
            None => false,
            Some(other) => {
                problems.push(format!("SMS_PROVIDER must be log or aliyun, not {other:?}"));
                production
            }
        };
        if !use_aliyun {
            return SmsSettings::Log;
        }

        let mut need = |k: &str| {
            get(k).unwrap_or_else(|| {
                problems.push(format!("{k} is required with SMS_PROVIDER=aliyun"));
                String::new()
            })
        };
        let access_key_id = need("SMS_ACCESS_KEY_ID");
        let access_key_secret = Secret::new(need("SMS_ACCESS_KEY_SECRET"));
        let sign_name = need("SMS_SIGN_NAME");
        let template_code = need("SMS_TEMPLATE_CODE");

        // The id travels in the Authorization header, between delimiters.
        if !access_key_id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b',')
        {
            problems
                .push("SMS_ACCESS_KEY_ID must be printable ASCII without spaces or commas".into());
        }
        let raw_endpoint = get("SMS_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        let endpoint = match parse_endpoint(&raw_endpoint) {
            Ok(url) => url,
            Err(why) => {
                problems.push(format!("SMS_ENDPOINT {raw_endpoint:?} {why}"));
                Url::parse(DEFAULT_ENDPOINT).expect("the default endpoint parses")
            }
        };

        SmsSettings::Aliyun(AliyunSettings {
            access_key_id,
            access_key_secret,
            sign_name,
            template_code,
            endpoint,
            timeout: REQUEST_TIMEOUT,
        })
    }

    /// The provider these settings describe. Fails only if the HTTP client
    /// cannot be built (TLS roots unavailable), which should stop the start.
    pub fn build(&self) -> Result<Arc<dyn SmsProvider>, SmsError> {
        Ok(match self {
            SmsSettings::Log => Arc::new(LogSms),
            SmsSettings::Aliyun(settings) => Arc::new(AliyunSms::new(settings.clone())?),
        })
    }
}

/// Accepts `https://host[:port]`, and `http://` only to a loopback host:
/// the query carries the phone number and the code, so plain HTTP is for a
/// local stand-in (tests, a mock on the same machine), never the internet.
fn parse_endpoint(raw: &str) -> Result<Url, &'static str> {
    let url = Url::parse(raw).map_err(|_| "is not a URL")?;
    if url.host().is_none() {
        return Err("has no host");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials");
    }
    if url.query().is_some() || url.fragment().is_some() || url.path() != "/" {
        return Err("must be scheme://host[:port] with no path or query");
    }
    let host = url.host_str().unwrap_or_default();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        "http" => Err("must use https (http:// is allowed only for a loopback host)"),
        _ => Err("must use https"),
    }
}

/// Development provider: the code goes to the log instead of a phone.
/// Refused in production by [`SmsSettings::from_lookup`].
pub struct LogSms;

impl SmsProvider for LogSms {
    fn send_code<'a>(
        &'a self,
        phone: &'a str,
        code: &'a str,
    ) -> BoxFuture<'a, Result<(), SmsError>> {
        tracing::info!(phone = %mask_phone(phone), code, "SMS code (log provider: not sent)");
        Box::pin(futures::future::ready(Ok(())))
    }

    fn name(&self) -> &'static str {
        "log"
    }
}

/// `13800138001` → `138****8001`: enough to tell two users apart in a log,
/// not enough to call them. Anything that is not 11 ASCII digits (which
/// callers should never pass) is hidden entirely rather than half-shown.
pub fn mask_phone(phone: &str) -> String {
    if phone.len() == 11 && phone.bytes().all(|b| b.is_ascii_digit()) {
        format!("{}****{}", &phone[..3], &phone[7..])
    } else {
        "***".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| vars.get(k).cloned()
    }

    fn parse(vars: &[(&str, &str)], production: bool) -> (SmsSettings, Vec<String>) {
        let mut problems = Vec::new();
        let settings = SmsSettings::from_lookup(&lookup(vars), production, &mut problems);
        (settings, problems)
    }

    const ALIYUN: &[(&str, &str)] = &[
        ("SMS_PROVIDER", "aliyun"),
        ("SMS_ACCESS_KEY_ID", "LTAI5tExampleId"),
        ("SMS_ACCESS_KEY_SECRET", "the-real-secret-value"),
        ("SMS_SIGN_NAME", "餐厅积分"),
        ("SMS_TEMPLATE_CODE", "SMS_154950909"),
    ];

    #[test]
    fn production_without_sms_variables_names_each_missing_one() {
        let (_, problems) = parse(&[], true);
        for var in [
            "SMS_PROVIDER",
            "SMS_ACCESS_KEY_ID",
            "SMS_ACCESS_KEY_SECRET",
            "SMS_SIGN_NAME",
            "SMS_TEMPLATE_CODE",
        ] {
            assert_eq!(
                problems
                    .iter()
                    .filter(|p| p.starts_with(&format!("{var} ")))
                    .count(),
                1,
                "{var} should be named exactly once in {problems:?}"
            );
        }
        assert_eq!(problems.len(), 5, "{problems:?}");
    }

    #[test]
    fn production_refuses_the_log_provider() {
        let (_, problems) = parse(&[("SMS_PROVIDER", "log")], true);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("SMS_PROVIDER=log"), "{problems:?}");
    }

    #[test]
    fn development_defaults_to_the_log_provider() {
        let (settings, problems) = parse(&[], false);
        assert!(problems.is_empty(), "{problems:?}");
        assert!(matches!(settings, SmsSettings::Log));
        assert_eq!(settings.build().unwrap().name(), "log");
    }

    #[test]
    fn production_with_every_aliyun_variable_uses_aliyun_at_the_public_endpoint() {
        let (settings, problems) = parse(ALIYUN, true);
        assert!(problems.is_empty(), "{problems:?}");
        let SmsSettings::Aliyun(aliyun) = settings else {
            panic!("expected aliyun settings");
        };
        assert_eq!(aliyun.endpoint.as_str(), "https://dysmsapi.aliyuncs.com/");
        assert_eq!(aliyun.timeout, Duration::from_secs(5));
        assert_eq!(aliyun.sign_name, "餐厅积分");
    }

    #[test]
    fn aliyun_in_development_still_needs_its_variables() {
        let (_, problems) = parse(&[("SMS_PROVIDER", "aliyun"), ("SMS_SIGN_NAME", " ")], false);
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems.iter().any(|p| p.starts_with("SMS_SIGN_NAME ")));
    }

    #[test]
    fn an_unknown_provider_is_named() {
        let (_, problems) = parse(&[("SMS_PROVIDER", "twilio")], false);
        assert_eq!(
            problems,
            ["SMS_PROVIDER must be log or aliyun, not \"twilio\""]
        );
    }

    #[test]
    fn plain_http_endpoints_are_accepted_only_on_loopback() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost:9",
            "http://[::1]:1",
            "https://sms.example.com",
        ] {
            let vars = [ALIYUN, &[("SMS_ENDPOINT", ok)]].concat();
            let (_, problems) = parse(&vars, true);
            assert!(problems.is_empty(), "{ok}: {problems:?}");
        }
        for bad in [
            "http://dysmsapi.aliyuncs.com",
            "ftp://127.0.0.1",
            "https://dysmsapi.aliyuncs.com/some/path",
            "https://user:pw@dysmsapi.aliyuncs.com",
            "dysmsapi.aliyuncs.com",
        ] {
            let vars = [ALIYUN, &[("SMS_ENDPOINT", bad)]].concat();
            let (_, problems) = parse(&vars, true);
            assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
            assert!(problems[0].starts_with("SMS_ENDPOINT "), "{problems:?}");
        }
    }

    #[test]
    fn the_secret_never_appears_in_debug_output() {
        let (settings, _) = parse(ALIYUN, true);
        let shown = format!("{settings:?}");
        assert!(!shown.contains("the-real-secret-value"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
    }

    #[test]
    fn phones_are_masked_to_their_first_three_and_last_four_digits() {
        assert_eq!(mask_phone("13800138001"), "138****8001");
        assert_eq!(mask_phone("1380013800"), "***");
        assert_eq!(mask_phone("138001380０1"), "***");
    }

    /// Collects what a `fmt` subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_log_provider_logs_the_code_with_the_phone_masked() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            futures::executor::block_on(LogSms.send_code("13800138001", "654321")).unwrap();
        });
        let logged = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(logged.contains("138****8001"), "{logged}");
        assert!(logged.contains("654321"), "{logged}");
        assert!(!logged.contains("13800138001"), "{logged}");
    }
}
