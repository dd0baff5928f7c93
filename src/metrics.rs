//! What `/metrics` exposes, through `prometheus-client`: one registry per
//! server (tests run several servers in one process, so nothing global).
//! Counters and histograms are recorded where things happen; gauges of the
//! hub and the pool are read when scraped.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub command: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    pub code: u64,
}

pub struct Metrics {
    registry: Registry,
    /// Time from a command's first check to its reply, by command.
    pub command_seconds: Family<CommandLabels, Histogram>,
    /// Transactions run again after a deadlock or lock-wait timeout.
    pub command_retries: Family<CommandLabels, Counter>,
    /// Commands answered 2010 because contention outlasted the retries.
    pub command_busy: Family<CommandLabels, Counter>,
    /// Time for one broadcast to be written to (or queued for) every socket.
    pub broadcast_seconds: Histogram,
    /// Time a transaction waited for a pooled connection.
    pub db_acquire_seconds: Histogram,
    /// Requests refused by a rate limit or quota, by limit.
    pub limits_hit: Family<LimitLabels, Counter>,
    /// Sockets the server closed, by close code.
    pub sockets_closed: Family<CloseLabels, Counter>,
    pub ws_accepted: Counter,
    pub ws_commands: Counter,
    pub draws: Counter,
    pub logins: Counter,
    pub http_errors: Counter,
    /// Set when scraped.
    pub ws_connections: Gauge<i64, AtomicI64>,
    pub ws_users: Gauge<i64, AtomicI64>,
    pub db_pool_size: Gauge<i64, AtomicI64>,
    pub db_pool_idle: Gauge<i64, AtomicI64>,
}

fn latency() -> Histogram {
    // 0.25 ms … ~4 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("points"),
            command_seconds: Family::new_with_constructor(latency),
            command_retries: Family::default(),
            command_busy: Family::default(),
            broadcast_seconds: latency(),
            db_acquire_seconds: latency(),
            limits_hit: Family::default(),
            sockets_closed: Family::default(),
            ws_accepted: Counter::default(),
            ws_commands: Counter::default(),
            draws: Counter::default(),
            logins: Counter::default(),
            http_errors: Counter::default(),
            ws_connections: Gauge::default(),
            ws_users: Gauge::default(),
            db_pool_size: Gauge::default(),
            db_pool_idle: Gauge::default(),
        };
        let r = &mut m.registry;
        r.register(
            "command_duration_seconds",
            "Time from a command's checks to its reply, by command (REST and socket alike).",
            m.command_seconds.clone(),
        );
        r.register(
            "command_retries",
            "Transactions run again after a deadlock or lock-wait timeout.",
            m.command_retries.clone(),
        );
        r.register(
            "command_busy",
            "Commands answered 2010: contention outlasted the retries.",
            m.command_busy.clone(),
        );
        r.register(
            "broadcast_duration_seconds",
            "Time for one broadcast to be written to (or queued for) every socket.",
            m.broadcast_seconds.clone(),
        );
        r.register(
            "db_acquire_seconds",
            "Time a transaction waited for a pooled database connection.",
            m.db_acquire_seconds.clone(),
        );
        r.register(
            "limits_hit",
            "Requests refused by a rate limit or quota, by limit.",
            m.limits_hit.clone(),
        );
        r.register(
            "ws_closed",
            "Sockets the server closed, by close code.",
            m.sockets_closed.clone(),
        );
        r.register(
            "ws_accepted",
            "WebSocket connections accepted.",
            m.ws_accepted.clone(),
        );
        r.register("ws_commands", "Socket commands run.", m.ws_commands.clone());
        r.register("draws", "Prizes drawn.", m.draws.clone());
        r.register("logins", "Successful logins.", m.logins.clone());
        r.register(
            "http_errors",
            "HTTP responses with a non-zero code.",
            m.http_errors.clone(),
        );
        r.register(
            "ws_connections",
            "Live WebSocket connections.",
            m.ws_connections.clone(),
        );
        r.register(
            "ws_users",
            "Users with at least one live socket.",
            m.ws_users.clone(),
        );
        r.register(
            "db_pool_size",
            "Open database connections.",
            m.db_pool_size.clone(),
        );
        r.register(
            "db_pool_idle",
            "Idle database connections.",
            m.db_pool_idle.clone(),
        );
        m
    }

    pub fn command(&self, command: &'static str, took: Duration) {
        self.command_seconds
            .get_or_create(&CommandLabels { command })
            .observe(took.as_secs_f64());
    }

    pub fn limit_hit(&self, limit: &'static str) {
        self.limits_hit.get_or_create(&LimitLabels { limit }).inc();
    }

    pub fn socket_closed(&self, code: u16) {
        self.sockets_closed
            .get_or_create(&CloseLabels { code: code as u64 })
            .inc();
    }

    /// The exposition text (OpenMetrics).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
