//! The HTTP front door: accepts TCP connections and serves each one with
//! hyper, bounded so that slow, idle or numerous clients cannot hold the
//! process's file descriptors and starve the WebSocket hub.
//!
//! | bound | measured | enforced by |
//! |---|---|---|
//! | `header_timeout` | whole request head, from accept (first request) or from the first byte after an idle wait | `conn::Watched` fails the read |
//! | `idle_timeout` | keep-alive wait with no request in flight | `conn::Watched` fails the read |
//! | `body_timeout` | whole request body, from the handler's first read | `conn::DeadlineBody`; the reply becomes 408 / 2012 |
//! | `max_connections`, `max_per_ip` | from accept until hyper's connection future completes | `caps::Caps`; over a cap: 503 / 2009 without hyper |
//!
//! Why not hyper's `header_read_timeout`: in hyper 1.12 that one timer
//! starts when the connection is accepted *and again whenever a keep-alive
//! connection goes idle* (hyper PRs #3185, #3828), so it is the header limit
//! and the idle limit at once. We need 10 s for a head and 75 s of idle
//! (longer than nginx's upstream keep-alive, so nginx, not we, closes idle
//! upstream connections and never sends a request into a socket we are
//! closing). hyper's is therefore switched off and both deadlines live in
//! the connection's reader: a read that would wait past the deadline fails,
//! and hyper reads whenever it waits for a head.
//!
//! Why not tower-http's `TimeoutBody`: it restarts its timer after every
//! frame, so a client trickling one byte every 29 s is never timed out; the
//! contract is "the body arrives within 30 s".
//!
//! An upgraded connection (101) leaves hyper's connection future, so it
//! stops counting against the caps the moment it is handed to the WebSocket
//! code; its deadlines are switched off too. The hub bounds sockets itself.

mod caps;
mod client_ip;
mod conn;
mod rate;

pub use client_ip::{InvalidProxy, TrustedProxies, client_ip};
pub use rate::{IpRateLimiter, RateSpec, RateSpecError};

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use caps::Caps;
use conn::{ConnService, Phase, Watched};

/// Limits on plain (not upgraded) HTTP connections. Defaults are the
/// production values of DESIGN.md's `HTTP_*` variables.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// `HTTP_HEADER_TIMEOUT_MS`: a whole request head must arrive within this.
    pub header_timeout: Duration,
    /// `HTTP_BODY_TIMEOUT_MS`: a whole request body must arrive within this,
    /// counted from the handler's first read of it.
    pub body_timeout: Duration,
    /// `HTTP_IDLE_TIMEOUT_MS`: a keep-alive connection with no request in
    /// flight is closed after this.
    pub idle_timeout: Duration,
    /// `HTTP_MAX_CONNECTIONS`: plain connections in total.
    pub max_connections: usize,
    /// `HTTP_MAX_CONNECTIONS_PER_IP`: plain connections per peer address.
    pub max_per_ip: usize,
    /// `TRUSTED_PROXIES`: peers exempt from `max_per_ip` (nginx connects
    /// from one address), and whose `X-Forwarded-For` is believed.
    pub trusted: TrustedProxies,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_millis(10_000),
            body_timeout: Duration::from_millis(30_000),
            idle_timeout: Duration::from_millis(75_000),
            max_connections: 4000,
            max_per_ip: 64,
            trusted: TrustedProxies::default(),
        }
    }
}

/// hyper's read buffer grows up to this. hyper's default (~400 KiB) would
/// let each of 4000 slow connections pin 400 KiB of header bytes; 64 KiB is
/// eight times nginx's largest header buffer.
const MAX_BUF_SIZE: usize = 64 * 1024;

/// First and longest pause after a failed `accept` (EMFILE and the like):
/// retrying at once would spin while the process has no descriptor to give.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `shutdown` resolves; then stops
/// accepting (the listener is closed, so new connections are refused), lets
/// requests in flight finish and closes idle connections, waiting at most
/// `grace` before dropping what is left. Upgraded sockets are not waited
/// for: they belong to the hub's own shutdown.
///
/// Handlers find the peer in `ConnectInfo<SocketAddr>`. The listener may be
/// bound any way (e.g. `TcpSocket::listen(4096)` for a deep backlog).
/// Failed accepts (EMFILE and the like) are logged and paused on, never
/// fatal: this returns `Ok` once shut down.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> io::Result<()> {
    // Turns every route into its final form once, as `into_make_service`
    // does, rather than on each request.
    let app = app.with_state(());
    let caps = Arc::new(Caps::new(&limits));
    let mut http = http1::Builder::new();
    http.keep_alive(true)
        // Off: it would also be the idle limit (see the module docs).
        .header_read_timeout(None)
        .max_buf_size(MAX_BUF_SIZE);

    // `stopping`: finish the request in flight, then close.
    // `dropping`: the grace period is over; drop the connection as it is.
    let stopping = CancellationToken::new();
    let dropping = CancellationToken::new();
    let connections = TaskTracker::new();
    let mut shutdown = pin!(shutdown);
    let mut backoff = ACCEPT_BACKOFF_MIN;

    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    pair
                }
                // That one connection failed before we took it; the next may not.
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::error!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; pausing");
                    tokio::select! {
                        biased;
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            },
        };
        // Small frames go out at once: without TCP_NODELAY a second frame
        // written before the peer acknowledged the first waits for that ACK.
        let _ = stream.set_nodelay(true);

        let Some(slot) = caps.try_acquire(peer.ip()) else {
            tracing::debug!(%peer, "connection refused: connection cap reached");
            caps.refuse(stream);
            continue;
        };

        let phase = Phase::new(limits.header_timeout, limits.idle_timeout);
        let service = ConnService::new(app.clone(), peer, phase.clone(), limits.body_timeout);
        let conn = http
            .serve_connection(TokioIo::new(Watched::new(stream, phase)), service)
            .with_upgrades();
        let stopping = stopping.clone();
        let dropping = dropping.clone();
        connections.spawn(async move {
            // Counted until hyper is done with the connection: after a 101
            // the future completes and the socket lives on in the hub.
            let _slot = slot;
            let mut conn = pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                () = stopping.cancelled() => {
                    // hyper-util's GracefulShutdown cannot watch an http1
                    // `UpgradeableConnection` (hyper-util 0.1.21 implements
                    // its sealed trait only for the non-upgrading and the
                    // `auto` connections), so this is its two steps by hand.
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        ended = conn.as_mut() => ended,
                        () = dropping.cancelled() => return,
                    }
                }
            };
            if let Err(e) = ended {
                // Timeouts, resets and malformed requests: the client's doing.
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }

    drop(listener);
    stopping.cancel();
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = connections.len(),
            "HTTP connections still busy after the grace period; dropping them"
        );
        dropping.cancel();
        connections.wait().await;
    }
    Ok(())
}

/// The TCP connection under a connection hyper upgraded (101), and any
/// bytes hyper read past the request head. `Err` gives back an upgrade
/// that did not come through [`serve`].
pub fn upgraded_tcp(
    upgraded: hyper::upgrade::Upgraded,
) -> Result<(TcpStream, Bytes), hyper::upgrade::Upgraded> {
    let parts = upgraded.downcast::<TokioIo<Watched<TcpStream>>>()?;
    Ok((parts.io.into_inner().into_inner(), parts.read_buf))
}

/// Errors that concern only the connection being accepted.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
