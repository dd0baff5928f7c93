//! Receipt uploads and their review (`photo_uploads`), and the merchant's
//! statistics.

use super::Tx;
use chrono::NaiveDateTime;
use protocol::{ReviewStatus, UploadId, UserId};
use sqlx::{FromRow, MySqlPool, QueryBuilder};

pub struct NewUpload<'a> {
    pub upload_id: &'a UploadId,
    pub user_id: UserId,
    pub storage_key: &'a str,
    pub content_type: &'a str,
    pub size_bytes: u64,
    pub width: u32,
    pub height: u32,
    pub amount_cents: u32,
    pub estimated_points: u32,
}

pub async fn insert(tx: &mut Tx, u: &NewUpload<'_>) -> sqlx::Result<()> {
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
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A guest's uploads since `since` (count and bytes) and how many of all
/// theirs wait for review: what the upload quotas are checked against.
#[derive(Debug, Clone, Copy, FromRow)]
pub struct Usage {
    pub today: i64,
    pub today_bytes: i64,
    pub pending: i64,
}

pub async fn usage<'e>(
    ex: impl sqlx::MySqlExecutor<'e>,
    user_id: UserId,
    since: NaiveDateTime,
) -> sqlx::Result<Usage> {
    sqlx::query_as(
        "SELECT \
           (SELECT COUNT(*) FROM photo_uploads WHERE user_id = ? AND created_at >= ?) AS today, \
           (SELECT CAST(COALESCE(SUM(size_bytes), 0) AS SIGNED) FROM photo_uploads \
              WHERE user_id = ? AND created_at >= ?) AS today_bytes, \
           (SELECT COUNT(*) FROM photo_uploads WHERE user_id = ? AND review_status = 'pending') AS pending",
    )
    .bind(user_id)
    .bind(since)
    .bind(user_id)
    .bind(since)
    .bind(user_id)
    .fetch_one(ex)
    .await
}

#[derive(Debug, Clone, FromRow)]
pub struct UploadRow {
    pub upload_id: UploadId,
    pub user_id: UserId,
    pub mobile: String,
    pub storage_key: String,
    pub amount_cents: u32,
    pub estimated_points: u32,
    pub review_status: ReviewStatus,
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
    user_id: Option<UserId>,
    status: Option<ReviewStatus>,
    limit: u32,
    offset: u64,
) -> sqlx::Result<(Vec<UploadRow>, u64)> {
    let filter = |qb: &mut QueryBuilder<sqlx::MySql>| {
        qb.push(" WHERE 1 = 1");
        if let Some(u) = user_id {
            qb.push(" AND p.user_id = ").push_bind(u);
        }
        if let Some(s) = status {
            qb.push(" AND p.review_status = ").push_bind(s);
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
    // Only the upload's row is locked (not the user's): the review then
    // locks the guest's row, in that order, like every review.
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
    upload_id: &UploadId,
    status: ReviewStatus,
    points: Option<u32>,
    reason: &str,
    reviewer_id: UserId,
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

/// Which of `keys` belong to an upload row (for the orphan sweep): one
/// query for a whole batch.
pub async fn known_keys(pool: &MySqlPool, keys: &[String]) -> sqlx::Result<Vec<String>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut qb = QueryBuilder::new("SELECT storage_key FROM photo_uploads WHERE storage_key IN (");
    let mut list = qb.separated(", ");
    for k in keys {
        list.push_bind(k);
    }
    qb.push(")");
    let rows: Vec<(String,)> = qb.build_query_as().fetch_all(pool).await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// The owner of a stored image, for the access check when it is served.
pub async fn owner_of_key(pool: &MySqlPool, storage_key: &str) -> sqlx::Result<Option<UserId>> {
    let row: Option<(UserId,)> =
        sqlx::query_as("SELECT user_id FROM photo_uploads WHERE storage_key = ?")
            .bind(storage_key)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|r| r.0))
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

/// Activity per hour since `since`: draws, exchanges, points awarded by
/// reviews and uploads, one row per hour that had any.
#[derive(Debug, FromRow)]
pub struct HourRow {
    pub hour: NaiveDateTime,
    pub draws: i64,
    pub exchanges: i64,
    pub points_awarded: i64,
    pub uploads: i64,
}

pub async fn hourly(pool: &MySqlPool, since: NaiveDateTime) -> sqlx::Result<Vec<HourRow>> {
    sqlx::query_as(
        "SELECT CAST(hour AS DATETIME) AS hour, CAST(SUM(draws) AS SIGNED) AS draws, CAST(SUM(exchanges) AS SIGNED) AS exchanges, \
                CAST(SUM(points_awarded) AS SIGNED) AS points_awarded, CAST(SUM(uploads) AS SIGNED) AS uploads \
         FROM ( \
           SELECT DATE_FORMAT(created_at, '%Y-%m-%d %H:00:00') AS hour, COUNT(*) AS draws, 0 AS exchanges, \
                  0 AS points_awarded, 0 AS uploads FROM draw_records WHERE created_at >= ? GROUP BY hour \
           UNION ALL \
           SELECT DATE_FORMAT(created_at, '%Y-%m-%d %H:00:00'), 0, COUNT(*), 0, 0 \
             FROM exchange_orders WHERE created_at >= ? GROUP BY 1 \
           UNION ALL \
           SELECT DATE_FORMAT(reviewed_at, '%Y-%m-%d %H:00:00'), 0, 0, COALESCE(SUM(points_awarded), 0), 0 \
             FROM photo_uploads WHERE reviewed_at >= ? AND review_status = 'approved' GROUP BY 1 \
           UNION ALL \
           SELECT DATE_FORMAT(created_at, '%Y-%m-%d %H:00:00'), 0, 0, 0, COUNT(*) \
             FROM photo_uploads WHERE created_at >= ? GROUP BY 1 \
         ) t GROUP BY hour ORDER BY hour",
    )
    .bind(since)
    .bind(since)
    .bind(since)
    .bind(since)
    .fetch_all(pool)
    .await
}
