//! `loadtest`: the command line over the library's scenarios, and `shard`,
//! which runs a scenario in several processes and merges their reports.

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use loadtest::client::Sources;
use loadtest::link::{self, Control, Driver, Link, REPORT_PREFIX};
use loadtest::progress::Board;
use loadtest::scenarios::{
    Setup, commands, cross, db_baseline, db_check, fanout, hold, storm, tcp_floor, users,
};
use loadtest::shard::{self, Pending};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Display;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Load generator for the restaurant points server (loopback targets only)",
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Log in (or reuse) N users and save their tokens.
    Users(UsersArgs),
    /// Open N sockets and keep them alive; connect rate, survivors, memory.
    Hold(HoldArgs),
    /// Restock a product R times; delivery delay to N sockets.
    Fanout(FanoutArgs),
    /// C users drawing and/or exchanging as fast as replies come.
    Commands(CommandsArgs),
    /// U users: draws on the last server, their events timed on the others.
    Cross(CrossArgs),
    /// Lose N sockets at once; time until all are back, replay check.
    Storm(StormArgs),
    /// The database's own throughput for the draw's transaction shape.
    DbBaseline(DbArgs),
    /// Read-only: balances = ledgers, seqs gap-free, stock never negative.
    DbCheck(DbCheckArgs),
    /// The kernel's own fan-out floor: one message to N plain TCP sockets.
    TcpFloor(FloorArgs),
    /// Run a scenario in P processes and merge their reports.
    Shard(ShardArgs),
}

#[derive(Args, Clone)]
struct Common {
    /// Server base URL (127.0.0.0/8 or localhost only), or several
    /// separated by commas: sockets are spread over them round-robin,
    /// logins and merchant setup go to the first. https:// (nginx in
    /// front) needs --ca.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    server: String,
    /// PEM certificate(s) to trust for https:// servers, e.g. scripts/cert's
    /// .data/tls/cert.pem (a self-signed CA:TRUE certificate is pinned).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Tokens file (JSON lines: phone, user_id, access_token).
    #[arg(long, default_value = "tokens.jsonl")]
    tokens: PathBuf,
    /// Phone prefix; phones are the prefix and a zero-padded index (11 digits).
    #[arg(long, default_value = "1990")]
    prefix: String,
    /// Index of the first user.
    #[arg(long, default_value_t = 0)]
    offset: u64,
    /// Logins in flight at once.
    #[arg(long, default_value_t = 64)]
    login_concurrency: usize,
    /// First loopback source address: 127.0.0.<src-from>.
    #[arg(long, default_value_t = 2)]
    src_from: u8,
    /// How many source addresses (0: let the kernel choose).
    #[arg(long, default_value_t = 4)]
    src_count: u8,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Also write the report as JSON to this file (under `shard`, give it
    /// to shard, before the `--`).
    #[arg(long)]
    save: Option<PathBuf>,
    /// Run as a shard child (progress and report on stdout, controls on stdin).
    #[arg(long, hide = true)]
    child: bool,
    /// Only read the tokens file (shard children).
    #[arg(long, hide = true)]
    no_write_tokens: bool,
}

impl Common {
    fn out(&self) -> Out {
        Out {
            json: self.json,
            child: self.child,
            save: self.save.clone(),
        }
    }

    fn setup(&self) -> Setup {
        Setup {
            server: self.server.clone(),
            tokens: Some(self.tokens.clone()),
            prefix: self.prefix.clone(),
            offset: self.offset,
            write_tokens: !self.no_write_tokens,
            login_concurrency: self.login_concurrency,
            sources: Sources {
                from: self.src_from,
                count: self.src_count,
            },
            ca: self.ca.clone(),
        }
    }
}

fn secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.0..=86_400.0).contains(&v) {
        return Err("seconds must be 0 to 86400".into());
    }
    Ok(Duration::from_secs_f64(v))
}

#[derive(Args, Clone)]
struct UsersArgs {
    #[command(flatten)]
    common: Common,
    /// How many users.
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// Reuse valid tokens from the file instead of logging in again.
    #[arg(long)]
    reuse: bool,
    /// Bound on the whole run, seconds.
    #[arg(long, value_parser = secs, default_value = "300")]
    duration: Duration,
}

