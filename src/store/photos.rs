//! Receipt uploads and their review (`photo_uploads`), and the merchant's
//! statistics.

use super::Tx;
use chrono::NaiveDateTime;
use sqlx::{FromRow, MySqlPool, QueryBuilder};

pub struct NewUpload<'a> {
    pub upload_id: &'a str,
    pub user_id: u64,
    pub storage_key: &'a str,
    pub content_type: &'a str,
    pub size_bytes: u32,
    pub width: u32,
    pub height: u32,
    pub amount_cents: u32,
    pub estimated_points: u32,
}

pub async fn insert(pool: &MySqlPool, u: &NewUpload<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO photo_uploads (upload_id, user_id, storage_key, content_type, size_bytes, width, height, \
         amount_cents, estimated_points) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(u.upload_id)
    .bind(u.user_id)
    .bind(u.storage_key)
    .bind(u.content_type)
    .bind(u.size_bytes)
    .bind(u.width)
    .bind(u.height)
    .bind(u.amount_cents)
    .bind(u.estimated_points)
    .execute(pool)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, FromRow)]
pub struct UploadRow {
    pub upload_id: String,
    pub user_id: u64,
    pub mobile: String,
    pub storage_key: String,
    pub amount_cents: u32,
    pub estimated_points: u32,
    pub review_status: String,
    pub points_awarded: Option<u32>,
    pub review_reason: Option<String>,
    pub created_at: NaiveDateTime,
    pub reviewed_at: Option<NaiveDateTime>,
}

const UPLOAD_SELECT: &str = "SELECT p.upload_id, p.user_id, u.mobile, p.storage_key, p.amount_cents, \
     p.estimated_points, p.review_status, p.points_awarded, p.review_reason, p.created_at, p.reviewed_at \
     FROM photo_uploads p JOIN users u ON u.user_id = p.user_id";

/// A page of uploads. For a user: newest first. For review (no user): the
/// pending ones first, oldest first, so the longest-waiting is reviewed next.
pub async fn page(
    pool: &MySqlPool,
    user_id: Option<u64>,
    status: Option<&str>,
    limit: u32,
    offset: u64,
) -> sqlx::Result<(Vec<UploadRow>, u64)> {
    let filter = |qb: &mut QueryBuilder<sqlx::MySql>| {
        qb.push(" WHERE 1 = 1");
        if let Some(u) = user_id {
            qb.push(" AND p.user_id = ").push_bind(u);
        }
        if let Some(s) = status {
            qb.push(" AND p.review_status = ").push_bind(s.to_string());
        }
    };
    let mut qb = QueryBuilder::new(UPLOAD_SELECT);
    filter(&mut qb);
    if user_id.is_some() {
        qb.push(" ORDER BY p.id DESC");
    } else {
        qb.push(" ORDER BY p.review_status = 'pending' DESC, p.id ASC");
    }
    qb.push(" LIMIT ")
        .push_bind(limit)
        .push(" OFFSET ")
        .push_bind(offset);
    let rows = qb.build_query_as::<UploadRow>().fetch_all(pool).await?;
    let mut qb = QueryBuilder::new("SELECT COUNT(*) FROM photo_uploads p");
    filter(&mut qb);
    let (total,): (i64,) = qb.build_query_as().fetch_one(pool).await?;
    Ok((rows, total as u64))
}

/// Locks an upload for review.
pub async fn lock(tx: &mut Tx, upload_id: &str) -> sqlx::Result<Option<UploadRow>> {
    sqlx::query_as(
        "SELECT p.upload_id, p.user_id, u.mobile, p.storage_key, p.amount_cents, p.estimated_points, \
         p.review_status, p.points_awarded, p.review_reason, p.created_at, p.reviewed_at \
         FROM photo_uploads p JOIN users u ON u.user_id = p.user_id WHERE p.upload_id = ? FOR UPDATE",
    )
    .bind(upload_id)
    .fetch_optional(&mut **tx)
    .await
}

pub async fn mark_reviewed(
    tx: &mut Tx,
    upload_id: &str,
    status: &str,
    points: Option<u32>,
    reason: &str,
    reviewer_id: u64,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE photo_uploads SET review_status = ?, points_awarded = ?, review_reason = ?, reviewer_id = ?, \
         reviewed_at = CURRENT_TIMESTAMP(3) WHERE upload_id = ?",
    )
    .bind(status)
    .bind(points)
    .bind(reason)
    .bind(reviewer_id)
    .bind(upload_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Whether a stored object belongs to an upload row (for the orphan sweep).
pub async fn key_exists(pool: &MySqlPool, storage_key: &str) -> sqlx::Result<bool> {
    let row: Option<(u64,)> = sqlx::query_as("SELECT id FROM photo_uploads WHERE storage_key = ?")
        .bind(storage_key)
        .fetch_optional(pool)
        .await?;
    Ok(row.is_some())
}

#[derive(Debug, FromRow)]
pub struct CountsRow {
    pub uploads: i64,
    pub pending: i64,
    pub approved: i64,
    pub rejected: i64,
    pub points_awarded: i64,
    pub draws: i64,
    pub exchanges: i64,
    pub new_users: i64,
}

/// Activity since `since` (UTC).
pub async fn counts_since(pool: &MySqlPool, since: NaiveDateTime) -> sqlx::Result<CountsRow> {
    sqlx::query_as(
        "SELECT \
           (SELECT COUNT(*) FROM photo_uploads WHERE created_at >= ?) AS uploads, \
           (SELECT COUNT(*) FROM photo_uploads WHERE created_at >= ? AND review_status = 'pending') AS pending, \
           (SELECT COUNT(*) FROM photo_uploads WHERE reviewed_at >= ? AND review_status = 'approved') AS approved, \
           (SELECT COUNT(*) FROM photo_uploads WHERE reviewed_at >= ? AND review_status = 'rejected') AS rejected, \
           (SELECT CAST(COALESCE(SUM(points_awarded), 0) AS SIGNED) FROM photo_uploads \
              WHERE reviewed_at >= ? AND review_status = 'approved') AS points_awarded, \
           (SELECT COUNT(*) FROM draw_records WHERE created_at >= ?) AS draws, \
           (SELECT COUNT(*) FROM exchange_orders WHERE created_at >= ?) AS exchanges, \
           (SELECT COUNT(*) FROM users WHERE created_at >= ?) AS new_users",
    )
    .bind(since)
    .bind(since)
    .bind(since)
    .bind(since)
    .bind(since)
    .bind(since)
    .bind(since)
    .bind(since)
    .fetch_one(pool)
    .await
}
