//! Points move only through an `Account`: it holds the user's row lock for
//! the whole transaction, keeps the balance with `rules::ledger` (never
//! below zero), writes one ledger row per movement and exactly one
//! `points_update` event per transaction.

use chrono::{DateTime, Utc};
use protocol::{ErrorCode, PointsUpdate, Source, UserId, UserStatus, event};
use serde::Serialize;

use super::{UserEvent, event_frame, rfc3339};
use crate::error::{Error, Result};
use crate::rules::ledger::Ledger;
use crate::store::{self, Tx, users::LockedUser};

pub struct Account {
    /// The locked row; commands may change `pity_count` and the draw-day
    /// counters, which are written back with the points.
    pub user: LockedUser,
    ledger: Ledger,
    events: Vec<UserEvent>,
}

impl Account {
    /// Locks the user's row for the rest of the transaction. An unknown
    /// user is a token for nobody; a disabled one may not act.
    pub async fn lock(tx: &mut Tx, user_id: UserId) -> Result<Account> {
        let user = store::users::lock(tx, user_id)
            .await?
            .ok_or(Error::Refused(ErrorCode::TokenInvalid))?;
        if user.status != UserStatus::Active {
            return Err(Error::Refused(ErrorCode::AccountDisabled));
        }
        Ok(Account {
            ledger: Ledger::new(user.total_points),
            user,
            events: Vec::new(),
        })
    }

    pub fn balance(&self) -> i64 {
        self.ledger.balance()
    }

    /// Takes `points` or refuses with 4005, changing nothing.
    pub fn spend(
        &mut self,
        points: i64,
        source: Source,
        description: String,
        related_id: Option<String>,
    ) -> Result<()> {
        self.ledger
            .spend(points, source, description, related_id)
            .map_err(|s| Error::NotEnoughPoints {
                required: s.required,
                current: s.current,
            })
    }

    pub fn earn(
        &mut self,
        points: i64,
        source: Source,
        description: String,
        related_id: Option<String>,
    ) {
        self.ledger.earn(points, source, description, related_id);
    }

    /// Adds a user event (other than `points_update`, which `save` adds)
    /// with the next `seq`.
    pub fn add_event<T: Serialize>(&mut self, kind: &'static str, data: &T) {
        self.user.last_seq += 1;
        self.events.push(UserEvent {
            user_id: self.user.user_id,
            seq: self.user.last_seq,
            kind,
            frame: event_frame(kind, Some(self.user.last_seq), data),
        });
    }

    /// Writes the ledger rows, one `points_update` (when points moved), the
    /// events and the row itself. Returns the events to push after commit.
    pub async fn save(
        mut self,
        tx: &mut Tx,
        reason: &str,
        source: Source,
        now: DateTime<Utc>,
    ) -> Result<Vec<UserEvent>> {
        if self.ledger.moved() {
            let update = PointsUpdate {
                user_id: self.user.user_id,
                total_points: self.ledger.balance(),
                change_points: self.ledger.change(),
                reason: reason.to_string(),
                source,
                timestamp: rfc3339(now),
            };
            self.add_event(event::POINTS_UPDATE, &update);
            store::ledger::insert(tx, self.user.user_id, self.ledger.entries()).await?;
        }
        for e in &self.events {
            store::events::insert(tx, e.user_id, e.seq, e.kind, &e.frame).await?;
        }
        self.user.total_points = self.ledger.balance();
        store::users::write_back(tx, &self.user).await?;
        Ok(self.events)
    }
}
