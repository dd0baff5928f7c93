//! The hardened front door of login (issues 10–14): production unless told
//! otherwise, codes delivered through a real SMS provider (a stand-in
//! Dysmsapi on 127.0.0.1), per-address limits, no 5xx when guests arrive
//! together, and signing out everywhere. Real sockets, the real database,
//! the real binary where the start itself is under test; every wait is for
//! an event (an answer, a close frame, a child exiting) bounded by a
//! timeout.
//!
//! Each test names, above it, how the server before this round failed it.

mod common;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use common::{TestServer, User, WAIT, unique_phone};
use futures::future::join_all;
use futures::{FutureExt, StreamExt};
use restaurant_points::Config;
use restaurant_points::config::IpLimits;
use restaurant_points::net::{RateSpec, TrustedProxies};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::MySqlPool;
use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Barrier;

// ---------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------

/// An HTTP answer: status, `Retry-After` (whole seconds) and the envelope.
#[derive(Debug)]
struct Reply {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
}

impl Reply {
    async fn of(req: reqwest::RequestBuilder) -> Reply {
        let res = req.send().await.expect("the request is answered");
        let status = res.status().as_u16();
        let retry_after = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let text = res.text().await.expect("the body arrives");
        Reply {
            status,
            retry_after,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }

    fn code(&self) -> i64 {
        self.body["code"].as_i64().unwrap_or(-1)
    }

    fn is(&self, status: u16, code: i64) -> bool {
        self.status == status && self.code() == code
    }

    /// Asserts a success and returns its `data`.
    #[track_caller]
    fn ok(&self) -> &Value {
        assert!(self.is(200, 0), "a success: {self:?}");
        &self.body["data"]
    }

    #[track_caller]
    fn refused(&self, status: u16, code: i64) {
        assert!(
            self.is(status, code),
            "refused with {status}/{code}: {self:?}"
        );
    }

    /// Asserts the per-address refusal: 429, 2002, and when to come back.
    #[track_caller]
    fn rate_limited(&self) {
        self.refused(429, 2002);
        assert!(
            self.retry_after.is_some_and(|s| s >= 1),
            "Retry-After of at least a second: {self:?}"
        );
    }
}

/// `POST path` with a JSON body, an optional bearer token and, when given,
/// the `X-Forwarded-For` a proxy in front of the server would add.
async fn post(
    http: &reqwest::Client,
    server: &TestServer,
    path: &str,
    body: Value,
    token: Option<&str>,
    forwarded_for: Option<&str>,
) -> Reply {
    let mut req = http.post(server.url(path)).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(f) = forwarded_for {
        req = req.header("X-Forwarded-For", f);
    }
    Reply::of(req).await
}

async fn send_code(server: &TestServer, phone: &str, forwarded_for: Option<&str>) -> Reply {
    let body = json!({ "phone": phone });
    post(
        &server.http,
        server,
        "/api/auth/send-code",
        body,
        None,
        forwarded_for,
    )
    .await
}

async fn login(server: &TestServer, phone: &str, code: &str) -> Reply {
    let body = json!({ "phone": phone, "code": code });
    post(&server.http, server, "/api/auth/login", body, None, None).await
}

async fn refresh(server: &TestServer, token: &str, forwarded_for: Option<&str>) -> Reply {
    let body = json!({ "refresh_token": token });
    post(
        &server.http,
        server,
        "/api/auth/refresh",
        body,
        None,
        forwarded_for,
    )
    .await
}

async fn verify(server: &TestServer, access_token: &str) -> Reply {
    let req = server
        .http
        .get(server.url("/api/auth/verify"))
        .bearer_auth(access_token);
    Reply::of(req).await
}

fn user_of(phone: &str, data: &Value) -> User {
    User {
        phone: phone.to_string(),
        user_id: data["user_info"]["user_id"].as_u64().expect("a user id"),
        access_token: data["access_token"].as_str().unwrap().to_string(),
        refresh_token: data["refresh_token"].as_str().unwrap().to_string(),
    }
}

/// Every per-address limit off: what `test_config` sets, for tests that
/// replace the whole configuration.
fn limits_off() -> IpLimits {
    IpLimits {
        send_code: RateSpec::Off,
        login: RateSpec::Off,
        refresh: RateSpec::Off,
        upload: RateSpec::Off,
    }
}

/// The production defaults of DESIGN.md (`RATE_LIMIT_*` unset).
fn default_limits() -> IpLimits {
    IpLimits {
        send_code: spec("200/h:20"),
        login: spec("300/min:150"),
        refresh: spec("600/min:120"),
        upload: spec("60/min:20"),
    }
}

fn spec(text: &str) -> RateSpec {
    RateSpec::parse(text).expect("a valid rate spec")
}

// ---------------------------------------------------------------------------
// A stand-in Dysmsapi
// ---------------------------------------------------------------------------

const SMS_KEY_ID: &str = "LTAI5tHardeningKeyId";
const SMS_SECRET: &str = "the-account-secret-of-the-stand-in-gateway";
const SMS_SIGN_NAME: &str = "餐厅积分";
const SMS_TEMPLATE: &str = "SMS_200000001";
/// 40 characters: strong enough for production.
const JWT_SECRET: &str = "hQ4vT9zK2mW7xR5nB8cY3fL6pJ1sD0gA4eU7iO2k";

/// One SendSms as the gateway received it.
#[derive(Debug, Clone)]
struct Sms {
    phone: String,
    /// `code` of TemplateParam (`{"code":"…"}`), as sent.
    code: String,
    sign_name: String,
    template_code: String,
    action: Option<String>,
    version: Option<String>,
    authorization: Option<String>,
}

/// Records every SendSms and answers like Dysmsapi: `"Code":"OK"`, or its
/// per-phone flow control for a phone told to refuse once. The signature
/// itself is `tests/sms_aliyun.rs`'s business.
#[derive(Default)]
struct Gateway {
    received: Mutex<Vec<Sms>>,
    refuse_once: Mutex<HashSet<String>>,
}

impl Gateway {
    /// Serves on 127.0.0.1:0; returns `SMS_ENDPOINT`. Bound before the task
    /// starts, so connections queue until it accepts: no readiness wait.
    async fn start() -> (String, Arc<Gateway>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let gateway = Arc::new(Gateway::default());
        let app = Router::new()
            .route("/", any(dysmsapi))
            .with_state(gateway.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (endpoint, gateway)
    }

    fn sent_to(&self, phone: &str) -> Vec<Sms> {
        let received = self.received.lock().unwrap();
        received
            .iter()
            .filter(|s| s.phone == phone)
            .cloned()
            .collect()
    }

    /// The code in the newest message to `phone`. The server answers
    /// send-code after the provider answered, so it is already here.
    #[track_caller]
    fn last_code(&self, phone: &str) -> String {
        let sent = self.sent_to(phone);
        let sms = sent.last().expect("the gateway received a SendSms");
        sms.code.clone()
    }

    fn refuse_next(&self, phone: &str) {
        self.refuse_once.lock().unwrap().insert(phone.to_string());
    }
}

async fn dysmsapi(State(gateway): State<Arc<Gateway>>, headers: HeaderMap, uri: Uri) -> Response {
    let param = |name: &str| {
        form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let code = serde_json::from_str::<Value>(&param("TemplateParam"))
        .ok()
        .and_then(|p| p["code"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let sms = Sms {
        phone: param("PhoneNumbers"),
        code,
        sign_name: param("SignName"),
        template_code: param("TemplateCode"),
        action: header("x-acs-action"),
        version: header("x-acs-version"),
        authorization: header("authorization"),
    };
    let refuse = gateway.refuse_once.lock().unwrap().remove(&sms.phone);
    gateway.received.lock().unwrap().push(sms);
    let body = if refuse {
        json!({
            "Code": "isv.BUSINESS_LIMIT_CONTROL",
            "Message": "触发分钟级流控Permits:1",
            "RequestId": "5A1C2E3B-0000-4000-8000-000000000001",
        })
    } else {
        json!({
            "Code": "OK",
            "Message": "OK",
            "BizId": "900619746936498440^0",
            "RequestId": "5A1C2E3B-0000-4000-8000-000000000002",
        })
    };
    axum::Json(body).into_response()
}

/// A production configuration as an operator would write it, with SMS
/// pointed at the stand-in; then the adjustments `test_config` makes for
/// every test server (pool size, shutdown grace, limits, connection caps).
/// `app_env` None leaves APP_ENV unset.
fn production_config(database_url: &str, sms_endpoint: &str, app_env: Option<&str>) -> Config {
    let mut c = Config::from_lookup(|k| {
        let v = match k {
            "APP_ENV" => app_env?,
            "DATABASE_URL" => database_url,
            "JWT_SECRET" => JWT_SECRET,
            "SMS_PROVIDER" => "aliyun",
            "SMS_ACCESS_KEY_ID" => SMS_KEY_ID,
            "SMS_ACCESS_KEY_SECRET" => SMS_SECRET,
            "SMS_SIGN_NAME" => SMS_SIGN_NAME,
            "SMS_TEMPLATE_CODE" => SMS_TEMPLATE,
            "SMS_ENDPOINT" => sms_endpoint,
            _ => return None,
        };
        Some(v.to_string())
    })
    .expect("a complete production configuration is accepted");
    assert!(c.is_production(), "{app_env:?} is production");
    c.db_max_connections = 16;
    c.shutdown_grace = Duration::from_secs(5);
    c.ip_limits = limits_off();
    c.http.max_per_ip = 100_000;
    c.http.max_connections = 100_000;
    c
}

/// Asks for a code and logs in with what the gateway delivered.
async fn login_by_sms(server: &TestServer, gateway: &Gateway, phone: &str) -> User {
    send_code(server, phone, None).await.ok();
    let code = gateway.last_code(phone);
    let data = login(server, phone, &code).await.ok().clone();
    user_of(phone, &data)
}

// ---------------------------------------------------------------------------
// A fresh database, and an empty directory
// ---------------------------------------------------------------------------

/// A database of its own for a test that must see a server start on an
/// empty one; dropped after the test, whether it passed or not.
struct FreshDatabase {
    root: String,
    name: String,
}

impl FreshDatabase {
    async fn create(label: &str) -> FreshDatabase {
        // The harness's URL is `<server>/rpt_<binary>`.
        let binary_url = common::database_url().await;
        let (root, binary_db) = binary_url.rsplit_once('/').unwrap();
        let name = format!("{binary_db}_{label}_{:08x}", rand::random::<u32>());
        let admin = MySqlPool::connect(root).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        )))
        .execute(&admin)
        .await
        .unwrap();
        admin.close().await;
        FreshDatabase {
            root: root.to_string(),
            name,
        }
    }

    fn url(&self) -> String {
        format!("{}/{}", self.root, self.name)
    }

    /// Runs `test` against the database, then drops it and re-raises a
    /// failure.
    async fn with<F: std::future::Future<Output = ()>>(
        label: &str,
        test: impl FnOnce(String) -> F,
    ) {
        let db = FreshDatabase::create(label).await;
        let outcome = AssertUnwindSafe(test(db.url())).catch_unwind().await;
        let admin = MySqlPool::connect(&db.root).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS `{}`",
            db.name
        )))
        .execute(&admin)
        .await
        .unwrap();
        admin.close().await;
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }
}

