//! `tcp-floor`: what this machine's kernel alone needs to fan one small
//! message out to N loopback TCP sockets — no server, no WebSocket, no
//! JSON. It is the floor under the `fanout` figure: a server cannot deliver
//! faster than its kernel can send and the readers' kernel can receive.
//!
//! Two processes, like a server and its clients: a child (this binary with
//! `--sender`) accepts N connections and, on each `go` from its parent,
//! writes one frame-sized message to every socket from `senders` threads
//! (as the server's runtime has one worker per core). The parent holds the
//! N client sockets (spread over loopback source addresses), reads them
//! with one thread on a bare `epoll`, and records per socket the time from
//! `go` to its message. The message is a WebSocket text frame and the
//! reader is `fanout`'s ([`crate::raw`]), so the two figures compare.

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

use super::check_socket_budget;
use crate::client::{Sources, connect_tcp};
use crate::raw::{Event, Reader, Socket};
use crate::stats::Hist;

/// About the size of a `stock_update` frame on the wire.
pub const MESSAGE_BYTES: usize = 170;
/// How long one message may take to reach every socket.
const READ_LIMIT: Duration = Duration::from_secs(60);

/// A WebSocket text frame of [`MESSAGE_BYTES`] on the wire, so the reader
/// is the one `fanout` uses ([`crate::raw`]).
fn message() -> Vec<u8> {
    let payload = MESSAGE_BYTES - 4;
    let mut m = vec![0x81, 126];
    m.extend_from_slice(&(payload as u16).to_be_bytes());
    m.resize(MESSAGE_BYTES, b'x');
    m
}

pub struct Opts {
    pub sockets: usize,
    pub updates: usize,
    /// Threads that write in the sender (the server's worker threads).
    pub senders: usize,
    pub sources: Sources,
    /// Run the sender as a thread of this process instead of a child
    /// process (for small runs: both ends' sockets then count against this
    /// process's open-files limit).
    pub in_process: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub sockets: usize,
    pub updates: usize,
    pub senders: usize,
    pub message_bytes: usize,
    /// `go` → this socket's message arrived.
    pub delay: Hist,
    /// `go` → the sender finished writing to every socket.
    pub send_all: Hist,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "tcp-floor: {} updates of {} bytes to {} loopback TCP sockets, {} sender thread(s), one epoll reader",
            self.updates, self.message_bytes, self.sockets, self.senders
        )?;
        writeln!(f, "  delay after go:  {}", self.delay)?;
        writeln!(f, "  sender done:     {}", self.send_all)
    }
}

pub async fn run(opts: Opts) -> anyhow::Result<Report> {
    if opts.sockets == 0 || opts.updates == 0 {
        bail!("--sockets and --updates must be at least 1");
    }
    check_socket_budget(opts.sockets)?;
    let (mut to_child, mut from_child, child) = start_sender(&opts)?;
    let port: u16 = line(&mut from_child)?
        .strip_prefix("port ")
        .and_then(|p| p.trim().parse().ok())
        .context("the sender did not say its port")?;

    // Connect everyone (async, bounded), then hand the sockets to a plain
    // thread: the measurement uses no runtime.
    let sem = std::sync::Arc::new(Semaphore::new(128));
    let sources = opts.sources.addrs()?;
    let mut tasks = Vec::with_capacity(opts.sockets);
    for i in 0..opts.sockets {
        let src = (!sources.is_empty()).then(|| sources[i % sources.len()]);
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await;
            connect_tcp(src, port).await
        }));
    }
    let mut clients = Vec::with_capacity(opts.sockets);
    for t in tasks {
        clients.push(t.await?.context("connecting to the sender")?.into_std()?);
    }
    if line(&mut from_child)?.trim() != "@ready" {
        bail!("the sender did not accept every socket");
    }

    let updates = opts.updates;
    let senders = opts.senders.max(1);
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<Report> {
        let mut report = Report {
            sockets: clients.len(),
            updates,
            senders,
            message_bytes: MESSAGE_BYTES,
            ..Report::default()
        };
        let n = clients.len();
        let mut reader = Reader::new(clients.into_iter().map(Socket::plain).collect())?;
        for _ in 0..updates {
            let t0 = Instant::now();
            writeln!(to_child, "go")?;
            to_child.flush()?;
            let mut arrived = 0;
            while arrived < n {
                if t0.elapsed() > READ_LIMIT {
                    bail!("{} sockets got nothing within {READ_LIMIT:?}", n - arrived);
                }
                let mut ended = None;
                reader.poll(1000, &mut |ev: Event| match ev {
                    Event::Text(..) => {
                        report.delay.record(t0.elapsed());
                        arrived += 1;
                    }
                    Event::Ended(_, kind) => ended = Some(kind),
                })?;
                if let Some(kind) = ended {
                    bail!("a socket ended: {kind}");
                }
            }
            let sent_us: u64 = line(&mut from_child)?
                .strip_prefix("@sent ")
                .and_then(|v| v.trim().parse().ok())
                .context("the sender did not report")?;
            report.send_all.record_us(sent_us);
        }
        writeln!(to_child, "stop")?;
        Ok(report)
    })
    .await??;
    if let Some(mut child) = child {
        let _ = child.wait();
    }
    Ok(report)
}

