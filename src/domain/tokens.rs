//! Access tokens (HS256 JWTs) and opaque refresh tokens.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use protocol::{ErrorCode, SessionId, UserId};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id, as a string (JWT's `sub` is a string).
    pub sub: String,
    /// The login session (refresh-token family) this token belongs to.
    pub sid: u64,
    pub iat: i64,
    pub exp: i64,
    /// Always `access`: a token of another kind signed with the same key is refused.
    pub typ: String,
}

/// What a verified access token says.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    pub user_id: UserId,
    pub session_id: SessionId,
    pub expires_at: i64,
}

pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    access_ttl: Duration,
}

impl TokenKeys {
    pub fn new(secret: &str, access_ttl: Duration) -> TokenKeys {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        TokenKeys {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            access_ttl,
        }
    }

    pub fn access_ttl(&self) -> Duration {
        self.access_ttl
    }

    /// Signs an access token; returns it with its expiry (unix seconds).
    pub fn issue_access(
        &self,
        user_id: UserId,
        session_id: SessionId,
        now: DateTime<Utc>,
    ) -> (String, i64) {
        let now = now.timestamp();
        let exp = now + self.access_ttl.as_secs() as i64;
        let claims = Claims {
            sub: user_id.to_string(),
            sid: session_id.0,
            iat: now,
            exp,
            typ: "access".into(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing with an in-memory key cannot fail");
        (token, exp)
    }

    pub fn verify_access(&self, token: &str) -> Result<Access, ErrorCode> {
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation) {
            Ok(data) if data.claims.typ == "access" => Ok(Access {
                user_id: UserId(
                    data.claims
                        .sub
                        .parse()
                        .map_err(|_| ErrorCode::TokenInvalid)?,
                ),
                session_id: SessionId(data.claims.sid),
                expires_at: data.claims.exp,
            }),
            Ok(_) => Err(ErrorCode::TokenInvalid),
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => {
                Err(ErrorCode::TokenExpired)
            }
            Err(_) => Err(ErrorCode::TokenInvalid),
        }
    }
}

/// A new refresh token: 256 random bits, URL-safe. Only its hash is stored.
pub fn new_refresh_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_with_its_key_and_not_another() {
        let keys = TokenKeys::new("k".repeat(32).as_str(), Duration::from_secs(60));
        let (t, _) = keys.issue_access(UserId(7), SessionId(3), Utc::now());
        let c = keys.verify_access(&t).unwrap();
        assert_eq!((c.user_id, c.session_id), (UserId(7), SessionId(3)));
        let other = TokenKeys::new("x".repeat(32).as_str(), Duration::from_secs(60));
        assert_eq!(
            other.verify_access(&t).unwrap_err(),
            ErrorCode::TokenInvalid
        );
        assert_eq!(
            keys.verify_access("not.a.jwt").unwrap_err(),
            ErrorCode::TokenInvalid
        );
    }

    #[test]
    fn an_expired_token_says_expired() {
        let keys = TokenKeys::new("k".repeat(32).as_str(), Duration::from_secs(60));
        let claims = Claims {
            sub: "1".into(),
            sid: 1,
            iat: 0,
            exp: 1,
            typ: "access".into(),
        };
        let t =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding).unwrap();
        assert_eq!(keys.verify_access(&t).unwrap_err(), ErrorCode::TokenExpired);
    }
}
