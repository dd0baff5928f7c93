//! Verification codes, login, token rotation and logout, as commands; and
//! the check every request and socket makes of its access token.

use chrono::{Duration as ChronoDuration, NaiveDate};
use hmac::{Hmac, Mac};
use protocol::{ErrorCode, LoginResponse, SessionId, Source, UserId, UserInfo, UserStatus, close};
use serde::Serialize;
use sha2::Sha256;
use sqlx::MySqlPool;
use std::time::Duration;

use super::account::Account;
use super::tokens::{Access, TokenKeys, hash_token, new_refresh_token};
use super::{CloseSockets, Command, Ctx, Done, UserEvent};
use crate::error::{Error, Result};
use crate::rules::calendar::business_day;
use crate::rules::input::{is_code_shaped, mask_mobile, validate_phone};
use crate::store::{self, Tx};

pub const CODE_TTL_SECS: u32 = 300;
pub const MAX_CODE_ATTEMPTS: u32 = 5;
pub const REGISTER_BONUS: i64 = 1000;

/// Codes are stored as an HMAC under a server key, never as themselves: a
/// million possible codes make a plain hash trivial to reverse.
#[derive(Clone)]
pub struct CodeKey([u8; 32]);

impl CodeKey {
    /// Derived from the token secret, so there is no second secret to lose.
    pub fn derive(secret: &str) -> CodeKey {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(b"verification-code-key");
        CodeKey(mac.finalize().into_bytes().into())
    }

    fn hash(&self, phone: &str, code: &str) -> Vec<u8> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(phone.as_bytes());
        mac.update(b":");
        mac.update(code.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

/// `user_info` of the contract, from a user row.
pub fn info_of(u: &store::users::UserRow) -> UserInfo {
    UserInfo {
        user_id: u.user_id,
        mobile: mask_mobile(&u.mobile),
        nickname: u.nickname.clone(),
        total_points: u.total_points,
        is_merchant: u.is_merchant,
        avatar: u.avatar.clone(),
        status: u.status,
    }
}

/// `user_info` of a user, read fresh: the one way every door builds it.
pub async fn user_info(db: &MySqlPool, user_id: UserId) -> Result<UserInfo> {
    let row = store::users::find(db, user_id)
        .await?
        .ok_or(Error::Refused(ErrorCode::TokenInvalid))?;
    Ok(info_of(&row))
}

/// A code issued to a phone: the reply of `SendCode`. The code itself goes
/// to the SMS provider after commit, never to the client.
#[derive(Debug, Serialize)]
pub struct IssuedCode {
    #[serde(skip)]
    pub code: String,
    pub expires_in: u32,
    pub resend_after: u64,
}

/// Issues a 6-digit code, at most once per `resend_interval` and
/// `daily_limit` times a business day per phone.
pub struct SendCode<'a> {
    pub phone: &'a str,
    pub key: &'a CodeKey,
    pub resend_interval: Duration,
    pub daily_limit: u32,
    pub utc_offset_minutes: i32,
}

impl Command for SendCode<'_> {
    type Reply = IssuedCode;
    const NAME: &'static str = "auth.send_code";

    fn check(&self) -> Result<()> {
        validate_phone(self.phone)
    }

    async fn run(&self, tx: &mut Tx, ctx: &mut Ctx) -> Result<Done<IssuedCode>> {
        use rand::Rng;
        let resend = self.resend_interval.as_secs();
        let today = business_day(ctx.now, self.utc_offset_minutes);
        store::auth::ensure_sms_row(tx, self.phone, today).await?;
        let row = store::auth::lock_sms(tx, self.phone)
            .await?
            .ok_or_else(|| {
                Error::internal(ErrorCode::Internal, "sms row vanished under its lock")
            })?;
        if (row.seconds_since_sent.max(0) as u64) < resend {
            return Err(Error::Refused(ErrorCode::CodeRateLimited));
        }
        let day_count = sent_today(row.day, row.day_count, today);
        if day_count >= self.daily_limit {
            return Err(Error::Refused(ErrorCode::CodeRateLimited));
        }
        let code = format!("{:06}", ctx.rng.random_range(0..1_000_000u32));
        let hash = self.key.hash(self.phone, &code);
        store::auth::store_sms(tx, self.phone, &hash, CODE_TTL_SECS, today, day_count + 1).await?;
        Ok(Done::new(IssuedCode {
            code,
            expires_in: CODE_TTL_SECS,
            resend_after: resend,
        }))
    }
}

