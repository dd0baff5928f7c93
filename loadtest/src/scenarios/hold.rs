//! `hold`: open N authenticated sockets, keep them alive through several
//! heartbeat intervals, and report the connect rate, how many are alive at
//! the end (each answers a `ping` command) and, given the server's pid,
//! its resident memory before and after and the bytes per socket.

use anyhow::bail;
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
use crate::progress::{Phase, Sink, Tally, Ticker};
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
    /// The servers' pids, in the order of `setup.server`, to read their
    /// RSS from `/proc` (empty: not measured).
    pub server_pids: Vec<u32>,
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
            server_pids: Vec::new(),
            connect_concurrency: 256,
            duration: Duration::from_secs(300),
            link: None,
        }
    }
}

/// Server RSS in KiB at the three moments.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Rss {
    pub before_kb: u64,
    pub connected_kb: u64,
    pub after_kb: u64,
}

impl Rss {
    /// (RSS after − before) and (connected − before) per socket.
    fn per_socket(&self, sockets: usize) -> (Option<f64>, Option<f64>) {
        let per = |kb_after: u64| {
            (sockets > 0).then(|| {
                round3((kb_after as f64 - self.before_kb as f64) * 1024.0 / sockets as f64)
            })
        };
        (per(self.after_kb), per(self.connected_kb))
    }
}

/// One server instance's memory, when several were loaded.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Instance {
    pub server: String,
    pub pid: u32,
    /// Sockets connected to this instance.
    pub connected: usize,
    pub rss: Rss,
    pub bytes_per_socket: Option<f64>,
    pub bytes_per_socket_connected: Option<f64>,
}

/// The servers under test and their pids, for RSS readings.
#[derive(Clone, Debug, Default)]
pub struct Servers {
    /// Base URLs, in the order of `--server`.
    pub names: Vec<String>,
    /// One per server, same order; empty when not measured.
    pub pids: Vec<u32>,
}

impl Servers {
    pub fn new(setup: &Setup, pids: &[u32]) -> anyhow::Result<Servers> {
        setup.targets()?;
        let names = setup.server_names();
        if !pids.is_empty() && pids.len() != names.len() {
            bail!(
                "--server-pid names {} pid(s) for {} server(s): give one per --server, in the same order",
                pids.len(),
                names.len()
            );
        }
        Ok(Servers {
            names,
            pids: pids.to_vec(),
        })
    }

    /// Every server's RSS in KiB now; `None` when not measured or when a
    /// process is gone.
    pub fn rss(&self) -> Option<Vec<u64>> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids.iter().map(|&p| rss_kb(p)).collect()
    }
}

/// [`Servers::rss`] at the three moments: before, all connected, after.
pub type Readings = [Option<Vec<u64>>; 3];

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub processes: usize,
    pub sockets: usize,
    pub connected: usize,
    /// Connected sockets per server, in the order of `--server`.
    pub connected_by_server: Vec<usize>,
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
    /// Summed over the instances when there are several.
    pub server_rss: Option<Rss>,
    /// (RSS after the hold − RSS before) / connected sockets, all instances.
    pub bytes_per_socket: Option<f64>,
    /// Same, measured right after all connected.
    pub bytes_per_socket_connected: Option<f64>,
    /// Per instance, when several servers were given with their pids.
    pub instances: Vec<Instance>,
    /// This tool's own RSS after the hold (summed over processes).
    pub client_rss_kb: Option<u64>,
    /// This tool's RSS growth from before connecting to after the hold
    /// (summed over processes), and per connected socket: what a client
    /// socket costs here (through TLS: the rustls connection too).
    #[serde(default)]
    pub client_rss_growth_kb: u64,
    #[serde(default)]
    pub client_bytes_per_socket: Option<f64>,
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
        if self.connected_by_server.len() > 1 {
            let each: Vec<String> = self
                .connected_by_server
                .iter()
                .map(|n| n.to_string())
                .collect();
            writeln!(f, "  per server: {}", each.join(", "))?;
        }
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
        self.fmt_rss(f)?;
        if let Some(c) = self.client_rss_kb {
            writeln!(
                f,
                "  client RSS {c} KiB{}",
                self.client_bytes_per_socket
                    .map(|b| format!(" ({b:.0} bytes/socket)"))
                    .unwrap_or_default()
            )?;
        }
        Ok(())
    }
}

