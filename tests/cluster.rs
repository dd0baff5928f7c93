//! Several instances behind nginx, as production runs them
//! (deploy/RUNBOOK.md): real instances — in-process servers, or the real
//! binary as processes — on the real database, a real redis-server carrying
//! the fan-out, and a real nginx running the repository's own nginx.conf
//! (rendered by scripts/nginx), with clients that speak WSS and HTTPS to it
//! and trust scripts/cert's certificate.
//!
//! A socket through nginx lands where least_conn puts it: each test finds
//! out which instance holds it (`/health` → `checks.websocket.connections`)
//! and makes its commands on the other one. Every test uses its own channel
//! prefix (the tests of this binary run in parallel on one Redis) and its
//! own nginx on free ports, stopped by a guard even when the test fails.
//!
//! What a test waits for, it waits for with a bound and reads from the
//! sockets; a bound on an event is kept under the fan-out's periodic check
//! (`CHECK_EVERY`, 10 s), so a doorbell the fan-out failed to ring is seen
//! as late rather than hidden by the next check.

mod common;

use common::{Answer, Audit, TestServer, User, WAIT, WsClient, answer, post_json, unique_phone};
use futures::{SinkExt, StreamExt};
use protocol::ServerFrame;
use restaurant_points::Config;
use restaurant_points::config::{Secret, StorageBackend};
use restaurant_points::net::TrustedProxies;
use serde_json::{Value, json};
use sqlx::MySqlPool;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout, timeout_at};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

/// A new user's register bonus.
const START_POINTS: i64 = 1000;
/// How long an event committed on one instance may take to reach a socket
/// on another: far under the fan-out's 10 s periodic check.
const FAN_OUT: Duration = Duration::from_secs(3);

type Wss = WebSocketStream<MaybeTlsStream<TcpStream>>;

// ---------------------------------------------------------------------------
// What the tests run: set by scripts/test, or found the way it finds them
// ---------------------------------------------------------------------------

struct Tools {
    /// The shared Redis (`TEST_REDIS_URL`, else `scripts/redis --print-url`).
    redis_url: String,
    /// scripts/redis, for tests that run and restart a Redis of their own.
    redis_script: PathBuf,
    /// The nginx binary (`TEST_NGINX_BIN`, else `scripts/nginx install`).
    nginx_bin: PathBuf,
    /// scripts/nginx, which renders the repository's nginx.conf.
    nginx_script: PathBuf,
    /// scripts/cert's self-signed certificate and key.
    tls_cert: PathBuf,
    tls_key: PathBuf,
}

fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
        let script = |var: &str, name: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .unwrap_or_else(|| scripts.join(name))
        };
        let redis_script = script("TEST_REDIS_SCRIPT", "redis");
        let nginx_script = script("TEST_NGINX_SCRIPT", "nginx");
        let redis_url = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| {
            run_script(&redis_script, &["--print-url"])
                .trim()
                .to_string()
        });
        let nginx_bin = std::env::var_os("TEST_NGINX_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| run_script(&nginx_script, &["install"]).trim().into());
        let (tls_cert, tls_key) = match (
            std::env::var_os("TEST_TLS_CERT"),
            std::env::var_os("TEST_TLS_KEY"),
        ) {
            (Some(cert), Some(key)) => (cert.into(), key.into()),
            _ => {
                let printed = run_script(&scripts.join("cert"), &["--print-env"]);
                let value = |name: &str| -> PathBuf {
                    printed
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .unwrap_or_else(|| panic!("scripts/cert printed {name}: {printed}"))
                        .into()
                };
                (value("TLS_CERT="), value("TLS_KEY="))
            }
        };
        Tools {
            redis_url,
            redis_script,
            nginx_bin,
            nginx_script,
            tls_cert,
            tls_key,
        }
    })
}

