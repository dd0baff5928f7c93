//! The harness every integration test uses: a real server on `127.0.0.1:0`
//! against a real MariaDB, and real HTTP and WebSocket clients.
//!
//! Each test binary gets its own database (`rpt_<binary>`), recreated once
//! per run; tests in a binary run in parallel against it, so every test
//! makes its own users (random phone numbers) and asserts only on them.
#![allow(dead_code)]

pub mod images;

use futures::{SinkExt, StreamExt};
use protocol::ServerFrame;
use rand::Rng;
use restaurant_points::{AppState, Config};
use serde_json::{Value, json};
use sqlx::MySqlPool;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{OnceCell, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(15);

static DATABASE: OnceCell<String> = OnceCell::const_new();

/// The server root URL: `TEST_DATABASE_URL` (set by `scripts/test`), else
/// the private instance's default.
fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3307".to_string())
        .trim_end_matches('/')
        .to_string()
}

/// This test binary's database, dropped and created fresh once per run.
pub async fn database_url() -> String {
    DATABASE
        .get_or_init(|| async {
            let exe = std::env::current_exe().unwrap();
            let stem = exe.file_stem().unwrap().to_string_lossy().to_string();
            // Test binaries are named `<name>-<hash>`.
            let name = stem.split('-').next().unwrap_or("tests").replace(|c: char| !c.is_ascii_alphanumeric(), "_");
            let db = format!("rpt_{name}");
            let root = server_url();
            let admin = MySqlPool::connect(&root)
                .await
                .unwrap_or_else(|e| panic!("cannot reach the test database at {root}: {e}. Run the tests with scripts/test."));
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{db}`")))
                .execute(&admin)
                .await
                .unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE `{db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )))
            .execute(&admin)
            .await
            .unwrap();
            admin.close().await;
            format!("{root}/{db}")
        })
        .await
        .clone()
}

