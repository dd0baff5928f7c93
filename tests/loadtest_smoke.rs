//! The load generator against a real server, small and short, so the tool
//! cannot rot: users, hold, fanout and commands must all produce sane
//! reports; cross between two instances sharing a real Redis; and hold,
//! fanout and the bare epoll reader through TLS, with scripts/cert's
//! certificate, behind a small TLS front that stands in for nginx.

mod common;

use common::{TestServer, WAIT};
use loadtest::client::Sources;
use loadtest::raw::{Event, Reader};
use loadtest::scenarios::{Setup, commands, cross, db_check, fanout, hold, tcp_floor, users};
use restaurant_points::config::Secret;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// A setup for `server` with its own phones (`prefix`) and tokens file.
fn setup_for(server: String, prefix: &str, tokens: &Path) -> Setup {
    Setup {
        server,
        tokens: Some(tokens.to_path_buf()),
        prefix: prefix.into(),
        offset: 0,
        write_tokens: true,
        login_concurrency: 32,
        sources: Sources { from: 2, count: 2 },
        ca: None,
    }
}

fn tokens_file(label: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "loadtest-smoke-{label}-{}.jsonl",
        std::process::id()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_load_generator_logs_in_holds_fans_out_and_verifies_commands() {
    loadtest::raise_nofile_limit();
    let server = TestServer::start_with(|c| {
        c.heartbeat_interval = Duration::from_millis(500);
        // The load generator tops its users up through the merchant.
        c.adjust_max_per_day = i64::MAX;
    })
    .await;
    let tokens = tokens_file("main");
    let setup = setup_for(format!("http://{}", server.addr), "1990", &tokens);

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

// ---------------------------------------------------------------------------
// cross: two instances, one Redis
// ---------------------------------------------------------------------------

/// The shared Redis: `TEST_REDIS_URL` (set by scripts/test), else the one
/// scripts/redis runs.
fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/redis");
        let out = std::process::Command::new(script)
            .arg("--print-url")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("scripts/redis runs");
        assert!(out.status.success(), "scripts/redis --print-url: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
}

/// Waits until `n` instances listen on the prefix's control channel (each
/// subscribes to it last): before that a doorbell could go to nobody.
async fn wait_subscribed(url: &str, prefix: &str, n: i64) {
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let reply: Vec<redis::Value> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(format!("{prefix}:control"))
            .query_async(&mut con)
            .await
            .unwrap();
        if matches!(reply.get(1), Some(redis::Value::Int(k)) if *k == n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} instances subscribe to {prefix}:control"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cross_times_each_users_events_from_one_instance_to_another() {
    loadtest::raise_nofile_limit();
    let url = redis_url();
    let prefix = format!("lt-smoke-{}", ulid::Ulid::new().to_string().to_lowercase());
    let instance = || {
        TestServer::start_with(|c| {
            c.redis_url = Some(Secret::new(url.clone()));
            c.redis_channel_prefix = prefix.clone();
            c.adjust_max_per_day = i64::MAX;
        })
    };
    let a = instance().await;
    let b = instance().await;
    wait_subscribed(&url, &prefix, 2).await;

    let tokens = tokens_file("cross");
    let setup = setup_for(
        format!("http://{},http://{}", a.addr, b.addr),
        "1991",
        &tokens,
    );
    let mut o = cross::Opts::new(setup, 20);
    o.rate = 40.0;
    o.duration = Duration::from_secs(2);
    o.event_timeout = Duration::from_secs(5);
    let r = cross::run(o).await.expect("cross runs");
    println!("{r}");
    assert_eq!(r.connected, 20, "{r}");
    assert!(r.successes >= 40, "about 80 draws at 40/s for 2 s: {r}");
    assert_eq!(r.delivered, r.successes, "every event reached A: {r}");
    assert_eq!((r.lost, r.mismatched, r.unexpected), (0, 0, 0), "{r}");
    assert_eq!(r.listeners_in_order, 20, "{r}");
    assert_eq!(r.after_reply.count(), r.delivered, "{r}");
    assert_eq!(r.by_server.len(), 1, "one A instance: {r}");
    assert_eq!(r.command_server, format!("http://{}", b.addr));
    assert!(r.verification_ok, "{r}");
    let _ = std::fs::remove_file(&tokens);
}

// ---------------------------------------------------------------------------
// TLS: scripts/cert's certificate, a TLS front standing in for nginx
// ---------------------------------------------------------------------------

/// scripts/cert's certificate and key: `TEST_TLS_CERT`/`TEST_TLS_KEY` (set
/// by scripts/test), else what scripts/cert prints.
fn tls_files() -> (PathBuf, PathBuf) {
    if let (Some(c), Some(k)) = (
        std::env::var_os("TEST_TLS_CERT"),
        std::env::var_os("TEST_TLS_KEY"),
    ) {
        return (c.into(), k.into());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cert");
    let out = std::process::Command::new(script)
        .arg("--print-env")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("scripts/cert runs");
    assert!(out.status.success(), "scripts/cert --print-env: {out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    let value = |name: &str| -> PathBuf {
        printed
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("scripts/cert printed {name}: {printed}"))
            .into()
    };
    (value("TLS_CERT="), value("TLS_KEY="))
}

/// A TLS front for `upstream`, as nginx is for the instances: it accepts
/// TLS with the certificate and relays the plaintext both ways.
async fn tls_front(upstream: SocketAddr, cert: &Path, key: &Path) -> SocketAddr {
    let certs = vec![CertificateDer::from_pem_file(cert).unwrap()];
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let config = config.clone();
            tokio::spawn(async move {
                let _ = relay(client, upstream, config).await;
            });
        }
    });
    addr
}

