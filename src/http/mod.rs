//! REST routes by capability, and the middleware every request passes:
//! request id, a span carrying it, error logging, panic containment and
//! body limits.

mod auth;
mod exchange;
mod lottery;
mod merchant;
mod ops;
mod photo;
mod user;
mod web;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use protocol::ErrorCode;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::app::AppState;
use crate::error::{Error, ErrorCause};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .nest("/auth", auth::routes())
        .nest("/user", user::routes())
        .nest("/lottery", lottery::routes())
        .nest("/exchange", exchange::routes())
        .nest("/merchant", merchant::routes())
        .nest("/photo", photo::routes(&state))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);

    Router::new()
        .nest("/api", api)
        .route("/ws", get(crate::ws::upgrade))
        .route("/uploads/{*key}", get(photo::image))
        .route("/health", get(ops::health))
        .route("/healthz", get(ops::health))
        .route("/metrics", get(ops::metrics))
        .merge(web::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(CatchPanicLayer::custom(|_| {
            Error::internal(ErrorCode::Internal, "handler panicked").into_response()
        }))
        .layer(middleware::from_fn_with_state(state.clone(), log_errors))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, NewRequestId))
        .with_state(state)
}

async fn not_found() -> Error {
    Error::Refused(ErrorCode::NotFound)
}

async fn method_not_allowed() -> Error {
    Error::Refused(ErrorCode::MethodNotAllowed)
}

#[derive(Clone)]
struct NewRequestId;

impl MakeRequestId for NewRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&ulid::Ulid::new().to_string())
            .ok()
            .map(RequestId::new)
    }
}

fn request_span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| req.uri().path().to_owned());
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "request",
        method = %req.method(),
        path,
        request_id,
        user_id = tracing::field::Empty,
    )
}

/// Logs an error response once, inside the request span: internal causes at
/// error level, refusals at debug.
async fn log_errors(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    if let Some(ErrorCause(cause)) = res.extensions().get::<ErrorCause>() {
        state.metrics.http_errors.inc();
        if res.status().is_server_error() {
            tracing::error!(status = res.status().as_u16(), %cause, "request failed");
        } else {
            tracing::debug!(status = res.status().as_u16(), %cause, "request refused");
        }
    }
    res
}
