//! Alibaba Cloud SMS: Dysmsapi `SendSms` (API version 2017-05-25), signed
//! with the V3 signature `ACS3-HMAC-SHA256` as Alibaba Cloud documents it in
//! "V3 request structure and signature"
//! (<https://www.alibabacloud.com/help/en/sdk/product-overview/v3-request-structure-and-signature>).
//!
//! The call is RPC style: `POST /` with SendSms's parameters in the query
//! string (they are `"in": "query"` in its API metadata) and an empty body —
//! the shape of the page's "Example 1", which it names for SendSms.

use super::{AliyunSettings, SmsError, SmsProvider, mask_phone};
use crate::secret::Secret;
use futures::future::BoxFuture;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

const ACTION: &str = "SendSms";
const VERSION: &str = "2017-05-25";
const ALGORITHM: &str = "ACS3-HMAC-SHA256";
/// RPC style: always POST to `/`.
const METHOD: &str = "POST";
const CANONICAL_URI: &str = "/";

pub struct AliyunSms {
    settings: AliyunSettings,
    /// `scheme://host[:port]/`; the signed query string is appended to it.
    base: String,
    /// `host[:port]` exactly as signed and sent in the Host header.
    host: String,
    /// One client for the life of the server, so connections and TLS
    /// sessions to the gateway are reused.
    client: reqwest::Client,
}

impl AliyunSms {
    pub fn new(settings: AliyunSettings) -> Result<AliyunSms, SmsError> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            // HTTP/1.1, as Alibaba's SDKs speak it: the Host header we sign
            // is then the one the gateway reads (HTTP/2 would carry
            // :authority instead).
            .http1_only()
            // A redirect would replay the signed query (phone and code)
            // somewhere else; the gateway has no reason to redirect.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| SmsError::Setup(error_chain(&e)))?;
        let endpoint = &settings.endpoint;
        // `port()` is `None` for the scheme's default port, which is also
        // when an HTTP client leaves it out of Host.
        let host = match endpoint.port() {
            Some(port) => format!("{}:{port}", endpoint.host_str().unwrap_or_default()),
            None => endpoint.host_str().unwrap_or_default().to_owned(),
        };
        let base = format!("{}://{host}{CANONICAL_URI}", endpoint.scheme());
        Ok(AliyunSms {
            settings,
            base,
            host,
            client,
        })
    }

    async fn send(&self, phone: &str, code: &str) -> Result<(), SmsError> {
        let template_param = serde_json::json!({ "code": code }).to_string();
        let params = [
            ("PhoneNumbers", phone),
            ("SignName", self.settings.sign_name.as_str()),
            ("TemplateCode", self.settings.template_code.as_str()),
            ("TemplateParam", template_param.as_str()),
        ];
        let date = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let signed = sign(
            &Call {
                host: &self.host,
                action: ACTION,
                version: VERSION,
                date: &date,
                nonce: &nonce,
                params: &params,
                body: b"",
            },
            &self.settings.access_key_id,
            &self.settings.access_key_secret,
        );

        let mut request = self
            .client
            .post(format!("{}?{}", self.base, signed.query))
            .header(reqwest::header::ACCEPT, "application/json")
            .header(reqwest::header::AUTHORIZATION, signed.authorization);
        for (name, value) in signed.headers {
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(|e| self.failed(e))?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| self.failed(e))?;
        let answer = judge(status, &body)?;
        tracing::info!(
            phone = %mask_phone(phone),
            biz_id = answer.biz_id.as_deref().unwrap_or(""),
            "SMS code sent"
        );
        Ok(())
    }

    fn failed(&self, e: reqwest::Error) -> SmsError {
        if e.is_timeout() {
            SmsError::Timeout(self.settings.timeout)
        } else {
            // The URL's query holds the phone and the code: keep it out.
            SmsError::Transport(error_chain(&e.without_url()))
        }
    }
}

impl SmsProvider for AliyunSms {
    fn send_code<'a>(
        &'a self,
        phone: &'a str,
        code: &'a str,
    ) -> BoxFuture<'a, Result<(), SmsError>> {
        Box::pin(self.send(phone, code))
    }

    fn name(&self) -> &'static str {
        "aliyun"
    }
}

/// Dysmsapi's answer, success or not: `{"Code":"OK","Message":"OK",
/// "BizId":"...","RequestId":"..."}`; gateway errors (bad signature, stale
/// date) have the same `Code`/`Message`/`RequestId` shape.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Answer {
    code: Option<String>,
    message: Option<String>,
    request_id: Option<String>,
    /// Receipt id, to look the message up in the console.
    biz_id: Option<String>,
}

