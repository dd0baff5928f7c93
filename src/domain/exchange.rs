//! Points exchange: the catalogue, the purchase command, orders, the
//! merchant's product and stock tools, and redemption at the counter.

use protocol::{
    ErrorCode, ExchangeResult, Order, Orders, Product, Products, Redemption, StockChange,
    StockChanges, StockUpdate, event,
};
use rand::Rng;
use serde::Deserialize;
use tracing::instrument;

use super::auth::AuthUser;
use super::points::{Account, UserEvent, source};
use super::{DataJson, IdemKey, Page, now_rfc3339, stored_result, to_rfc3339, with_deadlock_retry};
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::store::exchange::{NewOrder, NewProduct, ProductRow};
use crate::store::{self, Tx};

pub const MAX_QUANTITY: u32 = 99;
const MAX_STOCK: i64 = 1_000_000;
const MAX_PRICE: u32 = 10_000_000;
/// Counter codes: no 0/O, 1/I/L, so they read out loud without mistakes.
const CODE_ALPHABET: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
const CODE_LEN: usize = 8;

pub mod operation {
    pub const CREATE: &str = "create";
    pub const PURCHASE: &str = "purchase";
    pub const RESTOCK: &str = "restock";
    pub const ADMIN_ADJUST: &str = "admin_adjust";
}

fn product_view(p: &ProductRow) -> Product {
    Product {
        product_id: p.product_id as u64,
        name: p.name.clone(),
        description: p.description.clone(),
        category: p.category.clone(),
        exchange_points: p.exchange_points as i64,
        stock: p.stock as i64,
        image: p.image.clone(),
        status: p.status.clone(),
        sales_count: p.sales_count as i64,
        sort_order: p.sort_order as i64,
    }
}

/// Product ids beyond the column's range name no product.
fn product_id(id: u64) -> Result<u32> {
    u32::try_from(id).map_err(|_| Error::Refused(ErrorCode::ProductUnavailable))
}

/// The catalogue: guests see active products (sold-out ones stay listed
/// with stock 0), merchants see all.
pub async fn products(
    state: &AppState,
    category: Option<&str>,
    page: Page,
    active_only: bool,
) -> Result<Products> {
    let category = category.filter(|c| !c.is_empty());
    let (rows, total) =
        store::exchange::page_products(&state.db, category, active_only, page.size, page.offset())
            .await?;
    Ok(Products {
        products: rows.iter().map(product_view).collect(),
        pagination: page.pagination(total),
    })
}

/// Sends `stock_update` to every socket. The version makes the hub drop a
/// broadcast that lost a race with a newer one for the same product.
fn broadcast_stock(state: &AppState, p: &ProductRow, operation: &str) {
    let update = StockUpdate {
        product_id: p.product_id as u64,
        stock: p.stock as i64,
        product_name: p.name.clone(),
        operation: operation.to_string(),
        timestamp: now_rfc3339(),
    };
    let frame = serde_json::to_string(&protocol::EventFrame {
        kind: event::STOCK_UPDATE,
        seq: None,
        data: &update,
    })
    .unwrap_or_default();
    state
        .hub
        .broadcast_versioned(p.product_id as u64, p.stock_version, frame.into());
}

fn new_code() -> String {
    let mut rng = rand::rng();
    (0..CODE_LEN)
        .map(|_| CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())] as char)
        .collect()
}

