//! Receipt photos: recording an upload (within the guest's quotas), the
//! guest's history, the merchant's queue, the review, and the statistics.

use chrono::{DateTime, Duration as ChronoDuration, DurationRound, Utc};
use protocol::{
    ConnectionSample, Counts, ErrorCode, HourStat, HourlyStatistics, Money, ReviewAction,
    ReviewItem, ReviewOutcome, ReviewQueueUpdate, ReviewResult, ReviewStatus, Reviews, Source,
    Statistics, Upload, UploadId, UploadResult, Uploads, UserId, event,
};
use sqlx::MySqlPool;

use super::account::Account;
use super::{Audience, AuditEntry, Broadcast, Command, Ctx, Done, rfc3339, stored_rfc3339};
use crate::error::{Error, Result};
use crate::rules::calendar::day_start;
use crate::rules::input::{estimated_points, mask_mobile};
use crate::rules::paging::Page;
use crate::rules::review::{AwardCaps, Decision, decide};
use crate::storage::ImageUrls;
use crate::store::{self, Tx, photos::UploadRow};

pub const KEY_PREFIX: &str = "receipts";

/// How much one guest may upload (see `UPLOAD_*` in `.env.example`).
#[derive(Debug, Clone, Copy)]
pub struct UploadQuotas {
    pub per_day: u32,
    pub pending: u32,
    pub bytes_per_day: u64,
}

impl UploadQuotas {
    /// Refuses when one more upload of `size` bytes would pass a quota.
    pub fn check(&self, usage: &store::photos::Usage, size: u64) -> Result<()> {
        if usage.pending >= self.pending as i64 {
            return Err(Error::Refused(ErrorCode::TooManyPending));
        }
        if usage.today >= self.per_day as i64
            || usage.today_bytes as u64 + size > self.bytes_per_day
        {
            return Err(Error::Refused(ErrorCode::UploadQuotaReached));
        }
        Ok(())
    }
}

/// Where a guest stands against the quotas now (read before an upload is
/// received, so a guest over quota sends no bytes for nothing; the upload's
/// own transaction checks again under the guest's lock).
pub async fn precheck(
    db: &MySqlPool,
    user_id: UserId,
    quotas: UploadQuotas,
    now: DateTime<Utc>,
    utc_offset_minutes: i32,
) -> Result<()> {
    let usage = store::photos::usage(db, user_id, day_start(now, utc_offset_minutes)).await?;
    quotas.check(&usage, 0)
}

/// A stored, sanitized image to record as a pending upload.
pub struct RecordUpload<'a> {
    pub user_id: UserId,
    pub upload_id: &'a UploadId,
    pub storage_key: &'a str,
    pub content_type: &'a str,
    pub size_bytes: u64,
    pub width: u32,
    pub height: u32,
    pub amount_cents: u32,
    pub quotas: UploadQuotas,
    pub caps: AwardCaps,
    pub utc_offset_minutes: i32,
    pub urls: &'a ImageUrls,
}

impl Command for RecordUpload<'_> {
    type Reply = UploadResult;
    const NAME: &'static str = "photo.upload";
    const FAILED: ErrorCode = ErrorCode::UploadFailed;

    /// The guest's row is locked first, so two uploads of one guest check
    /// the quotas one after the other and neither slips past them.
    async fn run(&self, tx: &mut Tx, ctx: &mut Ctx) -> Result<Done<UploadResult>> {
        let guest = Account::lock(tx, self.user_id).await?;
        let usage = store::photos::usage(
            &mut **tx,
            self.user_id,
            day_start(ctx.now, self.utc_offset_minutes),
        )
        .await?;
        self.quotas.check(&usage, self.size_bytes)?;
        let estimate = estimated_points(self.amount_cents);
        store::photos::insert(
            tx,
            &store::photos::NewUpload {
                upload_id: self.upload_id,
                user_id: self.user_id,
                storage_key: self.storage_key,
                content_type: self.content_type,
                size_bytes: self.size_bytes,
                width: self.width,
                height: self.height,
                amount_cents: self.amount_cents,
                estimated_points: estimate,
            },
        )
        .await?;
        let queued = Broadcast::new(
            Audience::Merchants,
            event::REVIEW_QUEUE,
            &ReviewQueueUpdate {
                upload_id: self.upload_id.clone(),
                status: ReviewStatus::Pending,
                user_id: self.user_id,
                user_mobile: mask_mobile(&guest.user.mobile),
                image_url: self.urls.url(self.storage_key, ctx.now),
                max_points: self.caps.cap(estimate as i64),
                amount: Money(self.amount_cents as i64),
                estimated_points: estimate as i64,
                points_awarded: None,
                created_at: rfc3339(ctx.now),
            },
        );
        Ok(Done::new(UploadResult {
            upload_id: self.upload_id.clone(),
            image_url: self.urls.url(self.storage_key, ctx.now),
            estimated_points: estimate as i64,
            review_status: ReviewStatus::Pending,
            message: "上传成功，请等待审核".into(),
        })
        .with(|e| e.broadcasts.push(queued)))
    }
}

