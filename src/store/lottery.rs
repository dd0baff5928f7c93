//! The wheel (`lottery_settings`, `lottery_prizes`) and draw records.

use super::Tx;
use chrono::NaiveDateTime;
use protocol::{PrizeId, PrizeType, UserId};
use sqlx::{FromRow, MySqlExecutor, MySqlPool, QueryBuilder};

#[derive(Debug, Clone, FromRow)]
pub struct SettingsRow {
    pub version: u32,
    pub cost_points: u32,
    pub pity_threshold: u32,
    pub daily_limit: u32,
}

#[derive(Debug, Clone, FromRow)]
pub struct PrizeRow {
    pub prize_id: PrizeId,
    pub prize_name: String,
    pub prize_type: PrizeType,
    pub value_cents: i64,
    pub angle: u16,
    pub color: String,
    pub weight: i64,
    pub is_activity: bool,
    pub is_valuable: bool,
    /// `None`: no stock limit.
    pub stock: Option<i32>,
}

const PRIZE_SELECT: &str = "SELECT prize_id, prize_name, prize_type, \
     CAST(ROUND(prize_value * 100) AS SIGNED) AS value_cents, angle, color, \
     CAST(ROUND(probability * 10000) AS SIGNED) AS weight, is_activity, is_valuable, stock \
     FROM lottery_prizes WHERE status = 'active' ORDER BY angle";

/// The settings row and the active prizes, by angle.
pub async fn load<'e>(
    ex: impl MySqlExecutor<'e> + Copy,
) -> sqlx::Result<(Option<SettingsRow>, Vec<PrizeRow>)> {
    let settings = sqlx::query_as(
        "SELECT version, cost_points, pity_threshold, daily_limit FROM lottery_settings WHERE id = 1",
    )
    .fetch_optional(ex)
    .await?;
    let prizes = sqlx::query_as(PRIZE_SELECT).fetch_all(ex).await?;
    Ok((settings, prizes))
}

pub async fn active_prizes(tx: &mut Tx) -> sqlx::Result<Vec<PrizeRow>> {
    sqlx::query_as(PRIZE_SELECT).fetch_all(&mut **tx).await
}

pub async fn take_prize_stock(tx: &mut Tx, prize_id: PrizeId) -> sqlx::Result<bool> {
    let res =
        sqlx::query("UPDATE lottery_prizes SET stock = stock - 1 WHERE prize_id = ? AND stock > 0")
            .bind(prize_id)
            .execute(&mut **tx)
            .await?;
    Ok(res.rows_affected() == 1)
}

#[derive(Debug, Clone)]
pub struct NewDraw {
    pub draw_id: String,
    pub prize_id: PrizeId,
    pub prize_name: String,
    pub prize_type: PrizeType,
    pub value_cents: i64,
    pub angle: u16,
    pub points_cost: i64,
    pub is_pity: bool,
    pub pity_before: u32,
    pub fallback_from: Option<PrizeId>,
}

pub async fn insert_draws(
    tx: &mut Tx,
    user_id: UserId,
    config_version: u32,
    request_key: Option<&str>,
    draws: &[NewDraw],
) -> sqlx::Result<()> {
    let mut qb = QueryBuilder::new(
        "INSERT INTO draw_records (draw_id, user_id, prize_id, prize_name, prize_type, prize_value, angle, \
         points_cost, is_pity, pity_before, fallback_from, config_version, request_key) ",
    );
    qb.push_values(draws, |mut b, d| {
        b.push_bind(&d.draw_id)
            .push_bind(user_id)
            .push_bind(d.prize_id)
            .push_bind(&d.prize_name)
            .push_bind(d.prize_type)
            .push("CAST(")
            .push_bind_unseparated(d.value_cents)
            .push_unseparated(" AS DECIMAL(12,2)) / 100")
            .push_bind(d.angle)
            .push_bind(d.points_cost)
            .push_bind(d.is_pity)
            .push_bind(d.pity_before)
            .push_bind(d.fallback_from)
            .push_bind(config_version)
            .push_bind(request_key);
    });
    qb.build().execute(&mut **tx).await?;
    Ok(())
}

#[derive(Debug, FromRow)]
pub struct DrawRow {
    pub draw_id: String,
    pub prize_id: PrizeId,
    pub prize_name: String,
    pub prize_type: PrizeType,
    pub value_cents: i64,
    pub angle: u16,
    pub is_pity: bool,
    pub points_cost: u32,
    pub created_at: NaiveDateTime,
}

