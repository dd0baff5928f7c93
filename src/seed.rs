//! Demo data for development: the demo wheel (`rules::wheel::DEMO_PRIZES`),
//! a merchant account (`13900000000`) and a few products. Only seeded into
//! an empty database, and only when `APP_ENV=development`.

use protocol::ProductStatus;
use sqlx::MySqlPool;

use crate::domain::Ctx;
use crate::domain::auth::find_or_create_user;
use crate::error::Error;
use crate::rules::wheel::{DEMO_COST_POINTS, DEMO_DAILY_LIMIT, DEMO_PITY_THRESHOLD, DEMO_PRIZES};
use crate::store::{self, exchange::NewProduct, lottery::PrizeWrite};

pub const DEMO_MERCHANT_MOBILE: &str = "13900000000";

/// (name, description, category, points, stock)
const PRODUCTS: [(&str, &str, &str, u32, i32); 5] = [
    ("招牌奶茶", "门店招牌奶茶一杯，可选冷热", "饮品", 300, 200),
    ("美式咖啡", "现磨美式咖啡一杯", "饮品", 250, 200),
    ("提拉米苏", "意式经典甜品一份", "甜品", 600, 50),
    ("十元代金券", "满50元可用，堂食外卖通用", "优惠券", 800, 100),
    ("定制帆布袋", "餐厅限量周边帆布袋", "周边", 2000, 10),
];

pub async fn seed_demo(db: &MySqlPool) -> Result<(), Error> {
    let mut tx = db.begin().await?;
    // Serializes servers starting together on one empty database: the
    // second sees the first one's rows and seeds nothing.
    let Some(mut settings) = store::lottery::lock_settings(&mut tx).await? else {
        return Ok(());
    };
    let (users, prizes): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM users), (SELECT COUNT(*) FROM lottery_prizes)",
    )
    .fetch_one(&mut *tx)
    .await?;
    if users > 0 || prizes > 0 {
        return Ok(());
    }
    for p in &DEMO_PRIZES {
        store::lottery::insert_prize(
            &mut tx,
            &PrizeWrite {
                prize_name: p.name,
                prize_type: p.prize_type,
                value_cents: p.value_cents,
                angle: p.angle,
                color: p.color,
                weight: p.weight,
                is_activity: p.is_activity,
                is_valuable: p.is_valuable,
                stock: p.stock,
            },
        )
        .await?;
    }
    settings.cost_points = DEMO_COST_POINTS;
    settings.pity_threshold = DEMO_PITY_THRESHOLD;
    settings.daily_limit = DEMO_DAILY_LIMIT;
    store::lottery::write_settings(&mut tx, &settings).await?;
    for (i, (name, description, category, points, stock)) in PRODUCTS.into_iter().enumerate() {
        store::exchange::insert_product(
            &mut tx,
            &NewProduct {
                name,
                description,
                category,
                exchange_points: points,
                stock,
                image: None,
                status: ProductStatus::Active,
                sort_order: i as i32 + 1,
            },
        )
        .await?;
    }
    let (merchant, _, _) = find_or_create_user(&mut tx, DEMO_MERCHANT_MOBILE, &Ctx::new()).await?;
    store::users::set_merchant_flag(&mut tx, merchant.user_id, "演示商家").await?;
    tx.commit().await?;
    tracing::info!(
        merchant = DEMO_MERCHANT_MOBILE,
        "seeded demo data: 8 prizes, 5 products, a merchant"
    );
    Ok(())
}
