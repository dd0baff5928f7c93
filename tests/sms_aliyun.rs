//! `AliyunSms` against a stand-in Dysmsapi on 127.0.0.1 that checks every
//! request the way the real gateway does: it recomputes the
//! ACS3-HMAC-SHA256 signature from the bytes it actually received, with its
//! own canonicalization written here (nothing in this file calls the
//! module's signing code), and answers in Dysmsapi's JSON.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use hmac::{Hmac, Mac};
use restaurant_points::sms::{AliyunSettings, AliyunSms, SmsError, SmsProvider, SmsSettings};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEY_ID: &str = "LTAI5tTestKeyId";
/// The account's secret, as the gateway knows it.
const SECRET: &str = "account-secret-known-to-the-gateway";
/// A space and UTF-8, so the query's percent-encoding is exercised.
const SIGN_NAME: &str = "餐厅 积分";
const TEMPLATE_CODE: &str = "SMS_154950909";
const PHONE: &str = "13800138001";
const CODE: &str = "482913";

/// What the stand-in does once a request has passed the signature check.
#[derive(Clone, Copy)]
enum Behaviour {
    Accept,
    /// Dysmsapi's per-phone rate limit: HTTP 200 with an error Code.
    RateLimit,
    /// A 500 with a body that is not Dysmsapi's JSON.
    Crash,
    /// Never answers (not even the status line).
    Hang,
}

struct Gateway {
    behaviour: Behaviour,
    /// `127.0.0.1:port`: the only Host this gateway answers to.
    authority: String,
    /// Nonces already used; the real gateway refuses a repeat.
    nonces: Mutex<HashSet<String>>,
    /// Decoded query parameters of each request that passed verification.
    accepted: Mutex<Vec<BTreeMap<String, String>>>,
}

async fn start(behaviour: Behaviour) -> (String, Arc<Gateway>) {
    // Bound before the server task starts: connections queue until it
    // accepts, so no readiness wait is needed.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority = listener.local_addr().unwrap().to_string();
    let endpoint = format!("http://{authority}");
    let gateway = Arc::new(Gateway {
        behaviour,
        authority,
        nonces: Mutex::default(),
        accepted: Mutex::default(),
    });
    let app = Router::new()
        .route("/", any(dysmsapi))
        .with_state(gateway.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (endpoint, gateway)
}

/// Settings as production would read them, pointed at `endpoint`.
fn settings(endpoint: &str, secret: &str) -> AliyunSettings {
    let vars: HashMap<&str, &str> = HashMap::from([
        ("SMS_PROVIDER", "aliyun"),
        ("SMS_ACCESS_KEY_ID", KEY_ID),
        ("SMS_ACCESS_KEY_SECRET", secret),
        ("SMS_SIGN_NAME", SIGN_NAME),
        ("SMS_TEMPLATE_CODE", TEMPLATE_CODE),
        ("SMS_ENDPOINT", endpoint),
    ]);
    let mut problems = Vec::new();
    let settings =
        SmsSettings::from_lookup(&|k| vars.get(k).map(|v| v.to_string()), true, &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    match settings {
        SmsSettings::Aliyun(aliyun) => aliyun,
        SmsSettings::Log => panic!("expected aliyun settings"),
    }
}

async fn dysmsapi(
    State(gateway): State<Arc<Gateway>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Behaviour::Hang = gateway.behaviour {
        std::future::pending::<()>().await;
    }
    let params = match verify(&gateway, &method, &uri, &headers, &body) {
        Ok(params) => params,
        Err((code, message)) => return answer(StatusCode::BAD_REQUEST, code, &message),
    };
    gateway.accepted.lock().unwrap().push(params);
    match gateway.behaviour {
        Behaviour::Accept => answer(StatusCode::OK, "OK", "OK"),
        Behaviour::RateLimit => answer(
            StatusCode::OK,
            "isv.BUSINESS_LIMIT_CONTROL",
            "触发小时级流控Permits:5",
        ),
        Behaviour::Crash | Behaviour::Hang => {
            (StatusCode::INTERNAL_SERVER_ERROR, "upstream exploded").into_response()
        }
    }
}

fn answer(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "Code": code,
        "Message": message,
        "RequestId": "F655A8D5-B967-440B-8683-DAD6FF8DE990",
        "BizId": "900619746936498440^0",
    });
    (status, axum::Json(body)).into_response()
}

