//! One socket's task: a single loop that waits for the socket to be
//! readable or its outbox to need it (something queued, a close asked —
//! the heartbeat's and shutdown's included, see `crate::heartbeat`).
//! Commands run inline, one at a time, so a socket costs one task. The task reads frames itself (`crate::frame`)
//! and writes through the socket's outbox, which others write into
//! directly when the socket can take it: a broadcast does not wake the
//! task at all.
//!
//! Memory: an idle socket's task is this loop's future, whose size is that
//! of its largest state. Everything that awaits something else (a command,
//! a replay, a gap fill, a blocked write) is boxed, so its state is
//! allocated only while it runs, and bytes are read into a buffer on the
//! stack of a plain function, never kept across an await.

use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use protocol::{Welcome, close, event};
use std::future::poll_fn;
use std::io;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use super::commands::{self, Change, Handled, SessionView};
use crate::app::AppState;
use crate::domain::auth::AuthUser;
use crate::domain::{event_frame, rfc3339};
use crate::frame::{self, Incoming, Reader};
use crate::hub::{Drained, Registration};
use crate::store;

/// A write that cannot complete in this time means the peer stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing socket waits for the client's answering close frame
/// (reading and dropping what the client still sends, so the close frame
/// is not lost to a reset).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// At shutdown, how long a socket may stay quiet before it is closed.
const DRAIN_QUIET: Duration = Duration::from_millis(50);
/// RFC 6455's code for a normal close, when a client's close frame has none.
const NORMAL_CLOSURE: u16 = 1000;
/// Bytes read from the socket per call (on the stack, not kept).
const READ_CHUNK: usize = 4096;
/// Reads per wake-up before the loop looks at its other work.
const READS_PER_TURN: usize = 16;

/// Why the loop ended.
enum End {
    /// Close the socket with this code.
    Close(u16),
    /// The client closed: answer its close frame (with its code), then end.
    Answer(Option<u16>),
    /// The peer is gone (reset, or stopped reading): just drop it.
    Gone,
}

struct Session {
    state: AppState,
    auth: AuthUser,
    reg: Registration,
    reader: Reader,
    /// Token bucket for the command rate.
    tokens: f64,
    refilled: Instant,
    /// Commands refused in a row for rate; past the burst the socket closes.
    strikes: u32,
}

/// What the upgrade established: who, their place in the hub, and what
/// `welcome` says.
pub struct Start {
    pub auth: AuthUser,
    pub reg: Registration,
    pub total_points: i64,
    pub last_seq: u64,
    /// `?since=`: replay after `welcome`.
    pub since: Option<u64>,
}

/// Everything a socket starts from, in one allocation: what the task
/// keeps for its whole life is only what [`Session`] holds.
pub struct Setup {
    pub on_upgrade: OnUpgrade,
    pub state: AppState,
    pub start: Start,
}

/// The socket's task: the upgrade, the greeting, then the loop until the
/// socket closes. Each step that runs once is boxed, so the state kept
/// while the socket idles is the session and the loop's few locals.
pub async fn serve(setup: Box<Setup>) {
    if let Some((session, end)) = Box::pin(open(setup)).await {
        session.live(end).await;
    }
}

/// Completes the upgrade and greets: `welcome` (and the replay asked
/// with `?since=`) written, then the socket handed to its outbox. `None`
/// when the connection did not get that far; an `End` when what the
/// client sent right behind its handshake already ends it.
async fn open(setup: Box<Setup>) -> Option<(Session, Option<End>)> {
    let Setup {
        on_upgrade,
        state,
        start,
    } = *setup;
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "websocket upgrade failed");
            return None;
        }
    };
    let Ok((mut socket, early)) = crate::net::upgraded_tcp(upgraded) else {
        tracing::error!("a websocket upgrade did not come through the server's listener");
        return None;
    };
    let Start {
        auth,
        reg,
        total_points,
        last_seq,
        since,
    } = start;
    state.metrics.ws_accepted.inc();
    reg.conn
        .expires_at
        .store(auth.expires_at, Ordering::Relaxed);
    let burst = state.config.ws_command_burst as f64;
    let reader = Reader::new(state.config.ws_max_frame_bytes);
    let mut session = Session {
        state,
        auth,
        reg,
        reader,
        tokens: burst,
        refilled: Instant::now(),
        strikes: 0,
    };
    let greeting = session.greeting(total_points, last_seq, since).await;
    let greet = timeout(WRITE_TIMEOUT, async {
        for f in &greeting {
            socket.write_all(f).await?;
        }
        io::Result::Ok(())
    });
    if !matches!(greet.await, Ok(Ok(()))) {
        return None;
    }
    // From here on the outbox owns the socket, and what was queued for it
    // since it joined the hub follows the greeting.
    session.reg.conn.outbox.install(socket);
    let mut incoming = Vec::new();
    let violation = session.reader.feed(&early, &mut incoming).err();
    let end = match session.handle_all(&mut incoming).await {
        Err(end) => Some(end),
        Ok(()) => violation.map(|v| End::Close(v.code())),
    };
    Some((session, end))
}

