//! `db-check`: after any run, is the database consistent? Read-only.
//!
//! - every user's balance equals the sum of their ledger (earn − spend);
//! - every user's retained events have gap-free seqs ending at `last_seq`
//!   (old events are pruned, so the retained ones are a suffix);
//! - no product's stock is negative, and every product with a stock audit
//!   has the stock its audit adds up to.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sqlx::mysql::MySqlPoolOptions;
use std::fmt;
use std::time::Duration;

use super::db_baseline::check_database_url;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub users: i64,
    /// Users whose balance is not the sum of their ledger.
    pub balance_mismatches: i64,
    /// Users whose retained events skip or repeat a seq, or do not end at
    /// their `last_seq`.
    pub seq_gaps: i64,
    pub products: i64,
    pub negative_stock: i64,
    /// Products whose stock is not the sum of their audited changes.
    pub stock_mismatches: i64,
    pub ok: bool,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "db-check: {} — {} users: {} balance ≠ ledger, {} with seq gaps; {} products: {} negative, {} stock ≠ audit",
            if self.ok {
                "CONSISTENT"
            } else {
                "INCONSISTENT"
            },
            self.users,
            self.balance_mismatches,
            self.seq_gaps,
            self.products,
            self.negative_stock,
            self.stock_mismatches
        )
    }
}

const BALANCE: &str = "SELECT COUNT(*) FROM users u
    LEFT JOIN (SELECT user_id, SUM(IF(type = 'earn', points, -points)) AS s
               FROM points_records GROUP BY user_id) p ON p.user_id = u.user_id
    WHERE u.total_points <> COALESCE(p.s, 0)";

const SEQS: &str = "SELECT COUNT(*) FROM (
        SELECT u.last_seq, MIN(e.seq) AS lo, MAX(e.seq) AS hi, COUNT(*) AS n
        FROM users u JOIN user_events e ON e.user_id = u.user_id
        GROUP BY u.user_id, u.last_seq) t
    WHERE t.hi <> t.last_seq OR t.n <> t.hi - t.lo + 1";

const STOCK: &str = "SELECT COUNT(*) FROM products p
    JOIN (SELECT product_id, SUM(delta) AS s FROM stock_changes GROUP BY product_id) c
      ON c.product_id = p.product_id
    WHERE p.stock <> c.s";

pub async fn run(database_url: &str) -> anyhow::Result<Report> {
    check_database_url(database_url)?;
    let pool = MySqlPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(database_url)
        .await
        .context("connecting to the database")?;
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .with_context(|| format!("running {sql}"))
        }
    };
    let mut r = Report {
        users: count("SELECT COUNT(*) FROM users").await?,
        balance_mismatches: count(BALANCE).await?,
        seq_gaps: count(SEQS).await?,
        products: count("SELECT COUNT(*) FROM products").await?,
        negative_stock: count("SELECT COUNT(*) FROM products WHERE stock < 0").await?,
        stock_mismatches: count(STOCK).await?,
        ok: false,
    };
    r.ok = r.balance_mismatches == 0
        && r.seq_gaps == 0
        && r.negative_stock == 0
        && r.stock_mismatches == 0;
    pool.close().await;
    Ok(r)
}
