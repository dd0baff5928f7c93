//! `storm`: N sockets connected, then all of them lost at once — dropped by
//! the client (`drop`) or closed by a server restart the operator performs
//! (`server-restart`) — and everyone reconnects with jittered exponential
//! backoff (full jitter, 100 ms doubling to a 2 s cap). Reports the time
//! from the first disconnect until all are back (`welcome` received), the
//! errors by kind, and checks that no user event was lost: every client
//! resumes with `?since=<last seq it saw>` and the replay (then the live
//! stream) must be gap-free. In `drop` mode, `--touch K` users are replay
//! probes: each is granted one point while disconnected and reconnects only
//! once the grant has committed, so its replay must hold exactly that
//! event. Probes are left out of the timing figures (they wait on purpose).
//! With several servers each socket comes back to the instance it left.

use protocol::{SyncResult, event};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;

use super::hold::close_kind;
use super::users::{self, Credentials};
use super::{Setup, check_socket_budget};
use crate::client::{Api, Connector, Incoming, Method, REPLY_TIMEOUT, Ws, recv, spread, unix_us};
use crate::link::{Control, Link};
use crate::progress::{Phase as Step, Sink, Tally, Ticker};
use crate::stats::{Counts, Hist, add_counts, bump, round3, show_counts};

const LINK_WAIT: Duration = Duration::from_secs(3600);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Drop,
    ServerRestart,
}

impl Mode {
    pub fn parse(s: &str) -> anyhow::Result<Mode> {
        match s {
            "drop" => Ok(Mode::Drop),
            "server-restart" => Ok(Mode::ServerRestart),
            _ => anyhow::bail!("--mode must be drop or server-restart"),
        }
    }
}

pub struct Opts {
    pub setup: Setup,
    pub sockets: usize,
    pub mode: Mode,
    /// Bound on the reconnection, from the first disconnect.
    pub duration: Duration,
    /// `server-restart`: how long to wait for the server to go away.
    pub wait_for_restart: Duration,
    /// `drop`: users granted a point while disconnected.
    pub touch: usize,
    pub connect_concurrency: usize,
    pub link: Option<Link>,
}

impl Opts {
    pub fn new(setup: Setup, sockets: usize, mode: Mode) -> Opts {
        Opts {
            setup,
            sockets,
            mode,
            duration: Duration::from_secs(120),
            wait_for_restart: Duration::from_secs(300),
            touch: 0,
            connect_concurrency: 256,
            link: None,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub processes: usize,
    pub mode: String,
    pub sockets: usize,
    pub connected: usize,
    pub connect_errors: Counts,
    /// How the sockets ended (close codes, or `dropped` by us).
    pub disconnects: Counts,
    pub disconnected: usize,
    pub back: usize,
    /// Unix µs of the first disconnect and of the last socket back
    /// (replay probes excluded).
    pub first_disconnect_us: Option<i64>,
    pub last_back_us: Option<i64>,
    /// First disconnect → all back (None unless all came back).
    pub time_to_all_back_ms: Option<f64>,
    /// Per socket: its disconnect → its `welcome` (replay probes excluded).
    pub reconnect_latency: Hist,
    pub reconnect_attempts: u64,
    /// Failed reconnect attempts by kind.
    pub errors: Counts,
    pub replays_checked: usize,
    pub replays_gap_free: usize,
    pub replayed_events: u64,
    /// `7005` answers (too far behind to replay).
    pub replay_resets: usize,
    pub touched: usize,
    pub touched_delivered: usize,
    pub touch_errors: Counts,
    pub violations: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "storm ({}): {}/{} connected, {} disconnected ({}), {} back{}",
            self.mode,
            self.connected,
            self.sockets,
            self.disconnected,
            show_counts(&self.disconnects),
            self.back,
            if self.processes > 1 {
                format!(", {} processes", self.processes)
            } else {
                String::new()
            }
        )?;
        match self.time_to_all_back_ms {
            Some(ms) => writeln!(f, "  all back {ms:.0} ms after the first disconnect")?,
            None => writeln!(f, "  NOT all back")?,
        }
        writeln!(f, "  per-socket reconnect {}", self.reconnect_latency)?;
        writeln!(
            f,
            "  {} attempts; errors: {}",
            self.reconnect_attempts,
            show_counts(&self.errors)
        )?;
        writeln!(
            f,
            "  replays: {}/{} gap-free, {} events replayed, {} resets",
            self.replays_gap_free, self.replays_checked, self.replayed_events, self.replay_resets
        )?;
        if self.touched > 0 {
            writeln!(
                f,
                "  replay probes: {} users granted a point while down, {} saw exactly that event{}",
                self.touched,
                self.touched_delivered,
                if self.touch_errors.is_empty() {
                    String::new()
                } else {
                    format!(" (touch errors: {})", show_counts(&self.touch_errors))
                }
            )?;
        }
        if !self.connect_errors.is_empty() {
            writeln!(f, "  connect errors: {}", show_counts(&self.connect_errors))?;
        }
        for v in self.violations.iter().take(10) {
            writeln!(f, "    {v}")?;
        }
        Ok(())
    }
}

