//! One clock for every socket's heartbeat. Each tick wakes every socket,
//! which then closes itself if it has been silent for two intervals (or its
//! token expired) and otherwise sends a ping frame.
//!
//! A timer per socket would cost a boxed timer entry each (part of the
//! per-socket memory budget, see BENCHMARKS.md); one shared tick costs
//! nothing per socket. Pings therefore go out together once per interval,
//! a burst of small writes that the server absorbs easily.
//!
//! The same clock says when the server is stopping (the value [`STOPPING`]),
//! so a socket waits on one shared signal, not two.

use crate::state::AppState;
use tokio::sync::watch;

/// The clock's value once the server is stopping.
pub const STOPPING: u64 = u64::MAX;

/// Whether the server is stopping, as seen by a socket's receiver.
pub fn stopping(rx: &watch::Receiver<u64>) -> bool {
    *rx.borrow() == STOPPING
}

pub async fn run(state: AppState) {
    let mut tick = tokio::time::interval(state.config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick of an interval is immediate: skip it, so a socket's
    // first ping comes one interval after the server starts.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {
                state.heartbeat.send_if_modified(|n| {
                    if *n == STOPPING {
                        return false;
                    }
                    *n += 1;
                    true
                });
            }
        }
    }
}
