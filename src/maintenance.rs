//! Background pruning: idempotency keys after 48 hours (the contract keeps
//! them at least 24), user events after the retention, expired refresh
//! tokens. Small batches, so no long lock is ever held.

use std::time::Duration;

use crate::state::AppState;
use crate::store;

const EVERY: Duration = Duration::from_secs(600);
const BATCH: u32 = 5000;
const KEY_HOURS: u32 = 48;

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
        match (keys, events, tokens) {
            (Ok(k), Ok(e), Ok(t)) if k + e + t > 0 => {
                tracing::info!(keys = k, events = e, refresh_tokens = t, "pruned old rows")
            }
            (Ok(_), Ok(_), Ok(_)) => {}
            (k, e, t) => tracing::warn!(?k, ?e, ?t, "pruning failed; will retry"),
        }
    }
}