impl Report {
    pub fn merge(parts: Vec<Report>) -> Report {
        let mut m = Report {
            processes: parts.len(),
            ..Report::default()
        };
        for p in &parts {
            m.mode = p.mode.clone();
            m.sockets += p.sockets;
            m.connected += p.connected;
            add_counts(&mut m.connect_errors, &p.connect_errors);
            add_counts(&mut m.disconnects, &p.disconnects);
            m.disconnected += p.disconnected;
            m.back += p.back;
            m.first_disconnect_us = match (m.first_disconnect_us, p.first_disconnect_us) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            m.last_back_us = m.last_back_us.max(p.last_back_us);
            m.reconnect_latency.merge(&p.reconnect_latency);
            m.reconnect_attempts += p.reconnect_attempts;
            add_counts(&mut m.errors, &p.errors);
            m.replays_checked += p.replays_checked;
            m.replays_gap_free += p.replays_gap_free;
            m.replayed_events += p.replayed_events;
            m.replay_resets += p.replay_resets;
            m.touched += p.touched;
            m.touched_delivered += p.touched_delivered;
            add_counts(&mut m.touch_errors, &p.touch_errors);
            for v in &p.violations {
                if m.violations.len() < 20 {
                    m.violations.push(v.clone());
                }
            }
        }
        m.finish();
        m
    }

    fn finish(&mut self) {
        self.time_to_all_back_ms = match (self.first_disconnect_us, self.last_back_us) {
            (Some(a), Some(b)) if self.back == self.disconnected && self.disconnected > 0 => {
                Some(round3((b - a) as f64 / 1000.0))
            }
            _ => None,
        };
    }
}

/// Phases the driver moves the sockets through.
#[derive(Clone, Copy, PartialEq, PartialOrd)]
enum Phase {
    Up,
    Drop,
    Stop,
}

struct Ctx {
    connector: Connector,
    mode: Mode,
    sem: Semaphore,
    connect_deadline: Instant,
    connected: AtomicUsize,
    done: AtomicUsize,
    disconnected: AtomicUsize,
    back: AtomicUsize,
    /// Reconnect attempts that failed, all sockets.
    failed_attempts: AtomicUsize,
    touched_seen: AtomicUsize,
    wake: Notify,
    /// Set once every probe's grant has committed (or failed).
    touches_done: watch::Sender<bool>,
}

impl Ctx {
    fn bump(&self, counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_one();
    }

    fn connect_tally(&self, n: usize) -> Tally {
        let done = self.done.load(Ordering::Acquire);
        let ok = self.connected.load(Ordering::Acquire);
        Tally::new(n, ok, done.saturating_sub(ok))
    }

    fn reconnect_tally(&self) -> Tally {
        Tally::new(
            self.connected.load(Ordering::Acquire),
            self.back.load(Ordering::Acquire),
            self.failed_attempts.load(Ordering::Relaxed),
        )
    }

