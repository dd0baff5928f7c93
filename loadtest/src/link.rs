//! Coordination between a scenario's socket side and whoever drives it:
//! in one process through channels, and across processes (`shard`) as text
//! lines — the child writes progress on stdout, the parent writes controls
//! on the child's stdin. Every scenario that has phases waits on its link
//! at the same points whether the driver is local or a parent process.

use anyhow::{Context, bail};
use std::time::Duration;

use crate::progress::Status;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// Driver → scenario.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// Go on to the next phase.
    Go,
    /// A stock change was requested at `at_us` (unix µs) and produced `stock`.
    Sent { stock: i64, at_us: i64 },
    /// Drop every socket now (storm).
    Drop,
    /// Finish and report.
    Stop,
}

/// Scenario → driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// The phase's work is done; waiting for `Go` (or `Stop`).
    Ready,
    /// Every live socket of this process got the update with this stock.
    Seen { stock: i64 },
    /// Where a long phase stands (see [`crate::progress`]); the parent
    /// prints these merged, it never waits on them.
    Status(Status),
}

impl Control {
    pub fn to_line(&self) -> String {
        match self {
            Control::Go => "go".into(),
            Control::Sent { stock, at_us } => format!("sent {stock} {at_us}"),
            Control::Drop => "drop".into(),
            Control::Stop => "stop".into(),
        }
    }

    pub fn parse(line: &str) -> Option<Control> {
        let mut w = line.split_whitespace();
        match (w.next()?, w.next(), w.next()) {
            ("go", None, None) => Some(Control::Go),
            ("drop", None, None) => Some(Control::Drop),
            ("stop", None, None) => Some(Control::Stop),
            ("sent", Some(s), Some(t)) => Some(Control::Sent {
                stock: s.parse().ok()?,
                at_us: t.parse().ok()?,
            }),
            _ => None,
        }
    }
}

/// Lines a child writes on stdout start with `@`; the final report is
/// `@report <json>`.
pub const REPORT_PREFIX: &str = "@report ";

impl Progress {
    pub fn to_line(&self) -> String {
        match self {
            Progress::Ready => "@ready".into(),
            Progress::Seen { stock } => format!("@seen {stock}"),
            Progress::Status(s) => s.to_line(),
        }
    }

    pub fn parse(line: &str) -> Option<Progress> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["@ready"] => Some(Progress::Ready),
            ["@seen", s] => Some(Progress::Seen {
                stock: s.parse().ok()?,
            }),
            ["@status", rest @ ..] => Status::parse(rest).map(Progress::Status),
            _ => None,
        }
    }
}

/// The scenario's end.
pub struct Link {
    pub control: mpsc::UnboundedReceiver<Control>,
    pub progress: mpsc::UnboundedSender<Progress>,
    /// The driver is a parent process (this process is a `shard` child):
    /// progress counts go to it rather than to stderr.
    pub remote: bool,
}

/// The driver's end.
pub struct Driver {
    pub control: mpsc::UnboundedSender<Control>,
    pub progress: mpsc::UnboundedReceiver<Progress>,
}

/// A connected pair, for a scenario driven in the same process.
pub fn pair() -> (Link, Driver) {
    let (ctx, crx) = mpsc::unbounded_channel();
    let (ptx, prx) = mpsc::unbounded_channel();
    (
        Link {
            control: crx,
            progress: ptx,
            remote: false,
        },
        Driver {
            control: ctx,
            progress: prx,
        },
    )
}

impl Link {
    pub fn report(&self, p: Progress) {
        let _ = self.progress.send(p);
    }

    /// Says `Ready` and waits for the next control, at most `limit`.
    /// A vanished driver counts as `Stop`.
    pub async fn ready_then(&mut self, limit: Duration) -> anyhow::Result<Control> {
        self.report(Progress::Ready);
        self.next(limit).await
    }

    pub async fn next(&mut self, limit: Duration) -> anyhow::Result<Control> {
        match tokio::time::timeout(limit, self.control.recv()).await {
            Ok(Some(c)) => Ok(c),
            Ok(None) => Ok(Control::Stop),
            Err(_) => bail!("the driver sent nothing for {limit:?}"),
        }
    }

    /// A link over this process's stdin (controls) and stdout (progress):
    /// how a `shard` child talks to its parent.
    pub fn stdio() -> Link {
        let (mut link, mut driver) = pair();
        link.remote = true;
        let control = driver.control.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(c) = Control::parse(&line)
                    && control.send(c).is_err()
                {
                    break;
                }
            }
            // The parent went away: stop rather than run on alone.
            let _ = control.send(Control::Stop);
        });
        tokio::spawn(async move {
            let mut out = tokio::io::stdout();
            while let Some(p) = driver.progress.recv().await {
                let line = format!("{}\n", p.to_line());
                if out.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
                let _ = out.flush().await;
            }
        });
        link
    }
}

impl Driver {
    pub fn send(&self, c: Control) {
        let _ = self.control.send(c);
    }

    /// Waits for the next progress message, at most `limit`.
    pub async fn next(&mut self, limit: Duration) -> anyhow::Result<Progress> {
        tokio::time::timeout(limit, self.progress.recv())
            .await
            .context("no progress in time")?
            .context("the scenario ended early")
    }
}

/// Waits until every driver has said `Ready` (bounded).
pub async fn all_ready(drivers: &mut [Driver], limit: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    for d in drivers.iter_mut() {
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match d.next(left).await? {
                Progress::Ready => break,
                Progress::Seen { .. } | Progress::Status(_) => continue,
            }
        }
    }
    Ok(())
}

pub fn broadcast(drivers: &[Driver], c: Control) {
    for d in drivers {
        d.send(c.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        for c in [
            Control::Go,
            Control::Drop,
            Control::Stop,
            Control::Sent {
                stock: 7,
                at_us: 1_700_000_000_000_000,
            },
        ] {
            assert_eq!(Control::parse(&c.to_line()), Some(c));
        }
        let status = Status {
            phase: crate::progress::Phase::Connect,
            tally: crate::progress::Tally::new(10, 7, 1),
            elapsed_ms: 2000,
        };
        for p in [
            Progress::Ready,
            Progress::Seen { stock: -3 },
            Progress::Status(status),
        ] {
            assert_eq!(Progress::parse(&p.to_line()), Some(p));
        }
        assert_eq!(Control::parse("nonsense"), None);
    }
}
