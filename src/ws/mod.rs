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

use crate::domain::auth::authorize;
use crate::error::Error;
use crate::http::extract::{ApiQuery, bearer_token};
use crate::state::AppState;

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
    let auth = match authorize(&state, token).await {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    tracing::Span::current().record("user_id", auth.user_id);
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return Error::Invalid(format!("not a WebSocket upgrade: {rejection}")).into_response();
        }
    };
    if state.hub.connections() >= state.config.ws_max_connections {
        return Error::Refused(ErrorCode::TooManyConnections).into_response();
    }
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
            let fut = session::run(socket, state, auth, since);
            tracker.track_future(fut)
        })
}
