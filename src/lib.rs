//! The restaurant points server: REST for login, lists and merchant tools,
//! and a WebSocket hub that carries draw and exchange commands and pushes
//! points and stock updates.
//!
//! [`serve`] is the seam: it takes a bound listener and a ready state, so
//! tests run the real server on `127.0.0.1:0`. Everything else is private
//! to the crate but for what `main`, the tests and the benches use.
//!
//! Layers, each depending only on those below it (`tests/architecture.rs`
//! checks that no two modules import each other, directly or round about):
//! `http`/`ws` → `app` (state, the command runner, delivery) → `hub`,
//! `domain` (commands) → `store` (SQL) and `rules` (pure) → `error`.

mod app;
pub mod config;
mod domain;
mod error;
mod extract;
mod frame;
mod heartbeat;
mod http;
mod hub;
mod image;
mod limits;
mod maintenance;
mod metrics;
pub mod net;
mod rules;
mod secret;
mod seed;
pub mod sms;
mod storage;
mod store;
mod ws;

use std::future::Future;
use tokio::net::TcpListener;

pub use app::AppState;
pub use config::Config;

/// Start-up errors: printed, and the process exits.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connects (with retries), migrates, seeds demo data in development and
/// loads the wheel.
pub async fn prepare(config: Config) -> Result<AppState, BoxError> {
    let storage = storage::Storage::from_config(&config)?;
    let sms = config.sms.build()?;
    let db = store::connect(&config).await?;
    store::migrate(&db).await?;
    if config.seed_demo_data {
        seed::seed_demo(&db).await?;
    }
    let wheel = domain::lottery::load_wheel(&db).await?;
    if let Err(why) = &wheel {
        tracing::error!(%why, "the prize wheel's configuration is invalid; draws are refused until it is fixed");
    }
    Ok(AppState::new(config, db, storage, sms, wheel))
}

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight
/// requests and commands finish, closes every socket with 1001 and waits
/// for them, bounded by the configured grace period.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let background = maintenance::spawn(&state);
    let stopping = state.clone();
    let app = http::router(state.clone());
    let result = net::serve(
        listener,
        app,
        state.config.http.clone(),
        async move {
            shutdown.await;
            tracing::info!("shutting down: closing sockets with 1001");
            stopping.stop();
        },
        state.config.shutdown_grace,
    )
    .await;
    // The HTTP server does not track upgraded sockets: they are ours to drain.
    state.stop();
    state.sockets.close();
    if tokio::time::timeout(state.config.shutdown_grace, state.sockets.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = state.hub.connections(),
            "sockets still open after the grace period"
        );
    }
    for task in background {
        task.abort();
    }
    result
}

/// The operator's commands (`make-merchant`, `revoke-merchant`).
pub mod cli {
    use crate::{Config, rules, store};

    /// Gives (or takes) a user the merchant tools; the user must have
    /// logged in once. Exit code 0 on success, 1 when no such user, 2 on
    /// bad input or errors.
    pub async fn set_merchant(config: Config, phone: &str, merchant: bool) -> i32 {
        if rules::input::validate_phone(phone).is_err() {
            eprintln!("{phone:?} is not a mainland mobile number");
            return 2;
        }
        let db = match store::connect(&config).await {
            Ok(db) => db,
            Err(e) => {
                eprintln!("cannot connect to the database: {e}");
                return 2;
            }
        };
        if let Err(e) = store::migrate(&db).await {
            eprintln!("cannot migrate the database: {e}");
            return 2;
        }
        match store::users::set_merchant(&db, phone, merchant).await {
            Ok(true) => {
                println!(
                    "{phone} {} a merchant",
                    if merchant { "is now" } else { "is no longer" }
                );
                0
            }
            Ok(false) => {
                eprintln!("no user with mobile {phone}: they must log in once first");
                1
            }
            Err(e) => {
                eprintln!("database error: {e}");
                2
            }
        }
    }
}

/// What the benches and the load generator measure: the hub's fan-out, the
/// wheel's pick, and the draw command itself on a database.
#[doc(hidden)]
pub mod bench {
    pub use crate::hub::Hub;
    pub use crate::rules::wheel::demo as demo_wheel;
    pub use protocol::{SessionId, UserId};

    use crate::app::delivery::Delivery;
    use crate::app::runner::Runner;
    use crate::domain::IdemKey;
    use crate::domain::lottery::{Draw, load_wheel};
    use crate::metrics::Metrics;
    use crate::rules::wheel::WheelConfig;
    use std::sync::Arc;

    /// The server's draw — the same command, through the same runner
    /// (idempotency claim, retries, commit) — without HTTP or sockets: the
    /// database side of a draw, as the load generator's baseline.
    pub struct DrawBench {
        runner: Runner,
        wheel: WheelConfig,
    }

    impl DrawBench {
        /// On a migrated database whose wheel is valid.
        pub async fn new(db: sqlx::MySqlPool) -> Result<DrawBench, crate::BoxError> {
            let wheel = load_wheel(&db).await??;
            let metrics = Arc::new(Metrics::new());
            let hub = Arc::new(Hub::new(1, 1));
            let delivery = Arc::new(Delivery::new(hub, None));
            Ok(DrawBench {
                runner: Runner::new(db, delivery, metrics),
                wheel,
            })
        }

        /// One draw of `user` under idempotency key `key`; an error is its
        /// code (`4005`, `2010`, …) and message.
        pub async fn draw(&self, user: UserId, key: &str) -> Result<(), String> {
            let key = IdemKey::parse(key).map_err(|e| e.to_string())?;
            let cmd = Draw {
                user_id: user,
                draw_count: 1,
                wheel: &self.wheel,
                utc_offset_minutes: 8 * 60,
                key: Some(&key),
            };
            self.runner
                .run_keyed(&cmd, Some((user, &key)))
                .await
                .map(|_| ())
                .map_err(|e| format!("{} {}", e.code().code(), e))
        }
    }
}
