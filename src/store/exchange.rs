//! Products, exchange orders and the stock audit.

use super::Tx;
use chrono::NaiveDateTime;
use protocol::{OrderStatus, ProductId, ProductStatus, StockOperation, UserId};
use sqlx::{FromRow, MySqlPool, QueryBuilder};

#[derive(Debug, Clone, FromRow)]
pub struct ProductRow {
    pub product_id: ProductId,
    pub name: String,
    pub description: String,
    pub category: String,
    pub exchange_points: u32,
    pub stock: i32,
    pub stock_version: u64,
    pub image: Option<String>,
    pub status: ProductStatus,
    pub sales_count: u32,
    pub sort_order: i32,
}

const PRODUCT_SELECT: &str = "SELECT product_id, name, description, category, exchange_points, stock, stock_version, \
     image, status, sales_count, sort_order FROM products";

pub async fn exists(pool: &MySqlPool, product_id: ProductId) -> sqlx::Result<bool> {
    let row: Option<(ProductId,)> =
        sqlx::query_as("SELECT product_id FROM products WHERE product_id = ?")
            .bind(product_id)
            .fetch_optional(pool)
            .await?;
    Ok(row.is_some())
}

/// Locks a product's row for the rest of the transaction and reads it.
pub async fn lock_product(tx: &mut Tx, product_id: ProductId) -> sqlx::Result<Option<ProductRow>> {
    sqlx::query_as(
        "SELECT product_id, name, description, category, exchange_points, stock, stock_version, \
         image, status, sales_count, sort_order FROM products WHERE product_id = ? FOR UPDATE",
    )
    .bind(product_id)
    .fetch_optional(&mut **tx)
    .await
}

/// A page of products, by `sort_order` then id; guests see active ones only.
pub async fn page_products(
    pool: &MySqlPool,
    category: Option<&str>,
    active_only: bool,
    limit: u32,
    offset: u64,
) -> sqlx::Result<(Vec<ProductRow>, u64)> {
    let filter = |qb: &mut QueryBuilder<sqlx::MySql>| {
        qb.push(" WHERE 1 = 1");
        if active_only {
            qb.push(" AND status = 'active'");
        }
        if let Some(c) = category {
            qb.push(" AND category = ").push_bind(c.to_string());
        }
    };
    let mut qb = QueryBuilder::new(PRODUCT_SELECT);
    filter(&mut qb);
    qb.push(" ORDER BY sort_order, product_id LIMIT ")
        .push_bind(limit)
        .push(" OFFSET ")
        .push_bind(offset);
    let rows = qb.build_query_as::<ProductRow>().fetch_all(pool).await?;
    let mut qb = QueryBuilder::new("SELECT COUNT(*) FROM products");
    filter(&mut qb);
    let (total,): (i64,) = qb.build_query_as().fetch_one(pool).await?;
    Ok((rows, total as u64))
}

/// Takes `quantity` units at the price the buyer saw. False when the product
/// is gone, inactive, repriced or short: the caller reads it to say which.
pub async fn take_stock(
    tx: &mut Tx,
    product_id: ProductId,
    quantity: u32,
    unit_points: u32,
) -> sqlx::Result<bool> {
    let res = sqlx::query(
        "UPDATE products SET stock = stock - ?, sales_count = sales_count + ?, stock_version = stock_version + 1 \
         WHERE product_id = ? AND status = 'active' AND exchange_points = ? AND stock >= ?",
    )
    .bind(quantity)
    .bind(quantity)
    .bind(product_id)
    .bind(unit_points)
    .bind(quantity)
    .execute(&mut **tx)
    .await?;
    Ok(res.rows_affected() == 1)
}

/// Adds `delta` (possibly negative) to the stock unless it would go below
/// zero. False when the product is missing or the stock too low.
pub async fn add_stock(tx: &mut Tx, product_id: ProductId, delta: i64) -> sqlx::Result<bool> {
    let res = sqlx::query(
        "UPDATE products SET stock = stock + ?, stock_version = stock_version + 1 \
         WHERE product_id = ? AND stock + ? >= 0",
    )
    .bind(delta)
    .bind(product_id)
    .bind(delta)
    .execute(&mut **tx)
    .await?;
    Ok(res.rows_affected() == 1)
}

#[derive(Debug, Clone)]
pub struct NewProduct<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub category: &'a str,
    pub exchange_points: u32,
    pub stock: i32,
    pub image: Option<&'a str>,
    pub status: ProductStatus,
    pub sort_order: i32,
}