/// `status` of the list filters: absent, empty or `all` for every status.
pub fn parse_status(status: Option<&str>) -> Result<Option<ReviewStatus>> {
    match status {
        None | Some("") | Some("all") => Ok(None),
        Some(s) => ReviewStatus::parse(s).map(Some).ok_or_else(|| {
            Error::invalid("status", format!("须为 {} 或 all", ReviewStatus::names()))
        }),
    }
}

fn upload_view(urls: &ImageUrls, now: DateTime<Utc>, r: UploadRow) -> Upload {
    Upload {
        image_url: urls.url(&r.storage_key, now),
        upload_id: r.upload_id,
        amount: Money(r.amount_cents as i64),
        estimated_points: r.estimated_points as i64,
        review_status: r.review_status,
        points_awarded: r.points_awarded.map(i64::from),
        review_reason: r.review_reason,
        created_at: stored_rfc3339(r.created_at),
        reviewed_at: r.reviewed_at.map(stored_rfc3339),
    }
}

pub async fn history(
    db: &MySqlPool,
    urls: &ImageUrls,
    user_id: UserId,
    status: Option<&str>,
    page: Page,
) -> Result<Uploads> {
    let status = parse_status(status)?;
    let (rows, total) =
        store::photos::page(db, Some(user_id), status, page.size, page.offset()).await?;
    let now = Utc::now();
    Ok(Uploads {
        uploads: rows
            .into_iter()
            .map(|r| upload_view(urls, now, r))
            .collect(),
        pagination: page.pagination(total),
    })
}

/// The review queue: pending first, oldest first (or one status).
pub async fn reviews(
    db: &MySqlPool,
    urls: &ImageUrls,
    caps: AwardCaps,
    status: Option<&str>,
    page: Page,
) -> Result<Reviews> {
    let status = parse_status(status)?;
    let (rows, total) = store::photos::page(db, None, status, page.size, page.offset()).await?;
    let now = Utc::now();
    Ok(Reviews {
        reviews: rows
            .into_iter()
            .map(|r| ReviewItem {
                user_id: r.user_id,
                user_mobile: mask_mobile(&r.mobile),
                max_points: caps.cap(r.estimated_points as i64),
                upload: upload_view(urls, now, r),
            })
            .collect(),
        pagination: page.pagination(total),
    })
}

/// Approves (crediting points) or rejects an upload, exactly once.
///
/// Invariants the transaction protects:
/// - the upload's row is locked before its status is read, so of two
///   merchants reviewing it at once one wins and the other gets 6004 —
///   whatever the second one's body says;
/// - a merchant never reviews their own upload (6001);
/// - an approval awards at most the cap for its receipt;
/// - the credit, its ledger row, the `review_result` and `points_update`
///   events (consecutive seqs, in that order), the upload's new status and
///   the audit entry commit together.
pub struct Review<'a> {
    pub merchant: UserId,
    pub upload_id: &'a str,
    pub action: &'a str,
    pub points: Option<i64>,
    pub reason: Option<&'a str>,
    pub caps: AwardCaps,
    pub urls: &'a ImageUrls,
}

