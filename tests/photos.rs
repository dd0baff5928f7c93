//! Receipt photos end to end: real PNG, JPEG and WebP uploads stored in a
//! local directory and in a real S3-compatible server, the refusals that
//! leave neither a row nor a file behind, the points estimate, the
//! merchant's review queue and verdicts with the events they push (live and
//! replayed by `sync`), a review raced by two merchants, the statistics, and
//! the `make-merchant` command of the real binary.

mod common;

use common::{Answer, TestServer, User, WAIT, WsClient, answer, raw_values};
use protocol::ServerFrame;
use restaurant_points::Config;
use restaurant_points::config::{Secret, StorageBackend};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::MySqlPool;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Barrier;

/// A new user's register bonus.
const START_POINTS: i64 = 1000;
/// The demo merchant seeded in development (`src/seed.rs`).
const MERCHANT_PHONE: &str = "13900000000";
/// Where `image_url`s point on the test server (no `PUBLIC_BASE_URL`).
const UPLOADS: &str = "/uploads/";

// ---------------------------------------------------------------------------
// Images made by hand
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

/// A complete, decodable 8-bit RGB PNG: IHDR, one IDAT holding a zlib
/// stream with a single stored (uncompressed) deflate block, IEND.
fn png(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    // Bit depth 8, colour type 2 (RGB), deflate, filter 0, no interlace.
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);

    let mut raw = Vec::new();
    for y in 0..height {
        raw.push(0); // filter type None
        for x in 0..width {
            raw.extend_from_slice(&[(x * 37) as u8, (y * 53) as u8, 0x80]);
        }
    }
    let len = u16::try_from(raw.len()).expect("one stored block holds the pixels");
    let mut zlib = vec![0x78, 0x01, 0x01]; // zlib header; final stored block
    zlib.extend_from_slice(&len.to_le_bytes());
    zlib.extend_from_slice(&(!len).to_le_bytes());
    zlib.extend_from_slice(&raw);
    zlib.extend_from_slice(&adler32(&raw).to_be_bytes());

    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &zlib);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A real 16×8 JPEG (see `common::images`).
fn jpeg() -> Vec<u8> {
    common::images::JPEG_16X8.to_vec()
}

/// A real 4×3 WebP (see `common::images`).
fn webp() -> Vec<u8> {
    common::images::WEBP_LOSSY_4X3.to_vec()
}

/// The classic 1×1 transparent GIF: a real image, of a refused kind.
const GIF: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;";

#[test]
fn the_hand_made_checksums_match_their_published_check_values() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
    // The IEND chunk of every PNG ever written.
    assert!(png(1, 1).ends_with(b"\0\0\0\0IEND\xaeB`\x82"));
}

// ---------------------------------------------------------------------------
// Multipart bodies made by hand
// ---------------------------------------------------------------------------

const BOUNDARY: &str = "rpt-test-boundary-5d1c0f9a2b7e4c83";
const MULTIPART: &str = "multipart/form-data; boundary=rpt-test-boundary-5d1c0f9a2b7e4c83";

enum Part<'a> {
    Text(&'a str, &'a str),
    File {
        name: &'a str,
        filename: &'a str,
        content_type: &'a str,
        bytes: &'a [u8],
    },
}