/// An empty working directory, so that the binary finds no `.env`.
struct EmptyDir(PathBuf);

impl EmptyDir {
    fn new() -> EmptyDir {
        let dir = std::env::temp_dir().join(format!("rp-hardening-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        EmptyDir(dir)
    }
}

impl Drop for EmptyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// 1. Unconfigured is production
// ---------------------------------------------------------------------------

/// Runs the real binary with nothing but `vars`, and waits for it to exit.
async fn run_binary_with_only(vars: &[(&str, &str)]) -> Output {
    let dir = EmptyDir::new();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_restaurant-points"));
    cmd.env_clear()
        .envs(vars.iter().copied())
        .current_dir(&dir.0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // A server that starts would serve until killed: dropping the future at
    // the timeout kills it, and the test fails here.
    tokio::time::timeout(Duration::from_secs(10), cmd.output())
        .await
        .expect("the unconfigured server exits instead of serving")
        .expect("the binary runs")
}

// Old server: an unset APP_ENV meant development. It started, with the
// public development secret and the login code 123456 accepted for every
// phone, so the child never exited and the timeout failed the test (or,
// with its fixed port 3000 taken, it exited naming none of the variables).
#[tokio::test]
async fn an_unconfigured_server_refuses_to_start_and_names_every_missing_variable() {
    let url = common::database_url().await;
    let bind = ("BIND_ADDR", "127.0.0.1:0");
    let with_url = [("DATABASE_URL", url.as_str()), bind];
    let without_url = [bind];
    let (with_db, without_db) = tokio::join!(
        run_binary_with_only(&with_url),
        run_binary_with_only(&without_url),
    );

    for (out, must_name) in [(&with_db, &[][..]), (&without_db, &["DATABASE_URL"][..])] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code().is_some_and(|c| c != 0),
            "exits with a failure code of its own: {:?}\nstderr: {stderr}",
            out.status
        );
        for name in [
            "JWT_SECRET",
            "SMS_PROVIDER",
            "SMS_ACCESS_KEY_ID",
            "SMS_ACCESS_KEY_SECRET",
            "SMS_SIGN_NAME",
            "SMS_TEMPLATE_CODE",
        ]
        .iter()
        .chain(must_name)
        {
            assert!(stderr.contains(name), "{name} is named in: {stderr}");
        }
    }
    let stderr = String::from_utf8_lossy(&with_db.stderr);
    assert!(
        !stderr.contains("DATABASE_URL"),
        "a DATABASE_URL that is set is not reported missing: {stderr}"
    );
}

// ---------------------------------------------------------------------------
// 2. Production has no development code and no demo seed
// ---------------------------------------------------------------------------

// Old server: with APP_ENV unset it ran as development on a fully
// configured production environment — it seeded the demo wheel, products
// and the merchant 13900000000 into the empty database and accepted 123456
// for any phone; it also had no SMS provider, so the guest below could
// never have received a code.
#[tokio::test]
async fn production_on_an_empty_database_seeds_nothing_and_accepts_no_development_code() {
    // Unset APP_ENV (production by default) and APP_ENV=production must
    // behave the same; each gets an empty database of its own.
    for app_env in [None, Some("production")] {
        let label = if app_env.is_some() { "prod" } else { "unset" };
        FreshDatabase::with(label, |url| async move {
            let (endpoint, gateway) = Gateway::start().await;
            let config = production_config(&url, &endpoint, app_env);
            let mut server = TestServer::start_with(move |c| *c = config).await;

            // The development code opens nothing: not a new phone, not the
            // demo merchant's.
            for phone in [unique_phone().as_str(), "13900000000"] {
                login(&server, phone, "123456").await.refused(400, 1002);
            }

            // Nothing was seeded.
            let (merchants, prizes, products): (i64, i64, i64) = sqlx::query_as(
                "SELECT (SELECT COUNT(*) FROM users WHERE mobile = '13900000000'), \
                        (SELECT COUNT(*) FROM lottery_prizes), \
                        (SELECT COUNT(*) FROM products)",
            )
            .fetch_one(&server.db)
            .await
            .unwrap();
            assert_eq!(
                (merchants, prizes, products),
                (0, 0, 0),
                "{app_env:?}: no demo merchant, prizes or products"
            );

            // A real guest, logged in by SMS, finds the wheel closed.
            let guest = login_by_sms(&server, &gateway, &unique_phone()).await;
            let draw = post(
                &server.http,
                &server,
                "/api/lottery/draw",
                json!({ "draw_count": 1 }),
                Some(&guest.access_token),
                None,
            )
            .await;
            draw.refused(503, 3003);

            let (status, health) = server.get("/health", None).await;
            assert_eq!(status, 200, "{health}");
            assert_eq!(health["status"], "degraded", "{health}");
            assert_eq!(health["checks"]["database"]["status"], "up", "{health}");
            assert_eq!(health["checks"]["lottery"]["status"], "invalid", "{health}");

            server.stop().await;
            server.db.close().await;
            server.state.db.close().await;
        })
        .await;
    }
}

// ---------------------------------------------------------------------------
// 3. The real SMS flow in production
// ---------------------------------------------------------------------------

fn sha256(text: &str) -> Vec<u8> {
    Sha256::digest(text.as_bytes()).to_vec()
}

/// Five wrong codes for `code`, all different from it.
fn wrong_codes(code: &str) -> Vec<String> {
    let n: u32 = code.parse().unwrap();
    (1..=5)
        .map(|k| format!("{:06}", (n + k * 1111) % 1_000_000))
        .collect()
}

// Old server: codes were only written to the log; no provider was called,
// so the gateway received nothing and the first `last_code` failed.
#[tokio::test]
async fn in_production_a_code_travels_only_by_sms_is_stored_hashed_and_works_once() {
    let (endpoint, gateway) = Gateway::start().await;
    let config = production_config(&common::database_url().await, &endpoint, Some("production"));
    let server = TestServer::start_with(move |c| *c = config).await;
    let phone = unique_phone();

    let sent = send_code(&server, &phone, None).await;
    let data = sent.ok();
    assert_eq!(data["expires_in"], 300, "{data}");
    assert_eq!(data["resend_after"], 60, "{data}");

    // One SendSms, signed, carrying the phone and a 6-digit code.
    let sms = gateway.sent_to(&phone);
    assert_eq!(sms.len(), 1, "{sms:?}");
    let sms = &sms[0];
    assert_eq!(sms.action.as_deref(), Some("SendSms"), "{sms:?}");
    assert_eq!(sms.version.as_deref(), Some("2017-05-25"), "{sms:?}");
    let authorization = sms.authorization.as_deref().unwrap_or_default();
    assert!(
        authorization.starts_with(&format!("ACS3-HMAC-SHA256 Credential={SMS_KEY_ID},")),
        "{sms:?}"
    );
    assert!(!authorization.contains(SMS_SECRET), "{sms:?}");
    assert_eq!(sms.sign_name, SMS_SIGN_NAME);
    assert_eq!(sms.template_code, SMS_TEMPLATE);
    let code = sms.code.clone();
    assert!(
        code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()),
        "a 6-digit code: {sms:?}"
    );
    assert!(
        !sent.body.to_string().contains(&code),
        "the code goes to the phone, not to the client: {:?}",
        sent.body
    );