/// Success is a 2xx whose JSON says `"Code":"OK"`; every other answer is
/// an error, with the provider's Code and Message when it gave them.
fn judge(status: u16, body: &[u8]) -> Result<Answer, SmsError> {
    match serde_json::from_slice::<Answer>(body) {
        Ok(answer) if (200..300).contains(&status) && answer.code.as_deref() == Some("OK") => {
            Ok(answer)
        }
        Ok(Answer {
            code: Some(code),
            message,
            request_id,
            ..
        }) => Err(SmsError::Refused {
            status,
            code,
            message: message.unwrap_or_default(),
            request_id,
        }),
        _ => Err(SmsError::Unexpected {
            status,
            body: String::from_utf8_lossy(body).chars().take(200).collect(),
        }),
    }
}

/// `e` and its sources, as one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let _ = write!(line, ": {cause}");
        source = cause.source();
    }
    line
}

// ---- The V3 signature, step by step as the documentation numbers it. ----

/// One RPC call, as far as the signature is concerned.
struct Call<'a> {
    /// `host[:port]`, exactly as sent.
    host: &'a str,
    action: &'a str,
    version: &'a str,
    /// `x-acs-date`, UTC `yyyy-MM-ddTHH:mm:ssZ`; the gateway refuses a
    /// date more than 15 minutes old.
    date: &'a str,
    /// `x-acs-signature-nonce`, fresh per request: the gateway refuses a
    /// nonce it has already seen (replay).
    nonce: &'a str,
    /// The operation's parameters, sent in the query string; any order.
    params: &'a [(&'a str, &'a str)],
    body: &'a [u8],
}

