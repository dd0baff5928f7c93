//! `/api/photo/*` and the receipts at `/uploads/{key}`.

use axum::Router;
use axum::body::Body;
use axum::extract::multipart::{Multipart, MultipartError, MultipartRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use protocol::{ErrorCode, UploadResult, Uploads};
use serde::Deserialize;

use crate::app::AppState;
use crate::app::uploads::content_type_of_key;
use crate::domain::auth::{AuthUser, authorize};
use crate::domain::photos;
use crate::error::{Envelope, Error, Result};
use crate::extract::{ApiQuery, ClientIp, ListQuery, bearer_token};

/// Room for the multipart framing and the `amount` field beside the image.
const FORM_OVERHEAD: usize = 64 * 1024;

pub fn routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/upload",
            post(upload).layer(DefaultBodyLimit::max(
                state.config.upload_max_bytes + FORM_OVERHEAD,
            )),
        )
        .route("/history", get(history))
}

fn multipart_error(e: MultipartError) -> Error {
    match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => Error::Refused(ErrorCode::PayloadTooLarge),
        _ if e.body_text().contains("timed out") => Error::Refused(ErrorCode::RequestTimeout),
        _ => Error::Invalid("上传内容不是有效的 multipart/form-data".into()),
    }
}

/// Reads `image` (streamed into storage as it arrives, cleaned of
/// metadata, capped at the configured size) and `amount`; other fields are
/// ignored.
async fn upload(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    user: AuthUser,
    multipart: std::result::Result<Multipart, MultipartRejection>,
) -> Result<Envelope<UploadResult>> {
    let mut multipart =
        multipart.map_err(|_| Error::invalid("Content-Type", "须为 multipart/form-data"))?;
    let mut incoming = state.begin_upload(ip, user.user_id).await?;
    let mut amount: Option<String> = None;
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        match field.name() {
            Some("image") => {
                let chunks = field.map(|c| c.map_err(multipart_error));
                incoming.receive_image(chunks).await?;
            }
            Some("amount") => {
                let text = field.text().await.map_err(multipart_error)?;
                if text.len() > 32 {
                    return Err(Error::Refused(ErrorCode::InvalidAmount));
                }
                amount = Some(text);
            }
            _ => {}
        }
    }
    Ok(Envelope(
        state
            .finish_upload(incoming, amount.as_deref().unwrap_or(""))
            .await?,
    ))
}

async fn history(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Envelope<Uploads>> {
    let page = q.page()?;
    Ok(Envelope(
        photos::history(
            &state.db,
            &state.urls,
            user.user_id,
            q.status.as_deref(),
            page,
        )
        .await?,
    ))
}

#[derive(Deserialize)]
pub struct Signed {
    exp: Option<i64>,
    sig: Option<String>,
}

/// Serves a receipt to its owner and to merchants only: through a signed,
/// short-lived URL (what `image_url` is), or with the bearer token of the
/// owner or a merchant. Streamed, never read whole; `Cache-Control:
/// private`, so no shared cache keeps it.
pub async fn image(
    State(state): State<AppState>,
    Path(key): Path<String>,
    ApiQuery(signed): ApiQuery<Signed>,
    headers: HeaderMap,
) -> Response {
    match serve_image(&state, &key, signed, &headers).await {
        Ok(res) => res,
        Err(e) => e.into_response(),
    }
}

async fn serve_image(
    state: &AppState,
    key: &str,
    signed: Signed,
    headers: &HeaderMap,
) -> Result<Response> {
    let content_type = content_type_of_key(key).ok_or(Error::Refused(ErrorCode::NotFound))?;
    let now = chrono::Utc::now();
    let by_signature = match (signed.exp, signed.sig.as_deref()) {
        (Some(exp), Some(sig)) => state.urls.verify(key, exp, sig, now),
        _ => false,
    };
    if !by_signature {
        let token = bearer_token(headers)
            .filter(|t| !t.is_empty())
            .ok_or(Error::Refused(ErrorCode::TokenMissing))?;
        let user = authorize(&state.keys, &state.db, token).await?;
        if !user.is_merchant {
            let owner = crate::store::photos::owner_of_key(&state.db, key).await?;
            // Someone else's receipt does not exist, as far as they know.
            if owner != Some(user.user_id) {
                return Err(Error::Refused(ErrorCode::NotFound));
            }
        }
    }
    let object = state
        .storage
        .get(key)
        .await
        .map_err(|e| Error::internal(ErrorCode::ServiceUnavailable, e))?
        .ok_or(Error::Refused(ErrorCode::NotFound))?;
    let mut res = Body::from_stream(object.chunks).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(object.size));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=300"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(res)
}
