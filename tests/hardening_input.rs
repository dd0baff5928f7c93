//! The hardening of this round, end to end over real sockets and the real
//! database: input read strictly and told in the product's words at both
//! doors, the close frames a socket is sent when it misbehaves, reviews
//! that cannot be gamed, merchants kept within bounds and written into the
//! audit log, the prize editor, and slow connections that cannot hold the
//! server.
//!
//! Every test says, above it, why the server before this round failed it
//! (all but one did, when run against it; that one says so).

mod common;

use common::{Answer, TestServer, User, WAIT, WsClient, answer, post_json};
use futures::{SinkExt, StreamExt};
use restaurant_points::config::{Secret, StorageBackend};
use serde_json::{Value, json};
use sqlx::MySqlPool;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// A new user's register bonus.
const START_POINTS: i64 = 1000;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

async fn get(server: &TestServer, path: &str, user: &User) -> Answer {
    answer(
        server
            .http
            .get(server.url(path))
            .bearer_auth(&user.access_token),
    )
    .await
}

async fn post(server: &TestServer, path: &str, user: &User, body: Value) -> Answer {
    post_json(
        &server.http,
        &server.url(path),
        &user.access_token,
        body,
        None,
    )
    .await
}

async fn put(server: &TestServer, path: &str, user: &User, body: Value) -> Answer {
    answer(
        server
            .http
            .put(server.url(path))
            .bearer_auth(&user.access_token)
            .json(&body),
    )
    .await
}

/// `POST` of raw bytes as `application/json`.
async fn post_raw(server: &TestServer, path: &str, user: &User, body: Vec<u8>) -> Answer {
    answer(
        server
            .http
            .post(server.url(path))
            .bearer_auth(&user.access_token)
            .header("content-type", "application/json")
            .body(body),
    )
    .await
}

/// The user still has exactly the register bonus and its one event:
/// nothing was drawn, spent or credited.
async fn assert_untouched(server: &TestServer, user: &User, case: &str) {
    let audit = server.audit(user.user_id).await;
    audit.assert_consistent();
    assert_eq!(
        (audit.total_points, audit.last_seq),
        (START_POINTS, 1),
        "{case}: nothing changed"
    );
}