/// Exchanges `quantity` of a product for points in one transaction.
///
/// Invariants the transaction protects:
/// - the user's row is locked first, then the product's: points and stock
///   are checked and taken under those locks, so neither goes below zero
///   whatever the concurrency, and the price charged is the price stored;
/// - a refusal (4004, 4005, 4006) leaves nothing changed;
/// - the order, the stock audit row, the ledger row, the user event and the
///   idempotency key commit together or not at all.
#[instrument(skip_all, fields(user_id, product_id, quantity))]
pub async fn submit(
    state: &AppState,
    user_id: u64,
    product_id: u64,
    quantity: u32,
    key: Option<&IdemKey>,
) -> Result<DataJson> {
    if !(1..=MAX_QUANTITY).contains(&quantity) {
        return Err(Error::Invalid(format!(
            "quantity must be 1 to {MAX_QUANTITY}"
        )));
    }
    let pid = self::product_id(product_id)?;
    let fingerprint = format!("exchange.submit:{product_id}:{quantity}");
    let outcome = with_deadlock_retry(|| async {
        let mut tx = state.db.begin().await?;
        let outcome = submit_in(&mut tx, user_id, pid, quantity, key, &fingerprint).await?;
        if matches!(outcome, Submitted::Fresh { .. }) {
            tx.commit().await?;
        }
        Ok(outcome)
    })
    .await
    .map_err(|e| e.during(ErrorCode::ExchangeFailed))?;
    match outcome {
        Submitted::Fresh {
            data,
            events,
            product,
        } => {
            state.hub.deliver(&events);
            broadcast_stock(state, &product, operation::PURCHASE);
            Ok(data)
        }
        Submitted::Replayed(data) => Ok(data),
    }
}

enum Submitted {
    Fresh {
        data: DataJson,
        events: Vec<UserEvent>,
        /// The product as this purchase left it.
        product: ProductRow,
    },
    Replayed(DataJson),
}

async fn submit_in(
    tx: &mut Tx,
    user_id: u64,
    pid: u32,
    quantity: u32,
    key: Option<&IdemKey>,
    fingerprint: &str,
) -> Result<Submitted> {
    let mut account = Account::lock(tx, user_id).await?;
    if let Some(stored) = stored_result(tx, user_id, key, fingerprint).await? {
        return Ok(Submitted::Replayed(stored));
    }
    let product = store::exchange::product_in(tx, pid)
        .await?
        .filter(|p| p.status == "active")
        .ok_or(Error::Refused(ErrorCode::ProductUnavailable))?;
    if (product.stock as i64) < quantity as i64 {
        return Err(Error::NotEnoughStock {
            available: product.stock as i64,
        });
    }
    let total_cost = product.exchange_points as i64 * quantity as i64;
    let exchange_id = ulid::Ulid::new().to_string();
    account.spend(
        total_cost,
        source::EXCHANGE,
        format!("兑换{}×{quantity}", product.name),
        Some(exchange_id.clone()),
    )?;
    if !store::exchange::take_stock(tx, pid, quantity, product.exchange_points).await? {
        return Err(Error::internal(
            ErrorCode::ExchangeFailed,
            "locked product changed under its lock",
        ));
    }
    let after = ProductRow {
        stock: product.stock - quantity as i32,
        stock_version: product.stock_version + 1,
        sales_count: product.sales_count + quantity,
        ..product
    };

    let mut exchange_code = new_code();
    for attempt in 1.. {
        let order = NewOrder {
            exchange_id: &exchange_id,
            exchange_code: &exchange_code,
            user_id,
            product_id: pid,
            product_name: &after.name,
            quantity,
            unit_points: after.exchange_points,
            total_cost,
            request_key: key.map(IdemKey::as_str),
        };
        match store::exchange::insert_order(tx, &order).await {
            Ok(()) => break,
            // A code collision (one in ~10^12): the statement alone is
            // rolled back; draw another code.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() && attempt < 5 => {
                exchange_code = new_code();
            }
            Err(e) => return Err(e.into()),
        }
    }
    store::exchange::insert_stock_change(
        tx,
        &store::exchange::StockChange {
            product_id: pid,
            operation: operation::PURCHASE,
            delta: -(quantity as i64),
            stock_after: after.stock,
            actor_id: Some(user_id),
            reason: "积分兑换",
            related_id: Some(&exchange_id),
        },
    )
    .await?;

    let result = ExchangeResult {
        exchange_id,
        exchange_code,
        product_id: pid as u64,
        quantity,
        total_cost,
        remaining_points: account.balance(),
        remaining_stock: after.stock as i64,
    };
    let data = serde_json::to_string(&result)
        .map_err(|e| Error::internal(ErrorCode::ExchangeFailed, e))?;
    let events = account
        .save(tx, &format!("兑换{}", after.name), source::EXCHANGE)
        .await?;
    if let Some(key) = key {
        store::idempotency::insert(tx, user_id, key.as_str(), fingerprint, &data).await?;
    }
    Ok(Submitted::Fresh {
        data: DataJson(data),
        events,
        product: after,
    })
}