/// Runs one of the repository's scripts to completion; its stdout.
fn run_script(script: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{} runs: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} {args:?}: {}\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The same, for a script that must not hold up the runtime (a Redis
/// restart while traffic runs).
async fn run_script_async(script: &Path, args: &[&str], envs: &[(&str, String)]) -> String {
    let out = tokio::process::Command::new(script)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("{} runs: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} {args:?}: {}\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A port nobody listens on now: bound on 127.0.0.1:0, read, released.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Channels of this test only: the tests of this binary share one Redis.
fn unique_prefix() -> String {
    format!("rpt-{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// A directory for one test's nginx, Redis, logs and uploads. Removed when
/// the test passes; kept (and named) when it fails, for its logs.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("rpt-cluster-{what}-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("logs of the failed test are kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

// ---------------------------------------------------------------------------
// TLS: trusting exactly scripts/cert's certificate
// ---------------------------------------------------------------------------

/// A rustls client configuration that trusts exactly scripts/cert's
/// certificate: the load generator's (`loadtest::tls`), which pins a
/// `CA:TRUE` self-signed certificate that webpki alone would refuse as a
/// server's own. No ALPN: the socket's upgrade is HTTP/1.1.
fn tls_config() -> rustls::ClientConfig {
    let config = loadtest::tls::client_config(&tools().tls_cert)
        .expect("scripts/cert's certificate is a PEM file");
    (*config).clone()
}

/// Opens a WSS socket through nginx; the upgrade's refusal is an error.
async fn wss_connect(url: &str) -> Result<Wss, tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let request = url.into_client_request().unwrap();
    let connector = Connector::Rustls(Arc::new(tls_config()));
    let (ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(connector))
            .await?;
    Ok(ws)
}

// ---------------------------------------------------------------------------
// nginx: the repository's nginx.conf, rendered for this test
// ---------------------------------------------------------------------------

/// One test's nginx: `scripts/nginx render` writes the repository's
/// nginx.conf for the test's instances into the test's directory, on free
/// ports; the test runs the nginx binary on it as a child, and the guard
/// stops it (master and workers) whatever happens.
struct Nginx {
    dir: PathBuf,
    conf: PathBuf,
    https_port: u16,
    master: Option<std::process::Child>,
}

impl Nginx {
    /// Renders (does not start) nginx for `upstreams` under `dir`.
    async fn render(dir: &Path, upstreams: &[SocketAddr]) -> Nginx {
        let t = tools();
        let dir = dir.join("nginx");
        let https_port = free_port();
        let http_port = free_port();
        let addrs: Vec<String> = upstreams.iter().map(SocketAddr::to_string).collect();
        let mut args = vec!["render"];
        args.extend(addrs.iter().map(String::as_str));
        let printed = run_script_async(
            &t.nginx_script,
            &args,
            &[
                ("NGINX_DIR", dir.display().to_string()),
                ("NGINX_HTTPS_PORT", https_port.to_string()),
                ("NGINX_HTTP_PORT", http_port.to_string()),
                ("TLS_CERT", t.tls_cert.display().to_string()),
                ("TLS_KEY", t.tls_key.display().to_string()),
            ],
        )
        .await;
        let conf = PathBuf::from(printed.trim());
        assert!(conf.is_file(), "scripts/nginx render printed {printed:?}");
        Nginx {
            dir,
            conf,
            https_port,
            master: None,
        }
    }

    /// Changes one top-level directive of the rendered copy (`name value;`).
    fn set(&self, name: &str, value: &str) {
        let text = std::fs::read_to_string(&self.conf).unwrap();
        let mut changed = 0;
        let lines: Vec<String> = text
            .lines()
            .map(|line| {
                if line.trim_start().starts_with(&format!("{name} ")) {
                    changed += 1;
                    format!("{name} {value};")
                } else {
                    line.to_string()
                }
            })
            .collect();
        assert_eq!(changed, 1, "the rendered nginx.conf has one `{name}` line");
        std::fs::write(&self.conf, lines.join("\n") + "\n").unwrap();
    }

    fn error_log(&self) -> PathBuf {
        self.dir.join("logs/restaurant-points.error.log")
    }

    fn access_log(&self) -> PathBuf {
        self.dir.join("logs/restaurant-points.access.log")
    }

    fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&tools().nginx_bin);
        cmd.arg("-p")
            .arg(format!("{}/", self.dir.display()))
            .arg("-c")
            .arg(&self.conf)
            .arg("-e")
            .arg(self.error_log());
        cmd
    }

    /// Starts nginx in the foreground and waits until it listens.
    async fn start(mut self) -> Nginx {
        let out = std::fs::File::create(self.dir.join("logs/nginx.out")).unwrap();
        let master = self
            .command()
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("nginx starts");
        self.master = Some(master);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.master.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "nginx exited during start-up ({status}): {}",
                    std::fs::read_to_string(self.error_log()).unwrap_or_default()
                );
            }
            let pid_written = std::fs::read_to_string(self.dir.join("nginx.pid"))
                .is_ok_and(|p| !p.trim().is_empty());
            if pid_written
                && TcpStream::connect(("127.0.0.1", self.https_port))
                    .await
                    .is_ok()
            {
                return self;
            }
            assert!(Instant::now() < deadline, "nginx listens within {WAIT:?}");
            sleep(Duration::from_millis(25)).await;
        }
    }

    /// Renders for `upstreams` and starts.
    async fn started(dir: &Path, upstreams: &[SocketAddr]) -> Nginx {
        Nginx::render(dir, upstreams).await.start().await
    }

    /// `nginx -s reload`: new workers take new connections; the old ones
    /// keep theirs for at most `worker_shutdown_timeout`.
    fn reload(&self) {
        let out = self.command().args(["-s", "reload"]).output().unwrap();
        assert!(
            out.status.success(),
            "nginx -s reload: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn master_pid(&self) -> u32 {
        self.master.as_ref().expect("nginx runs").id()
    }

    /// Pids of the master's worker processes.
    fn worker_pids(&self) -> Vec<u32> {
        children_of(self.master_pid())
    }

    fn https(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.https_port)
    }

    /// The socket URL of `user`, resuming after `since`.
    fn socket_url(&self, token: &str, since: Option<u64>) -> String {
        let since = since.map_or(String::new(), |s| format!("&since={s}"));
        format!(
            "wss://127.0.0.1:{}/ws?token={token}{since}",
            self.https_port
        )
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let Some(mut master) = self.master.take() else {
            return;
        };
        let workers = children_of(master.id());
        // SIGTERM: nginx's fast shutdown, every connection closed now.
        signal(master.id(), libc::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if master.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in workers {
            signal(pid, libc::SIGKILL);
        }
        let _ = master.kill();
        let _ = master.wait();
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a pid this test started; no memory is shared.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Live processes whose parent is `parent` (from /proc).
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split after ')'.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split(' ');
        let state = fields.next().unwrap_or("");
        if state != "Z" && fields.next().and_then(|p| p.parse().ok()) == Some(parent) {
            out.push(pid);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, r)| !r.starts_with('Z'))
    })
}

// ---------------------------------------------------------------------------
// Redis: one of the test's own, to stop and restart
// ---------------------------------------------------------------------------

/// A redis-server of this test only (scripts/redis with its own REDIS_DIR
/// and a free REDIS_PORT), so that stopping it leaves every other test's
/// Redis alone. Stopped by the guard.
struct OwnRedis {
    dir: PathBuf,
    port: u16,
}