#[derive(Args, Clone)]
struct HoldArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 1000)]
    sockets: usize,
    /// Sockets per user (the server allows 5 by default).
    #[arg(long, default_value_t = 1)]
    sockets_per_user: usize,
    /// Seconds to hold; default three heartbeat intervals.
    #[arg(long, value_parser = secs)]
    hold: Option<Duration>,
    /// The server's pid, for its RSS; with several servers, one pid per
    /// server, comma-separated, in the order of --server.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Bound on logging in and connecting, seconds.
    #[arg(long, value_parser = secs, default_value = "300")]
    duration: Duration,
}

#[derive(Args, Clone)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 1000)]
    sockets: usize,
    /// R: restocks, one at a time.
    #[arg(long, default_value_t = 10)]
    updates: usize,
    /// Restock this product (default: create an inactive one).
    #[arg(long)]
    product: Option<u64>,
    /// Seconds one update may take to reach every socket.
    #[arg(long, value_parser = secs, default_value = "10")]
    update_timeout: Duration,
    /// Redis's pid: report its CPU time over the updates.
    #[arg(long)]
    redis_pid: Option<u32>,
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Bound on logging in and connecting, seconds.
    #[arg(long, value_parser = secs, default_value = "300")]
    duration: Duration,
}

#[derive(Args, Clone)]
struct CommandsArgs {
    #[command(flatten)]
    common: Common,
    /// C: users, one socket each.
    #[arg(long, default_value_t = 50)]
    users: usize,
    /// S: seconds of sending.
    #[arg(long, value_parser = secs, default_value = "10")]
    duration: Duration,
    /// draw, exchange or both.
    #[arg(long, default_value = "draw")]
    mix: String,
    /// Send commands over REST (events are still checked on the socket).
    #[arg(long)]
    rest: bool,
    /// Cap on the total command rate, per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Product for exchanges (default: create one).
    #[arg(long)]
    product: Option<u64>,
    /// Top every user up to this many points (default: enough for the run).
    #[arg(long)]
    points: Option<i64>,
    /// Seconds to wait for trailing events after the deadline.
    #[arg(long, value_parser = secs, default_value = "3")]
    drain: Duration,
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    #[arg(long, hide = true)]
    skip_setup: bool,
    /// Also run db-baseline right after, for comparison (mysql://…, loopback).
    #[arg(long)]
    baseline_database_url: Option<String>,
}

#[derive(Args, Clone)]
struct CrossArgs {
    #[command(flatten)]
    common: Common,
    /// U: users, each with a listening socket on A and a command socket on B.
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Draws per second, all users together.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of sending.
    #[arg(long, value_parser = secs, default_value = "30")]
    duration: Duration,
    /// Seconds after its reply within which an event must reach A.
    #[arg(long, value_parser = secs, default_value = "10")]
    event_timeout: Duration,
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    #[arg(long, hide = true)]
    skip_setup: bool,
}

#[derive(Args, Clone)]
struct StormArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 1000)]
    sockets: usize,
    /// drop (the client drops every socket) or server-restart (you restart the server).
    #[arg(long, default_value = "drop")]
    mode: String,
    /// Bound on reconnecting, seconds after the disconnect.
    #[arg(long, value_parser = secs, default_value = "120")]
    duration: Duration,
    /// server-restart: seconds to wait for the server to go away.
    #[arg(long, value_parser = secs, default_value = "300")]
    wait_for_restart: Duration,
    /// drop: users granted a point while disconnected (each must see it).
    #[arg(long, default_value_t = 100)]
    touch: usize,
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
}

