//! Commands with a step outside their transaction: each is a short
//! sequence around `Runner`, shared by both doors.

use protocol::{ErrorCode, LoginResponse};
use std::net::IpAddr;

use super::AppState;
use crate::domain::auth::{self, IssuedCode, Issuer, TokenPair};
use crate::error::{Error, Result};

impl AppState {
    fn issuer(&self) -> Issuer<'_> {
        Issuer {
            keys: &self.keys,
            refresh_ttl: self.config.refresh_token_ttl,
        }
    }

    fn limit(&self, limiter: &crate::limits::IpLimiter, ip: IpAddr) -> Result<()> {
        limiter.check(ip).inspect_err(|_| {
            self.metrics.limit_hit(limiter.name());
        })
    }

    /// Stores a new code, then sends it. If the provider cannot deliver it,
    /// the code is withdrawn (it never counted) and the guest is told to
    /// try again (1008).
    pub async fn send_code(&self, ip: IpAddr, phone: &str) -> Result<IssuedCode> {
        self.limit(&self.limits.send_code, ip)?;
        let issued = self
            .runner
            .run(&auth::SendCode {
                phone,
                key: &self.code_key,
                resend_interval: self.config.sms_resend_interval,
                daily_limit: self.config.sms_daily_limit,
                utc_offset_minutes: self.config.business_utc_offset_minutes,
            })
            .await?;
        if let Err(e) = self.sms.send_code(phone, &issued.code).await {
            tracing::warn!(provider = self.sms.name(), error = %e, "the SMS provider did not take the code");
            if let Err(w) = self.runner.run(&auth::WithdrawCode { phone }).await {
                tracing::warn!(error = %w, "could not withdraw an undelivered code");
            }
            return Err(Error::Refused(ErrorCode::SmsFailed));
        }
        Ok(issued)
    }

    pub async fn login(&self, ip: IpAddr, phone: &str, code: &str) -> Result<LoginResponse> {
        self.limit(&self.limits.login, ip)?;
        let resp = self
            .runner
            .run(&auth::Login {
                phone,
                code,
                key: &self.code_key,
                dev_code: self.config.dev_login_code.as_deref(),
                issuer: self.issuer(),
            })
            .await?;
        self.metrics.logins.inc();
        // Outside the login transaction: inside, it would turn the shared
        // locks of a creation race into a deadlock; a lost timestamp harms
        // nothing.
        if let Err(e) = crate::store::users::touch_login(&self.db, resp.user_info.user_id).await {
            tracing::warn!(error = %e, "could not record the login time");
        }
        Ok(resp)
    }

    pub async fn refresh(&self, ip: IpAddr, token: &str) -> Result<TokenPair> {
        self.limit(&self.limits.refresh, ip)?;
        self.runner
            .run(&auth::Refresh {
                token,
                issuer: self.issuer(),
            })
            .await
    }
}

impl AppState {
    /// A draw, through either door; `key` makes it safe to retry.
    pub async fn draw(
        &self,
        user_id: protocol::UserId,
        draw_count: u32,
        key: Option<&crate::domain::IdemKey>,
    ) -> Result<crate::error::DataJson> {
        let wheel = self.wheel();
        let cmd = crate::domain::lottery::Draw {
            user_id,
            draw_count,
            wheel: crate::domain::lottery::usable(&wheel)?,
            utc_offset_minutes: self.config.business_utc_offset_minutes,
            key,
        };
        let reply = self
            .runner
            .run_keyed(&cmd, key.map(|k| (user_id, k)))
            .await?;
        self.metrics.draws.inc_by(draw_count as u64);
        Ok(reply)
    }

    /// An exchange, through either door; `key` makes it safe to retry.
    pub async fn submit_exchange(
        &self,
        user_id: protocol::UserId,
        product_id: u64,
        quantity: u32,
        key: Option<&crate::domain::IdemKey>,
    ) -> Result<crate::error::DataJson> {
        let cmd = crate::domain::exchange::Submit {
            user_id,
            product_id,
            quantity,
            key,
        };
        self.runner.run_keyed(&cmd, key.map(|k| (user_id, k))).await
    }
}
