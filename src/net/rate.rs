//! Per-client-IP rate limits (`RATE_LIMIT_*`), a GCRA from `governor`.

use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

/// `N/period:B` — N per `s`, `min` or `h`, with bursts of up to B
/// (`200/h:20`); without `:B` the burst is N. `off` disables the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateSpec {
    Off,
    Limit {
        count: NonZeroU32,
        period: Duration,
        burst: NonZeroU32,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{spec:?} is not a rate: expected N/s, N/min or N/h with an optional :BURST (like 200/h:20), or off"
)]
pub struct RateSpecError {
    pub spec: String,
}

impl RateSpec {
    pub fn parse(spec: &str) -> Result<Self, RateSpecError> {
        let err = || RateSpecError {
            spec: spec.to_owned(),
        };
        let s = spec.trim();
        if s.eq_ignore_ascii_case("off") {
            return Ok(RateSpec::Off);
        }
        let (rate, burst) = match s.split_once(':') {
            Some((rate, burst)) => (rate, Some(burst)),
            None => (s, None),
        };
        let (count, unit) = rate.split_once('/').ok_or_else(err)?;
        let count: NonZeroU32 = count.trim().parse().map_err(|_| err())?;
        let period = match unit.trim() {
            "s" => Duration::from_secs(1),
            "min" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(err()),
        };
        let burst = match burst {
            Some(b) => b.trim().parse().map_err(|_| err())?,
            None => count,
        };
        let spec = RateSpec::Limit {
            count,
            period,
            burst,
        };
        // More than one cell per nanosecond has no quota.
        spec.quota().ok_or_else(err)?;
        Ok(spec)
    }

    fn quota(&self) -> Option<Quota> {
        match *self {
            RateSpec::Off => None,
            RateSpec::Limit {
                count,
                period,
                burst,
            } => Some(Quota::with_period(period / count.get())?.allow_burst(burst)),
        }
    }
}

impl FromStr for RateSpec {
    type Err = RateSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RateSpec::parse(s)
    }
}

impl fmt::Display for RateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateSpec::Off => f.write_str("off"),
            RateSpec::Limit {
                count,
                period,
                burst,
            } => {
                let unit = match period.as_secs() {
                    1 => "s",
                    60 => "min",
                    _ => "h",
                };
                write!(f, "{count}/{unit}:{burst}")
            }
        }
    }
}

/// One [`RateSpec`] applied to each client IP separately. Keys are kept
/// until [`IpRateLimiter::prune`] drops those back at a full burst, so the
/// server must call it periodically (every minute is plenty).
pub struct IpRateLimiter<C: Clock = DefaultClock> {
    /// `None` when the spec is `off`.
    limiter: Option<Keyed<C>>,
}

type Keyed<C> =
    RateLimiter<IpAddr, DashMapStateStore<IpAddr>, C, NoOpMiddleware<<C as Clock>::Instant>>;

impl IpRateLimiter {
    pub fn new(spec: RateSpec) -> Self {
        IpRateLimiter::with_clock(spec, DefaultClock::default())
    }
}

impl<C: Clock> IpRateLimiter<C> {
    /// With a clock of the caller's choosing (tests use governor's fake one).
    pub fn with_clock(spec: RateSpec, clock: C) -> Self {
        IpRateLimiter {
            limiter: spec
                .quota()
                .map(|quota| RateLimiter::dashmap_with_clock(quota, clock)),
        }
    }