fn order_view(o: store::exchange::OrderRow) -> Order {
    Order {
        exchange_id: o.exchange_id,
        exchange_code: o.exchange_code,
        product_id: o.product_id as u64,
        product_name: o.product_name,
        quantity: o.quantity,
        total_cost: o.total_cost,
        status: o.status,
        created_at: to_rfc3339(o.created_at),
        redeemed_at: o.redeemed_at.map(to_rfc3339),
    }
}

pub async fn orders(state: &AppState, user_id: u64, page: Page) -> Result<Orders> {
    let (rows, total) =
        store::exchange::page_orders(&state.db, user_id, page.size, page.offset()).await?;
    Ok(Orders {
        orders: rows.into_iter().map(order_view).collect(),
        pagination: page.pagination(total),
    })
}

/// A product as a merchant writes it. On create, `name`, `category`,
/// `exchange_points` are required and `stock` is the opening stock; on
/// edit every field is optional and `stock` is refused (stock moves only
/// through the audited stock endpoint).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductInput {
    pub name: Option<String>,
    pub description: Option<String>,
    pub category: Option<String>,
    pub exchange_points: Option<u32>,
    pub stock: Option<i64>,
    pub image: Option<String>,
    pub status: Option<String>,
    pub sort_order: Option<i32>,
}

fn check_text(field: &str, value: &str, min: usize, max: usize) -> Result<()> {
    let n = value.trim().chars().count();
    if n < min || value.chars().count() > max {
        return Err(Error::Invalid(format!(
            "{field} must be {min} to {max} characters"
        )));
    }
    Ok(())
}

/// Checks a full product (after defaults or the patch were applied).
fn validate(p: &NewProduct<'_>) -> Result<()> {
    check_text("name", p.name, 1, 100)?;
    check_text("category", p.category, 1, 50)?;
    check_text("description", p.description, 0, 500)?;
    if let Some(image) = p.image {
        check_text("image", image, 0, 255)?;
    }
    if !(1..=MAX_PRICE).contains(&p.exchange_points) {
        return Err(Error::Invalid(format!(
            "exchange_points must be 1 to {MAX_PRICE}"
        )));
    }
    if !matches!(p.status, "active" | "inactive") {
        return Err(Error::Invalid("status must be active or inactive".into()));
    }
    Ok(())
}

#[instrument(skip_all, fields(merchant_id = merchant.user_id))]
pub async fn create_product(
    state: &AppState,
    merchant: &AuthUser,
    input: ProductInput,
) -> Result<Product> {
    let stock = input.stock.unwrap_or(0);
    if !(0..=MAX_STOCK).contains(&stock) {
        return Err(Error::Invalid(format!("stock must be 0 to {MAX_STOCK}")));
    }
    let (Some(name), Some(category), Some(exchange_points)) =
        (&input.name, &input.category, input.exchange_points)
    else {
        return Err(Error::Invalid(
            "name, category and exchange_points are required".into(),
        ));
    };
    let new = NewProduct {
        name,
        description: input.description.as_deref().unwrap_or(""),
        category,
        exchange_points,
        stock: stock as i32,
        image: input.image.as_deref(),
        status: input.status.as_deref().unwrap_or("active"),
        sort_order: input.sort_order.unwrap_or(0),
    };
    validate(&new)?;
    let mut tx = state.db.begin().await?;
    let pid = store::exchange::insert_product(&mut tx, &new).await?;
    store::exchange::insert_stock_change(
        &mut tx,
        &store::exchange::StockChange {
            product_id: pid,
            operation: operation::CREATE,
            delta: stock,
            stock_after: stock as i32,
            actor_id: Some(merchant.user_id),
            reason: "新建商品",
            related_id: None,
        },
    )
    .await?;
    let product = store::exchange::product_in(&mut tx, pid)
        .await?
        .ok_or_else(|| Error::internal(ErrorCode::Internal, "created product not found"))?;
    tx.commit().await?;
    Ok(product_view(&product))
}