impl OwnRedis {
    async fn start(dir: &Path) -> OwnRedis {
        let redis = OwnRedis {
            dir: dir.join("redis"),
            port: free_port(),
        };
        redis.run("start").await;
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn envs(&self) -> [(&'static str, String); 2] {
        [
            ("REDIS_DIR", self.dir.display().to_string()),
            ("REDIS_PORT", self.port.to_string()),
        ]
    }

    async fn run(&self, command: &str) {
        run_script_async(&tools().redis_script, &[command], &self.envs()).await;
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = std::process::Command::new(&tools().redis_script)
            .arg("stop")
            .envs(self.envs())
            .stdin(Stdio::null())
            .output();
    }
}

/// Subscribers of `channel` on the Redis at `url`, or None while it does
/// not answer.
async fn subscribers(url: &str, channel: &str) -> Option<i64> {
    let client = redis::Client::open(url).ok()?;
    let mut con = timeout(
        Duration::from_secs(1),
        client.get_multiplexed_async_connection(),
    )
    .await
    .ok()?
    .ok()?;
    let reply: Vec<redis::Value> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(&mut con)
        .await
        .ok()?;
    match reply.get(1) {
        Some(redis::Value::Int(n)) => Some(*n),
        _ => None,
    }
}

/// Waits until `n` instances listen on the prefix's channels (each
/// subscribes to `{prefix}:control` last): before that a doorbell could be
/// published to nobody.
async fn wait_subscribed(url: &str, prefix: &str, n: i64) {
    let channel = format!("{prefix}:control");
    let deadline = Instant::now() + WAIT;
    loop {
        let now = subscribers(url, &channel).await;
        if now == Some(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} instances subscribe to {channel} within {WAIT:?} (now {now:?})"
        );
        sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------
// Instances
// ---------------------------------------------------------------------------

/// An in-process instance (the harness's TestServer) sharing Redis under
/// `prefix` and receipts under `uploads`, and trusting nginx's address.
async fn instance(
    redis_url: &str,
    prefix: &str,
    uploads: &Path,
    adjust: impl FnOnce(&mut Config),
) -> TestServer {
    TestServer::start_with(|c| {
        c.redis_url = Some(Secret::new(redis_url.to_string()));
        c.redis_channel_prefix = prefix.to_string();
        c.http.trusted = TrustedProxies::parse("127.0.0.1/32").unwrap();
        c.storage = StorageBackend::Local {
            dir: uploads.to_path_buf(),
        };
        adjust(c);
    })
    .await
}

/// Two in-process instances on one Redis prefix behind a fresh nginx.
struct Pair {
    servers: [TestServer; 2],
    nginx: Nginx,
}

async fn pair(dir: &TempDir, redis_url: &str, adjust: impl Fn(&mut Config) + Copy) -> Pair {
    let prefix = unique_prefix();
    let uploads = dir.0.join("uploads");
    let one = instance(redis_url, &prefix, &uploads, adjust).await;
    let two = instance(redis_url, &prefix, &uploads, adjust).await;
    wait_subscribed(redis_url, &prefix, 2).await;
    let nginx = Nginx::started(&dir.0, &[one.addr, two.addr]).await;
    Pair {
        servers: [one, two],
        nginx,
    }
}

impl Pair {
    fn doors(&self) -> [Door; 2] {
        [
            Door::direct(self.servers[0].addr),
            Door::direct(self.servers[1].addr),
        ]
    }
}

/// The real binary as a process of its own (killable with -9), logging to
/// `<dir>/<name>.log`. Killed when dropped.
struct Process {
    addr: SocketAddr,
    child: tokio::process::Child,
    log: PathBuf,
}

impl Process {
    async fn spawn(dir: &Path, name: &str, env: &[(&str, String)]) -> Process {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_restaurant-points"))
            .env_clear()
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("BIND_ADDR", addr.to_string())
            .env("UPLOAD_DIR", dir.join("uploads"))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("the server binary starts");
        let mut process = Process { addr, child, log };
        process.wait_healthy().await;
        process
    }

    async fn wait_healthy(&mut self) {
        let door = Door::direct(self.addr);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited during start-up ({status}):\n{}",
                    self.addr,
                    self.log_tail()
                );
            }
            if let Ok(res) = door.http.get(door.url("/health")).send().await
                && res.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} answers /health within 60 s:\n{}",
                self.addr,
                self.log_tail()
            );
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// kill -9: no shutdown, no close frames; its sockets just drop.
    async fn kill9(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

// ---------------------------------------------------------------------------
// REST, directly on an instance or through nginx
// ---------------------------------------------------------------------------

#[derive(Clone)]
struct Door {
    http: reqwest::Client,
    base: String,
}

impl Door {
    /// Plain HTTP to one instance.
    fn direct(addr: SocketAddr) -> Door {
        Door {
            http: reqwest::Client::new(),
            base: format!("http://{addr}"),
        }
    }

    /// HTTPS through nginx, trusting scripts/cert's certificate.
    fn edge(nginx: &Nginx) -> Door {
        Door {
            http: reqwest::Client::builder()
                .tls_backend_preconfigured(tls_config())
                .build()
                .unwrap(),
            base: nginx.https(""),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        post_json(&self.http, &self.url(path), token, body, None).await
    }

    async fn get(&self, path: &str, token: &str) -> Answer {
        answer(self.http.get(self.url(path)).bearer_auth(token)).await
    }

    /// Logs in with the development code.
    async fn login(&self, phone: &str) -> User {
        let a = answer(
            self.http
                .post(self.url("/api/auth/login"))
                .json(&json!({ "phone": phone, "code": "123456" })),
        )
        .await;
        let d = a.ok();
        User {
            phone: phone.to_string(),
            user_id: d["user_info"]["user_id"].as_u64().unwrap(),
            access_token: d["access_token"].as_str().unwrap().to_string(),
            refresh_token: d["refresh_token"].as_str().unwrap().to_string(),
        }
    }

    async fn health(&self) -> Value {
        let res = self.http.get(self.url("/health")).send().await.unwrap();
        assert_eq!(res.status(), 200, "{} /health", self.base);
        res.json().await.unwrap()
    }

    /// This instance's live sockets.
    async fn connections(&self) -> u64 {
        self.health().await["checks"]["websocket"]["connections"]
            .as_u64()
            .expect("/health counts sockets")
    }

    /// A merchant's points adjustment that must succeed.
    async fn adjust(&self, merchant: &User, user: &User, points: i64) -> Value {
        self.post(
            "/api/merchant/points/adjust",
            &merchant.access_token,
            json!({ "user_id": user.user_id, "points": points, "reason": "集群测试" }),
        )
        .await
        .ok()
        .clone()
    }
}

/// Live sockets of each instance.
async fn connections(doors: &[Door]) -> Vec<u64> {
    let mut out = Vec::new();
    for d in doors {
        out.push(d.connections().await);
    }
    out
}

/// The instance whose socket count went up by one between two readings
/// (the others unchanged): where nginx put the socket opened in between.
fn landed(before: &[u64], after: &[u64]) -> usize {
    let grew: Vec<usize> = (0..before.len())
        .filter(|&i| after[i] != before[i])
        .collect();
    assert_eq!(
        grew.len(),
        1,
        "exactly one instance took the socket: {before:?} -> {after:?}"
    );
    assert_eq!(
        after[grew[0]],
        before[grew[0]] + 1,
        "{before:?} -> {after:?}"
    );
    grew[0]
}

/// Polls an instance's `/health` until `ok` holds (bounded).
async fn wait_health(door: &Door, what: &str, bound: Duration, ok: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + bound;
    loop {
        let h = door.health().await;
        if ok(&h) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} /health: {what} within {bound:?}; last: {h}",
            door.base
        );
        sleep(Duration::from_millis(50)).await;
    }
}

fn redis_is(status: &'static str, overall: &'static str) -> impl Fn(&Value) -> bool {
    move |h| h["checks"]["redis"]["status"] == status && h["status"] == overall
}

/// Balance, ledger and seqs of a user, from the database (as
/// `TestServer::audit`, for tests whose instances are processes).
async fn audit(db: &MySqlPool, user_id: u64) -> Audit {
    let (total_points, last_seq): (i64, u64) =
        sqlx::query_as("SELECT total_points, last_seq FROM users WHERE user_id = ?")
            .bind(user_id)
            .fetch_one(db)
            .await
            .unwrap();
    let (ledger_sum,): (i64,) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(CASE type WHEN 'earn' THEN points ELSE -points END), 0) AS SIGNED) FROM points_records WHERE user_id = ?",
    )
    .bind(user_id)
    .fetch_one(db)
    .await
    .unwrap();
    let seqs: Vec<(u64,)> =
        sqlx::query_as("SELECT seq FROM user_events WHERE user_id = ? ORDER BY seq")
            .bind(user_id)
            .fetch_all(db)
            .await
            .unwrap();
    Audit {
        total_points,
        ledger_sum,
        last_seq,
        seqs: seqs.into_iter().map(|s| s.0).collect(),
    }
}

