//! `/api/auth/*`.

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use protocol::VerifyResponse;
use serde::Deserialize;

use crate::app::AppState;
use crate::domain::auth::{self, AuthUser, IssuedCode, LoggedOut, Logout, TokenPair};
use crate::error::{Envelope, Result};
use crate::extract::{ApiJson, ClientIp, OptionalJson};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/send-code", post(send_code))
        .route("/login", post(login))
        .route("/refresh", post(refresh))
        .route("/verify", get(verify))
        .route("/logout", post(logout))
}

#[derive(Deserialize)]
struct PhoneBody {
    phone: String,
}

#[derive(Deserialize)]
struct LoginBody {
    phone: String,
    code: String,
}

#[derive(Deserialize)]
struct RefreshBody {
    refresh_token: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LogoutBody {
    /// Sign out everywhere: every session of the user.
    #[serde(default)]
    all: bool,
}

async fn send_code(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<PhoneBody>,
) -> Result<Envelope<IssuedCode>> {
    Ok(Envelope(state.send_code(ip, &body.phone).await?))
}

async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Envelope<protocol::LoginResponse>> {
    let resp = state.login(ip, &body.phone, &body.code).await?;
    tracing::Span::current().record("user_id", resp.user_info.user_id.0);
    Ok(Envelope(resp))
}

async fn refresh(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<Envelope<TokenPair>> {
    Ok(Envelope(state.refresh(ip, &body.refresh_token).await?))
}

async fn verify(State(state): State<AppState>, user: AuthUser) -> Result<Envelope<VerifyResponse>> {
    Ok(Envelope(VerifyResponse {
        valid: true,
        user_info: auth::user_info(&state.db, user.user_id).await?,
    }))
}

async fn logout(
    State(state): State<AppState>,
    user: AuthUser,
    OptionalJson(body): OptionalJson<LogoutBody>,
) -> Result<Envelope<LoggedOut>> {
    let all = body.unwrap_or_default().all;
    Ok(Envelope(
        state
            .runner
            .run(&Logout {
                user_id: user.user_id,
                session_id: user.session_id,
                all,
            })
            .await?,
    ))
}
