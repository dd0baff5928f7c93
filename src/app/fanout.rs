//! Several instances, one audience: committed effects are shared through
//! Redis Pub/Sub so a socket on any instance gets what a command on any
//! other committed.
//!
//! MySQL stays the truth. What travels through Redis is a doorbell — the
//! user, the event's `seq` and its frame, all of which are also in the seq
//! log — so a message Redis loses (a disconnect, a full output buffer) is
//! never an event lost: a socket that sees a later `seq` fills the gap
//! from the database, and every `CHECK_EVERY` (and whenever Redis comes
//! back) this instance compares its sockets with the log and catches up
//! the ones behind.
//!
//! Channels, under `REDIS_CHANNEL_PREFIX` (`rp`):
//! - `rp:u:{shard}` — a user's events, `shard = user_id % USER_SHARDS`
//!   (one channel per shard keeps a user's events in order);
//! - `rp:all` — broadcasts (`stock_update`, `product_update`,
//!   `review_queue`), serialized once;
//! - `rp:control` — sockets to close (logout, sign-out-everywhere, a reused
//!   refresh token), acted on by every instance at once.
//!
//! Every instance subscribes to all of them; a message says which
//! instance sent it, and an instance ignores its own (it delivered those
//! locally before publishing). Publishing never waits on Redis: messages go
//! through a bounded queue to one task, and a full queue drops them (the
//! catch-up covers the loss).

use protocol::{ProductId, SessionId, UserId};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{PushInfo, PushKind, Value};
use sqlx::MySqlPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::domain::{Audience, Broadcast, CloseSockets, UserEvent};
use crate::hub::Hub;
use crate::store;

/// User events are spread over this many channels.
pub const USER_SHARDS: u64 = 64;
/// How often sockets are compared with the seq log when nothing else asks.
const CHECK_EVERY: Duration = Duration::from_secs(10);
/// How often Redis is pinged (a failed ping marks it down; the first
/// answer after that triggers a catch-up).
const PING_EVERY: Duration = Duration::from_secs(1);
/// Messages waiting to be published; beyond it they are dropped.
const QUEUE: usize = 65_536;
/// Users whose newest seq is read in one query.
const CHECK_BATCH: usize = 1000;

/// One message between instances.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Message {
    User {
        user_id: UserId,
        seq: u64,
        frame: String,
    },
    Broadcast(Broadcast),
    Close(CloseSockets),
}

/// The wire form: `origin`, a kind letter and fields, newline-separated,
/// the frame last (it may contain anything but is never parsed here).
fn encode(origin: &str, m: &Message) -> String {
    match m {
        Message::User {
            user_id,
            seq,
            frame,
        } => format!("{origin}\nu\n{user_id}\n{seq}\n{frame}"),
        Message::Broadcast(b) => {
            let audience = match b.audience {
                Audience::Everyone => "e",
                Audience::Merchants => "m",
            };
            let (product, version) = match b.version {
                Some((p, v)) => (p.to_string(), v.to_string()),
                None => ("-".into(), "-".into()),
            };
            format!("{origin}\nb\n{audience}\n{product}\n{version}\n{}", b.frame)
        }
        Message::Close(c) => {
            let session = c.session.map_or("*".to_string(), |s| s.to_string());
            format!("{origin}\nc\n{}\n{session}\n{}", c.user_id, c.code)
        }
    }
}

fn decode(text: &str) -> Option<(&str, Message)> {
    let (origin, rest) = text.split_once('\n')?;
    let (kind, rest) = rest.split_once('\n')?;
    let message = match kind {
        "u" => {
            let (user, rest) = rest.split_once('\n')?;
            let (seq, frame) = rest.split_once('\n')?;
            Message::User {
                user_id: UserId(user.parse().ok()?),
                seq: seq.parse().ok()?,
                frame: frame.to_string(),
            }
        }
        "b" => {
            let mut parts = rest.splitn(4, '\n');
            let audience = match parts.next()? {
                "e" => Audience::Everyone,
                "m" => Audience::Merchants,
                _ => return None,
            };
            let product = parts.next()?;
            let version = parts.next()?;
            let frame = parts.next()?.to_string();
            let version = match (product, version) {
                ("-", "-") => None,
                (p, v) => Some((ProductId(p.parse().ok()?), v.parse().ok()?)),
            };
            Message::Broadcast(Broadcast {
                audience,
                version,
                coalesce: None,
                frame,
            })
        }
        "c" => {
            let mut parts = rest.splitn(3, '\n');
            let user_id = UserId(parts.next()?.parse().ok()?);
            let session = match parts.next()? {
                "*" => None,
                s => Some(SessionId(s.parse().ok()?)),
            };
            let code = parts.next()?.parse().ok()?;
            Message::Close(CloseSockets {
                user_id,
                session,
                code,
            })
        }
        _ => return None,
    };
    Some((origin, message))
}