    // What is stored is not the code, nor a plain hash of it.
    let (stored,): (Vec<u8>,) = sqlx::query_as("SELECT code_hash FROM sms_codes WHERE phone = ?")
        .bind(&phone)
        .fetch_one(&server.db)
        .await
        .unwrap();
    assert!(
        !stored.windows(code.len()).any(|w| w == code.as_bytes()),
        "the plain code is not stored: {stored:?}"
    );
    assert_ne!(
        stored,
        sha256(&format!("{phone}:{code}")),
        "not SHA-256(phone:code)"
    );
    assert_ne!(stored, sha256(&code), "not SHA-256(code)");

    // The delivered code logs in once.
    let first = login(&server, &phone, &code).await;
    assert_eq!(first.ok()["is_new_user"], true);
    login(&server, &phone, &code).await.refused(400, 1002);

    // Five wrong guesses use the code up: then even the right one is refused.
    let guessed = unique_phone();
    send_code(&server, &guessed, None).await.ok();
    let right = gateway.last_code(&guessed);
    for wrong in wrong_codes(&right) {
        login(&server, &guessed, &wrong).await.refused(400, 1002);
    }
    login(&server, &guessed, &right).await.refused(429, 1007);
}

// Old server: there was no provider to fail — send-code always answered
// 200 without sending anything, so neither 1008 nor a delivered code after
// it could be seen.
#[tokio::test]
async fn a_code_the_provider_refuses_is_a_1008_that_does_not_count_against_the_phone() {
    let (endpoint, gateway) = Gateway::start().await;
    let config = production_config(&common::database_url().await, &endpoint, Some("production"));
    let server = TestServer::start_with(move |c| *c = config).await;
    let phone = unique_phone();

    gateway.refuse_next(&phone);
    let refused = send_code(&server, &phone, None).await;
    refused.refused(503, 1008);
    assert!(
        refused.retry_after.is_some_and(|s| s >= 1),
        "Retry-After: {refused:?}"
    );
    let undelivered = gateway.last_code(&phone);
    // The withdrawn code opens nothing, even had it arrived after all.
    login(&server, &phone, &undelivered)
        .await
        .refused(400, 1002);

    // Asking again at once is not "too soon" (1003): the failure did not count.
    send_code(&server, &phone, None).await.ok();
    assert_eq!(gateway.sent_to(&phone).len(), 2);
    let delivered = gateway.last_code(&phone);
    login(&server, &phone, &delivered).await.ok();
}

