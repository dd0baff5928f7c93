//! Verification codes, login, token rotation and logout.

use chrono::{Duration as ChronoDuration, Utc};
use protocol::{ErrorCode, LoginResponse, UserInfo, close};
use rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::sync::atomic::Ordering;
use tracing::instrument;

use super::points::{Account, source};
use super::tokens::{Access, hash_token, new_refresh_token};
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::store::{self, Tx};

const CODE_TTL_SECS: u32 = 300;
const MAX_CODE_ATTEMPTS: u32 = 5;
pub const REGISTER_BONUS: i64 = 1000;

/// `^1[3-9][0-9]{9}$` over ASCII digits only: full-width digits, other
/// scripts' digits and trailing newlines are all refused.
pub fn validate_phone(phone: &str) -> Result<()> {
    let b = phone.as_bytes();
    let ok = b.len() == 11
        && b[0] == b'1'
        && (b'3'..=b'9').contains(&b[1])
        && b[2..].iter().all(u8::is_ascii_digit);
    if ok {
        Ok(())
    } else {
        Err(Error::Refused(ErrorCode::InvalidPhone))
    }
}

/// `138****8001`.
pub fn mask_mobile(m: &str) -> String {
    if m.len() == 11 && m.is_ascii() {
        format!("{}****{}", &m[..3], &m[7..])
    } else {
        "****".into()
    }
}

pub fn user_info(u: &store::users::UserRow) -> UserInfo {
    UserInfo {
        user_id: u.user_id,
        mobile: mask_mobile(&u.mobile),
        nickname: u.nickname.clone(),
        total_points: u.total_points,
        is_merchant: u.is_merchant,
        avatar: u.avatar.clone(),
        status: u.status.clone(),
    }
}

fn code_hash(phone: &str, code: &str) -> Vec<u8> {
    Sha256::digest(format!("{phone}:{code}").as_bytes()).to_vec()
}

fn business_day(state: &AppState) -> chrono::NaiveDate {
    (Utc::now() + ChronoDuration::minutes(state.config.business_utc_offset_minutes as i64))
        .date_naive()
}

#[derive(Debug, Serialize)]
pub struct SendCodeResult {
    pub expires_in: u32,
    pub resend_after: u64,
}

/// Issues a 6-digit code, at most once a minute and ten times a day per
/// phone. Codes are delivered by the SMS provider; the only provider built
/// in writes them to the log, which is what development uses.
#[instrument(skip_all)]
pub async fn send_code(state: &AppState, phone: &str) -> Result<SendCodeResult> {
    validate_phone(phone)?;
    let resend = state.config.sms_resend_interval.as_secs();
    let today = business_day(state);
    let code = format!("{:06}", rand::rng().random_range(0..1_000_000u32));

    let mut tx = state.db.begin().await?;
    let day_count = match store::auth::lock_sms(&mut tx, phone).await? {
        Some(row) if (row.seconds_since_sent.max(0) as u64) < resend => {
            return Err(Error::Refused(ErrorCode::CodeRateLimited));
        }
        Some(row) if row.day == today && row.day_count >= state.config.sms_daily_limit => {
            return Err(Error::Refused(ErrorCode::CodeRateLimited));
        }
        Some(row) if row.day == today => row.day_count + 1,
        _ => 1,
    };
    match store::auth::upsert_sms(
        &mut tx,
        phone,
        &code_hash(phone, &code),
        CODE_TTL_SECS,
        today,
        day_count,
    )
    .await
    {
        Ok(()) => {}
        // Two first-ever sends raced on a phone with no row: one wins.
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            return Err(Error::Refused(ErrorCode::CodeRateLimited));
        }
        Err(e) => return Err(e.into()),
    }
    tx.commit().await?;

    if state.config.dev_login_code.is_some() {
        tracing::info!(phone = %super::auth::mask_mobile(phone), %code, "verification code issued (development: logged, and 123456 is also accepted)");
    } else {
        tracing::warn!(phone = %mask_mobile(phone), "verification code issued; no SMS provider is configured, so it was not delivered");
    }
    Ok(SendCodeResult {
        expires_in: CODE_TTL_SECS,
        resend_after: resend,
    })
}

