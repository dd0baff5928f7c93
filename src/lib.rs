//! The restaurant points server: REST for login, lists and merchant tools,
//! and a WebSocket hub that carries draw and exchange commands and pushes
//! points and stock updates.
//!
//! [`serve`] is the seam: it takes a bound listener and a ready state, so
//! tests run the real server on `127.0.0.1:0`.

pub mod config;
pub mod domain;
pub mod error;
mod heartbeat;
pub mod http;
pub mod hub;
mod maintenance;
pub mod seed;
pub mod state;
pub mod storage;
pub mod store;
pub mod ws;

use axum::serve::ListenerExt;
use std::future::Future;
use tokio::net::TcpListener;

pub use config::Config;
pub use state::AppState;

/// Connects (with retries), migrates, seeds demo data where configured and
/// loads the wheel.
pub async fn prepare(config: Config) -> Result<AppState, BoxError> {
    let storage = storage::Storage::from_config(&config)?;
    let db = store::connect(&config).await?;
    store::migrate(&db).await?;
    if config.seed_demo_data {
        seed::seed_demo(&db).await?;
    }
    let wheel = domain::lottery::load_wheel(&db).await?;
    if let Err(why) = &wheel {
        tracing::error!(%why, "the prize wheel's configuration is invalid; draws are refused until it is fixed");
    }
    Ok(AppState::new(config, db, storage, wheel))
}

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight
/// requests and commands finish, closes every socket with 1001 and waits
/// for them, bounded by the configured grace period.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let maintenance = tokio::spawn(maintenance::run(state.clone()));
    let wheel_watch = tokio::spawn(maintenance::watch_wheel(state.clone()));
    let heartbeat = tokio::spawn(heartbeat::run(state.clone()));
    let stopping = state.clone();
    let app = http::router(state.clone());
    // Small frames go out at once: without TCP_NODELAY a second frame
    // written before the peer acknowledged the first waits for that ACK.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    // `into_make_service`: each connection gets a clone of the router (one
    // reference count). Serving the `Router` itself rebuilds its route table
    // for every connection, which made a socket's upgrade cost ~0.4 ms of
    // CPU, most of a reconnect storm's.
    let result = axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: closing sockets with 1001");
            stopping.stop();
        })
        .await;
    // axum does not track upgraded sockets: they are ours to drain.
    state.stop();
    state.sockets.close();
    if tokio::time::timeout(state.config.shutdown_grace, state.sockets.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = state.sockets.len(),
            "sockets still open after the grace period"
        );
    }
    maintenance.abort();
    wheel_watch.abort();
    heartbeat.abort();
    result
}

/// Start-up errors: printed, and the process exits.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
