//! Demo data for development: the 8-prize wheel, a merchant account
//! (`13900000000`) and a few products. Only seeded into an empty database.

use sqlx::MySqlPool;

use crate::domain::auth::find_or_create_user;
use crate::error::Error;

pub const DEMO_MERCHANT_MOBILE: &str = "13900000000";

/// (name, type, value, angle, color, probability, activity, valuable, stock)
type PrizeSeed = (
    &'static str,
    &'static str,
    &'static str,
    u16,
    &'static str,
    &'static str,
    bool,
    bool,
    Option<i32>,
);

const PRIZES: [PrizeSeed; 8] = [
    (
        "谢谢参与",
        "empty",
        "0.00",
        0,
        "#B0BEC5",
        "0.3000",
        false,
        false,
        None,
    ),
    (
        "10积分", "points", "10.00", 45, "#FFD54F", "0.2500", false, false, None,
    ),
    (
        "50积分", "points", "50.00", 90, "#FFB74D", "0.1500", false, false, None,
    ),
    (
        "免费饮品券",
        "coupon",
        "15.00",
        135,
        "#4FC3F7",
        "0.1000",
        false,
        true,
        None,
    ),
    (
        "100积分",
        "points",
        "100.00",
        180,
        "#81C784",
        "0.0800",
        false,
        true,
        None,
    ),
    (
        "8折优惠券",
        "coupon",
        "20.00",
        225,
        "#BA68C8",
        "0.0800",
        false,
        true,
        Some(500),
    ),
    (
        "招牌甜品",
        "physical",
        "38.00",
        270,
        "#F06292",
        "0.0350",
        true,
        true,
        Some(100),
    ),
    (
        "500积分",
        "points",
        "500.00",
        315,
        "#E57373",
        "0.0050",
        true,
        true,
        Some(20),
    ),
];

/// (name, description, category, points, stock, sort)
const PRODUCTS: [(&str, &str, &str, u32, i32, i32); 5] = [
    (
        "招牌奶茶",
        "门店招牌奶茶一杯，可选冷热",
        "饮品",
        300,
        200,
        1,
    ),
    ("美式咖啡", "现磨美式咖啡一杯", "饮品", 250, 200, 2),
    ("提拉米苏", "意式经典甜品一份", "甜品", 600, 50, 3),
    (
        "十元代金券",
        "满50元可用，堂食外卖通用",
        "优惠券",
        800,
        100,
        4,
    ),
    ("定制帆布袋", "餐厅限量周边帆布袋", "周边", 2000, 10, 5),
];

pub async fn seed_demo(db: &MySqlPool) -> Result<(), Error> {
    let mut tx = db.begin().await?;
    // Serializes servers starting together on one empty database: the
    // second sees the first one's rows and seeds nothing.
    sqlx::query("SELECT version FROM lottery_settings WHERE id = 1 FOR UPDATE")
        .execute(&mut *tx)
        .await?;
    let (users, prizes): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM users), (SELECT COUNT(*) FROM lottery_prizes)",
    )
    .fetch_one(&mut *tx)
    .await?;
    if users > 0 || prizes > 0 {
        return Ok(());
    }
    for (name, kind, value, angle, color, probability, activity, valuable, stock) in PRIZES {
        sqlx::query(
            "INSERT INTO lottery_prizes (prize_name, prize_type, prize_value, angle, color, probability, is_activity, is_valuable, stock) \
             VALUES (?, ?, CAST(? AS DECIMAL(10,2)), ?, ?, CAST(? AS DECIMAL(6,4)), ?, ?, ?)",
        )
        .bind(name)
        .bind(kind)
        .bind(value)
        .bind(angle)
        .bind(color)
        .bind(probability)
        .bind(activity)
        .bind(valuable)
        .bind(stock)
        .execute(&mut *tx)
        .await?;
    }
    for (name, description, category, points, stock, sort) in PRODUCTS {
        sqlx::query(
            "INSERT INTO products (name, description, category, exchange_points, stock, sort_order) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(name)
        .bind(description)
        .bind(category)
        .bind(points)
        .bind(stock)
        .bind(sort)
        .execute(&mut *tx)
        .await?;
    }
    let (merchant, _, _) = find_or_create_user(&mut tx, DEMO_MERCHANT_MOBILE).await?;
    sqlx::query("UPDATE users SET is_merchant = 1, nickname = '演示商家' WHERE user_id = ?")
        .bind(merchant.user_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(
        merchant = DEMO_MERCHANT_MOBILE,
        "seeded demo data: 8 prizes, 5 products, a merchant"
    );
    Ok(())
}
