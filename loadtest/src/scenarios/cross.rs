//! `cross`: a user's events delivered across instances. U users each hold
//! a *listening* socket on instance A (every server of `--server` but the
//! last, round-robin) and a *command* socket on the last one, B. Draws are
//! sent over B at a fixed total rate; each success commits one
//! `points_update` with the user's next `seq`, which B's instance hands to
//! the others through Redis, and A's must push it to the listener.
//!
//! For every command: when its reply arrived on B (a reply means
//! committed) and when the event with the same user and `seq` arrived on
//! A. Reported: (frame on A − reply on B), (frame on A − the event's own
//! `timestamp`), the achieved command rate, events lost (not on A within
//! `event_timeout` of their reply), whether every listening socket saw its
//! seqs in order with no gap, and the same per A instance. An event whose
//! `total_points` differs from its reply's `remaining_points` is a
//! mismatch; a user event no command of ours explains is unexpected.
//!
//! The listening sockets are read by one thread on a bare `epoll` (see
//! `crate::raw`), the command sockets by tokio tasks. Setup is `commands`'
//! (`commands::prepare`: every user topped up for the run, the daily draw
//! limit lifted and put back). Split with `shard`, each child takes a share
//! of the users and of the rate; the parent does the setup once.

use anyhow::{Context, bail};
use protocol::{ErrorCode, Welcome, command, event};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::commands::{self, Mix, Pacer};
use super::hold::close_kind;
use super::users::{self, Credentials};
use super::{Setup, check_socket_budget};
use crate::client::{Connector, Incoming, REPLY_TIMEOUT, Ws, parse_time_us, recv, spread, unix_us};
use crate::link::Link;
use crate::progress::{Phase, Sink, Tally, Ticker};
use crate::raw::{Event, Reader, Socket};
use crate::stats::{Counts, Hist, add_counts, bump, round3, show_counts};

const LINK_WAIT: Duration = Duration::from_secs(3600);
/// Bound on connecting every user's two sockets.
const CONNECT_LIMIT: Duration = Duration::from_secs(300);

pub struct Opts {
    pub setup: Setup,
    /// U: users, two sockets each.
    pub users: usize,
    /// Commands per second, all users together.
    pub rate: f64,
    /// How long to send.
    pub duration: Duration,
    /// An event later than this after its reply counts as lost.
    pub event_timeout: Duration,
    pub connect_concurrency: usize,
    /// Someone else (a `shard` parent) did the setup.
    pub skip_setup: bool,
    pub link: Option<Link>,
}

