//! `commands`: C users, each with one socket, send draws and/or exchanges
//! (over the socket, or over REST with `--rest`) as fast as the replies
//! come, for S seconds. Reports throughput, latency, the codes seen, and
//! verifies on every socket that each success was followed by exactly one
//! `points_update` and that `seq` never skipped.
//!
//! With several servers (`--server a,b`) user i's socket (and its REST
//! commands) go to server i mod the count.
//!
//! Setup goes through the merchant API: every user is topped up with enough
//! points (`POST /api/merchant/points/adjust`), the daily draw limit is
//! lifted for the run (`PUT /api/merchant/lottery/settings`) and restored
//! afterwards.

use anyhow::Context;
use futures::StreamExt;
use protocol::{ErrorCode, LotteryConfigView, Product, ServerFrame, UserInfo, command, event};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;

use super::hold::close_kind;
use super::users::{self, Credentials};
use super::{Setup, check_socket_budget};
use crate::client::{
    Api, Connector, Incoming, Method, REPLY_TIMEOUT, Ws, recv, send_command, spread,
};
use crate::link::Link;
use crate::progress::{Phase, Sink, Tally, Ticker};
use crate::stats::{Counts, Hist, add_counts, bump, round3, show_counts};

const LINK_WAIT: Duration = Duration::from_secs(3600);
/// The most points one merchant adjustment may grant.
const MAX_ADJUST: i64 = 10_000;
/// An upper bound on one user's command rate, for sizing the top-up.
const MAX_USER_RATE: u64 = 250;
/// How long setup waits for every server to load the changed wheel.
const WHEEL_WAIT: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mix {
    Draw,
    Exchange,
    Both,
}

impl Mix {
    pub fn parse(s: &str) -> anyhow::Result<Mix> {
        match s {
            "draw" => Ok(Mix::Draw),
            "exchange" => Ok(Mix::Exchange),
            "both" => Ok(Mix::Both),
            _ => anyhow::bail!("--mix must be draw, exchange or both"),
        }
    }

    fn draws(self) -> bool {
        self != Mix::Exchange
    }

    fn exchanges(self) -> bool {
        self != Mix::Draw
    }

