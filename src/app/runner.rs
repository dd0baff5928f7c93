//! The one path every command takes, REST or socket: begin, claim the
//! idempotency key (a replay returns the stored reply and publishes
//! nothing), run, store the reply and the audit entries, commit, retry the
//! whole transaction on a deadlock or lock-wait timeout (bounded, with
//! jitter), then hand what committed to delivery. This is the one place
//! events leave a transaction.

use protocol::{ErrorCode, UserId};
use rand::Rng;
use sqlx::MySqlPool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::delivery::Delivery;
use crate::domain::{Command, Ctx, Done, IdemKey};
use crate::error::{DataJson, Error, Result};
use crate::metrics::{CommandLabels, Metrics};
use crate::store::{self, Tx, idempotency::Claim};

/// Attempts of one command's transaction before it answers 2010.
const ATTEMPTS: u32 = 6;
/// The first retry waits up to this long (full jitter), doubling each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(4);

pub struct Runner {
    db: MySqlPool,
    delivery: Arc<Delivery>,
    metrics: Arc<Metrics>,
}

/// How one attempt ended.
enum Attempt<R> {
    Fresh(Result<R>, Option<DataJson>),
    Stored(DataJson),
}

impl Runner {
    pub fn new(db: MySqlPool, delivery: Arc<Delivery>, metrics: Arc<Metrics>) -> Runner {
        Runner {
            db,
            delivery,
            metrics,
        }
    }

    /// Runs a command that has no idempotency key.
    pub async fn run<C: Command>(&self, cmd: &C) -> Result<C::Reply> {
        match self.execute(cmd, None).await? {
            Attempt::Fresh(reply, _) => reply,
            // Unreachable: only a keyed run finds a stored reply.
            Attempt::Stored(_) => Err(Error::internal(C::FAILED, "a stored reply without a key")),
        }
    }

    /// Runs a command under an optional idempotency key of `user`: a key
    /// seen before replays its stored reply (2005 if it was used for another
    /// command or body). Answers the reply as JSON, serialized once.
    pub async fn run_keyed<C: Command>(
        &self,
        cmd: &C,
        key: Option<(UserId, &IdemKey)>,
    ) -> Result<DataJson> {
        match self.execute(cmd, key).await? {
            Attempt::Fresh(reply, Some(json)) => reply.map(|_| json),
            Attempt::Fresh(reply, None) => DataJson::of(&reply?),
            Attempt::Stored(json) => Ok(json),
        }
    }

    async fn execute<C: Command>(
        &self,
        cmd: &C,
        key: Option<(UserId, &IdemKey)>,
    ) -> Result<Attempt<C::Reply>> {
        let started = Instant::now();
        cmd.check()?;
        let fingerprint = key.map(|_| cmd.fingerprint());
        let mut attempt = 1;
        let result = loop {
            match self.attempt(cmd, key, fingerprint.as_deref()).await {
                Err(Error::Db(e)) if store::is_retryable(&e) => {
                    let labels = CommandLabels { command: C::NAME };
                    if attempt >= ATTEMPTS {
                        self.metrics.command_busy.get_or_create(&labels).inc();
                        tracing::warn!(command = C::NAME, attempt, error = %e, "still contended after every retry");
                        break Err(Error::Refused(ErrorCode::Busy));
                    }
                    self.metrics.command_retries.get_or_create(&labels).inc();
                    tracing::debug!(
                        command = C::NAME,
                        attempt,
                        "transaction gave way to another; running it again"
                    );
                    let cap = FIRST_BACKOFF * 2u32.pow(attempt - 1);
                    let wait = rand::rng().random_range(Duration::ZERO..=cap);
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => break other.map_err(|e| e.during(C::FAILED)),
            }
        };
        self.metrics.command(C::NAME, started.elapsed());
        result
    }

    async fn attempt<C: Command>(
        &self,
        cmd: &C,
        key: Option<(UserId, &IdemKey)>,
        fingerprint: Option<&str>,
    ) -> Result<Attempt<C::Reply>> {
        let waited = Instant::now();
        let mut tx: Tx = self.db.begin().await?;
        self.metrics
            .db_acquire_seconds
            .observe(waited.elapsed().as_secs_f64());
        if let (Some((user, k)), Some(fp)) = (key, fingerprint) {
            match store::idempotency::claim(&mut tx, user, k.as_str(), fp).await? {
                Claim::New => {}
                Claim::Used {
                    fingerprint: stored,
                    response,
                } if stored == fp && !response.is_empty() => {
                    return Ok(Attempt::Stored(DataJson(response)));
                }
                Claim::Used { .. } => return Err(Error::Refused(ErrorCode::IdempotencyConflict)),
            }
        }
        let mut ctx = Ctx::new();
        let Done { reply, effects } = cmd.run(&mut tx, &mut ctx).await?;
        let mut json = None;
        if let Some((user, k)) = key {
            match &reply {
                Ok(r) => {
                    let j = DataJson::of(r)?;
                    store::idempotency::store(&mut tx, user, k.as_str(), &j.0).await?;
                    json = Some(j);
                }
                // A refusal that commits stores nothing: a retry is
                // evaluated afresh.
                Err(_) => store::idempotency::release(&mut tx, user, k.as_str()).await?,
            }
        }
        for a in &effects.audit {
            let before = a.before.as_ref().map(|v| v.to_string());
            let after = a.after.as_ref().map(|v| v.to_string());
            store::audit::insert(
                &mut tx,
                &store::audit::NewEntry {
                    actor_id: a.actor_id,
                    action: a.action,
                    target: &a.target,
                    before,
                    after,
                    reason: a.reason.as_deref(),
                    points: a.points,
                },
            )
            .await?;
        }
        tx.commit().await?;
        self.delivery.deliver(effects);
        Ok(Attempt::Fresh(reply, json))
    }
}