struct Signed {
    /// The canonical query string. It is also the URL's query, byte for
    /// byte, so that what is signed is what travels.
    query: String,
    /// Every signed header, lower-case names in canonical (sorted) order;
    /// all of them must be sent.
    headers: Vec<(&'static str, String)>,
    authorization: String,
}

fn sign(call: &Call<'_>, access_key_id: &str, secret: &Secret) -> Signed {
    let query = canonical_query(call.params);
    let payload_hash = hex::encode(Sha256::digest(call.body));
    let headers = signed_headers(call, &payload_hash);
    let request = canonical_request(&query, &headers, &payload_hash);
    let signature = signature(secret, &string_to_sign(&request));
    let authorization = format!(
        "{ALGORITHM} Credential={access_key_id},SignedHeaders={},Signature={signature}",
        signed_header_names(&headers)
    );
    Signed {
        query,
        headers,
        authorization,
    }
}

/// RFC 3986 as the page spells it: `A–Z a–z 0–9 - _ . ~` stay, every other
/// UTF-8 byte becomes `%XX` in upper-case hex — so a space is `%20` (never
/// `+`), `*` is `%2A` and `~` stays `~`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// CanonicalQueryString: parameters sorted by name, name and value each
/// percent-encoded, joined as `name=value` with `&`.
fn canonical_query(params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    sorted
        .iter()
        .map(|(name, value)| format!("{}={}", percent_encode(name), percent_encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The headers we sign: `host` and every `x-acs-*` we send (we send no
/// `content-type`: the body is empty). The page requires all such headers
/// to be signed, with lower-case names, sorted.
fn signed_headers(call: &Call<'_>, payload_hash: &str) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("host", call.host.to_owned()),
        ("x-acs-action", call.action.to_owned()),
        ("x-acs-content-sha256", payload_hash.to_owned()),
        ("x-acs-date", call.date.to_owned()),
        ("x-acs-signature-nonce", call.nonce.to_owned()),
        ("x-acs-version", call.version.to_owned()),
    ];
    headers.sort_by_key(|(name, _)| *name);
    headers
}

fn signed_header_names(headers: &[(&str, String)]) -> String {
    headers
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(";")
}

/// Step 1, CanonicalRequest: method, CanonicalURI, CanonicalQueryString,
/// CanonicalHeaders (each `name:trimmed value\n`, so the block ends with a
/// newline before the separator), SignedHeaders, HashedRequestPayload.
fn canonical_request(query: &str, headers: &[(&str, String)], payload_hash: &str) -> String {
    let mut canonical_headers = String::new();
    for (name, value) in headers {
        let _ = writeln!(canonical_headers, "{name}:{}", value.trim());
    }
    [
        METHOD,
        CANONICAL_URI,
        query,
        &canonical_headers,
        &signed_header_names(headers),
        payload_hash,
    ]
    .join("\n")
}

/// Step 2: `ACS3-HMAC-SHA256\n` + lower-case hex SHA-256 of the request.
fn string_to_sign(canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    )
}

/// Step 3: lower-case hex HMAC-SHA256, keyed by the AccessKey secret itself
/// (unlike V2, no `&` is appended).
fn signature(secret: &Secret, string_to_sign: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(string_to_sign.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    /// The fixed values of the page's "Signature examples" section.
    fn documented_call() -> Call<'static> {
        Call {
            host: "ecs.cn-shanghai.aliyuncs.com",
            action: "RunInstances",
            version: "2014-05-26",
            date: "2023-10-26T10:22:32Z",
            nonce: "3156853299f313e23d1673dc12e1703d",
            params: &[
                (
                    "ImageId",
                    "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd",
                ),
                ("RegionId", "cn-shanghai"),
            ],
            body: b"",
        }
    }

    #[test]
    fn the_documented_example_gives_the_documented_canonical_request() {
        let call = documented_call();
        let query = canonical_query(call.params);
        let request = canonical_request(&query, &signed_headers(&call, EMPTY_SHA256), EMPTY_SHA256);
        assert_eq!(
            request,
            "POST\n\
             /\n\
             ImageId=win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd&RegionId=cn-shanghai\n\
             host:ecs.cn-shanghai.aliyuncs.com\n\
             x-acs-action:RunInstances\n\
             x-acs-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
             x-acs-date:2023-10-26T10:22:32Z\n\
             x-acs-signature-nonce:3156853299f313e23d1673dc12e1703d\n\
             x-acs-version:2014-05-26\n\
             \n\
             host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            string_to_sign(&request),
            "ACS3-HMAC-SHA256\n7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259"
        );
        assert_eq!(
            signature(
                &Secret::new("YourAccessKeySecret"),
                &string_to_sign(&request)
            ),
            "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
        );
    }

    #[test]
    fn the_documented_example_gives_the_documented_authorization_header() {
        let signed = sign(
            &documented_call(),
            "YourAccessKeyId",
            &Secret::new("YourAccessKeySecret"),
        );
        assert_eq!(
            signed.authorization,
            "ACS3-HMAC-SHA256 Credential=YourAccessKeyId,\
             SignedHeaders=host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version,\
             Signature=06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
        );
        assert_eq!(
            signed.query,
            "ImageId=win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd&RegionId=cn-shanghai"
        );
    }

    /// The documented example needs no percent-encoding; this vector does
    /// (UTF-8, space, `*`, `~`, JSON). Expected values come from
    /// tools/acs3_cross_check.py, an independent signer written from the
    /// same page (its Python sample's encoding), which also reproduces the
    /// documented example.
    #[test]
    fn a_send_sms_call_signs_like_the_independent_python_signer() {
        let signed = sign(
            &Call {
                host: "dysmsapi.aliyuncs.com",
                action: "SendSms",
                version: "2017-05-25",
                date: "2026-05-01T08:00:00Z",
                nonce: "0123456789abcdef0123456789abcdef",
                params: &[
                    ("TemplateParam", r#"{"code":"123456"}"#),
                    ("SignName", "餐厅 积分*~"),
                    ("PhoneNumbers", "13800138001"),
                    ("TemplateCode", "SMS_154950909"),
                ],
                body: b"",
            },
            "testAccessKeyId",
            &Secret::new("testAccessKeySecret"),
        );
        assert_eq!(
            signed.query,
            "PhoneNumbers=13800138001\
             &SignName=%E9%A4%90%E5%8E%85%20%E7%A7%AF%E5%88%86%2A~\
             &TemplateCode=SMS_154950909\
             &TemplateParam=%7B%22code%22%3A%22123456%22%7D"
        );
        assert!(
            signed.authorization.ends_with(
                ",Signature=9f2741b60682f92b2089baca15e1a9f856ab5922626a7ff4ef4d1a89701644e3"
            ),
            "{}",
            signed.authorization
        );
    }

    #[test]
    fn percent_encoding_keeps_only_unreserved_characters() {
        assert_eq!(percent_encode("AZaz09-_.~"), "AZaz09-_.~");
        assert_eq!(
            percent_encode(r#"a b*c+d/e=f&g:h"'!()"#),
            "a%20b%2Ac%2Bd%2Fe%3Df%26g%3Ah%22%27%21%28%29"
        );
        assert_eq!(percent_encode("é"), "%C3%A9");
    }

    #[test]
    fn only_a_2xx_saying_ok_is_success() {
        assert!(judge(200, br#"{"Code":"OK","Message":"OK","BizId":"9"}"#).is_ok());
        assert!(matches!(
            judge(200, br#"{"Code":"isv.MOBILE_NUMBER_ILLEGAL","Message":"bad"}"#),
            Err(SmsError::Refused { code, .. }) if code == "isv.MOBILE_NUMBER_ILLEGAL"
        ));
        assert!(matches!(
            judge(502, b"<html>Bad Gateway</html>"),
            Err(SmsError::Unexpected { status: 502, .. })
        ));
        assert!(matches!(
            judge(200, b"{}"),
            Err(SmsError::Unexpected { status: 200, .. })
        ));
    }
}
