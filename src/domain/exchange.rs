//! Points exchange: the catalogue, the purchase command, orders, the
//! merchant's product and stock tools, and redemption at the counter.

use protocol::{
    ErrorCode, ExchangeResult, Order, OrderLookup, OrderStatus, Orders, Product, ProductStatus,
    ProductUpdate, Products, Redemption, Source, StockChange, StockChanges, StockOperation,
    StockUpdate, UserId, event,
};
use serde::Deserialize;
use sqlx::MySqlPool;

use super::account::Account;
use super::{
    Audience, AuditEntry, Broadcast, Command, Ctx, Done, IdemKey, event_frame, rfc3339,
    stored_rfc3339,
};
use crate::error::{Error, Result};
use crate::rules::exchange::{
    ProductFields, check_opening_stock, check_quantity, new_code, normalize_code, purchase,
    stock_delta, validate_product,
};
use crate::rules::paging::Page;
use crate::store::exchange::{NewOrder, NewProduct, ProductRow};
use crate::store::{self, Tx};

fn product_view(p: &ProductRow) -> Product {
    Product {
        product_id: p.product_id,
        name: p.name.clone(),
        description: p.description.clone(),
        category: p.category.clone(),
        exchange_points: p.exchange_points as i64,
        stock: p.stock as i64,
        image: p.image.clone(),
        status: p.status,
        sales_count: p.sales_count as i64,
        sort_order: p.sort_order as i64,
    }
}

/// The catalogue: guests see active products (sold-out ones stay listed
/// with stock 0), merchants see all.
pub async fn products(
    db: &MySqlPool,
    category: Option<&str>,
    page: Page,
    active_only: bool,
) -> Result<Products> {
    let category = category.filter(|c| !c.is_empty());
    let (rows, total) =
        store::exchange::page_products(db, category, active_only, page.size, page.offset()).await?;
    Ok(Products {
        products: rows.iter().map(product_view).collect(),
        pagination: page.pagination(total),
    })
}

/// `stock_update` for every socket, ordered by the product's stock version:
/// the hub drops one that lost a race with a newer one.
fn stock_broadcast(p: &ProductRow, operation: StockOperation, ctx: &Ctx) -> Broadcast {
    let update = StockUpdate {
        product_id: p.product_id,
        stock: p.stock as i64,
        product_name: p.name.clone(),
        operation,
        timestamp: rfc3339(ctx.now),
    };
    Broadcast {
        audience: Audience::Everyone,
        version: Some((p.product_id, p.stock_version)),
        coalesce: None,
        frame: event_frame(event::STOCK_UPDATE, None, &update),
    }
}

/// `product_update` for every socket: what guests see of a product changed.
fn product_broadcast(p: &ProductRow, ctx: &Ctx) -> Broadcast {
    Broadcast {
        coalesce: Some(p.product_id),
        ..Broadcast::new(
            Audience::Everyone,
            event::PRODUCT_UPDATE,
            &ProductUpdate {
                product_id: p.product_id,
                name: p.name.clone(),
                exchange_points: p.exchange_points as i64,
                status: p.status,
                stock: p.stock as i64,
                timestamp: rfc3339(ctx.now),
            },
        )
    }
}

/// Exchanges `quantity` of a product for points in one transaction.
///
/// Invariants the transaction protects:
/// - the user's row is locked first, then the product's: points and stock
///   are checked and taken under those locks, so neither goes below zero
///   whatever the concurrency, and the price charged is the price stored;
/// - a refusal (4004, 4005, 4006) leaves nothing changed;
/// - the order, the stock audit row, the ledger row and the user event
///   commit together or not at all.
pub struct Submit<'a> {
    pub user_id: UserId,
    /// As the client sent it: an id beyond the column's range is 4006.
    pub product_id: u64,
    pub quantity: u32,
    pub key: Option<&'a IdemKey>,
}

