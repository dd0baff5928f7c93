//! What both doors take from a request — the caller, their address, a
//! body, a query — with rejections that speak the contract's envelope in
//! the product's words (the socket's words for the same problem).

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::{HeaderMap, header, request::Parts};
use protocol::ErrorCode;
use serde::de::DeserializeOwned;
use std::net::{IpAddr, SocketAddr};

use crate::app::AppState;
use crate::domain::IdemKey;
use crate::domain::auth::{AuthUser, authorize};
use crate::error::{Error, parse_object, parse_query};
use crate::net::client_ip;
use crate::rules::paging::{Count, Page, PageQuery};

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
        let user = authorize(&state.keys, &state.db, token).await?;
        tracing::Span::current().record("user_id", user.user_id.0);
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

/// The client's address: the socket's peer, or — only when that peer is a
/// trusted proxy — the rightmost address of `X-Forwarded-For` that is not
/// itself a trusted proxy. A client cannot choose its address by sending
/// the header itself.
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0)
            .ok_or_else(|| {
                Error::internal(ErrorCode::Internal, "no peer address on the request")
            })?;
        Ok(ClientIp(client_ip(
            peer,
            &parts.headers,
            &state.config.http.trusted,
        )))
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
                    .map_err(|_| Error::invalid("Idempotency-Key", "须为 ASCII 字符"))?;
                Ok(IdempotencyKey(Some(IdemKey::parse(s)?)))
            }
        }
    }
}

/// A JSON object body, read the one way both doors read input
/// (`error::parse_object`). Over the limit is 413 (2004).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<mime_essence::Essence>().ok())
            .is_some_and(|m| m.is_json());
        if !json {
            return Err(Error::invalid("Content-Type", "须为 application/json"));
        }
        let bytes = read_body(req, state).await?;
        Ok(ApiJson(parse_object(&bytes)?))
    }
}

/// A JSON object body that may be absent (`POST /api/auth/logout`).
pub struct OptionalJson<T>(pub Option<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        Ok(OptionalJson(Some(parse_object(&bytes)?)))
    }
}

async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, Error> {
    Bytes::from_request(req, state).await.map_err(|r| {
        if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            Error::Refused(ErrorCode::PayloadTooLarge)
        } else {
            Error::Invalid("请求内容读取失败".into())
        }
    })
}

/// A query string, read with the same words as bodies.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        Ok(ApiQuery(parse_query(parts.uri.query().unwrap_or(""))?))
    }
}

/// The query of every list endpoint: paging, plus the filters some lists
/// take (each endpoint reads the ones it knows). One struct, because
/// `#[serde(flatten)]` would lose the numbers' types in a query string.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ListQuery {
    pub page: Option<Count>,
    pub page_size: Option<Count>,
    /// The seed's clients also send `limit`.
    pub limit: Option<Count>,
    pub status: Option<String>,
    pub category: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub source: Option<String>,
    /// Hours of the hourly statistics.
    pub hours: Option<Count>,
}

impl ListQuery {
    pub fn page(&self) -> crate::error::Result<Page> {
        PageQuery {
            page: self.page,
            page_size: self.page_size,
            limit: self.limit,
        }
        .resolve()
    }
}

mod mime_essence {
    //! The essence of a Content-Type (`type/subtype`, no parameters).
    pub struct Essence(String);

    impl std::str::FromStr for Essence {
        type Err = ();
        fn from_str(s: &str) -> Result<Essence, ()> {
            let essence = s
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if essence.contains('/') {
                Ok(Essence(essence))
            } else {
                Err(())
            }
        }
    }

    impl Essence {
        /// `application/json` or any `+json` type.
        pub fn is_json(&self) -> bool {
            self.0 == "application/json" || self.0.ends_with("+json")
        }
    }
}
