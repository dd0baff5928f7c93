//! `/api/merchant/*`: tools for users with `is_merchant` (others get 403).

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, post, put};
use protocol::{LotterySettings, PointsAdjustment};
use protocol::{
    Product, Products, Redemption, ReviewOutcome, ReviewRequest, Reviews, Statistics, StockChanges,
};
use serde::Deserialize;

use super::extract::{ApiJson, ApiQuery, ListQuery, MerchantUser};
use crate::domain::exchange::{self, ProductInput, StockRequest};
use crate::domain::{lottery, photos, points};
use crate::error::{Envelope, Error, Result};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/products", get(list_products).post(create_product))
        .route("/products/{id}", put(update_product))
        .route("/products/{id}/stock", post(change_stock))
        .route("/products/{id}/stock-changes", get(stock_changes))
        .route("/exchange/redeem", post(redeem))
        .route("/reviews", get(reviews))
        .route("/review", post(review))
        .route("/statistics", get(statistics))
        .route("/points/adjust", post(adjust_points))
        .route(
            "/lottery/settings",
            get(lottery_settings).put(update_lottery_settings),
        )
}

/// A path id that is not a number is a bad parameter, not a 404 page.
fn id(raw: &str) -> Result<u64> {
    raw.parse()
        .map_err(|_| Error::Invalid("the product id must be a positive integer".into()))
}

async fn list_products(
    State(state): State<AppState>,
    _m: MerchantUser,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Envelope<Products>> {
    let page = q.page()?;
    Ok(Envelope(
        exchange::products(&state, q.category.as_deref(), page, false).await?,
    ))
}

async fn create_product(
    State(state): State<AppState>,
    MerchantUser(m): MerchantUser,
    ApiJson(input): ApiJson<ProductInput>,
) -> Result<Envelope<Product>> {
    Ok(Envelope(exchange::create_product(&state, &m, input).await?))
}

async fn update_product(
    State(state): State<AppState>,
    MerchantUser(m): MerchantUser,
    Path(raw): Path<String>,
    ApiJson(input): ApiJson<ProductInput>,
) -> Result<Envelope<Product>> {
    Ok(Envelope(
        exchange::update_product(&state, &m, id(&raw)?, input).await?,
    ))
}

async fn change_stock(
    State(state): State<AppState>,
    MerchantUser(m): MerchantUser,
    Path(raw): Path<String>,
    ApiJson(req): ApiJson<StockRequest>,
) -> Result<Envelope<Product>> {
    Ok(Envelope(
        exchange::change_stock(&state, &m, id(&raw)?, req).await?,
    ))
}

async fn stock_changes(
    State(state): State<AppState>,
    _m: MerchantUser,
    Path(raw): Path<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Envelope<StockChanges>> {
    Ok(Envelope(
        exchange::stock_changes(&state, id(&raw)?, q.page()?).await?,
    ))
}

#[derive(Deserialize)]
struct RedeemBody {
    exchange_code: String,
}

async fn redeem(
    State(state): State<AppState>,
    MerchantUser(m): MerchantUser,
    ApiJson(body): ApiJson<RedeemBody>,
) -> Result<Envelope<Redemption>> {
    Ok(Envelope(
        exchange::redeem(&state, &m, &body.exchange_code).await?,
    ))
}

async fn reviews(
    State(state): State<AppState>,
    _m: MerchantUser,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Envelope<Reviews>> {
    let page = q.page()?;
    Ok(Envelope(
        photos::reviews(&state, q.status.as_deref(), page).await?,
    ))
}

async fn review(
    State(state): State<AppState>,
    MerchantUser(m): MerchantUser,
    ApiJson(req): ApiJson<ReviewRequest>,
) -> Result<Envelope<ReviewOutcome>> {
    Ok(Envelope(photos::review(&state, &m, req).await?))
}

async fn statistics(
    State(state): State<AppState>,
    _m: MerchantUser,
) -> Result<Envelope<Statistics>> {
    Ok(Envelope(photos::statistics(&state).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdjustBody {
    user_id: u64,
    points: i64,
    reason: String,
}

async fn adjust_points(
    State(state): State<AppState>,
    MerchantUser(m): MerchantUser,
    ApiJson(body): ApiJson<AdjustBody>,
) -> Result<Envelope<PointsAdjustment>> {
    Ok(Envelope(
        points::admin_adjust(&state, &m, body.user_id, body.points, &body.reason).await?,
    ))
}

async fn lottery_settings(
    State(state): State<AppState>,
    _m: MerchantUser,
) -> Result<Envelope<LotterySettings>> {
    let (settings, _) = crate::store::lottery::load(&state.db).await?;
    let s = settings.ok_or(Error::Refused(protocol::ErrorCode::LotteryUnavailable))?;
    Ok(Envelope(LotterySettings {
        cost_points: s.cost_points,
        pity_threshold: s.pity_threshold,
        daily_limit: s.daily_limit,
        version: s.version,
    }))
}

async fn update_lottery_settings(
    State(state): State<AppState>,
    _m: MerchantUser,
    ApiJson(patch): ApiJson<lottery::SettingsPatch>,
) -> Result<Envelope<LotterySettings>> {
    Ok(Envelope(lottery::update_settings(&state, patch).await?))
}