impl Opts {
    pub fn new(setup: Setup, users: usize) -> Opts {
        Opts {
            setup,
            users,
            rate: 1000.0,
            duration: Duration::from_secs(30),
            event_timeout: Duration::from_secs(10),
            connect_concurrency: 64,
            skip_setup: false,
            link: None,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub processes: usize,
    pub users: usize,
    /// B: where the commands go.
    pub command_server: String,
    /// Users with both sockets up.
    pub connected: usize,
    pub connect_errors: Counts,
    pub rate_target: f64,
    pub duration_s: f64,
    pub sent: u64,
    pub answered: u64,
    pub successes: u64,
    /// Answered commands per second over the sending phase.
    pub commands_per_s: f64,
    pub successes_per_s: f64,
    pub codes: Counts,
    /// Command → its reply on B.
    pub reply_latency: Hist,
    /// Frame on A − reply on B (negative counted as 0, see `before_reply`).
    pub after_reply: Hist,
    /// Frame on A − the event's `timestamp`.
    pub after_commit: Hist,
    /// Events on A that arrived before their reply on B.
    pub before_reply: u64,
    /// Events on A stamped later than they arrived (clock resolution).
    pub clock_skew_samples: u64,
    /// Successes whose event reached A within the timeout.
    pub delivered: u64,
    /// Successes whose event did not (never, or late).
    pub lost: u64,
    /// Of the lost, events that did arrive, after the timeout.
    pub late: u64,
    /// Events whose `total_points` differ from their reply's balance.
    pub mismatched: u64,
    /// User events on A that no successful command of ours explains.
    pub unexpected: u64,
    /// Listening sockets whose user events came in seq order, gap-free.
    pub listeners_in_order: usize,
    pub listeners_checked: usize,
    pub order_violations: Vec<String>,
    /// Users with a command whose outcome is unknown (no reply).
    pub unverifiable_users: usize,
    /// Sockets that ended before the run did, by kind.
    pub sockets_lost: Counts,
    /// Per A instance, in the order of `--server`.
    pub by_server: Vec<Listeners>,
    pub verification_ok: bool,
    pub notes: Vec<String>,
}

/// What the listening sockets on one A instance saw.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Listeners {
    pub server: String,
    pub listeners: usize,
    pub delivered: u64,
    pub lost: u64,
    pub in_order: usize,
    pub after_reply: Hist,
    pub after_commit: Hist,
}

impl Listeners {
    fn merge(&mut self, o: &Listeners) {
        if self.server.is_empty() {
            self.server.clone_from(&o.server);
        }
        self.listeners += o.listeners;
        self.delivered += o.delivered;
        self.lost += o.lost;
        self.in_order += o.in_order;
        self.after_reply.merge(&o.after_reply);
        self.after_commit.merge(&o.after_commit);
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "cross: {} users ({} with both sockets), listening on {} instance(s), commands on {}{}",
            self.users,
            self.connected,
            self.by_server.len(),
            self.command_server,
            if self.processes > 1 {
                format!(", {} processes", self.processes)
            } else {
                String::new()
            }
        )?;
        writeln!(
            f,
            "  {} sent, {} answered, {} successes in {:.1} s: {:.1} commands/s (target {:.0}/s)",
            self.sent,
            self.answered,
            self.successes,
            self.duration_s,
            self.commands_per_s,
            self.rate_target
        )?;
        writeln!(f, "  reply on B:               {}", self.reply_latency)?;
        writeln!(f, "  frame on A − reply on B:  {}", self.after_reply)?;
        writeln!(f, "  frame on A − event time:  {}", self.after_commit)?;
        writeln!(
            f,
            "  delivered {}/{}; lost {} ({} late); {} before their reply; {} mismatched; {} unexpected",
            self.delivered,
            self.successes,
            self.lost,
            self.late,
            self.before_reply,
            self.mismatched,
            self.unexpected
        )?;
        writeln!(
            f,
            "  order: {}/{} listening sockets saw their seqs in order with no gap",
            self.listeners_in_order, self.listeners_checked
        )?;
        for v in self.order_violations.iter().take(10) {
            writeln!(f, "    {v}")?;
        }
        if self.by_server.len() > 1 {
            for s in &self.by_server {
                writeln!(
                    f,
                    "    {}: {} listeners, delivered {}, lost {}, {} in order; after reply {}",
                    s.server, s.listeners, s.delivered, s.lost, s.in_order, s.after_reply
                )?;
            }
        }
        writeln!(f, "  codes: {}", show_counts(&self.codes))?;
        if !self.connect_errors.is_empty() {
            writeln!(f, "  connect errors: {}", show_counts(&self.connect_errors))?;
        }
        if !self.sockets_lost.is_empty() {
            writeln!(f, "  sockets lost: {}", show_counts(&self.sockets_lost))?;
        }
        writeln!(
            f,
            "  verification: {}{}",
            if self.verification_ok {
                "PASSED"
            } else {
                "FAILED"
            },
            if self.unverifiable_users > 0 {
                format!(
                    " ({} users with a command left unanswered)",
                    self.unverifiable_users
                )
            } else {
                String::new()
            }
        )?;
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        Ok(())
    }
}

