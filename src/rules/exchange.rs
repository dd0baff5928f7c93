//! The exchange's arithmetic and the merchant's product rules, as values.

use protocol::{ErrorCode, StockOperation};
use rand::Rng;

use crate::error::{Error, Result};

pub const MAX_QUANTITY: u32 = 99;
pub const MAX_STOCK: i64 = 1_000_000;
pub const MAX_PRICE: u32 = 10_000_000;
/// Counter codes: no 0/O, 1/I/L, so they read out loud without mistakes.
pub const CODE_ALPHABET: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
pub const CODE_LEN: usize = 8;

pub fn check_quantity(quantity: u32) -> Result<()> {
    if (1..=MAX_QUANTITY).contains(&quantity) {
        Ok(())
    } else {
        Err(Error::invalid(
            "quantity",
            format!("须为 1 到 {MAX_QUANTITY} 的整数"),
        ))
    }
}

/// What a purchase of `quantity` at `unit_points` does to a product with
/// `stock` left: its cost and the stock after, or the refusal (4004 with
/// what is left). The points side is the ledger's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purchase {
    pub total_cost: i64,
    pub stock_after: i64,
}

pub fn purchase(unit_points: u32, stock: i64, quantity: u32) -> Result<Purchase> {
    check_quantity(quantity)?;
    if stock < quantity as i64 {
        return Err(Error::NotEnoughStock {
            available: stock.max(0),
        });
    }
    Ok(Purchase {
        total_cost: unit_points as i64 * quantity as i64,
        stock_after: stock - quantity as i64,
    })
}

pub fn new_code(rng: &mut impl Rng) -> String {
    (0..CODE_LEN)
        .map(|_| CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())] as char)
        .collect()
}

/// A code as typed at the counter (any case, spaces around), or `None` when
/// it cannot be a code at all.
pub fn normalize_code(typed: &str) -> Option<String> {
    let code = typed.trim().to_ascii_uppercase();
    (code.len() == CODE_LEN && code.bytes().all(|b| CODE_ALPHABET.contains(&b))).then_some(code)
}

/// A merchant's stock change, checked: the operation, the delta and the
/// reason to audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockDelta {
    pub operation: StockOperation,
    pub delta: i64,
    pub reason: String,
}

/// `restock` adds 1–1 000 000; `admin_adjust` adds a non-zero amount of at
/// most 1 000 000 either way and needs a reason. Neither may take the stock
/// below zero (4004) or above the maximum.
pub fn stock_delta(
    operation: StockOperation,
    quantity: i64,
    reason: Option<&str>,
    current: i64,
) -> Result<StockDelta> {
    let reason = reason.map(str::trim).unwrap_or("");
    check_text("reason", reason, 0, 255)?;
    let reason = match operation {
        StockOperation::Restock if (1..=MAX_STOCK).contains(&quantity) => {
            if reason.is_empty() {
                "补货"
            } else {
                reason
            }
        }
        StockOperation::Restock => {
            return Err(Error::invalid(
                "quantity",
                format!("补货数量须为 1 到 {MAX_STOCK}"),
            ));
        }
        StockOperation::AdminAdjust if quantity != 0 && quantity.abs() <= MAX_STOCK => {
            if reason.is_empty() {
                return Err(Error::invalid("reason", "调整库存须填写原因"));
            }
            reason
        }
        StockOperation::AdminAdjust => {
            return Err(Error::invalid(
                "quantity",
                format!("调整数量须为非零且不超过 {MAX_STOCK}"),
            ));
        }
        StockOperation::Create | StockOperation::Purchase => {
            return Err(Error::invalid("operation", "须为 restock 或 admin_adjust"));
        }
    };
    if current + quantity < 0 {
        return Err(Error::NotEnoughStock {
            available: current.max(0),
        });
    }
    if current + quantity > MAX_STOCK {
        return Err(Error::invalid(
            "quantity",
            format!("库存不能超过 {MAX_STOCK}"),
        ));
    }
    Ok(StockDelta {
        operation,
        delta: quantity,
        reason: reason.to_string(),
    })
}

/// A product as it will be stored, after defaults or an edit were applied.
#[derive(Debug, Clone)]
pub struct ProductFields<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub category: &'a str,
    pub exchange_points: u32,
    pub image: Option<&'a str>,
}

pub fn validate_product(p: &ProductFields<'_>) -> Result<()> {
    check_text("name", p.name, 1, 100)?;
    check_text("category", p.category, 1, 50)?;
    check_text("description", p.description, 0, 500)?;
    if let Some(image) = p.image {
        check_text("image", image, 0, 255)?;
    }
    if !(1..=MAX_PRICE).contains(&p.exchange_points) {
        return Err(Error::invalid(
            "exchange_points",
            format!("须为 1 到 {MAX_PRICE}"),
        ));
    }
    Ok(())
}

pub fn check_opening_stock(stock: i64) -> Result<()> {
    if (0..=MAX_STOCK).contains(&stock) {
        Ok(())
    } else {
        Err(Error::invalid("stock", format!("须为 0 到 {MAX_STOCK}")))
    }
}

/// A text field of `min` to `max` characters (trimmed for the minimum).
pub fn check_text(field: &'static str, value: &str, min: usize, max: usize) -> Result<()> {
    let n = value.trim().chars().count();
    if n < min || value.chars().count() > max {
        return Err(Error::invalid(
            field,
            format!("长度须为 {min} 到 {max} 个字符"),
        ));
    }
    Ok(())
}

/// Product ids beyond the column's range name no product.
pub fn product_id(id: u64) -> Result<protocol::ProductId> {
    u32::try_from(id)
        .map(protocol::ProductId)
        .map_err(|_| Error::Refused(ErrorCode::ProductUnavailable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn codes_read_back_whatever_their_case() {
        let mut rng = rand::rng();
        let code = new_code(&mut rng);
        assert_eq!(
            normalize_code(&format!(" {} ", code.to_lowercase())),
            Some(code)
        );
        assert_eq!(normalize_code("O0I1L000"), None);
    }

    proptest! {
        /// A purchase never takes stock below zero and always costs the
        /// unit price times the quantity.
        #[test]
        fn a_purchase_never_oversells(unit in 1u32..=MAX_PRICE, stock in 0i64..=MAX_STOCK, quantity in 0u32..=120) {
            match purchase(unit, stock, quantity) {
                Ok(p) => {
                    prop_assert!(p.stock_after >= 0);
                    prop_assert_eq!(p.stock_after, stock - quantity as i64);
                    prop_assert_eq!(p.total_cost, unit as i64 * quantity as i64);
                }
                Err(Error::NotEnoughStock { available }) => {
                    prop_assert!((quantity as i64) > stock);
                    prop_assert_eq!(available, stock);
                }
                Err(_) => prop_assert!(quantity == 0 || quantity > MAX_QUANTITY),
            }
        }

        /// A merchant's change never leaves the stock outside 0–1 000 000.
        #[test]
        fn a_stock_change_keeps_the_stock_in_range(
            current in 0i64..=MAX_STOCK,
            quantity in -2_000_000i64..=2_000_000,
            adjust in any::<bool>(),
        ) {
            let op = if adjust { StockOperation::AdminAdjust } else { StockOperation::Restock };
            if let Ok(d) = stock_delta(op, quantity, Some("盘点"), current) {
                prop_assert!((0..=MAX_STOCK).contains(&(current + d.delta)));
            }
        }
    }
}
