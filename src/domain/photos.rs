//! Receipt photos: upload, the guest's history, the merchant's review, and
//! the merchant's statistics.

use bytes::Bytes;
use chrono::{Duration as ChronoDuration, Utc};
use protocol::{
    Counts, ErrorCode, Money, ReviewItem, ReviewOutcome, ReviewRequest, ReviewResult, Reviews,
    Statistics, Upload, UploadResult, Uploads, event,
};
use tracing::instrument;

use super::auth::{AuthUser, mask_mobile};
use super::points::{Account, source};
use super::{Page, now_rfc3339, to_rfc3339};
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::store::{self, photos::UploadRow};

/// The most points one receipt can earn: the largest amount (9 999.99)
/// times ten. Approvals are bounded by it.
pub const MAX_REVIEW_POINTS: i64 = 99_999;
pub const STATUSES: [&str; 3] = ["pending", "approved", "rejected"];
pub const KEY_PREFIX: &str = "receipts";

/// An amount as the contract allows it: ASCII digits, at most two decimal
/// places, 0.01–9 999.99. Returns hundredths.
pub fn parse_amount(s: &str) -> Result<u32> {
    let bad = || Error::Refused(ErrorCode::InvalidAmount);
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) => (w, f),
        None => (s, ""),
    };
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || whole.len() > 4 || !digits(whole) || frac.len() > 2 || !digits(frac) {
        return Err(bad());
    }
    if s.ends_with('.') {
        return Err(bad());
    }
    let whole: u32 = whole.parse().map_err(|_| bad())?;
    let frac: u32 = format!("{frac:0<2}").parse().map_err(|_| bad())?;
    let cents = whole * 100 + frac;
    if !(1..=999_999).contains(&cents) {
        return Err(bad());
    }
    Ok(cents)
}

/// `floor(amount × 10)`.
pub fn estimated_points(cents: u32) -> u32 {
    cents / 10
}

/// What the image is, decided by its bytes (never by its name).
pub struct ImageKind {
    pub content_type: &'static str,
    pub extension: &'static str,
    pub width: u32,
    pub height: u32,
}

pub fn sniff_image(bytes: &[u8]) -> Result<ImageKind> {
    let (content_type, extension) = if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        ("image/jpeg", "jpg")
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        ("image/png", "png")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        ("image/webp", "webp")
    } else {
        return Err(Error::Refused(ErrorCode::UnsupportedImage));
    };
    // The header must also parse to real dimensions: a magic number alone
    // in front of anything else is not an image.
    let size =
        imagesize::blob_size(bytes).map_err(|_| Error::Refused(ErrorCode::UnsupportedImage))?;
    if size.width == 0 || size.height == 0 {
        return Err(Error::Refused(ErrorCode::UnsupportedImage));
    }
    Ok(ImageKind {
        content_type,
        extension,
        width: size.width as u32,
        height: size.height as u32,
    })
}

/// Stores the image under a server-chosen key, then the row. If the row
/// cannot be written the image is deleted again; an image whose row never
/// came (the process died in between) is removed by the orphan sweep.
#[instrument(skip_all, fields(user_id = user.user_id))]
pub async fn upload(
    state: &AppState,
    user: &AuthUser,
    image: Option<Bytes>,
    amount: Option<&str>,
) -> Result<UploadResult> {
    let image = image
        .filter(|b| !b.is_empty())
        .ok_or(Error::Refused(ErrorCode::NoImage))?;
    let cents = parse_amount(amount.unwrap_or(""))?;
    let kind = sniff_image(&image)?;
    let upload_id = ulid::Ulid::new().to_string();
    let now = Utc::now();
    let key = format!(
        "{KEY_PREFIX}/{}/{upload_id}.{}",
        now.format("%Y/%m"),
        kind.extension
    );
    let size = image.len() as u32;
    state
        .storage
        .put(&key, image)
        .await
        .map_err(|e| Error::internal(ErrorCode::UploadFailed, e))?;
    let row = store::photos::NewUpload {
        upload_id: &upload_id,
        user_id: user.user_id,
        storage_key: &key,
        content_type: kind.content_type,
        size_bytes: size,
        width: kind.width,
        height: kind.height,
        amount_cents: cents,
        estimated_points: estimated_points(cents),
    };
    if let Err(e) = store::photos::insert(&state.db, &row).await {
        if let Err(del) = state.storage.delete(&key).await {
            tracing::warn!(%key, error = %del, "could not delete the image of a failed upload; the sweep will");
        }
        return Err(Error::from(e).during(ErrorCode::UploadFailed));
    }
    Ok(UploadResult {
        upload_id,
        image_url: state.storage.url(&key),
        estimated_points: estimated_points(cents) as i64,
        review_status: "pending".into(),
        message: "上传成功，请等待审核".into(),
    })
}

