//! Background pruning: idempotency keys after 48 hours (the contract keeps
//! them at least 24), user events after the retention, expired refresh
//! tokens, and receipt images whose row was never written (the process died
//! between storing the image and committing the row). Small batches, so no
//! long lock is ever held.

use std::time::Duration;

use crate::state::AppState;
use crate::store;

const EVERY: Duration = Duration::from_secs(600);
const BATCH: u32 = 5000;
const KEY_HOURS: u32 = 48;

/// Reloads the wheel when its version in the database differs from the one
/// this process uses (a merchant changed it through another instance).
pub async fn watch_wheel(state: AppState) {
    let mut tick = tokio::time::interval(state.config.wheel_reload_interval);
    let mut seen = crate::domain::lottery::loaded_version(&state);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store::lottery::settings_version(&state.db).await {
            Ok(v) if v != seen => {
                seen = v;
                if let Err(e) = crate::domain::lottery::reload_wheel(&state).await {
                    tracing::warn!(error = %e, "could not reload the wheel");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "could not read the wheel's version"),
        }
    }
}

pub async fn run(state: AppState) {
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let days = (state.config.event_retention.as_secs() / 86_400).max(1) as u32;
        let keys = store::idempotency::prune(&state.db, KEY_HOURS, BATCH).await;
        let events = store::events::prune(&state.db, days, BATCH).await;
        let tokens = store::auth::prune_refresh(&state.db, BATCH).await;
        sweep_orphan_images(&state).await;
        match (keys, events, tokens) {
            (Ok(k), Ok(e), Ok(t)) if k + e + t > 0 => {
                tracing::info!(keys = k, events = e, refresh_tokens = t, "pruned old rows")
            }
            (Ok(_), Ok(_), Ok(_)) => {}
            (k, e, t) => tracing::warn!(?k, ?e, ?t, "pruning failed; will retry"),
        }
    }
}

/// An image is an orphan when it is older than an hour (no upload takes
/// that long) and no upload row names it. Only this month's and last
/// month's folders are listed: older ones were swept when they were recent.
async fn sweep_orphan_images(state: &AppState) {
    let now = chrono::Utc::now();
    let last_month = now - chrono::Duration::days(31);
    let cutoff = now - chrono::Duration::hours(1);
    for month in [last_month, now] {
        let prefix = format!(
            "{}/{}",
            crate::domain::photos::KEY_PREFIX,
            month.format("%Y/%m")
        );
        let keys = match state.storage.list_older_than(&prefix, cutoff).await {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "could not list stored images");
                return;
            }
        };
        for key in keys {
            match store::photos::key_exists(&state.db, &key).await {
                Ok(false) => match state.storage.delete(&key).await {
                    Ok(()) => tracing::info!(%key, "deleted an image that no upload refers to"),
                    Err(e) => tracing::warn!(%key, error = %e, "could not delete an orphan image"),
                },
                Ok(true) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "orphan sweep stopped: database error");
                    return;
                }
            }
        }
    }
}
