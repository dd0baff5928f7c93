//! The merchant console (`/console/`) and the guest demo (`/play/`) in a
//! real Chromium, driven over WebDriver (chromedriver, through fantoccini):
//! what a guest does on one page shows up live on the other, the wheel lands
//! on the prize the server drew, the socket survives a server restart
//! without losing or repeating an event, and a refused wheel edit shows the
//! server's reason and changes nothing.
//!
//! Every page a test checks is saved as a screenshot under
//! `target/browser-shots/<test>/`, and every browser's page once more when a
//! test fails. Every check also fails on a console error the test did not
//! cause on purpose: a Content-Security-Policy violation, a module that
//! 404s, an exception.
//!
//! `CHROMIUM_BIN` and `CHROMEDRIVER_BIN` name the binaries
//! (`scripts/chromium --print-env`; by default `/usr/bin/chromium` and
//! `/usr/bin/chromedriver`). A test binary runs one chromedriver on a free
//! port, started by the first test that needs it and killed (with its
//! browsers) when the last one ends; each browser session gets a fresh
//! profile directory.
//!
//! `cargo test --test browser -- --ignored --exact readme_screenshots`
//! fills a database of its own with demo data and writes the screenshots
//! of `docs/screenshots/`.

mod common;

use common::{TestServer, User};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use restaurant_points::config::Secret;
use serde_json::{Value, json};
use sqlx::MySqlPool;
use std::future::Future;
use std::os::unix::process::CommandExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Semaphore};

/// A new user's register bonus.
const START_POINTS: i64 = 1000;
/// How long a page gets to reach a state it should reach promptly.
const PAGE_WAIT: Duration = Duration::from_secs(20);
/// How often a waiting test looks at the page again.
const POLL: Duration = Duration::from_millis(40);
/// Browsers open at once across the binary's tests (two cores).
const MAX_BROWSERS: usize = 4;

// ---------------------------------------------------------------------------
// chromedriver, one per test binary
// ---------------------------------------------------------------------------

fn binary(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// `target/browser-shots` (or under `CARGO_TARGET_DIR`).
fn shots_root() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("browser-shots")
}

/// A chromedriver process in a process group of its own, so that killing
/// the group also ends any browser a failed test left open.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        let bin = binary("CHROMEDRIVER_BIN", "/usr/bin/chromedriver");
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        std::fs::create_dir_all(shots_root()).unwrap();
        let log = std::fs::File::create(shots_root().join("chromedriver.log")).unwrap();
        let child = Command::new(&bin)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {bin}: {e}. Run scripts/chromium, or set CHROMEDRIVER_BIN.")
            });
        let url = format!("http://127.0.0.1:{port}");
        let driver = Driver { child, url };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(r) = http.get(format!("{}/status", driver.url)).send().await
                && r.status().is_success()
            {
                return driver;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer on {} within 15 s (see {})",
                driver.url,
                shots_root().join("chromedriver.log").display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with the negative id of the process group we made
        // for our own child; it touches no memory.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// The binary's chromedriver: started by the first test that needs it,
/// dropped (killed) when the last test holding it ends.
static DRIVER: Mutex<Weak<Driver>> = Mutex::const_new(Weak::new());
static BROWSER_SLOTS: Semaphore = Semaphore::const_new(MAX_BROWSERS);

async fn driver() -> Arc<Driver> {
    let mut slot = DRIVER.lock().await;
    if let Some(d) = slot.upgrade() {
        return d;
    }
    let d = Arc::new(Driver::start().await);
    *slot = Arc::downgrade(&d);
    d
}

/// `POST /session/{id}/se/log {"type": "browser"}`: the console messages
/// since the last call (chromedriver's log endpoint, not in W3C WebDriver).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &reqwest::Url,
        session_id: Option<&str>,
    ) -> Result<reqwest::Url, url_error::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &reqwest::Url) -> (axum::http::Method, Option<String>) {
        (
            axum::http::Method::POST,
            Some(r#"{"type":"browser"}"#.to_string()),
        )
    }
}

/// The `url` crate's parse error, through reqwest (which re-exports only `Url`).
mod url_error {
    pub type ParseError = <reqwest::Url as std::str::FromStr>::Err;
}

// ---------------------------------------------------------------------------
// A test run: its screenshots, its browsers, its cleanup
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Viewport {
    /// The guest demo: a phone.
    Phone,
    /// The merchant console: a laptop.
    Laptop,
}

impl Viewport {
    fn size(self) -> (u32, u32) {
        match self {
            Viewport::Phone => (390, 844),
            Viewport::Laptop => (1280, 900),
        }
    }
}