// ---------------------------------------------------------------------------
// Sockets through nginx
// ---------------------------------------------------------------------------

/// A socket through nginx, after its `welcome`.
async fn socket_through(nginx: &Nginx, user: &User) -> WsClient {
    let ws = wss_connect(&nginx.socket_url(&user.access_token, None))
        .await
        .expect("the socket opens through nginx");
    let mut c = WsClient {
        ws,
        pending: Vec::new(),
        welcome: None,
    };
    let welcome = c.next().await;
    assert_eq!(welcome.kind, "welcome", "{welcome:?}");
    c.welcome = Some(welcome);
    c
}

/// Reads frames into `frames` until `done` holds for them, within `bound`.
async fn read_until(
    ws: &mut WsClient,
    frames: &mut Vec<ServerFrame>,
    what: &str,
    bound: Duration,
    done: impl Fn(&[ServerFrame]) -> bool,
) {
    let deadline = Instant::now() + bound;
    while !done(frames) {
        match timeout_at(deadline, ws.next()).await {
            Ok(f) => frames.push(f),
            Err(_) => panic!("{what} within {bound:?}; the socket got {frames:#?}"),
        }
    }
}

fn has_seq(seq: u64) -> impl Fn(&[ServerFrame]) -> bool {
    move |frames| frames.iter().any(|f| f.seq == Some(seq))
}

/// The user's events among `frames`, in arrival order: `(seq, type)`.
fn user_events(frames: &[ServerFrame]) -> Vec<(u64, String)> {
    frames
        .iter()
        .filter_map(|f| f.seq.map(|s| (s, f.kind.clone())))
        .collect()
}

fn event(frames: &[ServerFrame], seq: u64) -> &ServerFrame {
    frames.iter().find(|f| f.seq == Some(seq)).unwrap()
}

/// What one client saw over its life, socket after socket.
#[derive(Debug, Clone, Default)]
struct Seen {
    /// The user's events in arrival order, over every socket: `(seq, type)`.
    events: Vec<(u64, String)>,
    /// The newest seq received.
    last: u64,
    /// `total_points` of the newest `points_update`.
    total_points: Option<i64>,
    /// When each socket's `welcome` arrived.
    welcomes: Vec<Instant>,
    /// `heartbeat_interval_ms` of the first welcome.
    heartbeat: Option<Duration>,
    /// When each socket ended, and its close code (None: no close frame).
    ends: Vec<(Instant, Option<u16>)>,
    /// Codes of the `sync_result`s of `?since=`.
    syncs: Vec<Option<i32>>,
    /// Every event up to the target arrived, and a `ping` sent after it
    /// was answered (so repeats already on their way were seen too).
    done: bool,
}

impl Seen {
    fn seqs(&self) -> Vec<u64> {
        self.events.iter().map(|e| e.0).collect()
    }
}

/// A client that holds its user's socket through nginx the way the
/// mini-program does: when the socket ends it reconnects with backoff and
/// `?since=<last seq>`, and it records everything.
struct Follower {
    seen: watch::Receiver<Seen>,
    /// The seq to stop at (0: not known yet).
    target: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Follower {
    /// Connects with `?since=0` (so seqs start at 1) and returns once the
    /// first `welcome` arrived.
    async fn start(nginx: &Nginx, user: &User) -> Follower {
        let (seen_tx, seen) = watch::channel(Seen::default());
        let (target, target_rx) = watch::channel(0);
        let url = nginx.socket_url(&user.access_token, None);
        let task = tokio::spawn(follow(url, seen_tx, target_rx));
        let mut f = Follower { seen, target, task };
        f.wait("the first welcome", WAIT, |s| !s.welcomes.is_empty())
            .await;
        f
    }

    async fn wait(&mut self, what: &str, bound: Duration, ok: impl FnMut(&Seen) -> bool) {
        let outcome = timeout(bound, self.seen.wait_for(ok))
            .await
            .map(|r| r.map(|_| ()));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                // The task ended: show why.
                let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
                if let Err(e) = task.await
                    && e.is_panic()
                {
                    std::panic::resume_unwind(e.into_panic());
                }
                panic!("the client stopped before {what}");
            }
            Err(_) => panic!(
                "{what} within {bound:?}; the client saw {:#?}",
                *self.seen.borrow()
            ),
        }
    }

    fn seen(&self) -> Seen {
        self.seen.borrow().clone()
    }

    /// Lets the client stop once it holds `last_seq`; what it saw.
    async fn finish(mut self, last_seq: u64, bound: Duration) -> Seen {
        self.target.send_replace(last_seq);
        self.wait(&format!("every event up to seq {last_seq}"), bound, |s| {
            s.done
        })
        .await;
        self.seen()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn follow(url: String, seen: watch::Sender<Seen>, mut target: watch::Receiver<u64>) {
    let mut last: u64 = 0;
    loop {
        let mut ws = reconnect(&url, last).await;
        let welcome = next_text(&mut ws).await;
        assert_eq!(welcome.kind, "welcome", "first frame: {welcome:?}");
        seen.send_modify(|s| {
            s.welcomes.push(Instant::now());
            s.heartbeat.get_or_insert(Duration::from_millis(
                welcome.data["heartbeat_interval_ms"].as_u64().unwrap(),
            ));
        });
        let end = loop {
            let stop_at = *target.borrow_and_update();
            if stop_at > 0 && last >= stop_at {
                flush(&mut ws, &seen).await;
                seen.send_modify(|s| s.done = true);
                return;
            }
            let msg = tokio::select! {
                m = ws.next() => m,
                Ok(()) = target.changed() => continue,
            };
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let f: ServerFrame = serde_json::from_str(&t).expect("frames are JSON");
                    record(&seen, &f);
                    if let Some(seq) = f.seq {
                        last = last.max(seq);
                    }
                }
                Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break None,
            }
        };
        seen.send_modify(|s| s.ends.push((Instant::now(), end)));
    }
}

