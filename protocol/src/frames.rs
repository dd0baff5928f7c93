//! The three frame shapes of `/ws`: command (client → server), reply and
//! event (server → client). Every frame is one JSON text frame.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Command types the server understands.
pub mod command {
    pub const PING: &str = "ping";
    pub const LOTTERY_DRAW: &str = "lottery.draw";
    pub const LOTTERY_CONFIG: &str = "lottery.config";
    pub const EXCHANGE_SUBMIT: &str = "exchange.submit";
    pub const EXCHANGE_PRODUCTS: &str = "exchange.products";
    pub const SYNC: &str = "sync";
    pub const AUTH_REFRESH: &str = "auth.refresh";
    pub const USER_INFO: &str = "user.info";
}

/// Event types the server sends.
pub mod event {
    pub const WELCOME: &str = "welcome";
    pub const POINTS_UPDATE: &str = "points_update";
    pub const REVIEW_RESULT: &str = "review_result";
    pub const STOCK_UPDATE: &str = "stock_update";
    pub const PRODUCT_UPDATE: &str = "product_update";
    pub const REVIEW_QUEUE: &str = "review_queue";
    pub const SYNC_RESULT: &str = "sync_result";
    pub const ERROR: &str = "error";
}

/// The most characters a command id or `Idempotency-Key` may have.
pub const MAX_ID_LEN: usize = 64;

/// Command ids and idempotency keys: 1–64 characters of `A-Za-z0-9_-:.`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.'))
}

/// A command as it arrives, before its `id`, `type` and `data` are
/// trusted. They stay raw JSON values so that a frame whose `id` can be
/// read is answered with it whatever else is wrong with the frame.
#[derive(Debug, Deserialize)]
pub struct IncomingFrame<'a> {
    #[serde(default, borrow)]
    pub id: Option<&'a RawValue>,
    #[serde(rename = "type", default, borrow)]
    pub kind: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub data: Option<&'a RawValue>,
}

/// A command as a client writes it.
#[derive(Debug, Serialize)]
pub struct CommandFrame<'a, T: Serialize> {
    pub id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub data: T,
}

/// The answer to one command; `data` is what the REST endpoint would give.
#[derive(Debug, Serialize)]
pub struct ReplyFrame<'a, T: Serialize> {
    pub id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub code: i32,
    pub msg: &'a str,
    pub data: Option<T>,
}

/// An event the server sends unprompted. `seq` is present on the user's
/// durable events only.
#[derive(Debug, Serialize)]
pub struct EventFrame<'a, T: Serialize> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub data: T,
}

/// An event that reports a failure (`error`) or an outcome without a
/// command (`sync_result` after `?since=`): `code` and `msg` at the top
/// level, as in a reply.
#[derive(Debug, Serialize)]
pub struct StatusEventFrame<'a, T: Serialize> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub code: i32,
    pub msg: &'a str,
    pub data: Option<T>,
}

/// Any server frame as a client reads it.
#[derive(Debug, Clone, Deserialize)]
pub struct ServerFrame {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub code: Option<i32>,
    #[serde(default)]
    pub msg: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl ServerFrame {
    pub fn is_reply(&self) -> bool {
        self.kind == "reply"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_contract_alphabet() {
        assert!(is_valid_id("c-7f3a"));
        assert!(is_valid_id("a:b.c_d-1"));
        assert!(is_valid_id(&"x".repeat(64)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id(&"x".repeat(65)));
        assert!(!is_valid_id("has space"));
        assert!(!is_valid_id("中文"));
        assert!(!is_valid_id("a/b"));
    }

    #[test]
    fn a_command_with_a_numeric_id_keeps_it_raw() {
        let f: IncomingFrame = serde_json::from_str(r#"{"id":7,"type":"ping"}"#).unwrap();
        assert_eq!(f.id.unwrap().get(), "7");
        assert_eq!(f.kind.unwrap().get(), "\"ping\"");
        assert!(f.data.is_none());
    }
}