fn sent_today(day: NaiveDate, count: u32, today: NaiveDate) -> u32 {
    if day == today { count } else { 0 }
}

/// Takes back a code the SMS provider could not deliver.
pub struct WithdrawCode<'a> {
    pub phone: &'a str,
}

impl Command for WithdrawCode<'_> {
    type Reply = ();
    const NAME: &'static str = "auth.withdraw_code";

    async fn run(&self, tx: &mut Tx, _: &mut Ctx) -> Result<Done<()>> {
        store::auth::withdraw_sms(tx, self.phone).await?;
        Ok(Done::new(()))
    }
}

/// Checks a code inside the login transaction: a wrong code counts an
/// attempt (committed even though the login fails), a right one is consumed.
async fn check_code(
    tx: &mut Tx,
    key: &CodeKey,
    dev_code: Option<&str>,
    phone: &str,
    code: &str,
) -> Result<bool> {
    if !is_code_shaped(code) {
        return Ok(false);
    }
    if dev_code == Some(code) {
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
    if row.code_hash != key.hash(phone, code) {
        store::auth::count_sms_attempt(tx, phone).await?;
        return Ok(false);
    }
    store::auth::consume_sms(tx, phone).await?;
    Ok(true)
}

/// Finds the user with this mobile or creates them with the register bonus,
/// in the caller's transaction. Returns the user, whether they are new, and
/// the events written.
pub async fn find_or_create_user(
    tx: &mut Tx,
    mobile: &str,
    ctx: &Ctx,
) -> Result<(store::users::UserRow, bool, Vec<UserEvent>)> {
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
        Source::Register,
        "新用户注册奖励".into(),
        Some(format!("REG_{user_id}")),
    );
    let events = account
        .save(tx, "新用户注册奖励", Source::Register, ctx.now)
        .await?;
    let u = store::users::find_by_mobile_latest(tx, mobile)
        .await?
        .ok_or_else(|| Error::internal(ErrorCode::LoginFailed, "new user not found"))?;
    Ok((u, true, events))
}

/// What issuing a token pair needs.
pub struct Issuer<'a> {
    pub keys: &'a TokenKeys,
    pub refresh_ttl: Duration,
}

impl Issuer<'_> {
    async fn pair(
        &self,
        tx: &mut Tx,
        ctx: &Ctx,
        user_id: UserId,
        session_id: SessionId,
    ) -> Result<(String, String)> {
        let refresh = new_refresh_token();
        let expires =
            (ctx.now + ChronoDuration::from_std(self.refresh_ttl).unwrap_or_default()).naive_utc();
        store::auth::insert_refresh(tx, &hash_token(&refresh), session_id, user_id, expires)
            .await?;
        let (access, _) = self.keys.issue_access(user_id, session_id, ctx.now);
        Ok((access, refresh))
    }
}

/// Logs in with a code: finds or creates the user and starts a session.
pub struct Login<'a> {
    pub phone: &'a str,
    pub code: &'a str,
    pub key: &'a CodeKey,
    /// Development only: a code that is always accepted.
    pub dev_code: Option<&'a str>,
    pub issuer: Issuer<'a>,
}

impl Command for Login<'_> {
    type Reply = LoginResponse;
    const NAME: &'static str = "auth.login";
    const FAILED: ErrorCode = ErrorCode::LoginFailed;

    fn check(&self) -> Result<()> {
        validate_phone(self.phone)
    }

    async fn run(&self, tx: &mut Tx, ctx: &mut Ctx) -> Result<Done<LoginResponse>> {
        if !check_code(tx, self.key, self.dev_code, self.phone, self.code).await? {
            // A wrong code: the attempt it counted commits, the login fails.
            return Ok(Done {
                reply: Err(Error::Refused(ErrorCode::WrongCode)),
                effects: Default::default(),
            });
        }
        let (user, is_new, events) = find_or_create_user(tx, self.phone, ctx).await?;
        if user.status != UserStatus::Active {
            return Err(Error::Refused(ErrorCode::AccountDisabled));
        }
        let session_id = store::auth::create_session(tx, user.user_id).await?;
        let (access_token, refresh_token) =
            self.issuer.pair(tx, ctx, user.user_id, session_id).await?;
        Ok(Done::new(LoginResponse {
            access_token,
            refresh_token,
            expires_in: self.issuer.keys.access_ttl().as_secs(),
            user_info: info_of(&user),
            is_new_user: is_new,
        })
        .with(|e| e.events = events))
    }
}