impl Session {
    /// The loop, then the close.
    async fn live(mut self, end: Option<End>) {
        let end = match end {
            Some(end) => end,
            None => self.main_loop().await,
        };
        match end {
            End::Close(code) => {
                self.state.metrics.socket_closed(code);
                Box::pin(self.close(code, close_reason(code))).await;
            }
            End::Answer(code) => Box::pin(self.answer_close(code)).await,
            End::Gone => {}
        }
    }

    /// `welcome`, then (with `?since=`) the replay and its `sync_result`.
    async fn greeting(
        &mut self,
        total_points: i64,
        last_seq: u64,
        since: Option<u64>,
    ) -> Vec<Bytes> {
        self.reg.conn.outbox.set_sent(last_seq);
        let welcome = Welcome {
            user_id: self.auth.user_id,
            total_points,
            last_seq,
            heartbeat_interval_ms: self.state.config.heartbeat_interval.as_millis() as u64,
            server_time: rfc3339(chrono::Utc::now()),
        };
        let mut frames = vec![event_frame(event::WELCOME, None, &welcome)];
        if let Some(since) = since {
            let handled = commands::sync_after_connect(self.view(), since, last_seq).await;
            frames.extend(self.apply(handled));
        }
        frames.iter().map(|f| frame::text(f)).collect()
    }

    async fn main_loop(&mut self) -> End {
        if self.state.shutdown.is_cancelled() {
            return self.shut_down().await;
        }
        let conn = self.reg.conn.clone();
        let Some(socket) = conn.outbox.socket() else {
            return End::Gone;
        };
        let mut incoming = Vec::new();
        // What was queued while the greeting was written.
        if let Err(end) = Box::pin(self.flush()).await {
            return end;
        }
        loop {
            // Idle here: two wakers registered, no future kept per wait.
            let wake = poll_fn(|cx| {
                if conn.outbox.poll_wake(cx).is_ready() {
                    return Poll::Ready(None);
                }
                socket.poll_read_ready(cx).map(Some)
            })
            .await;
            match wake {
                None => match conn.outbox.close_code() {
                    Some(close::GOING_AWAY) => return self.shut_down().await,
                    Some(code) => return End::Close(code),
                    None => {
                        if let Err(end) = Box::pin(self.flush()).await {
                            return end;
                        }
                    }
                },
                Some(Err(_)) => return End::Gone,
                Some(Ok(())) => {
                    let read = self.read_now(socket, &mut incoming);
                    if let Err(end) = Box::pin(self.handle_all(&mut incoming)).await {
                        return end;
                    }
                    if let Err(end) = read {
                        return end;
                    }
                }
            }
        }
    }