/// Checks a code inside the login transaction: a wrong code counts an
/// attempt (committed even though the login fails), a right one is consumed.
async fn check_code(state: &AppState, tx: &mut Tx, phone: &str, code: &str) -> Result<bool> {
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(false);
    }
    if state.config.dev_login_code.as_deref() == Some(code) {
        return Ok(true);
    }
    let Some(row) = store::auth::lock_sms(tx, phone).await? else {
        return Ok(false);
    };
    if row.expired {
        return Ok(false);
    }
    if row.attempts >= MAX_CODE_ATTEMPTS {
        return Err(Error::Refused(ErrorCode::TooManyCodeAttempts));
    }
    if row.code_hash != code_hash(phone, code) {
        store::auth::count_sms_attempt(tx, phone).await?;
        return Ok(false);
    }
    store::auth::consume_sms(tx, phone).await?;
    Ok(true)
}

/// Finds the user with this mobile or creates them with the register bonus,
/// in the caller's transaction. Returns `(user_id, is_new, pushed events)`.
pub async fn find_or_create_user(
    tx: &mut Tx,
    mobile: &str,
) -> Result<(store::users::UserRow, bool, Vec<super::points::UserEvent>)> {
    if let Some(u) = store::users::find_by_mobile(tx, mobile).await? {
        return Ok((u, false, Vec::new()));
    }
    let nickname = format!("用户{}", &mobile[7..]);
    let Some(user_id) = store::users::insert(tx, mobile, &nickname).await? else {
        // Another login created this user first (INSERT IGNORE waited for it).
        let u = store::users::find_by_mobile_latest(tx, mobile)
            .await?
            .ok_or_else(|| {
                Error::internal(
                    ErrorCode::LoginFailed,
                    "user vanished after a duplicate insert",
                )
            })?;
        return Ok((u, false, Vec::new()));
    };
    let mut account = Account::lock(tx, user_id).await?;
    account.earn(
        REGISTER_BONUS,
        source::REGISTER,
        "新用户注册奖励".into(),
        Some(format!("REG_{user_id}")),
    );
    let events = account.save(tx, "新用户注册奖励", source::REGISTER).await?;
    let u = store::users::find_by_mobile_latest(tx, mobile)
        .await?
        .ok_or_else(|| Error::internal(ErrorCode::LoginFailed, "new user not found"))?;
    Ok((u, true, events))
}

async fn issue_pair(
    state: &AppState,
    tx: &mut Tx,
    user_id: u64,
    session_id: u64,
) -> Result<(String, String)> {
    let refresh = new_refresh_token();
    let expires = (Utc::now()
        + ChronoDuration::from_std(state.config.refresh_token_ttl).unwrap_or_default())
    .naive_utc();
    store::auth::insert_refresh(tx, &hash_token(&refresh), session_id, user_id, expires).await?;
    let (access, _) = state.keys.issue_access(user_id, session_id);
    Ok((access, refresh))
}

#[instrument(skip_all)]
pub async fn login(state: &AppState, phone: &str, code: &str) -> Result<LoginResponse> {
    validate_phone(phone)?;
    let mut tx = state
        .db
        .begin()
        .await
        .map_err(|e| Error::from(e).during(ErrorCode::LoginFailed))?;
    let result = login_in(state, &mut tx, phone, code).await;
    match result {
        Ok(Some((resp, events))) => {
            tx.commit()
                .await
                .map_err(|e| Error::from(e).during(ErrorCode::LoginFailed))?;
            state.hub.deliver(&events);
            state.metrics.logins.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = store::users::touch_login(&state.db, resp.user_info.user_id).await {
                tracing::warn!(error = %e, "could not record the login time");
            }
            tracing::Span::current().record("user_id", resp.user_info.user_id);
            Ok(resp)
        }
        Ok(None) => {
            // A wrong code: keep the attempt count, refuse the login.
            tx.commit()
                .await
                .map_err(|e| Error::from(e).during(ErrorCode::LoginFailed))?;
            Err(Error::Refused(ErrorCode::WrongCode))
        }
        Err(e) => Err(e.during(ErrorCode::LoginFailed)),
    }
}

type LoginOutcome = Option<(LoginResponse, Vec<super::points::UserEvent>)>;

async fn login_in(state: &AppState, tx: &mut Tx, phone: &str, code: &str) -> Result<LoginOutcome> {
    if !check_code(state, tx, phone, code).await? {
        return Ok(None);
    }
    let (user, is_new, events) = find_or_create_user(tx, phone).await?;
    if user.status != "active" {
        return Err(Error::Refused(ErrorCode::AccountDisabled));
    }
    let session_id = store::auth::create_session(tx, user.user_id).await?;
    let (access_token, refresh_token) = issue_pair(state, tx, user.user_id, session_id).await?;
    Ok(Some((
        LoginResponse {
            access_token,
            refresh_token,
            expires_in: state.keys.access_ttl().as_secs(),
            user_info: user_info(&user),
            is_new_user: is_new,
        },
        events,
    )))
}

