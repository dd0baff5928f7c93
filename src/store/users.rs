//! The `users` table.

use super::Tx;
use chrono::NaiveDate;
use protocol::{UserId, UserStatus};
use sqlx::{FromRow, MySqlPool};

#[derive(Debug, Clone, FromRow)]
pub struct UserRow {
    pub user_id: UserId,
    pub mobile: String,
    pub nickname: String,
    pub avatar: Option<String>,
    pub total_points: i64,
    pub is_merchant: bool,
    pub status: UserStatus,
}

pub async fn find(pool: &MySqlPool, user_id: UserId) -> sqlx::Result<Option<UserRow>> {
    sqlx::query_as(
        "SELECT user_id, mobile, nickname, avatar, total_points, is_merchant, status \
         FROM users WHERE user_id = ?",
    )
    .bind(user_id)
    .fetch_optional(pool)
    .await
}

/// A consistent (non-locking) read: logins of existing users lock nothing.
pub async fn find_by_mobile(tx: &mut Tx, mobile: &str) -> sqlx::Result<Option<UserRow>> {
    sqlx::query_as(
        "SELECT user_id, mobile, nickname, avatar, total_points, is_merchant, status \
         FROM users WHERE mobile = ?",
    )
    .bind(mobile)
    .fetch_optional(&mut **tx)
    .await
}

/// A locking read that sees the latest committed row (a user another login
/// created after this transaction's snapshot). Shared, so that several
/// losers of the same creation race never wait on each other.
pub async fn find_by_mobile_latest(tx: &mut Tx, mobile: &str) -> sqlx::Result<Option<UserRow>> {
    sqlx::query_as(
        "SELECT user_id, mobile, nickname, avatar, total_points, is_merchant, status \
         FROM users WHERE mobile = ? LOCK IN SHARE MODE",
    )
    .bind(mobile)
    .fetch_optional(&mut **tx)
    .await
}

/// Inserts a user with no points (the register bonus goes through the
/// ledger). `None` when the mobile was taken concurrently.
pub async fn insert(tx: &mut Tx, mobile: &str, nickname: &str) -> sqlx::Result<Option<UserId>> {
    let res = sqlx::query("INSERT IGNORE INTO users (mobile, nickname) VALUES (?, ?)")
        .bind(mobile)
        .bind(nickname)
        .execute(&mut **tx)
        .await?;
    Ok((res.rows_affected() == 1).then(|| UserId(res.last_insert_id())))
}

/// Outside the login transaction: it would turn the shared locks of a
/// creation race into a deadlock, and a lost timestamp harms nothing.
pub async fn touch_login(pool: &MySqlPool, user_id: UserId) -> sqlx::Result<()> {
    sqlx::query("UPDATE users SET last_login_at = CURRENT_TIMESTAMP(3) WHERE user_id = ?")
        .bind(user_id)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn set_merchant_flag(tx: &mut Tx, user_id: UserId, nickname: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE users SET is_merchant = 1, nickname = ? WHERE user_id = ?")
        .bind(nickname)
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// False when no user has this mobile. (An UPDATE that changes nothing
/// reports no affected rows on MySQL, so existence is read first.)
pub async fn set_merchant(pool: &MySqlPool, mobile: &str, merchant: bool) -> sqlx::Result<bool> {
    let found: Option<(UserId,)> = sqlx::query_as("SELECT user_id FROM users WHERE mobile = ?")
        .bind(mobile)
        .fetch_optional(pool)
        .await?;
    let Some((user_id,)) = found else {
        return Ok(false);
    };
    sqlx::query("UPDATE users SET is_merchant = ? WHERE user_id = ?")
        .bind(merchant)
        .bind(user_id)
        .execute(pool)
        .await?;
    Ok(true)
}

/// The row every points-changing transaction locks first. Holding it
/// serializes all of one user's writes, which is what keeps the balance
/// non-negative, the ledger in step and `seq` gap-free.
#[derive(Debug, Clone, FromRow)]
pub struct LockedUser {
    pub user_id: UserId,
    pub mobile: String,
    pub total_points: i64,
    pub last_seq: u64,
    pub pity_count: u32,
    pub draw_day: Option<NaiveDate>,
    pub draw_day_count: u32,
    pub status: UserStatus,
}

pub async fn lock(tx: &mut Tx, user_id: UserId) -> sqlx::Result<Option<LockedUser>> {
    sqlx::query_as(
        "SELECT user_id, mobile, total_points, last_seq, pity_count, draw_day, draw_day_count, status \
         FROM users WHERE user_id = ? FOR UPDATE",
    )
    .bind(user_id)
    .fetch_optional(&mut **tx)
    .await
}

/// Writes back what a transaction changed on the locked row.
pub async fn write_back(tx: &mut Tx, u: &LockedUser) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE users SET total_points = ?, last_seq = ?, pity_count = ?, draw_day = ?, draw_day_count = ? \
         WHERE user_id = ?",
    )
    .bind(u.total_points)
    .bind(u.last_seq)
    .bind(u.pity_count)
    .bind(u.draw_day)
    .bind(u.draw_day_count)
    .bind(u.user_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Balance and newest event seq.
pub async fn points_and_seq(pool: &MySqlPool, user_id: UserId) -> sqlx::Result<Option<(i64, u64)>> {
    sqlx::query_as("SELECT total_points, last_seq FROM users WHERE user_id = ?")
        .bind(user_id)
        .fetch_optional(pool)
        .await
}

pub async fn pity_count(pool: &MySqlPool, user_id: UserId) -> sqlx::Result<u32> {
    let v: Option<(u32,)> = sqlx::query_as("SELECT pity_count FROM users WHERE user_id = ?")
        .bind(user_id)
        .fetch_optional(pool)
        .await?;
    Ok(v.map(|v| v.0).unwrap_or(0))
}

/// The newest event seq of each of `users` (for the fan-out's catch-up).
pub async fn last_seqs(pool: &MySqlPool, users: &[UserId]) -> sqlx::Result<Vec<(UserId, u64)>> {
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let mut qb = sqlx::QueryBuilder::new("SELECT user_id, last_seq FROM users WHERE user_id IN (");
    let mut list = qb.separated(", ");
    for u in users {
        list.push_bind(*u);
    }
    qb.push(")");
    qb.build_query_as().fetch_all(pool).await
}