    /// Waits until `counter` reaches `n`, at most until `deadline`.
    async fn wait_for(&self, counter: &AtomicUsize, n: usize, deadline: Instant) -> bool {
        loop {
            if counter.load(Ordering::Acquire) >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    }
}

#[derive(Default)]
struct SockRun {
    /// This user was granted a point while disconnected.
    touched: bool,
    connect_error: Option<String>,
    disconnect: Option<String>,
    disconnect_us: Option<i64>,
    back_us: Option<i64>,
    attempts: u64,
    errors: Counts,
    replay_checked: bool,
    replay_ok: bool,
    replayed: u64,
    reset: bool,
    admin_events: u64,
    violations: Vec<String>,
}

pub async fn run(mut opts: Opts) -> anyhow::Result<Report> {
    let n = opts.sockets;
    check_socket_budget(n)?;
    let creds = users::ensure_all(&opts.setup, n as u64, Duration::from_secs(300)).await?;
    let api = opts.setup.api()?;
    let sink = Sink::of("storm", opts.link.as_ref());
    let ctx = Arc::new(Ctx {
        connector: opts.setup.connector()?,
        mode: opts.mode,
        sem: Semaphore::new(opts.connect_concurrency.max(1)),
        connect_deadline: Instant::now() + Duration::from_secs(300),
        connected: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        disconnected: AtomicUsize::new(0),
        back: AtomicUsize::new(0),
        failed_attempts: AtomicUsize::new(0),
        touched_seen: AtomicUsize::new(0),
        wake: Notify::new(),
        touches_done: watch::channel(false).0,
    });
    let touched: Vec<Credentials> = if opts.mode == Mode::Drop {
        creds.iter().take(opts.touch).cloned().collect()
    } else {
        Vec::new()
    };
    let (phase_tx, phase_rx) = watch::channel(Phase::Up);
    let futs: Vec<_> = creds
        .into_iter()
        .enumerate()
        .map(|(i, c)| socket(i, c, i < touched.len(), ctx.clone(), phase_rx.clone()))
        .collect();
    let handle = spread(futs, crate::client::driver_tasks(n));
    {
        let c = ctx.clone();
        let _ticker = Ticker::start(&sink, Step::Connect, move || c.connect_tally(n));
        ctx.wait_for(&ctx.done, n, ctx.connect_deadline + Duration::from_secs(15))
            .await;
    }
    let connected = ctx.connected.load(Ordering::Acquire);

    let mut go = true;
    if let Some(link) = opts.link.as_mut() {
        go = matches!(
            link.ready_then(LINK_WAIT).await?,
            Control::Go | Control::Drop
        );
    }
    let mut touch_errors = Counts::new();
    if go && connected > 0 {
        let c = ctx.clone();
        let _ticker = Ticker::start(&sink, Step::Reconnect, move || c.reconnect_tally());
        touch_errors = lose_and_recover(&opts, &ctx, &phase_tx, &api, &touched, connected).await;
    }
    let _ = phase_tx.send(Phase::Stop);
    let runs = handle.await?;

    let mut report = Report {
        processes: 1,
        mode: match opts.mode {
            Mode::Drop => "drop",
            Mode::ServerRestart => "server-restart",
        }
        .into(),
        sockets: n,
        connected,
        touched: touched.len(),
        touch_errors,
        ..Report::default()
    };
    for r in runs {
        report.add_run(r);
    }
    report.finish();
    Ok(report)
}

/// The storm itself: every socket lost (dropped by us, or by the server
/// you restart), then waits until they are all back or the bound passes.
/// Returns the replay probes' grant errors.
async fn lose_and_recover(
    opts: &Opts,
    ctx: &Ctx,
    phase: &watch::Sender<Phase>,
    api: &Api,
    touched: &[Credentials],
    connected: usize,
) -> Counts {
    let mut touch_errors = Counts::new();
    let deadline = match opts.mode {
        Mode::Drop => {
            let _ = phase.send(Phase::Drop);
            ctx.wait_for(
                &ctx.disconnected,
                connected,
                Instant::now() + Duration::from_secs(10),
            )
            .await;
            touch_errors = touch(api, touched).await;
            let _ = ctx.touches_done.send(true);
            Instant::now() + opts.duration
        }
        Mode::ServerRestart => {
            eprintln!(
                "storm: {connected} sockets up; restart the server now (waiting up to {} s)",
                opts.wait_for_restart.as_secs()
            );
            let wait_end = Instant::now() + opts.wait_for_restart;
            ctx.wait_for(&ctx.disconnected, 1, wait_end).await;
            // Everyone has the whole bound to notice and come back.
            ctx.wait_for(&ctx.disconnected, connected, Instant::now() + opts.duration)
                .await;
            Instant::now() + opts.duration
        }
    };
    let gone = ctx.disconnected.load(Ordering::Acquire);
    ctx.wait_for(&ctx.back, gone, deadline).await;
    // Let the touched users' events and any late live events arrive.
    let settle = Instant::now() + Duration::from_secs(5);
    ctx.wait_for(&ctx.touched_seen, touched.len(), settle).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    touch_errors
}

impl Report {
    /// One socket's run into the totals.
    fn add_run(&mut self, r: SockRun) {
        if let Some(e) = r.connect_error {
            bump(&mut self.connect_errors, e);
            return;
        }
        if let (Some(kind), Some(at)) = (&r.disconnect, r.disconnect_us) {
            bump(&mut self.disconnects, kind.clone());
            self.disconnected += 1;
            self.first_disconnect_us = Some(self.first_disconnect_us.map_or(at, |f| f.min(at)));
            if let Some(b) = r.back_us {
                self.back += 1;
                if !r.touched {
                    self.last_back_us = self.last_back_us.max(Some(b));
                    self.reconnect_latency.record_us((b - at).max(0) as u64);
                }
            }
        }
        self.reconnect_attempts += r.attempts;
        add_counts(&mut self.errors, &r.errors);
        if r.replay_checked {
            self.replays_checked += 1;
            if r.replay_ok {
                self.replays_gap_free += 1;
            }
        }
        self.replayed_events += r.replayed;
        if r.reset {
            self.replay_resets += 1;
        }
        if r.touched && r.admin_events == 1 && r.replayed >= 1 {
            self.touched_delivered += 1;
        }
        for v in r.violations {
            if self.violations.len() < 20 {
                self.violations.push(v);
            }
        }
    }
}

/// Grants one point to each user (16 at a time); errors by kind.
async fn touch(api: &Api, users: &[Credentials]) -> Counts {
    use futures::StreamExt;
    let mut errors = Counts::new();
    if users.is_empty() {
        return errors;
    }
    let merchant = match api.merchant_token().await {
        Ok(m) => m,
        Err(_) => {
            bump(&mut errors, "merchant_login");
            return errors;
        }
    };
    let results: Vec<Result<(), String>> = futures::stream::iter(users.iter())
        .map(|c| {
            let merchant = merchant.clone();
            async move {
                let body = json!({ "user_id": c.user_id, "points": 1, "reason": "storm" });
                match api
                    .call(
                        Method::POST,
                        "/api/merchant/points/adjust",
                        Some(&merchant),
                        Some(&body),
                        None,
                    )
                    .await
                {
                    Ok(r) if r.ok() => Ok(()),
                    Ok(r) => Err(format!("code_{}", r.code)),
                    Err(e) => Err(e.kind.to_string()),
                }
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for r in results {
        if let Err(kind) = r {
            bump(&mut errors, kind);
        }
    }
    errors
}

/// Full jitter: uniformly 0 .. min(cap, start × 2^attempt).
fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_START
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_CAP);
    ceiling.mul_f64(rand::rng().random_range(0.0..1.0))
}

/// Follows the user's event seqs.
struct Seqs {
    last: u64,
}

impl Seqs {
    /// Checks one frame; returns true for a user event.
    fn check(&mut self, f: &protocol::ServerFrame, run: &mut SockRun, after_drop: bool) -> bool {
        if f.kind != event::POINTS_UPDATE && f.kind != event::REVIEW_RESULT {
            return false;
        }
        let seq = f.seq.unwrap_or(0);
        if seq != self.last + 1 {
            run.violations
                .push(format!("expected seq {}, got {seq}", self.last + 1));
        }
        self.last = self.last.max(seq);
        if after_drop && f.kind == event::POINTS_UPDATE && f.data["source"] == "admin" {
            run.admin_events += 1;
        }
        true
    }
}

async fn socket(
    i: usize,
    cred: Credentials,
    touched: bool,
    ctx: Arc<Ctx>,
    mut phase: watch::Receiver<Phase>,
) -> SockRun {
    // The same instance before and after the storm.
    let server = ctx.connector.server_for(i);
    let mut run = SockRun {
        touched,
        ..SockRun::default()
    };
    let first = {
        let _permit = ctx.sem.acquire().await;
        tokio::time::timeout_at(
            ctx.connect_deadline,
            ctx.connector.connect(server, &cred.access_token, None),
        )
        .await
    };
    let (ws, welcome) = match first {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            run.connect_error = Some(e.kind);
            ctx.bump(&ctx.done);
            return run;
        }
        Err(_) => {
            run.connect_error = Some("deadline".into());
            ctx.bump(&ctx.done);
            return run;
        }
    };
    ctx.connected.fetch_add(1, Ordering::AcqRel);
    ctx.bump(&ctx.done);
    let mut seqs = Seqs {
        last: welcome.last_seq,
    };

    // Up: until we drop it, the server closes it, or the run ends. The
    // socket is owned by this block, so a socket the server closed is
    // released before reconnecting (18,000 dead sockets held during the
    // reconnect would exhaust the open-files limit).
    {
        let mut ws = ws;
        loop {
            let p = *phase.borrow_and_update();
            if p == Phase::Stop {
                return run;
            }
            if p == Phase::Drop && ctx.mode == Mode::Drop {
                drop(ws);
                run.disconnect = Some("dropped".into());
                break;
            }
            tokio::select! {
                changed = phase.changed() => {
                    if changed.is_err() {
                        return run;
                    }
                }
                m = recv(&mut ws) => match m {
                    Incoming::Frame(f) => {
                        seqs.check(&f, &mut run, false);
                    }
                    Incoming::Closed(code) => {
                        run.disconnect = Some(close_kind(code));
                        break;
                    }
                    Incoming::Failed(kind) => {
                        run.disconnect = Some(kind);
                        break;
                    }
                }
            }
        }
    }
    let down_at = unix_us();
    run.disconnect_us = Some(down_at);
    ctx.bump(&ctx.disconnected);
    if touched {
        let mut done = ctx.touches_done.subscribe();
        tokio::select! {
            _ = done.wait_for(|d| *d) => {}
            _ = phase.wait_for(|p| *p == Phase::Stop) => return run,
        }
    }

    // Back, with backoff; then the replay must continue our seqs exactly.
    let since = seqs.last;
    let mut attempt = 0u32;
    let mut ws = loop {
        let wait = backoff(attempt);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = phase.wait_for(|p| *p == Phase::Stop) => return run,
        }
        run.attempts += 1;
        let r = tokio::select! {
            r = ctx.connector.connect(server, &cred.access_token, Some(since)) => r,
            _ = phase.wait_for(|p| *p == Phase::Stop) => return run,
        };
        match r {
            Ok((ws, _)) => break ws,
            Err(e) => {
                bump(&mut run.errors, e.kind);
                ctx.failed_attempts.fetch_add(1, Ordering::Relaxed);
                attempt += 1;
            }
        }
    };
    run.back_us = Some(unix_us());
    ctx.bump(&ctx.back);
    let admin_before = run.admin_events;
    check_replay(&mut ws, &mut seqs, since, &mut run).await;
    if touched && run.admin_events > admin_before {
        ctx.bump(&ctx.touched_seen);
    }

