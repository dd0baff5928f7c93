//! Receipts after the hardening round, each test against a behaviour the
//! previous server did not have: receipts are private (signed URLs or the
//! owner's or a merchant's token, `Cache-Control: private`, no GPS left in
//! the file), uploads are streamed and bounded (a slot per upload, a
//! non-image refused on its first bytes), guests have quotas, and
//! maintenance keeps up (every expired row in one pass, orphan images swept
//! on the configured interval, keys checked in batches).
//!
//! Real sockets, a real MariaDB, real images (`common::images`). Where the
//! test must decide when bytes leave the client, the request is written by
//! hand on a plain TCP socket.

mod common;

use common::images::{JPEG_16X8, WEBP_LOSSY_4X3, jpeg_with_gps};
use common::{Answer, TestServer, User, WAIT, answer};
use restaurant_points::Config;
use restaurant_points::config::StorageBackend;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Where `image_url`s point on the test server (no `PUBLIC_BASE_URL`).
const UPLOADS: &str = "/uploads/";
/// What the server's maintenance is given to do its work in (the previous
/// server ran every ten minutes).
const MAINTENANCE_DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Multipart bodies made by hand
// ---------------------------------------------------------------------------

const BOUNDARY: &str = "rpt-hardening-boundary-7c2e91d04a";
const MULTIPART: &str = "multipart/form-data; boundary=rpt-hardening-boundary-7c2e91d04a";

/// The head of the `image` part, up to its first byte.
fn image_part_head(filename: &str, content_type: &str) -> Vec<u8> {
    format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\n\
         Content-Type: {content_type}\r\n\r\n"
    )
    .into_bytes()
}

/// What ends the form.
fn closing() -> Vec<u8> {
    format!("--{BOUNDARY}--\r\n").into_bytes()
}

