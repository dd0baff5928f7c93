//! Progress of long phases, on stderr: connecting 100,000 sockets takes
//! minutes, and a silent tool looks hung. A [`Ticker`] reads a phase's
//! counters every few seconds and prints one line (how many so far, the
//! rate since the last line, errors so far). In a `shard` child it sends
//! the counts to the parent instead (`@status` lines, see [`crate::link`]),
//! and the parent's [`Board`] prints them merged over the children.
//!
//! Only stderr is written: stdout carries reports (and a child's protocol).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::link::{Link, Progress};

/// How often a line is printed.
pub const PRINT_EVERY: Duration = Duration::from_secs(5);
/// How often a shard child sends its counts: more often than the parent
/// prints, so the merged line is fresh.
pub const SEND_EVERY: Duration = Duration::from_secs(2);

/// A phase long enough to report on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Logging users in: `ok` logged in, `errors` failed.
    Login,
    /// Opening sockets: `ok` connected, `errors` gave up.
    Connect,
    /// Holding them: `ok` still open, `errors` lost.
    Hold,
    /// Coming back after a storm: `ok` back, `errors` failed attempts.
    Reconnect,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Login => "login",
            Phase::Connect => "connect",
            Phase::Hold => "hold",
            Phase::Reconnect => "reconnect",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        [Phase::Login, Phase::Connect, Phase::Hold, Phase::Reconnect]
            .into_iter()
            .find(|p| p.as_str() == s)
    }

    /// What `ok` and `errors` count in this phase.
    fn words(self) -> (&'static str, &'static str) {
        match self {
            Phase::Login => ("logged in", "failed"),
            Phase::Connect => ("connected", "failed"),
            Phase::Hold => ("open", "lost"),
            Phase::Reconnect => ("back", "failed attempts"),
        }
    }
}

/// A phase's counts so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// What the phase works through (sockets, users).
    pub total: u64,
    pub ok: u64,
    pub errors: u64,
}

impl Tally {
    pub fn new(total: usize, ok: usize, errors: usize) -> Tally {
        Tally {
            total: total as u64,
            ok: ok as u64,
            errors: errors as u64,
        }
    }

    fn add(&mut self, o: &Tally) {
        self.total += o.total;
        self.ok += o.ok;
        self.errors += o.errors;
    }
}

/// One process's phase, as a shard child reports it to its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub phase: Phase,
    pub tally: Tally,
    /// Since the phase began.
    pub elapsed_ms: u64,
}

impl Status {
    /// `@status connect 1000 950 2 5123`
    pub fn to_line(&self) -> String {
        let t = &self.tally;
        format!(
            "@status {} {} {} {} {}",
            self.phase.as_str(),
            t.total,
            t.ok,
            t.errors,
            self.elapsed_ms
        )
    }

    /// The words after `@status`.
    pub fn parse(words: &[&str]) -> Option<Status> {
        let [phase, total, ok, errors, elapsed] = words else {
            return None;
        };
        Some(Status {
            phase: Phase::parse(phase)?,
            tally: Tally {
                total: total.parse().ok()?,
                ok: ok.parse().ok()?,
                errors: errors.parse().ok()?,
            },
            elapsed_ms: elapsed.parse().ok()?,
        })
    }
}

/// `connect 12000/100000 connected (2400/s now), 3 failed, 5 s`; the
/// rate is left out when there is none (holding).
fn describe(phase: Phase, t: &Tally, elapsed: Duration, rate: Option<f64>) -> String {
    let (ok, errors) = phase.words();
    let rate = match rate {
        Some(r) if phase != Phase::Hold => format!(" ({r:.0}/s now)"),
        _ => String::new(),
    };
    format!(
        "{} {}/{} {ok}{rate}, {} {errors}, {:.0} s",
        phase.as_str(),
        t.ok,
        t.total,
        t.errors,
        elapsed.as_secs_f64()
    )
}

