//! `/api/exchange/*`.

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use protocol::{ExchangeRequest, Orders, Products};

use crate::app::AppState;
use crate::domain::auth::AuthUser;
use crate::domain::exchange;
use crate::error::{DataJson, Envelope, Result};
use crate::extract::{ApiJson, ApiQuery, IdempotencyKey, ListQuery};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/products", get(products))
        .route("/submit", post(submit))
        .route("/orders", get(orders))
}

async fn products(
    State(state): State<AppState>,
    _user: AuthUser,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Envelope<Products>> {
    let page = q.page()?;
    Ok(Envelope(
        exchange::products(&state.db, q.category.as_deref(), page, true).await?,
    ))
}

async fn submit(
    State(state): State<AppState>,
    user: AuthUser,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson(req): ApiJson<ExchangeRequest>,
) -> Result<DataJson> {
    state
        .submit_exchange(user.user_id, req.product_id, req.quantity, key.as_ref())
        .await
}

async fn orders(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Envelope<Orders>> {
    Ok(Envelope(
        exchange::orders(&state.db, user.user_id, q.page()?).await?,
    ))
}