fn multipart(parts: &[Part]) -> Vec<u8> {
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match part {
            Part::Text(name, value) => {
                body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}")
                        .as_bytes(),
                );
            }
            Part::File {
                name,
                filename,
                content_type,
                bytes,
            } => {
                body.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n\
                         Content-Type: {content_type}\r\n\r\n"
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(bytes);
            }
        }
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// The usual form: an `image` file and an `amount`.
fn receipt_form(image: &[u8], filename: &str, content_type: &str, amount: &str) -> Vec<u8> {
    multipart(&[
        Part::File {
            name: "image",
            filename,
            content_type,
            bytes: image,
        },
        Part::Text("amount", amount),
    ])
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A REST answer with its raw text, for checks on how numbers are written.
/// `POST /api/photo/upload` with any body and content type.
async fn post_upload(
    server: &TestServer,
    token: Option<&str>,
    content_type: &str,
    body: Vec<u8>,
) -> Answer {
    let mut req = server
        .http
        .post(server.url("/api/photo/upload"))
        .header("content-type", content_type)
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    answer(req).await
}

/// Uploads `image` as `receipt.<ext>` with `amount`.
async fn upload(server: &TestServer, user: &User, image: &[u8], amount: &str) -> Answer {
    let (filename, content_type) = match image {
        [0xFF, 0xD8, ..] => ("receipt.jpg", "image/jpeg"),
        [b'R', b'I', b'F', b'F', ..] => ("receipt.webp", "image/webp"),
        _ => ("receipt.png", "image/png"),
    };
    post_upload(
        server,
        Some(&user.access_token),
        MULTIPART,
        receipt_form(image, filename, content_type, amount),
    )
    .await
}

/// An upload that must succeed; returns its `data`.
async fn upload_ok(server: &TestServer, user: &User, image: &[u8], amount: &str) -> Value {
    let a = upload(server, user, image, amount).await;
    assert_eq!(
        (a.status, a.code()),
        (200, 0),
        "upload of {amount}: {}",
        a.text
    );
    a.data().clone()
}

/// A PNG receipt for `amount` that must be accepted; returns its upload id.
async fn receipt(server: &TestServer, user: &User, amount: &str) -> String {
    upload_ok(server, user, &png(2, 2), amount).await["upload_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The storage key of an `image_url` served by the test server (a signed
/// URL: the key, then `?exp=…&sig=…`).
fn key_of(image_url: &str) -> &str {
    let path = image_url.split('?').next().unwrap_or(image_url);
    path.strip_prefix(UPLOADS)
        .unwrap_or_else(|| panic!("image_url is served under /uploads/: {image_url}"))
}

async fn fetch(http: &reqwest::Client, url: &str) -> (u16, Option<String>, Vec<u8>) {
    let res = http.get(url).send().await.unwrap();
    let status = res.status().as_u16();
    let content_type = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    (status, content_type, res.bytes().await.unwrap().to_vec())
}

/// A fresh upload directory under the system temp dir, removed on drop.
struct UploadDir(PathBuf);

impl UploadDir {
    fn new() -> UploadDir {
        let dir = std::env::temp_dir().join(format!("rpt-photos-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).unwrap();
        UploadDir(dir)
    }

    /// Every file below the directory.
    fn files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.0, &mut out);
        out
    }
}

impl Drop for UploadDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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

async fn start_local() -> (TestServer, UploadDir) {
    start_local_with(|_| {}).await
}

async fn upload_rows(server: &TestServer, user_id: u64) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM photo_uploads WHERE user_id = ?")
        .bind(user_id)
        .fetch_one(&server.db)
        .await
        .unwrap();
    n
}

/// A refused upload leaves neither a row nor a file.
async fn assert_nothing_stored(server: &TestServer, dir: &UploadDir, user: &User, case: &str) {
    assert_eq!(upload_rows(server, user.user_id).await, 0, "{case}: no row");
    assert_eq!(dir.files(), Vec::<PathBuf>::new(), "{case}: no file");
}

async fn merchant(server: &TestServer) -> User {
    server.login(MERCHANT_PHONE).await
}

async fn post_review(http: &reqwest::Client, url: &str, token: &str, body: Value) -> Answer {
    answer(http.post(url).bearer_auth(token).json(&body)).await
}

async fn review(server: &TestServer, merchant: &User, body: Value) -> Answer {
    post_review(
        &server.http,
        &server.url("/api/merchant/review"),
        &merchant.access_token,
        body,
    )
    .await
}

/// A review that must succeed; returns its `data`.
async fn review_ok(server: &TestServer, merchant: &User, body: Value) -> Value {
    let a = review(server, merchant, body.clone()).await;
    assert_eq!((a.status, a.code()), (200, 0), "review {body}: {}", a.text);
    a.data().clone()
}

async fn get_answer(server: &TestServer, path: &str, user: &User) -> Answer {
    answer(
        server
            .http
            .get(server.url(path))
            .bearer_auth(&user.access_token),
    )
    .await
}

/// `(review_status, points_awarded, review_reason, reviewer_id)` of an upload.
async fn upload_state(
    server: &TestServer,
    upload_id: &str,
) -> (String, Option<u32>, Option<String>, Option<u64>) {
    sqlx::query_as(
        "SELECT CAST(review_status AS CHAR), points_awarded, review_reason, reviewer_id \
         FROM photo_uploads WHERE upload_id = ?",
    )
    .bind(upload_id)
    .fetch_one(&server.db)
    .await
    .unwrap()
}

/// `(type, points, balance_after, related_id)` of a user's `photo_upload`
/// ledger rows, oldest first.
async fn photo_ledger(
    server: &TestServer,
    user_id: u64,
) -> Vec<(String, i64, i64, Option<String>)> {
    sqlx::query_as(
        "SELECT CAST(type AS CHAR), points, balance_after, related_id FROM points_records \
         WHERE user_id = ? AND source = 'photo_upload' ORDER BY record_id",
    )
    .bind(user_id)
    .fetch_all(&server.db)
    .await
    .unwrap()
}

fn welcome_seq(ws: &WsClient) -> u64 {
    ws.welcome.as_ref().unwrap().data["last_seq"]
        .as_u64()
        .expect("welcome carries last_seq")
}

/// The next of the user's own events (`review_result`, `points_update`),
/// in arrival order.
async fn next_user_event(ws: &mut WsClient) -> ServerFrame {
    loop {
        let f = ws.next().await;
        if matches!(f.kind.as_str(), "review_result" | "points_update") {
            return f;
        }
    }
}

fn masked(phone: &str) -> String {
    format!("{}****{}", &phone[..3], &phone[7..])
}

async fn statistics(server: &TestServer, merchant: &User) -> Value {
    let (status, body) = server
        .get("/api/merchant/statistics", Some(&merchant.access_token))
        .await;
    assert_eq!((status, body["code"].as_i64()), (200, Some(0)), "{body}");
    body["data"].clone()
}

// ---------------------------------------------------------------------------
// Uploads
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_png_a_jpeg_and_a_webp_are_stored_under_server_chosen_names_and_served_back() {
    let (server, dir) = start_local().await;
    let user = server.login_new().await;
    // (bytes, the client's file name, type, the stored extension, size)
    let images = [
        (png(3, 2), "IMG_2041.png", "image/png", "png", (3, 2)),
        (jpeg(), "IMG_2042.jpg", "image/jpeg", "jpg", (16, 8)),
        (webp(), "IMG_2043.webp", "image/webp", "webp", (4, 3)),
    ];

    let mut ids = Vec::new();
    for (n, (bytes, filename, content_type, ext, (width, height))) in images.iter().enumerate() {
        let a = post_upload(
            &server,
            Some(&user.access_token),
            MULTIPART,
            receipt_form(bytes, filename, content_type, "12.50"),
        )
        .await;
        assert_eq!((a.status, a.code()), (200, 0), "{filename}: {}", a.text);
        let d = a.data();
        let mut fields: Vec<&str> = d.as_object().unwrap().keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "estimated_points",
                "image_url",
                "message",
                "review_status",
                "upload_id"
            ],
            "{d}"
        );
        assert_eq!(d["estimated_points"], 125, "{d}");
        assert_eq!(d["review_status"], "pending", "{d}");
        assert!(!d["message"].as_str().unwrap().is_empty(), "{d}");
        let upload_id = d["upload_id"].as_str().unwrap().to_string();
        let image_url = d["image_url"].as_str().unwrap();

        // On disk under the server's name, with exactly the bytes sent
        // (these carry no metadata, so cleaning leaves them as they are).
        let key = key_of(image_url);
        let stored = dir.0.join(key);
        assert_eq!(
            stored.file_name().unwrap().to_str().unwrap(),
            format!("{upload_id}.{ext}"),
            "named by the server"
        );
        assert!(
            !image_url.contains(filename),
            "the client's name is not used"
        );
        assert_eq!(
            std::fs::read(&stored).unwrap(),
            *bytes,
            "{filename} on disk"
        );
        assert_eq!(dir.files().len(), n + 1, "one file per upload");

        // Served back with the type its bytes say.
        let (status, served_type, served) = fetch(&server.http, &server.url(image_url)).await;
        assert_eq!(status, 200, "GET {image_url}");
        assert_eq!(served_type.as_deref(), Some(*content_type));
        assert_eq!(served, *bytes, "GET {image_url} returns the upload");

        let row: (String, String, u32, u32, u32, u32, u32) = sqlx::query_as(
            "SELECT storage_key, content_type, size_bytes, width, height, amount_cents, estimated_points \
             FROM photo_uploads WHERE upload_id = ? AND user_id = ?",
        )
        .bind(&upload_id)
        .bind(user.user_id)
        .fetch_one(&server.db)
        .await
        .unwrap();
        assert_eq!(
            row,
            (
                key.to_string(),
                content_type.to_string(),
                bytes.len() as u32,
                *width,
                *height,
                1250,
                125
            )
        );
        ids.push(upload_id);
    }

    // The guest's history lists them, newest first, amounts with two places.
    let a = get_answer(&server, "/api/photo/history", &user).await;
    assert_eq!((a.status, a.code()), (200, 0), "{}", a.text);
    let uploads = a.data()["uploads"].as_array().unwrap();
    let listed: Vec<&str> = uploads
        .iter()
        .map(|u| u["upload_id"].as_str().unwrap())
        .collect();
    ids.reverse();
    assert_eq!(listed, ids, "newest first");
    for u in uploads {
        assert_eq!(u["review_status"], "pending", "{u}");
        assert_eq!(u["estimated_points"], 125, "{u}");
        assert_eq!(u["amount"].as_f64(), Some(12.5), "{u}");
        assert!(u["image_url"].as_str().unwrap().starts_with(UPLOADS), "{u}");
        assert!(u["created_at"].is_string(), "{u}");
    }
    assert_eq!(raw_values(&a.text, "amount"), ["12.50"; 3], "{}", a.text);
    assert_eq!(a.data()["pagination"]["total"], 3);
    let a = get_answer(&server, "/api/photo/history?status=approved", &user).await;
    assert_eq!(a.data()["uploads"], json!([]), "{}", a.text);
}

