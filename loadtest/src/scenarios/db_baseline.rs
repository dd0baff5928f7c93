//! `db-baseline`: the database's own throughput for the server's draw,
//! with no HTTP or sockets in between — the ceiling the `commands` figure
//! can be compared with. With `db-check`, the only scenarios that touch
//! the database.
//!
//! Each transaction is the server's real `lottery.draw` of one prize, run
//! through the server's own command runner
//! (`restaurant_points::bench::DrawBench`): the same statements, the same
//! idempotency claim, retries and commit, on the wheel the database holds.
//! So the users pay the real cost, win real prizes, and limited prizes take
//! real stock. It runs on benchmark users of its own (mobiles
//! `100xxxxxxxx`, which no guest can have: phones start 13-19), one per
//! connection so that, as in `commands`, no two transactions wait on the
//! same row lock. Each is topped up with enough points for the run (the
//! balance and a matching ledger line); the wheel's daily limit is met by
//! resetting the users' draw count between draws, outside the timing.
//! Afterwards the benchmark users' rows are deleted (those an earlier
//! `--keep` left too) and the prize stock they won is given back, unless
//! `--keep`.

use anyhow::{Context, anyhow, bail};
use restaurant_points::bench::{DrawBench, UserId};
use serde::{Deserialize, Serialize};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use crate::stats::{Counts, Hist, add_counts, bump, round3, show_counts};

/// Mobiles of benchmark users: `100` and an 8-digit index.
const MOBILE_PREFIX: &str = "100";
/// Their nickname: with the mobile, what marks a row as ours.
const NICKNAME: &str = "loadtest-db";
const TXN_TIMEOUT: Duration = Duration::from_secs(10);
/// More draws per second than one connection can make, for sizing the
/// top-up (a user that runs short anyway is topped up again).
const MAX_DRAWS_PER_CONNECTION_S: f64 = 3000.0;

pub struct Opts {
    pub database_url: String,
    /// Concurrent connections, each with its own benchmark user.
    pub connections: usize,
    pub duration: Duration,
    /// Leave the benchmark rows in place.
    pub keep: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub connections: usize,
    pub duration_s: f64,
    /// Draws that committed.
    pub transactions: u64,
    pub tps: f64,
    pub latency: Hist,
    /// Draws that did not commit, by the server's code (`4005`, `2010`…)
    /// or `timeout`.
    pub errors: Counts,
    /// Prizes won in this run, by name.
    pub prizes: Counts,
    /// Of those, draws whose picked prize was out of stock (given the
    /// fallback prize).
    pub fallbacks: u64,
    /// Resets of a user's draw count for the wheel's daily limit (outside
    /// the timed draws).
    pub limit_resets: u64,
    /// Top-ups during the run, for users that ran short of points.
    pub top_ups: u64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "db-baseline: {} of the server's draws (one per transaction) on {} connections in {:.1} s: {:.0} tps",
            self.transactions, self.connections, self.duration_s, self.tps
        )?;
        writeln!(f, "  latency {}", self.latency)?;
        writeln!(
            f,
            "  prizes: {}; {} fell back (out of stock)",
            show_counts(&self.prizes),
            self.fallbacks
        )?;
        if self.limit_resets > 0 || self.top_ups > 0 {
            writeln!(
                f,
                "  between draws: {} daily-limit resets, {} top-ups",
                self.limit_resets, self.top_ups
            )?;
        }
        if !self.errors.is_empty() {
            writeln!(f, "  errors: {}", show_counts(&self.errors))?;
        }
        Ok(())
    }
}

/// Refuses a database that is not on this machine.
pub fn check_database_url(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("mysql://")
        .or_else(|| url.strip_prefix("mariadb://"))
        .context("--database-url must be mysql://…")?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let hostport = authority.rsplit('@').next().unwrap_or_default();
    let host = hostport.split(':').next().unwrap_or_default();
    let local = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.octets()[0] == 127);
    if !local {
        bail!("--database-url: refusing host {host:?}; only localhost or 127.x.x.x");
    }
    Ok(())
}

pub async fn run(opts: Opts) -> anyhow::Result<Report> {
    check_database_url(&opts.database_url)?;
    let c = opts.connections.max(1);
    let pool = MySqlPoolOptions::new()
        .max_connections(c as u32 + 1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&opts.database_url)
        .await
        .context("connecting to the database")?;
    let wheel = Wheel::read(&pool).await?;
    let draws = DrawBench::new(pool.clone())
        .await
        .map_err(|e| anyhow!("preparing the server's draw: {e}"))?;
    let grant = wheel.cost * (opts.duration.as_secs_f64() * MAX_DRAWS_PER_CONNECTION_S) as i64
        + wheel.cost * 100;
    let users = create_users(&pool, c, grant).await?;
    let ctx = Arc::new(Ctx {
        pool: pool.clone(),
        draws,
        daily_limit: wheel.daily_limit,
        grant,
        tag: super::run_tag(),
    });
    let mut result = bench(&ctx, &users, opts.duration).await;
    if let Ok(report) = result.as_mut() {
        prizes_won(&pool, &users, &ctx.tag, report).await?;
    }
    if !opts.keep {
        cleanup(&pool).await?;
    }
    pool.close().await;
    let mut report = result?;
    report.connections = c;
    Ok(report)
}

