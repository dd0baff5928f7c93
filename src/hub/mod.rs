//! Who is connected: a registry of live sockets keyed by user. Delivery
//! never waits on a socket: a frame is written at once when the socket can
//! take it, queued otherwise, and when a socket's queue is full it is
//! marked too slow and closed, so one slow reader can never stall a
//! broadcast or a command.
//!
//! The registry is split in parts by user id, one per broadcasting thread
//! (`broadcast`), so a broadcast walks the parts in parallel.

mod broadcast;
mod outbox;

pub use outbox::{Drained, Outbox, Outgoing};

use bytes::Bytes;
use dashmap::DashMap;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc};

use crate::domain::{Audience, Broadcast, UserEvent};
use crate::frame;
use broadcast::{Broadcaster, Shared, Work};
use protocol::{ProductId, SessionId, UserId, close};

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
    /// When the client last sent anything, in [`Hub::now_ms`].
    pub last_seen: AtomicU64,
    /// When the socket's access token expires (unix seconds).
    pub expires_at: AtomicI64,
    pub outbox: Outbox,
}

/// Sockets per user, oldest first, of the users of one part.
type Part = DashMap<UserId, Vec<Arc<Conn>>>;

/// How long a product's newest stock version is remembered after its last
/// broadcast.
const VERSION_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// At most this many broadcasting threads (and parts).
const MAX_PARTS: usize = 8;

pub struct Hub {
    shared: Arc<Shared>,
    broadcaster: Broadcaster,
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
    /// Where [`Hub::now_ms`] counts from.
    epoch: std::time::Instant,
}

impl Hub {
    /// A hub with one part (and broadcasting thread) per core.
    pub fn new(max_per_user: usize, outbox_capacity: usize) -> Hub {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shared = Arc::new(Shared {
            parts: (0..cores.clamp(1, MAX_PARTS))
                .map(|_| Part::new())
                .collect(),
            timer: OnceLock::new(),
        });
        Hub {
            broadcaster: Broadcaster::start(&shared),
            shared,
            versions: DashMap::new(),
            total: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            max_per_user: max_per_user.max(1),
            outbox_capacity,
            epoch: std::time::Instant::now(),
        }
    }

    /// Milliseconds since the hub started: the clock of `Conn::last_seen`.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Observes the time each broadcast takes to reach every socket.
    pub fn time_broadcasts(&self, histogram: Histogram) {
        let _ = self.shared.timer.set(histogram);
    }

