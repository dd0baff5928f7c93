//! One socket's way out. Whoever has bytes for the socket — the hub's
//! broadcasters, the command runner, the socket's own task — writes them
//! straight into the kernel when nothing is waiting for that socket and the
//! kernel takes them, and queues them otherwise; the socket's task writes
//! what is queued, in order, as the peer reads.
//!
//! Every write happens under the queue's lock and only when the queue is
//! empty or by the task draining its front, so frames never interleave and
//! never overtake one another: a frame that finds something queued goes
//! behind it. The lock is held for one non-blocking `send` at most.

use bytes::Bytes;
use futures::task::AtomicWaker;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use tokio::net::TcpStream;

use protocol::close;

/// Something waiting to be written to one socket.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// Whole frames ready for the wire: a broadcast (the same bytes for
    /// every socket), a reply, a ping.
    Wire(Bytes),
    /// The end of a frame the kernel took only the start of. It stays
    /// first, even when the socket closes: the close frame goes after it.
    Rest(Bytes),
    /// One of the user's durable events, framed: written in `seq` order,
    /// gaps filled from the log first, repeats skipped.
    User { seq: u64, frame: Bytes },
    /// The user's events up to this seq exist in the log; the socket reads
    /// the ones it has not written (a doorbell another instance lost).
    CatchUp(u64),
}

/// What draining the queue came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Everything was written.
    Empty,
    /// The kernel's buffer is full: wait until the socket is writable.
    Blocked,
    /// The front is a user event or catch-up past a gap: the events in
    /// `(after, upto]` must be read from the log first ([`Outbox::fill`]).
    Gap { after: u64, upto: u64 },
    /// The connection is broken.
    Gone,
    /// The task has not handed over the socket yet.
    NoSocket,
}

/// How many queued frames one `writev` takes at most.
const WRITE_BATCH: usize = 64;

pub struct Outbox {
    queue: Mutex<VecDeque<Outgoing>>,
    /// Set once the socket's task has written `welcome`: from then on
    /// others may write to it directly.
    socket: OnceLock<TcpStream>,
    /// Wakes the socket task: something was queued, or it must close
    /// (`signal` says so, and stays set until the task looks).
    waker: AtomicWaker,
    signal: AtomicBool,
    /// A close code the socket must close with (0: none).
    close: AtomicU16,
    /// Seq of the newest user event written (or committed to be written
    /// first) to the socket; read by the fan-out's catch-up check.
    sent_seq: AtomicU64,
    capacity: usize,
}

