//! `/api/auth/*`.

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use protocol::VerifyResponse;
use serde::Deserialize;

use super::extract::ApiJson;
use crate::domain::auth::{self, AuthUser};
use crate::error::{Envelope, Error, Result};
use crate::state::AppState;
use crate::store;
use protocol::ErrorCode;

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

async fn send_code(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<PhoneBody>,
) -> Result<Envelope<auth::SendCodeResult>> {
    Ok(Envelope(auth::send_code(&state, &body.phone).await?))
}

async fn login(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Envelope<protocol::LoginResponse>> {
    Ok(Envelope(
        auth::login(&state, &body.phone, &body.code).await?,
    ))
}

async fn refresh(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<Envelope<auth::TokenPair>> {
    Ok(Envelope(auth::refresh(&state, &body.refresh_token).await?))
}

async fn verify(State(state): State<AppState>, user: AuthUser) -> Result<Envelope<VerifyResponse>> {
    let row = store::users::find(&state.db, user.user_id)
        .await?
        .ok_or(Error::Refused(ErrorCode::TokenInvalid))?;
    Ok(Envelope(VerifyResponse {
        valid: true,
        user_info: auth::user_info(&row),
    }))
}

async fn logout(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Envelope<serde_json::Value>> {
    auth::logout(&state, &user).await?;
    Ok(Envelope(serde_json::json!({ "logged_out": true })))
}
