//! One socket's task: a single `select!` loop over the socket, its outbox,
//! the heartbeat and shutdown. Commands run inline, one at a time, so a
//! socket costs one task.
//!
//! Memory: an idle socket's task is this loop's future, whose size is that
//! of its largest state. Everything that awaits the database (a command, a
//! replay, a gap fill) is boxed, so its state is allocated only while it
//! runs: the idle future is ~1.6 KB instead of ~9 KB.

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures::{Sink, SinkExt, Stream, StreamExt};
use protocol::{Welcome, close, event};
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;
use tokio::time::{Instant, timeout};

use super::commands::{self, Change, Handled, SessionView};
use crate::app::AppState;
use crate::domain::auth::AuthUser;
use crate::domain::{event_frame, rfc3339};
use crate::heartbeat;
use crate::hub::{Outgoing, Registration};
use crate::store;

/// A write that cannot complete in this time means the peer stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing socket waits for the client's answering close frame
/// (reading and dropping what the client still sends, so the close frame
/// is not lost to a reset).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// At shutdown, how long a socket may stay quiet before it is closed.
const DRAIN_QUIET: Duration = Duration::from_millis(50);

/// Why the loop ended.
enum End {
    /// Close the socket with this code.
    Close(u16, &'static str),
    /// The peer is gone (closed, reset, or stopped reading): just drop it.
    Gone,
}

struct Session<S> {
    socket: S,
    state: AppState,
    auth: AuthUser,
    reg: Registration,
    last_seen: Instant,
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

pub async fn run<S>(socket: S, state: AppState, start: Start)
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    let Start {
        auth,
        reg,
        total_points,
        last_seq,
        since,
    } = start;
    state.metrics.ws_accepted.inc();
    let burst = state.config.ws_command_burst as f64;
    let mut session = Session {
        socket,
        state,
        auth,
        reg,
        last_seen: Instant::now(),
        tokens: burst,
        refilled: Instant::now(),
        strikes: 0,
    };
    let end = session.serve(total_points, last_seq, since).await;
    if let End::Close(code, reason) = end {
        session.state.metrics.socket_closed(code);
        Box::pin(session.close(code, reason)).await;
    }
}

impl<S> Session<S>
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    /// Sends the close frame, then reads (and drops) whatever the client
    /// still sends until its own close frame or the end, bounded: dropping
    /// the connection with unread data would reset it, and a client could
    /// lose the close frame and see 1006. (After a read error — 1007, 1009 —
    /// the socket reads nothing more, so those connections still end in a
    /// reset right after the close frame, which clients were seen to
    /// receive.)
    async fn close(&mut self, code: u16, reason: &'static str) {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let socket = &mut self.socket;
        let _ = timeout(CLOSE_TIMEOUT, async move {
            if socket.send(Message::Close(Some(frame))).await.is_err() {
                return;
            }
            while let Some(Ok(msg)) = socket.next().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }

    async fn serve(&mut self, total_points: i64, last_seq: u64, since: Option<u64>) -> End {
        // Boxed, like every other one-off step: its state is not kept in the
        // long-lived loop below.
        if let Err(end) = Box::pin(self.greet(total_points, last_seq, since)).await {
            return end;
        }
        self.main_loop().await
    }

    /// `welcome`, then (with `?since=`) the replay and its `sync_result`.
    async fn greet(
        &mut self,
        total_points: i64,
        last_seq: u64,
        since: Option<u64>,
    ) -> Result<(), End> {
        self.set_sent(last_seq);
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
        self.write(frames).await
    }

    async fn main_loop(&mut self) -> End {
        let interval = self.state.config.heartbeat_interval;
        // One clock for all sockets (see `crate::heartbeat`): no timer per
        // socket. It also says when the server is stopping.
        let mut beat = self.state.clock.subscribe();
        if heartbeat::stopping(&beat) {
            return self.shut_down().await;
        }
        // The outbox wait is made once and renewed only when it fires: a
        // broadcast wakes every socket, and making it anew on every turn
        // of the loop would cost each of them a registration more.
        let conn = self.reg.conn.clone();
        let mut queued = pin!(conn.outbox.wait());

        loop {
            tokio::select! {
                biased;
                _ = &mut queued => {
                    queued.set(conn.outbox.wait());
                    if let Some(code) = conn.outbox.close_code() {
                        return End::Close(code, close_reason(code));
                    }
                    if let Err(end) = self.flush_outbox().await {
                        return end;
                    }
                }
                msg = self.socket.next() => {
                    self.last_seen = Instant::now();
                    match msg {
                        Some(Ok(Message::Text(text))) => {
                            let frames = Box::pin(self.on_text(&text)).await;
                            if let Some(code) = conn.outbox.close_code() {
                                return End::Close(code, close_reason(code));
                            }
                            if let Err(end) = self.write(frames).await {
                                return end;
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            let frames = vec![commands::error_event(protocol::ErrorCode::MalformedFrame)];
                            if let Err(end) = self.write(frames).await {
                                return end;
                            }
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        Some(Ok(Message::Close(_))) | None => return End::Gone,
                        Some(Err(e)) => match read_error(&e) {
                            Some(end) => return end,
                            None => return End::Gone,
                        },
                    }
                }
                changed = beat.changed() => {
                    if changed.is_err() || heartbeat::stopping(&beat) {
                        return self.shut_down().await;
                    }
                    if self.last_seen.elapsed() > interval * 2 {
                        return End::Close(close::HEARTBEAT_TIMEOUT, "heartbeat timeout");
                    }
                    if chrono::Utc::now().timestamp() >= self.auth.expires_at {
                        return End::Close(close::AUTH_EXPIRED, "token expired");
                    }
                    let ping = self.socket.send(Message::Ping(Default::default()));
                    if Box::pin(timeout(WRITE_TIMEOUT, ping)).await.is_err() {
                        return End::Gone;
                    }
                }
            }
        }
    }

    /// The server is stopping: finish what the client already sent, then
    /// close with 1001.
    async fn shut_down(&mut self) -> End {
        Box::pin(self.finish_pending_commands()).await;
        End::Close(close::GOING_AWAY, "server shutting down")
    }

    /// At shutdown, commands the client already sent (in the socket's
    /// buffers, not yet read) still run and get their replies before the
    /// 1001 close. Bounded: at most a burst of commands, and reading stops
    /// at the first quiet moment.
    async fn finish_pending_commands(&mut self) {
        for _ in 0..self.state.config.ws_command_burst {
            match timeout(DRAIN_QUIET, self.socket.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    let frames = self.on_text(&text).await;
                    if self.write(frames).await.is_err() {
                        return;
                    }
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Binary(_)))) => {}
                _ => return,
            }
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
        match handled.change {
            Some(Change::Credentials(next)) => {
                self.reg
                    .conn
                    .session_id
                    .store(next.session_id.0, Ordering::Relaxed);
                self.auth = next;
            }
            Some(Change::SentUpTo(seq)) => self.set_sent(self.sent().max(seq)),
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

    /// Seq of the newest user event written to this socket; events are
    /// written in order with no gaps and no repeats. Kept on the hub's
    /// `Conn`, where the fan-out's catch-up reads it.
    fn sent(&self) -> u64 {
        self.reg.conn.sent_seq.load(Ordering::Relaxed)
    }

    fn set_sent(&self, seq: u64) {
        self.reg.conn.sent_seq.store(seq, Ordering::Relaxed);
    }

    /// Appends the user's events in `(after, upto]` from the log; returns
    /// the seq written up to, or `None` when the log could not be read
    /// (nothing is skipped: a later event or the catch-up tries again).
    async fn fill(
        db: &sqlx::MySqlPool,
        user_id: protocol::UserId,
        frames: &mut Vec<Utf8Bytes>,
        after: u64,
        upto: u64,
    ) -> Option<u64> {
        match Box::pin(store::events::between(db, user_id, after, upto)).await {
            Ok(missing) => {
                let last = missing.last().map_or(after, |(seq, _)| *seq);
                frames.extend(missing.into_iter().map(|(_, f)| Utf8Bytes::from(f)));
                Some(last)
            }
            Err(e) => {
                tracing::warn!(user_id = user_id.0, error = %e, "could not read missed events; will try again");
                None
            }
        }
    }

    /// Writes queued hub messages. User events go out in `seq` order: one
    /// that arrives ahead of its predecessors (two commits pushed in the
    /// other order, or a doorbell another instance lost) first pulls the
    /// missing ones from the database, and one already written (by a
    /// replay) is skipped.
    async fn flush_outbox(&mut self) -> Result<(), End> {
        let mut frames: Vec<Utf8Bytes> = Vec::new();
        let mut sent = self.sent();
        let (db, user_id) = (&self.state.db, self.auth.user_id);
        for item in self.reg.conn.outbox.take() {
            match item {
                Outgoing::Broadcast(frame) => frames.push(frame),
                Outgoing::User { seq, frame } => {
                    if seq <= sent {
                        continue;
                    }
                    if seq > sent + 1 {
                        match Self::fill(db, user_id, &mut frames, sent, seq - 1).await {
                            Some(upto) if upto == seq - 1 => {}
                            Some(upto) => {
                                // The log ends early: this frame would skip a seq.
                                sent = upto;
                                continue;
                            }
                            None => continue,
                        }
                    }
                    frames.push(frame);
                    sent = seq;
                }
                Outgoing::CatchUp(upto) if upto > sent => {
                    if let Some(upto) = Self::fill(db, user_id, &mut frames, sent, upto).await {
                        sent = upto;
                    }
                }
                Outgoing::CatchUp(_) => {}
            }
        }
        self.set_sent(sent);
        self.write_bytes(frames).await
    }

    async fn write(&mut self, frames: Vec<String>) -> Result<(), End> {
        self.write_bytes(frames.into_iter().map(Utf8Bytes::from).collect())
            .await
    }

    async fn write_bytes(&mut self, frames: Vec<Utf8Bytes>) -> Result<(), End> {
        if frames.is_empty() {
            return Ok(());
        }
        let socket = &mut self.socket;
        let mut write = Box::pin(async move {
            for f in frames {
                socket.feed(Message::Text(f)).await?;
            }
            socket.flush().await
        });
        // Nearly every write completes at once (the kernel takes it): only
        // one that has to wait for the peer gets a timer.
        if let Poll::Ready(done) = futures::poll!(write.as_mut()) {
            return done.map_err(|_| End::Gone);
        }
        match Box::pin(timeout(WRITE_TIMEOUT, write)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(End::Gone),
        }
    }
}

fn close_reason(code: u16) -> &'static str {
    match code {
        close::AUTH_EXPIRED => "session ended",
        close::REPLACED => "replaced by a newer connection",
        close::RATE_LIMITED => "rate limited",
        close::TOO_SLOW => "too slow to read events",
        close::PROTOCOL_VIOLATION => "protocol violation",
        close::INVALID_UTF8 => "text frame is not UTF-8",
        close::TOO_BIG => "frame too large",
        close::GOING_AWAY => "server shutting down",
        _ => "",
    }
}

/// A read error that the server answers with a close code (a frame too
/// big: 1009; a text frame that is not UTF-8: 1007), through axum's error
/// wrapper. Anything else means the peer is gone.
fn read_error(e: &axum::Error) -> Option<End> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        match err.downcast_ref::<tungstenite::Error>() {
            Some(tungstenite::Error::Capacity(_)) => {
                return Some(End::Close(close::TOO_BIG, close_reason(close::TOO_BIG)));
            }
            Some(tungstenite::Error::Utf8(_)) => {
                return Some(End::Close(
                    close::INVALID_UTF8,
                    close_reason(close::INVALID_UTF8),
                ));
            }
            _ => {}
        }
        source = err.source();
    }
    None
}
