//! Everything a request or a socket needs, shared behind one `Arc`.

use crate::config::Config;
use crate::domain::tokens::TokenKeys;
use crate::domain::wheel::WheelConfig;
use crate::heartbeat;
use crate::hub::Hub;
use crate::storage::Storage;
use sqlx::MySqlPool;
use std::ops::Deref;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub db: MySqlPool,
    pub hub: Arc<Hub>,
    pub keys: TokenKeys,
    /// Where receipt images are kept.
    pub storage: Storage,
    /// The active wheel, or why it cannot be used. Replaced whole on reload.
    pub wheel: RwLock<Arc<Result<WheelConfig, String>>>,
    pub metrics: Metrics,
    pub started: Instant,
    /// Cancelled when the server starts shutting down (see [`AppState::stop`]);
    /// background tasks end on it.
    pub shutdown: CancellationToken,
    /// Tracks socket tasks, which axum's graceful shutdown does not wait for.
    pub sockets: TaskTracker,
    /// Ticks once per heartbeat interval; every socket pings and checks its
    /// liveness on each tick. Set to [`heartbeat::STOPPING`] at shutdown:
    /// sockets then finish their client's commands and close with 1001.
    pub heartbeat: tokio::sync::watch::Sender<u64>,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(
        config: Config,
        db: MySqlPool,
        storage: Storage,
        wheel: Result<WheelConfig, String>,
    ) -> AppState {
        let hub = Arc::new(Hub::new(
            config.ws_max_sockets_per_user,
            config.ws_outbox_capacity,
        ));
        let keys = TokenKeys::new(config.jwt_secret.expose(), config.access_token_ttl);
        AppState(Arc::new(Inner {
            config,
            db,
            hub,
            keys,
            storage,
            wheel: RwLock::new(Arc::new(wheel)),
            metrics: Metrics::default(),
            started: Instant::now(),
            shutdown: CancellationToken::new(),
            sockets: TaskTracker::new(),
            heartbeat: tokio::sync::watch::Sender::new(0),
        }))
    }

    /// Starts the shutdown: background tasks end, and every socket finishes
    /// what its client already sent and closes with 1001.
    pub fn stop(&self) {
        self.shutdown.cancel();
        self.heartbeat.send_replace(heartbeat::STOPPING);
    }

    pub fn wheel(&self) -> Arc<Result<WheelConfig, String>> {
        self.wheel.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_wheel(&self, wheel: Result<WheelConfig, String>) {
        *self.wheel.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(wheel);
    }
}

/// Counters exposed at `/metrics`.
#[derive(Default)]
pub struct Metrics {
    pub ws_accepted: AtomicU64,
    pub ws_commands: AtomicU64,
    pub draws: AtomicU64,
    pub logins: AtomicU64,
    pub http_errors: AtomicU64,
    pub slow_socket_closes: AtomicU64,
}