#[tokio::test]
async fn an_image_is_judged_by_its_bytes_so_text_named_receipt_png_and_a_gif_are_refused() {
    let (server, dir) = start_local().await;
    let user = server.login_new().await;
    let cases: [(&str, &[u8], &str, &str); 4] = [
        (
            "text named receipt.png",
            b"hello, I am a receipt, honestly",
            "receipt.png",
            "image/png",
        ),
        ("a GIF", GIF, "receipt.gif", "image/gif"),
        ("a GIF named receipt.png", GIF, "receipt.png", "image/png"),
        (
            "a bare PNG signature",
            b"\x89PNG\r\n\x1a\n",
            "receipt.png",
            "image/png",
        ),
    ];
    for (case, bytes, filename, content_type) in cases {
        let a = post_upload(
            &server,
            Some(&user.access_token),
            MULTIPART,
            receipt_form(bytes, filename, content_type, "12.50"),
        )
        .await;
        assert_eq!((a.status, a.code()), (400, 5003), "{case}: {}", a.text);
        assert_eq!(a.data(), &Value::Null, "{case}");
        assert_nothing_stored(&server, &dir, &user, case).await;
    }
}

#[tokio::test]
async fn an_upload_without_an_image_or_with_an_empty_one_is_refused() {
    let (server, dir) = start_local().await;
    let user = server.login_new().await;
    let cases = [
        (
            "no image field",
            multipart(&[Part::Text("amount", "12.50")]),
        ),
        (
            "an empty image",
            receipt_form(b"", "receipt.png", "image/png", "12.50"),
        ),
        (
            "the image under another name",
            multipart(&[
                Part::File {
                    name: "photo",
                    filename: "receipt.png",
                    content_type: "image/png",
                    bytes: &png(2, 2),
                },
                Part::Text("amount", "12.50"),
            ]),
        ),
    ];
    for (case, body) in cases {
        let a = post_upload(&server, Some(&user.access_token), MULTIPART, body).await;
        assert_eq!((a.status, a.code()), (400, 5001), "{case}: {}", a.text);
        assert_nothing_stored(&server, &dir, &user, case).await;
    }
}

#[tokio::test]
async fn amounts_outside_the_contract_are_refused_and_store_nothing() {
    let (server, dir) = start_local().await;
    let user = server.login_new().await;
    let image = png(2, 2);
    for amount in [
        "abc", "", "NaN", "0.001", "0", "0.00", "10000", "-1", "1e3", "１２", "12.5.0", "1,5",
    ] {
        let a = upload(&server, &user, &image, amount).await;
        assert_eq!((a.status, a.code()), (400, 5002), "{amount:?}: {}", a.text);
        assert_nothing_stored(&server, &dir, &user, amount).await;
    }
    let a = post_upload(
        &server,
        Some(&user.access_token),
        MULTIPART,
        multipart(&[Part::File {
            name: "image",
            filename: "receipt.png",
            content_type: "image/png",
            bytes: &image,
        }]),
    )
    .await;
    assert_eq!((a.status, a.code()), (400, 5002), "no amount: {}", a.text);
    assert_nothing_stored(&server, &dir, &user, "no amount").await;
}

#[tokio::test]
async fn an_upload_over_the_size_cap_gets_413_with_code_2004_and_one_under_it_is_stored() {
    const CAP: usize = 64 * 1024;
    let (server, dir) = start_local_with(|c| c.upload_max_bytes = CAP).await;
    let user = server.login_new().await;

    let mut big = png(2, 2);
    big.resize(200 * 1024, 0);
    let a = upload(&server, &user, &big, "12.50").await;
    assert_eq!(a.status, 413, "{}", a.text);
    assert_eq!(a.code(), 2004, "the envelope carries 2004: {}", a.text);
    assert_eq!(a.data(), &Value::Null);
    assert_nothing_stored(&server, &dir, &user, "200 KiB").await;

    // 100 × 200 RGB pixels stored raw: just under 64 KiB.
    let near = png(100, 200);
    assert!(
        near.len() < CAP && near.len() > CAP - 6 * 1024,
        "{}",
        near.len()
    );
    upload_ok(&server, &user, &near, "12.50").await;
    assert_eq!(upload_rows(&server, user.user_id).await, 1);
    assert_eq!(dir.files().len(), 1);
}

#[tokio::test]
async fn a_body_that_is_not_multipart_is_refused_with_400() {
    let (server, dir) = start_local().await;
    let user = server.login_new().await;
    let cases = [
        (
            "JSON",
            "application/json",
            br#"{"image":"iVBORw0KGgo=","amount":"12.50"}"#.to_vec(),
        ),
        (
            "multipart without a boundary",
            "multipart/form-data",
            png(2, 2),
        ),
        ("raw PNG bytes", "image/png", png(2, 2)),
    ];
    for (case, content_type, body) in cases {
        let a = post_upload(&server, Some(&user.access_token), content_type, body).await;
        assert_eq!(a.status, 400, "{case}: {}", a.text);
        assert_eq!(a.code(), 2000, "{case}: {}", a.text);
        assert_nothing_stored(&server, &dir, &user, case).await;
    }
}