pub async fn insert_product(tx: &mut Tx, p: &NewProduct<'_>) -> sqlx::Result<ProductId> {
    let res = sqlx::query(
        "INSERT INTO products (name, description, category, exchange_points, stock, image, status, sort_order) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(p.name)
    .bind(p.description)
    .bind(p.category)
    .bind(p.exchange_points)
    .bind(p.stock)
    .bind(p.image)
    .bind(p.status)
    .bind(p.sort_order)
    .execute(&mut **tx)
    .await?;
    Ok(ProductId(res.last_insert_id() as u32))
}

/// Writes the editable fields (not stock, which only moves through
/// `take_stock`/`add_stock` and is audited).
pub async fn update_product(
    tx: &mut Tx,
    product_id: ProductId,
    p: &NewProduct<'_>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE products SET name = ?, description = ?, category = ?, exchange_points = ?, image = ?, \
         status = ?, sort_order = ? WHERE product_id = ?",
    )
    .bind(p.name)
    .bind(p.description)
    .bind(p.category)
    .bind(p.exchange_points)
    .bind(p.image)
    .bind(p.status)
    .bind(p.sort_order)
    .bind(product_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub struct StockChange<'a> {
    pub product_id: ProductId,
    pub operation: StockOperation,
    pub delta: i64,
    pub stock_after: i32,
    pub actor_id: Option<UserId>,
    pub reason: &'a str,
    pub related_id: Option<&'a str>,
}

pub async fn insert_stock_change(tx: &mut Tx, c: &StockChange<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO stock_changes (product_id, operation, delta, stock_after, actor_id, reason, related_id) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(c.product_id)
    .bind(c.operation)
    .bind(c.delta)
    .bind(c.stock_after)
    .bind(c.actor_id)
    .bind(c.reason)
    .bind(c.related_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, FromRow)]
pub struct StockChangeRow {
    pub id: u64,
    pub product_id: ProductId,
    pub operation: StockOperation,
    pub delta: i32,
    pub stock_after: i32,
    pub actor_id: Option<UserId>,
    pub reason: String,
    pub related_id: Option<String>,
    pub created_at: NaiveDateTime,
}

pub async fn page_stock_changes(
    pool: &MySqlPool,
    product_id: ProductId,
    limit: u32,
    offset: u64,
) -> sqlx::Result<(Vec<StockChangeRow>, u64)> {
    let rows = sqlx::query_as(
        "SELECT id, product_id, operation, delta, stock_after, actor_id, reason, related_id, created_at \
         FROM stock_changes WHERE product_id = ? ORDER BY id DESC LIMIT ? OFFSET ?",
    )
    .bind(product_id)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    let (total,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM stock_changes WHERE product_id = ?")
            .bind(product_id)
            .fetch_one(pool)
            .await?;
    Ok((rows, total as u64))
}

pub struct NewOrder<'a> {
    pub exchange_id: &'a str,
    pub exchange_code: &'a str,
    pub user_id: UserId,
    pub product_id: ProductId,
    pub product_name: &'a str,
    pub quantity: u32,
    pub unit_points: u32,
    pub total_cost: i64,
    pub request_key: Option<&'a str>,
}

pub async fn insert_order(tx: &mut Tx, o: &NewOrder<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO exchange_orders (exchange_id, exchange_code, user_id, product_id, product_name, quantity, \
         unit_points, total_cost, request_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(o.exchange_id)
    .bind(o.exchange_code)
    .bind(o.user_id)
    .bind(o.product_id)
    .bind(o.product_name)
    .bind(o.quantity)
    .bind(o.unit_points)
    .bind(o.total_cost)
    .bind(o.request_key)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, FromRow)]
pub struct OrderRow {
    pub exchange_id: String,
    pub exchange_code: String,
    pub user_id: UserId,
    pub product_id: ProductId,
    pub product_name: String,
    pub quantity: u32,
    pub total_cost: i64,
    pub status: OrderStatus,
    pub redeemed_at: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
}

pub async fn page_orders(
    pool: &MySqlPool,
    user_id: UserId,
    limit: u32,
    offset: u64,
) -> sqlx::Result<(Vec<OrderRow>, u64)> {
    let rows = sqlx::query_as(
        "SELECT exchange_id, exchange_code, user_id, product_id, product_name, quantity, total_cost, status, \
         redeemed_at, created_at FROM exchange_orders WHERE user_id = ? ORDER BY id DESC LIMIT ? OFFSET ?",
    )
    .bind(user_id)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    let (total,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM exchange_orders WHERE user_id = ?")
        .bind(user_id)
        .fetch_one(pool)
        .await?;
    Ok((rows, total as u64))
}

/// Locks an order by its counter code.
/// An order and its guest's mobile, by counter code.
pub async fn order_by_code(
    pool: &MySqlPool,
    code: &str,
) -> sqlx::Result<Option<(OrderRow, String)>> {
    let order: Option<OrderRow> = sqlx::query_as(
        "SELECT exchange_id, exchange_code, user_id, product_id, product_name, quantity, total_cost, status, \
         redeemed_at, created_at FROM exchange_orders WHERE exchange_code = ?",
    )
    .bind(code)
    .fetch_optional(pool)
    .await?;
    let Some(order) = order else { return Ok(None) };
    let (mobile,): (String,) = sqlx::query_as("SELECT mobile FROM users WHERE user_id = ?")
        .bind(order.user_id)
        .fetch_one(pool)
        .await?;
    Ok(Some((order, mobile)))
}

pub async fn lock_order_by_code(tx: &mut Tx, code: &str) -> sqlx::Result<Option<OrderRow>> {
    sqlx::query_as(
        "SELECT exchange_id, exchange_code, user_id, product_id, product_name, quantity, total_cost, status, \
         redeemed_at, created_at FROM exchange_orders WHERE exchange_code = ? FOR UPDATE",
    )
    .bind(code)
    .fetch_optional(&mut **tx)
    .await
}

pub async fn mark_redeemed(
    tx: &mut Tx,
    code: &str,
    merchant_id: UserId,
    at: NaiveDateTime,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE exchange_orders SET status = 'redeemed', redeemed_at = ?, redeemed_by = ? \
         WHERE exchange_code = ?",
    )
    .bind(at)
    .bind(merchant_id)
    .bind(code)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
