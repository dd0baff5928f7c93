//! Background work: the heartbeat clock, the wheel's reload when another
//! instance changed it, minute chores (rate-limit buckets, connection
//! samples), and pruning: idempotency keys after 48 hours (the contract
//! keeps them at least 24), user events after the retention, expired
//! refresh tokens, and receipt images whose row was never written (the
//! process died between storing the image and committing the row).
//!
//! Pruning deletes in statements of `BATCH` rows, one after another until
//! a statement deletes fewer, so it keeps up with any rate of writes while
//! no statement holds its locks for long.

use std::time::Duration;
use tokio::task::JoinHandle;

use crate::app::AppState;
use crate::domain::photos::KEY_PREFIX;
use crate::store;

pub const BATCH: u32 = 1000;
const KEY_HOURS: u32 = 48;
const MINUTE: Duration = Duration::from_secs(60);

pub fn spawn(state: &AppState) -> Vec<JoinHandle<()>> {
    let clock = tokio::spawn(crate::heartbeat::run(
        state.hub.clone(),
        state.config.heartbeat_interval,
        state.shutdown.clone(),
    ));
    vec![
        clock,
        tokio::spawn(watch_wheel(state.clone())),
        tokio::spawn(every_minute(state.clone())),
        tokio::spawn(prune_forever(state.clone())),
    ]
}

/// A ticker that ends with the server (first tick after one period).
struct Every {
    tick: tokio::time::Interval,
}

impl Every {
    async fn new(period: Duration) -> Every {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        Every { tick }
    }

    /// False once the server is stopping.
    async fn next(&mut self, state: &AppState) -> bool {
        tokio::select! {
            _ = state.shutdown.cancelled() => false,
            _ = self.tick.tick() => true,
        }
    }
}

/// Reloads the wheel when its version in the database differs from the one
/// this process uses (a merchant changed it through another instance).
async fn watch_wheel(state: AppState) {
    let mut every = Every::new(state.config.wheel_reload_interval).await;
    while every.next(&state).await {
        match store::lottery::settings_version(&state.db).await {
            Ok(v) if v != state.wheel_version() => {
                if let Err(e) = state.reload_wheel().await {
                    tracing::warn!(error = %e, "could not reload the wheel");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "could not read the wheel's version"),
        }
    }
}

async fn every_minute(state: AppState) {
    state.sample_connections();
    let mut every = Every::new(MINUTE).await;
    while every.next(&state).await {
        state.limits.prune();
        state.hub.prune_versions();
        state.sample_connections();
    }
}

async fn prune_forever(state: AppState) {
    let mut every = Every::new(state.config.maintenance_interval).await;
    while every.next(&state).await {
        prune_once(&state).await;
    }
}

/// One full pass: every table down to its retention, then the orphan sweep.
pub async fn prune_once(state: &AppState) {
    let started = std::time::Instant::now();
    let db = &state.db;
    let days = (state.config.event_retention.as_secs() / 86_400).max(1) as u32;
    let keys = drain(|| store::idempotency::prune(db, KEY_HOURS, BATCH)).await;
    let events = drain(|| store::events::prune(db, days, BATCH)).await;
    let tokens = drain(|| store::auth::prune_refresh(db, BATCH)).await;
    match (keys, events, tokens) {
        (Ok(k), Ok(e), Ok(t)) if k + e + t > 0 => {
            let ms = started.elapsed().as_millis() as u64;
            tracing::info!(
                keys = k,
                events = e,
                refresh_tokens = t,
                ms,
                "pruned old rows"
            )
        }
        (Ok(_), Ok(_), Ok(_)) => {}
        (k, e, t) => tracing::warn!(?k, ?e, ?t, "pruning failed; will retry"),
    }
    sweep_orphan_images(state).await;
}

/// Runs a batched delete until a batch comes back short.
async fn drain<F, Fut>(mut batch: F) -> sqlx::Result<u64>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = sqlx::Result<u64>>,
{
    let mut total = 0;
    loop {
        let n = batch().await?;
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
        // Let the transactions of guests go first between batches.
        tokio::task::yield_now().await;
    }
}

/// An image is an orphan when it is older than an hour (no upload takes
/// that long) and no upload row names it. Only this month's and last
/// month's folders are listed: older ones were swept when they were recent.
/// Keys are checked against the table `BATCH` at a time.
async fn sweep_orphan_images(state: &AppState) {
    let now = chrono::Utc::now();
    let last_month = now - chrono::Duration::days(31);
    let cutoff = now - chrono::Duration::hours(1);
    for month in [last_month, now] {
        let prefix = format!("{KEY_PREFIX}/{}", month.format("%Y/%m"));
        let keys = match state.storage.list_older_than(&prefix, cutoff).await {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "could not list stored images");
                return;
            }
        };
        for chunk in keys.chunks(BATCH as usize) {
            let known = match store::photos::known_keys(&state.db, chunk).await {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(error = %e, "orphan sweep stopped: database error");
                    return;
                }
            };
            for key in chunk.iter().filter(|k| !known.contains(k)) {
                match state.storage.delete(key).await {
                    Ok(()) => tracing::info!(%key, "deleted an image that no upload refers to"),
                    Err(e) => tracing::warn!(%key, error = %e, "could not delete an orphan image"),
                }
            }
        }
    }
}