#[tokio::test]
async fn an_upload_without_a_token_is_refused_with_401() {
    let (server, dir) = start_local().await;
    let a = post_upload(
        &server,
        None,
        MULTIPART,
        receipt_form(&png(2, 2), "receipt.png", "image/png", "12.50"),
    )
    .await;
    assert_eq!((a.status, a.code()), (401, 4001), "{}", a.text);
    assert!(dir.files().is_empty());
}

#[tokio::test]
async fn estimated_points_are_the_floor_of_ten_times_the_amount() {
    let (server, _dir) = start_local().await;
    let user = server.login_new().await;
    for (amount, cents, points) in [
        ("0.01", 1, 0),
        ("0.1", 10, 1),
        ("12.59", 1259, 125),
        ("88", 8800, 880),
        ("9999.99", 999_999, 99_999),
    ] {
        let d = upload_ok(&server, &user, &png(2, 2), amount).await;
        assert_eq!(d["estimated_points"], points, "{amount}: {d}");
        let (stored_cents, stored_points): (u32, u32) = sqlx::query_as(
            "SELECT amount_cents, estimated_points FROM photo_uploads WHERE upload_id = ?",
        )
        .bind(d["upload_id"].as_str().unwrap())
        .fetch_one(&server.db)
        .await
        .unwrap();
        assert_eq!(
            (stored_cents, stored_points),
            (cents, points as u32),
            "{amount}"
        );
    }
}

// ---------------------------------------------------------------------------
// Review
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_approval_credits_the_estimate_and_pushes_review_result_then_points_update() {
    let (server, _dir) = start_local().await;
    let guest = server.login_new().await;
    let merchant = merchant(&server).await;
    let mut ws = server.connect(&guest).await;
    let last_seq = welcome_seq(&ws);
    let upload_id = receipt(&server, &guest, "12.50").await;

    let outcome = review_ok(
        &server,
        &merchant,
        json!({ "upload_id": upload_id, "action": "approve" }),
    )
    .await;
    let balance = server.audit(guest.user_id).await.total_points;
    assert_eq!(balance, START_POINTS + 125);
    assert_eq!(
        outcome,
        json!({
            "upload_id": upload_id,
            "action": "approve",
            "points_awarded": 125,
            "user_new_balance": balance,
        })
    );

    let result = next_user_event(&mut ws).await;
    assert_eq!(result.kind, "review_result", "{result:?}");
    assert_eq!(result.seq, Some(last_seq + 1), "{result:?}");
    let d = &result.data;
    assert_eq!(d["upload_id"], upload_id.as_str(), "{d}");
    assert_eq!(d["status"], "approved", "{d}");
    assert_eq!(d["points_awarded"], 125, "{d}");
    assert!(d["reason"].is_string(), "{d}");
    assert!(d["timestamp"].is_string(), "{d}");

    let update = next_user_event(&mut ws).await;
    assert_eq!(update.kind, "points_update", "{update:?}");
    assert_eq!(
        update.seq,
        Some(last_seq + 2),
        "the next seq after review_result"
    );
    let d = &update.data;
    assert_eq!(d["user_id"], guest.user_id, "{d}");
    assert_eq!(d["source"], "photo_upload", "{d}");
    assert_eq!(d["change_points"], 125, "{d}");
    assert_eq!(d["total_points"], balance, "{d}");

    assert_eq!(
        photo_ledger(&server, guest.user_id).await,
        [("earn".to_string(), 125, balance, Some(upload_id.clone()))]
    );
    assert_eq!(
        upload_state(&server, &upload_id).await,
        (
            "approved".to_string(),
            Some(125),
            Some(reason_of(&result)),
            Some(merchant.user_id)
        )
    );
    let (_, history) = server
        .get("/api/photo/history", Some(&guest.access_token))
        .await;
    let listed = &history["data"]["uploads"][0];
    assert_eq!(listed["review_status"], "approved", "{history}");
    assert_eq!(listed["points_awarded"], 125, "{history}");
    assert!(listed["reviewed_at"].is_string(), "{history}");

    let audit = server.audit(guest.user_id).await;
    audit.assert_consistent();
    assert_eq!(audit.last_seq, last_seq + 2);
}