#[derive(Args, Clone)]
struct DbArgs {
    /// mysql://user@127.0.0.1:3307/db (loopback only).
    #[arg(long)]
    database_url: String,
    #[arg(long, default_value_t = 32)]
    connections: usize,
    #[arg(long, value_parser = secs, default_value = "10")]
    duration: Duration,
    /// Keep the benchmark rows.
    #[arg(long)]
    keep: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct DbCheckArgs {
    /// mysql://user@127.0.0.1:3307/db (loopback only).
    #[arg(long)]
    database_url: String,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct FloorArgs {
    /// N: sockets (held by this process; the sender is a child process).
    #[arg(long, default_value_t = 18000)]
    sockets: usize,
    /// How many messages to every socket, one after another.
    #[arg(long, default_value_t = 20)]
    updates: usize,
    /// Writing threads in the sender (the server has one per core).
    #[arg(long, default_value_t = 2)]
    senders: usize,
    #[arg(long, default_value_t = 2)]
    src_from: u8,
    #[arg(long, default_value_t = 4)]
    src_count: u8,
    /// Be the sending child (started by the parent).
    #[arg(long, hide = true)]
    sender: bool,
    #[arg(long)]
    json: bool,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    save: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct ShardArgs {
    /// P: child processes.
    #[arg(long)]
    procs: usize,
    /// Print the merged report as JSON.
    #[arg(long)]
    json: bool,
    /// Also write the merged report as JSON to this file.
    #[arg(long)]
    save: Option<PathBuf>,
    /// The scenario and its arguments, after `--`.
    #[arg(last = true, required = true)]
    args: Vec<String>,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    loadtest::raise_nofile_limit();
    let code = match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            1
        }
    };
    // Exit here: a shard child's stdin reader sits in a blocking read that
    // would otherwise hold the runtime open until the parent closes it.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    std::process::exit(code)
}

/// Prints a report: JSON, the child's `@report` line, or for people.
/// Where a report goes.
struct Out {
    /// Print it as JSON instead of the summary.
    json: bool,
    /// A shard child: the report goes to the parent.
    child: bool,
    /// Also write it, as JSON, to this file.
    save: Option<PathBuf>,
}

impl Out {
    fn plain(json: bool, save: Option<PathBuf>) -> Out {
        Out {
            json,
            child: false,
            save,
        }
    }
}

fn emit<R: Serialize + Display>(report: &R, out: &Out) -> anyhow::Result<()> {
    if out.child {
        println!("{REPORT_PREFIX}{}", serde_json::to_string(report)?);
        return Ok(());
    }
    if out.json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{report}");
    }
    if let Some(path) = &out.save {
        std::fs::write(path, serde_json::to_string_pretty(report)?)
            .with_context(|| format!("--save {}", path.display()))?;
    }
    Ok(())
}

fn child_link(common: &Common) -> Option<Link> {
    common.child.then(Link::stdio)
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.cmd {
        Cmd::Users(a) => {
            let r = users::run(users::Opts {
                setup: a.common.setup(),
                count: a.count,
                reuse: a.reuse,
                duration: a.duration,
            })
            .await?;
            emit(&r, &a.common.out())?;
        }
        Cmd::Hold(a) => {
            let r = hold::run(hold_opts(&a)).await?;
            emit(&r, &a.common.out())?;
        }
        Cmd::Fanout(a) => {
            let r = fanout::run(fanout_opts(&a)).await?;
            emit(&r, &a.common.out())?;
        }
        Cmd::Commands(a) => {
            let r = commands::run(commands_opts(&a)?).await?;
            emit(&r, &a.common.out())?;
            if !r.verification_ok && !a.common.child {
                return Ok(3);
            }
        }
        Cmd::Cross(a) => {
            let r = cross::run(cross_opts(&a)).await?;
            emit(&r, &a.common.out())?;
            if !r.verification_ok && !a.common.child {
                return Ok(3);
            }
        }
        Cmd::Storm(a) => {
            let r = storm::run(storm_opts(&a)?).await?;
            emit(&r, &a.common.out())?;
        }
        Cmd::DbBaseline(a) => {
            let r = db_baseline::run(db_baseline::Opts {
                database_url: a.database_url,
                connections: a.connections,
                duration: a.duration,
                keep: a.keep,
            })
            .await?;
            emit(&r, &Out::plain(a.json, None))?;
        }
        Cmd::DbCheck(a) => {
            let r = db_check::run(&a.database_url).await?;
            emit(&r, &Out::plain(a.json, None))?;
            if !r.ok {
                return Ok(1);
            }
        }
        Cmd::TcpFloor(a) => run_tcp_floor(a).await?,
        Cmd::Shard(a) => return run_shard(a).await,
    }
    Ok(0)
}

