//! Sessions, refresh tokens and verification codes.

use super::Tx;
use chrono::{NaiveDate, NaiveDateTime};
use protocol::{SessionId, UserId, UserStatus};
use sqlx::{FromRow, MySqlExecutor, MySqlPool};

pub async fn create_session(tx: &mut Tx, user_id: UserId) -> sqlx::Result<SessionId> {
    let res = sqlx::query("INSERT INTO auth_sessions (user_id) VALUES (?)")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(SessionId(res.last_insert_id()))
}

/// Whether the session may still be used, with the user's status: one read
/// that authorizes a request.
#[derive(Debug, FromRow)]
pub struct SessionState {
    pub revoked: bool,
    pub user_status: UserStatus,
    pub is_merchant: bool,
    /// Read in the same query for a socket's `welcome`, so a reconnect
    /// costs one database read.
    pub total_points: i64,
    pub last_seq: u64,
}

/// Inside a transaction, pass the transaction: a transaction that waits
/// for a second pool connection can wait forever once every connection is
/// held by such a transaction.
pub async fn session_state<'e>(
    ex: impl MySqlExecutor<'e>,
    session_id: SessionId,
    user_id: UserId,
) -> sqlx::Result<Option<SessionState>> {
    sqlx::query_as(
        "SELECT s.revoked_at IS NOT NULL AS revoked, u.status AS user_status, u.is_merchant, \
                u.total_points, u.last_seq \
         FROM auth_sessions s JOIN users u ON u.user_id = s.user_id \
         WHERE s.session_id = ? AND s.user_id = ?",
    )
    .bind(session_id)
    .bind(user_id)
    .fetch_optional(ex)
    .await
}

pub async fn revoke_session(tx: &mut Tx, session_id: SessionId, reason: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE auth_sessions SET revoked_at = CURRENT_TIMESTAMP(3), revoke_reason = ? \
         WHERE session_id = ? AND revoked_at IS NULL",
    )
    .bind(reason)
    .bind(session_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Revokes every live session of a user; returns their ids.
pub async fn revoke_user_sessions(
    tx: &mut Tx,
    user_id: UserId,
    reason: &str,
) -> sqlx::Result<Vec<SessionId>> {
    let ids: Vec<(SessionId,)> = sqlx::query_as(
        "SELECT session_id FROM auth_sessions WHERE user_id = ? AND revoked_at IS NULL FOR UPDATE",
    )
    .bind(user_id)
    .fetch_all(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE auth_sessions SET revoked_at = CURRENT_TIMESTAMP(3), revoke_reason = ? \
         WHERE user_id = ? AND revoked_at IS NULL",
    )
    .bind(reason)
    .bind(user_id)
    .execute(&mut **tx)
    .await?;
    Ok(ids.into_iter().map(|r| r.0).collect())
}

pub async fn insert_refresh(
    tx: &mut Tx,
    hash: &[u8],
    session_id: SessionId,
    user_id: UserId,
    expires_at: NaiveDateTime,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, session_id, user_id, expires_at) VALUES (?, ?, ?, ?)",
    )
    .bind(hash)
    .bind(session_id)
    .bind(user_id)
    .bind(expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(Debug, FromRow)]
pub struct RefreshRow {
    pub session_id: SessionId,
    pub user_id: UserId,
    pub expired: bool,
    pub used: bool,
    pub session_revoked: bool,
    pub user_status: UserStatus,
}

/// Locks a refresh token (and so serializes two refreshes of it).
pub async fn lock_refresh(tx: &mut Tx, hash: &[u8]) -> sqlx::Result<Option<RefreshRow>> {
    sqlx::query_as(
        "SELECT r.session_id, r.user_id, r.expires_at < CURRENT_TIMESTAMP(3) AS expired, \
                r.used_at IS NOT NULL AS used, s.revoked_at IS NOT NULL AS session_revoked, \
                u.status AS user_status \
         FROM refresh_tokens r JOIN auth_sessions s ON s.session_id = r.session_id \
         JOIN users u ON u.user_id = r.user_id \
         WHERE r.token_hash = ? FOR UPDATE",
    )
    .bind(hash)
    .fetch_optional(&mut **tx)
    .await
}

pub async fn mark_refresh_used(tx: &mut Tx, hash: &[u8]) -> sqlx::Result<()> {
    sqlx::query("UPDATE refresh_tokens SET used_at = CURRENT_TIMESTAMP(3) WHERE token_hash = ?")
        .bind(hash)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn prune_refresh(pool: &MySqlPool, batch: u32) -> sqlx::Result<u64> {
    let res =
        sqlx::query("DELETE FROM refresh_tokens WHERE expires_at < CURRENT_TIMESTAMP(3) LIMIT ?")
            .bind(batch)
            .execute(pool)
            .await?;
    Ok(res.rows_affected())
}

#[derive(Debug, FromRow)]
pub struct SmsRow {
    pub code_hash: Vec<u8>,
    pub seconds_since_sent: i64,
    pub expired: bool,
    pub attempts: u32,
    pub day: NaiveDate,
    pub day_count: u32,
}

/// Makes sure the phone has a row, so the lock that follows is a record
/// lock: a locking read of a missing row takes a gap lock instead, and two
/// new phones in the same gap then deadlock on their inserts.
pub async fn ensure_sms_row(tx: &mut Tx, phone: &str, day: NaiveDate) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT IGNORE INTO sms_codes (phone, code_hash, sent_at, expires_at, attempts, day, day_count) \
         VALUES (?, ?, '1970-01-01 00:00:01', '1970-01-01 00:00:01', 0, ?, 0)",
    )
    .bind(phone)
    .bind([0u8; 32].as_slice())
    .bind(day)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn lock_sms(tx: &mut Tx, phone: &str) -> sqlx::Result<Option<SmsRow>> {
    sqlx::query_as(
        "SELECT code_hash, CAST(TIMESTAMPDIFF(SECOND, sent_at, CURRENT_TIMESTAMP(3)) AS SIGNED) AS seconds_since_sent, \
                expires_at < CURRENT_TIMESTAMP(3) AS expired, attempts, day, day_count \
         FROM sms_codes WHERE phone = ? FOR UPDATE",
    )
    .bind(phone)
    .fetch_optional(&mut **tx)
    .await
}

/// Stores a freshly issued code (replacing the previous one).
pub async fn store_sms(
    tx: &mut Tx,
    phone: &str,
    hash: &[u8],
    ttl_secs: u32,
    day: NaiveDate,
    day_count: u32,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE sms_codes SET code_hash = ?, sent_at = CURRENT_TIMESTAMP(3), \
           expires_at = CURRENT_TIMESTAMP(3) + INTERVAL ? SECOND, attempts = 0, day = ?, day_count = ? \
         WHERE phone = ?",
    )
    .bind(hash)
    .bind(ttl_secs)
    .bind(day)
    .bind(day_count)
    .bind(phone)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn count_sms_attempt(tx: &mut Tx, phone: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE sms_codes SET attempts = attempts + 1 WHERE phone = ?")
        .bind(phone)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A code the provider could not deliver: it was never seen, so it is
/// expired and does not count against the phone's minute.
pub async fn withdraw_sms(tx: &mut Tx, phone: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE sms_codes SET expires_at = sent_at, sent_at = '1970-01-01 00:00:01', \
           day_count = GREATEST(day_count, 1) - 1 WHERE phone = ?",
    )
    .bind(phone)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A used code cannot be used again: expire it, keep the send counters.
pub async fn consume_sms(tx: &mut Tx, phone: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE sms_codes SET expires_at = sent_at WHERE phone = ?")
        .bind(phone)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