#[derive(Debug, Serialize)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
}

/// Rotates a refresh token. Each is single use: presenting one that was
/// already used means it was stolen or replayed, so the whole session is
/// revoked and its sockets are closed.
#[instrument(skip_all)]
pub async fn refresh(state: &AppState, token: &str) -> Result<TokenPair> {
    if token.is_empty() || token.len() > 128 {
        return Err(Error::Refused(ErrorCode::RefreshTokenInvalid));
    }
    let hash = hash_token(token);
    let mut tx = state.db.begin().await?;
    let Some(row) = store::auth::lock_refresh(&mut tx, &hash).await? else {
        return Err(Error::Refused(ErrorCode::RefreshTokenInvalid));
    };
    if row.used {
        store::auth::revoke_session(&mut tx, row.session_id, "refresh_reuse").await?;
        tx.commit().await?;
        tracing::warn!(
            user_id = row.user_id,
            session_id = row.session_id,
            "refresh token reused; session revoked"
        );
        state
            .hub
            .close_session(row.user_id, row.session_id, close::AUTH_EXPIRED);
        return Err(Error::Refused(ErrorCode::RefreshTokenReused));
    }
    if row.session_revoked || row.expired {
        return Err(Error::Refused(ErrorCode::RefreshTokenInvalid));
    }
    if let Some(s) = store::auth::session_state(&state.db, row.session_id, row.user_id).await?
        && s.user_status != "active"
    {
        return Err(Error::Refused(ErrorCode::AccountDisabled));
    }
    store::auth::mark_refresh_used(&mut tx, &hash).await?;
    let (access_token, refresh_token) =
        issue_pair(state, &mut tx, row.user_id, row.session_id).await?;
    tx.commit().await?;
    Ok(TokenPair {
        access_token,
        refresh_token,
        expires_in: state.keys.access_ttl().as_secs(),
    })
}

/// Revokes the caller's session: its refresh tokens stop working, its
/// access tokens are refused, and its sockets close with 4001.
#[instrument(skip_all)]
pub async fn logout(state: &AppState, auth: &AuthUser) -> Result<()> {
    let mut tx = state.db.begin().await?;
    store::auth::revoke_session(&mut tx, auth.session_id, "logout").await?;
    tx.commit().await?;
    state
        .hub
        .close_session(auth.user_id, auth.session_id, close::AUTH_EXPIRED);
    Ok(())
}

/// An authenticated caller: a valid access token whose session is live and
/// whose user is active.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user_id: u64,
    pub session_id: u64,
    pub is_merchant: bool,
    /// Expiry of the access token (unix seconds).
    pub expires_at: i64,
}

/// Verifies an access token and that its session and user may act.
pub async fn authorize(state: &AppState, token: &str) -> Result<AuthUser> {
    let access = state.keys.verify_access(token).map_err(Error::Refused)?;
    Ok(check_session(state, access).await?.0)
}

/// The database half of `authorize`: the token's session must be live and
/// its user active. Also returns the user's balance and newest event seq.
pub async fn check_session(state: &AppState, access: Access) -> Result<(AuthUser, i64, u64)> {
    let session = store::auth::session_state(&state.db, access.session_id, access.user_id)
        .await?
        .ok_or(Error::Refused(ErrorCode::TokenInvalid))?;
    if session.revoked {
        return Err(Error::Refused(ErrorCode::TokenInvalid));
    }
    if session.user_status != "active" {
        return Err(Error::Refused(ErrorCode::AccountDisabled));
    }
    let user = AuthUser {
        user_id: access.user_id,
        session_id: access.session_id,
        is_merchant: session.is_merchant,
        expires_at: access.expires_at,
    };
    Ok((user, session.total_points, session.last_seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_follow_the_contract_pattern_over_ascii_only() {
        assert!(validate_phone("13800138001").is_ok());
        assert!(validate_phone("19912345678").is_ok());
        for bad in [
            "12800138001",
            "1380013800",
            "138001380011",
            "13800138001\n",
            "１３８００１３８００１",
            "1380013800١",
            "+8613800138001",
            "",
        ] {
            assert!(validate_phone(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn mobiles_are_masked() {
        assert_eq!(mask_mobile("13800138001"), "138****8001");
    }
}
