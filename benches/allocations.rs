//! Heap allocations of one hub broadcast: a `stock_update` serialized once
//! and written to N loopback sockets (`support`, shared with
//! `hot_paths.rs`), counted by a global allocator on every thread — the
//! hub's broadcasting threads included — from before the serialization
//! until `broadcast_all` returns (every socket took the frame or refused
//! it). The clients are drained outside the counted window.
//!
//! Per socket = (allocations per broadcast at N − at 1 socket) / (N − 1):
//! what one more socket costs. It must stay 0 (a broadcast's bytes are
//! shared, not copied or wrapped per socket); the bench panics when it
//! exceeds `PER_SOCKET_LIMIT`, so it doubles as a check.
//!
//! `cargo bench --bench allocations`; with `ALLOC_BACKTRACES=1` it instead
//! prints where the allocations of one broadcast to the most sockets come
//! from (the first `TRACED` of them).

mod support;

use restaurant_points::bench::Hub;
use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use support::{broadcast, drain};

/// Socket counts measured; the first is the baseline.
const SOCKETS: [u64; 4] = [1, 100, 1_000, 2_000];
/// Counted broadcasts per socket count (after `WARMUP` uncounted ones).
const ROUNDS: u64 = 50;
const WARMUP: u64 = 5;
/// Allocations per socket per broadcast above this fail the bench.
const PER_SOCKET_LIMIT: f64 = 0.01;
/// Backtraces printed with `ALLOC_BACKTRACES=1`.
const TRACED: u32 = 40;

/// `System`, counting the allocations (`alloc`, `alloc_zeroed` and
/// `realloc` one each) and the bytes asked for while `COUNTING` is on.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
/// Backtraces still to print.
static TRACE: AtomicU32 = AtomicU32::new(0);

thread_local! {
    /// This thread is printing a backtrace: its own allocations are not
    /// the broadcast's.
    static TRACING: Cell<bool> = const { Cell::new(false) };
}

fn note(size: usize) {
    if !COUNTING.load(Relaxed) || TRACING.try_with(Cell::get).unwrap_or(true) {
        return;
    }
    ALLOCS.fetch_add(1, Relaxed);
    BYTES.fetch_add(size as u64, Relaxed);
    if TRACE.load(Relaxed) > 0
        && TRACE
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .is_ok()
    {
        TRACING.set(true);
        eprintln!("--- {size} bytes\n{}", Backtrace::force_capture());
        TRACING.set(false);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    let rt = support::runtime();
    let hub = Arc::new(Hub::new(5, 64));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let update = support::stock_update();
    let trace = std::env::var_os("ALLOC_BACKTRACES").is_some();
    let mut pairs = Vec::new();
    // (sockets, allocations per broadcast, bytes per broadcast)
    let mut rows: Vec<(u64, f64, f64)> = Vec::new();
    for n in SOCKETS {
        if trace && n != SOCKETS[SOCKETS.len() - 1] {
            continue;
        }
        let more = rt.block_on(support::connect(&hub, &listener, pairs.len() as u64..n));
        pairs.extend(more);
        for _ in 0..WARMUP {
            drain(pairs.iter_mut().map(|(_, c)| c));
            assert_eq!(broadcast(&hub, &update), n as usize);
        }
        if trace {
            drain(pairs.iter_mut().map(|(_, c)| c));
            TRACE.store(TRACED, Relaxed);
            COUNTING.store(true, Relaxed);
            broadcast(&hub, &update);
            COUNTING.store(false, Relaxed);
            TRACE.store(0, Relaxed);
            return;
        }
        let (allocs, bytes) = (ALLOCS.load(Relaxed), BYTES.load(Relaxed));
        for _ in 0..ROUNDS {
            drain(pairs.iter_mut().map(|(_, c)| c));
            COUNTING.store(true, Relaxed);
            let taken = broadcast(&hub, &update);
            COUNTING.store(false, Relaxed);
            assert_eq!(taken, n as usize, "every socket takes every broadcast");
        }
        let per = |now: u64, before: u64| (now - before) as f64 / ROUNDS as f64;
        rows.push((
            n,
            per(ALLOCS.load(Relaxed), allocs),
            per(BYTES.load(Relaxed), bytes),
        ));
    }
    drop(pairs);

    let (base_n, base_allocs, _) = rows[0];
    println!(
        "one stock_update serialized once and broadcast to N loopback sockets, \
         {ROUNDS} broadcasts each; per socket = (allocs(N) - allocs({base_n})) / (N - {base_n})"
    );
    println!(
        "{:>8} {:>18} {:>18} {:>26}",
        "sockets", "allocs/broadcast", "bytes/broadcast", "allocs/socket/broadcast"
    );
    let mut worst = 0f64;
    for &(n, allocs, bytes) in &rows {
        let per_socket = (n > base_n).then(|| (allocs - base_allocs) / (n - base_n) as f64);
        worst = worst.max(per_socket.unwrap_or(0.0));
        let shown = per_socket.map_or("(baseline)".to_string(), |p| format!("{p:.4}"));
        println!("{n:>8} {allocs:>18.2} {bytes:>18.1} {shown:>26}");
    }
    assert!(
        worst <= PER_SOCKET_LIMIT,
        "a broadcast allocates per socket: {worst:.4} allocations per socket per broadcast \
         (limit {PER_SOCKET_LIMIT}); run with ALLOC_BACKTRACES=1 to see where they come from"
    );
}