impl Report {
    fn fmt_rss(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (Some(r), Some(b)) = (&self.server_rss, self.bytes_per_socket) else {
            return writeln!(f, "  server RSS: not measured (give --server-pid)");
        };
        let what = if self.instances.len() > 1 {
            format!("server RSS (sum of {} instances)", self.instances.len())
        } else {
            "server RSS".to_string()
        };
        writeln!(
            f,
            "  {what} {} → {} (connected) → {} KiB (after hold): {:.0} bytes/socket ({:.0} right after connecting)",
            r.before_kb,
            r.connected_kb,
            r.after_kb,
            b,
            self.bytes_per_socket_connected.unwrap_or(0.0)
        )?;
        if self.instances.len() > 1 {
            for i in &self.instances {
                writeln!(
                    f,
                    "    {} (pid {}): {} sockets, {} → {} → {} KiB: {:.0} bytes/socket ({:.0} right after connecting)",
                    i.server,
                    i.pid,
                    i.connected,
                    i.rss.before_kb,
                    i.rss.connected_kb,
                    i.rss.after_kb,
                    i.bytes_per_socket.unwrap_or(0.0),
                    i.bytes_per_socket_connected.unwrap_or(0.0)
                )?;
            }
        }
        Ok(())
    }

    /// Fills the RSS fields and bytes-per-socket figures from readings of
    /// `servers`, taken before, when all were connected, and after.
    pub fn set_rss(&mut self, servers: &Servers, readings: Readings) {
        let [Some(before), Some(connected), Some(after)] = readings else {
            return;
        };
        self.instances = (0..servers.pids.len().min(before.len()))
            .map(|i| {
                let rss = Rss {
                    before_kb: before[i],
                    connected_kb: connected[i],
                    after_kb: after[i],
                };
                let sockets = self.connected_by_server.get(i).copied().unwrap_or(0);
                let (bytes, bytes_connected) = rss.per_socket(sockets);
                Instance {
                    server: servers.names.get(i).cloned().unwrap_or_default(),
                    pid: servers.pids[i],
                    connected: sockets,
                    rss,
                    bytes_per_socket: bytes,
                    bytes_per_socket_connected: bytes_connected,
                }
            })
            .collect();
        let sum = self.instances.iter().fold(Rss::default(), |s, i| Rss {
            before_kb: s.before_kb + i.rss.before_kb,
            connected_kb: s.connected_kb + i.rss.connected_kb,
            after_kb: s.after_kb + i.rss.after_kb,
        });
        let (bytes, bytes_connected) = sum.per_socket(self.connected);
        self.server_rss = Some(sum);
        self.bytes_per_socket = bytes;
        self.bytes_per_socket_connected = bytes_connected;
    }

    /// One report from several processes' (`shard`); the readings are the
    /// parent's, which saw all of them connected.
    pub fn merge(parts: Vec<Report>, servers: &Servers, readings: Readings) -> Report {
        let mut m = Report {
            processes: parts.len(),
            ..Report::default()
        };
        for p in &parts {
            m.sockets += p.sockets;
            m.connected += p.connected;
            add_each(&mut m.connected_by_server, &p.connected_by_server);
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
            m.client_rss_growth_kb += p.client_rss_growth_kb;
        }
        m.connects_per_s = round3(m.connected as f64 / m.connect_s.max(1e-3));
        m.client_bytes_per_socket = client_bytes(m.client_rss_growth_kb, m.connected);
        m.set_rss(servers, readings);
        m
    }
}

/// RSS growth per socket, in bytes.
fn client_bytes(growth_kb: u64, sockets: usize) -> Option<f64> {
    (sockets > 0).then(|| round3(growth_kb as f64 * 1024.0 / sockets as f64))
}

/// Adds `from` into `into` element by element, growing `into` as needed.
pub(crate) fn add_each(into: &mut Vec<usize>, from: &[usize]) {
    if into.len() < from.len() {
        into.resize(from.len(), 0);
    }
    for (a, b) in into.iter_mut().zip(from) {
        *a += b;
    }
}

/// Counters the sockets update and the driver watches.
#[derive(Default)]
struct Shared {
    /// Sockets that connected or gave up.
    done: AtomicUsize,
    connected: AtomicUsize,
    /// Sockets lost while holding.
    lost: AtomicUsize,
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

    fn connect_tally(&self, n: usize) -> Tally {
        let done = self.done.load(Ordering::Acquire);
        let ok = self.connected.load(Ordering::Relaxed);
        Tally::new(n, ok, done - ok.min(done))
    }

    fn hold_tally(&self) -> Tally {
        let ok = self.connected.load(Ordering::Relaxed);
        let lost = self.lost.load(Ordering::Relaxed);
        Tally::new(ok, ok.saturating_sub(lost), lost)
    }
}

enum Outcome {
    Failed(String),
    Lost(String),
    Alive,
    NoReply,
}

/// One socket's result: its server, its connect time (if it connected)
/// and how it ended.
type SocketRun = (usize, Option<Duration>, Outcome);

