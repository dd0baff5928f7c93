//! Parse config, init tracing, connect, migrate, serve — nothing else.

use restaurant_points::{Config, config::LogFormat};
use tokio::net::TcpSocket;
use tracing_subscriber::EnvFilter;

/// Connect storms (every client reconnecting after a restart) need a deeper
/// accept queue than the default 128.
const LISTEN_BACKLOG: u32 = 4096;

const USAGE: &str = "usage: restaurant-points [serve]
       restaurant-points make-merchant <phone>     give an existing user the merchant tools
       restaurant-points revoke-merchant <phone>   take them away";

fn main() {
    limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
        .block_on(async_main());
}

/// glibc gives each thread that allocates its own arena; the many small
/// per-socket allocations, made on whichever worker thread accepts the
/// socket, then fragment across them. One arena measured ~4.4 KB per idle
/// socket against ~5.4 KB with the default (BENCHMARKS.md). Must run before
/// any thread starts.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator tuning; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

async fn async_main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] | ["serve"] => None,
        ["make-merchant", phone] => Some((true, phone.to_string())),
        ["revoke-merchant", phone] => Some((false, phone.to_string())),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("refusing to start: {e}");
            std::process::exit(2);
        }
    };
    init_tracing(&config);
    if !config.is_production() {
        tracing::warn!(
            "APP_ENV=development: demo data, a fixed login code and (without JWT_SECRET) a public token secret; never expose this server"
        );
    }
    if config.jwt_secret_is_default {
        tracing::warn!("JWT_SECRET is not set: using the development secret");
    }
    if let Some(code) = &config.dev_login_code {
        tracing::info!(%code, "development mode: this login code is always accepted");
    }
    if let Some((merchant, phone)) = command {
        std::process::exit(restaurant_points::cli::set_merchant(config, &phone, merchant).await);
    }
    if let Err(e) = run(config).await {
        tracing::error!(error = %e, "server stopped with an error");
        std::process::exit(1);
    }
}

async fn run(config: Config) -> Result<(), restaurant_points::BoxError> {
    let addr = config.bind_addr;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
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