// ---------------------------------------------------------------------------
// 4. Per-address limits
// ---------------------------------------------------------------------------

// Old server: send-code was limited per phone only, so one address
// rotating 25 phones got 25 codes sent.
#[tokio::test]
async fn one_address_rotating_phones_gets_twenty_codes_and_then_2002() {
    let server = TestServer::start_with(|c| c.ip_limits = default_limits()).await;
    let phones: Vec<String> = (0..25).map(|_| unique_phone()).collect();

    let mut replies = Vec::new();
    for phone in &phones {
        replies.push(send_code(&server, phone, None).await);
    }

    for (i, reply) in replies.iter().enumerate() {
        if i < 20 {
            reply.ok();
        } else {
            reply.rate_limited();
        }
    }
    // Refused before any per-phone bookkeeping: each of those phones had
    // never asked, so the per-phone limit alone would have sent them a code.
    for phone in &phones[20..] {
        let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM sms_codes WHERE phone = ?")
            .bind(phone)
            .fetch_one(&server.db)
            .await
            .unwrap();
        assert_eq!(rows, 0, "no code issued to {phone}");
    }
}

// Old server: logins had no per-address limit at all; the burst beyond
// the default was accepted in full and no 2002 was ever answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restaurant_full_of_logins_fits_the_default_limit_and_a_burst_beyond_it_gets_2002() {
    // RATE_LIMIT_LOGIN's default, 300/min:150: 150 at once, then 5 a second.
    const BURST: u64 = 150;
    const PER_SECOND: u64 = 5;
    let server = TestServer::start_with(|c| c.ip_limits = default_limits()).await;
    let started = Instant::now();

    // 120 guests behind one address log in within a minute.
    let logins: Vec<Reply> = futures::stream::iter(0..120)
        .map(|_| {
            let server = &server;
            async move { login(server, &unique_phone(), "123456").await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for reply in &logins {
        reply.ok();
    }

    // Then more at once than the whole burst allowance.
    let phones: Vec<String> = (0..BURST + 10).map(|_| unique_phone()).collect();
    let burst = join_all(phones.iter().map(|p| login(&server, p, "123456"))).await;
    let elapsed = started.elapsed().as_secs() + 1;

    let limited = burst.iter().filter(|r| r.status == 429).count() as u64;
    for reply in &burst {
        if reply.status == 429 {
            reply.rate_limited();
        } else {
            reply.ok();
        }
    }
    assert!(limited >= 1, "the burst beyond the limit meets 2002");
    let accepted = 120 + burst.len() as u64 - limited;
    assert!(
        accepted <= BURST + PER_SECOND * elapsed,
        "{accepted} accepted in {elapsed} s: at most the burst and the refill"
    );
}

/// Three per hour, three at once: exhausted by the fourth request.
const TIGHT: &str = "3/h:3";

// Old server: no per-address limit, so the fourth code for client A was
// sent (and nothing was ever counted per forwarded address).
#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_allowance() {
    let server = TestServer::start_with(|c| {
        c.ip_limits.send_code = spec(TIGHT);
        c.http.trusted = TrustedProxies::parse("127.0.0.1/32").unwrap();
    })
    .await;
    let (a, b) = ("203.0.113.10", "203.0.113.20");

    for _ in 0..3 {
        send_code(&server, &unique_phone(), Some(a)).await.ok();
    }
    send_code(&server, &unique_phone(), Some(a))
        .await
        .rate_limited();
    // A client cannot start afresh by writing an address of its choice in
    // front of the one the proxy appended.
    send_code(
        &server,
        &unique_phone(),
        Some(&format!("198.51.100.7, {a}")),
    )
    .await
    .rate_limited();

    // Client B, and the proxy's own requests, are not held up by A.
    send_code(&server, &unique_phone(), Some(b)).await.ok();
    send_code(&server, &unique_phone(), None).await.ok();
}

// Old server: no per-address limit, so client B's code was sent like
// every other (the test expects it refused).
#[tokio::test]
async fn from_an_untrusted_peer_x_forwarded_for_is_ignored() {
    let server = TestServer::start_with(|c| c.ip_limits.send_code = spec(TIGHT)).await;

    for _ in 0..3 {
        send_code(&server, &unique_phone(), Some("203.0.113.10"))
            .await
            .ok();
    }
    // Every request counted against the peer, 127.0.0.1, whatever it said.
    send_code(&server, &unique_phone(), Some("203.0.113.20"))
        .await
        .rate_limited();
    send_code(&server, &unique_phone(), None)
        .await
        .rate_limited();
}

// Old server: refresh had no per-address limit; the fourth rotation was
// accepted.
#[tokio::test]
async fn refresh_is_limited_per_address_and_a_refused_refresh_keeps_the_token() {
    let server = TestServer::start_with(|c| {
        c.ip_limits.refresh = spec(TIGHT);
        c.http.trusted = TrustedProxies::parse("127.0.0.1/32").unwrap();
    })
    .await;
    let user = server.login_new().await;

    let mut token = user.refresh_token.clone();
    for _ in 0..3 {
        let reply = refresh(&server, &token, None).await;
        token = reply.ok()["refresh_token"].as_str().unwrap().to_string();
    }
    refresh(&server, &token, None).await.rate_limited();

    // The refused refresh did not use the token up: from another address
    // it still rotates (a used token would be 1005, a reuse).
    refresh(&server, &token, Some("203.0.113.30")).await.ok();
}

// ---------------------------------------------------------------------------
// 5. No 5xx when guests arrive together
// ---------------------------------------------------------------------------

// Old server: new phones' codes were inserted after a locking read of a
// missing row; the gap locks of concurrent new phones deadlocked (InnoDB
// 1213), nothing retried, and the losers got 500/2007.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_new_guests_asking_for_a_code_at_once_all_get_one() {
    const GUESTS: usize = 100;
    let server = TestServer::start().await;
    let phones: Vec<String> = (0..GUESTS).map(|_| unique_phone()).collect();

    // One connection per guest, opened before the race: the requests then
    // leave together instead of queueing behind 100 handshakes.
    let http = server.http.clone();
    let warm = join_all((0..GUESTS).map(|_| Reply::of(http.get(server.url("/health"))))).await;
    assert!(warm.iter().all(|r| r.status == 200), "{warm:?}");
    let barrier = Arc::new(Barrier::new(GUESTS));
    let url = server.url("/api/auth/send-code");
    let tasks: Vec<_> = phones
        .iter()
        .cloned()
        .map(|phone| {
            let (http, barrier, url) = (http.clone(), barrier.clone(), url.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                Reply::of(http.post(url).json(&json!({ "phone": phone }))).await
            })
        })
        .collect();
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(
            tokio::time::timeout(WAIT, t)
                .await
                .expect("answered in time")
                .unwrap(),
        );
    }

    let failed: Vec<&Reply> = replies.iter().filter(|r| !r.is(200, 0)).collect();
    assert!(
        failed.is_empty(),
        "{} of {GUESTS} refused: {failed:?}",
        failed.len()
    );
    let (with_code,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM sms_codes WHERE day_count = 1 AND phone IN ({})",
        phones
            .iter()
            .map(|p| format!("'{p}'"))
            .collect::<Vec<_>>()
            .join(",")
    )))
    .fetch_one(&server.db)
    .await
    .unwrap();
    assert_eq!(
        with_code, GUESTS as i64,
        "each guest holds exactly one code"
    );
}

