//! `/ws`: the upgrade (authenticated before it happens), the socket's task
//! and its commands.

mod commands;
mod session;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{State, ws::rejection::WebSocketUpgradeRejection};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use protocol::ErrorCode;
use serde::Deserialize;

use crate::app::AppState;
use crate::domain::auth::check_session;
use crate::error::Error;
use crate::extract::{ApiQuery, bearer_token};

#[derive(Debug, Deserialize)]
pub struct WsParams {
    token: Option<String>,
    /// Replay events after this seq right after `welcome`.
    since: Option<u64>,
}

/// Authenticates (header or `?token=`) and checks capacity before upgrading,
/// so a refused socket gets a plain HTTP error in the REST envelope.
pub async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<WsParams>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let token = bearer_token(&headers).or(params.token.as_deref());
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Error::Refused(ErrorCode::TokenMissing).into_response();
    };
    let access = match state.keys.verify_access(token) {
        Ok(a) => a,
        Err(code) => return Error::Refused(code).into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(_) => {
            return Error::invalid("Upgrade", "须为 WebSocket 升级请求").into_response();
        }
    };
    if state.hub.connections() >= state.config.ws_max_connections {
        return Error::Refused(ErrorCode::TooManyConnections).into_response();
    }
    // Join the hub before reading the balance and newest seq: an event
    // committed after that read is then pushed to this socket, and one
    // committed before it is covered by `welcome` (the socket skips
    // repeats). One read authorizes the socket and fills `welcome`.
    let reg = state.hub.join(access.user_id, access.session_id);
    let (auth, total_points, last_seq) = match check_session(&state.db, access).await {
        Ok(checked) => checked,
        Err(e) => return e.into_response(),
    };
    reg.admit(auth.is_merchant);
    tracing::Span::current().record("user_id", auth.user_id.0);
    let c = &state.config;
    let max = c.ws_max_frame_bytes;
    let since = params.since;
    let tracker = state.sockets.clone();
    ws.read_buffer_size(c.ws_read_buffer_bytes)
        .write_buffer_size(0)
        .max_write_buffer_size(max.max(64 * 1024) * 4)
        .max_message_size(max)
        .max_frame_size(max)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"))
        .on_upgrade(move |socket| {
            // No span per socket: an open span costs memory for as long as
            // the socket lives. Socket log lines carry `user_id` themselves.
            let start = session::Start {
                auth,
                reg,
                total_points,
                last_seq,
                since,
            };
            let fut = session::run(socket, state, start);
            tracker.track_future(fut)
        })
}