impl Report {
    /// One report from several processes' (`shard`).
    pub fn merge(parts: Vec<Report>, notes: Vec<String>) -> Report {
        let mut m = Report {
            processes: parts.len(),
            notes,
            ..Report::default()
        };
        for p in &parts {
            m.users += p.users;
            m.command_server.clone_from(&p.command_server);
            m.connected += p.connected;
            add_counts(&mut m.connect_errors, &p.connect_errors);
            m.rate_target += p.rate_target;
            m.duration_s = m.duration_s.max(p.duration_s);
            m.sent += p.sent;
            m.answered += p.answered;
            m.successes += p.successes;
            add_counts(&mut m.codes, &p.codes);
            m.reply_latency.merge(&p.reply_latency);
            m.after_reply.merge(&p.after_reply);
            m.after_commit.merge(&p.after_commit);
            m.before_reply += p.before_reply;
            m.clock_skew_samples += p.clock_skew_samples;
            m.delivered += p.delivered;
            m.lost += p.lost;
            m.late += p.late;
            m.mismatched += p.mismatched;
            m.unexpected += p.unexpected;
            m.listeners_in_order += p.listeners_in_order;
            m.listeners_checked += p.listeners_checked;
            for v in &p.order_violations {
                if m.order_violations.len() < 20 {
                    m.order_violations.push(v.clone());
                }
            }
            m.unverifiable_users += p.unverifiable_users;
            add_counts(&mut m.sockets_lost, &p.sockets_lost);
            if m.by_server.len() < p.by_server.len() {
                m.by_server.resize(p.by_server.len(), Listeners::default());
            }
            for (a, b) in m.by_server.iter_mut().zip(&p.by_server) {
                a.merge(b);
            }
            m.notes.extend(p.notes.iter().cloned());
        }
        m.finish();
        m
    }

    fn finish(&mut self) {
        self.rate_target = round3(self.rate_target);
        self.commands_per_s = round3(self.answered as f64 / self.duration_s.max(1e-3));
        self.successes_per_s = round3(self.successes as f64 / self.duration_s.max(1e-3));
        self.verification_ok = self.delivered > 0
            && self.lost == 0
            && self.mismatched == 0
            && self.unexpected == 0
            && self.listeners_in_order == self.listeners_checked;
    }
}

/// How many listening servers there are (all but the last), and the
/// command server's index (the last).
fn roles(setup: &Setup) -> anyhow::Result<(usize, usize)> {
    let n = setup.targets()?.len();
    if n < 2 {
        bail!(
            "cross needs at least two servers (--server A,B): it listens on all but the last and sends commands to the last"
        );
    }
    Ok((n - 1, n - 1))
}

/// Merchant setup for a cross run through the first server (one REST door
/// per server, to wait for each to load the wheel): `commands`' own.
pub async fn prepare(
    setup: &Setup,
    creds: &[Credentials],
    rate: f64,
    duration: Duration,
) -> anyhow::Result<commands::Prepared> {
    commands::prepare(
        &setup.apis()?,
        creds,
        Mix::Draw,
        duration,
        Some(rate),
        None,
        None,
    )
    .await
}

pub async fn run(mut opts: Opts) -> anyhow::Result<Report> {
    check_socket_budget(opts.users * 2)?;
    roles(&opts.setup)?;
    if opts.rate.is_nan() || opts.rate <= 0.0 {
        bail!("--rate must be above 0");
    }
    let creds = users::ensure_all(&opts.setup, opts.users as u64, CONNECT_LIMIT).await?;
    let prepared = if opts.skip_setup {
        commands::Prepared::default()
    } else {
        prepare(&opts.setup, &creds, opts.rate, opts.duration).await?
    };
    let result = drive(&mut opts, creds).await;
    let restored = commands::restore(&opts.setup.api()?, &prepared).await;
    let mut report = result?;
    restored?;
    report.notes.extend(prepared.notes);
    Ok(report)
}

/// What one user's command socket did.
#[derive(Default)]
struct CommandRun {
    sent: u64,
    answered: u64,
    codes: Counts,
    reply_latency: Hist,
    /// Each success: the seq its event must carry, when the reply came
    /// (unix µs) and the balance it reported.
    done: Vec<Done>,
    /// A command got no reply: its outcome (and so the seqs after it) is
    /// unknown.
    unverifiable: bool,
    lost: Option<String>,
}

struct Done {
    seq: u64,
    reply_us: i64,
    remaining_points: Option<i64>,
}

/// One user event as a listening socket saw it.
struct Seen {
    seq: u64,
    recv_us: i64,
    ts_us: Option<i64>,
    total_points: Option<i64>,
}

