//! One error type for both doors. An `Error` knows its contract code, its
//! HTTP status, its user-facing message and its `data`; it renders as a REST
//! envelope or as a socket reply. Internal causes are logged once, in the
//! request span (see `http::log_errors`), and never sent.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocol::ErrorCode;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::sync::Arc;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A refusal fully described by its code.
    #[error("{0:?}")]
    Refused(ErrorCode),
    /// Bad input: the text names the field and says what it must be, in the
    /// product's words; it follows the code's message.
    #[error("invalid parameter: {0}")]
    Invalid(String),
    /// A rate limit: try again after this many seconds.
    #[error("rate limited for {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("not enough points: need {required}, have {current}")]
    NotEnoughPoints { required: i64, current: i64 },
    #[error("not enough stock: {available} left")]
    NotEnoughStock { available: i64 },
    #[error("upload already reviewed: {current_status}")]
    AlreadyReviewed {
        current_status: protocol::ReviewStatus,
    },
    #[error("exchange code already redeemed at {redeemed_at}")]
    AlreadyRedeemed { redeemed_at: String },
    #[error("events before {last_seq} are too old to replay")]
    SyncTooOld { last_seq: u64 },
    /// Something failed inside; `code` is the contract's code for the
    /// operation (1000 login failed, 3000 draw failed, ...).
    #[error("{code:?}: {cause}")]
    Failed { code: ErrorCode, cause: String },
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

impl Error {
    /// Bad input in `field`: `detail` says what it must be.
    pub fn invalid(field: &str, detail: impl std::fmt::Display) -> Error {
        Error::Invalid(format!("{field} {detail}"))
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Refused(c) => *c,
            Error::Invalid(_) => ErrorCode::InvalidParameter,
            Error::RateLimited { .. } => ErrorCode::RateLimited,
            Error::NotEnoughPoints { .. } => ErrorCode::NotEnoughPoints,
            Error::NotEnoughStock { .. } => ErrorCode::NotEnoughStock,
            Error::SyncTooOld { .. } => ErrorCode::SyncTooOld,
            Error::AlreadyRedeemed { .. } => ErrorCode::AlreadyRedeemed,
            Error::AlreadyReviewed { .. } => ErrorCode::AlreadyReviewed,
            Error::Failed { code, .. } => *code,
            Error::Db(e) if is_unavailable(e) => ErrorCode::ServiceUnavailable,
            Error::Db(_) => ErrorCode::Internal,
        }
    }

    pub fn msg(&self) -> String {
        match self {
            Error::Invalid(detail) => format!("{}：{detail}", ErrorCode::InvalidParameter.msg()),
            other => other.code().msg().to_string(),
        }
    }

    pub fn data(&self) -> Value {
        match self {
            Error::NotEnoughPoints { required, current } => json!({
                "required": required,
                "current": current,
                "shortage": required - current,
            }),
            Error::NotEnoughStock { available } => json!({ "available_stock": available }),
            Error::SyncTooOld { last_seq } => json!({ "reset": true, "last_seq": last_seq }),
            Error::AlreadyReviewed { current_status } => {
                json!({ "current_status": current_status })
            }
            Error::AlreadyRedeemed { redeemed_at } => json!({
                "current_status": "redeemed",
                "redeemed_at": redeemed_at,
            }),
            _ => Value::Null,
        }
    }

    /// Internal failures carry a cause worth logging at error level.
    pub fn internal_cause(&self) -> Option<String> {
        match self {
            Error::Failed { cause, .. } => Some(cause.clone()),
            Error::Db(e) => Some(e.to_string()),
            _ => None,
        }
    }

    /// Re-labels an internal failure with the operation's contract code
    /// (e.g. 3000 for a draw); refusals and unavailability pass through.
    pub fn during(self, code: ErrorCode) -> Error {
        match self {
            Error::Db(e) if !is_unavailable(&e) => Error::Failed {
                code,
                cause: e.to_string(),
            },
            Error::Failed { cause, .. } => Error::Failed { code, cause },
            other => other,
        }
    }

    pub fn internal(code: ErrorCode, cause: impl std::fmt::Display) -> Error {
        Error::Failed {
            code,
            cause: cause.to_string(),
        }
    }

    /// Seconds a client should wait before trying again, for refusals that
    /// pass by themselves.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Error::RateLimited { retry_after } => Some(*retry_after),
            other => match other.code() {
                ErrorCode::ServiceUnavailable
                | ErrorCode::TooManyConnections
                | ErrorCode::RateLimited
                | ErrorCode::Busy
                | ErrorCode::SmsFailed => Some(1),
                _ => None,
            },
        }
    }
}

impl From<ErrorCode> for Error {
    fn from(c: ErrorCode) -> Self {
        Error::Refused(c)
    }
}

/// The pool could not hand out a connection, or the server went away:
/// the request may succeed later, so it is a 503, not a 500.
fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)
    )
}

/// Parses a JSON object — a REST body or a command's `data` — into `T`,
/// the one way both doors read input, so one problem gets one message:
/// - anything but an object (an array would be read positionally) is refused;
/// - bytes that are not UTF-8 are refused whole, even inside a field `T`
///   ignores;
/// - a field that is missing, of the wrong type or out of range is named,
///   in the product's words, never with the parser's own text.
pub fn parse_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| Error::Invalid("内容须为 UTF-8 编码".into()))?;
    if !text.trim_start().starts_with('{') {
        return Err(Error::Invalid("内容须为 JSON 对象".into()));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        json_problem(&path, e.inner())
    })?;
    de.end().map_err(|e| json_problem(".", &e))?;
    Ok(value)
}