type ToSender = Box<dyn Write + Send>;
type FromSender = Box<dyn BufRead + Send>;

/// The sender as a child process (its stdin and stdout are the link), or
/// as a thread linked by two pipes.
fn start_sender(opts: &Opts) -> anyhow::Result<(ToSender, FromSender, Option<Child>)> {
    let (sockets, senders) = (opts.sockets, opts.senders.max(1));
    if opts.in_process {
        let (cmd_r, cmd_w) = std::io::pipe()?;
        let (out_r, out_w) = std::io::pipe()?;
        std::thread::spawn(move || sender_loop(sockets, senders, BufReader::new(cmd_r), out_w));
        return Ok((Box::new(cmd_w), Box::new(BufReader::new(out_r)), None));
    }
    let exe = std::env::current_exe().context("finding this binary to start the sender")?;
    let mut child = Command::new(exe)
        .args([
            "tcp-floor",
            "--sender",
            "--sockets",
            &sockets.to_string(),
            "--senders",
            &senders.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the sender process")?;
    let to_child = child.stdin.take().context("sender stdin")?;
    let from_child = BufReader::new(child.stdout.take().context("sender stdout")?);
    Ok((Box::new(to_child), Box::new(from_child), Some(child)))
}

/// The child process's part: [`sender_loop`] over stdin and stdout.
pub fn sender(sockets: usize, senders: usize) -> anyhow::Result<()> {
    sender_loop(
        sockets,
        senders,
        std::io::stdin().lock(),
        std::io::stdout().lock(),
    )
}

/// Accepts `sockets` connections, then writes one message to each on every
/// `go` and says how long that took.
fn sender_loop(
    sockets: usize,
    senders: usize,
    commands: impl BufRead,
    mut out: impl Write,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    // std listens with a backlog of 128; connections past a full queue can
    // be dropped after the client thinks them open. Listening again on a
    // listening socket only raises its backlog.
    // SAFETY: our own listening fd.
    if unsafe { libc::listen(listener.as_raw_fd(), 4096) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    writeln!(out, "port {}", listener.local_addr()?.port())?;
    out.flush()?;
    let mut conns = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        let (s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        conns.push(s);
    }
    writeln!(out, "@ready")?;
    out.flush()?;
    let msg = message();
    let chunk = conns.len().div_ceil(senders.max(1));
    for cmd in commands.lines() {
        match cmd?.trim() {
            "go" => {
                let t0 = Instant::now();
                std::thread::scope(|scope| {
                    for part in conns.chunks_mut(chunk) {
                        let msg = &msg;
                        scope.spawn(move || {
                            for s in part {
                                let _ = s.write_all(msg);
                            }
                        });
                    }
                });
                writeln!(out, "@sent {}", t0.elapsed().as_micros())?;
                out.flush()?;
            }
            _ => break,
        }
    }
    Ok(())
}

fn line(r: &mut impl BufRead) -> anyhow::Result<String> {
    let mut s = String::new();
    if r.read_line(&mut s)? == 0 {
        bail!("the sender process ended early");
    }
    Ok(s)
}
