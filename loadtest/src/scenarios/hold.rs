//! `hold`: open N authenticated sockets, keep them alive through several
//! heartbeat intervals, and report the connect rate, how many are alive at
//! the end (each answers a `ping` command) and, given the server's pid,
//! its resident memory before and after and the bytes per socket.

use serde::{Deserialize, Serialize};
use serde_json::json;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::{Instant, timeout};

use super::{Setup, check_socket_budget, users};
use crate::client::{Connector, Incoming, REPLY_TIMEOUT, recv, rss_kb, send_command, spread};
use crate::link::{Control, Link};
use crate::stats::{Counts, Hist, add_counts, bump, round3, show_counts};

/// How long a shard child waits for its parent between phases.
const LINK_WAIT: Duration = Duration::from_secs(3600);

pub struct Opts {
    pub setup: Setup,
    pub sockets: usize,
    /// Sockets per user (the server allows 5 by default).
    pub sockets_per_user: usize,
    /// How long to hold; default three heartbeat intervals (from `welcome`).
    pub hold: Option<Duration>,
    /// The server's pid, to read its RSS from `/proc`.
    pub server_pid: Option<u32>,
    /// Connects in flight at once.
    pub connect_concurrency: usize,
    /// Bound on logging in and connecting.
    pub duration: Duration,
    /// Set when a `shard` parent drives the phases.
    pub link: Option<Link>,
}

impl Opts {
    pub fn new(setup: Setup, sockets: usize) -> Opts {
        Opts {
            setup,
            sockets,
            sockets_per_user: 1,
            hold: None,
            server_pid: None,
            connect_concurrency: 256,
            duration: Duration::from_secs(300),
            link: None,
        }
    }
}

/// Server RSS in KiB at the three moments.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Rss {
    pub before_kb: u64,
    pub connected_kb: u64,
    pub after_kb: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub processes: usize,
    pub sockets: usize,
    pub connected: usize,
    pub connect_errors: Counts,
    pub connect_s: f64,
    pub connects_per_s: f64,
    pub connect_latency: Hist,
    pub heartbeat_interval_ms: u64,
    pub held_s: f64,
    /// Sockets that answered a `ping` command after the hold.
    pub alive_at_end: usize,
    /// Sockets lost during the hold, by close code or error.
    pub lost: Counts,
    pub server_rss: Option<Rss>,
    /// (RSS after the hold − RSS before) / connected sockets.
    pub bytes_per_socket: Option<f64>,
    /// Same, measured right after all connected.
    pub bytes_per_socket_connected: Option<f64>,
    /// This tool's own RSS after the hold (summed over processes).
    pub client_rss_kb: Option<u64>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "hold: {}/{} sockets connected in {:.2} s ({:.0}/s){}",
            self.connected,
            self.sockets,
            self.connect_s,
            self.connects_per_s,
            if self.processes > 1 {
                format!(" over {} processes", self.processes)
            } else {
                String::new()
            }
        )?;
        writeln!(f, "  connect latency {}", self.connect_latency)?;
        if !self.connect_errors.is_empty() {
            writeln!(f, "  connect errors: {}", show_counts(&self.connect_errors))?;
        }
        writeln!(
            f,
            "  held {:.1} s (heartbeat {} ms): {}/{} alive at the end; lost: {}",
            self.held_s,
            self.heartbeat_interval_ms,
            self.alive_at_end,
            self.connected,
            show_counts(&self.lost)
        )?;
        match (&self.server_rss, self.bytes_per_socket) {
            (Some(r), Some(b)) => writeln!(
                f,
                "  server RSS {} → {} (connected) → {} KiB (after hold): {:.0} bytes/socket ({:.0} right after connecting)",
                r.before_kb,
                r.connected_kb,
                r.after_kb,
                b,
                self.bytes_per_socket_connected.unwrap_or(0.0)
            )?,
            _ => writeln!(f, "  server RSS: not measured (give --server-pid)")?,
        }
        if let Some(c) = self.client_rss_kb {
            writeln!(f, "  client RSS {c} KiB")?;
        }
        Ok(())
    }
}