fn parse_status(status: Option<&str>) -> Result<Option<&str>> {
    match status {
        None | Some("") | Some("all") => Ok(None),
        Some(s) if STATUSES.contains(&s) => Ok(Some(s)),
        Some(_) => Err(Error::Invalid(
            "status must be pending, approved or rejected".into(),
        )),
    }
}

fn upload_view(state: &AppState, r: UploadRow) -> Upload {
    Upload {
        image_url: state.storage.url(&r.storage_key),
        upload_id: r.upload_id,
        amount: Money(r.amount_cents as i64),
        estimated_points: r.estimated_points as i64,
        review_status: r.review_status,
        points_awarded: r.points_awarded.map(i64::from),
        review_reason: r.review_reason,
        created_at: to_rfc3339(r.created_at),
        reviewed_at: r.reviewed_at.map(to_rfc3339),
    }
}

pub async fn history(
    state: &AppState,
    user_id: u64,
    status: Option<&str>,
    page: Page,
) -> Result<Uploads> {
    let status = parse_status(status)?;
    let (rows, total) =
        store::photos::page(&state.db, Some(user_id), status, page.size, page.offset()).await?;
    Ok(Uploads {
        uploads: rows.into_iter().map(|r| upload_view(state, r)).collect(),
        pagination: page.pagination(total),
    })
}

/// The review queue: pending first, oldest first (or one status).
pub async fn reviews(state: &AppState, status: Option<&str>, page: Page) -> Result<Reviews> {
    let status = parse_status(status)?;
    let (rows, total) =
        store::photos::page(&state.db, None, status, page.size, page.offset()).await?;
    Ok(Reviews {
        reviews: rows
            .into_iter()
            .map(|r| ReviewItem {
                user_id: r.user_id,
                user_mobile: mask_mobile(&r.mobile),
                upload: upload_view(state, r),
            })
            .collect(),
        pagination: page.pagination(total),
    })
}

