//! Broadcasts walk the hub on threads of their own, one per part of it, so
//! the two cores write to sockets at once and no runtime worker is held up.
//! A frame is encoded once; each socket gets a reference to the same bytes
//! (`Outbox::offer`: no allocation per socket). Each thread takes its jobs
//! in order, so two broadcasts reach every socket in the order they were
//! asked for. The heartbeat and the closing of every socket at shutdown
//! walk the hub the same way.

use bytes::Bytes;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use super::{Conn, Part};
use crate::domain::Audience;
use crate::frame;
use protocol::close;

/// What a walk of the hub does to each socket.
pub(super) enum Work {
    /// Write (or queue) this frame to the audience's sockets.
    Frame(Bytes, Audience),
    /// Of the sockets in `slice` (id ≡ k mod n), close those silent since
    /// before `silent_before` (hub milliseconds) with 4000, those whose
    /// token expired by `now_unix` with 4001, and ping the others.
    Beat {
        slice: (u32, u32),
        silent_before: u64,
        now_unix: i64,
    },
    /// Ask every socket to close with this code.
    CloseAll(u16),
    /// Nothing: done once every earlier job is.
    Barrier,
}

pub(super) struct Job {
    work: Work,
    started: Instant,
    /// Parts still walking.
    left: AtomicUsize,
    /// Sockets that took the frame.
    taken: AtomicUsize,
    /// Told how many took it, when the last part is done.
    done: Option<mpsc::SyncSender<usize>>,
}

/// What every broadcasting thread shares.
pub(super) struct Shared {
    pub parts: Box<[Part]>,
    /// Observes how long each broadcast took to reach every socket.
    pub timer: OnceLock<Histogram>,
}

pub(super) struct Broadcaster {
    threads: Vec<mpsc::Sender<Arc<Job>>>,
}

impl Broadcaster {
    /// One thread per part of `shared`, ending when this is dropped.
    pub fn start(shared: &Arc<Shared>) -> Broadcaster {
        let threads = (0..shared.parts.len())
            .map(|i| {
                let (tx, rx) = mpsc::channel::<Arc<Job>>();
                let shared = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("broadcast-{i}"))
                    .spawn(move || {
                        while let Ok(job) = rx.recv() {
                            walk(&shared, i, &job);
                        }
                    });
                if let Err(e) = spawned {
                    // Without its thread a part gets nothing: say so loudly.
                    tracing::error!(error = %e, part = i, "could not start a broadcasting thread");
                }
                tx
            })
            .collect();
        Broadcaster { threads }
    }

    /// Hands `work` to every part; `done` hears how many sockets took it.
    pub fn send(&self, work: Work, done: Option<mpsc::SyncSender<usize>>) {
        let job = Arc::new(Job {
            work,
            started: Instant::now(),
            left: AtomicUsize::new(self.threads.len()),
            taken: AtomicUsize::new(0),
            done,
        });
        for t in &self.threads {
            if t.send(job.clone()).is_err() {
                finish_part(None, &job, 0);
            }
        }
    }
}

/// Does the job to every socket of part `i`.
fn walk(shared: &Shared, i: usize, job: &Job) {
    let mut taken = 0;
    let each = |f: &mut dyn FnMut(&Conn)| {
        for entry in shared.parts[i].iter() {
            for c in entry.value() {
                f(c);
            }
        }
    };
    match &job.work {
        Work::Frame(frame, audience) => each(&mut |c| {
            if *audience == Audience::Merchants && !c.merchant.load(Ordering::Relaxed) {
                return;
            }
            if c.outbox.offer(frame) {
                taken += 1;
            }
        }),
        Work::Beat {
            slice: (k, n),
            silent_before,
            now_unix,
        } => each(&mut |c| {
            if c.id % u64::from(*n) != u64::from(*k) {
                return;
            }
            if c.last_seen.load(Ordering::Relaxed) < *silent_before {
                c.outbox.close_with(close::HEARTBEAT_TIMEOUT);
            } else if *now_unix >= c.expires_at.load(Ordering::Relaxed) {
                c.outbox.close_with(close::AUTH_EXPIRED);
            } else if c.outbox.offer(&frame::PING) {
                taken += 1;
            }
        }),
        Work::CloseAll(code) => each(&mut |c| {
            c.outbox.close_with(*code);
            taken += 1;
        }),
        Work::Barrier => {}
    }
    let timer = shared
        .timer
        .get()
        .filter(|_| matches!(job.work, Work::Frame(..)));
    finish_part(timer, job, taken);
}

fn finish_part(timer: Option<&Histogram>, job: &Job, taken: usize) {
    job.taken.fetch_add(taken, Ordering::Relaxed);
    if job.left.fetch_sub(1, Ordering::AcqRel) == 1 {
        if let Some(t) = timer {
            t.observe(job.started.elapsed().as_secs_f64());
        }
        if let Some(done) = &job.done {
            let _ = done.try_send(job.taken.load(Ordering::Relaxed));
        }
    }
}