fn reason_of(result: &ServerFrame) -> String {
    result.data["reason"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn an_approval_may_award_from_1_to_ten_times_the_estimate_only() {
    let (server, _dir) = start_local().await;
    let guest = server.login_new().await;
    let merchant = merchant(&server).await;
    // Estimated at 125 points: at most 1 250 may be awarded (10 × the
    // estimate, under the absolute cap), not 99 999.
    let upload_id = receipt(&server, &guest, "12.50").await;

    for points in [
        json!(0),
        json!(-5),
        json!(1_251),
        json!(99_999),
        json!(1.5),
        json!("100"),
    ] {
        let a = review(
            &server,
            &merchant,
            json!({ "upload_id": upload_id, "action": "approve", "points": points }),
        )
        .await;
        assert_eq!(
            (a.status, a.code()),
            (400, 2000),
            "points {points}: {}",
            a.text
        );
    }
    let a = review(
        &server,
        &merchant,
        json!({ "upload_id": upload_id, "action": "accept" }),
    )
    .await;
    assert_eq!(
        (a.status, a.code()),
        (400, 2000),
        "a bogus action: {}",
        a.text
    );
    assert_eq!(upload_state(&server, &upload_id).await.0, "pending");
    assert_eq!(server.audit(guest.user_id).await.total_points, START_POINTS);
    assert!(photo_ledger(&server, guest.user_id).await.is_empty());

    let outcome = review_ok(
        &server,
        &merchant,
        json!({ "upload_id": upload_id, "action": "approve", "points": 1_250, "reason": "大单" }),
    )
    .await;
    assert_eq!(outcome["points_awarded"], 1_250, "{outcome}");
    assert_eq!(
        outcome["user_new_balance"],
        START_POINTS + 1_250,
        "{outcome}"
    );
    assert_eq!(
        upload_state(&server, &upload_id).await,
        (
            "approved".to_string(),
            Some(1_250),
            Some("大单".to_string()),
            Some(merchant.user_id)
        )
    );
    server.audit(guest.user_id).await.assert_consistent();
}

#[tokio::test]
async fn a_rejection_needs_a_reason_awards_nothing_and_pushes_only_review_result() {
    let (server, _dir) = start_local().await;
    let guest = server.login_new().await;
    let merchant = merchant(&server).await;
    let mut ws = server.connect(&guest).await;
    let last_seq = welcome_seq(&ws);
    let upload_id = receipt(&server, &guest, "12.50").await;

    for body in [
        json!({ "upload_id": upload_id, "action": "reject" }),
        json!({ "upload_id": upload_id, "action": "reject", "reason": "" }),
        json!({ "upload_id": upload_id, "action": "reject", "reason": "小票模糊", "points": 10 }),
    ] {
        let a = review(&server, &merchant, body.clone()).await;
        assert_eq!((a.status, a.code()), (400, 2000), "{body}: {}", a.text);
    }
    assert_eq!(upload_state(&server, &upload_id).await.0, "pending");

    let outcome = review_ok(
        &server,
        &merchant,
        json!({ "upload_id": upload_id, "action": "reject", "reason": "小票模糊" }),
    )
    .await;
    assert_eq!(
        outcome,
        json!({
            "upload_id": upload_id,
            "action": "reject",
            "points_awarded": 0,
            "user_new_balance": START_POINTS,
        })
    );

    let result = next_user_event(&mut ws).await;
    assert_eq!(result.kind, "review_result", "{result:?}");
    assert_eq!(result.seq, Some(last_seq + 1));
    assert_eq!(result.data["status"], "rejected", "{result:?}");
    assert_eq!(result.data["points_awarded"], 0, "{result:?}");
    assert_eq!(result.data["reason"], "小票模糊", "{result:?}");

    // No points_update: none was written, and none arrives before a reply
    // sent after the review's events.
    let audit = server.audit(guest.user_id).await;
    audit.assert_consistent();
    assert_eq!(audit.last_seq, last_seq + 1, "one event: the review_result");
    assert_eq!(audit.total_points, START_POINTS, "the balance is unchanged");
    let pong = ws.command("after-reject", "ping", json!({})).await;
    assert_eq!(pong.code, Some(0));
    assert!(
        ws.pending.iter().all(|f| f.kind != "points_update"),
        "{:?}",
        ws.pending
    );
    assert!(photo_ledger(&server, guest.user_id).await.is_empty());
    assert_eq!(
        upload_state(&server, &upload_id).await,
        (
            "rejected".to_string(),
            None,
            Some("小票模糊".to_string()),
            Some(merchant.user_id)
        )
    );
}

#[tokio::test]
async fn a_second_review_of_the_same_upload_is_refused_with_its_current_status() {
    let (server, _dir) = start_local().await;
    let guest = server.login_new().await;
    let merchant = merchant(&server).await;
    let approved = receipt(&server, &guest, "12.50").await;
    let rejected = receipt(&server, &guest, "20.00").await;
    review_ok(
        &server,
        &merchant,
        json!({ "upload_id": approved, "action": "approve" }),
    )
    .await;
    review_ok(
        &server,
        &merchant,
        json!({ "upload_id": rejected, "action": "reject", "reason": "重复小票" }),
    )
    .await;

    for (upload_id, status) in [(&approved, "approved"), (&rejected, "rejected")] {
        for body in [
            json!({ "upload_id": upload_id, "action": "approve" }),
            json!({ "upload_id": upload_id, "action": "approve", "points": 50 }),
            json!({ "upload_id": upload_id, "action": "reject", "reason": "再审" }),
        ] {
            let a = review(&server, &merchant, body.clone()).await;
            assert_eq!((a.status, a.code()), (409, 6004), "{body}: {}", a.text);
            assert_eq!(a.data(), &json!({ "current_status": status }), "{body}");
        }
    }
    let audit = server.audit(guest.user_id).await;
    audit.assert_consistent();
    assert_eq!(audit.total_points, START_POINTS + 125, "credited once");
    assert_eq!(photo_ledger(&server, guest.user_id).await.len(), 1);
}

#[tokio::test]
async fn a_review_of_an_unknown_upload_is_not_found() {
    let server = TestServer::start().await;
    let merchant = merchant(&server).await;
    for upload_id in [ulid::Ulid::new().to_string(), String::new()] {
        let a = review(
            &server,
            &merchant,
            json!({ "upload_id": upload_id, "action": "approve" }),
        )
        .await;
        assert_eq!(
            (a.status, a.code()),
            (404, 2001),
            "{upload_id:?}: {}",
            a.text
        );
    }
}

#[tokio::test]
async fn two_merchants_racing_on_one_upload_review_it_once() {
    const ROUNDS: usize = 6;
    let (server, _dir) = start_local().await;
    let guest = server.login_new().await;
    let first = merchant(&server).await;
    let second = server.new_merchant().await;
    let mut ws = server.connect(&guest).await;
    let start_seq = welcome_seq(&ws);
    let url = server.url("/api/merchant/review");

    let mut approvals = 0i64;
    for round in 0..ROUNDS {
        let upload_id = receipt(&server, &guest, "12.50").await;
        // Even rounds: both approve. Odd rounds: the second rejects, and
        // the loser is told what won.
        let approve = json!({ "upload_id": upload_id, "action": "approve" });
        let second_body = if round % 2 == 0 {
            approve.clone()
        } else {
            json!({ "upload_id": upload_id, "action": "reject", "reason": "看不清" })
        };
        let barrier = Arc::new(Barrier::new(2));
        let mut tasks = Vec::new();
        for (m, body) in [(&first, approve), (&second, second_body)] {
            let (http, url, token, barrier) = (
                server.http.clone(),
                url.clone(),
                m.access_token.clone(),
                barrier.clone(),
            );
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                post_review(&http, &url, &token, body).await
            }));
        }
        let by_first = tasks.remove(0).await.unwrap();
        let by_second = tasks.remove(0).await.unwrap();
        let (winner, loser, reviewer) = match (by_first.status, by_second.status) {
            (200, 409) => (&by_first, &by_second, first.user_id),
            (409, 200) => (&by_second, &by_first, second.user_id),
            _ => panic!(
                "round {round}: exactly one review succeeds: {} / {}",
                by_first.text, by_second.text
            ),
        };
        assert_eq!(winner.code(), 0, "{}", winner.text);
        let status = match winner.data()["action"].as_str() {
            Some("approve") => "approved",
            Some("reject") => "rejected",
            _ => panic!("round {round}: {}", winner.text),
        };
        assert_eq!(loser.code(), 6004, "{}", loser.text);
        assert_eq!(loser.data(), &json!({ "current_status": status }));
        let state = upload_state(&server, &upload_id).await;
        assert_eq!((state.0.as_str(), state.3), (status, Some(reviewer)));
        if status == "approved" {
            approvals += 1;
            assert_eq!(winner.data()["points_awarded"], 125);
        }

        // Exactly one verdict reaches the guest.
        let result = next_user_event(&mut ws).await;
        assert_eq!(result.kind, "review_result", "{result:?}");
        assert_eq!(result.data["upload_id"], upload_id.as_str());
        assert_eq!(result.data["status"], status);
        if status == "approved" {
            let update = next_user_event(&mut ws).await;
            assert_eq!(update.kind, "points_update", "{update:?}");
            assert_eq!(update.seq, result.seq.map(|s| s + 1));
        }
    }
    assert!(
        approvals >= (ROUNDS / 2) as i64,
        "every even round approves"
    );

    let audit = server.audit(guest.user_id).await;
    audit.assert_consistent();
    assert_eq!(audit.total_points, START_POINTS + 125 * approvals);
    assert_eq!(
        photo_ledger(&server, guest.user_id).await.len() as i64,
        approvals,
        "each approval credited once"
    );
    assert_eq!(
        audit.last_seq,
        start_seq + ROUNDS as u64 + approvals as u64,
        "one review_result per upload, one points_update per approval"
    );
}