/// What the benchmark needs to know of the wheel the database holds.
struct Wheel {
    cost: i64,
    /// Draws per user per day; 0: no limit.
    daily_limit: u64,
}

impl Wheel {
    async fn read(pool: &MySqlPool) -> anyhow::Result<Wheel> {
        let row: Option<(u32, u32)> =
            sqlx::query_as("SELECT cost_points, daily_limit FROM lottery_settings WHERE id = 1")
                .fetch_optional(pool)
                .await
                .context("reading the wheel's settings")?;
        let Some((cost, daily_limit)) = row else {
            bail!("lottery_settings has no row: is this the server's database?");
        };
        Ok(Wheel {
            cost: cost as i64,
            daily_limit: daily_limit as u64,
        })
    }
}

/// What every worker shares.
struct Ctx {
    pool: MySqlPool,
    draws: DrawBench,
    daily_limit: u64,
    /// Points a user gets when topped up.
    grant: i64,
    /// In every idempotency key, to find this run's draws.
    tag: String,
}

/// The benchmark users (created when missing), each with at least
/// `points` and no draws counted today.
async fn create_users(pool: &MySqlPool, n: usize, points: i64) -> anyhow::Result<Vec<u64>> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let mobile = format!("{MOBILE_PREFIX}{i:08}");
        let existing: Option<(u64, i64)> =
            sqlx::query_as("SELECT user_id, total_points FROM users WHERE mobile = ?")
                .bind(&mobile)
                .fetch_optional(pool)
                .await?;
        let (id, balance) = match existing {
            Some(row) => row,
            None => {
                let res = sqlx::query(
                    "INSERT INTO users (mobile, nickname, total_points) VALUES (?, ?, 0)",
                )
                .bind(&mobile)
                .bind(NICKNAME)
                .execute(pool)
                .await
                .context("inserting a benchmark user")?;
                (res.last_insert_id(), 0)
            }
        };
        if balance < points {
            top_up(pool, id, points - balance).await?;
        }
        reset_day(pool, id).await?;
        ids.push(id);
    }
    Ok(ids)
}

/// Gives a benchmark user `points` more: the balance and a matching ledger
/// line, under the row's lock like every points change.
async fn top_up(pool: &MySqlPool, user_id: u64, points: i64) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    let (balance,): (i64,) =
        sqlx::query_as("SELECT total_points FROM users WHERE user_id = ? FOR UPDATE")
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?;
    sqlx::query("UPDATE users SET total_points = ? WHERE user_id = ?")
        .bind(balance + points)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO points_records (user_id, type, points, balance_after, source, description) \
         VALUES (?, 'earn', ?, ?, 'admin', 'db-baseline')",
    )
    .bind(user_id)
    .bind(points)
    .bind(balance + points)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Forgets a benchmark user's draws today, for the wheel's daily limit.
async fn reset_day(pool: &MySqlPool, user_id: u64) -> sqlx::Result<()> {
    sqlx::query("UPDATE users SET draw_day_count = 0 WHERE user_id = ?")
        .bind(user_id)
        .execute(pool)
        .await
        .map(|_| ())
}

