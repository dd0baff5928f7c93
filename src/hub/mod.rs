//! Who is connected: a registry of live sockets keyed by user, each with a
//! bounded outbox. Delivery never waits on a socket: a message is queued or,
//! when the outbox is full, the socket is marked too slow and closed, so one
//! slow reader can never stall a broadcast or a command.

use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use crate::domain::points::UserEvent;
use protocol::close;

/// A frame waiting for its socket's task to write it.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// One of the user's durable events: the socket writes them in `seq`
    /// order, filling gaps from the database and skipping repeats.
    User { seq: u64, frame: Utf8Bytes },
    /// A latest-value event for everyone (serialized once, shared bytes).
    Broadcast(Utf8Bytes),
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
    /// The login session whose token opened (or last refreshed) the socket;
    /// revoking the session closes it.
    pub session_id: AtomicU64,
    pub outbox: Outbox,
}

pub struct Hub {
    /// Sockets per user, oldest first.
    users: DashMap<u64, Vec<Arc<Conn>>>,
    /// The newest version broadcast per key (product): an older broadcast that
    /// lost a race to a newer one is dropped, so no socket ever sees a stock
    /// go back to an older value.
    versions: DashMap<u64, u64>,
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
    pub fn register(self: &Arc<Self>, user_id: u64, session_id: u64) -> Registration {
        let reg = self.join(user_id, session_id);
        reg.admit();
        reg
    }

    /// Adds a socket that receives its user's events from now on, without
    /// yet counting against the user's cap (see `Registration::admit`).
    pub fn join(self: &Arc<Self>, user_id: u64, session_id: u64) -> Registration {
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            session_id: AtomicU64::new(session_id),
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

    fn unregister(&self, user_id: u64, conn_id: u64) {
        // Drops the user's entry with their last socket.
        self.users.remove_if_mut(&user_id, |_, conns| {
            conns.retain(|c| c.id != conn_id);
            conns.is_empty()
        });
        self.total.fetch_sub(1, Ordering::Relaxed);
    }

    fn sockets_of(&self, user_id: u64) -> Vec<Arc<Conn>> {
        self.users
            .get(&user_id)
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    /// Pushes committed user events to every socket of their users.
    pub fn deliver(&self, events: &[UserEvent]) {
        for e in events {
            let frame = Utf8Bytes::from(e.frame.clone());
            for conn in self.sockets_of(e.user_id) {
                conn.outbox.push(Outgoing::User {
                    seq: e.seq,
                    frame: frame.clone(),
                });
            }
        }
    }

    /// Queues `frame` into every outbox, walking the map in place (a shard
    /// is read-locked only while its sockets are queued to; nothing is
    /// cloned per socket). Returns how many took it.
    fn push_all(&self, frame: &Utf8Bytes) -> usize {
        let mut taken = 0;
        for entry in self.users.iter() {
            for c in entry.value() {
                if c.outbox.push(Outgoing::Broadcast(frame.clone())) {
                    taken += 1;
                }
            }
        }
        taken
    }

    /// Sends one frame to every socket; returns how many took it.
    pub fn broadcast(&self, frame: Utf8Bytes) -> usize {
        self.push_all(&frame)
    }

    /// Like `broadcast`, for a latest-value event: dropped when a newer
    /// `version` of `key` was already broadcast. The check and the pushes
    /// happen under the key's entry lock, so two racing broadcasts of one key
    /// reach every outbox in version order.
    pub fn broadcast_versioned(&self, key: u64, version: u64, frame: Utf8Bytes) -> usize {
        let mut newest = self.versions.entry(key).or_insert(0);
        if *newest >= version {
            return 0;
        }
        *newest = version;
        self.push_all(&frame)
    }

    pub fn close_session(&self, user_id: u64, session_id: u64, code: u16) {
        for c in self.sockets_of(user_id) {
            if c.session_id.load(Ordering::Relaxed) == session_id {
                c.outbox.close_with(code);
            }
        }
    }

    pub fn close_all(&self, code: u16) {
        for e in self.users.iter() {
            for c in e.value() {
                c.outbox.close_with(code);
            }
        }
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
    pub user_id: u64,
    pub conn: Arc<Conn>,
}

impl Registration {
    /// Enforces the per-user cap now that this socket is accepted: the
    /// user's oldest sockets beyond the cap are closed with 4002.
    pub fn admit(&self) {
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
            user_id,
            seq,
            kind: "points_update",
            frame: format!(r#"{{"type":"points_update","seq":{seq},"data":{{}}}}"#),
        }
    }

    #[test]
    fn events_reach_every_socket_of_their_user_only() {
        let hub = Arc::new(Hub::new(5, 8));
        let a1 = hub.register(1, 10);
        let a2 = hub.register(1, 11);
        let b = hub.register(2, 20);
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
        let first = hub.register(1, 1);
        let second = hub.register(1, 1);
        let third = hub.register(1, 1);
        assert_eq!(first.conn.outbox.close_code(), Some(close::REPLACED));
        assert_eq!(second.conn.outbox.close_code(), None);
        assert_eq!(third.conn.outbox.close_code(), None);
    }

    #[test]
    fn a_full_outbox_closes_its_socket_and_spares_the_others() {
        let hub = Arc::new(Hub::new(5, 2));
        let slow = hub.register(1, 1);
        let fast = hub.register(2, 2);
        for _ in 0..3 {
            hub.broadcast(Utf8Bytes::from_static("{}"));
            fast.conn.outbox.take();
        }
        assert_eq!(slow.conn.outbox.close_code(), Some(close::TOO_SLOW));
        assert_eq!(fast.conn.outbox.close_code(), None);
        assert_eq!(hub.broadcast(Utf8Bytes::from_static("{}")), 1);
    }

    #[test]
    fn an_older_version_that_lost_the_race_is_not_broadcast() {
        let hub = Arc::new(Hub::new(5, 8));
        let s = hub.register(1, 1);
        assert_eq!(
            hub.broadcast_versioned(7, 2, Utf8Bytes::from_static("v2")),
            1
        );
        assert_eq!(
            hub.broadcast_versioned(7, 1, Utf8Bytes::from_static("v1")),
            0
        );
        assert_eq!(
            hub.broadcast_versioned(8, 1, Utf8Bytes::from_static("other")),
            1
        );
        let got: Vec<_> = s.conn.outbox.take().into_iter().collect();
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn closing_a_session_closes_only_its_sockets() {
        let hub = Arc::new(Hub::new(5, 8));
        let s1 = hub.register(1, 100);
        let s2 = hub.register(1, 200);
        hub.close_session(1, 100, close::AUTH_EXPIRED);
        assert_eq!(s1.conn.outbox.close_code(), Some(close::AUTH_EXPIRED));
        assert_eq!(s2.conn.outbox.close_code(), None);
    }
}
