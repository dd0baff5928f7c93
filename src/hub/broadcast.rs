//! Broadcasts walk the hub on threads of their own, one per part of it, so
//! the two cores write to sockets at once and no runtime worker is held up.
//! A frame is encoded once; each socket gets a reference to the same bytes
//! (`Outbox::offer`: no allocation per socket). Each thread takes its jobs
//! in order, so two broadcasts reach every socket in the order they were
//! asked for.

use bytes::Bytes;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use super::Part;
use crate::domain::Audience;

pub(super) struct Job {
    /// `None`: a barrier (nothing to send; done once every earlier job is).
    frame: Option<Bytes>,
    audience: Audience,
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

    /// Hands `frame` to every part; `done` hears how many sockets took it.
    pub fn send(
        &self,
        frame: Option<Bytes>,
        audience: Audience,
        done: Option<mpsc::SyncSender<usize>>,
    ) {
        let job = Arc::new(Job {
            frame,
            audience,
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

/// Writes (or queues) the job's frame to every socket of part `i`.
fn walk(shared: &Shared, i: usize, job: &Job) {
    let mut taken = 0;
    if let Some(frame) = &job.frame {
        for entry in shared.parts[i].iter() {
            for c in entry.value() {
                if job.audience == Audience::Merchants && !c.merchant.load(Ordering::Relaxed) {
                    continue;
                }
                if c.outbox.offer(frame) {
                    taken += 1;
                }
            }
        }
    }
    finish_part(
        shared.timer.get().filter(|_| job.frame.is_some()),
        job,
        taken,
    );
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