pub async fn run(mut opts: Opts) -> anyhow::Result<Report> {
    let n = opts.sockets;
    check_socket_budget(n)?;
    let servers = Servers::new(&opts.setup, &opts.server_pids)?;
    let deadline = Instant::now() + opts.duration;
    let per_user = opts.sockets_per_user.max(1);
    let creds = users::ensure_all(&opts.setup, n.div_ceil(per_user) as u64, opts.duration).await?;
    let connector = Arc::new(opts.setup.connector()?);
    let sink = Sink::of("hold", opts.link.as_ref());
    let rss_before = servers.rss();
    let client_before = rss_kb(std::process::id());

    let shared = Arc::new(Shared::default());
    let (phase_tx, phase_rx) = watch::channel(false);
    let sem = Arc::new(Semaphore::new(opts.connect_concurrency.max(1)));
    let futs: Vec<_> = (0..n)
        .map(|i| {
            let server = connector.server_for(i);
            let life = socket(
                server,
                creds[i / per_user].access_token.clone(),
                connector.clone(),
                sem.clone(),
                shared.clone(),
                deadline,
                phase_rx.clone(),
            );
            async move {
                let (took, outcome) = life.await;
                (server, took, outcome)
            }
        })
        .collect();
    let started = Instant::now();
    let handle = spread(futs, crate::client::driver_tasks(n));
    {
        let s = shared.clone();
        let _ticker = Ticker::start(&sink, Phase::Connect, move || s.connect_tally(n));
        while shared.done.load(Ordering::Acquire) < n {
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
    let connect_s = started.elapsed().as_secs_f64();
    let rss_connected = servers.rss();
    let connected = shared.connected.load(Ordering::Relaxed);

    let (held_s, client_rss_kb) = hold_phase(&mut opts, &shared, &sink, connected).await?;
    let rss_after = servers.rss();
    if let Some(link) = opts.link.as_mut() {
        link.ready_then(LINK_WAIT).await?;
    }
    let _ = phase_tx.send(true);
    let runs = handle.await?;

    let mut report = Report {
        processes: 1,
        sockets: n,
        connected,
        connected_by_server: vec![0; connector.servers()],
        connect_s: round3(connect_s),
        connects_per_s: round3(connected as f64 / connect_s.max(1e-3)),
        heartbeat_interval_ms: shared.heartbeat_ms.load(Ordering::Relaxed),
        held_s: round3(held_s),
        client_rss_kb,
        client_rss_growth_kb: match (client_before, client_rss_kb) {
            (Some(b), Some(a)) => a.saturating_sub(b),
            _ => 0,
        },
        ..Report::default()
    };
    report.client_bytes_per_socket = client_bytes(report.client_rss_growth_kb, connected);
    report.add_runs(runs);
    report.set_rss(&servers, [rss_before, rss_connected, rss_after]);
    Ok(report)
}

/// Waits for the go, holds (three heartbeats unless told) and returns how
/// long it held and this process's RSS at the end.
async fn hold_phase(
    opts: &mut Opts,
    shared: &Arc<Shared>,
    sink: &Sink,
    connected: usize,
) -> anyhow::Result<(f64, Option<u64>)> {
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
        let s = shared.clone();
        let _ticker = Ticker::start(sink, Phase::Hold, move || s.hold_tally());
        tokio::time::sleep(hold).await;
    }
    Ok((
        hold_started.elapsed().as_secs_f64(),
        rss_kb(std::process::id()),
    ))
}

impl Report {
    fn add_runs(&mut self, runs: Vec<SocketRun>) {
        for (server, took, outcome) in runs {
            if let Some(t) = took {
                self.connect_latency.record(t);
                if let Some(c) = self.connected_by_server.get_mut(server) {
                    *c += 1;
                }
            }
            match outcome {
                Outcome::Failed(kind) => bump(&mut self.connect_errors, kind),
                Outcome::Lost(kind) => bump(&mut self.lost, kind),
                Outcome::NoReply => bump(&mut self.lost, "no_ping_reply"),
                Outcome::Alive => self.alive_at_end += 1,
            }
        }
    }
}

/// One socket's life: connect (within the connect budget), read until the
/// driver says the hold is over, then prove it is alive with a `ping`.
async fn socket(
    server: usize,
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
    let connected =
        tokio::time::timeout_at(deadline, connector.connect(server, &token, None)).await;
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
                Incoming::Closed(code) => {
                    shared.lost.fetch_add(1, Ordering::Relaxed);
                    return (took, Outcome::Lost(close_kind(code)));
                }
                Incoming::Failed(kind) => {
                    shared.lost.fetch_add(1, Ordering::Relaxed);
                    return (took, Outcome::Lost(kind));
                }
            }
        }
    }

    // Ids only need to be unique per socket.
    let id = "hold-ping";
    if send_command(&mut ws, id, protocol::command::PING, json!({}))
        .await
        .is_err()
    {
        return (took, Outcome::Lost("write".into()));
    }
    let answered = timeout(REPLY_TIMEOUT, async {
        loop {
            match recv(&mut ws).await {
                Incoming::Frame(f) if f.is_reply() && f.id.as_deref() == Some(id) => {
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
