//! The business as commands. A command is a value (its input and the
//! rules it needs) that runs inside a transaction it is handed: it locks,
//! checks, writes, and returns its reply with what it changed for others
//! (`Effects`). It never begins, commits or delivers: the runner
//! (`app::runner`) does that, the same way for every command and both
//! doors. Reads that change nothing take the pool.

pub mod account;
pub mod audit;
pub mod auth;
pub mod events;
pub mod exchange;
pub mod lottery;
pub mod photos;
pub mod points;
pub mod tokens;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use protocol::{ErrorCode, ProductId, SessionId, UserId};
use rand::rngs::StdRng;
use serde::Serialize;
use std::future::Future;

use crate::error::Result;
use crate::store::Tx;

/// RFC 3339, UTC, milliseconds: `2026-11-21T13:51:00.123Z`.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A stored UTC time, as the wire writes times.
pub fn stored_rfc3339(t: NaiveDateTime) -> String {
    rfc3339(t.and_utc())
}

/// The clock and randomness a command may use: one reading of the clock
/// per attempt, and a CSPRNG seeded from the OS (tests pass seeded ones).
pub struct Ctx {
    pub now: DateTime<Utc>,
    pub rng: StdRng,
}

impl Ctx {
    pub fn new() -> Ctx {
        use rand::SeedableRng;
        Ctx {
            now: Utc::now(),
            rng: StdRng::from_os_rng(),
        }
    }
}

impl Default for Ctx {
    fn default() -> Self {
        Ctx::new()
    }
}

/// One command: its input and rules as a value, run in a transaction.
pub trait Command: Send + Sync {
    type Reply: Serialize + Send + Sync;
    /// Its name in metrics and logs.
    const NAME: &'static str;
    /// The contract's code when it fails inside (1000, 3000, 4000, …).
    const FAILED: ErrorCode = ErrorCode::Internal;

    /// Checks of the input alone, made before any transaction begins.
    fn check(&self) -> Result<()> {
        Ok(())
    }

    /// For a keyed command: what a stored result must match for a retried
    /// key to replay it (the command and its body).
    fn fingerprint(&self) -> String {
        Self::NAME.to_string()
    }

    /// Runs once. `Err` rolls everything back; `Ok` commits, even when the
    /// reply itself is a refusal (a wrong code counts its attempt).
    fn run(
        &self,
        tx: &mut Tx,
        ctx: &mut Ctx,
    ) -> impl Future<Output = Result<Done<Self::Reply>>> + Send;
}

/// What a committed command answers and what it changed for others.
#[derive(Debug)]
pub struct Done<R> {
    pub reply: Result<R>,
    pub effects: Effects,
}

impl<R> Done<R> {
    pub fn new(reply: R) -> Done<R> {
        Done {
            reply: Ok(reply),
            effects: Effects::default(),
        }
    }

    pub fn with(mut self, f: impl FnOnce(&mut Effects)) -> Done<R> {
        f(&mut self.effects);
        self
    }
}

/// Everything a command hands over besides its reply. The runner writes
/// `audit` inside the transaction and hands the rest to delivery after
/// commit, and only then: an event never leaves for a change that rolled
/// back.
#[derive(Debug, Default)]
pub struct Effects {
    pub events: Vec<UserEvent>,
    pub broadcasts: Vec<Broadcast>,
    pub audit: Vec<AuditEntry>,
    pub closes: Vec<CloseSockets>,
}

/// A user event written in this transaction, to push once it commits.
#[derive(Debug, Clone)]
pub struct UserEvent {
    pub user_id: UserId,
    pub seq: u64,
    pub kind: &'static str,
    /// The exact text frame, as stored in `user_events`.
    pub frame: String,
}

/// Who a broadcast is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    Everyone,
    Merchants,
}

/// A latest-value event for many sockets, serialized once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broadcast {
    pub audience: Audience,
    /// For per-product values: a broadcast older than one already sent for
    /// the same product is dropped (stock never goes back).
    pub version: Option<(ProductId, u64)>,
    /// Changes of one product that land within a few milliseconds of each
    /// other are sent once, the newest (`product_update`).
    pub coalesce: Option<ProductId>,
    pub frame: String,
}

impl Broadcast {
    pub fn new<T: Serialize>(audience: Audience, kind: &str, data: &T) -> Broadcast {
        Broadcast {
            audience,
            version: None,
            coalesce: None,
            frame: event_frame(kind, None, data),
        }
    }
}

/// Sockets to close after commit: one session's, or all of a user's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseSockets {
    pub user_id: UserId,
    pub session: Option<SessionId>,
    pub code: u16,
}

/// A merchant action, written in the action's own transaction.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub actor_id: UserId,
    pub action: &'static str,
    pub target: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub reason: Option<String>,
    /// Points the action moved, if any (merchant budgets are summed on it).
    pub points: Option<i64>,
}

/// A client-chosen key that makes a command safe to retry: the REST
/// `Idempotency-Key` header or the socket command's `id`.
#[derive(Debug, Clone)]
pub struct IdemKey(String);

impl IdemKey {
    pub fn parse(s: &str) -> Result<IdemKey> {
        if protocol::frames::is_valid_id(s) {
            Ok(IdemKey(s.to_string()))
        } else {
            Err(crate::error::Error::invalid(
                "Idempotency-Key",
                "须为 1 到 64 个 A-Za-z0-9_-:. 字符",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An event frame's text: `{"type","seq"?,"data"}`.
pub fn event_frame<T: Serialize>(kind: &str, seq: Option<u64>, data: &T) -> String {
    serde_json::to_string(&protocol::EventFrame { kind, seq, data })
        .expect("event payloads are plain data and always serialize")
}