pub async fn page_draws(
    pool: &MySqlPool,
    user_id: UserId,
    limit: u32,
    offset: u64,
) -> sqlx::Result<(Vec<DrawRow>, u64)> {
    let rows = sqlx::query_as(
        "SELECT draw_id, prize_id, prize_name, prize_type, CAST(ROUND(prize_value * 100) AS SIGNED) AS value_cents, \
                angle, is_pity, points_cost, created_at \
         FROM draw_records WHERE user_id = ? ORDER BY id DESC LIMIT ? OFFSET ?",
    )
    .bind(user_id)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    let (total,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM draw_records WHERE user_id = ?")
        .bind(user_id)
        .fetch_one(pool)
        .await?;
    Ok((rows, total as u64))
}

/// Locks the settings row: every change of the wheel (settings or prizes)
/// takes it, so two edits apply one after the other and each bumps the
/// version once.
pub async fn lock_settings(tx: &mut Tx) -> sqlx::Result<Option<SettingsRow>> {
    sqlx::query_as(
        "SELECT version, cost_points, pity_threshold, daily_limit FROM lottery_settings WHERE id = 1 FOR UPDATE",
    )
    .fetch_optional(&mut **tx)
    .await
}

pub async fn write_settings(tx: &mut Tx, s: &SettingsRow) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE lottery_settings SET version = ?, cost_points = ?, pity_threshold = ?, daily_limit = ? WHERE id = 1",
    )
    .bind(s.version)
    .bind(s.cost_points)
    .bind(s.pity_threshold)
    .bind(s.daily_limit)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn settings_version(pool: &MySqlPool) -> sqlx::Result<Option<u32>> {
    let v: Option<(u32,)> = sqlx::query_as("SELECT version FROM lottery_settings WHERE id = 1")
        .fetch_optional(pool)
        .await?;
    Ok(v.map(|v| v.0))
}

/// A prize as a merchant writes it.
#[derive(Debug, Clone)]
pub struct PrizeWrite<'a> {
    pub prize_name: &'a str,
    pub prize_type: PrizeType,
    pub value_cents: i64,
    pub angle: u16,
    pub color: &'a str,
    pub weight: u32,
    pub is_activity: bool,
    pub is_valuable: bool,
    pub stock: Option<i32>,
}

/// Updates a prize in place; false when no prize has that id.
pub async fn update_prize(tx: &mut Tx, id: PrizeId, p: &PrizeWrite<'_>) -> sqlx::Result<bool> {
    let exists: Option<(PrizeId,)> =
        sqlx::query_as("SELECT prize_id FROM lottery_prizes WHERE prize_id = ? FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
    if exists.is_none() {
        return Ok(false);
    }
    sqlx::query(
        "UPDATE lottery_prizes SET prize_name = ?, prize_type = ?, prize_value = CAST(? AS DECIMAL(12,2)) / 100, \
         angle = ?, color = ?, probability = CAST(? AS DECIMAL(10,4)) / 10000, is_activity = ?, is_valuable = ?, \
         stock = ?, status = 'active' WHERE prize_id = ?",
    )
    .bind(p.prize_name)
    .bind(p.prize_type)
    .bind(p.value_cents)
    .bind(p.angle)
    .bind(p.color)
    .bind(p.weight)
    .bind(p.is_activity)
    .bind(p.is_valuable)
    .bind(p.stock)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(true)
}

pub async fn insert_prize(tx: &mut Tx, p: &PrizeWrite<'_>) -> sqlx::Result<PrizeId> {
    let res = sqlx::query(
        "INSERT INTO lottery_prizes (prize_name, prize_type, prize_value, angle, color, probability, \
         is_activity, is_valuable, stock) \
         VALUES (?, ?, CAST(? AS DECIMAL(12,2)) / 100, ?, ?, CAST(? AS DECIMAL(10,4)) / 10000, ?, ?, ?)",
    )
    .bind(p.prize_name)
    .bind(p.prize_type)
    .bind(p.value_cents)
    .bind(p.angle)
    .bind(p.color)
    .bind(p.weight)
    .bind(p.is_activity)
    .bind(p.is_valuable)
    .bind(p.stock)
    .execute(&mut **tx)
    .await?;
    Ok(PrizeId(res.last_insert_id() as u32))
}

/// Retires every active prize not in `keep` (records keep their names).
pub async fn deactivate_others(tx: &mut Tx, keep: &[PrizeId]) -> sqlx::Result<()> {
    let mut qb =
        QueryBuilder::new("UPDATE lottery_prizes SET status = 'inactive' WHERE status = 'active'");
    if !keep.is_empty() {
        qb.push(" AND prize_id NOT IN (");
        let mut ids = qb.separated(", ");
        for id in keep {
            ids.push_bind(*id);
        }
        qb.push(")");
    }
    qb.build().execute(&mut **tx).await?;
    Ok(())
}