impl Command for Submit<'_> {
    type Reply = ExchangeResult;
    const NAME: &'static str = "exchange.submit";
    const FAILED: ErrorCode = ErrorCode::ExchangeFailed;

    fn check(&self) -> Result<()> {
        check_quantity(self.quantity)
    }

    fn fingerprint(&self) -> String {
        format!("exchange.submit:{}:{}", self.product_id, self.quantity)
    }

    async fn run(&self, tx: &mut Tx, ctx: &mut Ctx) -> Result<Done<ExchangeResult>> {
        let pid = crate::rules::exchange::product_id(self.product_id)?;
        let quantity = self.quantity;
        let mut account = Account::lock(tx, self.user_id).await?;
        let product = store::exchange::lock_product(tx, pid)
            .await?
            .filter(|p| p.status == ProductStatus::Active)
            .ok_or(Error::Refused(ErrorCode::ProductUnavailable))?;
        let bought = purchase(product.exchange_points, product.stock as i64, quantity)?;
        let exchange_id =
            ulid::Ulid::from_datetime_with_source(ctx.now.into(), &mut ctx.rng).to_string();
        account.spend(
            bought.total_cost,
            Source::Exchange,
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
            stock: bought.stock_after as i32,
            stock_version: product.stock_version + 1,
            sales_count: product.sales_count + quantity,
            ..product
        };

        let mut exchange_code = new_code(&mut ctx.rng);
        for attempt in 1.. {
            let order = NewOrder {
                exchange_id: &exchange_id,
                exchange_code: &exchange_code,
                user_id: self.user_id,
                product_id: pid,
                product_name: &after.name,
                quantity,
                unit_points: after.exchange_points,
                total_cost: bought.total_cost,
                request_key: self.key.map(IdemKey::as_str),
            };
            match store::exchange::insert_order(tx, &order).await {
                Ok(()) => break,
                // A code collision (one in ~10^12): the statement alone is
                // rolled back; draw another code.
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() && attempt < 5 => {
                    exchange_code = new_code(&mut ctx.rng);
                }
                Err(e) => return Err(e.into()),
            }
        }
        store::exchange::insert_stock_change(
            tx,
            &store::exchange::StockChange {
                product_id: pid,
                operation: StockOperation::Purchase,
                delta: -(quantity as i64),
                stock_after: after.stock,
                actor_id: Some(self.user_id),
                reason: "积分兑换",
                related_id: Some(&exchange_id),
            },
        )
        .await?;

        let remaining_points = account.balance();
        let events = account
            .save(
                tx,
                &format!("兑换{}", after.name),
                Source::Exchange,
                ctx.now,
            )
            .await?;
        let stock = stock_broadcast(&after, StockOperation::Purchase, ctx);
        Ok(Done::new(ExchangeResult {
            exchange_id,
            exchange_code,
            product_id: pid,
            quantity,
            total_cost: bought.total_cost,
            remaining_points,
            remaining_stock: after.stock as i64,
        })
        .with(|e| {
            e.events = events;
            e.broadcasts.push(stock);
        }))
    }
}

fn order_view(o: store::exchange::OrderRow) -> Order {
    Order {
        exchange_id: o.exchange_id,
        exchange_code: o.exchange_code,
        product_id: o.product_id,
        product_name: o.product_name,
        quantity: o.quantity,
        total_cost: o.total_cost,
        status: o.status,
        created_at: stored_rfc3339(o.created_at),
        redeemed_at: o.redeemed_at.map(stored_rfc3339),
    }
}

pub async fn orders(db: &MySqlPool, user_id: UserId, page: Page) -> Result<Orders> {
    let (rows, total) = store::exchange::page_orders(db, user_id, page.size, page.offset()).await?;
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
    pub status: Option<ProductStatus>,
    pub sort_order: Option<i32>,
}

fn audit_value(p: &ProductRow) -> Option<serde_json::Value> {
    serde_json::to_value(product_view(p)).ok()
}

pub struct CreateProduct {
    pub merchant: UserId,
    pub input: ProductInput,
}

impl CreateProduct {
    fn fields(&self) -> Result<(NewProduct<'_>, i64)> {
        let input = &self.input;
        let stock = input.stock.unwrap_or(0);
        check_opening_stock(stock)?;
        let (Some(name), Some(category), Some(exchange_points)) =
            (&input.name, &input.category, input.exchange_points)
        else {
            return Err(Error::Invalid(
                "name、category 和 exchange_points 为必填项".into(),
            ));
        };
        let new = NewProduct {
            name,
            description: input.description.as_deref().unwrap_or(""),
            category,
            exchange_points,
            stock: stock as i32,
            image: input.image.as_deref(),
            status: input.status.unwrap_or(ProductStatus::Active),
            sort_order: input.sort_order.unwrap_or(0),
        };
        validate_product(&ProductFields {
            name: new.name,
            description: new.description,
            category: new.category,
            exchange_points: new.exchange_points,
            image: new.image,
        })?;
        Ok((new, stock))
    }
}

impl Command for CreateProduct {
    type Reply = Product;
    const NAME: &'static str = "product.create";

    fn check(&self) -> Result<()> {
        self.fields().map(|_| ())
    }

