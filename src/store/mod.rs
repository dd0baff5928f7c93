//! SQL, by table group. Functions that write take `&mut Tx` so that the
//! caller (a domain function) owns the transaction: it begins, commits, and
//! decides what belongs together.

pub mod audit;
pub mod auth;
pub mod events;
pub mod exchange;
pub mod idempotency;
pub mod ledger;
pub mod lottery;
pub mod photos;
pub mod users;

use crate::config::Config;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::{MySql, Transaction};
use std::str::FromStr;
use std::time::Duration;

pub type Tx = Transaction<'static, MySql>;

/// Connects with retries and exponential backoff, logging each try, so the
/// server can start before its database is ready.
pub async fn connect(config: &Config) -> Result<MySqlPool, sqlx::Error> {
    let options = MySqlConnectOptions::from_str(config.database_url.expose())?
        .charset("utf8mb4")
        .collation("utf8mb4_unicode_ci");
    let pool_options = MySqlPoolOptions::new()
        .max_connections(config.db_max_connections)
        .min_connections(1)
        .acquire_timeout(config.db_acquire_timeout)
        .idle_timeout(Duration::from_secs(600))
        // READ COMMITTED: every invariant is kept by explicit row locks
        // (`FOR UPDATE`) and conditional updates, never by a snapshot, so
        // the snapshot isolation of REPEATABLE READ buys nothing and its
        // gap and next-key locks cost deadlocks; and an UPDATE that matches
        // no row (a prize out of stock) does not keep that row locked.
        // (A binlog must then be row-based, MySQL 8's default.)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::query("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .execute(conn)
                    .await
                    .map(|_| ())
            })
        });
    let mut delay = Duration::from_millis(250);
    let mut attempt = 1;
    loop {
        match pool_options.clone().connect_with(options.clone()).await {
            Ok(pool) => {
                tracing::info!(attempt, "connected to the database");
                return Ok(pool);
            }
            Err(e) if attempt <= config.db_connect_retries => {
                tracing::warn!(attempt, retry_in_ms = delay.as_millis() as u64, error = %e, "database connection failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
                attempt += 1;
            }
            Err(e) => {
                tracing::error!(attempt, error = %e, "database connection failed; giving up");
                return Err(e);
            }
        }
    }
}

/// Applies `migrations/`, one server at a time: replicas starting together
/// must not race. sqlx's own lock asks `GET_LOCK(name, -1)`, which MariaDB
/// answers with NULL (no lock), so the lock is taken here, on the
/// connection that migrates, and checked.
pub async fn migrate(pool: &MySqlPool) -> Result<(), sqlx::migrate::MigrateError> {
    let mut conn = pool.acquire().await?;
    let (locked,): (Option<i64>,) =
        sqlx::query_as("SELECT GET_LOCK(CONCAT(DATABASE(), '.migrate'), 300)")
            .fetch_one(&mut *conn)
            .await?;
    if locked != Some(1) {
        return Err(sqlx::migrate::MigrateError::Execute(sqlx::Error::Protocol(
            "could not take the migration lock within 300 s".into(),
        )));
    }
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_locking(false);
    let result = migrator.run(&mut *conn).await;
    let _ = sqlx::query("SELECT RELEASE_LOCK(CONCAT(DATABASE(), '.migrate'))")
        .execute(&mut *conn)
        .await;
    result
}

/// InnoDB gave up on this transaction — chose it as a deadlock victim
/// (1213) or let a lock wait time out (1205) — and running the whole
/// transaction again from the start is safe and expected. (After 1205
/// MariaDB rolls back only the statement; the caller drops the
/// transaction, which rolls back the rest.)
pub fn is_retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .is_some_and(|m| matches!(m.number(), 1213 | 1205))
                || db.code().as_deref() == Some("40001")
        }
        _ => false,
    }
}
