//! One error type for both doors. An `Error` knows its contract code, its
//! HTTP status, its user-facing message and its `data`; it renders as a REST
//! envelope or as a socket reply. Internal causes are logged once, in the
//! request span (see `http::log_errors`), and never sent.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use protocol::ErrorCode;
use serde_json::{Value, json};
use std::sync::Arc;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A refusal fully described by its code.
    #[error("{0:?}")]
    Refused(ErrorCode),
    /// Bad input; the detail names the field and is shown after the code's message.
    #[error("invalid parameter: {0}")]
    Invalid(String),
    #[error("not enough points: need {required}, have {current}")]
    NotEnoughPoints { required: i64, current: i64 },
    #[error("not enough stock: {available} left")]
    NotEnoughStock { available: i64 },
    #[error("upload already reviewed: {current_status}")]
    AlreadyReviewed { current_status: String },
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
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Refused(c) => *c,
            Error::Invalid(_) => ErrorCode::InvalidParameter,
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
        if let Some(secs) = retry_after(code) {
            res.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(secs),
            );
        }
        res.extensions_mut()
            .insert(ErrorCause(self.to_string().into()));
        res
    }
}

/// `Retry-After` (seconds) for refusals that pass by themselves: a busy
/// database, a full server, a rate limit. Clients add their own jitter.
fn retry_after(code: ErrorCode) -> Option<&'static str> {
    match code {
        ErrorCode::ServiceUnavailable | ErrorCode::TooManyConnections | ErrorCode::RateLimited => {
            Some("1")
        }
        _ => None,
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

/// A stored reply (an idempotent replay): `data` is already JSON text.
pub struct RawEnvelope(pub String);

impl IntoResponse for RawEnvelope {
    fn into_response(self) -> Response {
        let body = format!(r#"{{"code":0,"msg":"success","data":{}}}"#, self.0);
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}
