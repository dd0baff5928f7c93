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
    return_freed_memory();
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

/// How often the process's size is checked.
const TRIM_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(30);
/// Growth since the last trim that is worth one: a quarter, at least 32 MiB.
const TRIM_GROWTH_MIN: u64 = 32 << 20;

/// A reconnect storm holds thousands of connections mid-upgrade at once
/// (their HTTP buffers, the session lookup); once they are live that
/// memory is free again, but glibc keeps it in its arena: 18,000 sockets
/// back after a storm measured 420–490 MB of RSS against 46 MB when
/// connected at a steady pace. `malloc_trim` returns the free pages, but it
/// holds the allocator's lock while it walks the heap (73 ms after a storm,
/// 9 ms with 18,000 idle sockets and nothing to return), so it runs only
/// when the resident size has grown by a quarter since the last trim:
/// checked every `TRIM_CHECK_EVERY` from a thread of its own.
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let spawned = std::thread::Builder::new()
            .name("malloc-trim".into())
            .spawn(|| {
                let mut after_last_trim = resident_bytes().unwrap_or(0);
                loop {
                    std::thread::sleep(TRIM_CHECK_EVERY);
                    let Some(now) = resident_bytes() else { return };
                    if now < after_last_trim + (after_last_trim / 4).max(TRIM_GROWTH_MIN) {
                        // Also follow the size down (sockets gone, memory
                        // returned by free itself).
                        after_last_trim = after_last_trim.min(now);
                        continue;
                    }
                    let started = std::time::Instant::now();
                    // SAFETY: malloc_trim only releases free memory of the
                    // allocator's own heap; it takes the arena's lock itself.
                    unsafe { libc::malloc_trim(0) };
                    after_last_trim = resident_bytes().unwrap_or(now);
                    tracing::debug!(
                        target: "restaurant_points::memory",
                        before = now,
                        after = after_last_trim,
                        took_us = started.elapsed().as_micros() as u64,
                        "returned free heap memory to the system"
                    );
                }
            });
        if let Err(e) = spawned {
            eprintln!("cannot start the memory trimming thread: {e}");
        }
    }
}

/// The process's resident size, from `/proc/self/statm` (in pages).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
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
