//! `/ws`: the upgrade (authenticated before it happens), the socket's task
//! and its commands.
//!
//! The handshake is RFC 6455's, answered here; after the 101 the socket's
//! task owns the bare TCP connection and speaks frames itself
//! (`crate::frame`), so a broadcast's bytes can be written by the hub into
//! every socket with no per-socket state in between (`crate::hub`).

mod commands;
mod session;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use protocol::ErrorCode;
use serde::Deserialize;
use std::convert::Infallible;

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

/// A valid WebSocket opening handshake, or what is wrong with it.
pub struct Handshake(Result<Opening, &'static str>);

pub struct Opening {
    accept: HeaderValue,
    on_upgrade: OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for Handshake {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Handshake(opening(parts)))
    }
}

/// Checks the request is a version-13 WebSocket upgrade (RFC 6455 §4.2.1)
/// and takes the connection's upgrade handle.
fn opening(parts: &mut Parts) -> Result<Opening, &'static str> {
    let h = &parts.headers;
    let has_token = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if parts.method != Method::GET
        || !has_token(header::CONNECTION, "upgrade")
        || !has_token(header::UPGRADE, "websocket")
    {
        return Err("须为 WebSocket 升级请求");
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err("WebSocket 版本须为 13");
    }
    let key = h
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|k| k.len() == 24)
        .ok_or("缺少有效的 Sec-WebSocket-Key")?;
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let accept = HeaderValue::from_str(&accept).map_err(|_| "缺少有效的 Sec-WebSocket-Key")?;
    let on_upgrade = parts
        .extensions
        .remove::<OnUpgrade>()
        .ok_or("须为 WebSocket 升级请求")?;
    Ok(Opening { accept, on_upgrade })
}

/// Authenticates (header or `?token=`) and checks capacity before upgrading,
/// so a refused socket gets a plain HTTP error in the REST envelope.
pub async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<WsParams>,
    Handshake(opening): Handshake,
) -> Response {
    let token = bearer_token(&headers).or(params.token.as_deref());
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Error::Refused(ErrorCode::TokenMissing).into_response();
    };
    let access = match state.keys.verify_access(token) {
        Ok(a) => a,
        Err(code) => return Error::Refused(code).into_response(),
    };
    let opening = match opening {
        Ok(o) => o,
        Err(why) => return Error::invalid("Upgrade", why).into_response(),
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
    let start = session::Start {
        auth,
        reg,
        total_points,
        last_seq,
        since: params.since,
    };
    let Opening { accept, on_upgrade } = opening;
    // No span per socket: an open span costs memory for as long as the
    // socket lives. Socket log lines carry `user_id` themselves.
    let sockets = state.sockets.clone();
    sockets.spawn(session::serve(Box::new(session::Setup {
        on_upgrade,
        state,
        start,
    })));
    let mut res = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    res
}