impl Report {
    /// Fills the RSS fields and bytes-per-socket figures.
    pub fn set_rss(&mut self, rss: Option<Rss>) {
        self.server_rss = rss;
        let per = |kb_after: u64, kb_before: u64| {
            (self.connected > 0).then(|| {
                round3((kb_after as f64 - kb_before as f64) * 1024.0 / self.connected as f64)
            })
        };
        self.bytes_per_socket = rss.and_then(|r| per(r.after_kb, r.before_kb));
        self.bytes_per_socket_connected = rss.and_then(|r| per(r.connected_kb, r.before_kb));
    }

    /// One report from several processes' (`shard`); `rss` is read by the
    /// parent, which saw all of them connected.
    pub fn merge(parts: Vec<Report>, rss: Option<Rss>) -> Report {
        let mut m = Report {
            processes: parts.len(),
            ..Report::default()
        };
        for p in &parts {
            m.sockets += p.sockets;
            m.connected += p.connected;
            add_counts(&mut m.connect_errors, &p.connect_errors);
            m.connect_s = m.connect_s.max(p.connect_s);
            m.connect_latency.merge(&p.connect_latency);
            m.heartbeat_interval_ms = m.heartbeat_interval_ms.max(p.heartbeat_interval_ms);
            m.held_s = m.held_s.max(p.held_s);
            m.alive_at_end += p.alive_at_end;
            add_counts(&mut m.lost, &p.lost);
            if let Some(c) = p.client_rss_kb {
                m.client_rss_kb = Some(m.client_rss_kb.unwrap_or(0) + c);
            }
        }
        m.connects_per_s = round3(m.connected as f64 / m.connect_s.max(1e-3));
        m.set_rss(rss);
        m
    }
}

/// Counters the sockets update and the driver watches.
#[derive(Default)]
struct Shared {
    /// Sockets that connected or gave up.
    done: AtomicUsize,
    connected: AtomicUsize,
    heartbeat_ms: AtomicU64,
    wake: Notify,
}

impl Shared {
    fn finished_connecting(&self, ok: bool) {
        if ok {
            self.connected.fetch_add(1, Ordering::Relaxed);
        }
        self.done.fetch_add(1, Ordering::Release);
        self.wake.notify_one();
    }
}

enum Outcome {
    Failed(String),
    Lost(String),
    Alive,
    NoReply,
}