/// The user's ledger rows with `source`.
async fn ledger_rows(server: &TestServer, user_id: u64, source: &str) -> i64 {
    let (n,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM points_records WHERE user_id = ? AND source = ?")
            .bind(user_id)
            .bind(source)
            .fetch_one(&server.db)
            .await
            .unwrap();
    n
}

/// Asserts the socket still answers the `ping` command.
async fn assert_answers_ping(ws: &mut WsClient, id: &str) {
    let reply = ws.command(id, "ping", json!({})).await;
    assert_eq!(reply.code, Some(0), "the socket still answers: {reply:?}");
}

/// A `msg` in the product's words: none of the parser's English.
fn assert_in_product_words(msg: &str, field: &str) {
    assert!(msg.starts_with("参数错误"), "{msg}");
    assert!(msg.contains(field), "the message names {field}: {msg}");
    for english in ["invalid type", "expected", "line 1 column", "missing field"] {
        assert!(!msg.contains(english), "serde's words leaked: {msg}");
    }
}

/// A database of this test's own, for tests that change what every test
/// of the binary shares (the wheel) or count everything in a table (the
/// audit log).
async fn own_database(name: &str) -> String {
    let shared = common::database_url().await;
    let (root, db) = shared.rsplit_once('/').unwrap();
    let own = format!("{db}_{name}");
    let admin = MySqlPool::connect(root).await.unwrap();
    for sql in [
        format!("DROP DATABASE IF EXISTS `{own}`"),
        format!("CREATE DATABASE `{own}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .unwrap();
    }
    admin.close().await;
    format!("{root}/{own}")
}

/// A fresh directory for receipt images, removed on drop.
struct UploadDir(PathBuf);

impl Drop for UploadDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server that stores receipts in a fresh directory of its own.
async fn start_with_uploads(
    adjust: impl FnOnce(&mut restaurant_points::Config),
) -> (TestServer, UploadDir) {
    let dir = std::env::temp_dir().join(format!("rpt-hardening-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.clone();
    let server = TestServer::start_with(|c| {
        c.storage = StorageBackend::Local { dir: path };
        adjust(c);
    })
    .await;
    (server, UploadDir(dir))
}

const BOUNDARY: &str = "rpt-hardening-boundary-3f9a61c2";

/// A receipt upload by `user` (a real JPEG) for `amount`; returns its id.
async fn upload_receipt(server: &TestServer, user: &User, amount: &str) -> String {
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
    let a = answer(
        server
            .http
            .post(server.url("/api/photo/upload"))
            .bearer_auth(&user.access_token)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(body),
    )
    .await;
    a.ok()["upload_id"].as_str().unwrap().to_string()
}

async fn review(server: &TestServer, merchant: &User, body: Value) -> Answer {
    post(server, "/api/merchant/review", merchant, body).await
}

/// `review_status` of an upload, from the database.
async fn review_status(server: &TestServer, upload_id: &str) -> String {
    let (status,): (String,) =
        sqlx::query_as("SELECT CAST(review_status AS CHAR) FROM photo_uploads WHERE upload_id = ?")
            .bind(upload_id)
            .fetch_one(&server.db)
            .await
            .unwrap();
    status
}

async fn adjust(server: &TestServer, merchant: &User, user_id: u64, points: i64) -> Answer {
    post(
        server,
        "/api/merchant/points/adjust",
        merchant,
        json!({ "user_id": user_id, "points": points, "reason": "到店补偿" }),
    )
    .await
}

/// Every audit-log entry written by `actor`, as the log lists them (newest
/// first), read page by page.
async fn audit_entries_of(server: &TestServer, reader: &User, actor: u64) -> Vec<Value> {
    let mut out = Vec::new();
    for page in 1.. {
        let a = get(
            server,
            &format!("/api/merchant/audit-log?page={page}&page_size=100"),
            reader,
        )
        .await;
        let entries = a.ok()["entries"].as_array().unwrap().clone();
        if entries.is_empty() {
            break;
        }
        out.extend(entries.into_iter().filter(|e| e["actor_id"] == actor));
    }
    out
}

// ---------------------------------------------------------------------------
// 1. Strict input, at both doors
// ---------------------------------------------------------------------------

// Old: serde read `[1]` positionally as `{"draw_count": 1}` and drew, at
// both doors.
#[tokio::test]
async fn a_draw_whose_data_is_an_array_is_refused_at_both_doors_and_draws_nothing() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let mut ws = server.connect(&user).await;

    ws.send_text(r#"{"id":"x1","type":"lottery.draw","data":[1]}"#)
        .await;
    let reply = ws.next().await;
    assert_eq!(reply.kind, "reply", "{reply:?}");
    assert_eq!(reply.id.as_deref(), Some("x1"), "{reply:?}");
    assert_eq!(reply.code, Some(2000), "{reply:?}");
    assert_untouched(&server, &user, "socket").await;

    let rest = post_raw(&server, "/api/lottery/draw", &user, b"[1]".to_vec()).await;
    rest.refused(400, 2000);
    assert_eq!(
        rest.body["msg"].as_str(),
        reply.msg.as_deref(),
        "one problem, one message at both doors"
    );
    assert_untouched(&server, &user, "REST").await;
}

// Old: serde_json skips a field it ignores without checking that its
// string is UTF-8, so the body was read as `{"draw_count":1}` and drew.
#[tokio::test]
async fn a_body_with_bytes_that_are_not_utf8_in_an_unknown_field_is_refused_whole() {
    let server = TestServer::start().await;
    let user = server.login_new().await;

    let mut body = br#"{"draw_count":1,"note":""#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(br#""}"#);
    let a = post_raw(&server, "/api/lottery/draw", &user, body).await;
    a.refused(400, 2000);
    assert_in_product_words(a.body["msg"].as_str().unwrap(), "UTF-8");
    assert_untouched(&server, &user, "non-UTF-8 body").await;

    // The same body in valid UTF-8 draws: it was the bytes, not the field.
    let fine = post(
        &server,
        "/api/lottery/draw",
        &user,
        json!({ "draw_count": 1, "note": "ok" }),
    )
    .await;
    assert_eq!(fine.ok()["draws"].as_array().map(Vec::len), Some(1));
}

// Old: a page size that does not fit the integer type was a 400, at both
// doors, instead of a large page size clamped to 100.
#[tokio::test]
async fn a_page_size_of_a_trillion_is_clamped_to_100_at_both_doors() {
    let server = TestServer::start().await;
    let user = server.login_new().await;

    let a = get(
        &server,
        "/api/user/points/records?page_size=1000000000000",
        &user,
    )
    .await;
    let data = a.ok();
    assert_eq!(data["pagination"]["limit"], 100, "{}", a.text);
    assert_eq!(data["records"].as_array().map(Vec::len), Some(1));

    let mut ws = server.connect(&user).await;
    let reply = ws
        .command(
            "big-page",
            "exchange.products",
            json!({ "page_size": 1_000_000_000_000u64 }),
        )
        .await;
    assert_eq!(reply.code, Some(0), "{reply:?}");
    assert_eq!(reply.data["pagination"]["limit"], 100, "{reply:?}");
}

// Old: a frame whose `type` was not a string failed to parse as a whole
// and got an `error` event without the id, though the id was readable.
#[tokio::test]
async fn a_frame_with_a_readable_id_and_a_numeric_type_gets_a_reply_with_that_id() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let mut ws = server.connect(&user).await;

    ws.send_text(r#"{"id":"x2","type":5}"#).await;
    let reply = ws.next().await;
    assert_eq!(reply.kind, "reply", "{reply:?}");
    assert_eq!(reply.id.as_deref(), Some("x2"), "{reply:?}");
    assert_eq!(reply.code, Some(7001), "{reply:?}");
    assert_answers_ping(&mut ws, "after-numeric-type").await;
}

// Old: each door passed on its parser's own English (axum's JSON
// rejection over REST, serde's error text on the socket: "invalid type
// ... expected u64 at line 1 column ..."), so the doors disagreed and
// neither spoke the product's words.
#[tokio::test]
async fn a_bad_exchange_gets_the_same_message_naming_the_field_at_both_doors() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let mut ws = server.connect(&user).await;

    for (case, body) in [
        ("wrong type", json!({ "product_id": "abc", "quantity": 1 })),
        ("missing field", json!({ "quantity": 1 })),
    ] {
        let rest = post(&server, "/api/exchange/submit", &user, body.clone()).await;
        rest.refused(400, 2000);
        let rest_msg = rest.body["msg"].as_str().unwrap().to_string();
        let reply = ws
            .command(&format!("bad-{}", case.len()), "exchange.submit", body)
            .await;
        assert_eq!(reply.code, Some(2000), "{case}: {reply:?}");
        assert_eq!(
            reply.msg.as_deref(),
            Some(rest_msg.as_str()),
            "{case}: the same words at both doors"
        );
        assert_in_product_words(&rest_msg, "product_id");
    }
    assert_untouched(&server, &user, "bad exchanges").await;
}

// ---------------------------------------------------------------------------
// 2. Close frames
// ---------------------------------------------------------------------------

// Old: the server sent its close frame and dropped the connection at
// once, with the flood unread in its buffers, so the connection ended in a
// TCP reset instead of the closing handshake.
#[tokio::test]
async fn a_client_that_keeps_sending_commands_is_closed_with_4003_by_a_closing_handshake() {
    let server = TestServer::start_with(|c| {
        c.ws_commands_per_sec = 1;
        c.ws_command_burst = 2;
    })
    .await;
    let flooder = server.login_new().await;
    let bystander = server.login_new().await;
    let mut calm = server.connect(&bystander).await;
    let (mut sink, mut stream) = server.connect(&flooder).await.ws.split();

    // The writer never waits for a reply: it sends until the socket will
    // not take more (the client's own close reply ends it).
    let writer = tokio::spawn(async move {
        for n in 0..100_000u32 {
            let frame = json!({ "id": format!("flood-{n}"), "type": "ping", "data": {} });
            if sink.send(Message::text(frame.to_string())).await.is_err() {
                break;
            }
        }
    });
    // Reads to the end: the close frame, then how the connection ended.
    let (close, end) = timeout(WAIT, async {
        let mut close = None;
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(Message::Close(frame)) => close = Some(frame.map(|f| u16::from(f.code))),
                Ok(_) => continue,
                Err(e) => return (close, Some(e)),
            }
        }
        (close, None)
    })
    .await
    .expect("the server ends the flood in time");
    writer.abort();
    assert_eq!(
        close,
        Some(Some(4003)),
        "the flooder reads a 4003 close frame"
    );
    assert!(
        end.is_none(),
        "after the close frames the connection ends cleanly, not with {end:?}"
    );

    assert_answers_ping(&mut calm, "after-flood").await;
}

// Old: the read error ended the socket's task and the connection was
// dropped without a close frame.
#[tokio::test]
async fn a_text_frame_that_is_not_utf8_is_closed_with_1007_and_others_stay_open() {
    let server = TestServer::start().await;
    let sender = server.login_new().await;
    let bystander = server.login_new().await;
    let mut calm = server.connect(&bystander).await;
    let mut bad = server.connect(&sender).await;

    let mut payload = br#"{"id":"u1","type":"ping","data":{"note":""#.to_vec();
    payload.extend_from_slice(&[0xff, 0xfe]);
    payload.extend_from_slice(br#""}}"#);
    bad.ws
        .send(Message::Frame(Frame::message(
            payload,
            OpCode::Data(Data::Text),
            true,
        )))
        .await
        .unwrap();
    assert_eq!(bad.closed().await, Some(1007));

    assert_answers_ping(&mut calm, "after-bad-utf8").await;
}

// Not new: the server before this round already closed an oversized frame
// with 1009 (tests/socket.rs has the plain case) and this test passes
// against it. It is here because the close frames are specified together;
// it adds that the draw inside the frame is not run.
#[tokio::test]
async fn a_draw_in_a_frame_over_the_size_limit_is_closed_with_1009_draws_nothing_and_others_stay_open()
 {
    let server = TestServer::start_with(|c| c.ws_max_frame_bytes = 1024).await;
    let sender = server.login_new().await;
    let bystander = server.login_new().await;
    let mut calm = server.connect(&bystander).await;
    let mut big = server.connect(&sender).await;

    // Over the limit, but within one read of the server's buffer.
    let note = "x".repeat(2000);
    big.send_command(
        "big",
        "lottery.draw",
        json!({ "draw_count": 1, "note": note }),
    )
    .await;
    assert_eq!(big.closed().await, Some(1009));
    assert_untouched(&server, &sender, "oversized draw").await;

    assert_answers_ping(&mut calm, "after-big").await;
}

// ---------------------------------------------------------------------------
// 3. Reviews
// ---------------------------------------------------------------------------

// Old: any `points` on a rejection, 0 included, was refused with "a
// rejection awards no points", so a console sending `"points": 0` could
// not reject.
#[tokio::test]
async fn a_rejection_may_say_zero_points_but_not_five() {
    let (server, _dir) = start_with_uploads(|_| {}).await;
    let guest = server.login_new().await;
    let merchant = server.new_merchant().await;
    let upload_id = upload_receipt(&server, &guest, "12.50").await;

    let five = review(
        &server,
        &merchant,
        json!({ "upload_id": upload_id, "action": "reject", "reason": "小票模糊", "points": 5 }),
    )
    .await;
    five.refused(400, 2000);
    assert_eq!(review_status(&server, &upload_id).await, "pending");

    let zero = review(
        &server,
        &merchant,
        json!({ "upload_id": upload_id, "action": "reject", "reason": "小票模糊", "points": 0 }),
    )
    .await;
    assert_eq!(zero.ok()["points_awarded"], 0, "{}", zero.text);
    assert_eq!(review_status(&server, &upload_id).await, "rejected");
    assert_eq!(server.audit(guest.user_id).await.total_points, START_POINTS);
}

// Old: the body was validated before the upload's status was read, so a
// late second review with a bad body got 400/2000 and the merchant was
// not told the upload had already been reviewed.
#[tokio::test]
async fn a_second_review_gets_6004_whatever_its_body_says() {
    let (server, _dir) = start_with_uploads(|_| {}).await;
    let guest = server.login_new().await;
    let merchant = server.new_merchant().await;
    let upload_id = upload_receipt(&server, &guest, "12.50").await;
    review(
        &server,
        &merchant,
        json!({ "upload_id": upload_id, "action": "approve" }),
    )
    .await
    .ok();

    for body in [
        json!({ "upload_id": upload_id, "action": "maybe" }),
        json!({ "upload_id": upload_id, "action": "approve", "points": 99_999_999 }),
        json!({ "upload_id": upload_id, "action": "approve", "points": -5 }),
        json!({ "upload_id": upload_id, "action": "reject" }),
    ] {
        let a = review(&server, &merchant, body.clone()).await;
        assert_eq!(
            a.refused(409, 6004),
            &json!({ "current_status": "approved" }),
            "{body}"
        );
    }
    let audit = server.audit(guest.user_id).await;
    audit.assert_consistent();
    assert_eq!(audit.total_points, START_POINTS + 125, "credited once");
}

// Old: nothing stopped a merchant from approving their own receipt and
// minting points for themselves.
#[tokio::test]
async fn a_merchant_cannot_review_their_own_upload_but_another_merchant_can() {
    let (server, _dir) = start_with_uploads(|_| {}).await;
    let merchant = server.new_merchant().await;
    let colleague = server.new_merchant().await;
    let upload_id = upload_receipt(&server, &merchant, "12.50").await;

    for body in [
        json!({ "upload_id": upload_id, "action": "approve" }),
        json!({ "upload_id": upload_id, "action": "reject", "reason": "自己的" }),
    ] {
        review(&server, &merchant, body).await.refused(403, 6001);
    }
    assert_eq!(review_status(&server, &upload_id).await, "pending");
    assert_eq!(
        server.audit(merchant.user_id).await.total_points,
        START_POINTS
    );

    review(
        &server,
        &colleague,
        json!({ "upload_id": upload_id, "action": "approve" }),
    )
    .await
    .ok();
    assert_eq!(review_status(&server, &upload_id).await, "approved");
}

// ---------------------------------------------------------------------------
// 4. Merchants within bounds, and accountable
// ---------------------------------------------------------------------------

// Old: an approval could award anything from 1 to 99 999 points, whatever
// the receipt; there was no absolute cap (REVIEW_AWARD_MAX).
#[tokio::test]
async fn an_approval_above_the_absolute_award_cap_is_refused_though_under_ten_times_the_estimate() {
    let (server, _dir) = start_with_uploads(|c| c.review_award_max = 500).await;
    let guest = server.login_new().await;
    let merchant = server.new_merchant().await;
    // Estimated at 125: ten times is 1 250, the absolute cap 500.
    let upload_id = upload_receipt(&server, &guest, "12.50").await;

    let over = review(
        &server,
        &merchant,
        json!({ "upload_id": upload_id, "action": "approve", "points": 501 }),
    )
    .await;
    over.refused(400, 2000);
    let msg = over.body["msg"].as_str().unwrap();
    assert!(msg.contains("points") && msg.contains("500"), "{msg}");
    assert_eq!(review_status(&server, &upload_id).await, "pending");

    let at_cap = review(
        &server,
        &merchant,
        json!({ "upload_id": upload_id, "action": "approve", "points": 500 }),
    )
    .await;
    assert_eq!(at_cap.ok()["points_awarded"], 500);
    assert_eq!(
        server.audit(guest.user_id).await.total_points,
        START_POINTS + 500
    );
}

// Old: one adjustment could move up to 1 000 000 points.
#[tokio::test]
async fn a_points_adjustment_over_ten_thousand_in_one_call_is_refused_either_way() {
    let server = TestServer::start().await;
    let merchant = server.new_merchant().await;
    let guest = server.login_new().await;

    for points in [10_001, -10_001] {
        let a = adjust(&server, &merchant, guest.user_id, points).await;
        a.refused(400, 2000);
        assert_in_product_words(a.body["msg"].as_str().unwrap(), "points");
    }
    assert_untouched(&server, &guest, "over the per-call cap").await;

    let a = adjust(&server, &merchant, guest.user_id, 10_000).await;
    assert_eq!(a.ok()["total_points"], START_POINTS + 10_000);
}

// Old: there was no daily budget: a merchant could grant without end, so
// both grants went through.
#[tokio::test]
async fn two_grants_raced_past_a_merchants_daily_budget_make_one_and_refuse_the_other_with_2011() {
    let server = TestServer::start_with(|c| c.adjust_max_per_day = 15_000).await;
    let merchant = server.new_merchant().await;
    let guests = [server.login_new().await, server.login_new().await];

    // Two grants of 10 000 to two guests at once: only the merchant's own
    // budget stands between them.
    let barrier = Arc::new(Barrier::new(guests.len()));
    let mut tasks = Vec::new();
    for guest in &guests {
        let (http, url, token, barrier, user_id) = (
            server.http.clone(),
            server.url("/api/merchant/points/adjust"),
            merchant.access_token.clone(),
            barrier.clone(),
            guest.user_id,
        );
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let body = json!({ "user_id": user_id, "points": 10_000, "reason": "到店补偿" });
            post_json(&http, &url, &token, body, None).await
        }));
    }
    let mut granted = Vec::new();
    for (guest, task) in guests.iter().zip(tasks) {
        let a = task.await.unwrap();
        match a.status {
            200 => granted.push(guest),
            _ => {
                a.refused(422, 2011);
                assert_untouched(&server, guest, "the refused grant").await;
                assert_eq!(ledger_rows(&server, guest.user_id, "admin").await, 0);
            }
        }
    }
    assert_eq!(granted.len(), 1, "exactly one grant fits the budget");
    let lucky = granted[0];
    let audit = server.audit(lucky.user_id).await;
    audit.assert_consistent();
    assert_eq!(
        (audit.total_points, audit.last_seq),
        (START_POINTS + 10_000, 2)
    );

    // What is left of the budget may still be used, to the point, either
    // way; one point more may not.
    let rest = adjust(&server, &merchant, lucky.user_id, -5_000).await;
    assert_eq!(rest.ok()["total_points"], START_POINTS + 5_000);
    adjust(&server, &merchant, lucky.user_id, 1)
        .await
        .refused(422, 2011);
}