/// Parses a query string into `T`, with the same messages as bodies.
pub fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        describe(&path, &e.inner().to_string())
    })
}

fn json_problem(path: &str, e: &serde_json::Error) -> Error {
    use serde_json::error::Category;
    if matches!(
        e.classify(),
        Category::Syntax | Category::Eof | Category::Io
    ) {
        return Error::Invalid("内容不是有效的 JSON".into());
    }
    describe(path, &e.to_string())
}

/// A parser's complaint, told in the product's words.
fn describe(path: &str, text: &str) -> Error {
    let text = text.split(" at line ").next().unwrap_or(text);
    if let Some(field) = quoted_after(text, "missing field ") {
        return Error::invalid(&join(path, &field), "为必填项");
    }
    if let Some(field) = quoted_after(text, "unknown field ") {
        return Error::invalid(&join(path, &field), "是不支持的字段");
    }
    let field = if path.is_empty() || path == "." {
        "内容"
    } else {
        path
    };
    if text.starts_with("须为") {
        return Error::invalid(field, text);
    }
    let expected = text.rsplit("expected ").next().unwrap_or("");
    let any = |names: &[&str]| names.iter().any(|n| expected.contains(n));
    let kind = if !text.contains("expected") && !text.contains("invalid digit") {
        "格式不正确"
    } else if any(&["u8", "u16", "u32", "u64"]) || text.contains("invalid digit") {
        "须为非负整数"
    } else if any(&["i8", "i16", "i32", "i64", "whole number"]) {
        "须为整数"
    } else if any(&["f32", "f64"]) {
        "须为数字"
    } else if any(&["str"]) {
        "须为字符串"
    } else if any(&["bool"]) {
        "须为 true 或 false"
    } else if any(&["map", "struct"]) {
        "须为 JSON 对象"
    } else if any(&["sequence"]) {
        "须为数组"
    } else {
        "格式不正确"
    };
    Error::invalid(field, kind)
}

/// The name inside backquotes after `prefix` (serde writes `` `name` ``).
fn quoted_after(text: &str, prefix: &str) -> Option<String> {
    let rest = text.strip_prefix(prefix)?;
    let rest = rest.strip_prefix('`')?;
    rest.split('`').next().map(str::to_string)
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() || path == "." {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// Kept on an error response so the logging middleware can record the cause
/// inside the request span.
#[derive(Clone, Debug)]
pub struct ErrorCause(pub Arc<str>);

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let code = self.code();
        let status =
            StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = json!({ "code": code.code(), "msg": self.msg(), "data": self.data() });
        let mut res = (status, Json(body)).into_response();
        if let Some(secs) = self.retry_after() {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res.extensions_mut()
            .insert(ErrorCause(self.to_string().into()));
        res
    }
}

/// The success envelope `{"code":0,"msg":"success","data":…}`.
pub struct Envelope<T>(pub T);

#[derive(serde::Serialize)]
struct Body<T> {
    code: i32,
    msg: &'static str,
    data: T,
}

impl<T: serde::Serialize> IntoResponse for Envelope<T> {
    fn into_response(self) -> Response {
        // Serialized straight from `T`, so raw numbers (money) keep their form.
        Json(Body {
            code: 0,
            msg: "success",
            data: self.0,
        })
        .into_response()
    }
}

/// A command's `data` as JSON text: fresh results are serialized once (to
/// store them for replay) and replays are the stored text.
#[derive(Debug, Clone)]
pub struct DataJson(pub String);

impl DataJson {
    pub fn of<T: serde::Serialize>(v: &T) -> Result<DataJson> {
        serde_json::to_string(v)
            .map(DataJson)
            .map_err(|e| Error::internal(ErrorCode::Internal, e))
    }
}

impl IntoResponse for DataJson {
    fn into_response(self) -> Response {
        let body = format!(r#"{{"code":0,"msg":"success","data":{}}}"#, self.0);
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Exchange {
        product_id: u64,
        quantity: u32,
    }

    fn msg_of(body: &[u8]) -> String {
        parse_object::<Exchange>(body).unwrap_err().msg()
    }

    #[test]
    fn problems_are_told_in_the_products_words_naming_the_field() {
        assert_eq!(
            msg_of(br#"{"product_id":"abc","quantity":1}"#),
            "参数错误：product_id 须为非负整数"
        );
        assert_eq!(
            msg_of(br#"{"quantity":1}"#),
            "参数错误：product_id 为必填项"
        );
        assert_eq!(msg_of(br#"[1, 2]"#), "参数错误：内容须为 JSON 对象");
        assert_eq!(
            msg_of(b"{\"product_id\":1,\"quantity\":1,\"note\":\"\xff\xfe\"}"),
            "参数错误：内容须为 UTF-8 编码"
        );
        assert_eq!(
            msg_of(br#"{"product_id":1,"#),
            "参数错误：内容不是有效的 JSON"
        );
        assert_eq!(
            msg_of(br#"{"product_id":1,"quantity":1} trailing"#),
            "参数错误：内容不是有效的 JSON"
        );
    }
}