/// The configuration tests start from: development defaults with a short
/// heartbeat, and a pool small enough for many servers side by side.
pub async fn test_config() -> Config {
    let url = database_url().await;
    let mut c = Config::from_lookup(|k| match k {
        "DATABASE_URL" => Some(url.clone()),
        "APP_ENV" => Some("development".into()),
        _ => None,
    })
    .expect("test config");
    c.db_max_connections = 16;
    // Every test client comes from 127.0.0.1: per-address limits are for
    // the tests that test them.
    let off = restaurant_points::net::RateSpec::Off;
    c.ip_limits = restaurant_points::config::IpLimits {
        send_code: off,
        login: off,
        refresh: off,
        upload: off,
    };
    c.http.max_per_ip = 100_000;
    c.http.max_connections = 100_000;
    c.shutdown_grace = Duration::from_secs(5);
    c
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub state: AppState,
    /// A separate pool for assertions, outside the server's.
    pub db: MySqlPool,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<std::io::Result<()>>>,
    pub http: reqwest::Client,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = test_config().await;
        adjust(&mut config);
        let url = config.database_url.expose().to_string();
        let state = restaurant_points::prepare(config)
            .await
            .expect("server prepares");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(restaurant_points::serve(listener, state.clone(), async {
            let _ = rx.await;
        }));
        let db = MySqlPool::connect(&url).await.unwrap();
        TestServer {
            addr,
            state,
            db,
            shutdown: Some(tx),
            handle: Some(handle),
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Signals shutdown and waits for `serve` to return.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(WAIT, h)
                .await
                .expect("server stops in time")
                .unwrap()
                .unwrap();
        }
    }

    /// `(status, body)` of a GET.
    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// `(status, body)` of a JSON POST, with optional extra headers.
    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: Value,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = self.http.post(self.url(path)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// One draw over REST that must succeed; returns its `data`.
    pub async fn draw_once(&self, user: &User) -> Value {
        let (status, body) = self
            .post(
                "/api/lottery/draw",
                Some(&user.access_token),
                json!({ "draw_count": 1 }),
                &[],
            )
            .await;
        assert_eq!(
            (status, body["code"].as_i64()),
            (200, Some(0)),
            "REST draw: {body}"
        );
        body["data"].clone()
    }

    /// Logs a new user in with the development code.
    pub async fn login_new(&self) -> User {
        self.login(&unique_phone()).await
    }

    /// A new user made a merchant the way an operator would, in the
    /// database (the `make-merchant` subcommand does the same).
    pub async fn new_merchant(&self) -> User {
        let user = self.login_new().await;
        sqlx::query("UPDATE users SET is_merchant = 1 WHERE user_id = ?")
            .bind(user.user_id)
            .execute(&self.db)
            .await
            .unwrap();
        user
    }

    pub async fn login(&self, phone: &str) -> User {
        let (status, body) = self
            .post(
                "/api/auth/login",
                None,
                json!({ "phone": phone, "code": "123456" }),
                &[],
            )
            .await;
        assert_eq!(status, 200, "login failed: {body}");
        let d = &body["data"];
        User {
            phone: phone.to_string(),
            user_id: d["user_info"]["user_id"].as_u64().unwrap(),
            access_token: d["access_token"].as_str().unwrap().to_string(),
            refresh_token: d["refresh_token"].as_str().unwrap().to_string(),
        }
    }

    /// Opens an authenticated socket and reads its `welcome`.
    pub async fn connect(&self, user: &User) -> WsClient {
        self.connect_with(&format!("/ws?token={}", user.access_token))
            .await
    }

    pub async fn connect_with(&self, path_and_query: &str) -> WsClient {
        let url = format!("ws://{}{}", self.addr, path_and_query);
        let (ws, _) = tokio_tungstenite::connect_async(url.into_client_request().unwrap())
            .await
            .expect("websocket connects");
        let mut c = WsClient {
            ws,
            pending: Vec::new(),
            welcome: None,
        };
        let welcome = c.next().await;
        assert_eq!(
            welcome.kind, "welcome",
            "first frame is welcome: {welcome:?}"
        );
        c.pending.clear();
        c.welcome = Some(welcome);
        c
    }

    /// Points balance, ledger sum and event seqs of a user, straight from
    /// the database: the invariants every test can check.
    pub async fn audit(&self, user_id: u64) -> Audit {
        let (total_points, last_seq): (i64, u64) =
            sqlx::query_as("SELECT total_points, last_seq FROM users WHERE user_id = ?")
                .bind(user_id)
                .fetch_one(&self.db)
                .await
                .unwrap();
        let (ledger_sum,): (i64,) = sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(CASE type WHEN 'earn' THEN points ELSE -points END), 0) AS SIGNED) FROM points_records WHERE user_id = ?",
        )
        .bind(user_id)
        .fetch_one(&self.db)
        .await
        .unwrap();
        let seqs: Vec<(u64,)> =
            sqlx::query_as("SELECT seq FROM user_events WHERE user_id = ? ORDER BY seq")
                .bind(user_id)
                .fetch_all(&self.db)
                .await
                .unwrap();
        Audit {
            total_points,
            ledger_sum,
            last_seq,
            seqs: seqs.into_iter().map(|s| s.0).collect(),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

#[derive(Debug, Clone)]
pub struct User {
    pub phone: String,
    pub user_id: u64,
    pub access_token: String,
    pub refresh_token: String,
}

#[derive(Debug)]
pub struct Audit {
    pub total_points: i64,
    pub ledger_sum: i64,
    pub last_seq: u64,
    pub seqs: Vec<u64>,
}

impl Audit {
    /// Balance equals the ledger, and seqs run 1..=last_seq with no gap.
    pub fn assert_consistent(&self) {
        assert_eq!(
            self.total_points, self.ledger_sum,
            "balance equals the ledger sum"
        );
        assert!(self.total_points >= 0, "balance never negative");
        let expected: Vec<u64> = (1..=self.last_seq).collect();
        assert_eq!(
            self.seqs, expected,
            "event seqs are gap-free and end at last_seq"
        );
    }
}

/// A random valid mainland mobile number (`1[3-9]` + 9 digits).
pub fn unique_phone() -> String {
    let mut r = rand::rng();
    format!(
        "1{}{:09}",
        r.random_range(3..=9),
        r.random_range(0..1_000_000_000u64)
    )
}

pub struct WsClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames read while waiting for something else, oldest first.
    pub pending: Vec<ServerFrame>,
    pub welcome: Option<ServerFrame>,
}