// Old: `cost_points` was accepted from 1 to 100 000, so a merchant could
// make draws nearly free.
#[tokio::test]
async fn wheel_settings_outside_their_bounds_are_refused_and_within_them_accepted() {
    let url = own_database("settings").await;
    let server = TestServer::start_with(|c| c.database_url = Secret::new(url)).await;
    let merchant = server.new_merchant().await;
    let path = "/api/merchant/lottery/settings";
    let before = get(&server, path, &merchant).await.ok().clone();

    let a = put(&server, path, &merchant, json!({ "cost_points": 1 })).await;
    a.refused(400, 2000);
    assert_in_product_words(a.body["msg"].as_str().unwrap(), "cost_points");
    assert_eq!(get(&server, path, &merchant).await.ok(), &before);

    let a = put(&server, path, &merchant, json!({ "cost_points": 10 })).await;
    let after = a.ok();
    assert_eq!(after["cost_points"], 10);
    assert_eq!(after["version"], before["version"].as_u64().unwrap() + 1);
}

// Old: there was no audit log: `GET /api/merchant/audit-log` was a 404.
#[tokio::test]
async fn every_merchant_change_is_in_the_audit_log_newest_first_and_a_refused_one_is_not() {
    let url = own_database("audit").await;
    let (server, _dir) = start_with_uploads(|c| c.database_url = Secret::new(url)).await;
    let merchant = server.new_merchant().await;
    let guest = server.login_new().await;

    // An approval and a rejection.
    let approved = upload_receipt(&server, &guest, "12.50").await;
    let rejected = upload_receipt(&server, &guest, "20.00").await;
    review(
        &server,
        &merchant,
        json!({ "upload_id": approved, "action": "approve" }),
    )
    .await
    .ok();
    review(
        &server,
        &merchant,
        json!({ "upload_id": rejected, "action": "reject", "reason": "重复小票" }),
    )
    .await
    .ok();
    // An adjustment: 1 125 → 1 225.
    let adjusted = adjust(&server, &merchant, guest.user_id, 100).await;
    assert_eq!(adjusted.ok()["total_points"], START_POINTS + 225);
    // A product created, edited and restocked.
    let product = post(
        &server,
        "/api/merchant/products",
        &merchant,
        json!({ "name": "审计咖啡", "category": "饮品", "exchange_points": 200, "stock": 3 }),
    )
    .await;
    let product_id = product.ok()["product_id"].as_u64().unwrap();
    put(
        &server,
        &format!("/api/merchant/products/{product_id}"),
        &merchant,
        json!({ "name": "审计拿铁" }),
    )
    .await
    .ok();
    post(
        &server,
        &format!("/api/merchant/products/{product_id}/stock"),
        &merchant,
        json!({ "operation": "restock", "quantity": 5 }),
    )
    .await
    .ok();
    // A redemption of the guest's order.
    let order = post(
        &server,
        "/api/exchange/submit",
        &guest,
        json!({ "product_id": product_id, "quantity": 1 }),
    )
    .await;
    let code = order.ok()["exchange_code"].as_str().unwrap().to_string();
    post(
        &server,
        "/api/merchant/exchange/redeem",
        &merchant,
        json!({ "exchange_code": code }),
    )
    .await
    .ok();
    // A settings change.
    put(
        &server,
        "/api/merchant/lottery/settings",
        &merchant,
        json!({ "daily_limit": 40 }),
    )
    .await
    .ok();

    let logged = audit_entries_of(&server, &merchant, merchant.user_id).await;
    // A refused change (a deduction below zero) writes nothing.
    let balance = server.audit(guest.user_id).await.total_points;
    adjust(&server, &merchant, guest.user_id, -(balance + 1))
        .await
        .refused(422, 4005);
    assert_eq!(
        audit_entries_of(&server, &merchant, merchant.user_id).await,
        logged,
        "a refused change leaves no entry"
    );

    let actions: Vec<&str> = logged
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "lottery.settings",
            "order.redeem",
            "stock.change",
            "product.update",
            "product.create",
            "points.adjust",
            "review.reject",
            "review.approve",
        ],
        "newest first"
    );
    let ids: Vec<u64> = logged.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    for e in &logged {
        let created = e["created_at"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(created).is_ok(), "{e}");
    }

    let by = |action: &str| logged.iter().find(|e| e["action"] == action).unwrap();
    let adjust_entry = by("points.adjust");
    assert_eq!(adjust_entry["target"], format!("user:{}", guest.user_id));
    assert_eq!(
        adjust_entry["before"],
        json!({ "total_points": START_POINTS + 125 })
    );
    assert_eq!(
        adjust_entry["after"],
        json!({ "total_points": START_POINTS + 225 })
    );
    assert_eq!(adjust_entry["reason"], "到店补偿");
    let approve_entry = by("review.approve");
    assert_eq!(approve_entry["target"], format!("upload:{approved}"));
    assert_eq!(approve_entry["after"]["points_awarded"], 125);
    assert_eq!(by("review.reject")["reason"], "重复小票");
    assert_eq!(by("product.create")["before"], Value::Null);
    assert_eq!(by("product.create")["after"]["name"], "审计咖啡");
    assert_eq!(by("product.update")["before"]["name"], "审计咖啡");
    assert_eq!(by("product.update")["after"]["name"], "审计拿铁");
    assert_eq!(
        by("stock.change")["target"],
        format!("product:{product_id}")
    );
    assert_eq!(by("stock.change")["before"]["stock"], 3);
    assert_eq!(by("stock.change")["after"]["stock"], 8);
    assert_eq!(by("order.redeem")["after"]["status"], "redeemed");
    assert_eq!(by("lottery.settings")["target"], "wheel");
    assert_eq!(by("lottery.settings")["after"]["daily_limit"], 40);

    // Paginated: this database holds only this test's entries.
    let first = get(
        &server,
        "/api/merchant/audit-log?page=1&page_size=3",
        &merchant,
    )
    .await;
    let data = first.ok();
    assert_eq!(
        data["pagination"],
        json!({ "total": 8, "page": 1, "limit": 3, "total_pages": 3 })
    );
    assert_eq!(data["entries"].as_array().unwrap()[..], logged[..3]);
    let last = get(
        &server,
        "/api/merchant/audit-log?page=3&page_size=3",
        &merchant,
    )
    .await;
    assert_eq!(last.ok()["entries"].as_array().unwrap()[..], logged[6..]);

    get(&server, "/api/merchant/audit-log", &guest)
        .await
        .refused(403, 2003);
}