/// What one listening socket saw.
#[derive(Default)]
struct Listening {
    /// `welcome.last_seq`: the events must continue from it.
    welcome_seq: Option<u64>,
    events: Vec<Seen>,
    ended: Option<String>,
}

/// Both sockets of a user, connected.
struct Pair {
    user: usize,
    listen_server: usize,
    listener: Socket,
    ws: Ws,
    welcome: Welcome,
}

async fn drive(opts: &mut Opts, creds: Vec<Credentials>) -> anyhow::Result<Report> {
    let (listen_servers, command_server) = roles(&opts.setup)?;
    let names = opts.setup.server_names();
    let connector = Arc::new(opts.setup.connector()?);
    let sink = Sink::of("cross", opts.link.as_ref());
    let mut report = Report {
        processes: 1,
        users: creds.len(),
        command_server: names[command_server].clone(),
        rate_target: opts.rate,
        by_server: names[..listen_servers]
            .iter()
            .map(|s| Listeners {
                server: s.clone(),
                ..Listeners::default()
            })
            .collect(),
        ..Report::default()
    };
    let pairs = connect_all(
        &creds,
        connector,
        listen_servers,
        command_server,
        opts.connect_concurrency,
        &sink,
        &mut report,
    )
    .await;
    report.connected = pairs.len();
    if pairs.is_empty() {
        bail!(
            "no user connected both sockets: {}",
            show_counts(&report.connect_errors)
        );
    }

    // The listeners' reader thread, from now until every event is in.
    let mut listeners = Vec::with_capacity(pairs.len());
    let mut commanders = Vec::with_capacity(pairs.len());
    for p in pairs {
        listeners.push((p.user, p.listen_server, p.listener));
        commanders.push((p.user, p.ws, p.welcome));
    }
    let placement: Vec<(usize, usize)> = listeners.iter().map(|l| (l.0, l.1)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let reading = {
        let (stop, received) = (stop.clone(), received.clone());
        let sockets: Vec<Socket> = listeners.into_iter().map(|l| l.2).collect();
        tokio::task::spawn_blocking(move || read_listeners(sockets, &stop, &received))
    };

    if let Some(link) = opts.link.as_mut() {
        link.ready_then(LINK_WAIT).await?;
    }
    let started = Instant::now();
    let deadline = started + opts.duration;
    let pacer = Arc::new(Pacer::new(opts.rate));
    let tag = super::run_tag();
    let futs: Vec<_> = commanders
        .into_iter()
        .map(|(user, ws, welcome)| {
            let (pacer, tag) = (pacer.clone(), tag.clone());
            async move {
                let run = commander(user, ws, welcome.last_seq, &pacer, &tag, deadline).await;
                (user, run)
            }
        })
        .collect();
    let n = futs.len();
    let runs = spread(futs, crate::client::driver_tasks(n)).await?;
    report.duration_s = round3(
        started
            .elapsed()
            .as_secs_f64()
            .min(opts.duration.as_secs_f64()),
    );

    // Every success's event, or the timeout after the last reply.
    let expected: u64 = runs.iter().map(|(_, r)| r.done.len() as u64).sum();
    let wait_until = Instant::now() + opts.event_timeout;
    while received.load(Ordering::Acquire) < expected && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A moment for anything unexpected behind them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Release);
    let seen = reading.await??;

    let mut by_user: HashMap<usize, CommandRun> = runs.into_iter().collect();
    for ((user, server), listening) in placement.into_iter().zip(seen) {
        let run = by_user.remove(&user).unwrap_or_default();
        report.add_user(server, run, listening, opts.event_timeout);
    }
    report.finish();
    Ok(report)
}