    fn part(&self, user_id: UserId) -> &Part {
        let parts = &self.shared.parts;
        &parts[(user_id.0 % parts.len() as u64) as usize]
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
            last_seen: AtomicU64::new(self.now_ms()),
            expires_at: AtomicI64::new(i64::MAX),
            outbox: Outbox::new(self.outbox_capacity),
        });
        self.part(user_id)
            .entry(user_id)
            .or_default()
            .push(conn.clone());
        self.total.fetch_add(1, Ordering::Relaxed);
        Registration {
            hub: self.clone(),
            user_id,
            conn,
        }
    }

    fn unregister(&self, user_id: UserId, conn_id: u64) {
        // Drops the user's entry with their last socket.
        self.part(user_id).remove_if_mut(&user_id, |_, conns| {
            conns.retain(|c| c.id != conn_id);
            conns.is_empty()
        });
        self.total.fetch_sub(1, Ordering::Relaxed);
    }

    fn sockets_of(&self, user_id: UserId) -> Vec<Arc<Conn>> {
        self.part(user_id)
            .get(&user_id)
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    /// Pushes committed user events to every socket of their users.
    pub fn deliver(&self, events: &[UserEvent]) {
        for e in events {
            self.deliver_frame(e.user_id, e.seq, &e.frame);
        }
    }

    /// Pushes one user event (committed here or on another instance),
    /// framed once for all the user's sockets.
    pub fn deliver_frame(&self, user_id: UserId, seq: u64, text: &str) {
        let sockets = self.sockets_of(user_id);
        if sockets.is_empty() {
            return;
        }
        let frame = frame::text(text);
        for conn in sockets {
            conn.outbox.push(Outgoing::User {
                seq,
                frame: frame.clone(),
            });
        }
    }

    /// Users with a socket here.
    pub fn local_users(&self) -> Vec<UserId> {
        self.shared
            .parts
            .iter()
            .flat_map(|p| p.iter().map(|e| *e.key()).collect::<Vec<_>>())
            .collect()
    }

    /// Tells the user's sockets that have not written up to `last_seq` to
    /// read the rest from the log; returns how many were behind.
    pub fn catch_up(&self, user_id: UserId, last_seq: u64) -> usize {
        let mut behind = 0;
        for conn in self.sockets_of(user_id) {
            if conn.outbox.sent() < last_seq {
                conn.outbox.push(Outgoing::CatchUp(last_seq));
                behind += 1;
            }
        }
        behind
    }

    /// Sends a broadcast to its audience, on the broadcasting threads; false
    /// when it was dropped. A versioned one (a product's stock) is dropped
    /// when a newer version of it was already sent; the check and the
    /// hand-over happen under the product's entry lock, so two racing
    /// broadcasts of one product reach every socket in order.
    pub fn broadcast(&self, b: &Broadcast) -> bool {
        let frame = shared_frame(&b.frame);
        match b.version {
            None => self.broadcaster.send(Work::Frame(frame, b.audience), None),
            Some((product, version)) => {
                let now = std::time::Instant::now();
                let mut newest = self.versions.entry(product).or_insert((0, now));
                if newest.0 >= version {
                    return false;
                }
                *newest = (version, now);
                self.broadcaster.send(Work::Frame(frame, b.audience), None);
            }
        }
        true
    }

    /// Sends `text` to every socket and waits until each has taken it or
    /// refused it; returns how many took it (tests and benchmarks).
    pub fn broadcast_all(&self, text: &str) -> usize {
        let (tx, rx) = mpsc::sync_channel(1);
        let work = Work::Frame(shared_frame(text), Audience::Everyone);
        self.broadcaster.send(work, Some(tx));
        rx.recv().unwrap_or(0)
    }

    /// One heartbeat of the sockets in `slice` (`(k, n)`: those whose id
    /// is k modulo n): each silent for `silence` is closed with 4000, each
    /// whose token expired with 4001, the others get a ping — written from
    /// the broadcasting threads, waking no socket task that has nothing to
    /// do.
    pub fn heartbeat(&self, silence: std::time::Duration, slice: (u32, u32)) {
        let silent_before = self.now_ms().saturating_sub(silence.as_millis() as u64);
        let now_unix = chrono::Utc::now().timestamp();
        let work = Work::Beat {
            slice,
            silent_before,
            now_unix,
        };
        self.broadcaster.send(work, None);
    }

    /// Asks every socket to close with `code` (1001 at shutdown).
    pub fn close_all(&self, code: u16) {
        self.broadcaster.send(Work::CloseAll(code), None);
    }

    /// Waits until every broadcast asked for so far has reached its sockets.
    pub fn settle(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        self.broadcaster.send(Work::Barrier, Some(tx));
        let _ = rx.recv();
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
        self.shared.parts.iter().map(|p| p.len()).sum()
    }
}

/// A broadcast's frame, in bytes every socket can share: cloning it is a
/// reference count, never a copy or an allocation.
fn shared_frame(text: &str) -> Bytes {
    let frame = frame::text(text);
    // The first clone of bytes made from a `Vec` allocates its shared
    // header; take that once here rather than on the first socket.
    drop(frame.clone());
    frame
}

/// A socket's place in the hub, held by its task for as long as it runs.
pub struct Registration {
    hub: Arc<Hub>,
    pub user_id: UserId,
    pub conn: Arc<Conn>,
}

impl Registration {
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Enforces the per-user cap now that this socket is accepted: the
    /// user's oldest sockets beyond the cap are closed with 4002.
    pub fn admit(&self, merchant: bool) {
        self.conn.merchant.store(merchant, Ordering::Relaxed);
        if let Some(conns) = self.hub.part(self.user_id).get(&self.user_id) {
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
            hub.broadcast_all("{}");
            fast.conn.outbox.take();
        }
        assert_eq!(slow.conn.outbox.close_code(), Some(close::TOO_SLOW));
        assert_eq!(fast.conn.outbox.close_code(), None);
        assert_eq!(hub.broadcast_all("{}"), 1);
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
        assert!(hub.broadcast(&stock(7, 2, "v2")));
        assert!(!hub.broadcast(&stock(7, 1, "v1")));
        assert!(hub.broadcast(&stock(8, 1, "other")));
        hub.settle();
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
        assert!(hub.broadcast(&b));
        hub.settle();
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
