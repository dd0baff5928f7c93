//! `db-baseline`: the database's own throughput for the draw's transaction
//! shape, with no server in between — the ceiling the `commands` figure
//! can be compared with. The only scenario that touches the database.
//!
//! The transaction mirrors a one-prize draw statement by statement: lock
//! the user's row, look up the idempotency key, insert the draw record,
//! two ledger rows (cost and points prize), the `points_update` user
//! event, write the user's row back and store the key. It runs on
//! benchmark users of its own (mobiles `100xxxxxxxx`, which no guest can
//! have: phones start 13-19), one per connection so that, as in
//! `commands`, no two transactions wait on the same row lock. Their rows
//! are deleted afterwards unless `--keep`.

use anyhow::{Context, bail};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::{MySql, Transaction};
use std::fmt;
use std::time::Duration;
use tokio::time::Instant;

use crate::stats::{Counts, Hist, add_counts, bump, round3, show_counts};

/// Mobiles of benchmark users: `100` and an 8-digit index.
const MOBILE_PREFIX: &str = "100";
const TXN_TIMEOUT: Duration = Duration::from_secs(10);
const START_POINTS: i64 = 1_000_000;

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
    pub transactions: u64,
    pub tps: f64,
    pub latency: Hist,
    pub errors: Counts,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "db-baseline: {} draw-shaped transactions on {} connections in {:.1} s: {:.0} tps",
            self.transactions, self.connections, self.duration_s, self.tps
        )?;
        writeln!(f, "  latency {}", self.latency)?;
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
    let users = create_users(&pool, c).await?;
    let result = bench(&pool, &users, opts.duration).await;
    if !opts.keep {
        cleanup(&pool, &users).await?;
    }
    pool.close().await;
    let mut report = result?;
    report.connections = c;
    Ok(report)
}

/// Benchmark users with a balance that matches their ledger.
async fn create_users(pool: &MySqlPool, n: usize) -> anyhow::Result<Vec<u64>> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let mobile = format!("{MOBILE_PREFIX}{i:08}");
        let existing: Option<(u64,)> = sqlx::query_as("SELECT user_id FROM users WHERE mobile = ?")
            .bind(&mobile)
            .fetch_optional(pool)
            .await?;
        if let Some((id,)) = existing {
            ids.push(id);
            continue;
        }
        let mut tx = pool.begin().await?;
        let res = sqlx::query(
            "INSERT INTO users (mobile, nickname, total_points) VALUES (?, 'loadtest-db', ?)",
        )
        .bind(&mobile)
        .bind(START_POINTS)
        .execute(&mut *tx)
        .await
        .context("inserting a benchmark user")?;
        let id = res.last_insert_id();
        sqlx::query(
            "INSERT INTO points_records (user_id, type, points, balance_after, source, description) \
             VALUES (?, 'earn', ?, ?, 'admin', 'db-baseline')",
        )
        .bind(id)
        .bind(START_POINTS)
        .bind(START_POINTS)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        ids.push(id);
    }
    Ok(ids)
}

async fn cleanup(pool: &MySqlPool, users: &[u64]) -> anyhow::Result<()> {
    for &id in users {
        for q in [
            "DELETE FROM idempotency_keys WHERE user_id = ?",
            "DELETE FROM user_events WHERE user_id = ?",
            "DELETE FROM points_records WHERE user_id = ?",
            "DELETE FROM draw_records WHERE user_id = ?",
            "DELETE FROM users WHERE user_id = ?",
        ] {
            sqlx::query(q)
                .bind(id)
                .execute(pool)
                .await
                .context("deleting benchmark rows")?;
        }
    }
    Ok(())
}

async fn bench(pool: &MySqlPool, users: &[u64], duration: Duration) -> anyhow::Result<Report> {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, &user_id)| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut lat = Hist::new();
                let mut errors = Counts::new();
                let mut n = 0u64;
                let mut ok = 0u64;
                while Instant::now() < deadline {
                    let key = format!("dbb-{i}-{n}-{}", ulid::Ulid::new());
                    n += 1;
                    let t0 = Instant::now();
                    match tokio::time::timeout(TXN_TIMEOUT, draw_shaped(&pool, user_id, &key)).await
                    {
                        Ok(Ok(())) => {
                            ok += 1;
                            lat.record(t0.elapsed());
                        }
                        Ok(Err(e)) => bump(&mut errors, error_kind(&e)),
                        Err(_) => bump(&mut errors, "timeout"),
                    }
                }
                (ok, lat, errors)
            })
        })
        .collect();
    let mut report = Report::default();
    for t in tasks {
        let (ok, lat, errors) = t.await?;
        report.transactions += ok;
        report.latency.merge(&lat);
        add_counts(&mut report.errors, &errors);
    }
    let secs = started.elapsed().as_secs_f64();
    report.duration_s = round3(secs);
    report.tps = round3(report.transactions as f64 / secs.max(1e-3));
    Ok(report)
}