/// Opens each user's listener (on A, raw) and command socket (on B); the
/// users with both, in user order.
async fn connect_all(
    creds: &[Credentials],
    connector: Arc<Connector>,
    listen_servers: usize,
    command_server: usize,
    concurrency: usize,
    sink: &Sink,
    report: &mut Report,
) -> Vec<Pair> {
    let n = creds.len();
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let counts = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let deadline = Instant::now() + CONNECT_LIMIT;
    let futs: Vec<_> = creds
        .iter()
        .enumerate()
        .map(|(user, c)| {
            let (connector, sem, counts) = (connector.clone(), sem.clone(), counts.clone());
            let token = c.access_token.clone();
            let listen_server = user % listen_servers;
            async move {
                let r = tokio::time::timeout_at(deadline, async {
                    let _permit = sem.acquire().await;
                    let raw = connector
                        .connect_raw(listen_server, &token)
                        .await
                        .map_err(|e| format!("listener_{}", e.kind))?;
                    let listener = raw.into_raw().map_err(|_| "listener_io".to_string())?;
                    let (ws, welcome) = connector
                        .connect(command_server, &token, None)
                        .await
                        .map_err(|e| format!("commander_{}", e.kind))?;
                    Ok::<_, String>(Pair {
                        user,
                        listen_server,
                        listener,
                        ws,
                        welcome,
                    })
                })
                .await
                .unwrap_or_else(|_| Err("deadline".into()));
                let counter = if r.is_ok() { &counts.0 } else { &counts.1 };
                counter.fetch_add(1, Ordering::Relaxed);
                r
            }
        })
        .collect();
    let ticker = {
        let c = counts.clone();
        Ticker::start(sink, Phase::Connect, move || {
            Tally::new(n, c.0.load(Ordering::Relaxed), c.1.load(Ordering::Relaxed))
        })
    };
    let mut pairs = Vec::with_capacity(n);
    for r in spread(futs, crate::client::driver_tasks(n))
        .await
        .unwrap_or_default()
    {
        match r {
            Ok(p) => pairs.push(p),
            Err(kind) => bump(&mut report.connect_errors, kind),
        }
    }
    drop(ticker);
    pairs.sort_by_key(|p| p.user);
    pairs
}

/// One user's command socket: a draw whenever the pacer gives this user a
/// slot, until the deadline, reading (and so answering pings) while it
/// waits. The k-th success must come back as event `last_seq + k`.
async fn commander(
    user: usize,
    mut ws: Ws,
    last_seq: u64,
    pacer: &Pacer,
    tag: &str,
    deadline: Instant,
) -> CommandRun {
    let mut run = CommandRun::default();
    let mut next_seq = last_seq + 1;
    let mut n: u64 = 0;
    loop {
        let slot = pacer.slot();
        if slot >= deadline {
            break;
        }
        let sleep = tokio::time::sleep_until(slot);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                m = recv(&mut ws) => match m {
                    Incoming::Frame(_) => {}
                    Incoming::Closed(code) => {
                        run.lost = Some(close_kind(code));
                        return run;
                    }
                    Incoming::Failed(kind) => {
                        run.lost = Some(kind);
                        return run;
                    }
                }
            }
        }
        let id = format!("{tag}-{user}-{n}");
        n += 1;
        let t0 = Instant::now();
        if crate::client::send_command(
            &mut ws,
            &id,
            command::LOTTERY_DRAW,
            json!({ "draw_count": 1 }),
        )
        .await
        .is_err()
        {
            run.lost = Some("write_failed".into());
            run.unverifiable = true;
            return run;
        }
        run.sent += 1;
        let reply = tokio::time::timeout(REPLY_TIMEOUT, async {
            loop {
                match recv(&mut ws).await {
                    Incoming::Frame(f) if f.is_reply() && f.id.as_deref() == Some(id.as_str()) => {
                        return Ok((unix_us(), f.code.unwrap_or(-1), f.data));
                    }
                    Incoming::Frame(_) => {}
                    Incoming::Closed(code) => return Err(close_kind(code)),
                    Incoming::Failed(kind) => return Err(kind),
                }
            }
        })
        .await
        .unwrap_or_else(|_| Err("timeout".into()));
        let (reply_us, code, data) = match reply {
            Ok(r) => r,
            Err(kind) => {
                bump(&mut run.codes, kind.clone());
                run.lost = Some(kind);
                run.unverifiable = true;
                return run;
            }
        };
        run.answered += 1;
        bump(&mut run.codes, code.to_string());
        if code == 0 {
            run.reply_latency.record(t0.elapsed());
            run.done.push(Done {
                seq: next_seq,
                reply_us,
                remaining_points: data["remaining_points"].as_i64(),
            });
            next_seq += 1;
        } else if code == ErrorCode::RateLimited.code() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        } else if matches!(
            ErrorCode::from_code(code),
            Some(
                ErrorCode::NotEnoughPoints
                    | ErrorCode::DailyLimitReached
                    | ErrorCode::LotteryUnavailable
            )
        ) {
            // Nothing more this user can do in this run.
            break;
        }
    }
    run
}

