//! The business: what a command means and which rows it changes. Each
//! command is one function that both doors (REST and the socket) call, so
//! a guest gets the same `code`/`msg`/`data` whichever door they use.

pub mod auth;
pub mod events;
pub mod exchange;
pub mod lottery;
pub mod photos;
pub mod points;
pub mod tokens;
pub mod wheel;

use chrono::{SecondsFormat, Utc};
use protocol::{Pagination, frames::is_valid_id};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::store::{self, Tx};
use protocol::ErrorCode;

/// RFC 3339, UTC, milliseconds: `2026-11-21T13:51:00.123Z`.
pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn to_rfc3339(t: chrono::NaiveDateTime) -> String {
    t.and_utc().to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub const MAX_PAGE_SIZE: u32 = 100;
pub const DEFAULT_PAGE_SIZE: u32 = 20;

/// `page` and `page_size` of every list endpoint. A page size above the cap
/// is clamped (the response's `limit` shows the value used).
#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    pub page: Option<u32>,
    pub page_size: Option<u32>,
    /// The seed's clients also send `limit`.
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub page: u32,
    pub size: u32,
}

impl PageQuery {
    pub fn resolve(&self) -> Result<Page> {
        let page = self.page.unwrap_or(1);
        if page == 0 {
            return Err(Error::Invalid("page starts at 1".into()));
        }
        let size = self.page_size.or(self.limit).unwrap_or(DEFAULT_PAGE_SIZE);
        if size == 0 {
            return Err(Error::Invalid("page_size must be at least 1".into()));
        }
        Ok(Page {
            page,
            size: size.min(MAX_PAGE_SIZE),
        })
    }
}

impl Page {
    pub fn offset(&self) -> u64 {
        crate::store::offset(self.page, self.size)
    }

    pub fn pagination(&self, total: u64) -> Pagination {
        Pagination {
            total,
            page: self.page,
            limit: self.size,
            total_pages: total.div_ceil(self.size as u64),
        }
    }
}

/// A client-chosen key that makes a command safe to retry: the REST
/// `Idempotency-Key` header or the socket command's `id`.
#[derive(Debug, Clone)]
pub struct IdemKey(String);

impl IdemKey {
    pub fn parse(s: &str) -> Result<IdemKey> {
        if is_valid_id(s) {
            Ok(IdemKey(s.to_string()))
        } else {
            Err(Error::Invalid(
                "Idempotency-Key must be 1-64 characters of A-Za-z0-9_-:.".into(),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A command's `data` as JSON text: fresh results are serialized once (to
/// store them for replay) and replays are the stored text.
#[derive(Debug, Clone)]
pub struct DataJson(pub String);

/// The stored result of `key`, looked up under the user's row lock (every
/// key of a user is written under it): the same command replays it, a
/// different one is a conflict (2005). Every keyed command calls this first
/// and stores its result with `store::idempotency::insert` before commit.
pub async fn stored_result(
    tx: &mut Tx,
    user_id: u64,
    key: Option<&IdemKey>,
    fingerprint: &str,
) -> Result<Option<DataJson>> {
    let Some(key) = key else { return Ok(None) };
    match store::idempotency::find(tx, user_id, key.as_str()).await? {
        Some((stored, response)) if stored == fingerprint => Ok(Some(DataJson(response))),
        Some(_) => Err(Error::Refused(ErrorCode::IdempotencyConflict)),
        None => Ok(None),
    }
}

/// Runs a whole transaction again when InnoDB picked it as a deadlock
/// victim (it was rolled back entirely, so running it again is safe).
pub async fn with_deadlock_retry<T, F, Fut>(mut run: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    const ATTEMPTS: u32 = 5;
    let mut attempt = 1;
    loop {
        match run().await {
            Err(Error::Db(e)) if store::is_deadlock(&e) && attempt < ATTEMPTS => {
                tracing::debug!(attempt, "transaction deadlocked; running it again");
                attempt += 1;
            }
            other => return other,
        }
    }
}
