//! Durable user events (`user_events`).

use super::Tx;
use protocol::UserId;
use sqlx::MySqlPool;

pub async fn insert(
    tx: &mut Tx,
    user_id: UserId,
    seq: u64,
    kind: &str,
    frame: &str,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO user_events (user_id, seq, type, frame) VALUES (?, ?, ?, ?)")
        .bind(user_id)
        .bind(seq)
        .bind(kind)
        .bind(frame)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Events after `since`, oldest first, at most `limit`.
pub async fn after(
    pool: &MySqlPool,
    user_id: UserId,
    since: u64,
    limit: u32,
) -> sqlx::Result<Vec<(u64, String)>> {
    sqlx::query_as(
        "SELECT seq, frame FROM user_events WHERE user_id = ? AND seq > ? ORDER BY seq LIMIT ?",
    )
    .bind(user_id)
    .bind(since)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Events in `(after, upto]`, oldest first.
pub async fn between(
    pool: &MySqlPool,
    user_id: UserId,
    after: u64,
    upto: u64,
) -> sqlx::Result<Vec<(u64, String)>> {
    sqlx::query_as(
        "SELECT seq, frame FROM user_events WHERE user_id = ? AND seq > ? AND seq <= ? ORDER BY seq",
    )
    .bind(user_id)
    .bind(after)
    .bind(upto)
    .fetch_all(pool)
    .await
}

/// Deletes up to `batch` events older than `days` days; returns how many.
pub async fn prune(pool: &MySqlPool, days: u32, batch: u32) -> sqlx::Result<u64> {
    let res = sqlx::query(
        "DELETE FROM user_events WHERE created_at < CURRENT_TIMESTAMP(3) - INTERVAL ? DAY LIMIT ?",
    )
    .bind(days)
    .bind(batch)
    .execute(pool)
    .await?;
    Ok(res.rows_affected())
}