impl Outbox {
    pub(super) fn new(capacity: usize) -> Outbox {
        Outbox {
            queue: Mutex::new(VecDeque::new()),
            socket: OnceLock::new(),
            waker: AtomicWaker::new(),
            signal: AtomicBool::new(false),
            close: AtomicU16::new(0),
            sent_seq: AtomicU64::new(0),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Outgoing>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands the socket over once `welcome` is written. Called once.
    pub fn install(&self, socket: TcpStream) {
        let _ = self.socket.set(socket);
        self.wake();
    }

    pub fn socket(&self) -> Option<&TcpStream> {
        self.socket.get()
    }

    /// A frame for this socket from anyone but its task (a broadcast):
    /// written now when nothing waits and the kernel takes it, else queued.
    /// No allocation either way but the queue's growth. False when the
    /// socket is closing or just became too slow.
    pub fn offer(&self, wire: &Bytes) -> bool {
        if self.close.load(Ordering::Relaxed) != 0 {
            return false;
        }
        let mut q = self.lock();
        if q.is_empty()
            && let Some(socket) = self.socket.get()
        {
            // A plain non-blocking send on the socket's descriptor: tokio's
            // `try_write` would first read the runtime's readiness record
            // of the socket, a cache miss per socket per broadcast. When
            // the kernel would block, the task's own writes (through tokio)
            // learn it again and wait for the socket.
            match socket2::SockRef::from(socket).send(wire) {
                Ok(n) if n == wire.len() => return true,
                Ok(n) => {
                    q.push_back(Outgoing::Rest(wire.slice(n..)));
                    drop(q);
                    self.wake();
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // Broken: the task finds out on its next read.
                Err(_) => return true,
            }
        }
        self.queue_up(q, Outgoing::Wire(wire.clone()))
    }

    /// Queues a user event or a catch-up for the task; false when the
    /// socket is closing or just became too slow.
    pub fn push(&self, msg: Outgoing) -> bool {
        if self.close.load(Ordering::Relaxed) != 0 {
            return false;
        }
        let q = self.lock();
        self.queue_up(q, msg)
    }

    fn queue_up(&self, mut q: MutexGuard<'_, VecDeque<Outgoing>>, msg: Outgoing) -> bool {
        if q.len() >= self.capacity {
            drop(q);
            self.close_with(close::TOO_SLOW);
            return false;
        }
        q.push_back(msg);
        drop(q);
        self.wake();
        true
    }

    /// The task's own frames (replies, pings, pongs), never refused (a
    /// socket's commands are rate-limited): written now when nothing
    /// waits, else queued ahead of everything but the end of a frame
    /// already begun, as a reply written at once would have been. The
    /// task drains the queue next.
    pub fn push_own(&self, frames: impl IntoIterator<Item = Bytes>) {
        let mut q = self.lock();
        let at = usize::from(matches!(q.front(), Some(Outgoing::Rest(_))));
        for (i, f) in frames.into_iter().enumerate() {
            q.insert(at + i, Outgoing::Wire(f));
        }
    }

    /// Writes from the front of the queue until it is empty, the kernel
    /// would block, or a user event needs the log first. Only the socket's
    /// task calls this.
    pub fn drain(&self) -> Drained {
        let Some(socket) = self.socket.get() else {
            return Drained::NoSocket;
        };
        let mut q = self.lock();
        let mut sent = self.sent_seq.load(Ordering::Relaxed);
        let result = loop {
            // Drop what was already written, stop at a gap.
            while let Some(front) = q.front() {
                match *front {
                    Outgoing::User { seq, .. } | Outgoing::CatchUp(seq) if seq <= sent => {
                        q.pop_front();
                    }
                    Outgoing::User { seq, .. } if seq > sent + 1 => {
                        break;
                    }
                    Outgoing::CatchUp(upto) => {
                        self.sent_seq.store(sent, Ordering::Relaxed);
                        return Drained::Gap { after: sent, upto };
                    }
                    _ => break,
                }
            }
            if let Some(Outgoing::User { seq, .. }) = q.front()
                && *seq > sent + 1
            {
                break Drained::Gap {
                    after: sent,
                    upto: seq - 1,
                };
            }
            if q.is_empty() {
                break Drained::Empty;
            }
            match write_front(socket, &mut q, &mut sent) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Drained::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break Drained::Gone,
            }
        };
        self.sent_seq.store(sent, Ordering::Relaxed);
        if result == Drained::Empty && q.capacity() > 0 {
            // An idle socket holds no queue.
            *q = VecDeque::new();
        }
        result
    }

    /// After a [`Drained::Gap`]: `filled` is the missing events read from
    /// the log, framed, with the seq they reach; `None` when the log could
    /// not be read. They go first. The event or catch-up that found the gap
    /// is dropped when the log could not close it (it ends early, or could
    /// not be read: a later event or catch-up tries again).
    pub fn fill(&self, filled: Option<(Vec<Bytes>, u64)>) {
        let mut q = self.lock();
        let Some((frames, upto)) = filled else {
            q.pop_front();
            return;
        };
        let n = frames.len();
        for f in frames.into_iter().rev() {
            q.push_front(Outgoing::Wire(f));
        }
        self.sent_seq.fetch_max(upto, Ordering::Relaxed);
        match q.get(n) {
            Some(Outgoing::User { seq, .. }) if *seq > upto + 1 => {
                q.remove(n);
            }
            Some(Outgoing::CatchUp(want)) if *want > upto => {
                q.remove(n);
            }
            _ => {}
        }
    }

    /// Makes `frame` (a close frame) the last thing written: the queue is
    /// dropped but for the end of a frame already begun.
    pub fn replace_with_close(&self, code: u16, frame: Bytes) {
        self.close_with(code);
        let mut q = self.lock();
        let keep = usize::from(matches!(q.front(), Some(Outgoing::Rest(_))));
        q.truncate(keep);
        q.push_back(Outgoing::Wire(frame));
    }

    /// Asks the socket to close with `code`; the first code asked wins.
    pub fn close_with(&self, code: u16) {
        let _ = self
            .close
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Relaxed);
        self.wake();
    }

    pub fn close_code(&self) -> Option<u16> {
        match self.close.load(Ordering::Acquire) {
            0 => None,
            c => Some(c),
        }
    }

    fn wake(&self) {
        self.signal.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready when something was queued for the task or a close was asked
    /// since it last looked (a wake-up between looks is kept).
    pub fn poll_wake(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.signal.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    pub fn sent(&self) -> u64 {
        self.sent_seq.load(Ordering::Relaxed)
    }

    pub fn set_sent(&self, seq: u64) {
        self.sent_seq.store(seq, Ordering::Relaxed);
    }

    /// Takes everything queued (tests look at what a socket would get).
    #[cfg(test)]
    pub fn take(&self) -> VecDeque<Outgoing> {
        std::mem::take(&mut *self.lock())
    }
}

/// One `writev` of the frames at the front that can go now (bytes, and
/// user events next in seq); pops what the kernel took whole and keeps the
/// rest of a frame it took part of.
fn write_front(socket: &TcpStream, q: &mut VecDeque<Outgoing>, sent: &mut u64) -> io::Result<()> {
    let mut slices = [IoSlice::new(&[]); WRITE_BATCH];
    let mut n = 0;
    let mut next = *sent;
    for item in q.iter() {
        let bytes = match item {
            Outgoing::Wire(b) | Outgoing::Rest(b) => b,
            Outgoing::User { seq, frame } if *seq == next + 1 => {
                next = *seq;
                frame
            }
            _ => break,
        };
        slices[n] = IoSlice::new(bytes);
        n += 1;
        if n == WRITE_BATCH {
            break;
        }
    }
    let mut written = socket.try_write_vectored(&slices[..n])?;
    while written > 0 {
        let Some(front) = q.front_mut() else { break };
        let (bytes, seq) = match front {
            Outgoing::Wire(b) | Outgoing::Rest(b) => (b, None),
            Outgoing::User { seq, frame } => (frame, Some(*seq)),
            Outgoing::CatchUp(_) => break,
        };
        if let Some(seq) = seq {
            // Begun is as good as sent: the rest goes out before anything else.
            *sent = seq;
        }
        if written >= bytes.len() {
            written -= bytes.len();
            q.pop_front();
        } else {
            let rest = bytes.slice(written..);
            *front = Outgoing::Rest(rest);
            written = 0;
        }
    }
    Ok(())
}
