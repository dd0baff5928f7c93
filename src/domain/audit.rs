//! The merchant audit log, as merchants read it.

use protocol::{AuditEntry, AuditLog};
use sqlx::MySqlPool;

use super::stored_rfc3339;
use crate::error::Result;
use crate::rules::paging::Page;
use crate::store;

/// Newest first.
pub async fn log(db: &MySqlPool, page: Page) -> Result<AuditLog> {
    let (rows, total) = store::audit::page(db, page.size, page.offset()).await?;
    let json = |v: Option<String>| v.and_then(|t| serde_json::from_str(&t).ok());
    Ok(AuditLog {
        entries: rows
            .into_iter()
            .map(|r| AuditEntry {
                id: r.id,
                actor_id: r.actor_id,
                action: r.action,
                target: r.target,
                before: json(r.before_value),
                after: json(r.after_value),
                reason: r.reason,
                created_at: stored_rfc3339(r.created_at),
            })
            .collect(),
        pagination: page.pagination(total),
    })
}