#[derive(Debug, Serialize)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
}

/// Rotates a refresh token. Each is single use: presenting one that was
/// already used means it was stolen or replayed, so the whole session is
/// revoked (committed) and its sockets are closed, and the caller is told.
pub struct Refresh<'a> {
    pub token: &'a str,
    pub issuer: Issuer<'a>,
}

impl Command for Refresh<'_> {
    type Reply = TokenPair;
    const NAME: &'static str = "auth.refresh";

    fn check(&self) -> Result<()> {
        if self.token.is_empty() || self.token.len() > 128 {
            return Err(Error::Refused(ErrorCode::RefreshTokenInvalid));
        }
        Ok(())
    }

    async fn run(&self, tx: &mut Tx, ctx: &mut Ctx) -> Result<Done<TokenPair>> {
        let hash = hash_token(self.token);
        let Some(row) = store::auth::lock_refresh(tx, &hash).await? else {
            return Err(Error::Refused(ErrorCode::RefreshTokenInvalid));
        };
        if row.used {
            store::auth::revoke_session(tx, row.session_id, "refresh_reuse").await?;
            tracing::warn!(
                user_id = %row.user_id,
                session_id = %row.session_id,
                "refresh token reused; session revoked"
            );
            return Ok(Done {
                reply: Err(Error::Refused(ErrorCode::RefreshTokenReused)),
                effects: Default::default(),
            }
            .with(|e| {
                e.closes.push(CloseSockets {
                    user_id: row.user_id,
                    session: Some(row.session_id),
                    code: close::AUTH_EXPIRED,
                })
            }));
        }
        if row.session_revoked || row.expired {
            return Err(Error::Refused(ErrorCode::RefreshTokenInvalid));
        }
        if row.user_status != UserStatus::Active {
            return Err(Error::Refused(ErrorCode::AccountDisabled));
        }
        store::auth::mark_refresh_used(tx, &hash).await?;
        let (access_token, refresh_token) = self
            .issuer
            .pair(tx, ctx, row.user_id, row.session_id)
            .await?;
        Ok(Done::new(TokenPair {
            access_token,
            refresh_token,
            expires_in: self.issuer.keys.access_ttl().as_secs(),
        }))
    }
}

/// Revokes the caller's session — or, with `all`, every session of the
/// user — and closes the sockets that belong to them.
pub struct Logout {
    pub user_id: UserId,
    pub session_id: SessionId,
    pub all: bool,
}

#[derive(Debug, Serialize)]
pub struct LoggedOut {
    pub logged_out: bool,
    /// How many sessions this ended.
    pub sessions: usize,
}

impl Command for Logout {
    type Reply = LoggedOut;
    const NAME: &'static str = "auth.logout";

    async fn run(&self, tx: &mut Tx, _: &mut Ctx) -> Result<Done<LoggedOut>> {
        let (sessions, session) = if self.all {
            let ended = store::auth::revoke_user_sessions(tx, self.user_id, "logout_all").await?;
            (ended.len(), None)
        } else {
            store::auth::revoke_session(tx, self.session_id, "logout").await?;
            (1, Some(self.session_id))
        };
        Ok(Done::new(LoggedOut {
            logged_out: true,
            sessions,
        })
        .with(|e| {
            e.closes.push(CloseSockets {
                user_id: self.user_id,
                session,
                code: close::AUTH_EXPIRED,
            })
        }))
    }
}

/// An authenticated caller: a valid access token whose session is live and
/// whose user is active.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user_id: UserId,
    pub session_id: SessionId,
    pub is_merchant: bool,
    /// Expiry of the access token (unix seconds).
    pub expires_at: i64,
}

/// Verifies an access token and that its session and user may act.
pub async fn authorize(keys: &TokenKeys, db: &MySqlPool, token: &str) -> Result<AuthUser> {
    let access = keys.verify_access(token).map_err(Error::Refused)?;
    Ok(check_session(db, access).await?.0)
}

/// The database half of `authorize`: the token's session must be live and
/// its user active. Also returns the user's balance and newest event seq.
pub async fn check_session(db: &MySqlPool, access: Access) -> Result<(AuthUser, i64, u64)> {
    let session = store::auth::session_state(db, access.session_id, access.user_id)
        .await?
        .ok_or(Error::Refused(ErrorCode::TokenInvalid))?;
    if session.revoked {
        return Err(Error::Refused(ErrorCode::TokenInvalid));
    }
    if session.user_status != UserStatus::Active {
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