/// Where a scenario's progress goes.
#[derive(Clone)]
pub enum Sink {
    /// Printed, after this label (the scenario's name).
    Stderr(&'static str),
    /// Sent to a `shard` parent.
    Parent(UnboundedSender<Progress>),
}

impl Sink {
    /// To the parent when this process is a shard child, else to stderr.
    pub fn of(label: &'static str, link: Option<&Link>) -> Sink {
        match link {
            Some(l) if l.remote => Sink::Parent(l.progress.clone()),
            _ => Sink::Stderr(label),
        }
    }
}

type Read = Arc<dyn Fn() -> Tally + Send + Sync>;

/// Reports one phase until dropped. Dropping it ends the phase: a child
/// sends its final counts, and stderr gets a closing line if the phase
/// was long enough to have printed any.
pub struct Ticker {
    task: JoinHandle<()>,
    sink: Sink,
    phase: Phase,
    read: Read,
    started: Instant,
    printed: Arc<AtomicBool>,
}

impl Ticker {
    pub fn start(
        sink: &Sink,
        phase: Phase,
        read: impl Fn() -> Tally + Send + Sync + 'static,
    ) -> Ticker {
        let read: Read = Arc::new(read);
        let started = Instant::now();
        let printed = Arc::new(AtomicBool::new(false));
        let task = match sink.clone() {
            Sink::Stderr(label) => {
                let (read, printed) = (read.clone(), printed.clone());
                tokio::spawn(async move {
                    let mut last = (read().ok, Instant::now());
                    let mut every = interval(PRINT_EVERY);
                    loop {
                        every.tick().await;
                        let t = read();
                        let dt = last.1.elapsed().as_secs_f64().max(1e-3);
                        let rate = t.ok.saturating_sub(last.0) as f64 / dt;
                        last = (t.ok, Instant::now());
                        eprintln!(
                            "{label}: {}",
                            describe(phase, &t, started.elapsed(), Some(rate))
                        );
                        printed.store(true, Ordering::Relaxed);
                    }
                })
            }
            Sink::Parent(tx) => {
                let read = read.clone();
                tokio::spawn(async move {
                    let mut every = interval(SEND_EVERY);
                    loop {
                        every.tick().await;
                        let s = status(phase, &read, started);
                        if tx.send(Progress::Status(s)).is_err() {
                            break;
                        }
                    }
                })
            }
        };
        Ticker {
            task,
            sink: sink.clone(),
            phase,
            read,
            started,
            printed,
        }
    }
}

fn status(phase: Phase, read: &Read, started: Instant) -> Status {
    Status {
        phase,
        tally: read(),
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
}

/// An interval whose first tick is one period away.
fn interval(every: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval_at(Instant::now() + every, every);
    i.set_missed_tick_behavior(MissedTickBehavior::Delay);
    i
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.task.abort();
        match &self.sink {
            Sink::Parent(tx) => {
                let _ = tx.send(Progress::Status(status(
                    self.phase,
                    &self.read,
                    self.started,
                )));
            }
            Sink::Stderr(label) if self.printed.load(Ordering::Relaxed) => {
                let t = (self.read)();
                let elapsed = self.started.elapsed().as_secs_f64();
                let (ok, errors) = self.phase.words();
                let rate = match self.phase {
                    Phase::Hold => String::new(),
                    _ => format!(" ({:.0}/s)", t.ok as f64 / elapsed.max(1e-3)),
                };
                eprintln!(
                    "{label}: {} done: {}/{} {ok} in {elapsed:.1} s{rate}, {} {errors}",
                    self.phase.as_str(),
                    t.ok,
                    t.total,
                    t.errors
                );
            }
            Sink::Stderr(_) => {}
        }
    }
}

/// The parent's view of its children's progress: their latest counts,
/// printed merged (summed per phase) every [`PRINT_EVERY`] while they
/// change.
pub struct Board {
    label: String,
    /// The latest status of each child, by index.
    slots: Mutex<Vec<Option<Status>>>,
    /// A status arrived since the last line.
    changed: AtomicBool,
}

impl Board {
    pub fn new(label: impl Into<String>, procs: usize) -> Arc<Board> {
        Arc::new(Board {
            label: label.into(),
            slots: Mutex::new(vec![None; procs]),
            changed: AtomicBool::new(false),
        })
    }