/// The usual form: an `image` file (type named after its bytes) and an
/// `amount`.
fn receipt_form(image: &[u8], amount: &str) -> Vec<u8> {
    let (filename, content_type) = match image {
        [0xFF, 0xD8, ..] => ("receipt.jpg", "image/jpeg"),
        [b'R', b'I', b'F', b'F', ..] => ("receipt.webp", "image/webp"),
        _ => ("receipt.png", "image/png"),
    };
    let mut body = image_part_head(filename, content_type);
    body.extend_from_slice(image);
    body.extend_from_slice(
        format!("\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"amount\"\r\n\r\n{amount}\r\n")
            .as_bytes(),
    );
    body.extend_from_slice(&closing());
    body
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// An upload through reqwest, with the response's headers.
async fn upload_with_headers(
    server: &TestServer,
    user: &User,
    image: &[u8],
) -> (Answer, reqwest::header::HeaderMap) {
    let res = server
        .http
        .post(server.url("/api/photo/upload"))
        .bearer_auth(&user.access_token)
        .header("content-type", MULTIPART)
        .body(receipt_form(image, "12.50"))
        .send()
        .await
        .expect("the upload is answered");
    let headers = res.headers().clone();
    (Answer::read(res).await, headers)
}

async fn upload(server: &TestServer, user: &User, image: &[u8]) -> Answer {
    upload_with_headers(server, user, image).await.0
}

/// An upload that must be accepted; returns its `data`.
async fn upload_ok(server: &TestServer, user: &User, image: &[u8]) -> Value {
    upload(server, user, image).await.ok().clone()
}

/// A request written by hand on a plain socket: the test decides when each
/// byte of the body leaves, and can read the answer before sending it all.
struct RawUpload {
    stream: TcpStream,
}

impl RawUpload {
    /// Sends the head of `POST /api/photo/upload` announcing a body of
    /// `content_length` bytes, and none of the body.
    async fn start(server: &TestServer, user: &User, content_length: usize) -> RawUpload {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let head = format!(
            "POST /api/photo/upload HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: {MULTIPART}\r\nContent-Length: {content_length}\r\n\r\n",
            server.addr, user.access_token
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.flush().await.unwrap();
        RawUpload { stream }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Reads the answer (head, then `Content-Length` bytes of body). Panics
    /// after `WAIT`: an answer that needs the rest of the body never comes.
    async fn answer(mut self) -> Answer {
        tokio::time::timeout(WAIT, async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                if let Some(at) = find(&buf, b"\r\n\r\n") {
                    break at + 4;
                }
                let n = self
                    .stream
                    .read(&mut chunk)
                    .await
                    .expect("the answer reads");
                assert!(n > 0, "the server closed without an answer: {buf:?}");
                buf.extend_from_slice(&chunk[..n]);
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("a status line: {head}"));
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or_else(|| panic!("the answer has a Content-Length: {head}"));
            while buf.len() < head_end + length {
                let n = self.stream.read(&mut chunk).await.expect("the body reads");
                assert!(n > 0, "the server closed mid-answer");
                buf.extend_from_slice(&chunk[..n]);
            }
            let text = String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string();
            let body = serde_json::from_str(&text).unwrap_or(Value::Null);
            Answer { status, text, body }
        })
        .await
        .expect("the server answers without waiting for the rest of the body")
    }
}

/// `(status, headers, body)` of a GET of a receipt, with an optional token.
async fn get_image(
    server: &TestServer,
    path: &str,
    token: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = server.http.get(server.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.bytes().await.unwrap().to_vec())
}

/// A GET of a receipt that must be refused with this status and code.
async fn assert_image_refused(
    server: &TestServer,
    path: &str,
    token: Option<&str>,
    (status, code): (u16, i64),
    case: &str,
) {
    let (got, _, body) = get_image(server, path, token).await;
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    assert_eq!(
        (got, body["code"].as_i64()),
        (status, Some(code)),
        "{case}: GET {path}: {body}"
    );
}

/// The path of an `image_url`, without its signature.
fn path_of(image_url: &str) -> &str {
    image_url.split('?').next().unwrap()
}

/// The storage key of an `image_url` served by the test server.
fn key_of(image_url: &str) -> &str {
    path_of(image_url)
        .strip_prefix(UPLOADS)
        .unwrap_or_else(|| panic!("image_url is served under /uploads/: {image_url}"))
}

/// `exp` and `sig` of a signed `image_url`.
fn signature_of(image_url: &str) -> (i64, String) {
    let query = image_url
        .split_once('?')
        .unwrap_or_else(|| panic!("image_url is signed: {image_url}"))
        .1;
    let mut exp = None;
    let mut sig = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("exp", v)) => exp = v.parse().ok(),
            Some(("sig", v)) => sig = Some(v.to_string()),
            _ => {}
        }
    }
    (
        exp.unwrap_or_else(|| panic!("image_url has an exp: {image_url}")),
        sig.unwrap_or_else(|| panic!("image_url has a sig: {image_url}")),
    )
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Asserts a cleaned JPEG: no Exif, no GPS, no comment, still SOI…EOI.
fn assert_clean_jpeg(bytes: &[u8], what: &str) {
    for needle in [
        &b"GPS"[..],
        b"Exif",
        b"shot at home",
        b"31.2304N",
        b"121.4737E",
    ] {
        assert_eq!(
            find(bytes, needle),
            None,
            "{what} holds no {:?}",
            String::from_utf8_lossy(needle)
        );
    }
    assert!(bytes.starts_with(&[0xFF, 0xD8]), "{what} starts with SOI");
    assert!(bytes.ends_with(&[0xFF, 0xD9]), "{what} ends with EOI");
}

/// Polls `check` until it holds, failing after `deadline`.
async fn eventually<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < end, "{what} within {deadline:?}");
        // Polling something the server does on its own: nothing to await.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// A local upload directory
// ---------------------------------------------------------------------------

/// A fresh upload directory under the system temp dir, removed on drop.
struct UploadDir(PathBuf);

