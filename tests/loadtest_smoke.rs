//! The load generator against a real server, small and short, so the tool
//! cannot rot: users, hold, fanout and commands must all produce sane
//! reports.

mod common;

use common::TestServer;
use loadtest::client::Sources;
use loadtest::scenarios::{Setup, commands, db_check, fanout, hold, tcp_floor, users};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_load_generator_logs_in_holds_fans_out_and_verifies_commands() {
    loadtest::raise_nofile_limit();
    let server = TestServer::start_with(|c| {
        c.heartbeat_interval = Duration::from_millis(500);
        // The load generator tops its users up through the merchant.
        c.adjust_max_per_day = i64::MAX;
    })
    .await;
    let tokens = std::env::temp_dir().join(format!("loadtest-smoke-{}.jsonl", std::process::id()));
    let setup = Setup {
        server: format!("http://{}", server.addr),
        tokens: Some(tokens.clone()),
        prefix: "1990".into(),
        offset: 0,
        write_tokens: true,
        login_concurrency: 32,
        sources: Sources { from: 2, count: 2 },
        ca: None,
    };

    let u = users::run(users::Opts {
        setup: setup.clone(),
        count: 200,
        reuse: false,
        duration: Duration::from_secs(60),
    })
    .await
    .expect("users runs");
    println!("{u}");
    assert_eq!((u.logged_in, u.failed), (200, 0), "{u}");
    let saved = users::load(&tokens).unwrap();
    assert_eq!(saved.len(), 200, "every token is saved");

    let mut h = hold::Opts::new(setup.clone(), 200);
    h.hold = Some(Duration::from_millis(1600));
    h.server_pids = vec![std::process::id()];
    // The test listener's accept queue is 128 deep: stay under it.
    h.connect_concurrency = 64;
    let h = hold::run(h).await.expect("hold runs");
    println!("{h}");
    assert_eq!(h.connected, 200, "{h}");
    assert_eq!(h.heartbeat_interval_ms, 500, "{h}");
    assert_eq!(
        h.alive_at_end, 200,
        "every socket survives three heartbeats: {h}"
    );
    assert!(h.lost.is_empty(), "{h}");
    assert!(h.bytes_per_socket.is_some(), "{h}");

    let mut f = fanout::Opts::new(setup.clone(), 200, 3);
    f.connect_concurrency = 64;
    let f = fanout::run(f).await.expect("fanout runs");
    println!("{f}");
    assert_eq!((f.connected, f.updates), (200, 3), "{f}");
    assert_eq!(f.delivered, 600, "every update reaches every socket: {f}");
    assert_eq!(f.share_all, 1.0, "{f}");
    assert_eq!(f.update_timeouts, 0, "{f}");
    assert!(
        f.delay_commit.count() == 600 && f.delay_request.max_ms() < 10_000.0,
        "{f}"
    );

    let mut c = commands::Opts::new(setup.clone(), 20, Duration::from_secs(2));
    c.drain = Duration::from_secs(2);
    let c = commands::run(c).await.expect("commands runs");
    println!("{c}");
    assert_eq!(c.connected, 20, "{c}");
    assert!(c.successes > 0, "{c}");
    assert!(
        c.verification_ok,
        "every success has exactly one gap-free points_update: {c}"
    );
    assert_eq!(c.unverifiable_users, 0, "{c}");

    // The runs left the database consistent, and the check would say if not.
    let url = common::database_url().await;
    let check = db_check::run(&url).await.expect("db-check runs");
    println!("{check}");
    assert!(check.ok && check.users >= 200, "{check}");
    let (user_id,): (u64,) =
        sqlx::query_as("SELECT user_id FROM users ORDER BY user_id DESC LIMIT 1")
            .fetch_one(&server.db)
            .await
            .unwrap();
    sqlx::query("UPDATE users SET total_points = total_points + 1 WHERE user_id = ?")
        .bind(user_id)
        .execute(&server.db)
        .await
        .unwrap();
    let broken = db_check::run(&url).await.expect("db-check runs");
    assert!(
        !broken.ok && broken.balance_mismatches == 1,
        "a balance off its ledger is found: {broken}"
    );
    sqlx::query("UPDATE users SET total_points = total_points - 1 WHERE user_id = ?")
        .bind(user_id)
        .execute(&server.db)
        .await
        .unwrap();

    let _ = std::fs::remove_file(&tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kernel_floor_scenario_delivers_every_message() {
    loadtest::raise_nofile_limit();
    let r = tcp_floor::run(tcp_floor::Opts {
        sockets: 100,
        updates: 3,
        senders: 2,
        sources: Sources { from: 2, count: 2 },
        in_process: true,
    })
    .await
    .expect("tcp-floor runs");
    println!("{r}");
    assert_eq!(r.delay.count(), 300, "every socket got every message: {r}");
    assert_eq!(r.send_all.count(), 3, "{r}");
}