fn record(seen: &watch::Sender<Seen>, f: &ServerFrame) {
    if let Some(seq) = f.seq {
        seen.send_modify(|s| {
            s.events.push((seq, f.kind.clone()));
            s.last = s.last.max(seq);
            if f.kind == "points_update" {
                s.total_points = f.data["total_points"].as_i64();
            }
        });
    } else if f.kind == "sync_result" {
        seen.send_modify(|s| s.syncs.push(f.code));
    }
}

/// Opens the socket again (`?since=`), with doubling, jittered backoff.
async fn reconnect(url: &str, since: u64) -> Wss {
    let url = format!("{url}&since={since}");
    let deadline = Instant::now() + WAIT;
    let mut backoff = Duration::from_millis(25);
    loop {
        match wss_connect(&url).await {
            Ok(ws) => return ws,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the client reconnects within {WAIT:?}: {e}"
                );
                let jitter = rand::random_range(0..=backoff.as_millis() as u64);
                sleep(backoff / 2 + Duration::from_millis(jitter / 2)).await;
                backoff = (backoff * 2).min(Duration::from_millis(400));
            }
        }
    }
}

async fn next_text(ws: &mut Wss) -> ServerFrame {
    loop {
        match timeout(WAIT, ws.next()).await.expect("a frame in time") {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("a text frame, not {other:?}"),
        }
    }
}

/// Sends a `ping` command and reads until its reply, recording events on
/// the way: whatever was queued for the socket before the reply is seen.
async fn flush(ws: &mut Wss, seen: &watch::Sender<Seen>) {
    let ping = json!({ "id": "flush", "type": "ping", "data": {} });
    ws.send(Message::Text(ping.to_string().into()))
        .await
        .unwrap();
    loop {
        let f = next_text(ws).await;
        if f.is_reply() && f.id.as_deref() == Some("flush") {
            return;
        }
        record(seen, &f);
    }
}

/// The seqs a client that started from 0 must end with.
fn from_one(last_seq: u64) -> Vec<u64> {
    (1..=last_seq).collect()
}

// ---------------------------------------------------------------------------
// Receipts
// ---------------------------------------------------------------------------

const BOUNDARY: &str = "rpt-cluster-boundary-3b9d27e1c4";

/// A receipt upload's multipart body: a real JPEG and an amount.
fn receipt_form(amount: &str) -> Vec<u8> {
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"receipt.jpg\"\r\n\
         Content-Type: image/jpeg\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(common::images::JPEG_16X8);
    body.extend_from_slice(
        format!(
            "\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"amount\"\r\n\r\n{amount}\r\n--{BOUNDARY}--\r\n"
        )
        .as_bytes(),
    );
    body
}

// ---------------------------------------------------------------------------
// 1. Fan-out across instances
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_socket_on_one_instance_gets_in_order_what_commands_on_the_other_committed() {
    let dir = TempDir::new("fanout");
    let cluster = pair(&dir, &tools().redis_url, |_| {}).await;
    let edge = Door::edge(&cluster.nginx);
    let doors = cluster.doors();

    let user = edge.login(&unique_phone()).await;
    let before = connections(&doors).await;
    let mut ws = socket_through(&cluster.nginx, &user).await;
    let on = landed(&before, &connections(&doors).await);
    let (a, b) = (&cluster.servers[on], &cluster.servers[1 - on]);
    assert_eq!(ws.welcome.as_ref().unwrap().data["last_seq"], 1);

    // Everything below is committed on B; the socket is on A.
    let merchant = b.new_merchant().await;
    let on_b = Door::direct(b.addr);
    let product = on_b
        .post(
            "/api/merchant/products",
            &merchant.access_token,
            json!({ "name": "集群奶茶", "category": "集群", "exchange_points": 100, "stock": 5 }),
        )
        .await
        .ok()["product_id"]
        .as_u64()
        .unwrap();
    let mut frames = Vec::new();

    let exchange = on_b
        .post(
            "/api/exchange/submit",
            &user.access_token,
            json!({ "product_id": product, "quantity": 1 }),
        )
        .await;
    assert_eq!(exchange.ok()["remaining_stock"], 4);
    // The stock_update is a broadcast: no catch-up replays it, only the
    // fan-out carries it to A.
    read_until(
        &mut ws,
        &mut frames,
        "the exchange's events on A",
        FAN_OUT,
        |fs| {
            has_seq(2)(fs)
                && fs.iter().any(|f| {
                    f.kind == "stock_update"
                        && f.data["product_id"] == product
                        && f.data["stock"] == 4
                })
        },
    )
    .await;
    let stock = frames.iter().find(|f| f.kind == "stock_update").unwrap();
    assert_eq!(stock.data["operation"], "purchase", "{stock:?}");
    assert_eq!(stock.seq, None, "a broadcast is not a user event");

    on_b.adjust(&merchant, &user, 7).await;
    read_until(
        &mut ws,
        &mut frames,
        "the adjustment's points_update on A",
        FAN_OUT,
        has_seq(3),
    )
    .await;

    let upload = answer(
        edge.http
            .post(edge.url("/api/photo/upload"))
            .bearer_auth(&user.access_token)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(receipt_form("12.50")),
    )
    .await;
    let upload_id = upload.ok()["upload_id"].as_str().unwrap().to_string();
    let review = on_b
        .post(
            "/api/merchant/review",
            &merchant.access_token,
            json!({ "upload_id": upload_id, "action": "approve" }),
        )
        .await;
    assert_eq!(review.ok()["points_awarded"], 125);
    read_until(
        &mut ws,
        &mut frames,
        "the approval's two events on A",
        FAN_OUT,
        has_seq(5),
    )
    .await;

    assert_eq!(
        user_events(&frames),
        [
            (2, "points_update".to_string()),
            (3, "points_update".to_string()),
            (4, "review_result".to_string()),
            (5, "points_update".to_string()),
        ],
        "every event once, in seq order, without a gap"
    );
    let exchanged = &event(&frames, 2).data;
    assert_eq!(
        (&exchanged["change_points"], &exchanged["total_points"]),
        (&json!(-100), &json!(START_POINTS - 100))
    );
    let adjusted = &event(&frames, 3).data;
    assert_eq!(
        (&adjusted["change_points"], &adjusted["total_points"]),
        (&json!(7), &json!(START_POINTS - 100 + 7))
    );
    let reviewed = &event(&frames, 4).data;
    assert_eq!(
        (
            &reviewed["upload_id"],
            &reviewed["status"],
            &reviewed["points_awarded"]
        ),
        (&json!(upload_id), &json!("approved"), &json!(125))
    );
    let awarded = &event(&frames, 5).data;
    assert_eq!(
        (&awarded["change_points"], &awarded["total_points"]),
        (&json!(125), &json!(START_POINTS - 100 + 7 + 125))
    );

    // The socket stayed where it was: A got all this from B.
    assert_eq!(connections(&doors).await[on], 1);
    assert_eq!(connections(&doors).await[1 - on], 0);
    let audit = a.audit(user.user_id).await;
    audit.assert_consistent();
    assert_eq!((audit.last_seq, audit.total_points), (5, START_POINTS + 32));
}

