//! Who is connected: a registry of live sockets keyed by user, each with a
//! bounded outbox. Delivery never waits on a socket: a message is queued or,
//! when the outbox is full, the socket is marked too slow and closed, so one
//! slow reader can never stall a broadcast or a command.

use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use crate::domain::{Audience, Broadcast, UserEvent};
use protocol::{ProductId, SessionId, UserId, close};

/// A frame waiting for its socket's task to write it.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// One of the user's durable events: the socket writes them in `seq`
    /// order, filling gaps from the database and skipping repeats.
    User { seq: u64, frame: Utf8Bytes },
    /// A latest-value event for everyone (serialized once, shared bytes).
    Broadcast(Utf8Bytes),
    /// The user's events up to this seq exist in the log; the socket reads
    /// the ones it has not written (a doorbell another instance lost).
    CatchUp(u64),
}

/// The queue between the hub and one socket's task. Lighter than a channel:
/// an idle socket's queue holds no allocation.
pub struct Outbox {
    queue: Mutex<VecDeque<Outgoing>>,
    /// Wakes the socket task: something was queued, or it must close.
    notify: Notify,
    /// A close code the socket must close with (0: none).
    close: AtomicU16,
    capacity: usize,
}

impl Outbox {
    fn new(capacity: usize) -> Outbox {
        Outbox {
            queue: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            close: AtomicU16::new(0),
            capacity,
        }
    }

    /// Queues a frame; false when the socket is closing or just became too slow.
    fn push(&self, msg: Outgoing) -> bool {
        if self.close.load(Ordering::Relaxed) != 0 {
            return false;
        }
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= self.capacity {
            drop(q);
            self.close_with(close::TOO_SLOW);
            return false;
        }
        q.push_back(msg);
        drop(q);
        self.notify.notify_one();
        true
    }

    /// Asks the socket to close with `code`; the first code asked wins.
    pub fn close_with(&self, code: u16) {
        let _ = self
            .close
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Relaxed);
        self.notify.notify_one();
    }

    pub fn close_code(&self) -> Option<u16> {
        match self.close.load(Ordering::Acquire) {
            0 => None,
            c => Some(c),
        }
    }

    /// Takes everything queued. The queue is left without an allocation.
    pub fn take(&self) -> VecDeque<Outgoing> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Resolves when something was queued or a close was asked since the
    /// last wait (a notification that arrives between waits is kept).
    pub fn wait(&self) -> Notified<'_> {
        self.notify.notified()
    }
}

/// One live socket.
pub struct Conn {
    /// Unique within this process; tells a user's sockets apart.
    pub id: u64,
    /// Merchant sockets also get the review queue's events (set when the
    /// socket is admitted, after its session was read).
    pub merchant: AtomicBool,
    /// The login session whose token opened (or last refreshed) the socket;
    /// revoking the session closes it.
    pub session_id: AtomicU64,
    /// Seq of the newest user event written to the socket (kept by its
    /// task; read by the catch-up check).
    pub sent_seq: AtomicU64,
    pub outbox: Outbox,
}

/// How long a product's newest stock version is remembered after its last
/// broadcast.
const VERSION_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

pub struct Hub {
    /// Sockets per user, oldest first.
    users: DashMap<UserId, Vec<Arc<Conn>>>,
    /// The newest stock version broadcast per product, and when: an older
    /// broadcast that lost a race to a newer one is dropped, so no socket
    /// ever sees a stock go back to an older value. Entries not touched for
    /// `VERSION_TTL` are pruned (no race lasts that long).
    versions: DashMap<ProductId, (u64, std::time::Instant)>,
    /// Live sockets in all (kept beside the map so reading it locks nothing).
    total: AtomicUsize,
    next_id: AtomicU64,
    max_per_user: usize,
    outbox_capacity: usize,
}

impl Hub {
    pub fn new(max_per_user: usize, outbox_capacity: usize) -> Hub {
        Hub {
            users: DashMap::new(),
            versions: DashMap::new(),
            total: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            max_per_user: max_per_user.max(1),
            outbox_capacity,
        }
    }

    /// Adds a socket for `user_id` and admits it: when the user already
    /// holds the maximum, the oldest is closed with 4002. Dropping the
    /// registration removes it.
    pub fn register(
        self: &Arc<Self>,
        user_id: UserId,
        session_id: SessionId,
        merchant: bool,
    ) -> Registration {
        let reg = self.join(user_id, session_id);
        reg.admit(merchant);
        reg
    }