/// One connection through the front, until either side ends.
async fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    config: Arc<rustls::ServerConfig>,
) -> io::Result<()> {
    let mut tls = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
    let server = TcpStream::connect(upstream).await?;
    server.set_nodelay(true)?;
    client.set_nodelay(true)?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while tls.wants_write() {
            client.writable().await?;
            match tls.write_tls(&mut Nonblocking(&client)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        tokio::select! {
            r = client.readable() => {
                r?;
                match tls.read_tls(&mut Nonblocking(&client)) {
                    Ok(0) => return Ok(()),
                    Ok(_) => {
                        tls.process_new_packets().map_err(io::Error::other)?;
                        loop {
                            match tls.reader().read(&mut buf) {
                                Ok(0) => return Ok(()),
                                Ok(n) => write_all(&server, &buf[..n]).await?,
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                Err(e) => return Err(e),
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            r = server.readable() => {
                r?;
                match server.try_read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => tls.writer().write_all(&buf[..n])?,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// A tokio socket as `Read`/`Write` that never waits (for rustls).
struct Nonblocking<'a>(&'a TcpStream);

impl Read for Nonblocking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Nonblocking<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

async fn write_all(s: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        s.writable().await?;
        match s.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_load_generator_speaks_tls_to_a_front_with_the_scripts_certificate() {
    loadtest::raise_nofile_limit();
    let server = TestServer::start_with(|c| {
        c.heartbeat_interval = Duration::from_millis(500);
        c.adjust_max_per_day = i64::MAX;
    })
    .await;
    let (cert, key) = tls_files();
    let front = tls_front(server.addr, &cert, &key).await;
    let tokens = tokens_file("tls");
    let mut setup = setup_for(format!("https://{front}"), "1992", &tokens);

    // Without --ca an https:// server is refused up front, by name.
    let e = users::ensure_all(&setup, 1, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("--ca"), "{e:#}");
    setup.ca = Some(cert.clone());

    // REST (logins) through TLS.
    let u = users::run(users::Opts {
        setup: setup.clone(),
        count: 60,
        reuse: false,
        duration: Duration::from_secs(60),
    })
    .await
    .expect("users runs over https");
    assert_eq!((u.logged_in, u.failed), (60, 0), "{u}");

    // tokio-tungstenite over the TLS stream: pings answered for 3 heartbeats.
    let mut h = hold::Opts::new(setup.clone(), 60);
    h.hold = Some(Duration::from_millis(1600));
    h.connect_concurrency = 32;
    let h = hold::run(h).await.expect("hold runs over wss");
    println!("{h}");
    assert_eq!((h.connected, h.alive_at_end), (60, 60), "{h}");
    assert!(h.lost.is_empty(), "{h}");

    // The bare epoll reader through rustls.
    let mut f = fanout::Opts::new(setup.clone(), 60, 3);
    f.connect_concurrency = 32;
    let f = fanout::run(f).await.expect("fanout runs over wss");
    println!("{f}");
    assert_eq!((f.connected, f.delivered), (60, 180), "{f}");
    assert!(f.lost.is_empty(), "{f}");

    // Silent sockets are closed after two heartbeats: five heartbeats
    // later every raw socket, plain and TLS, is still open, so its pings
    // were answered (through rustls for the TLS ones).
    let creds = users::ensure_all(&setup, 20, Duration::from_secs(30))
        .await
        .unwrap();
    let plain = setup_for(format!("http://{}", server.addr), "1992", &tokens);
    let mut sockets = Vec::new();
    for (i, c) in creds.iter().enumerate() {
        let s = if i % 2 == 0 { &setup } else { &plain };
        let raw = s
            .connector()
            .unwrap()
            .connect_raw(0, &c.access_token)
            .await
            .unwrap();
        assert_eq!(raw.tls.is_some(), i % 2 == 0);
        sockets.push(raw.into_raw().unwrap());
    }
    let ended = tokio::task::spawn_blocking(move || {
        let mut reader = Reader::new(sockets).unwrap();
        let mut welcomes = 0;
        let mut ended = Vec::new();
        let mut on = |ev: Event| match ev {
            Event::Text(_, t) => {
                let v: serde_json::Value = serde_json::from_slice(t).unwrap_or_default();
                welcomes += usize::from(v["type"] == "welcome");
            }
            Event::Ended(i, kind) => ended.push((i, kind)),
        };
        reader.drain_pending(&mut on);
        let until = std::time::Instant::now() + Duration::from_millis(2500);
        while std::time::Instant::now() < until {
            reader.poll(50, &mut on).unwrap();
        }
        (welcomes, ended)
    })
    .await
    .unwrap();
    assert_eq!(ended.0, 20, "every socket's welcome was read: {ended:?}");
    assert!(ended.1.is_empty(), "no socket was closed: {ended:?}");
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