    /// The n-th command of a user.
    fn kind(self, n: u64) -> Kind {
        match self {
            Mix::Draw => Kind::Draw,
            Mix::Exchange => Kind::Exchange,
            Mix::Both if n.is_multiple_of(2) => Kind::Draw,
            Mix::Both => Kind::Exchange,
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Draw,
    Exchange,
}

pub struct Opts {
    pub setup: Setup,
    /// C: users, one socket each.
    pub users: usize,
    /// S: how long to send.
    pub duration: Duration,
    pub mix: Mix,
    /// Send commands over REST instead of the socket (events still arrive
    /// on the socket and are verified there).
    pub rest: bool,
    /// Cap on the total command rate (per second).
    pub rate: Option<f64>,
    /// The product exchanges buy; created when not given.
    pub product: Option<u64>,
    /// Top every user up to this many points (default: enough for the run).
    pub points_per_user: Option<i64>,
    /// Someone else (a `shard` parent) did the setup.
    pub skip_setup: bool,
    /// Also measure the database alone (`db-baseline`) right after the
    /// run, with as many connections as users (at most 64), for S seconds.
    pub baseline_database_url: Option<String>,
    /// How long to wait after the deadline for the last events.
    pub drain: Duration,
    pub connect_concurrency: usize,
    pub link: Option<Link>,
}

impl Opts {
    pub fn new(setup: Setup, users: usize, duration: Duration) -> Opts {
        Opts {
            setup,
            users,
            duration,
            mix: Mix::Draw,
            rest: false,
            rate: None,
            product: None,
            points_per_user: None,
            skip_setup: false,
            baseline_database_url: None,
            drain: Duration::from_secs(3),
            connect_concurrency: 64,
            link: None,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub processes: usize,
    pub users: usize,
    pub connected: usize,
    pub connect_errors: Counts,
    pub mix: String,
    pub door: String,
    pub rate_cap: Option<f64>,
    pub duration_s: f64,
    /// Commands that got an answer (any code).
    pub answered: u64,
    pub successes: u64,
    pub successes_per_s: f64,
    /// Command → reply, successful commands (refusals such as 2002 are
    /// answered without work and would flatter it).
    pub latency: Hist,
    /// Reply codes (`0`, `2002`, …) and failures (`timeout`, …).
    pub codes: Counts,
    /// Users whose events were checked, and how many of them failed.
    pub verified_users: usize,
    pub verification_failures: usize,
    /// Users whose check was impossible (a command's outcome unknown).
    pub unverifiable_users: usize,
    pub verification_ok: bool,
    pub violations: Vec<String>,
    pub lost: Counts,
    pub notes: Vec<String>,
    /// The database alone, same transaction shape, right after the run.
    pub db_baseline: Option<super::db_baseline::Report>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "commands: {} users ({} connected), mix {}, over {}{}, {:.1} s{}",
            self.users,
            self.connected,
            self.mix,
            self.door,
            self.rate_cap
                .map(|r| format!(", capped at {r}/s"))
                .unwrap_or_default(),
            self.duration_s,
            if self.processes > 1 {
                format!(", {} processes", self.processes)
            } else {
                String::new()
            }
        )?;
        writeln!(
            f,
            "  {} successes of {} answered: {:.1} successes/s",
            self.successes, self.answered, self.successes_per_s
        )?;
        writeln!(f, "  latency of successes {}", self.latency)?;
        writeln!(f, "  codes: {}", show_counts(&self.codes))?;
        writeln!(
            f,
            "  verification: {} — {} users checked, {} failed, {} unverifiable",
            if self.verification_ok {
                "PASSED"
            } else {
                "FAILED"
            },
            self.verified_users,
            self.verification_failures,
            self.unverifiable_users
        )?;
        for v in self.violations.iter().take(10) {
            writeln!(f, "    {v}")?;
        }
        if !self.connect_errors.is_empty() {
            writeln!(f, "  connect errors: {}", show_counts(&self.connect_errors))?;
        }
        if !self.lost.is_empty() {
            writeln!(f, "  sockets lost: {}", show_counts(&self.lost))?;
        }
        if self.codes.contains_key("2002") {
            writeln!(
                f,
                "  note: 2002 means the server's per-socket command limit (WS_COMMANDS_PER_SEC) was hit"
            )?;
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        if let Some(b) = &self.db_baseline {
            writeln!(
                f,
                "  database alone (db-baseline, {} connections): {:.0} tps — the server reached {:.0}% of it",
                b.connections,
                b.tps,
                self.successes_per_s / b.tps.max(1e-9) * 100.0
            )?;
        }
        Ok(())
    }
}

impl Report {
    pub fn merge(parts: Vec<Report>, notes: Vec<String>) -> Report {
        let mut m = Report {
            processes: parts.len(),
            notes,
            ..Report::default()
        };
        for p in &parts {
            m.users += p.users;
            m.connected += p.connected;
            add_counts(&mut m.connect_errors, &p.connect_errors);
            m.mix = p.mix.clone();
            m.door = p.door.clone();
            m.rate_cap = m.rate_cap.or(p.rate_cap);
            m.duration_s = m.duration_s.max(p.duration_s);
            m.answered += p.answered;
            m.successes += p.successes;
            m.latency.merge(&p.latency);
            add_counts(&mut m.codes, &p.codes);
            m.verified_users += p.verified_users;
            m.verification_failures += p.verification_failures;
            m.unverifiable_users += p.unverifiable_users;
            m.violations.extend(
                p.violations
                    .iter()
                    .take(20 - m.violations.len().min(20))
                    .cloned(),
            );
            add_counts(&mut m.lost, &p.lost);
            m.notes.extend(p.notes.iter().cloned());
        }
        m.successes_per_s = round3(m.successes as f64 / m.duration_s.max(1e-3));
        m.verification_ok = m.verification_failures == 0 && m.verified_users > 0;
        m
    }
}

/// What setup changed, so that it can be undone.
#[derive(Debug, Default)]
pub struct Prepared {
    pub product: Option<u64>,
    /// The daily limit to put back after the run.
    pub restore_daily_limit: Option<u32>,
    /// A product we created and should deactivate afterwards.
    pub created_product: Option<u64>,
    pub notes: Vec<String>,
}

/// Merchant-side setup for a run of `duration` by `creds`, through the
/// first of `apis` (one per server); every server is then given time to
/// load the wheel without its daily limit.
pub async fn prepare(
    apis: &[Api],
    creds: &[Credentials],
    mix: Mix,
    duration: Duration,
    rate: Option<f64>,
    product: Option<u64>,
    points_per_user: Option<i64>,
) -> anyhow::Result<Prepared> {
    let api = apis.first().context("no server")?;
    let merchant = api.merchant_token().await?;
    let mut prepared = Prepared::default();
    let first = creds.first().context("no users")?;
    let config: LotteryConfigView = api.get("/api/lottery/config", &first.access_token).await?;
    if mix.draws() && config.daily_limit != 0 {
        let reply = api
            .call(
                Method::PUT,
                "/api/merchant/lottery/settings",
                Some(&merchant),
                Some(&json!({ "daily_limit": 0 })),
                None,
            )
            .await?;
        if reply.ok() {
            prepared.restore_daily_limit = Some(config.daily_limit);
            let version = reply.data["version"].as_u64().unwrap_or(0);
            if let Err(e) = wait_for_wheel(apis, version).await {
                prepared.notes.push(format!("{e:#}"));
            }
        } else {
            prepared.notes.push(format!(
                "could not lift the daily draw limit ({}: code {}); expect 3001 after {} draws per user",
                reply.status, reply.code, config.daily_limit
            ));
        }
    }
    let mut unit_cost = if mix.draws() { config.cost_points } else { 0 };
    if mix.exchanges() {
        let id = match product {
            Some(p) => p,
            None => {
                let p: Product = api
                    .send(
                        Method::POST,
                        "/api/merchant/products",
                        &merchant,
                        &json!({
                            "name": format!("loadtest commands {}", super::run_tag()),
                            "category": "loadtest",
                            "description": "made by the load generator",
                            "exchange_points": 1,
                            "stock": 1_000_000,
                        }),
                    )
                    .await
                    .context("creating the exchange product")?;
                prepared.created_product = Some(p.product_id.0 as u64);
                p.product_id.0 as u64
            }
        };
        prepared.product = Some(id);
        unit_cost = unit_cost.max(1);
    }

    // Enough points for the fastest a user could go, or the given amount.
    let per_user_ops = match rate {
        Some(r) => (r / creds.len().max(1) as f64 * duration.as_secs_f64() * 1.5) as u64 + 20,
        None => MAX_USER_RATE * duration.as_secs().max(1),
    };
    let target = points_per_user.unwrap_or(unit_cost * per_user_ops as i64 + 1000);
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(creds.iter())
        .map(|c| top_up(api, &merchant, c, target))
        .buffer_unordered(16)
        .collect()
        .await;
    for r in results {
        r.context("topping users up")?;
    }
    Ok(prepared)
}

/// Waits until every server runs wheel `version` or later (an instance
/// reloads the wheel within 10 s of a change made through another).
async fn wait_for_wheel(apis: &[Api], version: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + WHEEL_WAIT;
    for api in apis {
        loop {
            let health = api.health().await?;
            let running = health["checks"]["lottery"]["config_version"].as_u64();
            if running.is_none_or(|v| v >= version) {
                break;
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "{} still runs wheel version {} of {version} after {} s: expect 3001 from its users",
                    api.target().addr,
                    running.unwrap_or(0),
                    WHEEL_WAIT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(())
}

async fn top_up(api: &Api, merchant: &str, c: &Credentials, target: i64) -> anyhow::Result<()> {
    let info: UserInfo = api.get("/api/user/info", &c.access_token).await?;
    let mut missing = target - info.total_points;
    while missing > 0 {
        let grant = missing.min(MAX_ADJUST);
        let _: Value = api
            .send(
                Method::POST,
                "/api/merchant/points/adjust",
                merchant,
                &json!({ "user_id": c.user_id, "points": grant, "reason": "load test" }),
            )
            .await?;
        missing -= grant;
    }
    Ok(())
}

/// Undoes what [`prepare`] changed.
pub async fn restore(api: &Api, prepared: &Prepared) -> anyhow::Result<()> {
    if prepared.restore_daily_limit.is_none() && prepared.created_product.is_none() {
        return Ok(());
    }
    let merchant = api.merchant_token().await?;
    if let Some(limit) = prepared.restore_daily_limit {
        let _: Value = api
            .send(
                Method::PUT,
                "/api/merchant/lottery/settings",
                &merchant,
                &json!({ "daily_limit": limit }),
            )
            .await
            .context("restoring the daily draw limit")?;
    }
    if let Some(p) = prepared.created_product {
        let _: Value = api
            .send(
                Method::PUT,
                &format!("/api/merchant/products/{p}"),
                &merchant,
                &json!({ "status": "inactive" }),
            )
            .await
            .context("deactivating the exchange product")?;
    }
    Ok(())
}

pub async fn run(mut opts: Opts) -> anyhow::Result<Report> {
    check_socket_budget(opts.users)?;
    let api = opts.setup.api()?;
    let creds = users::ensure_all(&opts.setup, opts.users as u64, Duration::from_secs(300)).await?;
    let prepared = if opts.skip_setup {
        Prepared {
            product: opts.product,
            ..Prepared::default()
        }
    } else {
        prepare(
            &opts.setup.apis()?,
            &creds,
            opts.mix,
            opts.duration,
            opts.rate,
            opts.product,
            opts.points_per_user,
        )
        .await?
    };
    let result = drive(&mut opts, creds, prepared.product).await;
    let restored = restore(&api, &prepared).await;
    let mut report = result?;
    restored?;
    report.notes.extend(prepared.notes);
    if let Some(url) = &opts.baseline_database_url {
        report.db_baseline = Some(baseline(url, opts.users, opts.duration).await?);
    }
    Ok(report)
}

/// `db-baseline` sized like a commands run of `users` for `duration`.
pub async fn baseline(
    url: &str,
    users: usize,
    duration: Duration,
) -> anyhow::Result<super::db_baseline::Report> {
    super::db_baseline::run(super::db_baseline::Opts {
        database_url: url.to_string(),
        connections: users.clamp(1, 64),
        duration,
        keep: false,
    })
    .await
}

/// Spaces commands to cap the total rate; no credit builds up while idle.
pub(crate) struct Pacer {
    start: Instant,
    interval_ns: u64,
    next_ns: AtomicU64,
}

impl Pacer {
    pub(crate) fn new(rate: f64) -> Pacer {
        Pacer {
            start: Instant::now(),
            interval_ns: (1e9 / rate.max(0.001)) as u64,
            next_ns: AtomicU64::new(0),
        }
    }

    /// The instant this caller may send at.
    pub(crate) fn slot(&self) -> Instant {
        let now = self.start.elapsed().as_nanos() as u64;
        let mut cur = self.next_ns.load(Ordering::Relaxed);
        loop {
            let s = cur.max(now);
            match self.next_ns.compare_exchange_weak(
                cur,
                s + self.interval_ns,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return self.start + Duration::from_nanos(s),
                Err(actual) => cur = actual,
            }
        }
    }
}

/// Everything the users' loops share.
struct Ctx {
    /// One REST door per server, in the order of `--server`.
    apis: Vec<Api>,
    connector: Connector,
    mix: Mix,
    rest: bool,
    product: Option<u64>,
    pacer: Option<Pacer>,
    tag: String,
    drain: Duration,
    sem: Semaphore,
    done: AtomicUsize,
    connected: AtomicUsize,
    wake: Notify,
}

/// One user's results.
#[derive(Default)]
struct UserRun {
    connect_error: Option<String>,
    lost: Option<String>,
    latency: Hist,
    codes: Counts,
    answered: u64,
    successes: u64,
    /// `points_update` events seen after `welcome`.
    updates: u64,
    /// The seq the next user event must have.
    expect_seq: u64,
    violations: Vec<String>,
    /// A command's outcome is unknown (no reply), so counts cannot match.
    unverifiable: bool,
}

impl UserRun {
    fn on_event(&mut self, f: &ServerFrame) {
        if f.kind != event::POINTS_UPDATE && f.kind != event::REVIEW_RESULT {
            return;
        }
        let Some(seq) = f.seq else {
            self.violations.push(format!("{} without seq", f.kind));
            return;
        };
        if seq != self.expect_seq {
            self.violations
                .push(format!("expected seq {}, got {seq}", self.expect_seq));
        }
        self.expect_seq = seq + 1;
        if f.kind == event::POINTS_UPDATE {
            self.updates += 1;
        }
    }
}

async fn drive(
    opts: &mut Opts,
    creds: Vec<Credentials>,
    product: Option<u64>,
) -> anyhow::Result<Report> {
    let n = creds.len();
    let ctx = Arc::new(Ctx {
        apis: opts.setup.apis()?,
        connector: opts.setup.connector()?,
        mix: opts.mix,
        rest: opts.rest,
        product,
        pacer: opts.rate.map(Pacer::new),
        tag: super::run_tag(),
        drain: opts.drain,
        sem: Semaphore::new(opts.connect_concurrency.max(1)),
        done: AtomicUsize::new(0),
        connected: AtomicUsize::new(0),
        wake: Notify::new(),
    });
    let (start_tx, start_rx) = watch::channel::<Option<Instant>>(None);
    let futs: Vec<_> = creds
        .into_iter()
        .enumerate()
        .map(|(i, c)| user_loop(i, c, ctx.clone(), start_rx.clone()))
        .collect();
    let handle = spread(futs, crate::client::driver_tasks(n));
    let connect_deadline = Instant::now() + Duration::from_secs(120);
    let ticker = {
        let c = ctx.clone();
        Ticker::start(
            &Sink::of("commands", opts.link.as_ref()),
            Phase::Connect,
            move || {
                let done = c.done.load(Ordering::Acquire);
                let ok = c.connected.load(Ordering::Relaxed);
                Tally::new(n, ok, done.saturating_sub(ok))
            },
        )
    };
    while ctx.done.load(Ordering::Acquire) < n && Instant::now() < connect_deadline {
        tokio::select! {
            _ = ctx.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    drop(ticker);
    if let Some(link) = opts.link.as_mut() {
        link.ready_then(LINK_WAIT).await?;
    }
    let started = Instant::now();
    let _ = start_tx.send(Some(started + opts.duration));
    let runs = handle.await?;
    let duration_s = started
        .elapsed()
        .as_secs_f64()
        .min(opts.duration.as_secs_f64());

    let mut report = Report {
        processes: 1,
        users: n,
        connected: ctx.connected.load(Ordering::Relaxed),
        mix: format!("{:?}", opts.mix).to_lowercase(),
        door: if opts.rest { "rest" } else { "ws" }.into(),
        rate_cap: opts.rate,
        duration_s: round3(duration_s),
        ..Report::default()
    };
    for r in runs {
        report.add_user(r);
    }
    report.successes_per_s = round3(report.successes as f64 / duration_s.max(1e-3));
    report.verification_ok = report.verification_failures == 0 && report.verified_users > 0;
    Ok(report)
}

impl Report {
    /// One user's run into the totals, and its verification.
    fn add_user(&mut self, r: UserRun) {
        if let Some(e) = r.connect_error {
            bump(&mut self.connect_errors, e);
            return;
        }
        if let Some(l) = &r.lost {
            bump(&mut self.lost, l.clone());
        }
        self.answered += r.answered;
        self.successes += r.successes;
        self.latency.merge(&r.latency);
        add_counts(&mut self.codes, &r.codes);
        if r.unverifiable {
            self.unverifiable_users += 1;
            return;
        }
        self.verified_users += 1;
        let mut bad = r.violations;
        if r.updates != r.successes {
            bad.push(format!(
                "{} successes but {} points_update events",
                r.successes, r.updates
            ));
        }
        if !bad.is_empty() {
            self.verification_failures += 1;
            for v in bad {
                if self.violations.len() < 20 {
                    self.violations.push(v);
                }
            }
        }
    }
}

async fn user_loop(
    index: usize,
    cred: Credentials,
    ctx: Arc<Ctx>,
    mut start: watch::Receiver<Option<Instant>>,
) -> UserRun {
    let mut run = UserRun::default();
    let connected = {
        let _permit = ctx.sem.acquire().await;
        let server = ctx.connector.server_for(index);
        ctx.connector
            .connect(server, &cred.access_token, None)
            .await
    };
    let finished = |ok: bool| {
        if ok {
            ctx.connected.fetch_add(1, Ordering::Relaxed);
        }
        ctx.done.fetch_add(1, Ordering::Release);
        ctx.wake.notify_one();
    };
    let mut ws = match connected {
        Ok((ws, welcome)) => {
            run.expect_seq = welcome.last_seq + 1;
            finished(true);
            ws
        }
        Err(e) => {
            finished(false);
            run.connect_error = Some(e.kind);
            return run;
        }
    };

    // Wait for the start, reading (and so answering pings) meanwhile.
    let deadline = loop {
        if let Some(d) = *start.borrow_and_update() {
            break d;
        }
        tokio::select! {
            changed = start.changed() => {
                if changed.is_err() {
                    return run;
                }
            }
            m = recv(&mut ws) => match m {
                Incoming::Frame(f) => run.on_event(&f),
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
    };

    let mut n: u64 = 0;
    while Instant::now() < deadline {
        if let Some(p) = &ctx.pacer {
            let slot = p.slot();
            if slot >= deadline {
                break;
            }
            tokio::time::sleep_until(slot).await;
        }
        let kind = ctx.mix.kind(n);
        let id = format!("{}-{index}-{n}", ctx.tag);
        n += 1;
        let t0 = Instant::now();
        let code = if ctx.rest {
            rest_command(&ctx, index, &cred, kind, &id, &mut ws, &mut run).await
        } else {
            ws_command(&ctx, kind, &id, &mut ws, &mut run).await
        };
        match code {
            Ok(code) => {
                run.answered += 1;
                bump(&mut run.codes, code.to_string());
                if code == 0 {
                    run.latency.record(t0.elapsed());
                    run.successes += 1;
                } else if code == ErrorCode::RateLimited.code() {
                    // Back off rather than be closed with 4003.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                } else if matches!(
                    ErrorCode::from_code(code),
                    Some(
                        ErrorCode::NotEnoughPoints
                            | ErrorCode::NotEnoughStock
                            | ErrorCode::DailyLimitReached
                            | ErrorCode::ProductUnavailable
                            | ErrorCode::LotteryUnavailable
                    )
                ) {
                    // Nothing more this user can do in this run.
                    break;
                }
            }
            Err(failure) => {
                bump(&mut run.codes, failure.clone());
                run.unverifiable = true;
                run.lost = Some(failure);
                return run;
            }
        }
    }

    // The last events may trail the last reply.
    let drain_until = Instant::now() + ctx.drain;
    while run.updates < run.successes {
        match tokio::time::timeout_at(drain_until, recv(&mut ws)).await {
            Ok(Incoming::Frame(f)) => run.on_event(&f),
            Ok(Incoming::Closed(code)) => {
                run.lost = Some(close_kind(code));
                break;
            }
            Ok(Incoming::Failed(kind)) => {
                run.lost = Some(kind);
                break;
            }
            Err(_) => break,
        }
    }
    // A short look for an extra, unexpected event.
    if let Ok(Incoming::Frame(f)) =
        tokio::time::timeout(Duration::from_millis(100), recv(&mut ws)).await
    {
        run.on_event(&f);
    }
    run
}

fn command_body(ctx: &Ctx, kind: Kind) -> (&'static str, &'static str, Value) {
    match kind {
        Kind::Draw => (
            command::LOTTERY_DRAW,
            "/api/lottery/draw",
            json!({ "draw_count": 1 }),
        ),
        Kind::Exchange => (
            command::EXCHANGE_SUBMIT,
            "/api/exchange/submit",
            json!({ "product_id": ctx.product.unwrap_or(0), "quantity": 1 }),
        ),
    }
}

/// Sends over the socket and reads until the reply; events that arrive
/// meanwhile are checked. `Err` when the outcome is unknown.
async fn ws_command(
    ctx: &Ctx,
    kind: Kind,
    id: &str,
    ws: &mut Ws,
    run: &mut UserRun,
) -> Result<i32, String> {
    let (kind, _, data) = command_body(ctx, kind);
    send_command(ws, id, kind, data)
        .await
        .map_err(|_| "write_failed".to_string())?;
    let reply = tokio::time::timeout(REPLY_TIMEOUT, async {
        loop {
            match recv(ws).await {
                Incoming::Frame(f) if f.is_reply() && f.id.as_deref() == Some(id) => {
                    return Ok(f.code.unwrap_or(-1));
                }
                Incoming::Frame(f) => run.on_event(&f),
                Incoming::Closed(code) => return Err(close_kind(code)),
                Incoming::Failed(kind) => return Err(kind),
            }
        }
    })
    .await;
    match reply {
        Ok(r) => r,
        Err(_) => Err("timeout".into()),
    }
}

/// Sends over REST while reading the socket's events.
#[allow(clippy::too_many_arguments)] // one command of one user, and where its results go
async fn rest_command(
    ctx: &Ctx,
    index: usize,
    cred: &Credentials,
    kind: Kind,
    id: &str,
    ws: &mut Ws,
    run: &mut UserRun,
) -> Result<i32, String> {
    let (_, path, body) = command_body(ctx, kind);
    let api = &ctx.apis[ctx.connector.server_for(index)];
    let call = api.call(
        Method::POST,
        path,
        Some(&cred.access_token),
        Some(&body),
        Some(id),
    );
    tokio::pin!(call);
    let mut socket_open = true;
    loop {
        tokio::select! {
            r = &mut call => {
                return match r {
                    Ok(reply) => Ok(reply.code),
                    Err(e) => Err(e.kind.to_string()),
                };
            }
            m = recv(ws), if socket_open => match m {
                Incoming::Frame(f) => run.on_event(&f),
                Incoming::Closed(code) => {
                    run.lost = Some(close_kind(code));
                    run.unverifiable = true;
                    socket_open = false;
                }
                Incoming::Failed(kind) => {
                    run.lost = Some(kind);
                    run.unverifiable = true;
                    socket_open = false;
                }
            }
        }
    }
}
