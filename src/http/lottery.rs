//! `/api/lottery/*`.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use protocol::{DrawRecords, DrawRequest, LotteryConfigView};

use super::extract::{ApiJson, ApiQuery, IdempotencyKey, ListQuery};
use crate::domain::auth::AuthUser;
use crate::domain::lottery;
use crate::error::{Envelope, RawEnvelope, Result};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/config", get(config))
        .route("/draw", post(draw))
        .route("/records", get(records))
}

async fn config(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Envelope<LotteryConfigView>> {
    Ok(Envelope(lottery::config_view(&state, user.user_id).await?))
}

async fn draw(
    State(state): State<AppState>,
    user: AuthUser,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson(req): ApiJson<DrawRequest>,
) -> Result<Response> {
    let data = lottery::draw(&state, user.user_id, req.draw_count, key.as_ref()).await?;
    Ok(RawEnvelope(data.0).into_response())
}

async fn records(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Envelope<DrawRecords>> {
    Ok(Envelope(
        lottery::records(&state, user.user_id, q.page()?).await?,
    ))
}
