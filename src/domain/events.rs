//! Replaying a user's missed events after a reconnect.

use protocol::{SyncResult, UserId};
use sqlx::MySqlPool;

use crate::error::{Error, Result};
use crate::store;

/// Events after `since`, in `seq` order, with the summary reply. When the
/// events are no longer all kept (pruned, or more than `limit`) or `since`
/// is ahead of the user's newest event, the answer is 7005 with
/// `{"reset": true, "last_seq"}` and the client reloads over REST.
pub async fn replay(
    db: &MySqlPool,
    user_id: UserId,
    since: u64,
    limit: u32,
) -> Result<(Vec<(u64, String)>, SyncResult)> {
    let events = store::events::after(db, user_id, since, limit + 1).await?;
    let too_many = events.len() > limit as usize;
    let gap = events.first().is_some_and(|(seq, _)| *seq != since + 1);
    if too_many || gap {
        return Err(Error::SyncTooOld {
            last_seq: last_seq(db, user_id).await?,
        });
    }
    if events.is_empty() {
        let last = last_seq(db, user_id).await?;
        if since > last {
            return Err(Error::SyncTooOld { last_seq: last });
        }
    }
    let to_seq = events.last().map(|(s, _)| *s).unwrap_or(since);
    let summary = SyncResult {
        from_seq: since + 1,
        to_seq,
        count: events.len() as u64,
    };
    Ok((events, summary))
}

async fn last_seq(db: &MySqlPool, user_id: UserId) -> Result<u64> {
    Ok(store::users::points_and_seq(db, user_id)
        .await?
        .map(|(_, seq)| seq)
        .unwrap_or(0))
}