impl WsClient {
    /// The next JSON frame (from `pending` first). Panics after `WAIT`.
    pub async fn next(&mut self) -> ServerFrame {
        if !self.pending.is_empty() {
            return self.pending.remove(0);
        }
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame arrives in time")
                .expect("socket open")
                .expect("frame reads");
            match msg {
                Message::Text(t) => {
                    return serde_json::from_str(&t).expect("server frames are JSON");
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.unwrap();
    }

    pub async fn send_command(&mut self, id: &str, kind: &str, data: Value) {
        let frame = json!({ "id": id, "type": kind, "data": data });
        self.send_text(&frame.to_string()).await;
    }

    /// Sends a command and returns its reply; events that arrive meanwhile
    /// stay in `pending`.
    pub async fn command(&mut self, id: &str, kind: &str, data: Value) -> ServerFrame {
        self.send_command(id, kind, data).await;
        self.reply_to(id).await
    }

    pub async fn reply_to(&mut self, id: &str) -> ServerFrame {
        if let Some(i) = self
            .pending
            .iter()
            .position(|f| f.is_reply() && f.id.as_deref() == Some(id))
        {
            return self.pending.remove(i);
        }
        loop {
            let f = self.next_from_socket().await;
            if f.is_reply() && f.id.as_deref() == Some(id) {
                return f;
            }
            self.pending.push(f);
        }
    }

    /// The next frame of type `kind`, keeping others in `pending`.
    pub async fn next_of(&mut self, kind: &str) -> ServerFrame {
        if let Some(i) = self.pending.iter().position(|f| f.kind == kind) {
            return self.pending.remove(i);
        }
        loop {
            let f = self.next_from_socket().await;
            if f.kind == kind {
                return f;
            }
            self.pending.push(f);
        }
    }

    async fn next_from_socket(&mut self) -> ServerFrame {
        let saved = std::mem::take(&mut self.pending);
        let f = self.next().await;
        self.pending = saved;
        f
    }

    /// Reads until the server closes; returns the close code (None when the
    /// connection ended without a close frame).
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("server closes in time")
            {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }
}

/// A REST answer: status, raw text (to check how numbers are written) and
/// the parsed envelope (`Value::Null` when the body is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub text: String,
    pub body: Value,
}

impl Answer {
    pub async fn read(res: reqwest::Response) -> Answer {
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer { status, text, body }
    }

    pub fn code(&self) -> i64 {
        self.body["code"].as_i64().unwrap_or_else(|| {
            panic!(
                "the answer is an envelope with a code: {} {}",
                self.status, self.text
            )
        })
    }

    pub fn data(&self) -> &Value {
        &self.body["data"]
    }

    /// Asserts a success and returns its `data`.
    pub fn ok(&self) -> &Value {
        assert_eq!((self.status, self.code()), (200, 0), "{}", self.text);
        assert_eq!(self.body["msg"], "success");
        self.data()
    }

    /// Asserts a refusal with this status and code.
    pub fn refused(&self, status: u16, code: i64) -> &Value {
        assert_eq!((self.status, self.code()), (status, code), "{}", self.text);
        self.data()
    }
}

/// Sends a request and reads its answer.
pub async fn answer(req: reqwest::RequestBuilder) -> Answer {
    Answer::read(req.send().await.expect("the request is answered")).await
}

/// `POST` a JSON body as `token`, with an optional `Idempotency-Key`, from
/// a plain client (usable in spawned tasks that race each other).
pub async fn post_json(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: Value,
    key: Option<&str>,
) -> Answer {
    let mut req = http.post(url).bearer_auth(token).json(&body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    answer(req).await
}

/// The raw JSON text of every value of `"field":` in `text` (to see how a
/// number was written, which parsing would hide).
pub fn raw_values<'a>(text: &'a str, field: &str) -> Vec<&'a str> {
    let needle = format!("\"{field}\":");
    text.match_indices(&needle)
        .map(|(at, _)| {
            let rest = &text[at + needle.len()..];
            let end = rest.find([',', '}', ']']).unwrap_or(rest.len());
            rest[..end].trim()
        })
        .collect()
}

/// `SELECT COUNT(*) … WHERE … = ?` on the assertion pool.
pub async fn count(server: &TestServer, sql: &'static str, id: u64) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql)
        .bind(id)
        .fetch_one(&server.db)
        .await
        .unwrap();
    n
}

impl TestServer {
    /// Like `start_with`, on a given address: a server restarted where the
    /// first one was (after `stop`), so that clients reconnecting to the old
    /// address find it again.
    pub async fn start_on(addr: SocketAddr, adjust: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = test_config().await;
        adjust(&mut config);
        let url = config.database_url.expose().to_string();
        let state = restaurant_points::prepare(config)
            .await
            .expect("server prepares");
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind {addr} again: {e}"));
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(restaurant_points::serve(listener, state.clone(), async {
            let _ = rx.await;
        }));
        let db = MySqlPool::connect(&url).await.unwrap();
        TestServer {
            addr,
            state,
            db,
            shutdown: Some(tx),
            handle: Some(handle),
            http: reqwest::Client::new(),
        }
    }
}
