//! Points move only through an `Account`: it holds the user's row lock for
//! the whole transaction, refuses to go below zero, writes one ledger row
//! per movement and exactly one `points_update` event per transaction.

use protocol::{PointsUpdate, event};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::store::{self, Tx, ledger::NewEntry, users::LockedUser};
use protocol::ErrorCode;

/// Ledger sources (the `source` filter of the points records).
pub mod source {
    pub const REGISTER: &str = "register";
    pub const LOTTERY: &str = "lottery";
    pub const LOTTERY_PRIZE: &str = "lottery_prize";
    pub const EXCHANGE: &str = "exchange";
    pub const PHOTO_UPLOAD: &str = "photo_upload";
    pub const ADMIN: &str = "admin";
    pub const ALL: &[&str] = &[
        REGISTER,
        LOTTERY,
        LOTTERY_PRIZE,
        EXCHANGE,
        PHOTO_UPLOAD,
        ADMIN,
    ];
}

/// A user event written in this transaction, to push once it commits.
#[derive(Debug, Clone)]
pub struct UserEvent {
    pub user_id: u64,
    pub seq: u64,
    pub kind: &'static str,
    /// The exact text frame, as stored in `user_events`.
    pub frame: String,
}

pub struct Account {
    /// The locked row; callers may change `pity_count` and the draw-day
    /// counters, which are written back with the points.
    pub user: LockedUser,
    opening_balance: i64,
    entries: Vec<NewEntry>,
    events: Vec<UserEvent>,
}

impl Account {
    /// Locks the user's row for the rest of the transaction.
    pub async fn lock(tx: &mut Tx, user_id: u64) -> Result<Account> {
        let user = store::users::lock(tx, user_id)
            .await?
            .ok_or(Error::Refused(ErrorCode::TokenInvalid))?;
        if user.status != "active" {
            return Err(Error::Refused(ErrorCode::AccountDisabled));
        }
        Ok(Account {
            opening_balance: user.total_points,
            user,
            entries: Vec::new(),
            events: Vec::new(),
        })
    }

    pub fn balance(&self) -> i64 {
        self.user.total_points
    }

    pub fn spend(
        &mut self,
        points: i64,
        source: &'static str,
        description: String,
        related_id: Option<String>,
    ) -> Result<()> {
        debug_assert!(points > 0);
        if points > self.user.total_points {
            return Err(Error::NotEnoughPoints {
                required: points,
                current: self.user.total_points,
            });
        }
        self.user.total_points -= points;
        self.entries.push(NewEntry {
            earn: false,
            points,
            balance_after: self.user.total_points,
            source,
            description,
            related_id,
        });
        Ok(())
    }

    pub fn earn(
        &mut self,
        points: i64,
        source: &'static str,
        description: String,
        related_id: Option<String>,
    ) {
        if points <= 0 {
            return;
        }
        self.user.total_points += points;
        self.entries.push(NewEntry {
            earn: true,
            points,
            balance_after: self.user.total_points,
            source,
            description,
            related_id,
        });
    }

    /// Adds a user event (other than `points_update`, which `save` adds) with
    /// the next `seq`.
    pub fn add_event<T: Serialize>(&mut self, kind: &'static str, data: &T) -> Result<()> {
        self.user.last_seq += 1;
        let frame = serde_json::to_string(&protocol::EventFrame {
            kind,
            seq: Some(self.user.last_seq),
            data,
        })
        .map_err(|e| Error::internal(ErrorCode::Internal, e))?;
        self.events.push(UserEvent {
            user_id: self.user.user_id,
            seq: self.user.last_seq,
            kind,
            frame,
        });
        Ok(())
    }

    /// Writes the ledger rows, one `points_update` (when points moved), the
    /// events and the row itself. Returns the events to push after commit.
    pub async fn save(mut self, tx: &mut Tx, reason: &str, source: &str) -> Result<Vec<UserEvent>> {
        if !self.entries.is_empty() {
            let update = PointsUpdate {
                user_id: self.user.user_id,
                total_points: self.user.total_points,
                change_points: self.user.total_points - self.opening_balance,
                reason: reason.to_string(),
                source: source.to_string(),
                timestamp: super::now_rfc3339(),
            };
            self.add_event(event::POINTS_UPDATE, &update)?;
            store::ledger::insert(tx, self.user.user_id, &self.entries).await?;
        }
        for e in &self.events {
            store::events::insert(tx, e.user_id, e.seq, e.kind, &e.frame).await?;
        }
        store::users::write_back(tx, &self.user).await?;
        Ok(self.events)
    }
}

/// A merchant's manual correction of a guest's points (ledger source
/// `admin`), pushed like any other change. A deduction below zero is
/// refused with 4005 and changes nothing.
#[tracing::instrument(skip_all, fields(merchant_id = merchant.user_id, user_id))]
pub async fn admin_adjust(
    state: &crate::state::AppState,
    merchant: &super::auth::AuthUser,
    user_id: u64,
    points: i64,
    reason: &str,
) -> Result<protocol::PointsAdjustment> {
    const MAX: i64 = 1_000_000;
    if points == 0 || points.abs() > MAX {
        return Err(Error::Invalid(format!(
            "points must be non-zero, at most {MAX} either way"
        )));
    }
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > 255 {
        return Err(Error::Invalid(
            "a reason of 1 to 255 characters is required".into(),
        ));
    }
    if store::users::find(&state.db, user_id).await?.is_none() {
        return Err(Error::Refused(ErrorCode::NotFound));
    }
    let mut tx = state.db.begin().await?;
    let mut account = Account::lock(&mut tx, user_id).await?;
    let description = format!("商家调整：{reason}");
    let related = Some(format!("ADMIN_{}", merchant.user_id));
    if points > 0 {
        account.earn(points, source::ADMIN, description, related);
    } else {
        account.spend(-points, source::ADMIN, description, related)?;
    }
    let total_points = account.balance();
    let events = account.save(&mut tx, "商家调整积分", source::ADMIN).await?;
    tx.commit().await?;
    state.hub.deliver(&events);
    Ok(protocol::PointsAdjustment {
        user_id,
        points,
        total_points,
    })
}