// Old: there was no prize editor: `PUT /api/merchant/lottery/prizes` was a
// 404 and the wheel could only be changed in the database.
#[tokio::test]
async fn the_prize_editor_refuses_odds_that_do_not_sum_to_one_and_publishes_a_valid_edit() {
    // The wheel is shared by every test of a database: this one has its own.
    let url = own_database("prizes").await;
    let server = TestServer::start_with(|c| c.database_url = Secret::new(url)).await;
    let merchant = server.new_merchant().await;
    let guest = server.login_new().await;
    let path = "/api/merchant/lottery/prizes";
    let before = get(&server, path, &merchant).await.ok().clone();
    let version = before["version"].as_u64().unwrap();
    let prizes = before["prizes"].as_array().unwrap().clone();
    assert_eq!(prizes.len(), 8);
    let probability = |p: &Value| p["probability"].as_f64().unwrap();

    let mut uneven = prizes.clone();
    uneven[1]["probability"] = json!(probability(&uneven[1]) + 0.0001);
    let a = put(&server, path, &merchant, json!({ "prizes": uneven })).await;
    a.refused(400, 2000);
    let msg = a.body["msg"].as_str().unwrap();
    assert!(msg.contains("概率合计须为 1.0000"), "{msg}");
    assert_eq!(
        get(&server, path, &merchant).await.ok(),
        &before,
        "nothing changed"
    );

    // A valid edit: a new name, and a tenth of a percent moved from the
    // empty prize to it.
    let empty = prizes
        .iter()
        .position(|p| p["prize_type"] == "empty")
        .unwrap();
    let renamed = if empty == 1 { 2 } else { 1 };
    let mut edited = prizes.clone();
    edited[renamed]["prize_name"] = json!("编辑后的奖品");
    edited[renamed]["probability"] = json!(probability(&prizes[renamed]) + 0.001);
    edited[empty]["probability"] = json!(probability(&prizes[empty]) - 0.001);
    let a = put(&server, path, &merchant, json!({ "prizes": edited })).await;
    assert_eq!(a.ok()["version"], version + 1, "{}", a.text);

    let config = get(&server, "/api/lottery/config", &guest).await;
    let shown = config.ok()["prizes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["prize_id"] == prizes[renamed]["prize_id"])
        .cloned()
        .unwrap();
    assert_eq!(shown["prize_name"], "编辑后的奖品");
    let published = (shown["probability"].as_f64().unwrap() * 10_000.0).round();
    let wanted = ((probability(&prizes[renamed]) + 0.001) * 10_000.0).round();
    assert_eq!(published, wanted, "{shown}");
}

// ---------------------------------------------------------------------------
// 5. Slow connections on the real server
// ---------------------------------------------------------------------------

/// `GET /health` on a fresh connection; returns the status and how long it
/// took.
async fn health_on_a_fresh_connection(server: &TestServer) -> (u16, Duration) {
    let asked = Instant::now();
    let mut stream = timeout(WAIT, TcpStream::connect(server.addr))
        .await
        .expect("connect in time")
        .unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed before the status line");
        head.extend_from_slice(&chunk[..n]);
    }
    let status = String::from_utf8_lossy(&head)
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    (status, asked.elapsed())
}