    async fn run(&self, tx: &mut Tx, ctx: &mut Ctx) -> Result<Done<Product>> {
        let (new, stock) = self.fields()?;
        let pid = store::exchange::insert_product(tx, &new).await?;
        store::exchange::insert_stock_change(
            tx,
            &store::exchange::StockChange {
                product_id: pid,
                operation: StockOperation::Create,
                delta: stock,
                stock_after: stock as i32,
                actor_id: Some(self.merchant),
                reason: "新建商品",
                related_id: None,
            },
        )
        .await?;
        let product = store::exchange::lock_product(tx, pid)
            .await?
            .ok_or_else(|| Error::internal(ErrorCode::Internal, "created product not found"))?;
        let audit = AuditEntry {
            actor_id: self.merchant,
            action: "product.create",
            target: format!("product:{pid}"),
            before: None,
            after: audit_value(&product),
            reason: None,
            points: None,
        };
        let update = product_broadcast(&product, ctx);
        Ok(Done::new(product_view(&product)).with(|e| {
            e.audit.push(audit);
            e.broadcasts.push(update);
        }))
    }
}

pub struct UpdateProduct {
    pub merchant: UserId,
    pub product_id: u64,
    pub input: ProductInput,
}

impl Command for UpdateProduct {
    type Reply = Product;
    const NAME: &'static str = "product.update";

    fn check(&self) -> Result<()> {
        if self.input.stock.is_some() {
            return Err(Error::invalid(
                "stock",
                "只能通过 POST /api/merchant/products/{id}/stock 修改",
            ));
        }
        Ok(())
    }

    async fn run(&self, tx: &mut Tx, ctx: &mut Ctx) -> Result<Done<Product>> {
        let pid = crate::rules::exchange::product_id(self.product_id)?;
        let input = &self.input;
        let current = store::exchange::lock_product(tx, pid)
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
            status: input.status.unwrap_or(current.status),
            sort_order: input.sort_order.unwrap_or(current.sort_order),
        };
        validate_product(&ProductFields {
            name: next.name,
            description: next.description,
            category: next.category,
            exchange_points: next.exchange_points,
            image: next.image,
        })?;
        store::exchange::update_product(tx, pid, &next).await?;
        let product = store::exchange::lock_product(tx, pid)
            .await?
            .ok_or_else(|| Error::internal(ErrorCode::Internal, "edited product not found"))?;
        let audit = AuditEntry {
            actor_id: self.merchant,
            action: "product.update",
            target: format!("product:{pid}"),
            before: audit_value(&current),
            after: audit_value(&product),
            reason: None,
            points: None,
        };
        let update = product_broadcast(&product, ctx);
        Ok(Done::new(product_view(&product)).with(|e| {
            e.audit.push(audit);
            e.broadcasts.push(update);
        }))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockRequest {
    /// `restock` (adds `quantity`) or `admin_adjust` (adds `quantity`, which
    /// may be negative, and needs a `reason`).
    pub operation: StockOperation,
    pub quantity: i64,
    pub reason: Option<String>,
}

/// Changes a product's stock by a delta (race-free with purchases), audits
/// it and broadcasts the new stock.
pub struct ChangeStock {
    pub merchant: UserId,
    pub product_id: u64,
    pub request: StockRequest,
}

impl Command for ChangeStock {
    type Reply = Product;
    const NAME: &'static str = "stock.change";