// Old server: a refresh held its transaction's connection and took a
// second one from the pool; with both connections held by refreshes, each
// waited for the other until the acquire timeout, answering 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_refreshes_at_once_on_a_pool_of_two_all_succeed() {
    const USERS: usize = 20;
    let server = TestServer::start_with(|c| {
        c.db_max_connections = 2;
        c.db_acquire_timeout = Duration::from_secs(2);
    })
    .await;
    let mut users = Vec::new();
    for _ in 0..USERS {
        users.push(server.login_new().await);
    }

    let barrier = Arc::new(Barrier::new(USERS));
    let url = server.url("/api/auth/refresh");
    let tasks: Vec<_> = users
        .iter()
        .map(|user| {
            let (barrier, url) = (barrier.clone(), url.clone());
            let body = json!({ "refresh_token": user.refresh_token });
            let http = server.http.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                Reply::of(http.post(url).json(&body)).await
            })
        })
        .collect();
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(
            tokio::time::timeout(WAIT, t)
                .await
                .expect("answered in time")
                .unwrap(),
        );
    }

    for (user, reply) in users.iter().zip(&replies) {
        let access = reply.ok()["access_token"]
            .as_str()
            .expect("a new access token");
        let who = verify(&server, access).await;
        assert_eq!(who.ok()["user_info"]["user_id"], user.user_id);
    }
}

