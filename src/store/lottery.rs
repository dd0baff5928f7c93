//! The wheel's settings, prizes, prize stock and draw records.

use super::Tx;
use chrono::NaiveDateTime;
use sqlx::{FromRow, MySqlPool, QueryBuilder};

#[derive(Debug, FromRow)]
pub struct SettingsRow {
    pub version: u32,
    pub cost_points: u32,
    pub pity_threshold: u32,
    pub daily_limit: u32,
}

#[derive(Debug, FromRow)]
pub struct PrizeRow {
    pub prize_id: u32,
    pub prize_name: String,
    pub prize_type: String,
    pub value_cents: i64,
    pub angle: u16,
    pub color: String,
    pub weight: i64,
    pub is_activity: bool,
    pub is_valuable: bool,
    pub limited: bool,
}

pub async fn load(pool: &MySqlPool) -> sqlx::Result<(Option<SettingsRow>, Vec<PrizeRow>)> {
    let settings = sqlx::query_as(
        "SELECT version, cost_points, pity_threshold, daily_limit FROM lottery_settings WHERE id = 1",
    )
    .fetch_optional(pool)
    .await?;
    let prizes = sqlx::query_as(
        "SELECT prize_id, prize_name, prize_type, CAST(ROUND(prize_value * 100) AS SIGNED) AS value_cents, \
                angle, color, CAST(ROUND(probability * 10000) AS SIGNED) AS weight, is_activity, is_valuable, \
                stock IS NOT NULL AS limited \
         FROM lottery_prizes WHERE status = 'active' ORDER BY angle",
    )
    .fetch_all(pool)
    .await?;
    Ok((settings, prizes))
}

/// Takes one unit of a limited prize; false when none is left.
pub async fn take_prize_stock(tx: &mut Tx, prize_id: u64) -> sqlx::Result<bool> {
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
    pub prize_id: u64,
    pub prize_name: String,
    pub prize_type: &'static str,
    pub value_cents: i64,
    pub angle: u16,
    pub points_cost: i64,
    pub is_pity: bool,
    pub pity_before: u32,
    pub fallback_from: Option<u64>,
}

pub async fn insert_draws(
    tx: &mut Tx,
    user_id: u64,
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
    pub prize_id: u32,
    pub prize_name: String,
    pub prize_type: String,
    pub value_cents: i64,
    pub angle: u16,
    pub is_pity: bool,
    pub points_cost: u32,
    pub created_at: NaiveDateTime,
}

pub async fn page_draws(
    pool: &MySqlPool,
    user_id: u64,
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

/// Locks the settings row (every change of the wheel takes it).
pub async fn lock_settings(tx: &mut Tx) -> sqlx::Result<Option<SettingsRow>> {
    sqlx::query_as(
        "SELECT version, cost_points, pity_threshold, daily_limit FROM lottery_settings WHERE id = 1 FOR UPDATE",
    )
    .fetch_optional(&mut **tx)
    .await
}

/// Writes the settings with the next version.
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