impl UploadDir {
    fn new() -> UploadDir {
        let dir = std::env::temp_dir().join(format!("rpt-hardening-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).unwrap();
        UploadDir(dir)
    }

    /// Every stored receipt (scratch files of uploads being received live
    /// in `.incoming`, apart).
    fn receipts(&self) -> Vec<PathBuf> {
        files_below(&self.0.join("receipts"))
    }

    /// Scratch files left behind.
    fn scratch(&self) -> Vec<PathBuf> {
        files_below(&self.0.join(".incoming"))
    }

    /// This month's folder, where the orphan sweep looks.
    fn this_month(&self) -> PathBuf {
        let dir = self
            .0
            .join("receipts")
            .join(chrono::Utc::now().format("%Y/%m").to_string());
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

impl Drop for UploadDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn files_below(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out
}

/// Sets a file's modification time two hours back: older than the hour an
/// upload may take, so the orphan sweep considers it.
fn two_hours_old(path: &Path) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(2 * 3600))
        .unwrap();
}

/// A server storing images in a fresh local directory.
async fn start_local_with(adjust: impl FnOnce(&mut Config)) -> (TestServer, UploadDir) {
    let dir = UploadDir::new();
    let path = dir.0.clone();
    let server = TestServer::start_with(|c| {
        c.storage = StorageBackend::Local { dir: path };
        adjust(c);
    })
    .await;
    (server, dir)
}

async fn upload_rows(server: &TestServer, user_id: u64) -> i64 {
    common::count(
        server,
        "SELECT COUNT(*) FROM photo_uploads WHERE user_id = ?",
        user_id,
    )
    .await
}

// ---------------------------------------------------------------------------
// 1. Receipts are private
// ---------------------------------------------------------------------------

// The previous server served `/uploads/...` with `Cache-Control: public,
// max-age=31536000, immutable`, so any shared cache on the way kept a
// guest's receipt for a year.
#[tokio::test]
async fn the_signed_image_url_of_an_upload_serves_the_receipt_without_a_token_and_only_privately() {
    let (server, _dir) = start_local_with(|_| {}).await;
    let guest = server.login_new().await;
    let d = upload_ok(&server, &guest, JPEG_16X8).await;
    let image_url = d["image_url"].as_str().unwrap();
    signature_of(image_url);

    let (status, headers, bytes) = get_image(&server, image_url, None).await;
    assert_eq!(status, 200, "GET {image_url} with no token");
    assert_eq!(bytes, JPEG_16X8, "the receipt");
    assert_eq!(headers["content-type"], "image/jpeg");
    let cache = headers
        .get("cache-control")
        .expect("a Cache-Control header")
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(cache.contains("private"), "Cache-Control: {cache}");
    assert!(!cache.contains("public"), "Cache-Control: {cache}");
    assert!(!cache.contains("immutable"), "Cache-Control: {cache}");
}

// The previous server served any receipt to anyone who had (or guessed)
// its path: no token, another guest's token, all got 200.
#[tokio::test]
async fn without_a_signature_a_receipt_is_served_to_its_owner_and_merchants_only() {
    let (server, _dir) = start_local_with(|_| {}).await;
    let owner = server.login_new().await;
    let other = server.login_new().await;
    let merchant = server.new_merchant().await;
    let d = upload_ok(&server, &owner, JPEG_16X8).await;
    let path = path_of(d["image_url"].as_str().unwrap()).to_string();

    assert_image_refused(&server, &path, None, (401, 4001), "no token").await;
    assert_image_refused(&server, &path, Some(""), (401, 4001), "an empty token").await;
    // Someone else's receipt does not exist, as far as they know.
    assert_image_refused(
        &server,
        &path,
        Some(&other.access_token),
        (404, 2001),
        "another guest",
    )
    .await;
    for (who, user) in [("the owner", &owner), ("a merchant", &merchant)] {
        let (status, headers, bytes) = get_image(&server, &path, Some(&user.access_token)).await;
        assert_eq!(status, 200, "{who}: GET {path}");
        assert_eq!(bytes, JPEG_16X8, "{who} gets the receipt");
        let cache = headers["cache-control"].to_str().unwrap();
        assert!(cache.contains("private"), "{who}: Cache-Control: {cache}");
    }
}

// The previous server ignored the query string: a tampered signature or a
// link past its expiry served the receipt like any other request. The
// expired and the too-long-lived URLs are signed by the server's own key
// (through the harness), so only the expiry check can refuse them.
#[tokio::test]
async fn a_tampered_or_expired_signature_is_refused_and_the_server_asks_for_a_token() {
    let (server, _dir) = start_local_with(|_| {}).await;
    let owner = server.login_new().await;
    let d = upload_ok(&server, &owner, JPEG_16X8).await;
    let image_url = d["image_url"].as_str().unwrap();
    let path = path_of(image_url);
    let key = key_of(image_url);
    let (exp, sig) = signature_of(image_url);
    let (status, _, _) = get_image(&server, image_url, None).await;
    assert_eq!(status, 200, "the URL as given works");

    let mut tampered = sig.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == '0' { '1' } else { '0' });
    let now = chrono::Utc::now();
    // Signed an hour ago: its expiry (now + TTL, rounded up) has passed.
    let expired = server.state.urls.url(key, now - chrono::Duration::hours(1));
    assert!(signature_of(&expired).0 < now.timestamp(), "{expired}");
    // Signed as if tomorrow: valid, but for longer than any URL is given.
    let too_long = server.state.urls.url(key, now + chrono::Duration::days(1));
    let cases = [
        (
            "one hex digit changed",
            format!("{path}?exp={exp}&sig={tampered}"),
        ),
        (
            "another expiry, same sig",
            format!("{path}?exp={}&sig={sig}", exp - 300),
        ),
        ("a signed URL that has expired", expired),
        ("a signed URL beyond the lifetime", too_long),
        ("no sig", format!("{path}?exp={exp}")),
        ("no exp", format!("{path}?sig={sig}")),
        ("an empty sig", format!("{path}?exp={exp}&sig=")),
    ];
    for (case, url) in &cases {
        assert_image_refused(&server, url, None, (401, 4001), case).await;
    }
    // Refused as a signature, not as a request: the owner's token still works.
    let (status, _, bytes) = get_image(&server, &cases[0].1, Some(&owner.access_token)).await;
    assert_eq!(
        (status, bytes.as_slice()),
        (200, JPEG_16X8),
        "a bad signature with the owner's token"
    );
}

// The previous server stored the upload as sent: the Exif segment with the
// guest's GPS position and the comment were kept and served to anyone.
#[tokio::test]
async fn gps_exif_and_comments_are_gone_from_the_stored_and_the_served_jpeg() {
    let (server, dir) = start_local_with(|_| {}).await;
    let guest = server.login_new().await;
    let phone_photo = jpeg_with_gps();
    assert!(
        find(&phone_photo, b"GPS-SECRET").is_some(),
        "the test image carries GPS"
    );

    let d = upload_ok(&server, &guest, &phone_photo).await;
    let image_url = d["image_url"].as_str().unwrap();
    let stored = std::fs::read(dir.0.join(key_of(image_url))).expect("the receipt is on disk");
    assert_clean_jpeg(&stored, "the stored file");
    // Exactly the picture: the Pillow JPEG the metadata was wrapped around.
    assert_eq!(
        stored, JPEG_16X8,
        "the stored file is the image without its metadata"
    );

    let (status, _, served) = get_image(&server, image_url, None).await;
    assert_eq!(status, 200);
    assert_clean_jpeg(&served, "the served image");
    assert_eq!(served, stored, "served as stored");

    let (size,): (u32,) =
        sqlx::query_as("SELECT size_bytes FROM photo_uploads WHERE upload_id = ?")
            .bind(d["upload_id"].as_str().unwrap())
            .fetch_one(&server.db)
            .await
            .unwrap();
    assert_eq!(
        size as usize,
        stored.len(),
        "the row counts the stored bytes"
    );
}

// The previous server's review list gave bare `/uploads/{key}` paths, which
// worked only because receipts were public; now a bare path needs a token,
// so the list must hand out signed URLs an `<img>` tag can show.
#[tokio::test]
async fn the_review_list_gives_merchants_signed_image_urls_that_work_without_a_token() {
    let (server, _dir) = start_local_with(|_| {}).await;
    let guest = server.login_new().await;
    let merchant = server.new_merchant().await;
    let upload_id = upload_ok(&server, &guest, WEBP_LOSSY_4X3).await["upload_id"]
        .as_str()
        .unwrap()
        .to_string();

    // Other tests of this binary add pending uploads too: page until ours.
    let mut item = None;
    for page in 1..=50 {
        let a = answer(
            server
                .http
                .get(server.url(&format!(
                    "/api/merchant/reviews?status=pending&page={page}&page_size=50"
                )))
                .bearer_auth(&merchant.access_token),
        )
        .await;
        let reviews = a.ok()["reviews"].as_array().unwrap().clone();
        if reviews.is_empty() {
            break;
        }
        item = reviews
            .into_iter()
            .find(|r| r["upload_id"] == upload_id.as_str());
        if item.is_some() {
            break;
        }
    }
    let item = item.expect("the upload is in the merchant's queue");
    let image_url = item["image_url"].as_str().unwrap();
    let (exp, sig) = signature_of(image_url);
    assert!(
        exp > chrono::Utc::now().timestamp(),
        "{image_url} is not expired"
    );
    assert_eq!(sig.len(), 32, "{image_url}");
    assert!(sig.chars().all(|c| c.is_ascii_hexdigit()), "{image_url}");

    let (status, headers, bytes) = get_image(&server, image_url, None).await;
    assert_eq!(status, 200, "GET {image_url} with no token");
    assert_eq!(bytes, WEBP_LOSSY_4X3);
    assert_eq!(headers["content-type"], "image/webp");
    // The signature is what lets it through.
    assert_image_refused(
        &server,
        path_of(image_url),
        None,
        (401, 4001),
        "the bare path",
    )
    .await;
}

// ---------------------------------------------------------------------------
// 2. Uploads are streamed and bounded
// ---------------------------------------------------------------------------

// The previous server had no bound on uploads in flight (each held whole in
// memory): the second upload was simply received, never told 503/2010.
#[tokio::test]
async fn with_one_upload_slot_a_second_upload_waits_2_s_then_gets_503_with_2010_and_retry_after() {
    let (server, dir) = start_local_with(|c| c.upload_max_in_flight = 1).await;
    let slow = server.login_new().await;
    let second = server.login_new().await;

    // The first upload sends all of its form but the closing boundary: its
    // handler holds the slot, waiting for the rest.
    let body = receipt_form(JPEG_16X8, "12.50");
    let tail = closing();
    let (sent, held_back) = body.split_at(body.len() - tail.len());
    let mut first = RawUpload::start(&server, &slow, body.len()).await;
    let (part_head, rest) = sent.split_at(image_part_head("receipt.jpg", "image/jpeg").len() + 100);
    first.send(part_head).await;
    first.send(rest).await;
    eventually("the first upload takes the slot", WAIT, || {
        std::future::ready(server.state.uploads.available_permits() == 0)
    })
    .await;

    let started = Instant::now();
    let (a, headers) = upload_with_headers(&server, &second, JPEG_16X8).await;
    let waited = started.elapsed();
    assert_eq!((a.status, a.code()), (503, 2010), "{}", a.text);
    assert_eq!(
        headers.get("retry-after").map(|v| v.to_str().unwrap()),
        Some("1"),
        "503 says when to retry"
    );
    assert!(
        waited >= Duration::from_millis(1900),
        "the second upload waited for a slot before giving up: {waited:?}"
    );
    assert_eq!(
        upload_rows(&server, second.user_id).await,
        0,
        "nothing recorded"
    );

    // Only now does the first upload end: it is stored, and the slot is free.
    first.send(held_back).await;
    let a = first.answer().await;
    a.ok();
    assert_eq!(upload_rows(&server, slow.user_id).await, 1);
    upload_ok(&server, &second, JPEG_16X8).await;
    assert_eq!(upload_rows(&server, second.user_id).await, 1);
    assert_eq!(dir.receipts().len(), 2, "the two accepted uploads");
    assert_eq!(
        server.state.uploads.available_permits(),
        1,
        "the slot is back"
    );
}

// The previous server had no bound at all; without one per guest, one
// account sending slowly could hold every slot the others share.
#[tokio::test]
async fn one_guest_may_send_two_uploads_at_once_and_a_third_is_told_to_retry_at_once() {
    let (server, _dir) = start_local_with(|_| {}).await;
    let guest = server.login_new().await;
    let other = server.login_new().await;

    let body = receipt_form(JPEG_16X8, "12.50");
    let tail = closing();
    let (sent, held_back) = body.split_at(body.len() - tail.len());
    let slots = server.state.uploads.available_permits();
    let mut held = Vec::new();
    for n in 1..=2 {
        let mut up = RawUpload::start(&server, &guest, body.len()).await;
        up.send(sent).await;
        eventually("the upload takes a slot", WAIT, || {
            std::future::ready(server.state.uploads.available_permits() == slots - n)
        })
        .await;
        held.push(up);
    }

    let started = Instant::now();
    let (a, headers) = upload_with_headers(&server, &guest, JPEG_16X8).await;
    assert_eq!((a.status, a.code()), (503, 2010), "{}", a.text);
    assert_eq!(
        headers.get("retry-after").map(|v| v.to_str().unwrap()),
        Some("1")
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "refused at once, not after waiting for a shared slot"
    );
    upload_ok(&server, &other, JPEG_16X8).await;

    for mut up in held {
        up.send(held_back).await;
        up.answer().await.ok();
    }
    upload_ok(&server, &guest, JPEG_16X8).await;
    assert_eq!(upload_rows(&server, guest.user_id).await, 3);
}

// The previous server read the whole body into memory before looking at
// it: with the rest of the body never sent, it never answered.
#[tokio::test]
async fn a_non_image_is_refused_with_5003_on_its_first_bytes_without_waiting_for_the_rest() {
    let (server, dir) = start_local_with(|c| {
        // So that only the server's own decision can answer in time.
        c.http.body_timeout = Duration::from_secs(300);
    })
    .await;
    let guest = server.login_new().await;

    let mut first_chunk = image_part_head("receipt.jpg", "image/jpeg");
    first_chunk.extend_from_slice(b"hello, not an image; ");
    first_chunk.extend_from_slice(&b"just text ".repeat(400));
    // The form it announces: a megabyte more of this, then the amount.
    let announced = first_chunk.len() + 1024 * 1024 + 200;
    let mut upload = RawUpload::start(&server, &guest, announced).await;
    upload.send(&first_chunk).await;

    let a = upload.answer().await;
    assert_eq!((a.status, a.code()), (400, 5003), "{}", a.text);
    assert_eq!(upload_rows(&server, guest.user_id).await, 0, "no row");
    assert_eq!(dir.receipts(), Vec::<PathBuf>::new(), "no file");
    assert_eq!(dir.scratch(), Vec::<PathBuf>::new(), "no scratch file left");
}

// ---------------------------------------------------------------------------
// 3. Quotas
// ---------------------------------------------------------------------------

// The previous server had no upload quotas: the fourth upload was stored.
#[tokio::test]
async fn with_a_daily_limit_of_3_the_fourth_upload_of_the_day_is_refused_with_5004_and_stores_nothing()
 {
    let (server, dir) = start_local_with(|c| c.upload_daily_limit = 3).await;
    let guest = server.login_new().await;
    for _ in 0..3 {
        upload_ok(&server, &guest, JPEG_16X8).await;
    }
    let a = upload(&server, &guest, JPEG_16X8).await;
    assert_eq!((a.status, a.code()), (429, 5004), "{}", a.text);
    assert_eq!(
        upload_rows(&server, guest.user_id).await,
        3,
        "no fourth row"
    );
    assert_eq!(dir.receipts().len(), 3, "no fourth file");
    assert_eq!(dir.scratch(), Vec::<PathBuf>::new(), "no scratch file");

    // Told before the image is sent: the head alone gets the answer.
    let a = RawUpload::start(&server, &guest, 64 * 1024)
        .await
        .answer()
        .await;
    assert_eq!((a.status, a.code()), (429, 5004), "{}", a.text);

    // Another guest's day is their own.
    let other = server.login_new().await;
    upload_ok(&server, &other, JPEG_16X8).await;
}

// The previous server let a guest pile up any number of pending receipts.
#[tokio::test]
async fn with_two_uploads_pending_a_third_is_refused_with_5005_until_the_merchant_reviews_one() {
    let (server, dir) = start_local_with(|c| c.upload_pending_limit = 2).await;
    let guest = server.login_new().await;
    let merchant = server.new_merchant().await;
    let first = upload_ok(&server, &guest, JPEG_16X8).await["upload_id"]
        .as_str()
        .unwrap()
        .to_string();
    upload_ok(&server, &guest, WEBP_LOSSY_4X3).await;

    let a = upload(&server, &guest, JPEG_16X8).await;
    assert_eq!((a.status, a.code()), (429, 5005), "{}", a.text);
    assert_eq!(upload_rows(&server, guest.user_id).await, 2, "no third row");
    assert_eq!(dir.receipts().len(), 2, "no third file");

    let a = answer(
        server
            .http
            .post(server.url("/api/merchant/review"))
            .bearer_auth(&merchant.access_token)
            .json(&json!({ "upload_id": first, "action": "approve" })),
    )
    .await;
    a.ok();
    let d = upload_ok(&server, &guest, JPEG_16X8).await;
    assert_eq!(d["review_status"], "pending");
    assert_eq!(upload_rows(&server, guest.user_id).await, 3);
}

// The previous server counted no bytes: an upload past the cap was stored.
#[tokio::test]
async fn an_upload_that_would_pass_the_daily_byte_cap_is_refused_with_5004_and_one_that_fits_is_not()
 {
    // Five JPEGs and one WebP fill the cap exactly.
    let jpeg = JPEG_16X8.len() as u64;
    let webp = WEBP_LOSSY_4X3.len() as u64;
    let cap = 5 * jpeg + webp;
    let (server, dir) = start_local_with(|c| c.upload_daily_bytes = cap).await;
    let guest = server.login_new().await;
    for _ in 0..5 {
        upload_ok(&server, &guest, JPEG_16X8).await;
    }
    let (stored,): (i64,) = sqlx::query_as(
        "SELECT CAST(SUM(size_bytes) AS SIGNED) FROM photo_uploads WHERE user_id = ?",
    )
    .bind(guest.user_id)
    .fetch_one(&server.db)
    .await
    .unwrap();
    assert_eq!(stored as u64, 5 * jpeg, "the quota counts what is stored");

    // A sixth JPEG would pass the cap by jpeg - webp bytes.
    let a = upload(&server, &guest, JPEG_16X8).await;
    assert_eq!((a.status, a.code()), (429, 5004), "{}", a.text);
    assert_eq!(upload_rows(&server, guest.user_id).await, 5, "no row");
    assert_eq!(dir.receipts().len(), 5, "its file was removed");
    assert_eq!(dir.scratch(), Vec::<PathBuf>::new(), "no scratch file");

    // The smaller WebP still fits, to the byte.
    upload_ok(&server, &guest, WEBP_LOSSY_4X3).await;
    assert_eq!(upload_rows(&server, guest.user_id).await, 6);
}

// ---------------------------------------------------------------------------
// 4. Maintenance keeps up
// ---------------------------------------------------------------------------

/// Every server with a short maintenance interval prunes the whole test
/// database; two at once would share the work and blur what one pass does.
static MAINTENANCE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `SELECT n FROM (…)`: the numbers 0..`below` (below ≤ 100 000), from
/// digits cross joined — portable, and not bound by
/// `max_recursive_iterations` (1000 by default in MariaDB).
fn numbers_below(below: u32) -> String {
    let digits = "(SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 \
                  UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 \
                  UNION ALL SELECT 8 UNION ALL SELECT 9)";
    format!(
        "(SELECT a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 10000 * f.d AS n \
         FROM {digits} a CROSS JOIN {digits} b CROSS JOIN {digits} c \
         CROSS JOIN {digits} e CROSS JOIN {digits} f) AS numbers WHERE n < {below}"
    )
}

// The previous server deleted at most 5 000 rows per table per pass (one
// DELETE … LIMIT 5000), and passed every ten minutes: 12 000 expired keys
// and events took three passes, half an hour. Here the orphan image that
// ends a pass is gone only when that pass has drained both tables.
#[tokio::test]
async fn one_maintenance_pass_deletes_every_expired_key_and_event_however_many_and_keeps_fresh_ones()
 {
    const OLD: u32 = 12_000;
    let _one_at_a_time = MAINTENANCE.lock().await;
    // A server with the default interval (no pass during the test) to log
    // in and to own the rows.
    let mut setup = TestServer::start().await;
    let user = setup.login_new().await;
    let retention_days = setup.state.config.event_retention.as_secs() / 86_400;

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO idempotency_keys (user_id, idem_key, fingerprint, response, created_at) \
         SELECT ?, CONCAT('expired-', n), 'fp', '{{}}', UTC_TIMESTAMP(3) - INTERVAL 72 HOUR FROM {}",
        numbers_below(OLD)
    )))
    .bind(user.user_id)
    .execute(&setup.db)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO user_events (user_id, seq, type, frame, created_at) \
         SELECT ?, 1000000 + n, 'points_update', '{{}}', UTC_TIMESTAMP(3) - INTERVAL ? DAY FROM {}",
        numbers_below(OLD)
    )))
    .bind(user.user_id)
    .bind(retention_days + 10)
    .execute(&setup.db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO idempotency_keys (user_id, idem_key, fingerprint, response, created_at) \
         VALUES (?, 'fresh', 'fp', '{}', UTC_TIMESTAMP(3) - INTERVAL 1 HOUR)",
    )
    .bind(user.user_id)
    .execute(&setup.db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO user_events (user_id, seq, type, frame, created_at) \
         VALUES (?, 2000000, 'points_update', '{}', UTC_TIMESTAMP(3) - INTERVAL 1 DAY)",
    )
    .bind(user.user_id)
    .execute(&setup.db)
    .await
    .unwrap();
    let expired_keys =
        "SELECT COUNT(*) FROM idempotency_keys WHERE user_id = ? AND idem_key LIKE 'expired-%'";
    let expired_events =
        "SELECT COUNT(*) FROM user_events WHERE user_id = ? AND seq BETWEEN 1000000 AND 1999999";
    assert_eq!(
        common::count(&setup, expired_keys, user.user_id).await,
        OLD as i64
    );
    assert_eq!(
        common::count(&setup, expired_events, user.user_id).await,
        OLD as i64
    );

    // The orphan sweep is a pass's last step: when this file is gone, a
    // whole pass has run.
    let dir = UploadDir::new();
    let end_of_pass = dir.this_month().join(format!("{}.jpg", ulid::Ulid::new()));
    std::fs::write(&end_of_pass, JPEG_16X8).unwrap();
    two_hours_old(&end_of_pass);

    let path = dir.0.clone();
    let mut server = TestServer::start_with(|c| {
        c.storage = StorageBackend::Local { dir: path };
        c.maintenance_interval = Duration::from_millis(500);
    })
    .await;
    eventually("a maintenance pass ends", MAINTENANCE_DEADLINE, || {
        std::future::ready(!end_of_pass.exists())
    })
    .await;
    assert_eq!(
        common::count(&server, expired_keys, user.user_id).await,
        0,
        "one pass deleted every expired idempotency key"
    );
    assert_eq!(
        common::count(&server, expired_events, user.user_id).await,
        0,
        "one pass deleted every expired event"
    );
    assert_eq!(
        common::count(
            &server,
            "SELECT COUNT(*) FROM idempotency_keys WHERE user_id = ? AND idem_key = 'fresh'",
            user.user_id
        )
        .await,
        1,
        "a key of the last 48 hours stays"
    );
    assert_eq!(
        common::count(
            &server,
            "SELECT COUNT(*) FROM user_events WHERE user_id = ? AND seq = 2000000",
            user.user_id
        )
        .await,
        1,
        "an event within the retention stays"
    );
    server.stop().await;
    setup.stop().await;
}

