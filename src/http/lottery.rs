//! `/api/lottery/*`.

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use protocol::{DrawRecords, DrawRequest, LotteryConfigView};

use crate::app::AppState;
use crate::domain::auth::AuthUser;
use crate::domain::lottery;
use crate::error::{DataJson, Envelope, Result};
use crate::extract::{ApiJson, ApiQuery, IdempotencyKey, ListQuery};

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
    Ok(Envelope(
        lottery::config_view(&state.db, &state.wheel(), user.user_id).await?,
    ))
}

async fn draw(
    State(state): State<AppState>,
    user: AuthUser,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson(req): ApiJson<DrawRequest>,
) -> Result<DataJson> {
    state.draw(user.user_id, req.draw_count, key.as_ref()).await
}

async fn records(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Envelope<DrawRecords>> {
    Ok(Envelope(
        lottery::records(&state.db, user.user_id, q.page()?).await?,
    ))
}