#[instrument(skip_all, fields(merchant_id = merchant.user_id, product_id))]
pub async fn update_product(
    state: &AppState,
    merchant: &AuthUser,
    product_id: u64,
    input: ProductInput,
) -> Result<Product> {
    if input.stock.is_some() {
        return Err(Error::Invalid(
            "stock changes go through POST /api/merchant/products/{id}/stock".into(),
        ));
    }
    let pid = self::product_id(product_id)?;
    let mut tx = state.db.begin().await?;
    let current = store::exchange::product_in(&mut tx, pid)
        .await?
        .ok_or(Error::Refused(ErrorCode::ProductUnavailable))?;
    let image = match &input.image {
        Some(i) if i.is_empty() => None,
        Some(i) => Some(i.as_str()),
        None => current.image.as_deref(),
    };
    let next = NewProduct {
        name: input.name.as_deref().unwrap_or(&current.name),
        description: input.description.as_deref().unwrap_or(&current.description),
        category: input.category.as_deref().unwrap_or(&current.category),
        exchange_points: input.exchange_points.unwrap_or(current.exchange_points),
        stock: current.stock,
        image,
        status: input.status.as_deref().unwrap_or(&current.status),
        sort_order: input.sort_order.unwrap_or(current.sort_order),
    };
    validate(&next)?;
    store::exchange::update_product(&mut tx, pid, &next).await?;
    let product = store::exchange::product_in(&mut tx, pid)
        .await?
        .ok_or_else(|| Error::internal(ErrorCode::Internal, "edited product not found"))?;
    tx.commit().await?;
    Ok(product_view(&product))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockRequest {
    /// `restock` (adds `quantity`) or `admin_adjust` (adds `quantity`, which
    /// may be negative, and needs a `reason`).
    pub operation: String,
    pub quantity: i64,
    pub reason: Option<String>,
}

/// Changes a product's stock by a delta (race-free with purchases), audits
/// it and broadcasts the new stock.
#[instrument(skip_all, fields(merchant_id = merchant.user_id, product_id))]
pub async fn change_stock(
    state: &AppState,
    merchant: &AuthUser,
    product_id: u64,
    req: StockRequest,
) -> Result<Product> {
    let pid = self::product_id(product_id)?;
    let reason = req.reason.as_deref().map(str::trim).unwrap_or("");
    let (operation, default_reason) = match req.operation.as_str() {
        operation::RESTOCK if (1..=MAX_STOCK).contains(&req.quantity) => {
            (operation::RESTOCK, "补货")
        }
        operation::RESTOCK => {
            return Err(Error::Invalid(format!(
                "a restock quantity must be 1 to {MAX_STOCK}"
            )));
        }
        operation::ADMIN_ADJUST if req.quantity != 0 && req.quantity.abs() <= MAX_STOCK => {
            if reason.is_empty() {
                return Err(Error::Invalid("an admin_adjust needs a reason".into()));
            }
            (operation::ADMIN_ADJUST, "")
        }
        operation::ADMIN_ADJUST => {
            return Err(Error::Invalid(format!(
                "an admin_adjust quantity must be non-zero, at most {MAX_STOCK} either way"
            )));
        }
        _ => {
            return Err(Error::Invalid(
                "operation must be restock or admin_adjust".into(),
            ));
        }
    };
    check_text("reason", reason, 0, 255)?;
    let reason = if reason.is_empty() {
        default_reason
    } else {
        reason
    };

    let mut tx = state.db.begin().await?;
    let current = store::exchange::product_in(&mut tx, pid)
        .await?
        .ok_or(Error::Refused(ErrorCode::ProductUnavailable))?;
    if current.stock as i64 + req.quantity > MAX_STOCK {
        return Err(Error::Invalid(format!("stock cannot exceed {MAX_STOCK}")));
    }
    if !store::exchange::add_stock(&mut tx, pid, req.quantity).await? {
        return Err(Error::NotEnoughStock {
            available: current.stock as i64,
        });
    }
    let after = ProductRow {
        stock: current.stock + req.quantity as i32,
        stock_version: current.stock_version + 1,
        ..current
    };
    store::exchange::insert_stock_change(
        &mut tx,
        &store::exchange::StockChange {
            product_id: pid,
            operation,
            delta: req.quantity,
            stock_after: after.stock,
            actor_id: Some(merchant.user_id),
            reason,
            related_id: None,
        },
    )
    .await?;
    tx.commit().await?;
    broadcast_stock(state, &after, operation);
    Ok(product_view(&after))
}

pub async fn stock_changes(state: &AppState, product_id: u64, page: Page) -> Result<StockChanges> {
    let pid = self::product_id(product_id)?;
    if store::exchange::product(&state.db, pid).await?.is_none() {
        return Err(Error::Refused(ErrorCode::ProductUnavailable));
    }
    let (rows, total) =
        store::exchange::page_stock_changes(&state.db, pid, page.size, page.offset()).await?;
    Ok(StockChanges {
        changes: rows
            .into_iter()
            .map(|r| StockChange {
                change_id: r.id,
                product_id: r.product_id as u64,
                operation: r.operation,
                delta: r.delta as i64,
                stock_after: r.stock_after as i64,
                actor_id: r.actor_id,
                reason: r.reason,
                related_id: r.related_id,
                created_at: to_rfc3339(r.created_at),
            })
            .collect(),
        pagination: page.pagination(total),
    })
}

/// Redeems a counter code exactly once: the order's row is locked, so of
/// two merchants scanning the same code one redeems it and the other is
/// told it already was (4008, with when).
#[instrument(skip_all, fields(merchant_id = merchant.user_id))]
pub async fn redeem(state: &AppState, merchant: &AuthUser, code: &str) -> Result<Redemption> {
    let code = code.trim().to_ascii_uppercase();
    if code.len() != CODE_LEN || !code.bytes().all(|b| CODE_ALPHABET.contains(&b)) {
        return Err(Error::Refused(ErrorCode::ExchangeCodeNotFound));
    }
    let mut tx = state.db.begin().await?;
    let order = store::exchange::lock_order_by_code(&mut tx, &code)
        .await?
        .ok_or(Error::Refused(ErrorCode::ExchangeCodeNotFound))?;
    if order.status == "redeemed" {
        return Err(Error::AlreadyRedeemed {
            redeemed_at: order.redeemed_at.map(to_rfc3339).unwrap_or_default(),
        });
    }
    let now = chrono::Utc::now().naive_utc();
    store::exchange::mark_redeemed(&mut tx, &code, merchant.user_id, now).await?;
    tx.commit().await?;
    Ok(Redemption {
        exchange_id: order.exchange_id,
        exchange_code: order.exchange_code,
        user_id: order.user_id,
        product_id: order.product_id as u64,
        product_name: order.product_name,
        quantity: order.quantity,
        status: "redeemed".into(),
        redeemed_at: to_rfc3339(now),
    })
}
