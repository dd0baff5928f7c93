//! `/api/user/*`.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use protocol::{ErrorCode, PointsRecord, PointsRecords, UserInfo};

use super::extract::{ApiQuery, ListQuery};
use crate::domain::auth::{self, AuthUser};
use crate::domain::points::source;
use crate::domain::to_rfc3339;
use crate::error::{Envelope, Error, Result};
use crate::state::AppState;
use crate::store;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/info", get(info))
        .route("/points/records", get(points_records))
}

async fn info(State(state): State<AppState>, user: AuthUser) -> Result<Envelope<UserInfo>> {
    let row = store::users::find(&state.db, user.user_id)
        .await?
        .ok_or(Error::Refused(ErrorCode::TokenInvalid))?;
    Ok(Envelope(auth::user_info(&row)))
}

async fn points_records(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Envelope<PointsRecords>> {
    let page = q.page()?;
    let kind = match q.kind.as_deref() {
        None | Some("") | Some("all") => None,
        Some(k @ ("earn" | "spend")) => Some(k),
        Some(_) => return Err(Error::Invalid("type must be all, earn or spend".into())),
    };
    let src = match q.source.as_deref() {
        None | Some("") => None,
        Some(s) if source::ALL.contains(&s) => Some(s),
        Some(_) => {
            return Err(Error::Invalid(format!(
                "source must be one of {}",
                source::ALL.join(", ")
            )));
        }
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
                created_at: to_rfc3339(r.created_at),
            })
            .collect(),
        pagination: page.pagination(total),
    }))
}
