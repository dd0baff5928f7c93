//! One clock for every socket's heartbeat. Each tick wakes every socket,
//! which then closes itself if it has been silent for two intervals (or its
//! token expired) and otherwise sends a ping frame.
//!
//! A timer per socket would cost a boxed timer entry each (part of the
//! per-socket memory budget, see BENCHMARKS.md); one shared tick costs
//! nothing per socket. Pings therefore go out together once per interval,
//! a burst of small writes that the server absorbs easily.
//!
//! The same clock says when the server is stopping, so a socket waits on
//! one shared signal, not two.

use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the clock says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// The n-th tick since start (0 before the first).
    Tick(u64),
    /// The server is stopping: finish the client's commands and close with 1001.
    Stopping,
}

pub struct Clock(watch::Sender<Beat>);

impl Default for Clock {
    fn default() -> Self {
        Clock(watch::Sender::new(Beat::Tick(0)))
    }
}

impl Clock {
    pub fn subscribe(&self) -> watch::Receiver<Beat> {
        self.0.subscribe()
    }

    /// Tells every socket the server is stopping. Final: ticks stop.
    pub fn stop(&self) {
        self.0.send_replace(Beat::Stopping);
    }

    fn tick(&self) {
        self.0.send_if_modified(|beat| match beat {
            Beat::Tick(n) => {
                *n += 1;
                true
            }
            Beat::Stopping => false,
        });
    }

    /// Ticks every `interval` until `cancel`.
    pub async fn run(&self, interval: Duration, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick of an interval is immediate: skip it, so a socket's
        // first ping comes one interval after the server starts.
        tick.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => self.tick(),
            }
        }
    }
}

/// Whether the server is stopping, as seen by a socket's receiver.
pub fn stopping(rx: &watch::Receiver<Beat>) -> bool {
    *rx.borrow() == Beat::Stopping
}