    // Live events until the end, still gap-free.
    loop {
        tokio::select! {
            _ = phase.wait_for(|p| *p == Phase::Stop) => return run,
            m = recv(&mut ws) => match m {
                Incoming::Frame(f) => {
                    let before = run.admin_events;
                    seqs.check(&f, &mut run, true);
                    if touched && before == 0 && run.admin_events == 1 {
                        ctx.bump(&ctx.touched_seen);
                    }
                }
                _ => return run,
            }
        }
    }
}

/// Reads the replay that `?since=` triggers, up to its `sync_result`.
async fn check_replay(ws: &mut Ws, seqs: &mut Seqs, since: u64, run: &mut SockRun) {
    run.replay_checked = true;
    let violations_before = run.violations.len();
    let mut replayed = 0u64;
    let result = tokio::time::timeout(REPLY_TIMEOUT, async {
        loop {
            match recv(ws).await {
                Incoming::Frame(f) if f.kind == event::SYNC_RESULT => return Some(f),
                Incoming::Frame(f) => {
                    if seqs.check(&f, run, true) {
                        replayed += 1;
                    }
                }
                _ => return None,
            }
        }
    })
    .await;
    run.replayed = replayed;
    let Ok(Some(frame)) = result else {
        run.violations.push("no sync_result after ?since=".into());
        return;
    };
    match frame.code {
        Some(0) => match serde_json::from_value::<SyncResult>(frame.data) {
            Ok(s) => {
                if s.from_seq != since + 1 || s.count != replayed || s.to_seq != seqs.last {
                    run.violations.push(format!(
                        "sync_result {s:?} after since={since}: saw {replayed} events up to {}",
                        seqs.last
                    ));
                }
            }
            Err(_) => run.violations.push("malformed sync_result".into()),
        },
        Some(7005) => run.reset = true,
        other => run.violations.push(format!("sync_result code {other:?}")),
    }
    run.replay_ok = !run.reset && run.violations.len() == violations_before;
}