struct Run {
    name: &'static str,
    dir: PathBuf,
    shots: AtomicUsize,
    driver: Arc<Driver>,
    /// Every session opened, to screenshot on failure and to close.
    open: std::sync::Mutex<Vec<(&'static str, Client)>>,
    profiles: std::sync::Mutex<Vec<PathBuf>>,
}

/// Runs a browser test: `browsers` slots are held for its whole length
/// (acquired together, so two tests never wait on each other's halves). On
/// a panic every open browser is photographed; every session is closed and
/// every profile removed either way.
async fn run<F, Fut>(name: &'static str, browsers: u32, body: F)
where
    F: FnOnce(Arc<Run>) -> Fut,
    Fut: Future<Output = ()>,
{
    let _slots = BROWSER_SLOTS.acquire_many(browsers).await.unwrap();
    let dir = shots_root().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let run = Arc::new(Run {
        name,
        dir,
        shots: AtomicUsize::new(0),
        driver: driver().await,
        open: std::sync::Mutex::new(Vec::new()),
        profiles: std::sync::Mutex::new(Vec::new()),
    });
    let outcome = AssertUnwindSafe(body(run.clone())).catch_unwind().await;
    let open = std::mem::take(&mut *run.open.lock().unwrap());
    for (who, client) in open {
        if outcome.is_err()
            && let Ok(png) = client.screenshot().await
        {
            run.save(who, "FAILED", &png);
        }
        let _ = client.close().await;
    }
    for p in run.profiles.lock().unwrap().drain(..) {
        let _ = std::fs::remove_dir_all(p);
    }
    if let Err(panic) = outcome {
        eprintln!("{}: screenshots in {}", run.name, run.dir.display());
        std::panic::resume_unwind(panic);
    }
}

impl Run {
    fn save(&self, who: &str, label: &str, png: &[u8]) -> PathBuf {
        let n = self.shots.fetch_add(1, Ordering::SeqCst) + 1;
        let path = self.dir.join(format!("{n:02}-{who}-{label}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// A new headless Chromium session with a fresh profile, its viewport
    /// exactly `viewport` (device metrics, CSS pixels at ratio 1).
    async fn browser(
        self: &Arc<Self>,
        who: &'static str,
        viewport: Viewport,
        base: &str,
    ) -> Browser {
        static PROFILES: AtomicUsize = AtomicUsize::new(0);
        let profile = std::env::temp_dir().join(format!(
            "rp-browser-{}-{}",
            std::process::id(),
            PROFILES.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        self.profiles.lock().unwrap().push(profile.clone());
        let (w, h) = viewport.size();
        let phone = matches!(viewport, Viewport::Phone);
        let caps = json!({
            "browserName": "chrome",
            "goog:loggingPrefs": { "browser": "ALL" },
            "goog:chromeOptions": {
                "binary": binary("CHROMIUM_BIN", "/usr/bin/chromium"),
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    "--hide-scrollbars",
                    "--lang=zh-CN",
                    format!("--user-data-dir={}", profile.display()),
                    format!("--window-size={w},{h}"),
                ],
                // A headless window is at least 500 px wide: the phone's
                // 390 comes from device metrics, so both are set this way.
                "mobileEmulation": {
                    "deviceMetrics": {
                        "width": w, "height": h, "pixelRatio": 1.0, "mobile": phone, "touch": phone
                    }
                }
            }
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.driver.url)
            .await
            .unwrap_or_else(|e| {
                panic!("no Chromium session ({e}). Is CHROMIUM_BIN right? Run scripts/chromium.")
            });
        self.open.lock().unwrap().push((who, client.clone()));
        Browser {
            c: client,
            who,
            run: self.clone(),
            base: base.trim_end_matches('/').to_string(),
            expected: Vec::new(),
        }
    }
}

/// `[data-testid="…"]`.
fn tid(id: &str) -> String {
    format!("[data-testid=\"{id}\"]")
}

struct Browser {
    c: Client,
    who: &'static str,
    run: Arc<Run>,
    base: String,
    /// Console errors this test causes on purpose (substrings of the message).
    expected: Vec<&'static str>,
}

impl Browser {
    async fn open(&self, path: &str) {
        self.c.goto(&format!("{}{path}", self.base)).await.unwrap();
    }

    async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.c
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("{}: script failed: {e}\n{script}", self.who))
    }

    /// Polls `script` until `done` accepts what it returns; panics after
    /// `PAGE_WAIT` with the last value seen.
    async fn wait_js<T>(
        &self,
        what: &str,
        script: &str,
        args: Vec<Value>,
        done: impl Fn(&Value) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            let seen = self.js(script, args.clone()).await;
            if let Some(t) = done(&seen) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "{}: waited {PAGE_WAIT:?} for {what}; last seen: {seen}",
                self.who
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for `css` to exist and returns it.
    async fn el(&self, css: &str) -> fantoccini::elements::Element {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            if let Ok(e) = self.c.find(Locator::Css(css)).await {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "{}: waited {PAGE_WAIT:?} for {css} to exist",
                self.who
            );
            tokio::time::sleep(POLL).await;
        }
    }

    async fn click(&self, css: &str) {
        self.el(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("{}: click {css}: {e}", self.who));
    }

    /// Replaces an input's value by typing, as a person would.
    async fn type_into(&self, css: &str, text: &str) {
        let e = self.el(css).await;
        e.clear().await.unwrap();
        e.send_keys(text)
            .await
            .unwrap_or_else(|err| panic!("{}: type into {css}: {err}", self.who));
    }

    /// The trimmed text of `css` once it reads `want`.
    async fn wait_text(&self, css: &str, want: &str) {
        self.wait_js(
            &format!("{css} to read {want:?}"),
            "const e = document.querySelector(arguments[0]); return e ? e.textContent.trim() : null;",
            vec![json!(css)],
            |v| (v.as_str() == Some(want)).then_some(()),
        )
        .await
    }

    /// Waits until attribute `attr` of `css` is `want`.
    async fn wait_attr(&self, css: &str, attr: &str, want: &str) {
        self.wait_js(
            &format!("{css} [{attr}] = {want:?}"),
            "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;",
            vec![json!(css), json!(attr)],
            |v| (v.as_str() == Some(want)).then_some(()),
        )
        .await
    }

    /// Waits until `css` exists and is shown (no `hidden` on it or above it).
    async fn wait_shown(&self, css: &str) {
        self.wait_js(
            &format!("{css} to be shown"),
            "const e = document.querySelector(arguments[0]); return !!e && !e.closest('[hidden]');",
            vec![json!(css)],
            |v| (v == &json!(true)).then_some(()),
        )
        .await
    }

    async fn wait_gone(&self, css: &str) {
        self.wait_js(
            &format!("{css} to be gone"),
            "return !document.querySelector(arguments[0]);",
            vec![json!(css)],
            |v| (v == &json!(true)).then_some(()),
        )
        .await
    }

    /// The trimmed text of `css` (waits for it to exist).
    async fn text(&self, css: &str) -> String {
        self.el(css).await.text().await.unwrap().trim().to_string()
    }

    async fn attr(&self, css: &str, attr: &str) -> Option<String> {
        self.el(css).await.attr(attr).await.unwrap()
    }

    /// Logs in through the page's own form with the development code.
    async fn login(&self, phone: &str) {
        self.type_into(&tid("login-phone"), phone).await;
        self.type_into(&tid("login-code"), "123456").await;
        self.click(&tid("login-submit")).await;
        self.wait_attr(&tid("conn-status"), "data-state", "open")
            .await;
    }

    async fn tab(&self, name: &str) {
        self.click(&tid(&format!("nav-{name}"))).await;
        self.wait_attr(&tid(&format!("nav-{name}")), "aria-current", "page")
            .await;
    }

    /// Marks the document; `assert_not_reloaded` proves it is the same one
    /// later (a reload would start a new one without the mark).
    async fn mark(&self) {
        self.js("window.__rpNoReload = true;", vec![]).await;
    }

    async fn assert_not_reloaded(&self) {
        let v = self
            .js("return window.__rpNoReload === true;", vec![])
            .await;
        assert_eq!(v, json!(true), "{}: the page was reloaded", self.who);
    }

    /// A console error this test causes on purpose is not a failure.
    fn expect_console_error(&mut self, fragment: &'static str) {
        self.expected.push(fragment);
    }

    /// A page checked: its screenshot, and no console error since the last
    /// check (CSP violations, 404s of modules or assets, exceptions).
    async fn check(&self, label: &str) {
        let png = self.c.screenshot().await.unwrap();
        self.run.save(self.who, label, &png);
        let log = self.c.issue_cmd(BrowserLog).await.unwrap();
        let bad: Vec<String> = log
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| {
                let msg = e["message"].as_str().unwrap_or_default();
                (e["level"] == "SEVERE" || msg.contains("Content Security Policy"))
                    && !self.expected.iter().any(|x| msg.contains(x))
            })
            .map(|e| format!("{} {}", e["level"], e["message"]))
            .collect();
        assert!(
            bad.is_empty(),
            "{} ({label}): console errors:\n{}",
            self.who,
            bad.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------
// Test data: receipts as real PNG files, server calls through the harness
// ---------------------------------------------------------------------------

/// CRC-32 (IEEE), as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Adler-32, the checksum that ends a zlib stream.
fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in bytes {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    (b << 16) | a
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A decodable 8-bit RGB PNG of `pixel(x, y)`, its IDAT a zlib stream of
/// stored (uncompressed) deflate blocks.
fn png(width: u32, height: u32, pixel: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    // Bit depth 8, colour type 2 (RGB), deflate, filter 0, no interlace.
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut raw = Vec::new();
    for y in 0..height {
        raw.push(0); // filter type None
        for x in 0..width {
            raw.extend_from_slice(&pixel(x, y));
        }
    }
    let mut zlib = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        zlib.push(u8::from(i + 1 == blocks.len())); // BFINAL, BTYPE 00 (stored)
        let len = block.len() as u16;
        zlib.extend_from_slice(&len.to_le_bytes());
        zlib.extend_from_slice(&(!len).to_le_bytes());
        zlib.extend_from_slice(block);
    }
    zlib.extend_from_slice(&adler32(&raw).to_be_bytes());
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &zlib);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A receipt-looking image: a header, item lines with prices, a total and a
/// barcode, on paper. `seed` varies the lines.
fn receipt_png(seed: u32) -> Vec<u8> {
    const W: u32 = 180;
    const H: u32 = 240;
    let paper = [252, 250, 244];
    let ink = [70, 66, 62];
    let faint = [150, 146, 140];
    png(W, H, move |x, y| {
        let line = |y0: u32, x0: u32, x1: u32| (y0..y0 + 3).contains(&y) && (x0..x1).contains(&x);
        // the shop's name, bold and centred
        if (14..22).contains(&y) && (50..130).contains(&x) {
            return ink;
        }
        if line(28, 66, 114) {
            return faint;
        }
        // dashed rules
        if (y == 40 || y == 172) && (12..W - 12).contains(&x) && (x / 4) % 2 == 0 {
            return faint;
        }
        // items: name on the left, price on the right
        for i in 0..8u32 {
            let y0 = 50 + i * 14;
            let len = 40 + (seed.wrapping_mul(37).wrapping_add(i * 53)) % 60;
            if line(y0, 14, 14 + len) || line(y0, W - 44, W - 14) {
                return ink;
            }
        }
        // total
        if (180..186).contains(&y) && ((14..60).contains(&x) || (W - 60..W - 14).contains(&x)) {
            return ink;
        }
        // barcode
        if (200..226).contains(&y) && (30..W - 30).contains(&x) {
            let bar = (x * 7 + seed) % 5;
            return if bar < 2 { ink } else { paper };
        }
        paper
    })
}

/// Writes a receipt PNG into the run's folder for the file input.
fn receipt_file(run: &Run, seed: u32) -> PathBuf {
    // Named as a phone's camera names its pictures.
    let path = run.dir.join(format!("IMG_{:04}.png", 4100 + seed));
    std::fs::write(&path, receipt_png(seed)).unwrap();
    path
}

/// `data` of a JSON request that must succeed.
async fn ok(
    server: &TestServer,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Value {
    let mut req = match method {
        "GET" => server.http.get(server.url(path)),
        "PUT" => server.http.put(server.url(path)),
        _ => server.http.post(server.url(path)),
    }
    .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let v: Value = res.json().await.unwrap();
    assert_eq!(
        (status, v["code"].as_i64()),
        (200, Some(0)),
        "{method} {path}: {v}"
    );
    v["data"].clone()
}

/// A receipt upload through the API (multipart made by hand).
async fn upload_receipt(server: &TestServer, user: &User, seed: u32, amount: &str) -> Value {
    const BOUNDARY: &str = "rp-browser-7c1e9a";
    let mut body = format!(
        "--{BOUNDARY}\r\n\
         Content-Disposition: form-data; name=\"image\"; filename=\"receipt.png\"\r\n\
         Content-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&receipt_png(seed));
    body.extend_from_slice(
        format!(
            "\r\n--{BOUNDARY}\r\n\
             Content-Disposition: form-data; name=\"amount\"\r\n\r\n\
             {amount}\r\n--{BOUNDARY}--\r\n"
        )
        .as_bytes(),
    );
    let res = server
        .http
        .post(server.url("/api/photo/upload"))
        .bearer_auth(&user.access_token)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["code"], 0, "upload: {v}");
    v["data"].clone()
}

/// A database of this binary's own, next to the shared one, made empty.
async fn private_database(name: &str) -> String {
    let shared = common::database_url().await;
    let (root, db) = shared.rsplit_once('/').unwrap();
    let private = format!("{db}_{name}");
    let admin = MySqlPool::connect(root).await.unwrap();
    for sql in [
        format!("DROP DATABASE IF EXISTS `{private}`"),
        format!("CREATE DATABASE `{private}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .unwrap();
    }
    admin.close().await;
    format!("{root}/{private}")
}

async fn balance_of(server: &TestServer, user: &User) -> i64 {
    ok(server, "GET", "/api/user/info", &user.access_token, None).await["total_points"]
        .as_i64()
        .unwrap()
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_receipt_uploaded_on_the_guest_page_is_approved_live_on_the_console_and_credited_live() {
    run("receipt_review", 2, receipt_review).await;
}

async fn receipt_review(run: Arc<Run>) {
    let server = TestServer::start().await;
    let merchant = server.new_merchant().await;
    let guest = server.login_new().await;
    let base = server.url("");

    let console = run.browser("console", Viewport::Laptop, &base).await;
    console.open("/console/").await;
    console.login(&merchant.phone).await;
    console.wait_shown(&tid("review-list")).await;
    console.mark().await;
    // Every request the console makes from here on.
    console
        .js(
            "window.__rpFetches = []; const f = window.fetch; \
             window.fetch = (...a) => { window.__rpFetches.push(String(a[0])); return f(...a); };",
            vec![],
        )
        .await;

    let play = run.browser("guest", Viewport::Phone, &base).await;
    play.open("/play/#upload").await;
    play.login(&guest.phone).await;
    play.wait_attr(&tid("balance"), "data-value", &START_POINTS.to_string())
        .await;
    play.mark().await;
    play.tab("upload").await;
    let file = receipt_file(&run, 1);
    play.el(&tid("upload-file"))
        .await
        .send_keys(file.to_str().unwrap())
        .await
        .unwrap();
    play.type_into(&tid("upload-amount"), "56.80").await;
    play.wait_text(&tid("upload-estimate"), "预计可得 568 积分（以审核为准）")
        .await;
    play.wait_shown(&tid("upload-preview")).await;
    play.check("receipt-chosen").await;
    play.click(&tid("upload-submit")).await;
    play.wait_shown(&tid("upload-status")).await;
    let upload_id = play
        .attr(&tid("upload-status"), "data-upload-id")
        .await
        .unwrap();
    play.wait_shown(&format!(
        "{}[data-upload-id=\"{upload_id}\"]",
        tid("upload-row")
    ))
    .await;
    play.check("uploaded").await;

    // The console shows it from the review_queue event, without a reload,
    // with the server's cap for this receipt on the points input.
    let row = format!("{}[data-upload-id=\"{upload_id}\"]", tid("review-row"));
    console.wait_shown(&row).await;
    let queued = ok(
        &server,
        "GET",
        "/api/merchant/reviews?status=pending&page_size=100",
        &merchant.access_token,
        None,
    )
    .await;
    let item = queued["reviews"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["upload_id"] == upload_id.as_str())
        .expect("the upload is in the queue")
        .clone();
    assert_eq!(item["max_points"], 5680, "10 × the estimate: {item}");
    assert_eq!(
        console
            .attr(&format!("{row} {}", tid("review-points")), "max")
            .await
            .as_deref(),
        Some("5680")
    );
    assert_eq!(
        console
            .text(&format!("{row} {}", tid("review-amount")))
            .await,
        "¥56.80"
    );
    assert_eq!(
        console
            .text(&format!("{row} {}", tid("review-estimate")))
            .await,
        "568"
    );
    let mobile = item["user_mobile"].as_str().unwrap();
    let body = console.text(&row).await;
    assert!(
        body.contains(mobile),
        "the row shows the masked mobile {mobile}: {body}"
    );
    // the signed receipt image loads
    console
            .wait_js(
                "the receipt image to load",
                "const i = document.querySelector(arguments[0]); return !!i && i.complete && i.naturalWidth;",
                vec![json!(format!("{row} {}", tid("review-image")))],
                |v| (v.as_u64() == Some(180)).then_some(()),
            )
            .await;
    console.assert_not_reloaded().await;
    // Built from the event itself: the queue was not fetched again (only
    // the badge's one-row count was, which shows the spy works; it may
    // still be on its way).
    console
        .wait_js(
            "the badge's count to be fetched",
            "return window.__rpFetches.some(u => u.startsWith('/api/merchant/reviews') && u.endsWith('page_size=1'));",
            vec![],
            |v| (v.as_bool() == Some(true)).then_some(()),
        )
        .await;
    let seen = console
        .js(
            "const r = window.__rpFetches.filter(u => u.startsWith('/api/merchant/reviews')); \
             return [r.filter(u => !u.endsWith('page_size=1')), r.some(u => u.endsWith('page_size=1'))];",
            vec![],
        )
        .await;
    assert_eq!(seen, json!([[], true]), "no reload of the review list");
    console.check("queued-live").await;

    console.click(&format!("{row} {}", tid("approve"))).await;
    console.wait_gone(&row).await;
    console.check("approved").await;

    // The guest page gets review_result and points_update live.
    let credited = (START_POINTS + 568).to_string();
    play.wait_attr(&tid("balance"), "data-value", &credited)
        .await;
    play.wait_attr(&tid("review-result"), "data-status", "approved")
        .await;
    assert_eq!(
        play.attr(&tid("review-result"), "data-upload-id")
            .await
            .as_deref(),
        Some(upload_id.as_str())
    );
    play.wait_shown(&tid("review-result")).await;
    assert!(
        play.text(&tid("review-result"))
            .await
            .contains("获得 568 积分")
    );
    play.wait_attr(
        &format!("{}[data-upload-id=\"{upload_id}\"]", tid("upload-row")),
        "data-status",
        "approved",
    )
    .await;
    play.assert_not_reloaded().await;
    play.check("credited-live").await;
    assert_eq!(balance_of(&server, &guest).await, START_POINTS + 568);
    server.audit(guest.user_id).await.assert_consistent();
}

#[tokio::test]
async fn an_exchange_on_the_guest_page_lowers_the_stock_on_the_console_live() {
    run("exchange_stock", 2, exchange_stock).await;
}

async fn exchange_stock(run: Arc<Run>) {
    let server = TestServer::start().await;
    let merchant = server.new_merchant().await;
    let guest = server.login_new().await;
    let base = server.url("");
    let name = format!("浏览器测试商品{}", guest.user_id);
    let product = ok(
        &server,
        "POST",
        "/api/merchant/products",
        &merchant.access_token,
        Some(json!({
            "name": name, "category": "测试", "exchange_points": 120, "stock": 20, "sort_order": 0
        })),
    )
    .await;
    let id = product["product_id"].as_u64().unwrap();

    let console = run.browser("console", Viewport::Laptop, &base).await;
    console.open("/console/#products").await;
    console.wait_shown(&tid("login-form")).await;
    console.check("login").await;
    console.login(&merchant.phone).await;
    let stock_cell = format!("{}[data-product-id=\"{id}\"]", tid("stock"));
    console.wait_text(&stock_cell, "20").await;
    console.mark().await;
    console.check("before").await;

    let play = run.browser("guest", Viewport::Phone, &base).await;
    play.open("/play/#shop").await;
    play.login(&guest.phone).await;
    let card = format!("{}[data-product-id=\"{id}\"]", tid("product"));
    play.wait_text(&format!("{card} {}", tid("stock")), "20")
        .await;
    play.click(&format!("{card} {}", tid("exchange-button")))
        .await;
    play.wait_shown(&tid("exchange-dialog")).await;
    play.type_into(&tid("exchange-quantity"), "2").await;
    play.wait_text(&tid("exchange-total"), "240 积分").await;
    play.click(&tid("exchange-confirm")).await;
    play.wait_shown(&tid("exchange-code")).await;
    let code = play.text(&tid("exchange-code")).await;
    assert_eq!(code.len(), 8, "an 8-character code: {code}");
    play.wait_attr(
        &tid("balance"),
        "data-value",
        &(START_POINTS - 240).to_string(),
    )
    .await;
    play.wait_text(&format!("{card} {}", tid("stock")), "18")
        .await;
    play.check("exchanged").await;

    // stock_update reaches the console without a reload.
    console.wait_text(&stock_cell, "18").await;
    console.assert_not_reloaded().await;
    console.check("stock-live").await;

    let orders = ok(
        &server,
        "GET",
        "/api/exchange/orders",
        &guest.access_token,
        None,
    )
    .await;
    assert_eq!(orders["orders"][0]["exchange_code"], code.as_str());
    assert_eq!(orders["orders"][0]["quantity"], 2);
}

#[tokio::test]
async fn a_draw_on_the_guest_page_stops_the_wheel_on_the_prize_the_server_drew() {
    run("draw_lands", 1, draw_lands).await;
}

async fn draw_lands(run: Arc<Run>) {
    let server = TestServer::start().await;
    let guest = server.login_new().await;
    let play = run.browser("guest", Viewport::Phone, &server.url("")).await;
    play.open("/play/").await;
    play.wait_shown(&tid("login-form")).await;
    play.check("login").await;
    play.login(&guest.phone).await;
    play.wait_js(
        "the draw button to be ready",
        "const b = document.querySelector(arguments[0]); return !!b && !b.disabled;",
        vec![json!(tid("draw-button"))],
        |v| (v == &json!(true)).then_some(()),
    )
    .await;
    play.check("ready").await;
    play.click(&tid("draw-button")).await;
    let (prize_id, landed) = play
            .wait_js(
                "the wheel to stop on a prize",
                "const w = document.querySelector(arguments[0]); return [w.dataset.spinning, w.dataset.prizeId ?? null, w.dataset.landedAngle ?? null];",
                vec![json!(tid("wheel"))],
                |v| match (v[0].as_str(), v[1].as_str(), v[2].as_str()) {
                    (Some("false"), Some(p), Some(a)) => Some((p.to_string(), a.to_string())),
                    _ => None,
                },
            )
            .await;

    // The server's record of that draw, and the prize's place on the wheel.
    let records = ok(
        &server,
        "GET",
        "/api/lottery/records?page=1&page_size=5",
        &guest.access_token,
        None,
    )
    .await;
    let draws = records["draws"].as_array().unwrap();
    assert_eq!(draws.len(), 1, "one draw: {records}");
    let draw = &draws[0];
    assert_eq!(
        prize_id,
        draw["prize_id"].to_string(),
        "the wheel shows the drawn prize"
    );
    let config = ok(
        &server,
        "GET",
        "/api/lottery/config",
        &guest.access_token,
        None,
    )
    .await;
    let prize = config["prizes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["prize_id"] == draw["prize_id"])
        .expect("the drawn prize is on the wheel");
    assert_eq!(
        landed,
        prize["angle"].to_string(),
        "the pointer sits on the prize's angle"
    );
    assert_eq!(landed, draw["angle"].to_string());
    play.wait_text(&tid("prize-name"), draw["prize_name"].as_str().unwrap())
        .await;
    play.wait_attr(&tid("draw-result"), "data-prize-id", &prize_id)
        .await;
    let balance = balance_of(&server, &guest).await;
    play.wait_attr(&tid("balance"), "data-value", &balance.to_string())
        .await;
    play.check("landed").await;
}

#[tokio::test]
async fn the_guest_page_rides_out_a_server_restart_and_applies_what_it_missed_once() {
    run("server_restart", 1, server_restart).await;
}

async fn server_restart(run: Arc<Run>) {
    let mut server = TestServer::start().await;
    let addr = server.addr;
    // A second instance on the same database: the merchant's door while
    // the page's server is down.
    let other = TestServer::start().await;
    let merchant = other.new_merchant().await;
    let guest = server.login_new().await;

    let mut play = run.browser("guest", Viewport::Phone, &server.url("")).await;
    // Requests and the socket fail while the server is away.
    play.expect_console_error("ERR_CONNECTION_REFUSED");
    play.expect_console_error("WebSocket connection to");
    play.open("/play/#history").await;
    play.login(&guest.phone).await;
    play.wait_text(&tid("last-seq"), "1").await;
    play.mark().await;
    // Every seq the page applies, in order.
    play.js(
            "window.__rpSeqs = []; const s = window.__rp.socket; const f = s.onSeq; s.onSeq = (q) => { window.__rpSeqs.push(q); f(q); };",
            vec![],
        )
        .await;
    play.check("connected").await;

    server.stop().await;
    play.wait_attr(&tid("conn-status"), "data-state", "reconnecting")
        .await;
    play.wait_text(&tid("conn-text"), "连接已断开，正在重连…")
        .await;
    play.wait_shown(&tid("conn-status")).await;
    play.check("reconnecting").await;

    // Two changes while the page is away: user events 2 and 3.
    for (points, reason) in [(150, "断线期间补偿"), (-30, "断线期间扣减")] {
        ok(
            &other,
            "POST",
            "/api/merchant/points/adjust",
            &merchant.access_token,
            Some(json!({ "user_id": guest.user_id, "points": points, "reason": reason })),
        )
        .await;
    }
    assert_eq!(other.audit(guest.user_id).await.last_seq, 3);

    let back = TestServer::start_on(addr, |_| {}).await;
    play.wait_attr(&tid("conn-status"), "data-state", "open")
        .await;
    play.wait_text(&tid("last-seq"), "3").await;
    play.wait_attr(
        &tid("balance"),
        "data-value",
        &(START_POINTS + 120).to_string(),
    )
    .await;
    // The points history on screen reloaded with both adjustments.
    play.wait_js(
        "the history to list both adjustments",
        "return [...document.querySelectorAll(arguments[0])].map(r => r.textContent).join('|');",
        vec![json!(tid("history-row"))],
        |v| {
            let t = v.as_str().unwrap_or_default();
            (t.contains("断线期间补偿") && t.contains("断线期间扣减")).then_some(())
        },
    )
    .await;
    // A live event after the reconnect arrives too, exactly once.
    ok(
        &back,
        "POST",
        "/api/merchant/points/adjust",
        &merchant.access_token,
        Some(json!({ "user_id": guest.user_id, "points": 5, "reason": "重连之后" })),
    )
    .await;
    play.wait_text(&tid("last-seq"), "4").await;
    play.wait_attr(
        &tid("balance"),
        "data-value",
        &(START_POINTS + 125).to_string(),
    )
    .await;
    let seqs = play.js("return window.__rpSeqs;", vec![]).await;
    assert_eq!(
        seqs,
        json!([2, 3, 4]),
        "each missed event applied once, in order"
    );
    play.assert_not_reloaded().await;
    play.check("caught-up").await;
    back.audit(guest.user_id).await.assert_consistent();
}

#[tokio::test]
async fn a_wheel_edit_the_server_refuses_shows_its_reason_and_changes_nothing() {
    run("wheel_refused", 1, wheel_refused).await;
}

async fn wheel_refused(run: Arc<Run>) {
    // The wheel is shared by every test on a database: this one gets its own.
    let url = private_database("wheel").await;
    let server = TestServer::start_with(|c| c.database_url = Secret::new(url)).await;
    let merchant = server.new_merchant().await;
    let token = merchant.access_token.clone();
    let before = ok(&server, "GET", "/api/merchant/lottery/prizes", &token, None).await;
    let settings_before = ok(
        &server,
        "GET",
        "/api/merchant/lottery/settings",
        &token,
        None,
    )
    .await;

    let mut console = run
        .browser("console", Viewport::Laptop, &server.url(""))
        .await;
    // The refused PUT is a 400 in the console's network log.
    console.expect_console_error("/api/merchant/lottery/prizes - Failed to load resource: the server responded with a status of 400");
    console.open("/console/#wheel").await;
    console.login(&merchant.phone).await;
    console.wait_attr(&tid("prob-sum"), "data-ok", "true").await;
    let rows = console
        .js(
            "return document.querySelectorAll(arguments[0]).length;",
            vec![json!(tid("prize-row"))],
        )
        .await;
    assert_eq!(rows, json!(8));
    console.check("loaded").await;

    // 0° prize from 0.3000 to 0.3100: the odds now sum to 1.0100.
    let first = format!(
        "{}[data-index=\"0\"] {}",
        tid("prize-row"),
        tid("prize-probability")
    );
    console.type_into(&first, "0.3100").await;
    console
        .wait_attr(&tid("prob-sum"), "data-weight", "10100")
        .await;
    console
        .wait_attr(&tid("prob-sum"), "data-ok", "false")
        .await;
    console.wait_shown(&tid("wheel-issue")).await;
    // The page warns but lets the server judge.
    console.click(&tid("prizes-save")).await;
    console.wait_shown(&tid("prizes-error")).await;
    console
        .wait_attr(&tid("prizes-error"), "data-code", "2000")
        .await;
    assert_eq!(
        console
            .attr(&tid("prizes-error"), "data-kind")
            .await
            .as_deref(),
        Some("error")
    );
    let shown = console.text(&tid("prizes-error")).await;
    console.check("refused").await;

    // The same edit straight to the server: the same refusal, word for word.
    let mut prizes = before["prizes"].as_array().unwrap().clone();
    prizes.sort_by_key(|p| p["angle"].as_i64());
    // Written as the page writes it: four places for odds, two for money.
    let raw: Vec<String> = prizes
        .iter()
        .map(|p| {
            let weight = if p["angle"] == 0 {
                3100
            } else {
                (p["probability"].as_f64().unwrap() * 10_000.0).round() as i64
            };
            let value = p["prize_value"].as_f64().unwrap();
            let fields = [
                format!(r#""prize_id":{}"#, p["prize_id"]),
                format!(r#""prize_name":{}"#, p["prize_name"]),
                format!(r#""prize_type":{}"#, p["prize_type"]),
                format!(r#""prize_value":{value:.2}"#),
                format!(r#""angle":{}"#, p["angle"]),
                format!(r#""color":{}"#, p["color"]),
                format!(r#""probability":0.{weight:04}"#),
                format!(r#""is_activity":{}"#, p["is_activity"]),
                format!(r#""is_valuable":{}"#, p["is_valuable"]),
                format!(r#""stock":{}"#, p["stock"]),
            ];
            format!("{{{}}}", fields.join(","))
        })
        .collect();
    let res = server
        .http
        .put(server.url("/api/merchant/lottery/prizes"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(format!(r#"{{"prizes":[{}]}}"#, raw.join(",")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let refusal: Value = res.json().await.unwrap();
    assert_eq!(refusal["code"], 2000, "{refusal}");
    assert_eq!(
        shown,
        refusal["msg"].as_str().unwrap(),
        "the page shows the server's msg exactly"
    );

    let after = ok(&server, "GET", "/api/merchant/lottery/prizes", &token, None).await;
    assert_eq!(
        after, before,
        "the refused edit changed no prize and no version"
    );
    let settings_after = ok(
        &server,
        "GET",
        "/api/merchant/lottery/settings",
        &token,
        None,
    )
    .await;
    assert_eq!(settings_after, settings_before);
}

// ---------------------------------------------------------------------------
// Screenshots for the README (run by hand)
// ---------------------------------------------------------------------------

/// Fills a database of its own with a day of demo activity and photographs
/// every page into `docs/screenshots/` (1280×900 console, 390×844 guest).
#[tokio::test]
#[ignore = "writes docs/screenshots/; run by hand"]
async fn readme_screenshots() {
    run("readme_screenshots", 2, fill_and_shoot_every_page).await;
}

async fn fill_and_shoot_every_page(run: Arc<Run>) {
    let url = private_database("readme").await;
    let server = TestServer::start_with(|c| c.database_url = Secret::new(url)).await;
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
    std::fs::create_dir_all(&out).unwrap();
    let save = |name: &str, png: Vec<u8>| {
        let path = out.join(name);
        std::fs::write(&path, &png).unwrap();
        eprintln!("{} ({} KB)", path.display(), png.len() / 1024);
    };

    // The seeded demo merchant (src/seed.rs) and six guests.
    let merchant = server.login("13900000000").await;
    let mt = merchant.access_token.clone();
    let phones = [
        "13812345678",
        "13987654321",
        "15011112222",
        "18623456789",
        "13700001111",
        "17788889999",
    ];
    let mut guests = Vec::new();
    for p in phones {
        guests.push(server.login(p).await);
    }
    let products = ok(&server, "GET", "/api/merchant/products", &mt, None).await["products"]
        .as_array()
        .unwrap()
        .clone();
    let pid = |i: usize| products[i]["product_id"].as_u64().unwrap();

    // Receipts: some approved, one rejected, four waiting.
    let amounts = [
        "128.00", "56.80", "88.50", "215.40", "42.00", "76.90", "163.20", "35.50", "99.00",
    ];
    let mut uploads = Vec::new();
    for (i, amount) in amounts.iter().enumerate() {
        let g = &guests[i % guests.len()];
        uploads.push(upload_receipt(&server, g, i as u32 + 3, amount).await["upload_id"].clone());
    }
    for id in uploads.iter().take(4) {
        ok(
            &server,
            "POST",
            "/api/merchant/review",
            &mt,
            Some(json!({ "upload_id": id, "action": "approve" })),
        )
        .await;
    }
    ok(
        &server,
        "POST",
        "/api/merchant/review",
        &mt,
        Some(json!({ "upload_id": uploads[4], "action": "reject", "reason": "小票照片不清晰" })),
    )
    .await;

    // Draws and exchanges.
    for g in &guests {
        for _ in 0..3 {
            server.draw_once(g).await;
        }
    }
    let mut codes = Vec::new();
    let mut exchange_ids = std::collections::HashMap::new();
    for (i, g) in guests.iter().enumerate() {
        let d = ok(
            &server,
            "POST",
            "/api/exchange/submit",
            &g.access_token,
            Some(json!({ "product_id": pid(i % 4), "quantity": 1 })),
        )
        .await;
        let code = d["exchange_code"].as_str().unwrap().to_string();
        exchange_ids.insert(code.clone(), d["exchange_id"].as_str().unwrap().to_string());
        codes.push(code);
    }
    ok(
        &server,
        "POST",
        "/api/merchant/exchange/redeem",
        &mt,
        Some(json!({ "exchange_code": codes[0] })),
    )
    .await;
    ok(
        &server,
        "POST",
        &format!("/api/merchant/products/{}/stock", pid(2)),
        &mt,
        Some(json!({ "operation": "restock", "quantity": 30 })),
    )
    .await;
    ok(
        &server,
        "POST",
        &format!("/api/merchant/products/{}/stock", pid(4)),
        &mt,
        Some(json!({ "operation": "admin_adjust", "quantity": -2, "reason": "盘点破损" })),
    )
    .await;
    ok(
        &server,
        "POST",
        "/api/merchant/points/adjust",
        &mt,
        Some(json!({ "user_id": guests[1].user_id, "points": 200, "reason": "生日礼遇" })),
    )
    .await;

    // The console.
    let base = server.url("");
    let console = run.browser("console", Viewport::Laptop, &base).await;
    console.open("/console/").await;
    console.login("13900000000").await;
    console.wait_js(
            "four pending receipts with their images",
            "const imgs = [...document.querySelectorAll(arguments[0])]; return imgs.length === 4 && imgs.every(i => i.complete && i.naturalWidth > 0);",
            vec![json!(format!("{} img", tid("review-row")))],
            |v| (v == &json!(true)).then_some(()),
        )
        .await;
    console.check("reviews").await;
    save("console-reviews.png", console.c.screenshot().await.unwrap());

    console.tab("products").await;
    console.wait_shown(&tid("product-row")).await;
    console.check("products").await;
    save(
        "console-products.png",
        console.c.screenshot().await.unwrap(),
    );

    console.tab("counter").await;
    for code in &codes[1..3] {
        console
            .type_into(&tid("redeem-code"), &code.to_lowercase())
            .await;
        console.click(&tid("redeem-lookup")).await;
        console
            .wait_attr(&tid("redeem-order"), "data-exchange-code", code)
            .await;
        console.wait_shown(&tid("redeem-confirm")).await;
        console.click(&tid("redeem-confirm")).await;
        console
            .wait_attr(
                &tid("redeem-result"),
                "data-exchange-id",
                &exchange_ids[code],
            )
            .await;
    }
    console.type_into(&tid("redeem-code"), &codes[3]).await;
    console.click(&tid("redeem-lookup")).await;
    console
        .wait_attr(&tid("redeem-order"), "data-exchange-code", &codes[3])
        .await;
    console.wait_shown(&tid("redeem-confirm")).await;
    console.check("counter").await;
    save("console-counter.png", console.c.screenshot().await.unwrap());

    console.tab("wheel").await;
    console.wait_attr(&tid("prob-sum"), "data-ok", "true").await;
    console.wait_shown(&tid("odds-item")).await;
    console.check("wheel").await;
    save("console-wheel.png", console.c.screenshot().await.unwrap());

    console.tab("stats").await;
    console.wait_shown(&tid("chart-connections")).await;
    console.check("stats").await;
    save("console-stats.png", console.c.screenshot().await.unwrap());

    console.tab("audit").await;
    console.wait_shown(&tid("audit-row")).await;
    console.check("audit").await;
    save("console-audit.png", console.c.screenshot().await.unwrap());

    // The guest demo, as the guest with the most going on.
    let guest = &guests[1];
    let play = run.browser("guest", Viewport::Phone, &base).await;
    play.open("/play/").await;
    play.login(&guest.phone).await;
    play.wait_js(
        "the draw button to be ready",
        "const b = document.querySelector(arguments[0]); return !!b && !b.disabled;",
        vec![json!(tid("draw-button"))],
        |v| (v == &json!(true)).then_some(()),
    )
    .await;
    play.click(&tid("draw-button")).await;
    play.wait_js(
            "the wheel to stop",
            "const w = document.querySelector(arguments[0]); return w.dataset.spinning === 'false' && !!w.dataset.prizeId;",
            vec![json!(tid("wheel"))],
            |v| (v == &json!(true)).then_some(()),
        )
        .await;
    play.wait_shown(&tid("draw-result")).await;
    // Let the toast of the draw's points fade out of the picture.
    play.wait_gone(&tid("toast")).await;
    play.check("wheel").await;
    save("play-wheel.png", play.c.screenshot().await.unwrap());

    play.tab("shop").await;
    play.wait_shown(&tid("product")).await;
    play.check("shop").await;
    save("play-shop.png", play.c.screenshot().await.unwrap());

    play.tab("upload").await;
    play.wait_shown(&tid("upload-row")).await;
    let file = receipt_file(&run, 42);
    play.el(&tid("upload-file"))
        .await
        .send_keys(file.to_str().unwrap())
        .await
        .unwrap();
    play.type_into(&tid("upload-amount"), "68.50").await;
    play.wait_shown(&tid("upload-preview")).await;
    play.check("upload").await;
    save("play-upload.png", play.c.screenshot().await.unwrap());

    play.tab("history").await;
    play.wait_shown(&tid("history-row")).await;
    play.check("history").await;
    save("play-history.png", play.c.screenshot().await.unwrap());
}
