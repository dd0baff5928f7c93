//! `users`: create (log in) or reuse N users quickly, without database
//! access, and keep their tokens in a JSON-lines file for the other
//! scenarios.

use anyhow::{Context, bail};
use futures::StreamExt;
use protocol::LoginResponse;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::Setup;
use crate::client::{Api, token_expiry};
use crate::progress::{Phase, Sink, Tally, Ticker};
use crate::stats::{Counts, Hist, bump, round3, show_counts};

/// A reused token must stay valid at least this long.
const TOKEN_MARGIN_S: i64 = 20 * 60;

#[derive(Clone, Debug)]
pub struct Opts {
    pub setup: Setup,
    pub count: u64,
    /// Use tokens from the file when it has valid ones for these phones.
    pub reuse: bool,
    /// The whole run's bound.
    pub duration: Duration,
}

/// One line of the tokens file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Credentials {
    pub phone: String,
    pub user_id: u64,
    pub access_token: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub requested: u64,
    pub reused: u64,
    pub logged_in: u64,
    /// Of the logins, how many created the user.
    pub new_users: u64,
    pub failed: u64,
    pub errors: Counts,
    pub elapsed_s: f64,
    pub logins_per_s: f64,
    pub login_latency: Hist,
    pub tokens_file: Option<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "users: {} requested — {} reused from the file, {} logged in ({} new), {} failed",
            self.requested, self.reused, self.logged_in, self.new_users, self.failed
        )?;
        writeln!(
            f,
            "  {:.1} s, {:.0} logins/s; login latency {}",
            self.elapsed_s, self.logins_per_s, self.login_latency
        )?;
        if !self.errors.is_empty() {
            writeln!(f, "  errors: {}", show_counts(&self.errors))?;
        }
        if let Some(p) = &self.tokens_file {
            writeln!(f, "  tokens: {p}")?;
        }
        Ok(())
    }
}

pub async fn run(opts: Opts) -> anyhow::Result<Report> {
    let (_, report) = ensure(&opts.setup, opts.count, opts.reuse, opts.duration).await?;
    Ok(report)
}

/// The `count` users from `setup.offset` on, logged in or taken from the
/// tokens file. Fails when any of them could not be had.
pub async fn ensure_all(
    setup: &Setup,
    count: u64,
    limit: Duration,
) -> anyhow::Result<Vec<Credentials>> {
    let (creds, report) = ensure(setup, count, true, limit).await?;
    if report.failed > 0 {
        bail!(
            "{} of {count} users could not log in: {}",
            report.failed,
            show_counts(&report.errors)
        );
    }
    Ok(creds)
}

/// Phone number `index` of a prefix: the prefix and the index zero-padded
/// to 11 digits, e.g. `1990` + `0000042`.
pub fn phone(prefix: &str, index: u64) -> anyhow::Result<String> {
    let b = prefix.as_bytes();
    if !(2..=10).contains(&b.len())
        || !b.iter().all(u8::is_ascii_digit)
        || b[0] != b'1'
        || !(b'3'..=b'9').contains(&b[1])
    {
        bail!("--prefix {prefix:?}: 2-10 digits starting 13-19 (phones are ^1[3-9]\\d{{9}}$)");
    }
    let width = 11 - b.len();
    if index >= 10u64.pow(width as u32) {
        bail!("user index {index} does not fit in {width} digits after prefix {prefix}");
    }
    Ok(format!("{prefix}{index:0width$}"))
}