pub struct Fanout {
    /// This instance, in every message it sends.
    origin: String,
    prefix: String,
    outbound: mpsc::Sender<Message>,
    /// Whether Redis answered last time it was asked.
    up: AtomicBool,
    /// Asks the checker for a catch-up of every local socket now.
    resync: Notify,
}

impl Fanout {
    /// Starts the fan-out's tasks: the subscription, the publisher, the
    /// pinger and the checker. Redis need not be up: until it is, the
    /// instance serves its own sockets and `/health` says degraded.
    pub fn start(
        url: &str,
        prefix: &str,
        hub: Arc<Hub>,
        db: MySqlPool,
        shutdown: CancellationToken,
    ) -> Result<Arc<Fanout>, redis::RedisError> {
        let url = if url.contains("protocol=") {
            url.to_string()
        } else if url.contains('?') {
            format!("{url}&protocol=resp3")
        } else {
            format!("{url}?protocol=resp3")
        };
        let client = redis::Client::open(url)?;
        let (push_tx, push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let config = ConnectionManagerConfig::new()
            .set_push_sender(push_tx)
            .set_automatic_resubscription()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let manager = ConnectionManager::new_lazy_with_config(client, config)?;
        let (outbound, outbound_rx) = mpsc::channel(QUEUE);
        let fanout = Arc::new(Fanout {
            origin: ulid::Ulid::new().to_string(),
            prefix: prefix.to_string(),
            outbound,
            up: AtomicBool::new(false),
            resync: Notify::new(),
        });
        tokio::spawn(fanout.clone().subscribe(manager.clone(), shutdown.clone()));
        tokio::spawn(
            fanout
                .clone()
                .receive(push_rx, hub.clone(), shutdown.clone()),
        );
        tokio::spawn(fanout.clone().publish_forever(
            manager.clone(),
            outbound_rx,
            shutdown.clone(),
        ));
        tokio::spawn(fanout.clone().ping_forever(manager, shutdown.clone()));
        tokio::spawn(fanout.clone().check_forever(hub, db, shutdown));
        Ok(fanout)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn user_channel(&self, user_id: UserId) -> String {
        format!("{}:u:{}", self.prefix, user_id.0 % USER_SHARDS)
    }

    fn channel_of(&self, m: &Message) -> String {
        match m {
            Message::User { user_id, .. } => self.user_channel(*user_id),
            Message::Broadcast(_) => format!("{}:all", self.prefix),
            Message::Close(_) => format!("{}:control", self.prefix),
        }
    }

    /// Hands committed effects to the other instances (this one already
    /// delivered them). Never waits.
    pub fn publish(&self, events: &[UserEvent], broadcasts: &[Broadcast], closes: &[CloseSockets]) {
        let messages = events
            .iter()
            .map(|e| Message::User {
                user_id: e.user_id,
                seq: e.seq,
                frame: e.frame.clone(),
            })
            .chain(broadcasts.iter().cloned().map(Message::Broadcast))
            .chain(closes.iter().copied().map(Message::Close));
        for m in messages {
            if self.outbound.try_send(m).is_err() {
                tracing::warn!(
                    "fan-out queue full: a message to other instances was dropped; their catch-up will cover it"
                );
            }
        }
    }

    fn mark(&self, up: bool) {
        let was = self.up.swap(up, Ordering::Relaxed);
        if was != up {
            if up {
                tracing::info!("Redis is back: catching every socket up from the seq log");
                self.resync.notify_one();
            } else {
                tracing::warn!(
                    "Redis is unreachable: serving this instance's sockets only until it returns"
                );
            }
        }
    }

    /// Subscribes once; the connection manager resubscribes by itself
    /// after every reconnect.
    async fn subscribe(
        self: Arc<Self>,
        mut manager: ConnectionManager,
        shutdown: CancellationToken,
    ) {
        let pattern = format!("{}:u:*", self.prefix);
        let channels = [
            format!("{}:all", self.prefix),
            format!("{}:control", self.prefix),
        ];
        loop {
            let result = async {
                manager.psubscribe(&pattern).await?;
                manager.subscribe(&channels).await
            }
            .await;
            match result {
                Ok(()) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot subscribe to Redis yet");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// Applies other instances' messages to this instance's sockets, and
    /// follows the connection's state.
    async fn receive(
        self: Arc<Self>,
        mut pushes: mpsc::UnboundedReceiver<PushInfo>,
        hub: Arc<Hub>,
        shutdown: CancellationToken,
    ) {
        loop {
            let push = tokio::select! {
                _ = shutdown.cancelled() => return,
                p = pushes.recv() => match p { Some(p) => p, None => return },
            };
            match push.kind {
                PushKind::Message | PushKind::PMessage => {
                    // [pattern,] channel, payload
                    let Some(Value::BulkString(payload)) = push.data.last() else {
                        continue;
                    };
                    let Ok(text) = std::str::from_utf8(payload) else {
                        continue;
                    };
                    match decode(text) {
                        Some((origin, _)) if origin == self.origin => {}
                        Some((
                            _,
                            Message::User {
                                user_id,
                                seq,
                                frame,
                            },
                        )) => {
                            hub.deliver_frame(user_id, seq, &frame);
                        }
                        Some((_, Message::Broadcast(b))) => {
                            hub.broadcast(&b);
                        }
                        Some((_, Message::Close(c))) => {
                            hub.close_sockets(c.user_id, c.session, c.code);
                        }
                        None => tracing::warn!("an unreadable message on the fan-out channels"),
                    }
                }
                // (Re)subscribed: what was published while we were away is
                // only in the seq log.
                PushKind::Subscribe | PushKind::PSubscribe => {
                    self.up.store(true, Ordering::Relaxed);
                    self.resync.notify_one();
                }
                PushKind::Disconnection => self.mark(false),
                _ => {}
            }
        }
    }

    async fn publish_forever(
        self: Arc<Self>,
        mut manager: ConnectionManager,
        mut queue: mpsc::Receiver<Message>,
        shutdown: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(256);
        loop {
            let n = tokio::select! {
                _ = shutdown.cancelled() => return,
                n = queue.recv_many(&mut batch, 256) => n,
            };
            if n == 0 {
                return;
            }
            let mut pipe = redis::pipe();
            for m in batch.drain(..) {
                pipe.cmd("PUBLISH")
                    .arg(self.channel_of(&m))
                    .arg(encode(&self.origin, &m))
                    .ignore();
            }
            if let Err(e) = pipe.exec_async(&mut manager).await {
                tracing::warn!(error = %e, "publishing to Redis failed; other instances will catch up from the seq log");
                self.mark(false);
            }
        }
    }

    async fn ping_forever(
        self: Arc<Self>,
        mut manager: ConnectionManager,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(PING_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let pong: redis::RedisResult<String> =
                redis::cmd("PING").query_async(&mut manager).await;
            self.mark(pong.is_ok());
        }
    }

    /// Every `CHECK_EVERY`, or when asked (Redis back, resubscribed), makes
    /// every local socket that is behind its user's newest seq catch up
    /// from the log.
    async fn check_forever(
        self: Arc<Self>,
        hub: Arc<Hub>,
        db: MySqlPool,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(CHECK_EVERY) => {}
                _ = self.resync.notified() => {}
            }
            if let Err(e) = catch_up(&hub, &db).await {
                tracing::warn!(error = %e, "could not compare sockets with the seq log; will retry");
            }
        }
    }
}

/// Compares every local user's sockets with the user's newest seq and
/// tells the ones behind to catch up (they read what they missed from the
/// log themselves).
pub async fn catch_up(hub: &Hub, db: &MySqlPool) -> sqlx::Result<usize> {
    let users = hub.local_users();
    let mut behind = 0;
    for chunk in users.chunks(CHECK_BATCH) {
        for (user_id, last_seq) in store::users::last_seqs(db, chunk).await? {
            behind += hub.catch_up(user_id, last_seq);
        }
    }
    Ok(behind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_reads_back_as_written() {
        let messages = [
            Message::User {
                user_id: UserId(7),
                seq: 42,
                frame: "{\"type\":\"points_update\",\n\"seq\":42}".into(),
            },
            Message::Broadcast(Broadcast {
                audience: Audience::Everyone,
                version: Some((ProductId(3), 9)),
                coalesce: None,
                frame: "{\"type\":\"stock_update\"}".into(),
            }),
            Message::Broadcast(Broadcast {
                audience: Audience::Merchants,
                version: None,
                coalesce: None,
                frame: "{}".into(),
            }),
            Message::Close(CloseSockets {
                user_id: UserId(7),
                session: None,
                code: 4001,
            }),
            Message::Close(CloseSockets {
                user_id: UserId(7),
                session: Some(SessionId(12)),
                code: 4001,
            }),
        ];
        for m in messages {
            let text = encode("me", &m);
            assert_eq!(decode(&text), Some(("me", m)));
        }
        assert_eq!(decode("me\nx\n1"), None);
        assert_eq!(decode("me\nu\nseven\n1\n{}"), None);
    }
}
