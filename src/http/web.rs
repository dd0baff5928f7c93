//! The merchant console (`/console/`) and the guest demo (`/play/`):
//! plain files under `web/`, embedded in the binary so a deployment is one
//! file. They use only the public API and the socket.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use protocol::ErrorCode;

use crate::app::AppState;
use crate::error::Error;

#[derive(rust_embed::RustEmbed)]
#[folder = "web/"]
struct Assets;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route("/play", get(|| async { Redirect::permanent("/play/") }))
        .route("/console/", get(|| async { asset("console/index.html") }))
        .route("/play/", get(|| async { asset("play/index.html") }))
        .route(
            "/console/{*path}",
            get(|Path(p): Path<String>| async move { asset(&format!("console/{p}")) }),
        )
        .route(
            "/play/{*path}",
            get(|Path(p): Path<String>| async move { asset(&format!("play/{p}")) }),
        )
        .route(
            "/shared/{*path}",
            get(|Path(p): Path<String>| async move { asset(&format!("shared/{p}")) }),
        )
}

fn asset(path: &str) -> Response {
    let Some(file) = Assets::get(path) else {
        return Error::Refused(ErrorCode::NotFound).into_response();
    };
    let mime = match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    };
    let mut res = file.data.into_owned().into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    // Pages change with the server; revalidate on every load.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' blob: data:; connect-src 'self' ws: wss:; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
        ),
    );
    res
}