/// Logs in (or reuses) the users and returns them in index order, with a
/// report. Users that failed are left out of the list.
pub async fn ensure(
    setup: &Setup,
    count: u64,
    reuse: bool,
    limit: Duration,
) -> anyhow::Result<(Vec<Credentials>, Report)> {
    let started = Instant::now();
    let phones = (setup.offset..setup.offset + count)
        .map(|i| phone(&setup.prefix, i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut known = match &setup.tokens {
        Some(p) => load(p)?,
        None => HashMap::new(),
    };
    let fresh_until = chrono::Utc::now().timestamp() + TOKEN_MARGIN_S;
    let usable = |c: &Credentials| token_expiry(&c.access_token).is_none_or(|e| e > fresh_until);

    let mut report = Report {
        requested: count,
        tokens_file: setup.tokens.as_ref().map(|p| p.display().to_string()),
        ..Report::default()
    };
    let to_login: Vec<String> = phones
        .iter()
        .filter(|p| !(reuse && known.get(*p).is_some_and(usable)))
        .cloned()
        .collect();
    report.reused = count - to_login.len() as u64;

    let api = setup.api()?;
    let login_started = Instant::now();
    let deadline = tokio::time::Instant::now() + limit;
    let counts = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let ticker = {
        let (c, n) = (counts.clone(), to_login.len());
        Ticker::start(&Sink::Stderr("users"), Phase::Login, move || {
            Tally::new(n, c.0.load(Ordering::Relaxed), c.1.load(Ordering::Relaxed))
        })
    };
    let results: Vec<LoginOutcome> = futures::stream::iter(to_login.iter().cloned())
        .map(|phone| {
            let (api, counts) = (api.clone(), counts.clone());
            async move {
                let t0 = Instant::now();
                let r = match tokio::time::timeout_at(deadline, login(&api, &phone)).await {
                    Ok(r) => r,
                    Err(_) => Err("deadline".to_string()),
                };
                let counter = if r.is_ok() { &counts.0 } else { &counts.1 };
                counter.fetch_add(1, Ordering::Relaxed);
                (phone, r, t0.elapsed())
            }
        })
        .buffer_unordered(setup.login_concurrency.max(1))
        .collect()
        .await;
    drop(ticker);
    let login_elapsed = login_started.elapsed();

    let mut logged_in = 0;
    for (phone, result, took) in results {
        match result {
            Ok((creds, is_new)) => {
                report.login_latency.record(took);
                logged_in += 1;
                if is_new {
                    report.new_users += 1;
                }
                known.insert(phone, creds);
            }
            Err(kind) => {
                report.failed += 1;
                bump(&mut report.errors, kind);
            }
        }
    }
    report.logged_in = logged_in;
    if let (Some(path), true) = (&setup.tokens, setup.write_tokens && logged_in > 0) {
        save(path, &known).with_context(|| format!("writing {}", path.display()))?;
    }

    let creds: Vec<Credentials> = phones
        .iter()
        .filter_map(|p| known.get(p).cloned())
        .collect();
    report.elapsed_s = round3(started.elapsed().as_secs_f64());
    report.logins_per_s = round3(logged_in as f64 / login_elapsed.as_secs_f64().max(1e-3));
    Ok((creds, report))
}

/// A phone, its login (credentials and whether the user is new, or the
/// failure's kind) and how long it took.
type LoginOutcome = (String, Result<(Credentials, bool), String>, Duration);

async fn login(api: &Api, phone: &str) -> Result<(Credentials, bool), String> {
    let reply = api.login(phone).await.map_err(|e| e.kind.to_string())?;
    if reply.code != 0 {
        return Err(format!("code_{}", reply.code));
    }
    let login: LoginResponse =
        serde_json::from_value(reply.data).map_err(|_| "bad_login_data".to_string())?;
    Ok((
        Credentials {
            phone: phone.to_string(),
            user_id: login.user_info.user_id.0,
            access_token: login.access_token,
        },
        login.is_new_user,
    ))
}

/// Reads a tokens file; a missing file is empty, unreadable lines are skipped.
pub fn load(path: &Path) -> anyhow::Result<HashMap<String, Credentials>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Credentials>(l).ok())
        .map(|c| (c.phone.clone(), c))
        .collect())
}

/// Writes every known entry, sorted by phone, through a temporary file so
/// a reader never sees half a file.
fn save(path: &Path, known: &HashMap<String, Credentials>) -> anyhow::Result<()> {
    let mut all: Vec<&Credentials> = known.values().collect();
    all.sort_by(|a, b| a.phone.cmp(&b.phone));
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        for c in all {
            serde_json::to_writer(&mut out, c)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_are_prefix_and_padded_index() {
        assert_eq!(phone("1990", 42).unwrap(), "19900000042");
        assert_eq!(phone("1990000", 9999).unwrap(), "19900009999");
        assert!(phone("1990000", 10_000).is_err());
        assert!(phone("1290", 1).is_err());
        assert!(phone("19a0", 1).is_err());
    }
}
