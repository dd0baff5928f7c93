//! Per-client-IP rate limits of the public endpoints (send-code, login,
//! refresh, upload). Generous enough for a full restaurant behind one NAT,
//! tight enough that one address cannot buy itself hundreds of SMS an hour.

use std::net::IpAddr;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::net::IpRateLimiter;

/// One limit, named for `/metrics`.
pub struct IpLimiter {
    name: &'static str,
    limiter: IpRateLimiter,
}

impl IpLimiter {
    /// Takes one token for `ip`, or refuses with 2002 and how long to wait.
    pub fn check(&self, ip: IpAddr) -> Result<()> {
        self.limiter.check(ip).map_err(|wait| Error::RateLimited {
            retry_after: wait.as_secs().max(1),
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

pub struct Limits {
    pub send_code: IpLimiter,
    pub login: IpLimiter,
    pub refresh: IpLimiter,
    pub upload: IpLimiter,
}

impl Limits {
    pub fn new(config: &Config) -> Limits {
        let l = &config.ip_limits;
        let limiter = |name, spec| IpLimiter {
            name,
            limiter: IpRateLimiter::new(spec),
        };
        Limits {
            send_code: limiter("send_code_per_ip", l.send_code),
            login: limiter("login_per_ip", l.login),
            refresh: limiter("refresh_per_ip", l.refresh),
            upload: limiter("upload_per_ip", l.upload),
        }
    }

    /// Forgets addresses whose buckets are full again (bounded memory);
    /// called every minute.
    pub fn prune(&self) {
        for l in [&self.send_code, &self.login, &self.refresh, &self.upload] {
            l.limiter.prune();
        }
    }
}
