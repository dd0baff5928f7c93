//! Extractors whose rejections speak the contract's envelope.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderMap, StatusCode, header, request::Parts};
use protocol::ErrorCode;
use serde::de::DeserializeOwned;

use crate::domain::IdemKey;
use crate::domain::auth::{AuthUser, authorize};
use crate::error::Error;
use crate::state::AppState;

/// `Authorization: Bearer <token>`.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let token = bearer_token(&parts.headers)
            .filter(|t| !t.is_empty())
            .ok_or(Error::Refused(ErrorCode::TokenMissing))?;
        let user = authorize(state, token).await?;
        tracing::Span::current().record("user_id", user.user_id);
        Ok(user)
    }
}

/// A caller with `is_merchant`; others get 403.
pub struct MerchantUser(pub AuthUser);

impl FromRequestParts<AppState> for MerchantUser {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        if !user.is_merchant {
            return Err(Error::Refused(ErrorCode::MerchantRequired));
        }
        Ok(MerchantUser(user))
    }
}

/// The optional `Idempotency-Key` header.
pub struct IdempotencyKey(pub Option<IdemKey>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        match parts.headers.get("idempotency-key") {
            None => Ok(IdempotencyKey(None)),
            Some(v) => {
                let s = v
                    .to_str()
                    .map_err(|_| Error::Invalid("Idempotency-Key must be ASCII".into()))?;
                Ok(IdempotencyKey(Some(IdemKey::parse(s)?)))
            }
        }
    }
}

/// JSON body; malformed, mistyped or oversized bodies get the envelope.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> Error {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return Error::Refused(ErrorCode::PayloadTooLarge);
    }
    match r {
        JsonRejection::JsonDataError(e) => Error::Invalid(e.body_text()),
        JsonRejection::JsonSyntaxError(_) => Error::Invalid("body is not valid JSON".into()),
        JsonRejection::MissingJsonContentType(_) => {
            Error::Invalid("Content-Type must be application/json".into())
        }
        other => Error::Invalid(other.body_text()),
    }
}

/// Query string; bad values get the envelope.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                Err(Error::Invalid(e.body_text()))
            }
            Err(other) => Err(Error::Invalid(other.body_text())),
        }
    }
}

/// The query of every list endpoint: paging, plus the filters some lists
/// take (each endpoint reads the ones it knows). One struct, because
/// `#[serde(flatten)]` would lose the numbers' types in a query string.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ListQuery {
    pub page: Option<u32>,
    pub page_size: Option<u32>,
    /// The seed's clients also send `limit`.
    pub limit: Option<u32>,
    pub status: Option<String>,
    pub category: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub source: Option<String>,
}

impl ListQuery {
    pub fn page(&self) -> crate::error::Result<crate::domain::Page> {
        crate::domain::PageQuery {
            page: self.page,
            page_size: self.page_size,
            limit: self.limit,
        }
        .resolve()
    }
}
