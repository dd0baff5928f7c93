//! Stored results of idempotent commands (`idempotency_keys`).

use super::Tx;
use protocol::UserId;
use sqlx::MySqlPool;

/// What claiming a key found.
pub enum Claim {
    /// The key is new: this transaction holds it (an inserted row, locked
    /// until commit) and stores its result with `store`.
    New,
    /// The key was used before: its fingerprint and stored result.
    Used {
        fingerprint: String,
        response: String,
    },
}

/// Claims `key` for this transaction by inserting its row. A second
/// transaction claiming the same key waits on that row's lock: when the
/// first commits it finds the stored result, when the first rolls back it
/// claims the key itself. So two runs of one key never both run.
pub async fn claim(
    tx: &mut Tx,
    user_id: UserId,
    key: &str,
    fingerprint: &str,
) -> sqlx::Result<Claim> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (user_id, idem_key, fingerprint, response) VALUES (?, ?, ?, '')",
    )
    .bind(user_id)
    .bind(key)
    .bind(fingerprint)
    .execute(&mut **tx)
    .await;
    match inserted {
        Ok(_) => Ok(Claim::New),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            // A locking read sees the committed row whatever this
            // transaction's snapshot.
            let (fingerprint, response): (String, String) = sqlx::query_as(
                "SELECT fingerprint, response FROM idempotency_keys \
                 WHERE user_id = ? AND idem_key = ? LOCK IN SHARE MODE",
            )
            .bind(user_id)
            .bind(key)
            .fetch_one(&mut **tx)
            .await?;
            Ok(Claim::Used {
                fingerprint,
                response,
            })
        }
        Err(e) => Err(e),
    }
}

/// Stores the result of a claimed key.
pub async fn store(tx: &mut Tx, user_id: UserId, key: &str, response: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE idempotency_keys SET response = ? WHERE user_id = ? AND idem_key = ?")
        .bind(response)
        .bind(user_id)
        .bind(key)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Gives a claimed key back (a refusal that commits stores nothing).
pub async fn release(tx: &mut Tx, user_id: UserId, key: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM idempotency_keys WHERE user_id = ? AND idem_key = ?")
        .bind(user_id)
        .bind(key)
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