async fn run_tcp_floor(a: FloorArgs) -> anyhow::Result<()> {
    if a.sender {
        return tokio::task::spawn_blocking(move || tcp_floor::sender(a.sockets, a.senders))
            .await?;
    }
    let r = tcp_floor::run(tcp_floor::Opts {
        sockets: a.sockets,
        updates: a.updates,
        senders: a.senders,
        sources: Sources {
            from: a.src_from,
            count: a.src_count,
        },
        in_process: false,
    })
    .await?;
    emit(&r, &Out::plain(a.json, a.save.clone()))
}

fn hold_opts(a: &HoldArgs) -> hold::Opts {
    hold::Opts {
        setup: a.common.setup(),
        sockets: a.sockets,
        sockets_per_user: a.sockets_per_user,
        hold: a.hold,
        server_pids: a.server_pid.clone(),
        connect_concurrency: a.connect_concurrency,
        duration: a.duration,
        link: child_link(&a.common),
    }
}

fn fanout_opts(a: &FanoutArgs) -> fanout::Opts {
    fanout::Opts {
        setup: a.common.setup(),
        sockets: a.sockets,
        updates: a.updates,
        product: a.product,
        update_timeout: a.update_timeout,
        duration: a.duration,
        connect_concurrency: a.connect_concurrency,
        redis_pid: a.redis_pid,
        link: child_link(&a.common),
    }
}

fn cross_opts(a: &CrossArgs) -> cross::Opts {
    cross::Opts {
        setup: a.common.setup(),
        users: a.users,
        rate: a.rate,
        duration: a.duration,
        event_timeout: a.event_timeout,
        connect_concurrency: a.connect_concurrency,
        skip_setup: a.skip_setup,
        link: child_link(&a.common),
    }
}

fn commands_opts(a: &CommandsArgs) -> anyhow::Result<commands::Opts> {
    Ok(commands::Opts {
        setup: a.common.setup(),
        users: a.users,
        duration: a.duration,
        mix: commands::Mix::parse(&a.mix)?,
        rest: a.rest,
        rate: a.rate,
        product: a.product,
        points_per_user: a.points,
        skip_setup: a.skip_setup,
        baseline_database_url: if a.common.child {
            None
        } else {
            a.baseline_database_url.clone()
        },
        drain: a.drain,
        connect_concurrency: a.connect_concurrency,
        link: child_link(&a.common),
    })
}

fn storm_opts(a: &StormArgs) -> anyhow::Result<storm::Opts> {
    Ok(storm::Opts {
        setup: a.common.setup(),
        sockets: a.sockets,
        mode: storm::Mode::parse(&a.mode)?,
        duration: a.duration,
        wait_for_restart: a.wait_for_restart,
        touch: a.touch,
        connect_concurrency: a.connect_concurrency,
        link: child_link(&a.common),
    })
}

/// How long the parent waits for a child's final report.
const REPORT_WAIT: Duration = Duration::from_secs(3600);
/// How long the parent waits for all children to reach a phase.
const PHASE_WAIT: Duration = Duration::from_secs(3600);

/// One child's argument list: the scenario's own, then the overrides
/// (later flags win: `args_override_self`).
fn child_args(inner: &[String], overrides: &[(&str, String)], flags: &[&str]) -> Vec<String> {
    let mut args = inner.to_vec();
    for (k, v) in overrides {
        args.push(format!("--{k}"));
        args.push(v.clone());
    }
    for f in flags {
        args.push(format!("--{f}"));
    }
    args.extend(["--child".into(), "--no-write-tokens".into()]);
    args
}

/// The i-th child's source range: its own addresses, after the parent's.
fn child_sources(common: &Common, i: usize) -> anyhow::Result<String> {
    let count = common.src_count.max(1) as usize;
    let from = common.src_from as usize + i * count;
    if from + count > 255 {
        bail!("not enough 127.0.0.x source addresses for this many processes; lower --src-count");
    }
    Ok(from.to_string())
}