// The previous server swept orphans once at start and then every ten
// minutes, one query per image: images orphaned after the start stayed.
// Here they appear after the server started, more of them than one batch
// of keys (1 000), beside an equally old image that an upload row names.
#[tokio::test]
async fn the_orphan_sweep_deletes_old_images_that_no_upload_names_and_keeps_the_one_that_is_named()
{
    const ORPHANS: usize = 1_002;
    let _one_at_a_time = MAINTENANCE.lock().await;
    let (mut server, dir) = start_local_with(|c| {
        c.maintenance_interval = Duration::from_millis(300);
    })
    .await;
    let guest = server.login_new().await;
    let d = upload_ok(&server, &guest, JPEG_16X8).await;
    let named = dir.0.join(key_of(d["image_url"].as_str().unwrap()));
    two_hours_old(&named);

    let month = dir.this_month();
    let orphans: Vec<PathBuf> = (0..ORPHANS)
        .map(|_| {
            let path = month.join(format!("{}.jpg", ulid::Ulid::new()));
            std::fs::write(&path, JPEG_16X8).unwrap();
            two_hours_old(&path);
            path
        })
        .collect();
    eventually("every orphan is swept", MAINTENANCE_DEADLINE, || {
        std::future::ready(orphans.iter().all(|p| !p.exists()))
    })
    .await;

    // One more orphan, gone only in a later pass: the pass that swept the
    // others (and judged the named image) is over.
    let later = month.join(format!("{}.jpg", ulid::Ulid::new()));
    std::fs::write(&later, JPEG_16X8).unwrap();
    two_hours_old(&later);
    eventually("the next pass sweeps", MAINTENANCE_DEADLINE, || {
        std::future::ready(!later.exists())
    })
    .await;

    assert!(named.exists(), "the image an upload names stays");
    assert_eq!(dir.receipts(), vec![named.clone()], "and only it");
    let (status, _, bytes) = get_image(&server, d["image_url"].as_str().unwrap(), None).await;
    assert_eq!((status, bytes.as_slice()), (200, JPEG_16X8), "still served");
    server.stop().await;
}
