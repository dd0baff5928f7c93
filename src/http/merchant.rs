//! `/api/merchant/*`: tools for users with `is_merchant` (others get 403).
//! Every change is audited, in its own transaction.

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, post, put};
use protocol::{
    AuditLog, HourlyStatistics, LotterySettings, OrderLookup, PointsAdjustment, Prizes, Product,
    Products, Redemption, ReviewOutcome, ReviewRequest, Reviews, Statistics, StockChanges, UserId,
};
use serde::Deserialize;

use crate::app::AppState;
use crate::domain::audit;
use crate::domain::exchange::{
    self, ChangeStock, CreateProduct, ProductInput, Redeem, StockRequest, UpdateProduct,
    parse_product_path,
};
use crate::domain::lottery::{self, SettingsPatch, UpdatePrizes, UpdateSettings};
use crate::domain::photos::{self, Review};
use crate::domain::points::{AdjustLimits, AdminAdjust};
use crate::error::{Envelope, Result};
use crate::extract::{ApiJson, ApiQuery, ListQuery, MerchantUser};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/products", get(list_products).post(create_product))
        .route("/products/{id}", put(update_product))
        .route("/products/{id}/stock", post(change_stock))
        .route("/products/{id}/stock-changes", get(stock_changes))
        .route("/exchange/redeem", post(redeem))
        .route("/exchange/orders/{code}", get(order_by_code))
        .route("/reviews", get(reviews))
        .route("/review", post(review))
        .route("/statistics", get(statistics))
        .route("/statistics/hourly", get(hourly))
        .route("/points/adjust", post(adjust_points))
        .route(
            "/lottery/settings",
            get(lottery_settings).put(update_lottery_settings),
        )
        .route("/lottery/prizes", get(prizes).put(update_prizes))
        .route("/audit-log", get(audit_log))
}