    /// Takes one cell for `ip`, or says how long until one is free, in whole
    /// seconds (at least 1) for `Retry-After`.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check_key(&ip.to_canonical()).map_err(|not_until| {
            let wait = not_until.wait_time_from(limiter.clock().now());
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            Duration::from_secs(secs.max(1))
        })
    }

    /// Forgets addresses whose state is indistinguishable from a fresh one
    /// and gives the memory back.
    pub fn prune(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Addresses currently remembered.
    pub fn len(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn specs_parse_as_documented() {
        assert_eq!(
            RateSpec::parse("200/h:20"),
            Ok(RateSpec::Limit {
                count: nz(200),
                period: Duration::from_secs(3600),
                burst: nz(20)
            })
        );
        assert_eq!(
            RateSpec::parse(" 300/min:150 "),
            Ok(RateSpec::Limit {
                count: nz(300),
                period: Duration::from_secs(60),
                burst: nz(150)
            })
        );
        assert_eq!(
            RateSpec::parse("5/s"),
            Ok(RateSpec::Limit {
                count: nz(5),
                period: Duration::from_secs(1),
                burst: nz(5)
            })
        );
        assert_eq!(RateSpec::parse("off"), Ok(RateSpec::Off));
        assert_eq!(RateSpec::parse("OFF"), Ok(RateSpec::Off));
        assert_eq!(RateSpec::parse("200/h:20").unwrap().to_string(), "200/h:20");
    }

    #[test]
    fn malformed_specs_are_refused_with_the_spec_named() {
        for bad in [
            "",
            "200",
            "200/d",
            "0/h:20",
            "200/h:0",
            "-1/h",
            "200/h:",
            "a/h",
            "200/h:20:1",
            "200/m",
            "2000000000/s",
        ] {
            assert_eq!(
                RateSpec::parse(bad),
                Err(RateSpecError { spec: bad.into() }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_burst_is_allowed_then_refused_then_recovers_at_the_rate() {
        let clock = FakeRelativeClock::default();
        let limiter =
            IpRateLimiter::with_clock(RateSpec::parse("200/h:20").unwrap(), clock.clone());
        let client = ip("5.6.7.8");
        for n in 0..20 {
            assert_eq!(limiter.check(client), Ok(()), "request {n} of the burst");
        }
        // 200/h is one every 18 s.
        assert_eq!(limiter.check(client), Err(Duration::from_secs(18)));
        clock.advance(Duration::from_millis(17_500));
        assert_eq!(limiter.check(client), Err(Duration::from_secs(1)));
        clock.advance(Duration::from_millis(500));
        assert_eq!(limiter.check(client), Ok(()));
        assert_eq!(limiter.check(client), Err(Duration::from_secs(18)));
        // Another client has its own burst.
        assert_eq!(limiter.check(ip("5.6.7.9")), Ok(()));
    }

    #[test]
    fn retry_after_is_rounded_up_to_a_whole_second_of_at_least_one() {
        let clock = FakeRelativeClock::default();
        let limiter = IpRateLimiter::with_clock(RateSpec::parse("4/s:1").unwrap(), clock.clone());
        assert_eq!(limiter.check(ip("5.6.7.8")), Ok(()));
        // 250 ms to wait is reported as 1 s.
        assert_eq!(limiter.check(ip("5.6.7.8")), Err(Duration::from_secs(1)));

        let limiter = IpRateLimiter::with_clock(RateSpec::parse("2/min:1").unwrap(), clock.clone());
        assert_eq!(limiter.check(ip("5.6.7.8")), Ok(()));
        clock.advance(Duration::from_millis(100));
        // 29.9 s to wait is reported as 30 s.
        assert_eq!(limiter.check(ip("5.6.7.8")), Err(Duration::from_secs(30)));
    }

    #[test]
    fn off_never_refuses_and_remembers_nobody() {
        let limiter = IpRateLimiter::new(RateSpec::Off);
        for _ in 0..1000 {
            assert_eq!(limiter.check(ip("5.6.7.8")), Ok(()));
        }
        assert!(limiter.is_empty());
    }

    #[test]
    fn ipv4_mapped_addresses_share_their_ipv4_bucket() {
        let clock = FakeRelativeClock::default();
        let limiter = IpRateLimiter::with_clock(RateSpec::parse("1/h:1").unwrap(), clock);
        assert_eq!(limiter.check(ip("5.6.7.8")), Ok(()));
        assert!(limiter.check(ip("::ffff:5.6.7.8")).is_err());
    }

    #[test]
    fn prune_forgets_clients_that_are_back_to_a_full_burst() {
        let clock = FakeRelativeClock::default();
        let limiter =
            IpRateLimiter::with_clock(RateSpec::parse("60/min:10").unwrap(), clock.clone());
        for i in 0..100u8 {
            limiter.check(IpAddr::from([10, 0, 0, i])).unwrap();
        }
        assert_eq!(limiter.len(), 100);
        limiter.prune();
        assert_eq!(limiter.len(), 100, "each still owes a second");
        clock.advance(Duration::from_secs(2));
        limiter.check(ip("10.0.1.1")).unwrap();
        limiter.prune();
        assert_eq!(limiter.len(), 1, "only the recent client is kept");
    }
}