/// Approves (crediting points) or rejects an upload, exactly once.
///
/// Invariants the transaction protects:
/// - the upload's row is locked before its status is read, so of two
///   merchants reviewing it at once one wins and the other gets 6004;
/// - the credit, its ledger row, the `review_result` and `points_update`
///   events (consecutive seqs, in that order) and the upload's new status
///   commit together.
#[instrument(skip_all, fields(merchant_id = merchant.user_id))]
pub async fn review(
    state: &AppState,
    merchant: &AuthUser,
    req: ReviewRequest,
) -> Result<ReviewOutcome> {
    let approve = match req.action.as_str() {
        "approve" => true,
        "reject" => false,
        _ => return Err(Error::Invalid("action must be approve or reject".into())),
    };
    let reason = req.reason.as_deref().map(str::trim).unwrap_or("");
    if reason.chars().count() > 255 {
        return Err(Error::Invalid(
            "reason must be at most 255 characters".into(),
        ));
    }
    if !approve && reason.is_empty() {
        return Err(Error::Invalid("a rejection needs a reason".into()));
    }
    if let Some(p) = req.points
        && (!approve || !(1..=MAX_REVIEW_POINTS).contains(&p))
    {
        return Err(Error::Invalid(if approve {
            format!("points must be 1 to {MAX_REVIEW_POINTS}")
        } else {
            "a rejection awards no points".into()
        }));
    }
    if req.upload_id.is_empty() || req.upload_id.len() > 64 {
        return Err(Error::Refused(ErrorCode::NotFound));
    }

    let mut tx = state
        .db
        .begin()
        .await
        .map_err(|e| Error::from(e).during(ErrorCode::ReviewFailed))?;
    let upload = store::photos::lock(&mut tx, &req.upload_id)
        .await?
        .ok_or(Error::Refused(ErrorCode::NotFound))?;
    if upload.review_status != "pending" {
        return Err(Error::AlreadyReviewed {
            current_status: upload.review_status,
        });
    }
    let points = if approve {
        req.points.unwrap_or(upload.estimated_points as i64).max(0)
    } else {
        0
    };
    let (status, default_reason) = if approve {
        ("approved", "审核通过")
    } else {
        ("rejected", "")
    };
    let reason = if reason.is_empty() {
        default_reason
    } else {
        reason
    };

    let mut account = Account::lock(&mut tx, upload.user_id).await?;
    account.add_event(
        event::REVIEW_RESULT,
        &ReviewResult {
            upload_id: upload.upload_id.clone(),
            status: status.into(),
            points_awarded: points,
            reason: reason.into(),
            timestamp: now_rfc3339(),
        },
    )?;
    account.earn(
        points,
        source::PHOTO_UPLOAD,
        format!(
            "拍照审核通过奖励 - {}元消费",
            Money(upload.amount_cents as i64)
        ),
        Some(upload.upload_id.clone()),
    );
    let balance = account.balance();
    let events = account
        .save(&mut tx, "拍照审核奖励", source::PHOTO_UPLOAD)
        .await?;
    store::photos::mark_reviewed(
        &mut tx,
        &upload.upload_id,
        status,
        approve.then_some(points as u32),
        reason,
        merchant.user_id,
    )
    .await?;
    tx.commit()
        .await
        .map_err(|e| Error::from(e).during(ErrorCode::ReviewFailed))?;
    state.hub.deliver(&events);
    Ok(ReviewOutcome {
        upload_id: upload.upload_id,
        action: req.action,
        points_awarded: points,
        user_new_balance: balance,
    })
}

pub async fn statistics(state: &AppState) -> Result<Statistics> {
    let offset = ChronoDuration::minutes(state.config.business_utc_offset_minutes as i64);
    let local_midnight = (Utc::now() + offset)
        .date_naive()
        .and_time(chrono::NaiveTime::MIN);
    let today_start = local_midnight - offset;
    let today = store::photos::counts_since(&state.db, today_start).await?;
    let overall =
        store::photos::counts_since(&state.db, chrono::DateTime::UNIX_EPOCH.naive_utc()).await?;
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
        live_connections: state.hub.connections() as u64,
        live_users: state.hub.users() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_follow_the_contract() {
        assert_eq!(parse_amount("0.01").unwrap(), 1);
        assert_eq!(parse_amount("12.5").unwrap(), 1250);
        assert_eq!(parse_amount("9999.99").unwrap(), 999_999);
        assert_eq!(parse_amount("88").unwrap(), 8800);
        for bad in [
            "", "abc", "NaN", "0.001", "0", "0.00", "10000", "-1", "+1", "1e3", "1.", ".5", "１２",
            " 1", "1,5", "inf",
        ] {
            assert!(parse_amount(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn points_are_the_floor_of_ten_times_the_amount() {
        assert_eq!(estimated_points(1), 0);
        assert_eq!(estimated_points(1250), 125);
        assert_eq!(estimated_points(1259), 125);
        assert_eq!(estimated_points(999_999), 99_999);
    }

    #[test]
    fn images_are_recognised_by_their_bytes() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x02\0\0\0\x03\x08\x02\0\0\0";
        let k = sniff_image(png).unwrap();
        assert_eq!((k.content_type, k.width, k.height), ("image/png", 2, 3));
        assert!(sniff_image(b"hello, I am text pretending to be a png").is_err());
        assert!(
            sniff_image(b"\x89PNG\r\n\x1a\n").is_err(),
            "a bare signature is not an image"
        );
        assert!(
            sniff_image(b"GIF89a\x01\0\x01\0").is_err(),
            "GIF is not accepted"
        );
    }
}