    /// Reads what the kernel has for this socket (without waiting) and
    /// turns it into messages. `Err`: the peer is gone, or broke the
    /// protocol (after the messages before the violation).
    fn read_now(&mut self, socket: &TcpStream, out: &mut Vec<Incoming>) -> Result<(), End> {
        let mut buf = [0u8; READ_CHUNK];
        for _ in 0..READS_PER_TURN {
            match socket.try_read(&mut buf) {
                Ok(0) => return Err(End::Gone),
                Ok(n) => {
                    let now = self.reg.hub().now_ms();
                    self.reg.conn.last_seen.store(now, Ordering::Relaxed);
                    if let Err(v) = self.reader.feed(&buf[..n], out) {
                        return Err(End::Close(v.code()));
                    }
                    if n < buf.len() {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(End::Gone),
            }
        }
        Ok(())
    }

    /// Answers every message read, in order. A close asked meanwhile ends
    /// the socket after the reply (at shutdown, the rest are answered too).
    async fn handle_all(&mut self, incoming: &mut Vec<Incoming>) -> Result<(), End> {
        for msg in std::mem::take(incoming) {
            let frames = match msg {
                Incoming::Text(text) => {
                    let frames = Box::pin(self.on_text(&text)).await;
                    frames.iter().map(|f| frame::text(f)).collect()
                }
                Incoming::Binary => {
                    vec![frame::text(&commands::error_event(
                        protocol::ErrorCode::MalformedFrame,
                    ))]
                }
                Incoming::Ping(payload) => vec![frame::encode(frame::opcode::PONG, &payload)],
                Incoming::Pong => continue,
                Incoming::Close(code) => return Err(End::Answer(code)),
            };
            self.reg.conn.outbox.push_own(frames);
            self.flush().await?;
            match self.reg.conn.outbox.close_code() {
                None | Some(close::GOING_AWAY) => {}
                Some(code) => return Err(End::Close(code)),
            }
        }
        Ok(())
    }

    /// The server is stopping: finish what the client already sent, then
    /// close with 1001.
    async fn shut_down(&mut self) -> End {
        match Box::pin(self.finish_pending_commands()).await {
            Ok(()) => End::Close(close::GOING_AWAY),
            Err(end) => end,
        }
    }

    /// At shutdown, commands the client already sent (in the socket's
    /// buffers, not yet read) still run and get their replies before the
    /// 1001 close. Bounded: at most a burst of commands, and reading stops
    /// at the first quiet moment.
    async fn finish_pending_commands(&mut self) -> Result<(), End> {
        let conn = self.reg.conn.clone();
        let Some(socket) = conn.outbox.socket() else {
            return Ok(());
        };
        let mut incoming = Vec::new();
        let mut left = self.state.config.ws_command_burst as usize;
        while left > 0 {
            if !matches!(timeout(DRAIN_QUIET, socket.readable()).await, Ok(Ok(()))) {
                return Ok(());
            }
            let read = self.read_now(socket, &mut incoming);
            left = left.saturating_sub(incoming.len().max(1));
            self.handle_all(&mut incoming).await?;
            read?;
        }
        Ok(())
    }

    /// Writes what is queued for this socket, filling gaps in the user's
    /// events from the log, waiting (bounded) while the peer does not read.
    async fn flush(&mut self) -> Result<(), End> {
        let conn = self.reg.conn.clone();
        loop {
            match conn.outbox.drain() {
                Drained::Empty | Drained::NoSocket => return Ok(()),
                Drained::Gone => return Err(End::Gone),
                Drained::Gap { after, upto } => {
                    let filled = self.fill(after, upto).await;
                    conn.outbox.fill(filled);
                }
                Drained::Blocked => {
                    let Some(socket) = conn.outbox.socket() else {
                        return Err(End::Gone);
                    };
                    if !matches!(timeout(WRITE_TIMEOUT, socket.writable()).await, Ok(Ok(()))) {
                        return Err(End::Gone);
                    }
                    if let Some(code) = conn.outbox.close_code() {
                        return Err(End::Close(code));
                    }
                }
            }
        }
    }

    /// The user's events in `(after, upto]` from the log, framed, with the
    /// seq they reach; `None` when the log could not be read.
    async fn fill(&self, after: u64, upto: u64) -> Option<(Vec<Bytes>, u64)> {
        let user_id = self.auth.user_id;
        match Box::pin(store::events::between(&self.state.db, user_id, after, upto)).await {
            Ok(missing) => {
                let last = missing.last().map_or(after, |(seq, _)| *seq);
                Some((missing.iter().map(|(_, f)| frame::text(f)).collect(), last))
            }
            Err(e) => {
                tracing::warn!(user_id = user_id.0, error = %e, "could not read missed events; will try again");
                None
            }
        }
    }

    /// Sends the close frame after the end of any frame already begun,
    /// then half-closes and reads (and drops) what the client still sends
    /// until its own close frame or the end, bounded: closing with unread
    /// data would reset the connection, and the client could lose the
    /// close frame and see 1006.
    async fn close(&mut self, code: u16, reason: &'static str) {
        let conn = self.reg.conn.clone();
        conn.outbox
            .replace_with_close(code, frame::close(code, reason));
        let Some(socket) = conn.outbox.socket() else {
            return;
        };
        if !write_out(&conn.outbox, socket).await {
            return;
        }
        let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Write);
        // After a violation the reader's state means nothing: just drain.
        let violated = matches!(
            code,
            close::PROTOCOL_VIOLATION | close::INVALID_UTF8 | close::TOO_BIG
        );
        let reader = &mut self.reader;
        let _ = timeout(CLOSE_TIMEOUT, async move {
            let mut incoming = Vec::new();
            loop {
                if socket.readable().await.is_err() {
                    return;
                }
                match read_answer(socket, reader, &mut incoming, violated) {
                    Some(true) => return,
                    Some(false) => {}
                    None => return,
                }
            }
        })
        .await;
    }

    /// The client closed: answer with its code (RFC 6455 §5.5.1), after the
    /// end of any frame already begun, and end.
    async fn answer_close(&mut self, code: Option<u16>) {
        let conn = self.reg.conn.clone();
        let answer = match code {
            Some(c) => frame::close(c, ""),
            None => frame::encode(frame::opcode::CLOSE, &[]),
        };
        conn.outbox
            .replace_with_close(code.unwrap_or(NORMAL_CLOSURE), answer);
        if let Some(socket) = conn.outbox.socket() {
            write_out(&conn.outbox, socket).await;
        }
    }

    fn view(&self) -> SessionView<'_> {
        SessionView {
            state: &self.state,
            auth: &self.auth,
        }
    }

