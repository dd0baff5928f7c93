//! `/health`, `/healthz` and `/metrics`: public, outside `/api/`.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::state::AppState;

/// 200 when healthy or degraded (the wheel's configuration is invalid, so
/// draws are refused but everything else works), 503 when the database
/// cannot be reached.
pub async fn health(State(state): State<AppState>) -> Response {
    let started = Instant::now();
    let db = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&state.db),
    )
    .await;
    let latency_ms = started.elapsed().as_millis() as u64;
    let (db_ok, db_error) = match db {
        Ok(Ok(_)) => (true, None),
        Ok(Err(e)) => (false, Some(e.to_string())),
        Err(_) => (false, Some("timed out after 2 s".to_string())),
    };
    let wheel = state.wheel();
    let status = match (db_ok, wheel.is_ok()) {
        (false, _) => "unhealthy",
        (true, false) => "degraded",
        (true, true) => "healthy",
    };
    let body = json!({
        "status": status,
        "checks": {
            "database": {
                "status": if db_ok { "up" } else { "down" },
                "latency_ms": latency_ms,
                "error": db_error,
                "pool_size": state.db.size(),
                "pool_idle": state.db.num_idle(),
            },
            "websocket": {
                "connections": state.hub.connections(),
                "users": state.hub.users(),
            },
            "lottery": match wheel.as_ref() {
                Ok(w) => json!({ "status": "ok", "config_version": w.version }),
                Err(why) => json!({ "status": "invalid", "error": why }),
            },
        },
        "uptime_s": state.started.elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    let code = if db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let m = &state.metrics;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "points_ws_connections",
        "gauge",
        "Live WebSocket connections.",
        state.hub.connections() as u64,
    );
    metric(
        "points_ws_users",
        "gauge",
        "Users with at least one live socket.",
        state.hub.users() as u64,
    );
    metric(
        "points_ws_accepted_total",
        "counter",
        "WebSocket connections accepted.",
        m.ws_accepted.load(Ordering::Relaxed),
    );
    metric(
        "points_ws_commands_total",
        "counter",
        "Socket commands run.",
        m.ws_commands.load(Ordering::Relaxed),
    );
    metric(
        "points_ws_slow_closes_total",
        "counter",
        "Sockets closed for not reading their events.",
        m.slow_socket_closes.load(Ordering::Relaxed),
    );
    metric(
        "points_draws_total",
        "counter",
        "Prizes drawn.",
        m.draws.load(Ordering::Relaxed),
    );
    metric(
        "points_logins_total",
        "counter",
        "Successful logins.",
        m.logins.load(Ordering::Relaxed),
    );
    metric(
        "points_http_errors_total",
        "counter",
        "HTTP responses with a non-zero code.",
        m.http_errors.load(Ordering::Relaxed),
    );
    metric(
        "points_db_pool_size",
        "gauge",
        "Open database connections.",
        state.db.size() as u64,
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