// Old: the server had no deadline for a request head, so connections that
// sent nothing, or a byte now and then, were held forever.
#[tokio::test]
async fn slow_connections_are_closed_after_the_header_timeout_while_health_keeps_answering() {
    let header_timeout = Duration::from_secs(1);
    let server = TestServer::start_with(|c| c.http.header_timeout = header_timeout).await;

    // 300 connections: the even ones trickle a header byte every 400 ms,
    // the odd ones send nothing. Each reports when the server closed it.
    let mut slow = Vec::new();
    for i in 0..300u32 {
        let mut stream = timeout(WAIT, TcpStream::connect(server.addr))
            .await
            .expect("connect in time")
            .unwrap();
        let opened = Instant::now();
        let trickles = i % 2 == 0;
        slow.push(tokio::spawn(async move {
            let head = b"GET /health HTTP/1.1\r\nhost: test\r\nx-filler: ";
            let mut tick = tokio::time::interval(Duration::from_millis(400));
            let mut sent = 0;
            let mut buf = [0u8; 64];
            loop {
                tokio::select! {
                    read = stream.read(&mut buf) => match read {
                        Ok(0) | Err(_) => return (opened, Instant::now()),
                        Ok(_) => panic!("a slow connection got a response"),
                    },
                    _ = tick.tick(), if trickles => {
                        let byte = head.get(sent).copied().unwrap_or(b'x');
                        let _ = stream.write_all(&[byte]).await;
                        sent += 1;
                    }
                }
            }
        }));
    }

    let mut answered_by = Instant::now();
    for _ in 0..5 {
        let (status, took) = health_on_a_fresh_connection(&server).await;
        assert_eq!(status, 200);
        assert!(took < Duration::from_secs(1), "/health took {took:?}");
        answered_by = Instant::now();
    }

    let mut closes = Vec::new();
    for task in slow {
        closes.push(
            timeout(WAIT, task)
                .await
                .expect("a slow connection was never closed")
                .unwrap(),
        );
    }
    let first_close = closes.iter().map(|(_, closed)| *closed).min().unwrap();
    assert!(
        answered_by < first_close,
        "/health was asked while every slow connection was still open"
    );
    for (opened, closed) in closes {
        let after = closed - opened;
        assert!(
            after >= header_timeout - Duration::from_millis(50)
                && after <= header_timeout + Duration::from_secs(3),
            "a slow connection was closed {after:?} after it opened"
        );
    }
}