/// The parts of a listener's frame that are measured, borrowed.
#[derive(Deserialize)]
struct UserFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    seq: Option<u64>,
    #[serde(default, borrow)]
    data: UserData<'a>,
}

#[derive(Deserialize, Default)]
struct UserData<'a> {
    last_seq: Option<u64>,
    total_points: Option<i64>,
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
}

/// The reading thread: every listening socket's user events, until `stop`.
/// Counts `points_update` frames into `received` as they come.
fn read_listeners(
    sockets: Vec<Socket>,
    stop: &AtomicBool,
    received: &AtomicU64,
) -> anyhow::Result<Vec<Listening>> {
    let n = sockets.len();
    let mut reader = Reader::new(sockets).context("registering the listening sockets")?;
    let mut out: Vec<Listening> = (0..n).map(|_| Listening::default()).collect();
    let mut on = |ev: Event| match ev {
        Event::Text(i, text) => {
            let recv_us = unix_us();
            let Ok(f) = serde_json::from_slice::<UserFrame>(text) else {
                return;
            };
            if f.kind == event::WELCOME {
                out[i].welcome_seq = f.data.last_seq;
                return;
            }
            if f.kind != event::POINTS_UPDATE && f.kind != event::REVIEW_RESULT {
                return;
            }
            let Some(seq) = f.seq else { return };
            if f.kind == event::POINTS_UPDATE {
                received.fetch_add(1, Ordering::Release);
            }
            out[i].events.push(Seen {
                seq,
                recv_us,
                ts_us: f.data.timestamp.as_deref().and_then(parse_time_us),
                total_points: f.data.total_points,
            });
        }
        Event::Ended(i, kind) => out[i].ended = Some(kind),
    };
    reader.drain_pending(&mut on);
    while !stop.load(Ordering::Acquire) {
        reader.poll(50, &mut on)?;
    }
    Ok(out)
}

