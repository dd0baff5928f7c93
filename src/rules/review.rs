//! What a merchant's review may do to an upload, as values.

use protocol::ReviewAction;

use crate::error::{Error, Result};

/// Bounds on what one approval may award (see `REVIEW_AWARD_*`): a
/// multiple of the receipt's estimate, and an absolute cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwardCaps {
    pub multiplier: i64,
    pub max: i64,
}

impl AwardCaps {
    /// The most an approval of a receipt estimated at `estimate` may award
    /// (at least 1: a receipt too small for an estimate may still earn a
    /// point).
    pub fn cap(&self, estimate: i64) -> i64 {
        estimate
            .max(0)
            .saturating_mul(self.multiplier)
            .min(self.max)
            .max(1)
    }
}

/// A review that may be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Approve { points: i64, reason: String },
    Reject { reason: String },
}

impl Decision {
    pub fn points(&self) -> i64 {
        match self {
            Decision::Approve { points, .. } => *points,
            Decision::Reject { .. } => 0,
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Decision::Approve { reason, .. } | Decision::Reject { reason } => reason,
        }
    }
}

pub const MAX_REASON_CHARS: usize = 255;

/// Checks a review of a pending upload estimated at `estimate` points.
/// Approval awards `points` (default: the estimate, within the cap) from 1
/// to the cap; a rejection needs a reason and takes `points` 0 or absent.
pub fn decide(
    action: ReviewAction,
    points: Option<i64>,
    reason: Option<&str>,
    estimate: i64,
    caps: AwardCaps,
) -> Result<Decision> {
    let reason = reason.map(str::trim).unwrap_or("");
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(Error::invalid(
            "reason",
            format!("不能超过 {MAX_REASON_CHARS} 个字符"),
        ));
    }
    match action {
        ReviewAction::Approve => {
            let cap = caps.cap(estimate);
            let points = points.unwrap_or(estimate.clamp(1, cap));
            if !(1..=cap).contains(&points) {
                return Err(Error::invalid(
                    "points",
                    format!("须为 1 到 {cap}（本小票可奖励的上限）"),
                ));
            }
            let reason = if reason.is_empty() {
                "审核通过"
            } else {
                reason
            };
            Ok(Decision::Approve {
                points,
                reason: reason.to_string(),
            })
        }
        ReviewAction::Reject => {
            if points.is_some_and(|p| p != 0) {
                return Err(Error::invalid("points", "驳回不奖励积分"));
            }
            if reason.is_empty() {
                return Err(Error::invalid("reason", "驳回须填写原因"));
            }
            Ok(Decision::Reject {
                reason: reason.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CAPS: AwardCaps = AwardCaps {
        multiplier: 10,
        max: 50_000,
    };

    #[test]
    fn a_twelve_yuan_receipt_cannot_earn_ninety_thousand_points() {
        assert_eq!(CAPS.cap(120), 1200);
        assert!(decide(ReviewAction::Approve, Some(99_999), None, 120, CAPS).is_err());
        assert_eq!(
            decide(ReviewAction::Approve, None, None, 120, CAPS)
                .unwrap()
                .points(),
            120
        );
    }

    #[test]
    fn a_rejection_takes_zero_or_no_points_and_needs_a_reason() {
        assert!(decide(ReviewAction::Reject, Some(0), Some("模糊"), 120, CAPS).is_ok());
        assert!(decide(ReviewAction::Reject, None, Some("模糊"), 120, CAPS).is_ok());
        assert!(decide(ReviewAction::Reject, Some(5), Some("模糊"), 120, CAPS).is_err());
        assert!(decide(ReviewAction::Reject, None, Some("  "), 120, CAPS).is_err());
    }

    proptest! {
        /// An award never exceeds its cap, whatever is asked, and a
        /// rejection never awards anything.
        #[test]
        fn an_award_never_exceeds_its_cap(
            estimate in 0i64..=99_999,
            asked in proptest::option::of(-10i64..2_000_000),
            multiplier in 1i64..=20,
            max in 0i64..=200_000,
            approve in any::<bool>(),
        ) {
            let caps = AwardCaps { multiplier, max };
            let action = if approve { ReviewAction::Approve } else { ReviewAction::Reject };
            if let Ok(d) = decide(action, asked, Some("ok"), estimate, caps) {
                prop_assert!(d.points() >= 0);
                prop_assert!(d.points() <= caps.cap(estimate));
                prop_assert!(d.points() <= max.max(1));
                if !approve {
                    prop_assert_eq!(d.points(), 0);
                }
            }
        }
    }
}
