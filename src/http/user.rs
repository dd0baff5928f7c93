//! `/api/user/*`.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use protocol::{EntryKind, PointsRecord, PointsRecords, Source, UserInfo};

use crate::app::AppState;
use crate::domain::auth::{self, AuthUser};
use crate::domain::stored_rfc3339;
use crate::error::{Envelope, Error, Result};
use crate::extract::{ApiQuery, ListQuery};
use crate::store;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/info", get(info))
        .route("/points/records", get(points_records))
}

async fn info(State(state): State<AppState>, user: AuthUser) -> Result<Envelope<UserInfo>> {
    Ok(Envelope(auth::user_info(&state.db, user.user_id).await?))
}

async fn points_records(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Envelope<PointsRecords>> {
    let page = q.page()?;
    let kind =
        match q.kind.as_deref() {
            None | Some("") | Some("all") => None,
            Some(k) => Some(EntryKind::parse(k).ok_or_else(|| {
                Error::invalid("type", format!("须为 all、{}", EntryKind::names()))
            })?),
        };
    let src = match q.source.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            Source::parse(s)
                .ok_or_else(|| Error::invalid("source", format!("须为 {}", Source::names())))?,
        ),
    };
    let (rows, total) =
        store::ledger::page(&state.db, user.user_id, kind, src, page.size, page.offset()).await?;
    Ok(Envelope(PointsRecords {
        records: rows
            .into_iter()
            .map(|r| PointsRecord {
                record_id: r.record_id,
                kind: r.kind,
                points: r.points,
                balance_after: r.balance_after,
                source: r.source,
                description: r.description,
                related_id: r.related_id,
                created_at: stored_rfc3339(r.created_at),
            })
            .collect(),
        pagination: page.pagination(total),
    }))
}