async fn list_products(
    State(state): State<AppState>,
    _m: MerchantUser,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Envelope<Products>> {
    let page = q.page()?;
    Ok(Envelope(
        exchange::products(&state.db, q.category.as_deref(), page, false).await?,
    ))
}

async fn create_product(
    State(state): State<AppState>,
    MerchantUser(m): MerchantUser,
    ApiJson(input): ApiJson<ProductInput>,
) -> Result<Envelope<Product>> {
    let cmd = CreateProduct {
        merchant: m.user_id,
        input,
    };
    Ok(Envelope(state.runner.run(&cmd).await?))
}

async fn update_product(
    State(state): State<AppState>,
    MerchantUser(m): MerchantUser,
    Path(raw): Path<String>,
    ApiJson(input): ApiJson<ProductInput>,
) -> Result<Envelope<Product>> {
    let cmd = UpdateProduct {
        merchant: m.user_id,
        product_id: parse_product_path(&raw)?,
        input,
    };
    Ok(Envelope(state.runner.run(&cmd).await?))
}

async fn change_stock(
    State(state): State<AppState>,
    MerchantUser(m): MerchantUser,
    Path(raw): Path<String>,
    ApiJson(request): ApiJson<StockRequest>,
) -> Result<Envelope<Product>> {
    let cmd = ChangeStock {
        merchant: m.user_id,
        product_id: parse_product_path(&raw)?,
        request,
    };
    Ok(Envelope(state.runner.run(&cmd).await?))
}

async fn stock_changes(
    State(state): State<AppState>,
    _m: MerchantUser,
    Path(raw): Path<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Envelope<StockChanges>> {
    Ok(Envelope(
        exchange::stock_changes(&state.db, parse_product_path(&raw)?, q.page()?).await?,
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
    let cmd = Redeem {
        merchant: m.user_id,
        code: &body.exchange_code,
    };
    Ok(Envelope(state.runner.run(&cmd).await?))
}

/// What a counter code is for, without redeeming it.
async fn order_by_code(
    State(state): State<AppState>,
    _m: MerchantUser,
    Path(code): Path<String>,
) -> Result<Envelope<OrderLookup>> {
    Ok(Envelope(exchange::order_by_code(&state.db, &code).await?))
}

async fn reviews(
    State(state): State<AppState>,
    _m: MerchantUser,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Envelope<Reviews>> {
    let page = q.page()?;
    Ok(Envelope(
        photos::reviews(
            &state.db,
            &state.urls,
            state.award_caps(),
            q.status.as_deref(),
            page,
        )
        .await?,
    ))
}

async fn review(
    State(state): State<AppState>,
    MerchantUser(m): MerchantUser,
    ApiJson(req): ApiJson<ReviewRequest>,
) -> Result<Envelope<ReviewOutcome>> {
    let cmd = Review {
        merchant: m.user_id,
        upload_id: &req.upload_id,
        action: &req.action,
        points: req.points,
        reason: req.reason.as_deref(),
        caps: state.award_caps(),
        urls: &state.urls,
    };
    Ok(Envelope(state.runner.run(&cmd).await?))
}

async fn statistics(
    State(state): State<AppState>,
    _m: MerchantUser,
) -> Result<Envelope<Statistics>> {
    Ok(Envelope(
        photos::statistics(
            &state.db,
            state.config.business_utc_offset_minutes,
            state.hub.connections() as u64,
            state.hub.users() as u64,
        )
        .await?,
    ))
}

async fn hourly(
    State(state): State<AppState>,
    _m: MerchantUser,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Envelope<HourlyStatistics>> {
    let hours = q.hours.map_or(24, |h| h.0);
    Ok(Envelope(
        photos::hourly(&state.db, hours, state.connection_history()).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdjustBody {
    user_id: UserId,
    points: i64,
    reason: String,
}

async fn adjust_points(
    State(state): State<AppState>,
    MerchantUser(m): MerchantUser,
    ApiJson(body): ApiJson<AdjustBody>,
) -> Result<Envelope<PointsAdjustment>> {
    let c = &state.config;
    let cmd = AdminAdjust {
        merchant: m.user_id,
        user_id: body.user_id,
        points: body.points,
        reason: &body.reason,
        limits: AdjustLimits {
            per_call: c.adjust_max_per_call,
            per_day: c.adjust_max_per_day,
        },
        utc_offset_minutes: c.business_utc_offset_minutes,
    };
    Ok(Envelope(state.runner.run(&cmd).await?))
}

async fn lottery_settings(
    State(state): State<AppState>,
    _m: MerchantUser,
) -> Result<Envelope<LotterySettings>> {
    Ok(Envelope(lottery::settings(&state.db).await?))
}

async fn update_lottery_settings(
    State(state): State<AppState>,
    MerchantUser(m): MerchantUser,
    ApiJson(patch): ApiJson<SettingsPatch>,
) -> Result<Envelope<LotterySettings>> {
    let cmd = UpdateSettings {
        merchant: m.user_id,
        patch,
    };
    let settings = state.runner.run(&cmd).await?;
    state.reload_wheel().await?;
    Ok(Envelope(settings))
}

async fn prizes(State(state): State<AppState>, _m: MerchantUser) -> Result<Envelope<Prizes>> {
    Ok(Envelope(lottery::prizes(&state.db).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrizesBody {
    prizes: Vec<protocol::PrizeAdmin>,
}

async fn update_prizes(
    State(state): State<AppState>,
    MerchantUser(m): MerchantUser,
    ApiJson(body): ApiJson<PrizesBody>,
) -> Result<Envelope<Prizes>> {
    let cmd = UpdatePrizes {
        merchant: m.user_id,
        prizes: body.prizes,
    };
    let prizes = state.runner.run(&cmd).await?;
    state.reload_wheel().await?;
    Ok(Envelope(prizes))
}

async fn audit_log(
    State(state): State<AppState>,
    _m: MerchantUser,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Envelope<AuditLog>> {
    Ok(Envelope(audit::log(&state.db, q.page()?).await?))
}
