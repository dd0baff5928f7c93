//! Parse config, init tracing, connect, migrate, serve — nothing else.

use restaurant_points::{Config, config::LogFormat};
use std::net::SocketAddr;
use tokio::net::TcpSocket;
use tracing_subscriber::EnvFilter;

/// Connect storms (every client reconnecting after a restart) need a deeper
/// accept queue than the default 128.
const LISTEN_BACKLOG: u32 = 4096;

#[tokio::main]
async fn main() {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("refusing to start: {e}");
            std::process::exit(2);
        }
    };
    init_tracing(&config);
    if config.jwt_secret_is_default {
        tracing::warn!(
            "JWT_SECRET is not set: using the development secret (never do this in production)"
        );
    }
    if let Some(code) = &config.dev_login_code {
        tracing::info!(%code, "development mode: this login code is always accepted");
    }
    if let Err(e) = run(config).await {
        tracing::error!(error = %e, "server stopped with an error");
        std::process::exit(1);
    }
}

async fn run(config: Config) -> Result<(), restaurant_points::BoxError> {
    let addr = SocketAddr::from(([0, 0, 0, 0], config.port));
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(LISTEN_BACKLOG)?;
    let state = restaurant_points::prepare(config).await?;
    tracing::info!(%addr, "listening");
    restaurant_points::serve(listener, state, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

fn init_tracing(config: &Config) {
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log_format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Pretty => builder.init(),
    }
}