    pub fn update(&self, index: usize, status: Status) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get_mut(index) {
            *slot = Some(status);
            self.changed.store(true, Ordering::Relaxed);
        }
    }

    /// Per phase: how many children are in it, their summed counts and the
    /// longest time in it.
    fn merged(&self) -> BTreeMap<Phase, (usize, Tally, u64)> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: BTreeMap<Phase, (usize, Tally, u64)> = BTreeMap::new();
        for s in slots.iter().flatten() {
            let e = out.entry(s.phase).or_default();
            e.0 += 1;
            e.1.add(&s.tally);
            e.2 = e.2.max(s.elapsed_ms);
        }
        out
    }

    /// Prints the merged counts until the returned handle is dropped.
    pub fn printer(self: &Arc<Self>) -> Printing {
        let board = self.clone();
        Printing(tokio::spawn(async move {
            let mut last: BTreeMap<Phase, (u64, Instant)> = BTreeMap::new();
            let mut every = interval(PRINT_EVERY);
            loop {
                every.tick().await;
                if !board.changed.swap(false, Ordering::Relaxed) {
                    continue;
                }
                let merged = board.merged();
                let parts: Vec<String> = merged
                    .iter()
                    .map(|(&phase, (procs, t, ms))| {
                        let rate = last.get(&phase).map(|(ok, at)| {
                            t.ok.saturating_sub(*ok) as f64 / at.elapsed().as_secs_f64().max(1e-3)
                        });
                        last.insert(phase, (t.ok, Instant::now()));
                        let d = describe(phase, t, Duration::from_millis(*ms), rate);
                        format!("{d} [{procs} proc{}]", if *procs == 1 { "" } else { "s" })
                    })
                    .collect();
                eprintln!("{}: {}", board.label, parts.join("; "));
            }
        }))
    }
}

/// A running [`Board::printer`]; stops when dropped.
pub struct Printing(JoinHandle<()>);

impl Drop for Printing {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_line_round_trips() {
        let s = Status {
            phase: Phase::Reconnect,
            tally: Tally::new(18_000, 17_500, 42),
            elapsed_ms: 12_345,
        };
        let line = s.to_line();
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[0], "@status");
        assert_eq!(Status::parse(&words[1..]), Some(s));
        assert_eq!(Status::parse(&["connect", "1", "2"]), None);
        assert_eq!(Status::parse(&["sleep", "1", "2", "3", "4"]), None);
    }

    #[test]
    fn the_board_sums_children_per_phase() {
        let board = Board::new("shard", 3);
        let at = |phase, ok| Status {
            phase,
            tally: Tally::new(100, ok, 1),
            elapsed_ms: ok as u64,
        };
        board.update(0, at(Phase::Connect, 40));
        board.update(1, at(Phase::Connect, 60));
        board.update(2, at(Phase::Hold, 100));
        board.update(7, at(Phase::Hold, 100));
        let m = board.merged();
        assert_eq!(m[&Phase::Connect], (2, Tally::new(200, 100, 2), 60));
        assert_eq!(m[&Phase::Hold], (1, Tally::new(100, 100, 1), 100));
    }

    #[test]
    fn a_line_names_what_it_counts() {
        let t = Tally::new(100, 40, 2);
        let line = describe(Phase::Connect, &t, Duration::from_secs(5), Some(8.0));
        assert_eq!(line, "connect 40/100 connected (8/s now), 2 failed, 5 s");
        let line = describe(Phase::Hold, &t, Duration::from_secs(5), Some(8.0));
        assert_eq!(line, "hold 40/100 open, 2 lost, 5 s");
    }
}
