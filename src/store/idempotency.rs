//! Stored results of idempotent commands (`idempotency_keys`).

use super::Tx;
use sqlx::MySqlPool;

/// The stored `(fingerprint, response)` for a key. Called while holding the
/// user's row lock, under which every key of that user is written, so a
/// plain read sees every committed key.
pub async fn find(tx: &mut Tx, user_id: u64, key: &str) -> sqlx::Result<Option<(String, String)>> {
    sqlx::query_as(
        "SELECT fingerprint, response FROM idempotency_keys WHERE user_id = ? AND idem_key = ?",
    )
    .bind(user_id)
    .bind(key)
    .fetch_optional(&mut **tx)
    .await
}

pub async fn insert(
    tx: &mut Tx,
    user_id: u64,
    key: &str,
    fingerprint: &str,
    response: &str,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO idempotency_keys (user_id, idem_key, fingerprint, response) VALUES (?, ?, ?, ?)")
        .bind(user_id)
        .bind(key)
        .bind(fingerprint)
        .bind(response)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Deletes up to `batch` keys older than `hours`; returns how many.
pub async fn prune(pool: &MySqlPool, hours: u32, batch: u32) -> sqlx::Result<u64> {
    let res = sqlx::query(
        "DELETE FROM idempotency_keys WHERE created_at < CURRENT_TIMESTAMP(3) - INTERVAL ? HOUR LIMIT ?",
    )
    .bind(hours)
    .bind(batch)
    .execute(pool)
    .await?;
    Ok(res.rows_affected())
}
