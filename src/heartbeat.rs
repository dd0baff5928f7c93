//! One clock for every socket's heartbeat. Each tick the hub pings a slice
//! of its sockets and closes those of the slice silent for two intervals
//! (4000) or whose token expired (4001), walking its sockets on its
//! broadcasting threads like a broadcast (`Hub::heartbeat`). Every socket
//! is in one slice, so each is visited once per interval.
//!
//! A timer per socket would cost a timer entry each, and a tick that woke
//! every socket's task would cost each a wake-up and a turn of its loop;
//! this costs nothing per socket but the ping's write. Slicing spreads the
//! pings, and the pongs that answer them, over the interval instead of
//! one burst that would hold up a broadcast landing at the same moment.

use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;

/// The shortest time between two slices.
const SLICE_EVERY: Duration = Duration::from_millis(500);
/// The most slices an interval is cut into.
const MAX_SLICES: u32 = 60;

/// Beats one slice every `interval / slices` until `cancel` (the first one
/// a slice's time after the start).
pub async fn run(hub: Arc<Hub>, interval: Duration, cancel: CancellationToken) {
    let slices =
        (interval.as_millis() / SLICE_EVERY.as_millis()).clamp(1, MAX_SLICES as u128) as u32;
    let mut tick = tokio::time::interval(interval / slices);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick of an interval is immediate: skip it.
    tick.tick().await;
    let mut n: u32 = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                hub.heartbeat(interval * 2, (n, slices));
                n = (n + 1) % slices;
            }
        }
    }
}
