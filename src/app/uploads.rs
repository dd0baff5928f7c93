//! Receiving a receipt: limits first (client IP, the guest's quotas, how
//! many uploads are received at once), then the image is streamed into a
//! scratch file while its first bytes decide whether it is an image at all
//! and its metadata (EXIF with GPS, XMP, comments) is dropped, then stored,
//! then its row is written by `RecordUpload` under the guest's lock.
//! Memory per upload is a bounded buffer, whatever the image's size.

use bytes::Bytes;
use futures::Stream;
use protocol::{ErrorCode, UploadId, UploadResult, UserId};
use std::net::IpAddr;
use std::time::Duration;
use tokio::sync::SemaphorePermit;

use super::AppState;
use crate::domain::photos::{KEY_PREFIX, RecordUpload, UploadQuotas, precheck};
use crate::error::{Error, Result};
use crate::image::{ImageError, ImageInfo, sanitize_to_file};
use crate::rules::input::parse_amount;
use crate::storage::ScratchPath;

/// How long an upload waits for a free slot before it is told to retry.
const SLOT_WAIT: Duration = Duration::from_secs(2);
/// Uploads one guest may be sending at once: a phone sends one receipt at
/// a time, and one account must not hold the slots everyone shares.
const PER_USER: usize = 2;

/// An upload being received.
pub struct Incoming<'a> {
    state: &'a AppState,
    user_id: UserId,
    /// Held until the upload is stored: bounds uploads in flight.
    _slot: SemaphorePermit<'a>,
    _mine: UserSlot<'a>,
    image: Option<(ImageInfo, ScratchPath)>,
}

/// The content type of a stored receipt, from its server-chosen key;
/// `None` for anything that is not a receipt's key.
pub fn content_type_of_key(key: &str) -> Option<&'static str> {
    if key.contains("..") || !key.starts_with(KEY_PREFIX) || key.contains('?') {
        return None;
    }
    match key.rsplit_once('.')?.1 {
        "jpg" => Some("image/jpeg"),
        "png" => Some("image/png"),
        "webp" => Some("image/webp"),
        _ => None,
    }
}

impl AppState {
    fn quotas(&self) -> UploadQuotas {
        UploadQuotas {
            per_day: self.config.upload_daily_limit,
            pending: self.config.upload_pending_limit,
            bytes_per_day: self.config.upload_daily_bytes,
        }
    }

    /// Checks everything that can refuse an upload before its bytes are
    /// read, and takes a slot.
    pub async fn begin_upload(&self, ip: IpAddr, user_id: UserId) -> Result<Incoming<'_>> {
        self.limits.upload.check(ip).inspect_err(|_| {
            self.metrics.limit_hit(self.limits.upload.name());
        })?;
        let now = chrono::Utc::now();
        precheck(
            &self.db,
            user_id,
            self.quotas(),
            now,
            self.config.business_utc_offset_minutes,
        )
        .await
        .inspect_err(|_| self.metrics.limit_hit("upload_quota"))?;
        let mine = UserSlot::take(&self.uploading, user_id).ok_or_else(|| {
            self.metrics.limit_hit("uploads_in_flight_per_user");
            Error::Refused(ErrorCode::Busy)
        })?;
        let slot = tokio::time::timeout(SLOT_WAIT, self.uploads.acquire())
            .await
            .map_err(|_| {
                self.metrics.limit_hit("uploads_in_flight");
                Error::Refused(ErrorCode::Busy)
            })?
            .map_err(|_| Error::Refused(ErrorCode::ServiceUnavailable))?;
        Ok(Incoming {
            state: self,
            user_id,
            _slot: slot,
            _mine: mine,
            image: None,
        })
    }

    /// Stores the received image and records the upload; an upload that
    /// cannot be recorded leaves no image behind.
    pub async fn finish_upload(
        &self,
        incoming: Incoming<'_>,
        amount: &str,
    ) -> Result<UploadResult> {
        let (info, scratch) = incoming.image.ok_or(Error::Refused(ErrorCode::NoImage))?;
        let cents = parse_amount(amount)?;
        let upload_id = UploadId(ulid::Ulid::new().to_string());
        let now = chrono::Utc::now();
        let key = format!(
            "{KEY_PREFIX}/{}/{upload_id}.{}",
            now.format("%Y/%m"),
            info.extension
        );
        self.storage
            .put_file(&key, scratch)
            .await
            .map_err(|e| Error::internal(ErrorCode::UploadFailed, e))?;
        let cmd = RecordUpload {
            user_id: incoming.user_id,
            upload_id: &upload_id,
            storage_key: &key,
            content_type: info.content_type,
            size_bytes: info.size_bytes,
            width: info.width,
            height: info.height,
            amount_cents: cents,
            quotas: self.quotas(),
            caps: self.award_caps(),
            utc_offset_minutes: self.config.business_utc_offset_minutes,
            urls: &self.urls,
        };
        match self.runner.run(&cmd).await {
            Ok(result) => Ok(result),
            Err(e) => {
                if let Err(del) = self.storage.delete(&key).await {
                    tracing::warn!(%key, error = %del, "could not delete the image of a failed upload; the sweep will");
                }
                Err(e)
            }
        }
    }
}

impl Incoming<'_> {
    /// Streams the `image` field into a scratch file, cleaned. A second
    /// image field replaces the first.
    pub async fn receive_image(
        &mut self,
        chunks: impl Stream<Item = Result<Bytes>> + Unpin,
    ) -> Result<()> {
        let storage = &self.state.storage;
        let (mut file, scratch) = storage
            .scratch_file()
            .await
            .map_err(|e| Error::internal(ErrorCode::UploadFailed, e))?;
        let max = self.state.config.upload_max_bytes as u64;
        match sanitize_to_file(chunks, max, &mut file).await {
            Ok(info) => {
                self.image = Some((info, scratch));
                Ok(())
            }
            Err(ImageError::Empty) => Err(Error::Refused(ErrorCode::NoImage)),
            Err(ImageError::NotAnImage) => Err(Error::Refused(ErrorCode::UnsupportedImage)),
            Err(ImageError::TooLarge) => Err(Error::Refused(ErrorCode::PayloadTooLarge)),
            Err(ImageError::Input(e)) => Err(e),
            Err(ImageError::Io(e)) => Err(Error::internal(ErrorCode::UploadFailed, e)),
        }
    }
}

/// One of a guest's `PER_USER` upload slots, given back on drop.
struct UserSlot<'a> {
    map: &'a dashmap::DashMap<UserId, usize>,
    user_id: UserId,
}

impl<'a> UserSlot<'a> {
    fn take(map: &'a dashmap::DashMap<UserId, usize>, user_id: UserId) -> Option<UserSlot<'a>> {
        let mut n = map.entry(user_id).or_insert(0);
        if *n >= PER_USER {
            return None;
        }
        *n += 1;
        Some(UserSlot { map, user_id })
    }
}

impl Drop for UserSlot<'_> {
    fn drop(&mut self) {
        self.map.remove_if_mut(&self.user_id, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}
