//! A merchant's manual correction of a guest's points.

use protocol::{ErrorCode, PointsAdjustment, Source, UserId};

use super::account::Account;
use super::{AuditEntry, Command, Ctx, Done};
use crate::error::{Error, Result};
use crate::rules::calendar::day_start;
use crate::store::{self, Tx};

/// How far one merchant may move points by hand.
#[derive(Debug, Clone, Copy)]
pub struct AdjustLimits {
    pub per_call: i64,
    pub per_day: i64,
}

/// Grants (positive) or deducts (negative) points with a reason: one ledger
/// row with `source` `admin` and a `points_update` like any change. A
/// deduction below zero is refused with 4005. Bounded per call and, summed
/// over the business day, per merchant (2011); audited.
pub struct AdminAdjust<'a> {
    pub merchant: UserId,
    pub user_id: UserId,
    pub points: i64,
    pub reason: &'a str,
    pub limits: AdjustLimits,
    pub utc_offset_minutes: i32,
}

const ACTION: &str = "points.adjust";

impl Command for AdminAdjust<'_> {
    type Reply = PointsAdjustment;
    const NAME: &'static str = ACTION;

    fn check(&self) -> Result<()> {
        let max = self.limits.per_call;
        if self.points == 0 || self.points.unsigned_abs() > max as u64 {
            return Err(Error::invalid(
                "points",
                format!("须为非零整数，单次不超过 ±{max}"),
            ));
        }
        let reason = self.reason.trim();
        if reason.is_empty() || reason.chars().count() > 255 {
            return Err(Error::invalid("reason", "为必填项，最多 255 个字符"));
        }
        Ok(())
    }

    /// The merchant's own row is locked first (it serializes their budget),
    /// then the guest's.
    async fn run(&self, tx: &mut Tx, ctx: &mut Ctx) -> Result<Done<PointsAdjustment>> {
        if store::users::lock(tx, self.merchant).await?.is_none() {
            return Err(Error::Refused(ErrorCode::TokenInvalid));
        }
        let since = day_start(ctx.now, self.utc_offset_minutes);
        let used = store::audit::points_moved_since(tx, self.merchant, ACTION, since).await?;
        if used + self.points.abs() > self.limits.per_day {
            return Err(Error::Refused(ErrorCode::MerchantLimitReached));
        }
        let mut account = match Account::lock(tx, self.user_id).await {
            Err(Error::Refused(ErrorCode::TokenInvalid)) => {
                return Err(Error::Refused(ErrorCode::NotFound));
            }
            other => other?,
        };
        let before = account.balance();
        let reason = self.reason.trim();
        let description = format!("商家调整：{reason}");
        let related = Some(format!("ADMIN_{}", self.merchant));
        if self.points > 0 {
            account.earn(self.points, Source::Admin, description, related);
        } else {
            account.spend(-self.points, Source::Admin, description, related)?;
        }
        let total_points = account.balance();
        let events = account
            .save(tx, "商家调整积分", Source::Admin, ctx.now)
            .await?;
        let audit = AuditEntry {
            actor_id: self.merchant,
            action: ACTION,
            target: format!("user:{}", self.user_id),
            before: Some(serde_json::json!({ "total_points": before })),
            after: Some(serde_json::json!({ "total_points": total_points })),
            reason: Some(reason.to_string()),
            points: Some(self.points),
        };
        Ok(Done::new(PointsAdjustment {
            user_id: self.user_id,
            points: self.points,
            total_points,
        })
        .with(|e| {
            e.events = events;
            e.audit.push(audit);
        }))
    }
}