    /// Applies what a command says should change; returns its frames.
    fn apply(&mut self, handled: Handled) -> Vec<String> {
        let outbox = &self.reg.conn.outbox;
        match handled.change {
            Some(Change::Credentials(next)) => {
                let conn = &self.reg.conn;
                conn.session_id.store(next.session_id.0, Ordering::Relaxed);
                conn.expires_at.store(next.expires_at, Ordering::Relaxed);
                self.auth = next;
            }
            Some(Change::SentUpTo(seq)) => outbox.set_sent(outbox.sent().max(seq)),
            None => {}
        }
        handled.frames
    }

    /// Rate-limits, then runs one command.
    async fn on_text(&mut self, text: &str) -> Vec<String> {
        let cfg = &self.state.config;
        let now = Instant::now();
        let burst = cfg.ws_command_burst as f64;
        self.tokens = (self.tokens
            + now.duration_since(self.refilled).as_secs_f64() * cfg.ws_commands_per_sec as f64)
            .min(burst);
        self.refilled = now;
        if self.tokens < 1.0 {
            self.strikes += 1;
            if self.strikes > cfg.ws_command_burst {
                self.reg.conn.outbox.close_with(close::RATE_LIMITED);
                return Vec::new();
            }
            return vec![commands::refuse(text, protocol::ErrorCode::RateLimited)];
        }
        self.tokens -= 1.0;
        self.strikes = 0;
        self.state.metrics.ws_commands.inc();
        let handled = commands::handle(self.view(), text).await;
        self.apply(handled)
    }
}

/// Writes everything queued (a close frame last), waiting for the peer at
/// most `WRITE_TIMEOUT`; false when it could not.
async fn write_out(outbox: &crate::hub::Outbox, socket: &TcpStream) -> bool {
    let done = timeout(WRITE_TIMEOUT, async {
        loop {
            match outbox.drain() {
                Drained::Empty => return true,
                Drained::Blocked => {
                    if socket.writable().await.is_err() {
                        return false;
                    }
                }
                _ => return false,
            }
        }
    });
    matches!(done.await, Ok(true))
}

/// One read while waiting for the client's answering close frame:
/// `Some(true)` when it came or the connection ended, `Some(false)` to
/// keep waiting, `None` on an error.
fn read_answer(
    socket: &TcpStream,
    reader: &mut Reader,
    incoming: &mut Vec<Incoming>,
    just_drain: bool,
) -> Option<bool> {
    let mut buf = [0u8; READ_CHUNK];
    match socket.try_read(&mut buf) {
        Ok(0) => Some(true),
        Ok(_) if just_drain => Some(false),
        Ok(n) => {
            if reader.feed(&buf[..n], incoming).is_err() {
                return Some(true);
            }
            let answered = incoming.iter().any(|m| matches!(m, Incoming::Close(_)));
            incoming.clear();
            Some(answered)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Some(false),
        Err(_) => None,
    }
}

fn close_reason(code: u16) -> &'static str {
    match code {
        close::AUTH_EXPIRED => "session ended",
        close::REPLACED => "replaced by a newer connection",
        close::RATE_LIMITED => "rate limited",
        close::TOO_SLOW => "too slow to read events",
        close::PROTOCOL_VIOLATION => "not a valid websocket frame",
        close::INVALID_UTF8 => "text frame is not UTF-8",
        close::TOO_BIG => "frame too large",
        close::GOING_AWAY => "server shutting down",
        close::HEARTBEAT_TIMEOUT => "heartbeat timeout",
        _ => "",
    }
}