#[tokio::test]
async fn guests_are_refused_the_merchant_tools_with_403() {
    let (server, _dir) = start_local().await;
    let guest = server.login_new().await;
    let upload_id = receipt(&server, &guest, "12.50").await;

    for path in [
        "/api/merchant/reviews",
        "/api/merchant/reviews?status=pending",
        "/api/merchant/statistics",
    ] {
        let (status, body) = server.get(path, Some(&guest.access_token)).await;
        assert_eq!(
            (status, body["code"].as_i64()),
            (403, Some(2003)),
            "{path}: {body}"
        );
        assert_eq!(body["data"], Value::Null);
    }
    let a = review(
        &server,
        &guest,
        json!({ "upload_id": upload_id, "action": "approve", "points": 99_999 }),
    )
    .await;
    assert_eq!((a.status, a.code()), (403, 2003), "{}", a.text);
    assert_eq!(upload_state(&server, &upload_id).await.0, "pending");
    assert_eq!(server.audit(guest.user_id).await.total_points, START_POINTS);

    let (status, body) = server.get("/api/merchant/reviews", None).await;
    assert_eq!((status, body["code"].as_i64()), (401, Some(4001)), "{body}");
}

/// A database of this test's own: the review queue is global, and the
/// other tests of this binary add to it while this one pages through it.
async fn private_database(name: &str) -> String {
    let shared = common::database_url().await;
    let (root, db) = shared.rsplit_once('/').unwrap();
    let private = format!("{db}_{name}");
    let admin = MySqlPool::connect(root).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS `{private}`"
    )))
    .execute(&admin)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE `{private}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    )))
    .execute(&admin)
    .await
    .unwrap();
    admin.close().await;
    format!("{root}/{private}")
}

#[tokio::test]
async fn the_review_queue_lists_pending_uploads_first_oldest_first_by_page() {
    let url = private_database("queue").await;
    let (server, _dir) = start_local_with(|c| c.database_url = Secret::new(url)).await;
    let merchant = merchant(&server).await;
    let alice = server.login_new().await;
    let bob = server.login_new().await;

    let a1 = upload_ok(&server, &alice, &png(2, 2), "10.00").await;
    let b1 = upload_ok(&server, &bob, &jpeg(), "20.5").await;
    let a2 = upload_ok(&server, &alice, &webp(), "30.99").await;
    let id = |d: &Value| d["upload_id"].as_str().unwrap().to_string();
    // The oldest is reviewed; the other two wait.
    review_ok(
        &server,
        &merchant,
        json!({ "upload_id": id(&a1), "action": "approve" }),
    )
    .await;

    let page = |query: &'static str| {
        let server = &server;
        let merchant = &merchant;
        async move {
            let a = get_answer(server, &format!("/api/merchant/reviews{query}"), merchant).await;
            assert_eq!((a.status, a.code()), (200, 0), "{query}: {}", a.text);
            a
        }
    };
    let ids_of = |a: &Answer| -> Vec<String> {
        a.data()["reviews"]
            .as_array()
            .unwrap()
            .iter()
            .map(id)
            .collect()
    };

    // Unfiltered: pending (oldest first), then the reviewed.
    let all = page("?status=all&page_size=10").await;
    assert_eq!(ids_of(&all), [id(&b1), id(&a2), id(&a1)], "{}", all.text);
    let items = all.data()["reviews"].as_array().unwrap();
    for (item, (upload, user, amount, points, status)) in items.iter().zip([
        (&b1, &bob, 20.5, 205, "pending"),
        (&a2, &alice, 30.99, 309, "pending"),
        (&a1, &alice, 10.0, 100, "approved"),
    ]) {
        assert_eq!(item["upload_id"], upload["upload_id"], "{item}");
        assert_eq!(item["user_id"], user.user_id, "{item}");
        assert_eq!(item["user_mobile"], masked(&user.phone), "{item}");
        assert_eq!(item["image_url"], upload["image_url"], "{item}");
        assert_eq!(item["amount"].as_f64(), Some(amount), "{item}");
        assert_eq!(item["estimated_points"], points, "{item}");
        assert_eq!(item["review_status"], status, "{item}");
        assert!(item["created_at"].is_string(), "{item}");
    }
    assert_eq!(
        raw_values(&all.text, "amount"),
        ["20.50", "30.99", "10.00"],
        "{}",
        all.text
    );
    assert_eq!(items[2]["points_awarded"], 100);

    // The default is the same list; pages of two.
    let first = page("?page=1&page_size=2").await;
    assert_eq!(ids_of(&first), [id(&b1), id(&a2)]);
    assert_eq!(
        first.data()["pagination"],
        json!({ "total": 3, "page": 1, "limit": 2, "total_pages": 2 })
    );
    let second = page("?page=2&page_size=2").await;
    assert_eq!(ids_of(&second), [id(&a1)]);
    let past = page("?page=3&page_size=2").await;
    assert_eq!(ids_of(&past), Vec::<String>::new());

    let pending = page("?status=pending").await;
    assert_eq!(ids_of(&pending), [id(&b1), id(&a2)]);
    assert_eq!(pending.data()["pagination"]["total"], 2);
    let approved = page("?status=approved").await;
    assert_eq!(ids_of(&approved), [id(&a1)]);
    let rejected = page("?status=rejected").await;
    assert_eq!(ids_of(&rejected), Vec::<String>::new());

    for query in ["?status=bogus", "?page=0", "?page_size=abc"] {
        let a = get_answer(&server, &format!("/api/merchant/reviews{query}"), &merchant).await;
        assert_eq!((a.status, a.code()), (400, 2000), "{query}: {}", a.text);
    }
}

// ---------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------

const COUNTS: [&str; 8] = [
    "uploads",
    "pending",
    "approved",
    "rejected",
    "points_awarded",
    "draws",
    "exchanges",
    "new_users",
];

fn count(stats: &Value, period: &str, field: &str) -> u64 {
    stats[period][field]
        .as_u64()
        .unwrap_or_else(|| panic!("{period}.{field} is a count: {stats}"))
}

#[tokio::test]
async fn the_statistics_count_today_and_overall_and_the_live_connections() {
    let (server, _dir) = start_local().await;
    let merchant = merchant(&server).await;
    let before = statistics(&server, &merchant).await;
    for period in ["today", "overall"] {
        for field in COUNTS {
            count(&before, period, field);
        }
    }
    // Overall covers today (pending aside: it can fall between the two
    // counts, as other tests review meanwhile).
    for field in COUNTS.iter().filter(|f| **f != "pending") {
        assert!(
            count(&before, "overall", field) >= count(&before, "today", field),
            "overall {field} covers today's: {before}"
        );
    }
    assert!(before["live_connections"].is_u64(), "{before}");

    let guest = server.login_new().await;
    let _ws = server.connect(&guest).await;
    let upload_id = receipt(&server, &guest, "33.30").await;
    review_ok(
        &server,
        &merchant,
        json!({ "upload_id": upload_id, "action": "approve" }),
    )
    .await;

    let after = statistics(&server, &merchant).await;
    for period in ["today", "overall"] {
        assert!(
            count(&after, period, "uploads") > count(&before, period, "uploads"),
            "{period}: {before} → {after}"
        );
        assert!(
            count(&after, period, "approved") > count(&before, period, "approved"),
            "{period}: {before} → {after}"
        );
        assert!(
            count(&after, period, "points_awarded")
                >= count(&before, period, "points_awarded") + 333,
            "{period}: {before} → {after}"
        );
        assert!(
            count(&after, period, "new_users") > count(&before, period, "new_users"),
            "{period}: {before} → {after}"
        );
    }
    assert!(after["live_connections"].as_u64().unwrap() >= 1, "{after}");
    assert!(after["live_users"].as_u64().unwrap() >= 1, "{after}");
}

// ---------------------------------------------------------------------------
// Resume
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_guest_away_during_the_review_gets_it_replayed_by_sync() {
    let (server, _dir) = start_local().await;
    let guest = server.login_new().await;
    let merchant = merchant(&server).await;
    let upload_id = receipt(&server, &guest, "12.50").await;

    let mut ws = server.connect(&guest).await;
    let last_seq = welcome_seq(&ws);
    // A complete closing handshake: the socket is gone before the review.
    ws.ws.close(None).await.unwrap();
    while let Some(Ok(_)) = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut ws.ws))
        .await
        .expect("the server completes the close")
    {}

    let outcome = review_ok(
        &server,
        &merchant,
        json!({ "upload_id": upload_id, "action": "approve" }),
    )
    .await;

    let mut ws = server.connect(&guest).await;
    assert_eq!(welcome_seq(&ws), last_seq + 2, "two events were missed");
    ws.send_command("resume-1", "sync", json!({ "since": last_seq }))
        .await;
    let mut frames = Vec::new();
    loop {
        let f = ws.next().await;
        let done = f.is_reply();
        frames.push(f);
        if done {
            break;
        }
    }
    let kinds: Vec<(&str, Option<u64>)> = frames.iter().map(|f| (f.kind.as_str(), f.seq)).collect();
    assert_eq!(
        kinds,
        [
            ("review_result", Some(last_seq + 1)),
            ("points_update", Some(last_seq + 2)),
            ("reply", None)
        ],
        "the missed events in order, then the reply: {frames:?}"
    );
    assert_eq!(frames[0].data["upload_id"], upload_id.as_str());
    assert_eq!(frames[0].data["status"], "approved");
    assert_eq!(frames[0].data["points_awarded"], 125);
    assert_eq!(frames[1].data["source"], "photo_upload");
    assert_eq!(frames[1].data["total_points"], outcome["user_new_balance"]);
    let reply = &frames[2];
    assert_eq!(reply.id.as_deref(), Some("resume-1"));
    assert_eq!(reply.code, Some(0), "{reply:?}");
    assert_eq!(
        reply.data,
        json!({ "from_seq": last_seq + 1, "to_seq": last_seq + 2, "count": 2 })
    );
}

// ---------------------------------------------------------------------------
// S3
// ---------------------------------------------------------------------------

/// moto's S3-compatible server as a child process, killed on drop.
struct Moto {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts moto and waits until it answers HTTP. Panics (the test fails)
/// when it cannot: the S3 backend must really be tested.
async fn start_moto() -> Moto {
    let port = free_port();
    let child = std::process::Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 runs moto's server (scripts/test installs moto[server])");
    let mut moto = Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = moto.child.try_wait().unwrap() {
            panic!("moto's server exited at start ({status}); is moto[server] installed?");
        }
        if let Ok(res) = http.get(&moto.endpoint).send().await
            && res.status().is_success()
        {
            return moto;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "moto's server did not answer on {} within a minute",
            moto.endpoint
        );
        // An external process: nothing to await but its port.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// An S3 request signed with AWS Signature Version 4, as any S3 client
/// sends it. `path` and `query` must already be in canonical form.
fn s3_request(
    http: &reqwest::Client,
    method: reqwest::Method,
    endpoint: &str,
    path: &str,
    query: &str,
) -> reqwest::RequestBuilder {
    const REGION: &str = "us-east-1";
    const KEY_ID: &str = "testing";
    const SECRET: &str = "testing";
    let now = chrono::Utc::now();
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let date = now.format("%Y%m%d").to_string();
    let host = endpoint.trim_start_matches("http://");
    let payload = hex::encode(Sha256::digest(b""));
    let signed_headers = "host;x-amz-content-sha256;x-amz-date";
    let canonical = format!(
        "{method}\n{path}\n{query}\nhost:{host}\nx-amz-content-sha256:{payload}\nx-amz-date:{amz_date}\n\n{signed_headers}\n{payload}"
    );
    let scope = format!("{date}/{REGION}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac_sha256(format!("AWS4{SECRET}").as_bytes(), date.as_bytes());
    for part in [REGION, "s3", "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac_sha256(&key, to_sign.as_bytes()));
    let url = if query.is_empty() {
        format!("{endpoint}{path}")
    } else {
        format!("{endpoint}{path}?{query}")
    };
    http.request(method, url)
        .header("x-amz-date", amz_date)
        .header("x-amz-content-sha256", payload)
        .header(
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={KEY_ID}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
            ),
        )
}

#[tokio::test]
async fn receipts_are_stored_in_a_real_s3_compatible_server_and_served_back() {
    const BUCKET: &str = "receipts-test";
    let moto = start_moto().await;
    let http = reqwest::Client::new();
    let res = s3_request(
        &http,
        reqwest::Method::PUT,
        &moto.endpoint,
        &format!("/{BUCKET}"),
        "",
    )
    .send()
    .await
    .unwrap();
    assert!(
        res.status().is_success(),
        "bucket created: {}",
        res.status()
    );

    let endpoint = moto.endpoint.clone();
    let server = TestServer::start_with(|c| {
        c.storage = StorageBackend::S3 {
            endpoint: Some(endpoint),
            bucket: BUCKET.into(),
            region: "us-east-1".into(),
            access_key_id: "testing".into(),
            secret_access_key: Secret::new("testing"),
        }
    })
    .await;
    let user = server.login_new().await;

    // A refusal stores nothing; an upload stores exactly its image.
    let a = post_upload(
        &server,
        Some(&user.access_token),
        MULTIPART,
        receipt_form(GIF, "receipt.gif", "image/gif", "12.50"),
    )
    .await;
    assert_eq!((a.status, a.code()), (400, 5003), "{}", a.text);
    let image = jpeg();
    let d = upload_ok(&server, &user, &image, "12.50").await;
    let image_url = d["image_url"].as_str().unwrap();
    let key = key_of(image_url);
    assert!(key.ends_with(&format!("{}.jpg", d["upload_id"].as_str().unwrap())));

    let res = s3_request(
        &http,
        reqwest::Method::GET,
        &moto.endpoint,
        &format!("/{BUCKET}/{key}"),
        "",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status().as_u16(), 200, "the object is in the bucket");
    assert_eq!(
        res.bytes().await.unwrap().to_vec(),
        image,
        "with the upload's bytes"
    );

    let res = s3_request(
        &http,
        reqwest::Method::GET,
        &moto.endpoint,
        &format!("/{BUCKET}"),
        "list-type=2",
    )
    .send()
    .await
    .unwrap();
    let listing = res.text().await.unwrap();
    assert_eq!(
        listing.matches("<Key>").count(),
        1,
        "only the accepted image is stored: {listing}"
    );
    assert!(listing.contains(&format!("<Key>{key}</Key>")), "{listing}");

    let (status, content_type, served) = fetch(&server.http, &server.url(image_url)).await;
    assert_eq!(status, 200);
    assert_eq!(content_type.as_deref(), Some("image/jpeg"));
    assert_eq!(served, image, "the server serves the object from S3");

    let (status, body) = server
        .get(
            &format!("{UPLOADS}{}", key.replace(".jpg", ".png")),
            Some(&user.access_token),
        )
        .await;
    assert_eq!((status, body["code"].as_i64()), (404, Some(2001)), "{body}");
    drop(moto);
}

// ---------------------------------------------------------------------------
// The make-merchant command
// ---------------------------------------------------------------------------

/// Runs the real binary with only the variables it needs, outside the
/// repository (so no `.env` is read).
async fn run_binary(args: &[&str]) -> std::process::Output {
    let dir = UploadDir::new();
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_restaurant-points"))
        .args(args)
        .env_clear()
        .env("DATABASE_URL", common::database_url().await)
        .env("APP_ENV", "development")
        .env("LOG_LEVEL", "warn")
        .current_dir(&dir.0)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the command finishes in time")
        .expect("the binary runs")
}

fn describe(out: &std::process::Output) -> String {
    format!(
        "{:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn make_merchant_gives_a_user_who_has_logged_in_the_merchant_tools() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let (status, body) = server
        .get("/api/merchant/statistics", Some(&user.access_token))
        .await;
    assert_eq!((status, body["code"].as_i64()), (403, Some(2003)), "{body}");

    let out = run_binary(&["make-merchant", &user.phone]).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    let (status, body) = server
        .get("/api/merchant/statistics", Some(&user.access_token))
        .await;
    assert_eq!((status, body["code"].as_i64()), (200, Some(0)), "{body}");
    let (_, info) = server.get("/api/user/info", Some(&user.access_token)).await;
    assert_eq!(info["data"]["is_merchant"], true, "{info}");
}

#[tokio::test]
async fn make_merchant_exits_1_for_an_unknown_phone_and_2_for_an_invalid_one() {
    let server = TestServer::start().await;
    let unknown = common::unique_phone();
    let out = run_binary(&["make-merchant", &unknown]).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users WHERE mobile = ?")
        .bind(&unknown)
        .fetch_one(&server.db)
        .await
        .unwrap();
    assert_eq!(n, 0, "no user is created");

    for invalid in [
        "12800138001",
        "1380013800",
        "１３８００１３８００１",
        "13800138001\n",
    ] {
        let out = run_binary(&["make-merchant", invalid]).await;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{invalid:?}: {}",
            describe(&out)
        );
    }
    let out = run_binary(&["make-merchant"]).await;
    assert_eq!(out.status.code(), Some(2), "no phone: {}", describe(&out));
}