/// Deletes every benchmark user's rows (this run's, and any an earlier
/// `--keep` left), giving back the prize stock their draws took (one
/// transaction per user, so stock is never given back twice).
async fn cleanup(pool: &MySqlPool) -> anyhow::Result<()> {
    let users: Vec<(u64,)> = sqlx::query_as(
        "SELECT user_id FROM users WHERE mobile LIKE ? AND LENGTH(mobile) = 11 AND nickname = ?",
    )
    .bind(format!("{MOBILE_PREFIX}%"))
    .bind(NICKNAME)
    .fetch_all(pool)
    .await
    .context("finding the benchmark users")?;
    for (id,) in users {
        let mut tx = pool.begin().await?;
        let taken: Vec<(u32, i64)> = sqlx::query_as(
            "SELECT d.prize_id, COUNT(*) FROM draw_records d \
             JOIN lottery_prizes p ON p.prize_id = d.prize_id \
             WHERE d.user_id = ? AND d.fallback_from IS NULL AND p.stock IS NOT NULL \
             GROUP BY d.prize_id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await
        .context("counting the prize stock to give back")?;
        for (prize, n) in taken {
            sqlx::query(
                "UPDATE lottery_prizes SET stock = stock + ? WHERE prize_id = ? AND stock IS NOT NULL",
            )
            .bind(n)
            .bind(prize)
            .execute(&mut *tx)
            .await
            .context("giving prize stock back")?;
        }
        for q in [
            "DELETE FROM idempotency_keys WHERE user_id = ?",
            "DELETE FROM user_events WHERE user_id = ?",
            "DELETE FROM points_records WHERE user_id = ?",
            "DELETE FROM draw_records WHERE user_id = ?",
            "DELETE FROM users WHERE user_id = ?",
        ] {
            sqlx::query(q)
                .bind(id)
                .execute(&mut *tx)
                .await
                .context("deleting benchmark rows")?;
        }
        tx.commit().await?;
    }
    Ok(())
}

/// This run's prizes, by name, and how many fell back.
async fn prizes_won(
    pool: &MySqlPool,
    users: &[u64],
    tag: &str,
    report: &mut Report,
) -> anyhow::Result<()> {
    let pattern = format!("{tag}-%");
    for &id in users {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT prize_name, COUNT(*), CAST(SUM(fallback_from IS NOT NULL) AS SIGNED) \
             FROM draw_records WHERE user_id = ? AND request_key LIKE ? GROUP BY prize_name",
        )
        .bind(id)
        .bind(&pattern)
        .fetch_all(pool)
        .await
        .context("counting the prizes won")?;
        for (name, n, fallbacks) in rows {
            *report.prizes.entry(name).or_default() += n as u64;
            report.fallbacks += fallbacks as u64;
        }
    }
    Ok(())
}

async fn bench(ctx: &Arc<Ctx>, users: &[u64], duration: Duration) -> anyhow::Result<Report> {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, &user_id)| tokio::spawn(worker(ctx.clone(), i, user_id, deadline)))
        .collect();
    let mut report = Report::default();
    for t in tasks {
        let w = t.await?;
        report.transactions += w.ok;
        report.latency.merge(&w.latency);
        add_counts(&mut report.errors, &w.errors);
        report.limit_resets += w.limit_resets;
        report.top_ups += w.top_ups;
    }
    let secs = started.elapsed().as_secs_f64();
    report.duration_s = round3(secs);
    report.tps = round3(report.transactions as f64 / secs.max(1e-3));
    Ok(report)
}

/// One connection's results.
#[derive(Default)]
struct Worker {
    ok: u64,
    latency: Hist,
    errors: Counts,
    limit_resets: u64,
    top_ups: u64,
}

/// One benchmark user drawing back to back until `deadline`.
async fn worker(ctx: Arc<Ctx>, i: usize, user_id: u64, deadline: Instant) -> Worker {
    let mut w = Worker::default();
    let mut since_reset = 0u64;
    let mut n = 0u64;
    while Instant::now() < deadline {
        if ctx.daily_limit > 0 && since_reset >= ctx.daily_limit {
            w.between(reset_day(&ctx.pool, user_id).await, |w| w.limit_resets += 1);
            since_reset = 0;
        }
        let key = format!("{}-{i}-{n}", ctx.tag);
        n += 1;
        let t0 = Instant::now();
        let code =
            match tokio::time::timeout(TXN_TIMEOUT, ctx.draws.draw(UserId(user_id), &key)).await {
                Ok(Ok(())) => {
                    w.ok += 1;
                    w.latency.record(t0.elapsed());
                    since_reset += 1;
                    continue;
                }
                Ok(Err(e)) => e.split(' ').next().unwrap_or_default().to_string(),
                Err(_) => "timeout".to_string(),
            };
        match code.as_str() {
            "4005" => w.between(top_up(&ctx.pool, user_id, ctx.grant).await, |w| {
                w.top_ups += 1
            }),
            "3001" => {
                w.between(reset_day(&ctx.pool, user_id).await, |w| w.limit_resets += 1);
                since_reset = 0;
            }
            _ => {}
        }
        bump(&mut w.errors, code);
    }
    w
}

impl Worker {
    /// Counts a step between draws, or its failure.
    fn between(&mut self, r: sqlx::Result<()>, ok: impl FnOnce(&mut Worker)) {
        match r {
            Ok(()) => ok(self),
            Err(_) => bump(&mut self.errors, "between_draws"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_databases_are_accepted() {
        assert!(check_database_url("mysql://root@127.0.0.1:3307/x").is_ok());
        assert!(check_database_url("mysql://u:p@localhost/x?socket=/tmp/s").is_ok());
        assert!(check_database_url("mysql://root@10.1.2.3:3306/x").is_err());
        assert!(check_database_url("mysql://root@db.example.com/x").is_err());
        assert!(check_database_url("postgres://127.0.0.1/x").is_err());
    }
}
