//! Load generator for the restaurant points server. It drives a running
//! server only through the contract (REST login, `/ws`, commands — see
//! `protocol/README.md`), so it can measure any server that speaks it.
//!
//! Each scenario in [`scenarios`] is bounded in count and time, returns a
//! `Report` that prints for people (`Display`) and serializes to JSON, and
//! can be split over several processes by [`shard`] when one process's
//! open-files limit (~19,000 sockets) is not enough.

pub mod client;
pub mod cpu;
pub mod link;
pub mod progress;
pub mod raw;
pub mod scenarios;
pub mod shard;
pub mod stats;
pub mod tls;

pub use scenarios::Setup;

/// Raises this process's open-files soft limit to its hard limit (every
/// socket is a file) and returns the soft limit now in force.
pub fn raise_nofile_limit() -> u64 {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    nofile_limit()
}

/// The open-files soft limit in force.
pub fn nofile_limit() -> u64 {
    rlimit::Resource::NOFILE
        .get()
        .map(|(soft, _)| soft)
        .unwrap_or(1024)
}

/// Sockets one process may open: its file limit less room for the runtime,
/// the HTTP pool and the files it reads.
pub fn socket_budget() -> usize {
    nofile_limit().saturating_sub(500) as usize
}
