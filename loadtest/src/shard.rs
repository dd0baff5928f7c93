//! The process side of `shard`: run P copies of this binary as children,
//! each with its slice of users and its own source addresses, and talk to
//! each over its stdin/stdout (see [`crate::link`]). One process can hold
//! at most ~19,000 sockets (20,000 open files); P processes hold P times
//! as many. What to run in each child and how to merge their reports is
//! the caller's (the CLI's) business.

use anyhow::{Context, bail};
use serde::de::DeserializeOwned;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

use std::sync::Arc;

use crate::link::{Control, Driver, Progress, REPORT_PREFIX};
use crate::progress::Board;

/// A running child and the report it will print.
pub struct Pending {
    index: usize,
    report: oneshot::Receiver<String>,
    process: Child,
}

/// Starts this executable with `args`; its stdout carries progress and the
/// final report, its stderr goes to ours. Its `@status` counts go to
/// `board`, everything else it reports to the returned driver.
pub fn spawn(
    index: usize,
    args: &[String],
    board: Arc<Board>,
) -> anyhow::Result<(Driver, Pending)> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let mut process = Command::new(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting a shard child")?;
    let mut stdin = process.stdin.take().context("child stdin")?;
    let stdout = process.stdout.take().context("child stdout")?;
    let (control_tx, mut control_rx) = mpsc::unbounded_channel::<Control>();
    let (progress_tx, progress_rx) = mpsc::unbounded_channel::<Progress>();
    let (report_tx, report_rx) = oneshot::channel();

    tokio::spawn(async move {
        while let Some(c) = control_rx.recv().await {
            let line = format!("{}\n", c.to_line());
            if stdin.write_all(line.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        let mut report_tx = Some(report_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(json) = line.strip_prefix(REPORT_PREFIX) {
                if let Some(tx) = report_tx.take() {
                    let _ = tx.send(json.to_string());
                }
            } else if let Some(p) = Progress::parse(&line) {
                match p {
                    Progress::Status(s) => board.update(index, s),
                    p => {
                        let _ = progress_tx.send(p);
                    }
                }
            } else {
                eprintln!("shard {index}: {line}");
            }
        }
    });
    Ok((
        Driver {
            control: control_tx,
            progress: progress_rx,
        },
        Pending {
            index,
            report: report_rx,
            process,
        },
    ))
}

impl Pending {
    /// The child's report, once it has printed it and exited.
    pub async fn report<T: DeserializeOwned>(mut self, limit: Duration) -> anyhow::Result<T> {
        let i = self.index;
        let text = tokio::time::timeout(limit, self.report)
            .await
            .with_context(|| format!("shard {i} printed no report in {limit:?}"))?;
        let status = tokio::time::timeout(Duration::from_secs(30), self.process.wait()).await;
        let text = match text {
            Ok(t) => t,
            Err(_) => bail!("shard {i} exited without a report ({status:?})"),
        };
        serde_json::from_str(&text).with_context(|| format!("shard {i}'s report"))
    }
}

/// `total` split into `parts` nearly equal shares.
pub fn split(total: usize, parts: usize) -> Vec<usize> {
    let parts = parts.max(1);
    (0..parts)
        .map(|i| total / parts + usize::from(i < total % parts))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        assert_eq!(split(10, 3), vec![4, 3, 3]);
        assert_eq!(split(2, 4), vec![1, 1, 0, 0]);
        assert_eq!(split(40_000, 3).iter().sum::<usize>(), 40_000);
    }
}