    /// Adds a socket that receives its user's events from now on, without
    /// yet counting against the user's cap (see `Registration::admit`).
    pub fn join(self: &Arc<Self>, user_id: UserId, session_id: SessionId) -> Registration {
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            merchant: AtomicBool::new(false),
            session_id: AtomicU64::new(session_id.0),
            sent_seq: AtomicU64::new(0),
            outbox: Outbox::new(self.outbox_capacity),
        });
        self.users.entry(user_id).or_default().push(conn.clone());
        self.total.fetch_add(1, Ordering::Relaxed);
        Registration {
            hub: self.clone(),
            user_id,
            conn,
        }
    }

    fn unregister(&self, user_id: UserId, conn_id: u64) {
        // Drops the user's entry with their last socket.
        self.users.remove_if_mut(&user_id, |_, conns| {
            conns.retain(|c| c.id != conn_id);
            conns.is_empty()
        });
        self.total.fetch_sub(1, Ordering::Relaxed);
    }

    fn sockets_of(&self, user_id: UserId) -> Vec<Arc<Conn>> {
        self.users
            .get(&user_id)
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    /// Pushes committed user events to every socket of their users.
    pub fn deliver(&self, events: &[UserEvent]) {
        for e in events {
            self.deliver_frame(e.user_id, e.seq, Utf8Bytes::from(e.frame.clone()));
        }
    }

    /// Pushes one user event (committed here or on another instance).
    pub fn deliver_frame(&self, user_id: UserId, seq: u64, frame: Utf8Bytes) {
        for conn in self.sockets_of(user_id) {
            conn.outbox.push(Outgoing::User {
                seq,
                frame: frame.clone(),
            });
        }
    }

    /// Users with a socket here.
    pub fn local_users(&self) -> Vec<UserId> {
        self.users.iter().map(|e| *e.key()).collect()
    }

    /// Tells the user's sockets that have not written up to `last_seq` to
    /// read the rest from the log; returns how many were behind.
    pub fn catch_up(&self, user_id: UserId, last_seq: u64) -> usize {
        let mut behind = 0;
        for conn in self.sockets_of(user_id) {
            if conn.sent_seq.load(Ordering::Relaxed) < last_seq {
                conn.outbox.push(Outgoing::CatchUp(last_seq));
                behind += 1;
            }
        }
        behind
    }

    /// Queues `frame` into every outbox of `audience`, walking the map in
    /// place (a shard is read-locked only while its sockets are queued to;
    /// nothing is cloned per socket). Returns how many took it.
    fn push_all(&self, audience: Audience, frame: &Utf8Bytes) -> usize {
        let mut taken = 0;
        for entry in self.users.iter() {
            for c in entry.value() {
                if audience == Audience::Merchants && !c.merchant.load(Ordering::Relaxed) {
                    continue;
                }
                if c.outbox.push(Outgoing::Broadcast(frame.clone())) {
                    taken += 1;
                }
            }
        }
        taken
    }

    /// Sends one frame to every socket; returns how many took it.
    pub fn broadcast_all(&self, frame: Utf8Bytes) -> usize {
        self.push_all(Audience::Everyone, &frame)
    }

    /// Sends a broadcast to its audience. A versioned one (a product's
    /// stock) is dropped when a newer version of it was already sent; the
    /// check and the pushes happen under the product's entry lock, so two
    /// racing broadcasts of one product reach every outbox in order.
    pub fn broadcast(&self, b: &Broadcast) -> usize {
        let frame = Utf8Bytes::from(b.frame.clone());
        match b.version {
            None => self.push_all(b.audience, &frame),
            Some((product, version)) => {
                let now = std::time::Instant::now();
                let mut newest = self.versions.entry(product).or_insert((0, now));
                if newest.0 >= version {
                    return 0;
                }
                *newest = (version, now);
                self.push_all(b.audience, &frame)
            }
        }
    }

    /// Closes a user's sockets of one session, or all of them.
    pub fn close_sockets(&self, user_id: UserId, session: Option<SessionId>, code: u16) {
        for c in self.sockets_of(user_id) {
            if session.is_none_or(|s| c.session_id.load(Ordering::Relaxed) == s.0) {
                c.outbox.close_with(code);
            }
        }
    }

    /// Forgets the stock versions of products not broadcast for
    /// `VERSION_TTL`; returns how many are left.
    pub fn prune_versions(&self) -> usize {
        let now = std::time::Instant::now();
        self.versions
            .retain(|_, (_, at)| now.duration_since(*at) < VERSION_TTL);
        self.versions.len()
    }

    pub fn connections(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    pub fn users(&self) -> usize {
        self.users.len()
    }
}

/// A socket's place in the hub, held by its task for as long as it runs.
pub struct Registration {
    hub: Arc<Hub>,
    pub user_id: UserId,
    pub conn: Arc<Conn>,
}

impl Registration {
    /// Enforces the per-user cap now that this socket is accepted: the
    /// user's oldest sockets beyond the cap are closed with 4002.
    pub fn admit(&self, merchant: bool) {
        self.conn.merchant.store(merchant, Ordering::Relaxed);
        if let Some(conns) = self.hub.users.get(&self.user_id) {
            let excess = conns.len().saturating_sub(self.hub.max_per_user);
            for old in conns.iter().filter(|c| c.id != self.conn.id).take(excess) {
                old.outbox.close_with(close::REPLACED);
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(self.user_id, self.conn.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(user_id: u64, seq: u64) -> UserEvent {
        UserEvent {
            user_id: UserId(user_id),
            seq,
            kind: "points_update",
            frame: format!(r#"{{"type":"points_update","seq":{seq},"data":{{}}}}"#),
        }
    }

    #[test]
    fn events_reach_every_socket_of_their_user_only() {
        let hub = Arc::new(Hub::new(5, 8));
        let a1 = hub.register(UserId(1), SessionId(10), false);
        let a2 = hub.register(UserId(1), SessionId(11), false);
        let b = hub.register(UserId(2), SessionId(20), false);
        hub.deliver(&[event(1, 1)]);
        assert_eq!(a1.conn.outbox.take().len(), 1);
        assert_eq!(a2.conn.outbox.take().len(), 1);
        assert!(b.conn.outbox.take().is_empty());
        assert_eq!((hub.connections(), hub.users()), (3, 2));
        drop(a1);
        drop(a2);
        assert_eq!((hub.connections(), hub.users()), (1, 1));
    }

    #[test]
    fn the_oldest_socket_is_replaced_past_the_cap() {
        let hub = Arc::new(Hub::new(2, 8));
        let first = hub.register(UserId(1), SessionId(1), false);
        let second = hub.register(UserId(1), SessionId(1), false);
        let third = hub.register(UserId(1), SessionId(1), false);
        assert_eq!(first.conn.outbox.close_code(), Some(close::REPLACED));
        assert_eq!(second.conn.outbox.close_code(), None);
        assert_eq!(third.conn.outbox.close_code(), None);
    }

    #[test]
    fn a_full_outbox_closes_its_socket_and_spares_the_others() {
        let hub = Arc::new(Hub::new(5, 2));
        let slow = hub.register(UserId(1), SessionId(1), false);
        let fast = hub.register(UserId(2), SessionId(2), false);
        for _ in 0..3 {
            hub.broadcast_all(Utf8Bytes::from_static("{}"));
            fast.conn.outbox.take();
        }
        assert_eq!(slow.conn.outbox.close_code(), Some(close::TOO_SLOW));
        assert_eq!(fast.conn.outbox.close_code(), None);
        assert_eq!(hub.broadcast_all(Utf8Bytes::from_static("{}")), 1);
    }

    fn stock(product: u32, version: u64, frame: &str) -> Broadcast {
        Broadcast {
            audience: Audience::Everyone,
            version: Some((ProductId(product), version)),
            coalesce: None,
            frame: frame.into(),
        }
    }

    #[test]
    fn an_older_version_that_lost_the_race_is_not_broadcast() {
        let hub = Arc::new(Hub::new(5, 8));
        let s = hub.register(UserId(1), SessionId(1), false);
        assert_eq!(hub.broadcast(&stock(7, 2, "v2")), 1);
        assert_eq!(hub.broadcast(&stock(7, 1, "v1")), 0);
        assert_eq!(hub.broadcast(&stock(8, 1, "other")), 1);
        let got: Vec<_> = s.conn.outbox.take().into_iter().collect();
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn the_review_queue_reaches_merchant_sockets_only() {
        let hub = Arc::new(Hub::new(5, 8));
        let guest = hub.register(UserId(1), SessionId(1), false);
        let merchant = hub.register(UserId(2), SessionId(2), true);
        let b = Broadcast {
            audience: Audience::Merchants,
            version: None,
            coalesce: None,
            frame: "{}".into(),
        };
        assert_eq!(hub.broadcast(&b), 1);
        assert!(guest.conn.outbox.take().is_empty());
        assert_eq!(merchant.conn.outbox.take().len(), 1);
    }

    #[test]
    fn closing_a_session_closes_only_its_sockets() {
        let hub = Arc::new(Hub::new(5, 8));
        let s1 = hub.register(UserId(1), SessionId(100), false);
        let s2 = hub.register(UserId(1), SessionId(200), false);
        hub.close_sockets(UserId(1), Some(SessionId(100)), close::AUTH_EXPIRED);
        assert_eq!(s1.conn.outbox.close_code(), Some(close::AUTH_EXPIRED));
        assert_eq!(s2.conn.outbox.close_code(), None);
    }
}