// ---------------------------------------------------------------------------
// 6. Signing out
// ---------------------------------------------------------------------------

async fn logout(server: &TestServer, user: &User, body: Option<Value>) -> Reply {
    let mut req = server
        .http
        .post(server.url("/api/auth/logout"))
        .bearer_auth(&user.access_token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    Reply::of(req).await
}

#[track_caller]
fn assert_pong(reply: &protocol::ServerFrame) {
    assert!(reply.is_reply(), "{reply:?}");
    assert_eq!(reply.code, Some(0), "{reply:?}");
    assert!(reply.data["server_time"].is_string(), "{reply:?}");
}

// Old server: logout took no body and ended only the caller's session;
// the second session's socket stayed open and its tokens kept working.
#[tokio::test]
async fn signing_out_everywhere_closes_every_socket_and_ends_every_session() {
    let server = TestServer::start().await;
    let phone = unique_phone();
    let first = server.login(&phone).await;
    let second = server.login(&phone).await;
    let mut ws1 = server.connect(&first).await;
    let mut ws2 = server.connect(&second).await;

    let out = logout(&server, &first, Some(json!({ "all": true }))).await;
    assert_eq!(out.ok()["sessions"], 2, "{out:?}");

    assert_eq!(ws1.closed().await, Some(4001));
    assert_eq!(ws2.closed().await, Some(4001));
    for session in [&first, &second] {
        verify(&server, &session.access_token)
            .await
            .refused(401, 4002);
        refresh(&server, &session.refresh_token, None)
            .await
            .refused(401, 1004);
    }
}

// Old server: its logout answered only `{"logged_out": true}`, without the
// count of sessions it ended that this test reads (`sessions: 1`). Ending
// only the caller's session it did right; this test keeps it so — `all`
// must never become the default, neither for an empty body nor for `{}`.
#[tokio::test]
async fn signing_out_without_all_ends_only_the_callers_session() {
    let server = TestServer::start().await;
    let phone = unique_phone();
    let a = server.login(&phone).await;
    let b = server.login(&phone).await;
    let c = server.login(&phone).await;
    let mut ws_a = server.connect(&a).await;
    let mut ws_b = server.connect(&b).await;
    let mut ws_c = server.connect(&c).await;

    // No body at all.
    assert_eq!(logout(&server, &a, None).await.ok()["sessions"], 1);
    assert_eq!(ws_a.closed().await, Some(4001));
    assert_pong(&ws_b.command("after-a", "ping", json!({})).await);
    verify(&server, &a.access_token).await.refused(401, 4002);
    verify(&server, &b.access_token).await.ok();

    // A body without `all`.
    assert_eq!(
        logout(&server, &b, Some(json!({}))).await.ok()["sessions"],
        1
    );
    assert_eq!(ws_b.closed().await, Some(4001));
    assert_pong(&ws_c.command("after-b", "ping", json!({})).await);
    verify(&server, &b.access_token).await.refused(401, 4002);
    refresh(&server, &b.refresh_token, None)
        .await
        .refused(401, 1004);
    verify(&server, &c.access_token).await.ok();
    refresh(&server, &c.refresh_token, None).await.ok();
}
