//! The running server's shared state, and the few steps that surround a
//! command with I/O outside its transaction (sending an SMS after the code
//! is stored, receiving an image before its row is written).

pub mod delivery;
pub mod fanout;
pub mod runner;
pub mod services;
pub mod uploads;

use protocol::ConnectionSample;
use sqlx::MySqlPool;
use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::domain::auth::CodeKey;
use crate::domain::lottery::{self, LoadedWheel};
use crate::domain::tokens::TokenKeys;
use crate::hub::Hub;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::sms::SmsProvider;
use crate::storage::{ImageUrls, Storage};
use delivery::Delivery;
use runner::Runner;

/// Everything a request or a socket needs, shared behind one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub db: MySqlPool,
    pub hub: Arc<Hub>,
    pub keys: TokenKeys,
    pub code_key: CodeKey,
    /// Where receipt images are kept, and how their URLs are signed.
    pub storage: Storage,
    pub urls: ImageUrls,
    /// The active wheel, or why it cannot be used. Replaced whole on reload.
    wheel: RwLock<LoadedWheel>,
    /// Every command goes through it.
    pub runner: Runner,
    /// Sharing with other instances through Redis (`None`: one instance).
    pub fanout: Option<Arc<fanout::Fanout>>,
    pub sms: Arc<dyn SmsProvider>,
    /// Per-client-IP rate limits of the public endpoints.
    pub limits: Limits,
    /// Receipts being received at once (each holds a bounded buffer).
    pub uploads: Semaphore,
    /// Receipts each guest is sending now (see `uploads::PER_USER`).
    pub uploading: dashmap::DashMap<protocol::UserId, usize>,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    /// Cancelled when the server starts shutting down (see
    /// [`AppState::stop`]); background tasks end on it.
    pub shutdown: CancellationToken,
    /// Tracks socket tasks, which the HTTP server does not wait for.
    pub sockets: TaskTracker,
    /// Live connections sampled each minute for the merchant's chart (a
    /// week's worth).
    pub connection_samples: Mutex<VecDeque<ConnectionSample>>,
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
        sms: Arc<dyn SmsProvider>,
        wheel: std::result::Result<crate::rules::wheel::WheelConfig, String>,
    ) -> AppState {
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(
            config.ws_max_sockets_per_user,
            config.ws_outbox_capacity,
        ));
        hub.time_broadcasts(metrics.broadcast_seconds.clone());
        let shutdown = CancellationToken::new();
        let fanout = config.redis_url.as_ref().and_then(|url| {
            fanout::Fanout::start(
                url.expose(),
                &config.redis_channel_prefix,
                hub.clone(),
                db.clone(),
                shutdown.clone(),
            )
            .inspect_err(|e| tracing::error!(error = %e, "REDIS_URL cannot be used; serving this instance's sockets only"))
            .ok()
        });
        let delivery = Arc::new(Delivery::new(hub.clone(), fanout.clone()));
        let runner = Runner::new(db.clone(), delivery, metrics.clone());
        let secret = config.jwt_secret.expose();
        let keys = TokenKeys::new(secret, config.access_token_ttl);
        let urls = ImageUrls::new(&config.public_base_url, secret, config.upload_url_ttl);
        AppState(Arc::new(Inner {
            code_key: CodeKey::derive(secret),
            limits: Limits::new(&config),
            uploads: Semaphore::new(config.upload_max_in_flight),
            uploading: dashmap::DashMap::new(),
            keys,
            urls,
            hub,
            runner,
            fanout,
            sms,
            storage,
            metrics,
            wheel: RwLock::new(Arc::new(wheel)),
            started: Instant::now(),
            shutdown,
            sockets: TaskTracker::new(),
            connection_samples: Mutex::new(VecDeque::new()),
            db,
            config,
        }))
    }

    /// Starts the shutdown: background tasks end, and every socket finishes
    /// what its client already sent and closes with 1001.
    pub fn stop(&self) {
        self.shutdown.cancel();
        self.hub.close_all(protocol::close::GOING_AWAY);
    }

    pub fn wheel(&self) -> LoadedWheel {
        self.wheel.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reloads the wheel from the database into this process.
    pub async fn reload_wheel(&self) -> crate::error::Result<()> {
        let wheel = lottery::load_wheel(&self.db).await?;
        if let Err(why) = &wheel {
            tracing::error!(%why, "the prize wheel's configuration is invalid; draws are refused until it is fixed");
        }
        *self.wheel.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(wheel);
        Ok(())
    }

    /// What one approval may award (`REVIEW_AWARD_*`).
    pub fn award_caps(&self) -> crate::rules::review::AwardCaps {
        crate::rules::review::AwardCaps {
            multiplier: self.config.review_award_multiplier,
            max: self.config.review_award_max,
        }
    }

    /// The version of the wheel this process uses (None when it is invalid).
    pub fn wheel_version(&self) -> Option<u32> {
        self.wheel().as_ref().as_ref().ok().map(|w| w.version)
    }

    /// Records the live connection count (called each minute).
    pub fn sample_connections(&self) {
        const KEEP: usize = 7 * 24 * 60;
        let mut samples = self
            .connection_samples
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if samples.len() == KEEP {
            samples.pop_front();
        }
        samples.push_back(ConnectionSample {
            at: crate::domain::rfc3339(chrono::Utc::now()),
            count: self.hub.connections() as u64,
        });
    }

    pub fn connection_history(&self) -> Vec<ConnectionSample> {
        self.connection_samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}