type Refusal = (&'static str, String);

/// The gateway's checks, in its error codes. Returns the decoded query.
fn verify(
    gateway: &Gateway,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<BTreeMap<String, String>, Refusal> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let refuse = |code: &'static str, message: String| Err((code, message));

    if method != Method::POST || uri.path() != "/" {
        return refuse("InvalidAction", format!("{method} {}", uri.path()));
    }
    if header("host").as_deref() != Some(gateway.authority.as_str()) {
        return refuse("InvalidHost", format!("{:?}", header("host")));
    }
    if header("x-acs-action").as_deref() != Some("SendSms") {
        return refuse(
            "InvalidAction.NotFound",
            format!("{:?}", header("x-acs-action")),
        );
    }
    if header("x-acs-version").as_deref() != Some("2017-05-25") {
        return refuse("InvalidVersion", format!("{:?}", header("x-acs-version")));
    }

    let payload_hash = hex::encode(Sha256::digest(body));
    if header("x-acs-content-sha256").as_deref() != Some(payload_hash.as_str()) {
        return refuse(
            "InvalidContentSha256",
            format!("body hashes to {payload_hash}"),
        );
    }

    let date = header("x-acs-date").unwrap_or_default();
    let Ok(sent_at) = chrono::NaiveDateTime::parse_from_str(&date, "%Y-%m-%dT%H:%M:%SZ") else {
        return refuse("InvalidTimeStamp.Format", date);
    };
    let age = chrono::Utc::now().naive_utc() - sent_at;
    if age.num_seconds().abs() > 60 {
        return refuse("InvalidTimeStamp.Expired", format!("{date} is {age} old"));
    }

    let nonce = header("x-acs-signature-nonce").unwrap_or_default();
    if nonce.is_empty() || !gateway.nonces.lock().unwrap().insert(nonce.clone()) {
        return refuse("SignatureNonceUsed", nonce);
    }

    let Some(fields) = header("authorization")
        .as_deref()
        .and_then(|a| a.strip_prefix("ACS3-HMAC-SHA256 "))
        .map(|rest| {
            rest.split(',')
                .filter_map(|f| f.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect::<HashMap<_, _>>()
        })
    else {
        return refuse(
            "IncompleteSignature",
            "no ACS3-HMAC-SHA256 Authorization".into(),
        );
    };
    let field = |k: &str| fields.get(k).cloned().unwrap_or_default();
    if field("Credential") != KEY_ID {
        return refuse("InvalidAccessKeyId.NotFound", field("Credential"));
    }

    // Every host, content-type and x-acs-* header sent must be signed, and
    // the list must be lower case and sorted, as the documentation demands.
    let signed_list = field("SignedHeaders");
    let signed: Vec<&str> = signed_list.split(';').collect();
    let mut sorted = signed.clone();
    sorted.sort();
    if signed != sorted || signed_list.to_lowercase() != signed_list {
        return refuse(
            "IncompleteSignature",
            format!("SignedHeaders {signed_list}"),
        );
    }
    for name in headers.keys().map(|n| n.as_str()) {
        let must_sign = name == "host" || name == "content-type" || name.starts_with("x-acs-");
        if must_sign && !signed.contains(&name) {
            return refuse("IncompleteSignature", format!("{name} is not signed"));
        }
    }
    for name in [
        "host",
        "x-acs-action",
        "x-acs-content-sha256",
        "x-acs-date",
        "x-acs-signature-nonce",
        "x-acs-version",
    ] {
        if !signed.contains(&name) {
            return refuse("IncompleteSignature", format!("{name} is not signed"));
        }
    }
    let mut canonical_headers = String::new();
    for name in &signed {
        let Some(value) = header(name) else {
            return refuse(
                "IncompleteSignature",
                format!("{name} is signed but absent"),
            );
        };
        canonical_headers += &format!("{name}:{}\n", value.trim());
    }

    // The query as received: decode, then re-encode canonically.
    let mut params = Vec::new();
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match (decode(name), decode(value)) {
            (Some(name), Some(value)) => params.push((name, value)),
            _ => return refuse("InvalidParameter", format!("bad escape in {pair}")),
        }
    }
    params.sort();
    let canonical_query = params
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&");

    let canonical_request =
        format!("POST\n/\n{canonical_query}\n{canonical_headers}\n{signed_list}\n{payload_hash}");
    let string_to_sign = format!(
        "ACS3-HMAC-SHA256\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(string_to_sign.as_bytes());
    if field("Signature") != hex::encode(mac.finalize().into_bytes()) {
        return refuse(
            "SignatureDoesNotMatch",
            format!(
                "Specified signature does not match our calculation. The server string to sign is: {string_to_sign}"
            ),
        );
    }
    Ok(params.into_iter().collect())
}

/// RFC 3986 unreserved characters stay; everything else is %XX.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[tokio::test]
async fn a_signed_code_is_accepted_by_a_gateway_that_checks_the_signature() {
    let (endpoint, gateway) = start(Behaviour::Accept).await;
    let provider = SmsSettings::Aliyun(settings(&endpoint, SECRET))
        .build()
        .unwrap();
    assert_eq!(provider.name(), "aliyun");

    provider.send_code(PHONE, CODE).await.unwrap();
    provider.send_code(PHONE, "000111").await.unwrap();

    let accepted = gateway.accepted.lock().unwrap();
    assert_eq!(accepted.len(), 2, "each request used a fresh nonce");
    let first = &accepted[0];
    assert_eq!(first["PhoneNumbers"], PHONE);
    assert_eq!(first["SignName"], SIGN_NAME);
    assert_eq!(first["TemplateCode"], TEMPLATE_CODE);
    let template_param: serde_json::Value = serde_json::from_str(&first["TemplateParam"]).unwrap();
    assert_eq!(template_param, serde_json::json!({ "code": CODE }));
    assert_eq!(first.len(), 4, "{first:?}");
}

#[tokio::test]
async fn a_wrong_secret_is_caught_by_the_gateway_signature_check() {
    let (endpoint, gateway) = start(Behaviour::Accept).await;
    let provider = AliyunSms::new(settings(&endpoint, "not-the-account-secret")).unwrap();

    let err = provider.send_code(PHONE, CODE).await.unwrap_err();

    assert!(
        matches!(&err, SmsError::Refused { status: 400, code, .. } if code == "SignatureDoesNotMatch"),
        "{err:?}"
    );
    assert!(gateway.accepted.lock().unwrap().is_empty());
    assert!(!err.to_string().contains("not-the-account-secret"));
}

#[tokio::test]
async fn a_provider_refusal_becomes_an_error_carrying_its_code_and_message() {
    let (endpoint, _gateway) = start(Behaviour::RateLimit).await;
    let provider = AliyunSms::new(settings(&endpoint, SECRET)).unwrap();

    let err = provider.send_code(PHONE, CODE).await.unwrap_err();

    let SmsError::Refused {
        status,
        code,
        message,
        request_id,
    } = &err
    else {
        panic!("expected a refusal, got {err:?}");
    };
    assert_eq!(*status, 200);
    assert_eq!(code, "isv.BUSINESS_LIMIT_CONTROL");
    assert_eq!(message, "触发小时级流控Permits:5");
    assert!(request_id.is_some());
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("isv.BUSINESS_LIMIT_CONTROL"), "{shown}");
    assert!(!shown.contains(SECRET) && !shown.contains(CODE), "{shown}");
}

#[tokio::test]
async fn a_server_error_becomes_an_sms_error() {
    let (endpoint, _gateway) = start(Behaviour::Crash).await;
    let provider = AliyunSms::new(settings(&endpoint, SECRET)).unwrap();

    let err = provider.send_code(PHONE, CODE).await.unwrap_err();

    assert!(
        matches!(&err, SmsError::Unexpected { status: 500, body } if body == "upstream exploded"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_gateway_that_never_answers_times_out() {
    let (endpoint, _gateway) = start(Behaviour::Hang).await;
    let mut settings = settings(&endpoint, SECRET);
    settings.timeout = Duration::from_millis(300);
    let provider = AliyunSms::new(settings).unwrap();

    let started = Instant::now();
    let err = provider.send_code(PHONE, CODE).await.unwrap_err();

    assert!(matches!(err, SmsError::Timeout(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_unreachable_gateway_is_an_error_that_hides_the_phone_and_code() {
    // A port that was just free: nothing listens there any more.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let provider = AliyunSms::new(settings(&endpoint, SECRET)).unwrap();

    let err = provider.send_code(PHONE, CODE).await.unwrap_err();

    assert!(matches!(err, SmsError::Transport(_)), "{err:?}");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(PHONE) && !shown.contains(CODE), "{shown}");
}