    async fn run(&self, tx: &mut Tx, ctx: &mut Ctx) -> Result<Done<Product>> {
        let pid = crate::rules::exchange::product_id(self.product_id)?;
        let req = &self.request;
        let current = store::exchange::lock_product(tx, pid)
            .await?
            .ok_or(Error::Refused(ErrorCode::ProductUnavailable))?;
        let change = stock_delta(
            req.operation,
            req.quantity,
            req.reason.as_deref(),
            current.stock as i64,
        )?;
        if !store::exchange::add_stock(tx, pid, change.delta).await? {
            return Err(Error::NotEnoughStock {
                available: current.stock as i64,
            });
        }
        let after = ProductRow {
            stock: current.stock + change.delta as i32,
            stock_version: current.stock_version + 1,
            ..current.clone()
        };
        store::exchange::insert_stock_change(
            tx,
            &store::exchange::StockChange {
                product_id: pid,
                operation: change.operation,
                delta: change.delta,
                stock_after: after.stock,
                actor_id: Some(self.merchant),
                reason: &change.reason,
                related_id: None,
            },
        )
        .await?;
        let audit = AuditEntry {
            actor_id: self.merchant,
            action: "stock.change",
            target: format!("product:{pid}"),
            before: Some(serde_json::json!({ "stock": current.stock })),
            after: Some(serde_json::json!({ "stock": after.stock, "operation": change.operation })),
            reason: Some(change.reason.clone()),
            points: None,
        };
        let stock = stock_broadcast(&after, change.operation, ctx);
        Ok(Done::new(product_view(&after)).with(|e| {
            e.audit.push(audit);
            e.broadcasts.push(stock);
        }))
    }
}

pub async fn stock_changes(db: &MySqlPool, product_id: u64, page: Page) -> Result<StockChanges> {
    let pid = crate::rules::exchange::product_id(product_id)?;
    if !store::exchange::exists(db, pid).await? {
        return Err(Error::Refused(ErrorCode::ProductUnavailable));
    }
    let (rows, total) =
        store::exchange::page_stock_changes(db, pid, page.size, page.offset()).await?;
    Ok(StockChanges {
        changes: rows
            .into_iter()
            .map(|r| StockChange {
                change_id: r.id,
                product_id: r.product_id,
                operation: r.operation,
                delta: r.delta as i64,
                stock_after: r.stock_after as i64,
                actor_id: r.actor_id,
                reason: r.reason,
                related_id: r.related_id,
                created_at: stored_rfc3339(r.created_at),
            })
            .collect(),
        pagination: page.pagination(total),
    })
}

/// Redeems a counter code exactly once: the order's row is locked, so of
/// two merchants scanning the same code one redeems it and the other is
/// told it already was (4008, with when).
pub struct Redeem<'a> {
    pub merchant: UserId,
    pub code: &'a str,
}

impl Command for Redeem<'_> {
    type Reply = Redemption;
    const NAME: &'static str = "order.redeem";

    async fn run(&self, tx: &mut Tx, ctx: &mut Ctx) -> Result<Done<Redemption>> {
        let code =
            normalize_code(self.code).ok_or(Error::Refused(ErrorCode::ExchangeCodeNotFound))?;
        let order = store::exchange::lock_order_by_code(tx, &code)
            .await?
            .ok_or(Error::Refused(ErrorCode::ExchangeCodeNotFound))?;
        if order.status == OrderStatus::Redeemed {
            return Err(Error::AlreadyRedeemed {
                redeemed_at: order.redeemed_at.map(stored_rfc3339).unwrap_or_default(),
            });
        }
        let now = ctx.now.naive_utc();
        store::exchange::mark_redeemed(tx, &code, self.merchant, now).await?;
        let audit = AuditEntry {
            actor_id: self.merchant,
            action: "order.redeem",
            target: format!("order:{}", order.exchange_id),
            before: Some(serde_json::json!({ "status": order.status })),
            after: Some(serde_json::json!({ "status": OrderStatus::Redeemed })),
            reason: None,
            points: None,
        };
        Ok(Done::new(Redemption {
            exchange_id: order.exchange_id,
            exchange_code: order.exchange_code,
            user_id: order.user_id,
            product_id: order.product_id,
            product_name: order.product_name,
            quantity: order.quantity,
            status: OrderStatus::Redeemed,
            redeemed_at: stored_rfc3339(now),
        })
        .with(|e| e.audit.push(audit)))
    }
}

/// What a counter code is for (4007 when it names no order).
pub async fn order_by_code(db: &MySqlPool, typed: &str) -> Result<OrderLookup> {
    let code = normalize_code(typed).ok_or(Error::Refused(ErrorCode::ExchangeCodeNotFound))?;
    let (o, mobile) = store::exchange::order_by_code(db, &code)
        .await?
        .ok_or(Error::Refused(ErrorCode::ExchangeCodeNotFound))?;
    Ok(OrderLookup {
        exchange_id: o.exchange_id,
        exchange_code: o.exchange_code,
        user_id: o.user_id,
        user_mobile: crate::rules::input::mask_mobile(&mobile),
        product_id: o.product_id,
        product_name: o.product_name,
        quantity: o.quantity,
        total_cost: o.total_cost,
        status: o.status,
        created_at: stored_rfc3339(o.created_at),
        redeemed_at: o.redeemed_at.map(stored_rfc3339),
    })
}

/// The ids the merchant tools take in a path.
pub fn parse_product_path(raw: &str) -> Result<u64> {
    raw.parse()
        .map_err(|_| Error::invalid("id", "须为正整数（商品编号）"))
}
