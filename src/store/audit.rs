//! The merchant audit log (`merchant_audit_log`).

use super::Tx;
use chrono::NaiveDateTime;
use protocol::UserId;
use sqlx::{FromRow, MySqlPool};

pub struct NewEntry<'a> {
    pub actor_id: UserId,
    pub action: &'a str,
    pub target: &'a str,
    pub before: Option<String>,
    pub after: Option<String>,
    pub reason: Option<&'a str>,
    pub points: Option<i64>,
}

pub async fn insert(tx: &mut Tx, e: &NewEntry<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO merchant_audit_log (actor_id, action, target, before_value, after_value, reason, points) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(e.actor_id)
    .bind(e.action)
    .bind(e.target)
    .bind(&e.before)
    .bind(&e.after)
    .bind(e.reason)
    .bind(e.points)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Points a merchant moved with `action` since `since` (absolute values).
pub async fn points_moved_since(
    tx: &mut Tx,
    actor_id: UserId,
    action: &str,
    since: NaiveDateTime,
) -> sqlx::Result<i64> {
    let (sum,): (i64,) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(ABS(points)), 0) AS SIGNED) FROM merchant_audit_log \
         WHERE actor_id = ? AND action = ? AND created_at >= ?",
    )
    .bind(actor_id)
    .bind(action)
    .bind(since)
    .fetch_one(&mut **tx)
    .await?;
    Ok(sum)
}

#[derive(Debug, FromRow)]
pub struct EntryRow {
    pub id: u64,
    pub actor_id: UserId,
    pub action: String,
    pub target: String,
    pub before_value: Option<String>,
    pub after_value: Option<String>,
    pub reason: Option<String>,
    pub created_at: NaiveDateTime,
}

/// A page of the log, newest first, and the total.
pub async fn page(pool: &MySqlPool, limit: u32, offset: u64) -> sqlx::Result<(Vec<EntryRow>, u64)> {
    let rows = sqlx::query_as(
        "SELECT id, actor_id, action, target, before_value, after_value, reason, created_at \
         FROM merchant_audit_log ORDER BY id DESC LIMIT ? OFFSET ?",
    )
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    let (total,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM merchant_audit_log")
        .fetch_one(pool)
        .await?;
    Ok((rows, total as u64))
}