impl Report {
    /// One user's commands against what its listener saw.
    fn add_user(
        &mut self,
        server: usize,
        run: CommandRun,
        listening: Listening,
        event_timeout: Duration,
    ) {
        let mut mine = Listeners {
            listeners: 1,
            ..Listeners::default()
        };
        self.sent += run.sent;
        self.answered += run.answered;
        self.successes += run.done.len() as u64;
        add_counts(&mut self.codes, &run.codes);
        self.reply_latency.merge(&run.reply_latency);
        if let Some(kind) = &run.lost {
            bump(&mut self.sockets_lost, format!("commander_{kind}"));
        }
        if let Some(kind) = &listening.ended {
            bump(&mut self.sockets_lost, format!("listener_{kind}"));
        }
        if run.unverifiable {
            self.unverifiable_users += 1;
        }

        // Order: consecutive seqs from the listener's own welcome.
        self.listeners_checked += 1;
        let mut in_order = true;
        let mut last = listening.welcome_seq;
        for s in &listening.events {
            if let Some(l) = last
                && s.seq != l + 1
            {
                in_order = false;
                if self.order_violations.len() < 20 {
                    self.order_violations
                        .push(format!("after seq {l} came {} on a listener", s.seq));
                }
            }
            last = Some(s.seq);
        }
        if in_order {
            self.listeners_in_order += 1;
            mine.in_order = 1;
        }

        let limit_us = event_timeout.as_micros() as i64;
        let mut by_seq: HashMap<u64, &Seen> = HashMap::new();
        for s in &listening.events {
            by_seq.entry(s.seq).or_insert(s);
        }
        for d in &run.done {
            let Some(s) = by_seq.remove(&d.seq) else {
                self.lost += 1;
                mine.lost += 1;
                continue;
            };
            let after = s.recv_us - d.reply_us;
            if after > limit_us {
                self.lost += 1;
                self.late += 1;
                mine.lost += 1;
                continue;
            }
            self.delivered += 1;
            mine.delivered += 1;
            if after < 0 {
                self.before_reply += 1;
            }
            self.after_reply.record_us(after.max(0) as u64);
            mine.after_reply.record_us(after.max(0) as u64);
            if let Some(ts) = s.ts_us {
                let commit = s.recv_us - ts;
                if commit < 0 {
                    self.clock_skew_samples += 1;
                }
                self.after_commit.record_us(commit.max(0) as u64);
                mine.after_commit.record_us(commit.max(0) as u64);
            }
            if s.total_points.is_some() && s.total_points != d.remaining_points {
                self.mismatched += 1;
            }
        }
        // A command without a reply may still have committed its event.
        if !run.unverifiable {
            self.unexpected += by_seq.len() as u64;
        }
        if let Some(s) = self.by_server.get_mut(server) {
            s.merge(&mine);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(seq: u64, recv_us: i64) -> Seen {
        Seen {
            seq,
            recv_us,
            ts_us: Some(recv_us - 500),
            total_points: Some(seq as i64),
        }
    }

    fn done(seq: u64, reply_us: i64) -> Done {
        Done {
            seq,
            reply_us,
            remaining_points: Some(seq as i64),
        }
    }

    fn report() -> Report {
        Report {
            by_server: vec![Listeners::default()],
            ..Report::default()
        }
    }

    #[test]
    fn every_reply_is_matched_with_its_event_by_seq() {
        let mut r = report();
        let run = CommandRun {
            sent: 3,
            answered: 3,
            done: vec![done(6, 1_000), done(7, 2_000), done(8, 3_000)],
            ..CommandRun::default()
        };
        let listening = Listening {
            welcome_seq: Some(5),
            events: vec![seen(6, 1_400), seen(7, 1_900), seen(8, 20_000_000)],
            ended: None,
        };
        r.add_user(0, run, listening, Duration::from_secs(10));
        r.finish();
        assert_eq!((r.delivered, r.lost, r.late), (2, 1, 1), "{r}");
        assert_eq!(r.before_reply, 1, "seq 7 came 100 µs before its reply");
        assert_eq!(r.after_reply.count(), 2);
        assert_eq!((r.listeners_in_order, r.listeners_checked), (1, 1));
        assert_eq!(r.by_server[0].lost, 1);
        assert!(!r.verification_ok, "a late event fails the run");
    }

    #[test]
    fn a_gap_an_unexpected_event_and_a_wrong_balance_are_caught() {
        let mut r = report();
        let mut wrong = done(2, 1_000);
        wrong.remaining_points = Some(99);
        let run = CommandRun {
            done: vec![wrong, done(3, 1_000)],
            ..CommandRun::default()
        };
        let listening = Listening {
            welcome_seq: Some(0),
            events: vec![seen(2, 2_000), seen(3, 2_000), seen(9, 2_000)],
            ended: None,
        };
        r.add_user(0, run, listening, Duration::from_secs(10));
        r.finish();
        assert_eq!(r.listeners_in_order, 0, "seq 1 was skipped: {r}");
        assert_eq!((r.mismatched, r.unexpected, r.lost), (1, 1, 0), "{r}");
        assert!(!r.verification_ok);
    }

    #[test]
    fn reports_merge_across_processes() {
        let mut a = report();
        a.add_user(
            0,
            CommandRun {
                answered: 1,
                done: vec![done(1, 0)],
                ..CommandRun::default()
            },
            Listening {
                welcome_seq: Some(0),
                events: vec![seen(1, 3_000)],
                ended: None,
            },
            Duration::from_secs(1),
        );
        a.duration_s = 1.0;
        a.finish();
        assert!(a.verification_ok, "{a}");
        let text = serde_json::to_string(&a).unwrap();
        let b: Report = serde_json::from_str(&text).unwrap();
        let m = Report::merge(vec![a, b], vec![]);
        assert_eq!((m.delivered, m.answered, m.processes), (2, 2, 2));
        assert_eq!(m.by_server[0].delivered, 2);
        assert!((m.commands_per_s - 2.0).abs() < 1e-9);
        assert!(m.verification_ok);
    }
}
