//! `/api/photo/*` and the images at `/uploads/{key}`.

use axum::Router;
use axum::extract::multipart::{Multipart, MultipartError};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::{Bytes, BytesMut};
use protocol::{ErrorCode, UploadResult, Uploads};

use super::extract::{ApiQuery, ListQuery};
use crate::domain::auth::AuthUser;
use crate::domain::photos;
use crate::error::{Envelope, Error, Result};
use crate::state::AppState;

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
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Error::Refused(ErrorCode::PayloadTooLarge)
    } else {
        Error::Invalid(format!("multipart body: {}", e.body_text()))
    }
}

/// Reads `image` (capped at the configured size) and `amount`; other fields
/// are ignored.
async fn upload(
    State(state): State<AppState>,
    user: AuthUser,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Envelope<UploadResult>> {
    let mut multipart = multipart
        .map_err(|e| Error::Invalid(format!("expected multipart/form-data: {}", e.body_text())))?;
    let cap = state.config.upload_max_bytes;
    let mut image: Option<Bytes> = None;
    let mut amount: Option<String> = None;
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        match field.name() {
            Some("image") => {
                let mut buf = BytesMut::new();
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    if buf.len() + chunk.len() > cap {
                        return Err(Error::Refused(ErrorCode::PayloadTooLarge));
                    }
                    buf.extend_from_slice(&chunk);
                }
                image = Some(buf.freeze());
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
        photos::upload(&state, &user, image, amount.as_deref()).await?,
    ))
}

async fn history(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Envelope<Uploads>> {
    let page = q.page()?;
    Ok(Envelope(
        photos::history(&state, user.user_id, q.status.as_deref(), page).await?,
    ))
}

/// Serves a stored image. Keys are unguessable ULIDs; the bytes were checked
/// to be an image at upload, and are sent with their sniffed type.
pub async fn image(State(state): State<AppState>, Path(key): Path<String>) -> Response {
    if key.contains("..") || !key.starts_with(photos::KEY_PREFIX) {
        return Error::Refused(ErrorCode::NotFound).into_response();
    }
    match state.storage.get(&key).await {
        Ok(Some(obj)) => {
            let content_type = photos::sniff_image(&obj.bytes)
                .map(|k| k.content_type)
                .unwrap_or("application/octet-stream");
            (
                [
                    (header::CONTENT_TYPE, content_type),
                    (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                ],
                obj.bytes,
            )
                .into_response()
        }
        Ok(None) => Error::Refused(ErrorCode::NotFound).into_response(),
        Err(e) => Error::internal(ErrorCode::ServiceUnavailable, e).into_response(),
    }
}