pub async fn run(mut opts: Opts) -> anyhow::Result<Report> {
    let n = opts.sockets;
    check_socket_budget(n)?;
    let deadline = Instant::now() + opts.duration;
    let per_user = opts.sockets_per_user.max(1);
    let creds = users::ensure_all(&opts.setup, n.div_ceil(per_user) as u64, opts.duration).await?;
    let connector = Arc::new(opts.setup.connector()?);
    let rss_before = opts.server_pid.and_then(rss_kb);

    let shared = Arc::new(Shared::default());
    let (phase_tx, phase_rx) = watch::channel(false);
    let sem = Arc::new(Semaphore::new(opts.connect_concurrency.max(1)));
    let futs: Vec<_> = (0..n)
        .map(|i| {
            socket(
                i,
                creds[i / per_user].access_token.clone(),
                connector.clone(),
                sem.clone(),
                shared.clone(),
                deadline,
                phase_rx.clone(),
            )
        })
        .collect();
    let started = Instant::now();
    let handle = spread(futs, crate::client::driver_tasks(n));
    while shared.done.load(Ordering::Acquire) < n {
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    let connect_s = started.elapsed().as_secs_f64();
    let rss_connected = opts.server_pid.and_then(rss_kb);
    let connected = shared.connected.load(Ordering::Relaxed);

    let mut go = true;
    if let Some(link) = opts.link.as_mut() {
        go = link.ready_then(LINK_WAIT).await? == Control::Go;
    }
    let heartbeat_ms = shared.heartbeat_ms.load(Ordering::Relaxed);
    let hold = opts
        .hold
        .unwrap_or(Duration::from_millis(heartbeat_ms.max(1000) * 3));
    let hold_started = Instant::now();
    if go && connected > 0 {
        tokio::time::sleep(hold).await;
    }
    let held_s = hold_started.elapsed().as_secs_f64();
    let rss_after = opts.server_pid.and_then(rss_kb);
    let client_rss_kb = rss_kb(std::process::id());
    if let Some(link) = opts.link.as_mut() {
        link.ready_then(LINK_WAIT).await?;
    }
    let _ = phase_tx.send(true);
    let outcomes = handle.await?;

    let mut report = Report {
        processes: 1,
        sockets: n,
        connected,
        connect_s: round3(connect_s),
        connects_per_s: round3(connected as f64 / connect_s.max(1e-3)),
        heartbeat_interval_ms: heartbeat_ms,
        held_s: round3(held_s),
        client_rss_kb,
        ..Report::default()
    };
    for (took, outcome) in outcomes {
        if let Some(t) = took {
            report.connect_latency.record(t);
        }
        match outcome {
            Outcome::Failed(kind) => bump(&mut report.connect_errors, kind),
            Outcome::Lost(kind) => bump(&mut report.lost, kind),
            Outcome::NoReply => bump(&mut report.lost, "no_ping_reply"),
            Outcome::Alive => report.alive_at_end += 1,
        }
    }
    let rss = match (rss_before, rss_connected, rss_after) {
        (Some(before_kb), Some(connected_kb), Some(after_kb)) => Some(Rss {
            before_kb,
            connected_kb,
            after_kb,
        }),
        _ => None,
    };
    report.set_rss(rss);
    Ok(report)
}

/// One socket's life: connect (within the connect budget), read until the
/// driver says the hold is over, then prove it is alive with a `ping`.
async fn socket(
    i: usize,
    token: String,
    connector: Arc<Connector>,
    sem: Arc<Semaphore>,
    shared: Arc<Shared>,
    deadline: Instant,
    mut phase: watch::Receiver<bool>,
) -> (Option<Duration>, Outcome) {
    let permit = tokio::select! {
        p = sem.acquire_owned() => p.ok(),
        _ = tokio::time::sleep_until(deadline) => None,
    };
    if permit.is_none() {
        shared.finished_connecting(false);
        return (None, Outcome::Failed("deadline".into()));
    }
    let t0 = Instant::now();
    let connected = tokio::time::timeout_at(deadline, connector.connect(&token, None)).await;
    drop(permit);
    let (mut ws, welcome) = match connected {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            shared.finished_connecting(false);
            return (None, Outcome::Failed(e.kind));
        }
        Err(_) => {
            shared.finished_connecting(false);
            return (None, Outcome::Failed("deadline".into()));
        }
    };
    let took = Some(t0.elapsed());
    shared
        .heartbeat_ms
        .store(welcome.heartbeat_interval_ms, Ordering::Relaxed);
    shared.finished_connecting(true);

    loop {
        if *phase.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            m = recv(&mut ws) => match m {
                Incoming::Frame(_) => {}
                Incoming::Closed(code) => return (took, Outcome::Lost(close_kind(code))),
                Incoming::Failed(kind) => return (took, Outcome::Lost(kind)),
            }
        }
    }

    let id = format!("hold-{i}");
    if send_command(&mut ws, &id, protocol::command::PING, json!({}))
        .await
        .is_err()
    {
        return (took, Outcome::Lost("write".into()));
    }
    let answered = timeout(REPLY_TIMEOUT, async {
        loop {
            match recv(&mut ws).await {
                Incoming::Frame(f) if f.is_reply() && f.id.as_deref() == Some(id.as_str()) => {
                    return f.code == Some(0);
                }
                Incoming::Frame(_) => continue,
                _ => return false,
            }
        }
    })
    .await;
    match answered {
        Ok(true) => (took, Outcome::Alive),
        _ => (took, Outcome::NoReply),
    }
}

/// `close_4000`, `close_1001`, or `eof` when the stream just ended.
pub(crate) fn close_kind(code: Option<u16>) -> String {
    match code {
        Some(c) => format!("close_{c}"),
        None => "eof".into(),
    }
}