fn error_kind(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => format!("db_{}", db.code().unwrap_or_default()),
        sqlx::Error::PoolTimedOut => "pool_timeout".into(),
        sqlx::Error::Io(_) => "io".into(),
        _ => "other".into(),
    }
}

type LockedRow = (u64, i64, u64, u32, Option<NaiveDate>, u32, String);

/// One draw's statements, as the server issues them.
async fn draw_shaped(pool: &MySqlPool, user_id: u64, key: &str) -> Result<(), sqlx::Error> {
    let mut tx: Transaction<'_, MySql> = pool.begin().await?;
    let (_, total_points, last_seq, pity, _day, day_count, _status): LockedRow = sqlx::query_as(
        "SELECT user_id, total_points, last_seq, pity_count, draw_day, draw_day_count, status \
         FROM users WHERE user_id = ? FOR UPDATE",
    )
    .bind(user_id)
    .fetch_one(&mut *tx)
    .await?;
    let stored: Option<(String, String)> = sqlx::query_as(
        "SELECT fingerprint, response FROM idempotency_keys WHERE user_id = ? AND idem_key = ?",
    )
    .bind(user_id)
    .bind(key)
    .fetch_optional(&mut *tx)
    .await?;
    if stored.is_some() {
        tx.rollback().await?;
        return Ok(());
    }
    let draw_id = ulid::Ulid::new().to_string();
    let today = chrono::Utc::now().date_naive();
    sqlx::query(
        "INSERT INTO draw_records (draw_id, user_id, prize_id, prize_name, prize_type, prize_value, angle, \
         points_cost, is_pity, pity_before, fallback_from, config_version, request_key) \
         VALUES (?, ?, ?, ?, ?, CAST(? AS DECIMAL(12,2)) / 100, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&draw_id)
    .bind(user_id)
    .bind(5u64)
    .bind("100积分")
    .bind("points")
    .bind(10_000i64)
    .bind(180u16)
    .bind(100i64)
    .bind(false)
    .bind(pity)
    .bind(None::<u64>)
    .bind(1u32)
    .bind(key)
    .execute(&mut *tx)
    .await?;
    // Cost 100, prize 100: the balance ends where it began.
    sqlx::query(
        "INSERT INTO points_records (user_id, type, points, balance_after, source, description, related_id) \
         VALUES (?, 'spend', 100, ?, 'lottery', '抽奖消耗（1次）', ?), \
                (?, 'earn', 100, ?, 'lottery_prize', '抽奖奖励：100积分', ?)",
    )
    .bind(user_id)
    .bind(total_points - 100)
    .bind(&draw_id)
    .bind(user_id)
    .bind(total_points)
    .bind(&draw_id)
    .execute(&mut *tx)
    .await?;
    let seq = last_seq + 1;
    let frame = format!(
        r#"{{"type":"points_update","seq":{seq},"data":{{"user_id":{user_id},"total_points":{total_points},"change_points":0,"reason":"抽奖消耗","source":"lottery","timestamp":"{}"}}}}"#,
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    sqlx::query("INSERT INTO user_events (user_id, seq, type, frame) VALUES (?, ?, ?, ?)")
        .bind(user_id)
        .bind(seq)
        .bind("points_update")
        .bind(&frame)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE users SET total_points = ?, last_seq = ?, pity_count = ?, draw_day = ?, draw_day_count = ? \
         WHERE user_id = ?",
    )
    .bind(total_points)
    .bind(seq)
    .bind(0u32)
    .bind(today)
    .bind(day_count + 1)
    .bind(user_id)
    .execute(&mut *tx)
    .await?;
    let response = format!(
        r#"{{"draws":[{{"draw_id":"{draw_id}","prize_id":5,"prize_name":"100积分","prize_type":"points","prize_value":100.00,"angle":180,"is_pity":false}}],"points_cost":100,"remaining_points":{total_points}}}"#
    );
    sqlx::query(
        "INSERT INTO idempotency_keys (user_id, idem_key, fingerprint, response) VALUES (?, ?, ?, ?)",
    )
    .bind(user_id)
    .bind(key)
    .bind("lottery.draw:1")
    .bind(&response)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
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
