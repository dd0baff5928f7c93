//! `/health`, `/healthz` and `/metrics`: public, outside `/api/`.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::time::{Duration, Instant};

use crate::app::AppState;

/// 200 when healthy or degraded (the wheel's configuration is invalid, so
/// draws are refused but everything else works; or Redis is unreachable,
/// so other instances' events arrive late), 503 when the database cannot
/// be reached.
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
    let redis = match &state.fanout {
        None => "disabled",
        Some(f) if f.is_up() => "up",
        Some(_) => "down",
    };
    let status = match (db_ok, wheel.is_ok() && redis != "down") {
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
            // Down: this instance's sockets still get what it commits;
            // others' events wait for Redis (or the catch-up).
            "redis": { "status": redis },
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

/// OpenMetrics text (Prometheus reads it).
pub async fn metrics(State(state): State<AppState>) -> Response {
    let m = &state.metrics;
    m.ws_connections.set(state.hub.connections() as i64);
    m.ws_users.set(state.hub.users() as i64);
    m.db_pool_size.set(state.db.size() as i64);
    m.db_pool_idle.set(state.db.num_idle() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
        .into_response()
}