async fn reports<T: DeserializeOwned>(pending: Vec<Pending>) -> anyhow::Result<Vec<T>> {
    let mut out = Vec::new();
    for p in pending {
        out.push(p.report(REPORT_WAIT).await?);
    }
    Ok(out)
}

/// A `shard` run: P children running one scenario, in step.
struct Shard {
    procs: usize,
    /// The scenario and its arguments, as given after `--`.
    args: Vec<String>,
    /// The children's progress, printed merged.
    board: Arc<Board>,
}

impl Shard {
    /// Checks the arguments and parses the scenario after `--`.
    fn parse(a: &ShardArgs) -> anyhow::Result<(Shard, Cmd)> {
        if a.procs == 0 {
            bail!("--procs must be at least 1");
        }
        let mut argv = vec!["loadtest".to_string()];
        argv.extend(a.args.iter().cloned());
        let inner = Cli::try_parse_from(&argv).context("the scenario after --")?;
        let label = format!("shard {}", a.args.first().map_or("", String::as_str));
        let shard = Shard {
            procs: a.procs,
            args: a.args.clone(),
            board: Board::new(label, a.procs),
        };
        Ok((shard, inner.cmd))
    }

    /// Starts one child per share: its users start at `offset` (advanced
    /// by each share), it gets its own source addresses and what
    /// `per_child(index, share, offset)` overrides.
    fn spawn(
        &self,
        common: &Common,
        shares: &[usize],
        per_child: impl Fn(usize, usize, u64) -> Vec<(&'static str, String)>,
        flags: &[&str],
    ) -> anyhow::Result<(Vec<Driver>, Vec<Pending>)> {
        let mut drivers = Vec::new();
        let mut pending = Vec::new();
        let mut offset = common.offset;
        for (i, &n) in shares.iter().enumerate() {
            let mut overrides = per_child(i, n, offset);
            overrides.push(("src-from", child_sources(common, i)?));
            overrides.push(("offset", offset.to_string()));
            let args = child_args(&self.args, &overrides, flags);
            let (d, p) = shard::spawn(i, &args, self.board.clone())?;
            drivers.push(d);
            pending.push(p);
            offset += n as u64;
        }
        Ok((drivers, pending))
    }
}

async fn run_shard(a: ShardArgs) -> anyhow::Result<i32> {
    let (sh, cmd) = Shard::parse(&a)?;
    let out = Out::plain(a.json, a.save.clone());
    let _printing = sh.board.printer();
    let code = match cmd {
        Cmd::Hold(h) => finish(&shard_hold(&sh, h).await?, &out, 0)?,
        Cmd::Fanout(f) => finish(&shard_fanout(&sh, f).await?, &out, 0)?,
        Cmd::Commands(c) => {
            let r = shard_commands(&sh, c).await?;
            let code = if r.verification_ok { 0 } else { 3 };
            finish(&r, &out, code)?
        }
        Cmd::Cross(c) => {
            let r = shard_cross(&sh, c).await?;
            let code = if r.verification_ok { 0 } else { 3 };
            finish(&r, &out, code)?
        }
        Cmd::Storm(s) => finish(&shard_storm(&sh, s).await?, &out, 0)?,
        Cmd::Users(_) | Cmd::DbBaseline(_) | Cmd::DbCheck(_) | Cmd::TcpFloor(_) | Cmd::Shard(_) => {
            bail!(
                "shard runs hold, fanout, commands, cross or storm; users, db-baseline, db-check and tcp-floor need no sharding"
            )
        }
    };
    Ok(code)
}

/// Prints a merged report and passes the exit code on.
fn finish<R: Serialize + Display>(report: &R, out: &Out, code: i32) -> anyhow::Result<i32> {
    emit(report, out)?;
    Ok(code)
}

/// Users per child (whole users of `per_user` sockets each) and sockets
/// per child.
fn hold_shares(sockets: usize, per_user: usize, procs: usize) -> (Vec<usize>, Vec<usize>) {
    let per_user = per_user.max(1);
    let user_shares = shard::split(sockets.div_ceil(per_user), procs);
    let mut left = sockets;
    let socket_shares = user_shares
        .iter()
        .map(|u| {
            let s = (u * per_user).min(left);
            left -= s;
            s
        })
        .collect();
    (user_shares, socket_shares)
}

/// `hold` in P children; the parent reads the servers' RSS at the moments
/// all children have reached: before, all connected, after the hold.
async fn shard_hold(sh: &Shard, h: HoldArgs) -> anyhow::Result<hold::Report> {
    let setup = h.common.setup();
    let servers = hold::Servers::new(&setup, &h.server_pid)?;
    let (user_shares, socket_shares) = hold_shares(h.sockets, h.sockets_per_user, sh.procs);
    users::ensure_all(&setup, user_shares.iter().sum::<usize>() as u64, h.duration).await?;
    let before = servers.rss();
    // Offsets advance by users, so the children are spawned by user
    // shares and told their socket count.
    let (mut drivers, pending) = sh.spawn(
        &h.common,
        &user_shares,
        |i, _, _| vec![("sockets", socket_shares[i].to_string())],
        &[],
    )?;
    link::all_ready(&mut drivers, PHASE_WAIT).await?;
    let connected = servers.rss();
    link::broadcast(&drivers, Control::Go);
    link::all_ready(&mut drivers, PHASE_WAIT).await?;
    let after = servers.rss();
    link::broadcast(&drivers, Control::Go);
    let parts: Vec<hold::Report> = reports(pending).await?;
    Ok(hold::Report::merge(
        parts,
        &servers,
        [before, connected, after],
    ))
}

/// `fanout` with P listening children; the parent restocks.
async fn shard_fanout(sh: &Shard, f: FanoutArgs) -> anyhow::Result<fanout::Report> {
    let shares = shard::split(f.sockets, sh.procs);
    users::ensure_all(&f.common.setup(), f.sockets as u64, f.duration).await?;
    let api = f.common.setup().api()?;
    let merchant = api.merchant_token().await?;
    let product = match f.product {
        Some(p) => p,
        None => fanout::create_product(&api, &merchant, "fanout").await?,
    };
    let (mut drivers, pending) = sh.spawn(
        &f.common,
        &shares,
        |_, n, _| vec![("sockets", n.to_string()), ("product", product.to_string())],
        &[],
    )?;
    let driven = fanout::drive(
        &api,
        &merchant,
        fanout::Restocks {
            product,
            updates: f.updates,
            update_timeout: f.update_timeout,
            redis_pid: f.redis_pid,
        },
        &mut drivers,
    )
    .await?;
    let parts: Vec<fanout::Report> = reports(pending).await?;
    Ok(fanout::Report::merge(parts, driven))
}

/// `commands` in P children; the parent does the merchant setup once,
/// and undoes it whatever happened.
async fn shard_commands(sh: &Shard, c: CommandsArgs) -> anyhow::Result<commands::Report> {
    let setup = c.common.setup();
    let creds = users::ensure_all(&setup, c.users as u64, Duration::from_secs(300)).await?;
    let api = setup.api()?;
    let prepared = commands::prepare(
        &setup.apis()?,
        &creds,
        commands::Mix::parse(&c.mix)?,
        c.duration,
        c.rate,
        c.product,
        c.points,
    )
    .await?;
    let result = commands_children(sh, &c, prepared.product).await;
    let restored = commands::restore(&api, &prepared).await;
    let mut merged = commands::Report::merge(result?, prepared.notes.clone());
    merged.rate_cap = c.rate;
    restored?;
    if let Some(url) = &c.baseline_database_url {
        merged.db_baseline = Some(commands::baseline(url, c.users, c.duration).await?);
    }
    Ok(merged)
}

/// The commands children, started together once all are connected; each
/// gets its share of the users and of the rate.
async fn commands_children(
    sh: &Shard,
    c: &CommandsArgs,
    product: Option<u64>,
) -> anyhow::Result<Vec<commands::Report>> {
    let shares = shard::split(c.users, sh.procs);
    let (mut drivers, pending) = sh.spawn(
        &c.common,
        &shares,
        |_, n, _| {
            let mut o = vec![("users", n.to_string())];
            if let Some(p) = product {
                o.push(("product", p.to_string()));
            }
            if let Some(r) = c.rate {
                o.push(("rate", (r * n as f64 / c.users.max(1) as f64).to_string()));
            }
            o
        },
        &["skip-setup"],
    )?;
    link::all_ready(&mut drivers, PHASE_WAIT).await?;
    link::broadcast(&drivers, Control::Go);
    reports(pending).await
}

/// `cross` in P children, each with its share of the users and of the
/// rate; the parent does the merchant setup once and undoes it.
async fn shard_cross(sh: &Shard, c: CrossArgs) -> anyhow::Result<cross::Report> {
    let setup = c.common.setup();
    let creds = users::ensure_all(&setup, c.users as u64, Duration::from_secs(300)).await?;
    let prepared = cross::prepare(&setup, &creds, c.rate, c.duration).await?;
    let shares = shard::split(c.users, sh.procs);
    let result = async {
        let (mut drivers, pending) = sh.spawn(
            &c.common,
            &shares,
            |_, n, _| {
                vec![
                    ("users", n.to_string()),
                    (
                        "rate",
                        (c.rate * n as f64 / c.users.max(1) as f64).to_string(),
                    ),
                ]
            },
            &["skip-setup"],
        )?;
        link::all_ready(&mut drivers, PHASE_WAIT).await?;
        link::broadcast(&drivers, Control::Go);
        reports::<cross::Report>(pending).await
    }
    .await;
    let restored = commands::restore(&setup.api()?, &prepared).await;
    let merged = cross::Report::merge(result?, prepared.notes.clone());
    restored?;
    Ok(merged)
}

/// `storm` in P children, all losing their sockets at the same moment.
async fn shard_storm(sh: &Shard, s: StormArgs) -> anyhow::Result<storm::Report> {
    let shares = shard::split(s.sockets, sh.procs);
    let touches = shard::split(s.touch.min(s.sockets), sh.procs);
    users::ensure_all(
        &s.common.setup(),
        s.sockets as u64,
        Duration::from_secs(300),
    )
    .await?;
    let mode = storm::Mode::parse(&s.mode)?;
    let (mut drivers, pending) = sh.spawn(
        &s.common,
        &shares,
        |i, n, _| {
            vec![
                ("sockets", n.to_string()),
                ("touch", touches[i].min(n).to_string()),
            ]
        },
        &[],
    )?;
    link::all_ready(&mut drivers, PHASE_WAIT).await?;
    link::broadcast(
        &drivers,
        match mode {
            storm::Mode::Drop => Control::Drop,
            storm::Mode::ServerRestart => Control::Go,
        },
    );
    let parts: Vec<storm::Report> = reports(pending).await?;
    Ok(storm::Report::merge(parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_shares_give_whole_users_and_every_socket() {
        let (users, sockets) = hold_shares(11, 5, 2);
        assert_eq!(users, vec![2, 1]);
        assert_eq!(sockets, vec![10, 1]);
        let (users, sockets) = hold_shares(40_000, 1, 3);
        assert_eq!(users, sockets);
        assert_eq!(sockets.iter().sum::<usize>(), 40_000);
    }

    #[test]
    fn a_shard_parses_its_scenario_and_several_server_pids() {
        let a = ShardArgs {
            procs: 2,
            json: false,
            save: None,
            args: ["hold", "--server", "127.0.0.1:3001,127.0.0.1:3002"]
                .into_iter()
                .chain(["--server-pid", "11,12", "--sockets", "10"])
                .map(String::from)
                .collect(),
        };
        let (sh, cmd) = Shard::parse(&a).unwrap();
        assert_eq!(sh.procs, 2);
        let Cmd::Hold(h) = cmd else {
            panic!("not hold")
        };
        assert_eq!(h.server_pid, vec![11, 12]);
        assert_eq!(h.common.setup().targets().unwrap().len(), 2);
    }
}