impl Command for Review<'_> {
    type Reply = ReviewOutcome;
    const NAME: &'static str = "review";
    const FAILED: ErrorCode = ErrorCode::ReviewFailed;

    async fn run(&self, tx: &mut Tx, ctx: &mut Ctx) -> Result<Done<ReviewOutcome>> {
        if self.upload_id.is_empty() || self.upload_id.len() > 64 {
            return Err(Error::Refused(ErrorCode::NotFound));
        }
        let upload = store::photos::lock(tx, self.upload_id)
            .await?
            .ok_or(Error::Refused(ErrorCode::NotFound))?;
        if upload.review_status != ReviewStatus::Pending {
            return Err(Error::AlreadyReviewed {
                current_status: upload.review_status,
            });
        }
        if upload.user_id == self.merchant {
            return Err(Error::Refused(ErrorCode::OwnUpload));
        }
        let action = ReviewAction::parse(self.action)
            .ok_or_else(|| Error::invalid("action", format!("须为 {}", ReviewAction::names())))?;
        let decision = decide(
            action,
            self.points,
            self.reason,
            upload.estimated_points as i64,
            self.caps,
        )?;
        let points = decision.points();
        let status = match decision {
            Decision::Approve { .. } => ReviewStatus::Approved,
            Decision::Reject { .. } => ReviewStatus::Rejected,
        };

        let mut account = Account::lock(tx, upload.user_id).await?;
        account.add_event(
            event::REVIEW_RESULT,
            &ReviewResult {
                upload_id: upload.upload_id.clone(),
                status,
                points_awarded: points,
                reason: decision.reason().into(),
                timestamp: rfc3339(ctx.now),
            },
        );
        account.earn(
            points,
            Source::PhotoUpload,
            format!(
                "拍照审核通过奖励 - {}元消费",
                Money(upload.amount_cents as i64)
            ),
            Some(upload.upload_id.to_string()),
        );
        let balance = account.balance();
        let events = account
            .save(tx, "拍照审核奖励", Source::PhotoUpload, ctx.now)
            .await?;
        store::photos::mark_reviewed(
            tx,
            &upload.upload_id,
            status,
            (status == ReviewStatus::Approved).then_some(points as u32),
            decision.reason(),
            self.merchant,
        )
        .await?;
        let audit = AuditEntry {
            actor_id: self.merchant,
            action: match action {
                ReviewAction::Approve => "review.approve",
                ReviewAction::Reject => "review.reject",
            },
            target: format!("upload:{}", upload.upload_id),
            before: Some(
                serde_json::json!({ "status": upload.review_status, "estimated_points": upload.estimated_points }),
            ),
            after: Some(serde_json::json!({ "status": status, "points_awarded": points })),
            reason: Some(decision.reason().to_string()),
            points: Some(points),
        };
        let left_queue = Broadcast::new(
            Audience::Merchants,
            event::REVIEW_QUEUE,
            &ReviewQueueUpdate {
                upload_id: upload.upload_id.clone(),
                status,
                user_id: upload.user_id,
                user_mobile: mask_mobile(&upload.mobile),
                image_url: self.urls.url(&upload.storage_key, ctx.now),
                max_points: self.caps.cap(upload.estimated_points as i64),
                amount: Money(upload.amount_cents as i64),
                estimated_points: upload.estimated_points as i64,
                points_awarded: Some(points),
                created_at: stored_rfc3339(upload.created_at),
            },
        );
        Ok(Done::new(ReviewOutcome {
            upload_id: upload.upload_id,
            action,
            points_awarded: points,
            user_new_balance: balance,
        })
        .with(|e| {
            e.events = events;
            e.audit.push(audit);
            e.broadcasts.push(left_queue);
        }))
    }
}

/// Today's (business day) and overall counts, with this instance's sockets.
pub async fn statistics(
    db: &MySqlPool,
    utc_offset_minutes: i32,
    live_connections: u64,
    live_users: u64,
) -> Result<Statistics> {
    let today = store::photos::counts_since(db, day_start(Utc::now(), utc_offset_minutes)).await?;
    let overall = store::photos::counts_since(db, chrono::DateTime::UNIX_EPOCH.naive_utc()).await?;
    let counts = |c: store::photos::CountsRow| Counts {
        uploads: c.uploads as u64,
        pending: c.pending as u64,
        approved: c.approved as u64,
        rejected: c.rejected as u64,
        points_awarded: c.points_awarded as u64,
        draws: c.draws as u64,
        exchanges: c.exchanges as u64,
        new_users: c.new_users as u64,
    };
    Ok(Statistics {
        today: counts(today),
        overall: counts(overall),
        live_connections,
        live_users,
    })
}

pub const MAX_HOURS: u32 = 24 * 7;

/// Activity per hour over the last `hours` (every hour listed, zeros
/// included), with the connection samples the caller keeps.
pub async fn hourly(
    db: &MySqlPool,
    hours: u32,
    connections: Vec<ConnectionSample>,
) -> Result<HourlyStatistics> {
    let hours = hours.clamp(1, MAX_HOURS);
    let now = Utc::now();
    let first = now.duration_trunc(ChronoDuration::hours(1)).unwrap_or(now)
        - ChronoDuration::hours(hours as i64 - 1);
    let rows = store::photos::hourly(db, first.naive_utc()).await?;
    let mut out = Vec::with_capacity(hours as usize);
    for h in 0..hours {
        let at = first + ChronoDuration::hours(h as i64);
        let row = rows.iter().find(|r| r.hour == at.naive_utc());
        out.push(HourStat {
            hour: rfc3339(at),
            draws: row.map_or(0, |r| r.draws as u64),
            exchanges: row.map_or(0, |r| r.exchanges as u64),
            points_awarded: row.map_or(0, |r| r.points_awarded as u64),
            uploads: row.map_or(0, |r| r.uploads as u64),
        });
    }
    let since = rfc3339(first);
    Ok(HourlyStatistics {
        hours: out,
        connections: connections.into_iter().filter(|s| s.at >= since).collect(),
    })
}