// ---------------------------------------------------------------------------
// 2. Sign-out everywhere across instances
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signing_out_everywhere_on_one_instance_closes_the_socket_on_the_other_within_a_second() {
    let dir = TempDir::new("logout");
    let cluster = pair(&dir, &tools().redis_url, |_| {}).await;
    let edge = Door::edge(&cluster.nginx);
    let doors = cluster.doors();

    // The phone's socket (session 1) through nginx, on A.
    let phone = edge.login(&unique_phone()).await;
    let before = connections(&doors).await;
    let mut ws = socket_through(&cluster.nginx, &phone).await;
    let on = landed(&before, &connections(&doors).await);
    let (a, b) = (&cluster.servers[on], &cluster.servers[1 - on]);

    // A second device (session 2) signs out everywhere, on B.
    let tablet = b.login(&phone.phone).await;
    let logout = Door::direct(b.addr)
        .post(
            "/api/auth/logout",
            &tablet.access_token,
            json!({ "all": true }),
        )
        .await;
    assert_eq!(
        (&logout.ok()["logged_out"], &logout.ok()["sessions"]),
        (&json!(true), &json!(2)),
        "both sessions end"
    );
    let code = timeout(Duration::from_secs(1), ws.closed())
        .await
        .expect("the socket on A closes within 1 s of the sign-out on B");
    assert_eq!(code, Some(4001), "closed as revoked");

    // The revoked session's token is refused on A, at the socket's door…
    let url = format!("ws://{}/ws?token={}", a.addr, phone.access_token);
    match tokio_tungstenite::connect_async(url).await {
        Err(tungstenite::Error::Http(res)) => {
            assert_eq!(res.status(), 401);
            let body: Value = serde_json::from_slice(res.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["code"], 4002, "{body}");
        }
        Err(e) => panic!("refused with 401, not {e}"),
        Ok(_) => panic!("a revoked session's token opened a socket on A"),
    }
    // …and at REST's.
    Door::direct(a.addr)
        .get("/api/user/info", &phone.access_token)
        .await
        .refused(401, 4002);
}

// ---------------------------------------------------------------------------
// 3. kill -9 of an instance mid-traffic
// ---------------------------------------------------------------------------

