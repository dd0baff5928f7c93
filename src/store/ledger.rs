//! The points ledger (`points_records`).

use super::Tx;
use crate::rules::ledger::Entry;
use chrono::NaiveDateTime;
use protocol::{EntryKind, Source, UserId};
use sqlx::{FromRow, MySqlPool, QueryBuilder};

pub async fn insert(tx: &mut Tx, user_id: UserId, entries: &[Entry]) -> sqlx::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut qb = QueryBuilder::new(
        "INSERT INTO points_records (user_id, type, points, balance_after, source, description, related_id) ",
    );
    qb.push_values(entries, |mut b, e| {
        b.push_bind(user_id)
            .push_bind(e.kind)
            .push_bind(e.points)
            .push_bind(e.balance_after)
            .push_bind(e.source)
            .push_bind(&e.description)
            .push_bind(&e.related_id);
    });
    qb.build().execute(&mut **tx).await?;
    Ok(())
}

#[derive(Debug, Clone, FromRow)]
pub struct RecordRow {
    pub record_id: u64,
    #[sqlx(rename = "type")]
    pub kind: EntryKind,
    pub points: i64,
    pub balance_after: i64,
    pub source: Source,
    pub description: String,
    pub related_id: Option<String>,
    pub created_at: NaiveDateTime,
}

/// A page of a user's ledger, newest first, and the total matching.
pub async fn page(
    pool: &MySqlPool,
    user_id: UserId,
    kind: Option<EntryKind>,
    source: Option<Source>,
    limit: u32,
    offset: u64,
) -> sqlx::Result<(Vec<RecordRow>, u64)> {
    let filter = |qb: &mut QueryBuilder<sqlx::MySql>| {
        qb.push(" WHERE user_id = ").push_bind(user_id);
        if let Some(k) = kind {
            qb.push(" AND type = ").push_bind(k);
        }
        if let Some(s) = source {
            qb.push(" AND source = ").push_bind(s);
        }
    };
    let mut qb = QueryBuilder::new(
        "SELECT record_id, type, points, balance_after, source, description, related_id, created_at FROM points_records",
    );
    filter(&mut qb);
    qb.push(" ORDER BY record_id DESC LIMIT ")
        .push_bind(limit)
        .push(" OFFSET ")
        .push_bind(offset);
    let rows = qb.build_query_as::<RecordRow>().fetch_all(pool).await?;

    let mut qb = QueryBuilder::new("SELECT COUNT(*) FROM points_records");
    filter(&mut qb);
    let (total,): (i64,) = qb.build_query_as().fetch_one(pool).await?;
    Ok((rows, total as u64))
}