/// `n` draws through nginx, each retried with its own Idempotency-Key until
/// it succeeds (a draw on an instance that died answers 503 2006: it either
/// committed, and the retry replays it, or it did not, and the retry runs
/// it). Counts each success in `done`.
async fn draw_through(edge: Door, user: User, n: usize, done: watch::Sender<usize>) {
    for i in 0..n {
        let key = format!("kill9-{}-{i}", user.user_id);
        let deadline = Instant::now() + WAIT;
        loop {
            let sent = edge
                .http
                .post(edge.url("/api/lottery/draw"))
                .bearer_auth(&user.access_token)
                .header("Idempotency-Key", &key)
                .json(&json!({ "draw_count": 1 }))
                .send()
                .await;
            match sent {
                Ok(res) if res.status() == 200 => {
                    let a = Answer::read(res).await;
                    a.ok();
                    break;
                }
                Ok(res) if res.status() == 503 => {
                    let a = Answer::read(res).await;
                    assert_eq!(a.code(), 2006, "{}", a.text);
                }
                Ok(res) => panic!("draw {key}: {:?}", Answer::read(res).await),
                // The connection to nginx broke: the outcome is unknown, the key settles it.
                Err(_) => {}
            }
            assert!(
                Instant::now() < deadline,
                "draw {key} succeeds within {WAIT:?}"
            );
            sleep(Duration::from_millis(50)).await;
        }
        done.send_modify(|d| *d += 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_of_an_instance_killed_mid_traffic_resume_on_the_survivor_with_every_event_once() {
    const CLIENTS: usize = 6;
    const DRAWS: usize = 6;
    let dir = TempDir::new("kill9");
    let database = common::database_url().await;
    let db = MySqlPool::connect(&database).await.unwrap();
    let prefix = unique_prefix();
    let env = [
        ("APP_ENV", "development".to_string()),
        ("DATABASE_URL", database.clone()),
        ("REDIS_URL", tools().redis_url.clone()),
        ("REDIS_CHANNEL_PREFIX", prefix.clone()),
        ("TRUSTED_PROXIES", "127.0.0.1/32".to_string()),
        (
            "JWT_SECRET",
            format!("{}{}", ulid::Ulid::new(), ulid::Ulid::new()),
        ),
        ("HEARTBEAT_INTERVAL_MS", "1000".to_string()),
        ("DB_MAX_CONNECTIONS", "8".to_string()),
        ("LOG_LEVEL", "warn".to_string()),
    ];
    // One at a time: the first migrates (and seeds a fresh database).
    let mut instances = [
        Process::spawn(&dir.0, "one", &env).await,
        Process::spawn(&dir.0, "two", &env).await,
    ];
    wait_subscribed(&tools().redis_url, &prefix, 2).await;
    let nginx = Nginx::started(&dir.0, &[instances[0].addr, instances[1].addr]).await;
    let edge = Door::edge(&nginx);
    let doors = [
        Door::direct(instances[0].addr),
        Door::direct(instances[1].addr),
    ];

    let mut users = Vec::new();
    let mut followers = Vec::new();
    let mut on = Vec::new();
    for _ in 0..CLIENTS {
        let user = edge.login(&unique_phone()).await;
        let before = connections(&doors).await;
        followers.push(Follower::start(&nginx, &user).await);
        on.push(landed(&before, &connections(&doors).await));
        users.push(user);
    }
    let held = |i: usize| on.iter().filter(|&&o| o == i).count();
    assert!(
        held(0) > 0 && held(1) > 0,
        "least_conn spread the sockets: {on:?}"
    );
    let victim = if held(0) >= held(1) { 0 } else { 1 };

    let (done_tx, mut done) = watch::channel(0);
    let traffic: Vec<_> = users
        .iter()
        .map(|u| {
            tokio::spawn(draw_through(
                edge.clone(),
                u.clone(),
                DRAWS,
                done_tx.clone(),
            ))
        })
        .collect();
    drop(done_tx);
    timeout(WAIT, done.wait_for(|&d| d >= CLIENTS * DRAWS / 3))
        .await
        .expect("a third of the draws commit")
        .unwrap();
    let at_kill = *done.borrow();
    instances[victim].kill9().await;
    for t in traffic {
        t.await.unwrap();
    }
    assert!(
        at_kill < CLIENTS * DRAWS,
        "the kill came mid-traffic ({at_kill} draws done)"
    );

    // Every client whose socket dropped is back, on the survivor.
    for (i, f) in followers.iter_mut().enumerate() {
        if on[i] == victim {
            f.wait("a new socket after the kill", WAIT, |s| {
                s.welcomes.len() == 2
            })
            .await;
        }
    }
    assert_eq!(
        doors[1 - victim].connections().await,
        CLIENTS as u64,
        "the survivor holds every socket"
    );

    for ((user, f), on) in users.iter().zip(followers).zip(on) {
        let audit = audit(&db, user.user_id).await;
        audit.assert_consistent();
        let (draws,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM draw_records WHERE user_id = ?")
                .bind(user.user_id)
                .fetch_one(&db)
                .await
                .unwrap();
        assert_eq!(draws, DRAWS as i64, "every key ran exactly once");
        let seen = f.finish(audit.last_seq, WAIT).await;
        assert_eq!(
            seen.seqs(),
            from_one(audit.last_seq),
            "every event once, in order: {seen:#?}"
        );
        assert_eq!(
            seen.total_points,
            Some(audit.total_points),
            "the socket's balance is the ledger's"
        );
        assert!(seen.syncs.iter().all(|c| *c == Some(0)), "{seen:#?}");
        if on == victim {
            assert_eq!(seen.ends.len(), 1, "dropped once: {seen:#?}");
            assert_eq!(seen.ends[0].1, None, "a crash sends no close frame");
        } else {
            assert!(
                seen.ends.is_empty(),
                "a socket on the survivor never drops: {seen:#?}"
            );
        }
    }
    assert!(
        !std::fs::read_to_string(&instances[1 - victim].log)
            .unwrap()
            .contains("panicked"),
        "the survivor did not panic"
    );
}

// ---------------------------------------------------------------------------
// 4. Redis restarted, Redis down
// ---------------------------------------------------------------------------

/// A user with a socket through nginx on each instance (least_conn puts
/// the second where the first is not); returns (user, [on 0, on 1]).
async fn one_socket_on_each(pair: &Pair, edge: &Door) -> (User, [Follower; 2]) {
    let doors = pair.doors();
    let user = edge.login(&unique_phone()).await;
    let before = connections(&doors).await;
    let first = Follower::start(&pair.nginx, &user).await;
    let first_on = landed(&before, &connections(&doors).await);
    let before = connections(&doors).await;
    let second = Follower::start(&pair.nginx, &user).await;
    let second_on = landed(&before, &connections(&doors).await);
    assert_ne!(
        first_on, second_on,
        "least_conn put the second socket on the other instance"
    );
    let sockets = if first_on == 0 {
        [first, second]
    } else {
        [second, first]
    };
    (user, sockets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_committed_while_redis_restarts_reach_the_other_instance_once_and_in_order() {
    let dir = TempDir::new("redis-restart");
    let redis = OwnRedis::start(&dir.0).await;
    let cluster = pair(&dir, &redis.url(), |_| {}).await;
    let edge = Door::edge(&cluster.nginx);
    let (user, [on_a, on_b]) = one_socket_on_each(&cluster, &edge).await;
    let merchant = cluster.servers[1].new_merchant().await;
    let doors = cluster.doors();

    // Traffic alternates between the instances, before, during and after
    // the restart; each command is counted by when it committed.
    let (phase_tx, phase) = watch::channel(0u8); // 0 before, 1 restarting, 2 back
    let traffic = {
        let (doors, merchant, user) = (doors.clone(), merchant.clone(), user.clone());
        tokio::spawn(async move {
            let mut during = 0;
            let mut after = 0;
            for i in 0.. {
                doors[i % 2].adjust(&merchant, &user, 1).await;
                match *phase.borrow() {
                    1 => during += 1,
                    2 => after += 1,
                    _ => {}
                }
                if after >= 6 {
                    break;
                }
                sleep(Duration::from_millis(20)).await;
            }
            during
        })
    };
    phase_tx.send_replace(1);
    redis.run("restart").await;
    phase_tx.send_replace(2);
    let during = traffic.await.unwrap();
    assert!(during > 0, "commands committed while Redis restarted");

    let last_seq = cluster.servers[0].audit(user.user_id).await.last_seq;
    for (name, f) in [("A", on_a), ("B", on_b)] {
        let seen = f.finish(last_seq, FAN_OUT).await;
        assert_eq!(
            seen.seqs(),
            from_one(last_seq),
            "the socket on {name}: every event once, in order"
        );
        assert!(
            seen.ends.is_empty(),
            "a Redis restart closes no socket: {seen:#?}"
        );
    }
    for door in &doors {
        wait_health(door, "healthy again", WAIT, redis_is("up", "healthy")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_redis_is_down_commands_succeed_and_health_is_degraded_and_sockets_catch_up_when_it_returns()
 {
    let dir = TempDir::new("redis-down");
    let redis = OwnRedis::start(&dir.0).await;
    let cluster = pair(&dir, &redis.url(), |_| {}).await;
    let edge = Door::edge(&cluster.nginx);
    let (user, [mut on_a, mut on_b]) = one_socket_on_each(&cluster, &edge).await;
    let merchant = cluster.servers[1].new_merchant().await;
    let [a, b] = cluster.doors();

    b.adjust(&merchant, &user, 1).await;
    on_a.wait("seq 2 from B, through Redis", FAN_OUT, |s| s.last >= 2)
        .await;

    redis.run("stop").await;
    for door in [&a, &b] {
        wait_health(
            door,
            "degraded, Redis down",
            WAIT,
            redis_is("down", "degraded"),
        )
        .await;
    }
    for points in [2, 3, 4] {
        let d = b.adjust(&merchant, &user, points).await;
        assert_eq!(d["points"], points, "{d}");
    }
    on_b.wait(
        "seqs 3–5 on B's own socket, without Redis",
        FAN_OUT,
        |s| s.last >= 5,
    )
    .await;

    redis.run("start").await;
    on_a.wait("seqs 3–5 on A once Redis is back", FAN_OUT, |s| {
        s.last >= 5
    })
    .await;
    for door in [&a, &b] {
        wait_health(door, "healthy again", WAIT, redis_is("up", "healthy")).await;
    }
    wait_subscribed(
        &redis.url(),
        &cluster.servers[0].state.config.redis_channel_prefix,
        2,
    )
    .await;

    // And the fan-out works again, the other way round too.
    a.adjust(&merchant, &user, 5).await;
    let audit = cluster.servers[0].audit(user.user_id).await;
    audit.assert_consistent();
    assert_eq!((audit.last_seq, audit.total_points), (6, START_POINTS + 15));
    for (name, f) in [("A", on_a), ("B", on_b)] {
        let seen = f.finish(6, FAN_OUT).await;
        assert_eq!(
            seen.seqs(),
            from_one(6),
            "the socket on {name}: every event once, in order"
        );
        assert_eq!(seen.total_points, Some(START_POINTS + 15));
        assert!(
            seen.ends.is_empty(),
            "Redis down closes no socket: {seen:#?}"
        );
    }
}

// ---------------------------------------------------------------------------
// 5. nginx reload with live sockets
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_nginx_reload_moves_every_socket_within_a_heartbeat_losing_no_event_and_logging_no_token()
 {
    const CLIENTS: usize = 3;
    let shutdown_timeout = Duration::from_secs(1);
    let dir = TempDir::new("reload");
    let prefix = unique_prefix();
    let uploads = dir.0.join("uploads");
    let redis_url = &tools().redis_url;
    let short_heartbeat = |c: &mut Config| c.heartbeat_interval = Duration::from_millis(1000);
    let one = instance(redis_url, &prefix, &uploads, short_heartbeat).await;
    let two = instance(redis_url, &prefix, &uploads, short_heartbeat).await;
    wait_subscribed(redis_url, &prefix, 2).await;
    let nginx = Nginx::render(&dir.0, &[one.addr, two.addr]).await;
    nginx.set("worker_shutdown_timeout", "1s");
    let nginx = nginx.start().await;
    let edge = Door::edge(&nginx);
    let doors = [Door::direct(one.addr), Door::direct(two.addr)];

    let mut users = Vec::new();
    let mut followers = Vec::new();
    for _ in 0..CLIENTS {
        let user = edge.login(&unique_phone()).await;
        followers.push(Follower::start(&nginx, &user).await);
        users.push(user);
    }
    let merchant = one.new_merchant().await;
    let (stop_tx, stop) = watch::channel(false);
    let traffic = {
        let (doors, merchant, users) = (doors.clone(), merchant.clone(), users.clone());
        tokio::spawn(async move {
            for i in 0.. {
                for u in &users {
                    doors[i % 2].adjust(&merchant, u, 1).await;
                }
                if *stop.borrow() {
                    break;
                }
                sleep(Duration::from_millis(30)).await;
            }
        })
    };
    for f in &mut followers {
        f.wait("events before the reload", WAIT, |s| s.last >= 3)
            .await;
    }

    let old_workers = nginx.worker_pids();
    assert!(!old_workers.is_empty());
    let reloaded = Instant::now();
    nginx.reload();
    let bound = shutdown_timeout + Duration::from_secs(4);
    for f in &mut followers {
        f.wait(
            "the old worker's socket closed and a new one open",
            bound,
            |s| !s.ends.is_empty() && s.welcomes.len() == 2,
        )
        .await;
    }
    let deadline = Instant::now() + WAIT;
    while old_workers.iter().any(|&w| alive(w)) {
        assert!(
            Instant::now() < deadline,
            "the old workers exit after worker_shutdown_timeout"
        );
        sleep(Duration::from_millis(25)).await;
    }
    stop_tx.send_replace(true);
    traffic.await.unwrap();

    for (user, f) in users.iter().zip(followers) {
        let audit = one.audit(user.user_id).await;
        audit.assert_consistent();
        let seen = f.finish(audit.last_seq, FAN_OUT).await;
        let heartbeat = seen.heartbeat.unwrap();
        assert_eq!(heartbeat, Duration::from_millis(1000));
        assert_eq!(seen.ends.len(), 1, "one close, at the reload: {seen:#?}");
        let (closed, code) = seen.ends[0];
        assert!(closed > reloaded, "closed after the reload");
        assert_eq!(code, None, "nginx closes without a close frame (1006)");
        let back = seen.welcomes[1] - closed;
        assert!(
            back <= heartbeat,
            "back within one heartbeat of the close: {back:?}"
        );
        assert_eq!(
            seen.seqs(),
            from_one(audit.last_seq),
            "no event lost or repeated: {seen:#?}"
        );
        assert_eq!(
            seen.syncs,
            [Some(0), Some(0)],
            "both sockets resumed with sync"
        );
    }

    // The old workers wrote their sockets' lines when they exited: the
    // upgrades are there, their tokens are not.
    let log = std::fs::read_to_string(nginx.access_log()).unwrap();
    let sockets: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"GET /ws") && l.contains("\" 101 "))
        .collect();
    assert!(
        sockets.len() >= CLIENTS,
        "the closed sockets are logged:\n{log}"
    );
    for line in &sockets {
        assert!(
            line.contains("\"GET /ws HTTP/1.1\" 101 "),
            "a socket is logged by its path alone: {line}"
        );
    }
    assert!(
        !log.contains("token"),
        "no ?token= in the access log:\n{log}"
    );
    let errors = std::fs::read_to_string(nginx.error_log()).unwrap_or_default();
    for user in &users {
        assert!(
            !log.contains(&user.access_token) && !errors.contains(&user.access_token),
            "no token in nginx's logs"
        );
    }
}
