//! The prize wheel through both doors: the published configuration, draws
//! over REST and over the socket, idempotency keys shared by the two, the
//! refusals (points, daily limit, bad input), the pity guarantee, limited
//! prize stock, the draw history, and one user's draws raced from many
//! clients at once.

mod common;

use common::{Answer, TestServer, User, WsClient, count, post_json, raw_values};
use protocol::ServerFrame;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::Barrier;

/// The demo wheel (`src/seed.rs`): points per draw, pity threshold, daily limit.
const COST: i64 = 100;
const PITY_THRESHOLD: u64 = 10;
const DAILY_LIMIT: u64 = 50;
/// A new user's register bonus.
const START_POINTS: i64 = 1000;
/// The prizes that count as a win for the pity rule.
const VALUABLE: [&str; 5] = ["免费饮品券", "100积分", "8折优惠券", "招牌甜品", "500积分"];
/// The limited prizes and the stock they are seeded with.
const SEEDED_STOCK: [(&str, i64); 3] = [("8折优惠券", 500), ("招牌甜品", 100), ("500积分", 20)];

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

async fn draw_rest(server: &TestServer, user: &User, body: Value, key: Option<&str>) -> Answer {
    post_json(
        &server.http,
        &server.url("/api/lottery/draw"),
        &user.access_token,
        body,
        key,
    )
    .await
}

/// A REST draw of `n` that must succeed; returns its `data`.
async fn draw_ok(server: &TestServer, user: &User, n: u64, key: Option<&str>) -> Value {
    let a = draw_rest(server, user, json!({ "draw_count": n }), key).await;
    assert_eq!((a.status, a.code()), (200, 0), "a draw of {n}: {}", a.text);
    a.data().clone()
}

async fn get_raw(server: &TestServer, path: &str, user: &User) -> Answer {
    let res = server
        .http
        .get(server.url(path))
        .bearer_auth(&user.access_token)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer { status, text, body }
}

async fn lottery_config(server: &TestServer, user: &User) -> Value {
    let (status, body) = server
        .get("/api/lottery/config", Some(&user.access_token))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["code"], 0, "{body}");
    body["data"].clone()
}

/// `0.3000`-style: digits, a point, exactly `places` digits.
fn has_places(raw: &str, places: usize) -> bool {
    match raw.split_once('.') {
        Some((whole, frac)) => {
            !whole.is_empty()
                && whole.bytes().all(|b| b.is_ascii_digit())
                && frac.len() == places
                && frac.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// Points a draw result credited back (its `points` prizes).
fn points_won(result: &Value) -> i64 {
    draws_of(result)
        .iter()
        .filter(|d| d["prize_type"] == "points")
        .map(|d| d["prize_value"].as_f64().unwrap().round() as i64)
        .sum()
}

fn draws_of(result: &Value) -> &Vec<Value> {
    result["draws"]
        .as_array()
        .unwrap_or_else(|| panic!("a draw result lists its draws: {result}"))
}

fn is_valuable(draw: &Value) -> bool {
    VALUABLE.contains(&draw["prize_name"].as_str().unwrap())
}

/// Checks a draw result against the contract and the published wheel:
/// `n` draws with every field, each exactly one of the wheel's prizes.
fn assert_draw_result(result: &Value, n: usize, config: &Value) {
    let prizes: HashMap<u64, &Value> = config["prizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["prize_id"].as_u64().unwrap(), p))
        .collect();
    let draws = draws_of(result);
    assert_eq!(draws.len(), n, "{result}");
    assert_eq!(result["points_cost"].as_i64(), Some(COST * n as i64));
    assert!(result["remaining_points"].as_i64().unwrap() >= 0);
    let mut ids = std::collections::HashSet::new();
    for d in draws {
        let draw_id = d["draw_id"].as_str().expect("draw_id is a string");
        assert!(!draw_id.is_empty());
        assert!(ids.insert(draw_id.to_string()), "draw ids are distinct");
        let prize = prizes
            .get(&d["prize_id"].as_u64().expect("prize_id"))
            .unwrap_or_else(|| panic!("the draw lands on a published prize: {d}"));
        for field in ["prize_name", "prize_type", "prize_value", "angle"] {
            assert_eq!(d[field], prize[field], "{field} of {d}");
        }
        assert!(
            ["points", "coupon", "physical", "empty"].contains(&d["prize_type"].as_str().unwrap())
        );
        assert!(d["is_pity"].is_boolean(), "{d}");
    }
}

/// `(type, points, source, related_id)` of a user's ledger, oldest first.
async fn ledger(server: &TestServer, user_id: u64) -> Vec<(String, i64, String, Option<String>)> {
    sqlx::query_as(
        "SELECT CAST(type AS CHAR), points, source, related_id FROM points_records \
         WHERE user_id = ? ORDER BY record_id",
    )
    .bind(user_id)
    .fetch_all(&server.db)
    .await
    .unwrap()
}

async fn lottery_spends(server: &TestServer, user_id: u64) -> i64 {
    count(
        server,
        "SELECT COUNT(*) FROM points_records WHERE user_id = ? AND type = 'spend' AND source = 'lottery'",
        user_id,
    )
    .await
}

async fn draw_rows(server: &TestServer, user_id: u64) -> i64 {
    count(
        server,
        "SELECT COUNT(*) FROM draw_records WHERE user_id = ?",
        user_id,
    )
    .await
}

async fn set_pity(server: &TestServer, user: &User, pity: u32) {
    sqlx::query("UPDATE users SET pity_count = ? WHERE user_id = ?")
        .bind(pity)
        .bind(user.user_id)
        .execute(&server.db)
        .await
        .unwrap();
}

/// Today in the business time zone (UTC+8), as the daily limit counts it.
fn business_today() -> chrono::NaiveDate {
    (chrono::Utc::now() + chrono::Duration::hours(8)).date_naive()
}

async fn set_drawn_today(server: &TestServer, user: &User, day: chrono::NaiveDate, n: u32) {
    sqlx::query("UPDATE users SET draw_day = ?, draw_day_count = ? WHERE user_id = ?")
        .bind(day)
        .bind(n)
        .bind(user.user_id)
        .execute(&server.db)
        .await
        .unwrap();
}

async fn draw_day_count(server: &TestServer, user: &User) -> i64 {
    count(
        server,
        "SELECT CAST(draw_day_count AS SIGNED) FROM users WHERE user_id = ?",
        user.user_id,
    )
    .await
}

/// Draws one at a time until the balance cannot pay for another draw;
/// returns the balance left (below the cost of one draw).
async fn drain(server: &TestServer, user: &User) -> i64 {
    let mut remaining = START_POINTS;
    let mut draws = 0;
    while remaining >= COST {
        let result = draw_ok(server, user, 1, None).await;
        remaining = result["remaining_points"].as_i64().unwrap();
        draws += 1;
        assert!(
            draws < DAILY_LIMIT,
            "1000 points should run out well before the daily limit"
        );
    }
    remaining
}

/// Sends a command on a socket and returns its reply.
async fn ws_draw(ws: &mut WsClient, id: &str, n: Value) -> ServerFrame {
    ws.command(id, "lottery.draw", json!({ "draw_count": n }))
        .await
}

fn welcome_of(ws: &WsClient) -> (i64, u64) {
    let w = ws.welcome.as_ref().expect("welcome was read");
    (
        w.data["total_points"].as_i64().unwrap(),
        w.data["last_seq"].as_u64().unwrap(),
    )
}

/// The reply to a no-op command: every event caused before it was sent has
/// been written to the socket by the time it arrives.
async fn settle(ws: &mut WsClient, id: &str) {
    let pong = ws.command(id, "ping", json!({})).await;
    assert_eq!(pong.code, Some(0), "{pong:?}");
}

// ---------------------------------------------------------------------------
// The published wheel
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_wheel_publishes_eight_prizes_with_odds_that_sum_to_exactly_one() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let a = get_raw(&server, "/api/lottery/config", &user).await;
    assert_eq!((a.status, a.code()), (200, 0), "{}", a.text);
    let c = a.data();

    assert_eq!(c["cost_points"].as_i64(), Some(COST));
    assert_eq!(c["draw_counts"], json!([1, 5, 10]));
    assert_eq!(c["daily_limit"].as_u64(), Some(DAILY_LIMIT));
    assert_eq!(c["pity"]["threshold"].as_u64(), Some(PITY_THRESHOLD));
    assert_eq!(c["pity"]["current"], 0, "a new user has no misses yet");

    let prizes = c["prizes"].as_array().unwrap();
    assert_eq!(prizes.len(), 8);
    let mut angles: Vec<u64> = prizes
        .iter()
        .map(|p| p["angle"].as_u64().unwrap())
        .collect();
    angles.sort_unstable();
    assert_eq!(
        angles,
        (0..8).map(|i| i * 45).collect::<Vec<u64>>(),
        "one prize at each of 0, 45, ..., 315"
    );
    let mut ids: Vec<u64> = prizes
        .iter()
        .map(|p| p["prize_id"].as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 8, "prize ids are distinct");
    for p in prizes {
        for field in [
            "prize_id",
            "prize_name",
            "prize_type",
            "prize_value",
            "angle",
            "color",
            "probability",
            "is_activity",
        ] {
            assert!(!p[field].is_null(), "{field} of {p}");
        }
        assert!(
            ["points", "coupon", "physical", "empty"].contains(&p["prize_type"].as_str().unwrap()),
            "{p}"
        );
    }
    assert!(
        prizes.iter().any(|p| p["prize_type"] == "empty"),
        "at least one prize is empty"
    );

    // Odds: four places, as text, summing to exactly 1 in ten-thousandths.
    let probabilities = raw_values(&a.text, "probability");
    assert_eq!(probabilities.len(), 8, "{}", a.text);
    assert!(
        a.text.contains("\"probability\":0.3000"),
        "the demo's empty prize reads 0.3000: {}",
        a.text
    );
    let mut sum = 0u64;
    for raw in &probabilities {
        assert!(has_places(raw, 4), "a probability has four places: {raw:?}");
        let (whole, frac) = raw.split_once('.').unwrap();
        sum += whole.parse::<u64>().unwrap() * 10_000 + frac.parse::<u64>().unwrap();
    }
    assert_eq!(sum, 10_000, "the published odds sum to exactly 1.0000");

    // Money: two places.
    let values = raw_values(&a.text, "prize_value");
    assert_eq!(values.len(), 8);
    for raw in values {
        assert!(has_places(raw, 2), "a prize value has two places: {raw:?}");
    }
}

// ---------------------------------------------------------------------------
// Draws over REST
// ---------------------------------------------------------------------------

#[tokio::test]
async fn draws_of_one_five_and_ten_charge_once_and_land_on_the_wheel() {
    let server = TestServer::start().await;
    for n in [1usize, 5, 10] {
        let user = server.login_new().await;
        let config = lottery_config(&server, &user).await;
        let a = draw_rest(&server, &user, json!({ "draw_count": n }), None).await;
        assert_eq!((a.status, a.code()), (200, 0), "{}", a.text);
        assert_eq!(a.body["msg"], "success");
        let result = a.data();
        assert_draw_result(result, n, &config);
        for raw in raw_values(&a.text, "prize_value") {
            assert!(has_places(raw, 2), "a prize value has two places: {raw:?}");
        }
        // A new user's first ten draws are never forced.
        assert!(draws_of(result).iter().all(|d| d["is_pity"] == false));

        let won = points_won(result);
        let remaining = result["remaining_points"].as_i64().unwrap();
        assert_eq!(remaining, START_POINTS - COST * n as i64 + won);
        let audit = server.audit(user.user_id).await;
        assert_eq!(audit.total_points, remaining, "the reply shows the balance");
        audit.assert_consistent();
        assert_eq!(audit.last_seq, 2, "one transaction, one event");

        // The ledger: the register bonus, one spend of 100 × n, and an earn
        // per points prize, tied to its draw.
        let rows = ledger(&server, user.user_id).await;
        assert_eq!(rows[0].2, "register");
        let spends: Vec<_> = rows.iter().filter(|r| r.0 == "spend").collect();
        assert_eq!(spends.len(), 1, "{rows:?}");
        assert_eq!(spends[0].1, COST * n as i64);
        assert_eq!(spends[0].2, "lottery");
        let earns: Vec<_> = rows[1..].iter().filter(|r| r.0 == "earn").collect();
        let points_draws: Vec<&Value> = draws_of(result)
            .iter()
            .filter(|d| d["prize_type"] == "points")
            .collect();
        assert_eq!(earns.len(), points_draws.len(), "{rows:?}");
        for (row, d) in earns.iter().zip(&points_draws) {
            assert_eq!(row.2, "lottery_prize");
            assert_eq!(row.1, d["prize_value"].as_f64().unwrap().round() as i64);
            assert_eq!(row.3.as_deref(), d["draw_id"].as_str());
        }
        assert_eq!(draw_rows(&server, user.user_id).await, n as i64);
    }
}

#[tokio::test]
async fn a_draw_count_outside_one_five_ten_or_of_the_wrong_type_is_refused() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let cases = [
        (json!({ "draw_count": 3 }), 3002),
        (json!({ "draw_count": 0 }), 3002),
        (json!({ "draw_count": 100 }), 3002),
        (json!({ "draw_count": -1 }), 2000),
        (json!({ "draw_count": "1" }), 2000),
        (json!({ "draw_count": 1.5 }), 2000),
        (json!({ "draw_count": null }), 2000),
        (json!({}), 2000),
    ];
    for (body, code) in cases {
        let a = draw_rest(&server, &user, body.clone(), None).await;
        assert_eq!((a.status, a.code()), (400, code), "{body}: {}", a.text);
        assert!(a.data().is_null(), "{}", a.text);
    }
    let audit = server.audit(user.user_id).await;
    assert_eq!((audit.total_points, audit.last_seq), (START_POINTS, 1));
    assert_eq!(draw_rows(&server, user.user_id).await, 0);

    // The socket refuses the same way.
    let mut ws = server.connect(&user).await;
    let r = ws_draw(&mut ws, "bad-count", json!(3)).await;
    assert_eq!(r.code, Some(3002), "{r:?}");
    let r = ws_draw(&mut ws, "bad-type", json!("1")).await;
    assert_eq!(r.code, Some(2000), "{r:?}");
    assert_eq!(server.audit(user.user_id).await.total_points, START_POINTS);
}

// ---------------------------------------------------------------------------
// Draws over the socket
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_draw_on_the_socket_replies_like_rest_and_pushes_one_net_points_update() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let config = lottery_config(&server, &user).await;
    let mut ws = server.connect(&user).await;
    let (balance, last_seq) = welcome_of(&ws);

    let reply = ws_draw(&mut ws, "ws-draw-10", json!(10)).await;
    assert_eq!(reply.kind, "reply");
    assert_eq!(reply.id.as_deref(), Some("ws-draw-10"));
    assert_eq!(reply.code, Some(0), "{reply:?}");
    assert_eq!(reply.msg.as_deref(), Some("success"));
    assert_draw_result(&reply.data, 10, &config);
    let remaining = reply.data["remaining_points"].as_i64().unwrap();
    assert_eq!(remaining, balance - COST * 10 + points_won(&reply.data));

    let update = ws.next_of("points_update").await;
    assert_eq!(update.seq, Some(last_seq + 1));
    assert_eq!(update.data["user_id"].as_u64(), Some(user.user_id));
    assert_eq!(update.data["total_points"].as_i64(), Some(remaining));
    assert_eq!(
        update.data["change_points"].as_i64(),
        Some(remaining - balance),
        "one net change for the whole transaction"
    );
    assert_eq!(update.data["source"], "lottery");

    settle(&mut ws, "ping-after-draw").await;
    assert!(
        ws.pending.iter().all(|f| f.kind != "points_update"),
        "exactly one points_update per draw: {:?}",
        ws.pending
    );
    let audit = server.audit(user.user_id).await;
    assert_eq!(audit.total_points, remaining);
    assert_eq!(audit.last_seq, last_seq + 1);
    audit.assert_consistent();
}

// ---------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_retried_key_replays_the_first_result_through_either_door_and_charges_once() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let key = "retry-key:1.a_b";

    let first = draw_ok(&server, &user, 1, Some(key)).await;
    let after_first = server.audit(user.user_id).await;

    let again = draw_ok(&server, &user, 1, Some(key)).await;
    assert_eq!(again, first, "the same key replays the same data");

    let mut ws = server.connect(&user).await;
    let reply = ws_draw(&mut ws, key, json!(1)).await;
    assert_eq!(reply.code, Some(0), "{reply:?}");
    assert_eq!(
        reply.data, first,
        "a REST key retried as a socket command id replays too"
    );

    settle(&mut ws, "ping-after-replay").await;
    assert!(
        ws.pending.iter().all(|f| f.kind != "points_update"),
        "a replay pushes nothing"
    );
    let audit = server.audit(user.user_id).await;
    assert_eq!(
        (audit.total_points, audit.last_seq),
        (after_first.total_points, after_first.last_seq),
        "charged once"
    );
    assert_eq!(lottery_spends(&server, user.user_id).await, 1);
    assert_eq!(draw_rows(&server, user.user_id).await, 1);
    audit.assert_consistent();
}

#[tokio::test]
async fn a_socket_command_id_retried_over_rest_replays_the_socket_result() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let mut ws = server.connect(&user).await;
    let reply = ws_draw(&mut ws, "ws-then-rest", json!(5)).await;
    assert_eq!(reply.code, Some(0), "{reply:?}");

    let again = draw_ok(&server, &user, 5, Some("ws-then-rest")).await;
    assert_eq!(again, reply.data);
    assert_eq!(lottery_spends(&server, user.user_id).await, 1);
    assert_eq!(draw_rows(&server, user.user_id).await, 5);
    server.audit(user.user_id).await.assert_consistent();
}

#[tokio::test]
async fn a_key_reused_with_another_draw_count_is_a_conflict_that_changes_nothing() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let key = "conflict-key";
    let first = draw_ok(&server, &user, 1, Some(key)).await;
    let before = server.audit(user.user_id).await;

    let a = draw_rest(&server, &user, json!({ "draw_count": 5 }), Some(key)).await;
    assert_eq!((a.status, a.code()), (409, 2005), "{}", a.text);
    assert!(a.data().is_null());

    let mut ws = server.connect(&user).await;
    let reply = ws_draw(&mut ws, key, json!(10)).await;
    assert_eq!(reply.code, Some(2005), "{reply:?}");
    assert_eq!(reply.msg.as_deref(), a.body["msg"].as_str());

    let after = server.audit(user.user_id).await;
    assert_eq!(
        (after.total_points, after.last_seq),
        (before.total_points, before.last_seq)
    );
    assert_eq!(draw_rows(&server, user.user_id).await, 1);

    // The original command still replays.
    assert_eq!(draw_ok(&server, &user, 1, Some(key)).await, first);
}

#[tokio::test]
async fn the_same_key_from_another_user_is_a_different_draw() {
    let server = TestServer::start().await;
    let alice = server.login_new().await;
    let bob = server.login_new().await;
    let key = "shared-looking-key";

    let a = draw_ok(&server, &alice, 1, Some(key)).await;
    let b = draw_ok(&server, &bob, 1, Some(key)).await;
    assert_ne!(
        a["draws"][0]["draw_id"], b["draws"][0]["draw_id"],
        "keys are per user"
    );
    for user in [&alice, &bob] {
        assert_eq!(lottery_spends(&server, user.user_id).await, 1);
        server.audit(user.user_id).await.assert_consistent();
    }
}

#[tokio::test]
async fn an_invalid_idempotency_key_is_refused_before_anything_is_charged() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let too_long = "k".repeat(65);
    for key in [too_long.as_str(), "has space", "slash/key", "中文"] {
        let mut req = server
            .http
            .post(server.url("/api/lottery/draw"))
            .bearer_auth(&user.access_token)
            .json(&json!({ "draw_count": 1 }));
        req = req.header(
            "Idempotency-Key",
            reqwest::header::HeaderValue::from_bytes(key.as_bytes()).unwrap(),
        );
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap();
        assert_eq!(status, 400, "key {key:?}: {body}");
        assert_eq!(body["code"], 2000, "key {key:?}: {body}");
    }
    // 64 characters is still a key.
    draw_ok(&server, &user, 1, Some(&"k".repeat(64))).await;
    assert_eq!(lottery_spends(&server, user.user_id).await, 1);
    server.audit(user.user_id).await.assert_consistent();
}

#[tokio::test]
async fn ten_concurrent_requests_with_one_key_charge_once_and_all_see_the_same_result() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let url = server.url("/api/lottery/draw");
    let barrier = Arc::new(Barrier::new(10));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (http, url, token, barrier) = (
            server.http.clone(),
            url.clone(),
            user.access_token.clone(),
            barrier.clone(),
        );
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            post_json(
                &http,
                &url,
                &token,
                json!({ "draw_count": 5 }),
                Some("race-one-key"),
            )
            .await
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!((a.status, a.code()), (200, 0), "{}", a.text);
        results.push(a.data().clone());
    }
    assert!(
        results.iter().all(|r| *r == results[0]),
        "every racer sees the one result: {results:?}"
    );
    assert_eq!(lottery_spends(&server, user.user_id).await, 1);
    assert_eq!(draw_rows(&server, user.user_id).await, 5);
    let audit = server.audit(user.user_id).await;
    assert_eq!(
        audit.total_points,
        START_POINTS - 5 * COST + points_won(&results[0])
    );
    assert_eq!(audit.last_seq, 2);
    audit.assert_consistent();
}

// ---------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_draw_without_enough_points_is_refused_with_the_shortage() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let left = drain(&server, &user).await;
    assert!((0..COST).contains(&left));
    let before = server.audit(user.user_id).await;
    assert_eq!(before.total_points, left);
    let draws_before = draw_rows(&server, user.user_id).await;

    for n in [1i64, 5, 10] {
        let a = draw_rest(
            &server,
            &user,
            json!({ "draw_count": n }),
            Some(&format!("poor-{n}")),
        )
        .await;
        assert_eq!((a.status, a.code()), (422, 4005), "{}", a.text);
        assert_eq!(
            *a.data(),
            json!({ "required": COST * n, "current": left, "shortage": COST * n - left })
        );
    }

    let after = server.audit(user.user_id).await;
    assert_eq!(
        (after.total_points, after.last_seq),
        (before.total_points, before.last_seq),
        "a refused draw changes nothing"
    );
    assert_eq!(draw_rows(&server, user.user_id).await, draws_before);
    after.assert_consistent();
}

#[tokio::test]
async fn a_refusal_for_too_few_points_reads_the_same_on_the_socket_as_over_rest() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    drain(&server, &user).await;
    let rest = draw_rest(&server, &user, json!({ "draw_count": 5 }), None).await;
    assert_eq!(rest.code(), 4005, "{}", rest.text);

    let mut ws = server.connect(&user).await;
    let reply = ws_draw(&mut ws, "poor-on-socket", json!(5)).await;
    assert_eq!(reply.code, Some(4005), "{reply:?}");
    assert_eq!(reply.msg.as_deref(), rest.body["msg"].as_str());
    assert_eq!(reply.data, *rest.data());
}

#[tokio::test]
async fn a_user_who_drew_fifty_times_today_is_refused_until_tomorrow() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    set_drawn_today(&server, &user, business_today(), DAILY_LIMIT as u32).await;

    let a = draw_rest(&server, &user, json!({ "draw_count": 1 }), None).await;
    assert_eq!((a.status, a.code()), (422, 3001), "{}", a.text);
    assert!(a.data().is_null());
    let audit = server.audit(user.user_id).await;
    assert_eq!((audit.total_points, audit.last_seq), (START_POINTS, 1));
    assert_eq!(draw_day_count(&server, &user).await, DAILY_LIMIT as i64);
    assert_eq!(draw_rows(&server, user.user_id).await, 0);

    // Yesterday's draws do not count today.
    let yesterday = business_today() - chrono::Duration::days(1);
    set_drawn_today(&server, &user, yesterday, DAILY_LIMIT as u32).await;
    draw_ok(&server, &user, 1, None).await;
    assert_eq!(draw_day_count(&server, &user).await, 1);
}

#[tokio::test]
async fn a_multi_draw_that_would_pass_the_daily_limit_is_refused_whole() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    set_drawn_today(&server, &user, business_today(), DAILY_LIMIT as u32 - 5).await;

    let a = draw_rest(&server, &user, json!({ "draw_count": 10 }), None).await;
    assert_eq!((a.status, a.code()), (422, 3001), "{}", a.text);
    assert_eq!(server.audit(user.user_id).await.total_points, START_POINTS);
    assert_eq!(draw_day_count(&server, &user).await, 45);

    let result = draw_ok(&server, &user, 5, None).await;
    assert_eq!(draws_of(&result).len(), 5);
    assert_eq!(draw_day_count(&server, &user).await, DAILY_LIMIT as i64);
    let a = draw_rest(&server, &user, json!({ "draw_count": 1 }), None).await;
    assert_eq!(a.code(), 3001, "the limit is now reached: {}", a.text);
    server.audit(user.user_id).await.assert_consistent();
}

#[tokio::test]
async fn a_daily_limit_refusal_reads_the_same_on_the_socket_as_over_rest() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    set_drawn_today(&server, &user, business_today(), DAILY_LIMIT as u32).await;
    let rest = draw_rest(&server, &user, json!({ "draw_count": 1 }), None).await;
    assert_eq!(rest.code(), 3001, "{}", rest.text);

    let mut ws = server.connect(&user).await;
    let reply = ws_draw(&mut ws, "limit-on-socket", json!(1)).await;
    assert_eq!(reply.code, Some(3001), "{reply:?}");
    assert_eq!(reply.msg.as_deref(), rest.body["msg"].as_str());
    assert_eq!(reply.data, *rest.data());
    assert_eq!(server.audit(user.user_id).await.total_points, START_POINTS);
}

// ---------------------------------------------------------------------------
// Pity
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_draw_at_the_pity_threshold_is_forced_to_a_valuable_prize() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    set_pity(&server, &user, PITY_THRESHOLD as u32).await;
    assert_eq!(
        lottery_config(&server, &user).await["pity"]["current"].as_u64(),
        Some(PITY_THRESHOLD)
    );

    let result = draw_ok(&server, &user, 1, None).await;
    let d = &draws_of(&result)[0];
    assert_eq!(d["is_pity"], true, "{d}");
    assert!(is_valuable(d), "a forced draw wins something valuable: {d}");
    assert_eq!(
        lottery_config(&server, &user).await["pity"]["current"],
        0,
        "the counter resets"
    );

    let (is_pity, pity_before, config_version): (bool, u32, u32) = sqlx::query_as(
        "SELECT is_pity, pity_before, config_version FROM draw_records WHERE draw_id = ?",
    )
    .bind(d["draw_id"].as_str().unwrap())
    .fetch_one(&server.db)
    .await
    .unwrap();
    let (version,): (u32,) = sqlx::query_as("SELECT version FROM lottery_settings WHERE id = 1")
        .fetch_one(&server.db)
        .await
        .unwrap();
    assert!(is_pity);
    assert_eq!(pity_before, PITY_THRESHOLD as u32);
    assert_eq!(
        config_version, version,
        "the record keeps the wheel's version"
    );
    server.audit(user.user_id).await.assert_consistent();
}

#[tokio::test]
async fn a_draw_one_short_of_the_threshold_is_not_forced() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    set_pity(&server, &user, PITY_THRESHOLD as u32 - 1).await;

    let result = draw_ok(&server, &user, 1, None).await;
    let d = &draws_of(&result)[0];
    assert_eq!(d["is_pity"], false, "{d}");
    let (pity_before,): (u32,) =
        sqlx::query_as("SELECT pity_before FROM draw_records WHERE draw_id = ?")
            .bind(d["draw_id"].as_str().unwrap())
            .fetch_one(&server.db)
            .await
            .unwrap();
    assert_eq!(pity_before, PITY_THRESHOLD as u32 - 1);
    let expected = if is_valuable(d) { 0 } else { PITY_THRESHOLD };
    assert_eq!(
        lottery_config(&server, &user).await["pity"]["current"].as_u64(),
        Some(expected)
    );
}

#[tokio::test]
async fn the_pity_counter_runs_through_a_ten_draw_one_draw_at_a_time() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    set_pity(&server, &user, 5).await;
    let result = draw_ok(&server, &user, 10, None).await;

    let mut pity = 5u64;
    let mut forced = 0;
    for d in draws_of(&result) {
        let (pity_before, is_pity): (u32, bool) =
            sqlx::query_as("SELECT pity_before, is_pity FROM draw_records WHERE draw_id = ?")
                .bind(d["draw_id"].as_str().unwrap())
                .fetch_one(&server.db)
                .await
                .unwrap();
        assert_eq!(pity_before as u64, pity, "pity before {d}");
        let should_force = pity >= PITY_THRESHOLD;
        assert_eq!(d["is_pity"], should_force, "{d}");
        assert_eq!(is_pity, should_force);
        if should_force {
            forced += 1;
            assert!(is_valuable(d), "{d}");
        }
        pity = if is_valuable(d) { 0 } else { pity + 1 };
    }
    assert!(forced <= 1, "five misses in a row force at most one draw");
    assert_eq!(
        lottery_config(&server, &user).await["pity"]["current"].as_u64(),
        Some(pity.min(PITY_THRESHOLD))
    );
}

// ---------------------------------------------------------------------------
// Stock and records
// ---------------------------------------------------------------------------

#[tokio::test]
async fn limited_prize_stock_falls_only_by_the_prizes_won_and_never_below_zero() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    // Forced draws pick among the valuable prizes, three of which are limited.
    for _ in 0..3 {
        set_pity(&server, &user, PITY_THRESHOLD as u32).await;
        draw_ok(&server, &user, 1, None).await;
    }
    draw_ok(&server, &user, 5, None).await;

    // One statement, one snapshot: other tests of this binary draw meanwhile.
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT p.prize_name, CAST(p.stock AS SIGNED), \
                (SELECT COUNT(*) FROM draw_records d WHERE d.prize_id = p.prize_id) \
         FROM lottery_prizes p WHERE p.stock IS NOT NULL",
    )
    .fetch_all(&server.db)
    .await
    .unwrap();
    let seeded: BTreeMap<&str, i64> = SEEDED_STOCK.into_iter().collect();
    assert_eq!(rows.len(), seeded.len(), "{rows:?}");
    for (name, stock, won) in rows {
        assert!(stock >= 0, "{name} stock {stock}");
        assert_eq!(
            stock + won,
            seeded[name.as_str()],
            "{name}: stock left plus prizes won is the seeded stock"
        );
    }
    let (min,): (Option<i64>,) = sqlx::query_as(
        "SELECT CAST(MIN(stock) AS SIGNED) FROM lottery_prizes WHERE stock IS NOT NULL",
    )
    .fetch_one(&server.db)
    .await
    .unwrap();
    assert!(min.unwrap() >= 0);
}

#[tokio::test]
async fn the_draw_history_lists_only_the_callers_draws_newest_first_by_page() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let other = server.login_new().await;

    let mut made: Vec<String> = Vec::new();
    for n in [1, 5] {
        let result = draw_ok(&server, &user, n, None).await;
        made.extend(
            draws_of(&result)
                .iter()
                .map(|d| d["draw_id"].as_str().unwrap().to_string()),
        );
    }
    let others = draw_ok(&server, &other, 1, None).await;
    let other_id = others["draws"][0]["draw_id"].as_str().unwrap().to_string();
    made.reverse();

    let mut seen = Vec::new();
    for (page, len) in [(1, 4), (2, 2), (3, 0)] {
        let (status, body) = server
            .get(
                &format!("/api/lottery/records?page={page}&page_size=4"),
                Some(&user.access_token),
            )
            .await;
        assert_eq!((status, body["code"].as_i64()), (200, Some(0)), "{body}");
        let data = &body["data"];
        let draws = data["draws"].as_array().unwrap();
        assert_eq!(draws.len(), len, "page {page}: {body}");
        assert_eq!(
            data["pagination"],
            json!({ "total": 6, "page": page, "limit": 4, "total_pages": 2 })
        );
        for d in draws {
            assert_eq!(d["points_cost"].as_i64(), Some(COST));
            assert!(d["created_at"].is_string());
            assert!(d["angle"].as_u64().unwrap() % 45 == 0);
            seen.push(d["draw_id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(seen, made, "the caller's draws, newest first");
    assert!(
        !seen.contains(&other_id),
        "another user's draw is not listed"
    );

    let (_, body) = server
        .get("/api/lottery/records", Some(&other.access_token))
        .await;
    assert_eq!(body["data"]["pagination"]["total"], 1);
    assert_eq!(
        body["data"]["draws"][0]["draw_id"].as_str(),
        Some(other_id.as_str())
    );
}

// ---------------------------------------------------------------------------
// One user, many clients, one balance
// ---------------------------------------------------------------------------

/// What one racing socket saw: its replies by id and its `points_update`s.
struct SocketRun {
    ws: WsClient,
    replies: Vec<ServerFrame>,
    updates: Vec<ServerFrame>,
}

/// Sends every command at once (after the barrier), then reads until each
/// has its reply, keeping the `points_update` events in arrival order.
async fn race_socket(mut ws: WsClient, ids: Vec<String>, barrier: Arc<Barrier>) -> SocketRun {
    barrier.wait().await;
    for id in &ids {
        ws.send_command(id, "lottery.draw", json!({ "draw_count": 1 }))
            .await;
    }
    let mut replies = Vec::new();
    let mut updates = Vec::new();
    while replies.len() < ids.len() {
        let f = ws.next().await;
        match f.kind.as_str() {
            "reply" => replies.push(f),
            "points_update" => updates.push(f),
            _ => {}
        }
    }
    SocketRun {
        ws,
        replies,
        updates,
    }
}

#[tokio::test]
async fn fifty_draws_raced_over_rest_and_three_sockets_spend_exactly_what_the_ledger_shows() {
    const RACERS: usize = 50;
    const SOCKETS: usize = 3;
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let mut sockets = Vec::new();
    for _ in 0..SOCKETS {
        sockets.push(server.connect(&user).await);
    }
    let start_seq = welcome_of(&sockets[0]).1;

    let rest_racers = RACERS / 2;
    let barrier = Arc::new(Barrier::new(rest_racers + SOCKETS));
    let url = server.url("/api/lottery/draw");
    let mut rest_tasks = Vec::new();
    for i in 0..rest_racers {
        let (http, url, token, barrier) = (
            server.http.clone(),
            url.clone(),
            user.access_token.clone(),
            barrier.clone(),
        );
        // Half with their own key, half without one.
        let key = (i % 2 == 0).then(|| format!("rest-racer-{i}"));
        rest_tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            post_json(
                &http,
                &url,
                &token,
                json!({ "draw_count": 1 }),
                key.as_deref(),
            )
            .await
        }));
    }
    let mut socket_tasks = Vec::new();
    for (s, ws) in sockets.into_iter().enumerate() {
        let ids: Vec<String> = (0..RACERS - rest_racers)
            .filter(|i| i % SOCKETS == s)
            .map(|i| format!("ws-racer-{i}"))
            .collect();
        socket_tasks.push(tokio::spawn(race_socket(ws, ids, barrier.clone())));
    }

    // Every answer is a draw or a refusal for points; nothing else.
    let mut results: Vec<Value> = Vec::new();
    let mut refusals = 0;
    for t in rest_tasks {
        let a = t.await.unwrap();
        match (a.status, a.code()) {
            (200, 0) => results.push(a.data().clone()),
            (422, 4005) => {
                let d = a.data();
                assert_eq!(d["required"].as_i64(), Some(COST));
                assert!(d["current"].as_i64().unwrap() < COST);
                refusals += 1;
            }
            _ => panic!("a racing draw is a draw or a 4005: {}", a.text),
        }
    }
    let mut runs = Vec::new();
    for t in socket_tasks {
        let run = t.await.unwrap();
        for r in &run.replies {
            match r.code {
                Some(0) => results.push(r.data.clone()),
                Some(4005) => {
                    assert_eq!(r.data["required"].as_i64(), Some(COST));
                    assert!(r.data["current"].as_i64().unwrap() < COST);
                    refusals += 1;
                }
                _ => panic!("a racing draw is a draw or a 4005: {r:?}"),
            }
        }
        runs.push(run);
    }
    let successes = results.len() as i64;
    assert_eq!(results.len() + refusals, RACERS);

    let audit = server.audit(user.user_id).await;
    audit.assert_consistent();
    assert_eq!(
        lottery_spends(&server, user.user_id).await,
        successes,
        "every success, and only a success, is one spend in the ledger"
    );
    assert_eq!(draw_rows(&server, user.user_id).await, successes);
    let won: i64 = results.iter().map(points_won).sum();
    assert!(audit.total_points >= 0);
    assert_eq!(audit.total_points, START_POINTS - COST * successes + won);
    assert!(
        successes >= 10,
        "1000 points pay for at least ten draws: {successes}"
    );
    assert_eq!(
        audit.last_seq,
        start_seq + successes as u64,
        "one event per draw"
    );

    // Each successful transaction's balance is the balance one event reports.
    let mut remaining: Vec<i64> = results
        .iter()
        .map(|r| r["remaining_points"].as_i64().unwrap())
        .collect();
    remaining.sort_unstable();

    // Every socket gets every event, in seq order, with no gap or repeat.
    for (s, run) in runs.iter_mut().enumerate() {
        while run.updates.last().and_then(|u| u.seq).unwrap_or(start_seq) < audit.last_seq {
            let f = run.ws.next().await;
            if f.kind == "points_update" {
                run.updates.push(f);
            }
        }
        let seqs: Vec<u64> = run.updates.iter().map(|u| u.seq.unwrap()).collect();
        let expected: Vec<u64> = (start_seq + 1..=audit.last_seq).collect();
        assert_eq!(seqs, expected, "socket {s} sees every seq once, in order");

        let mut balance = START_POINTS;
        for u in &run.updates {
            let total = u.data["total_points"].as_i64().unwrap();
            assert_eq!(
                u.data["change_points"].as_i64().unwrap(),
                total - balance,
                "socket {s}: each change leads from the previous balance"
            );
            assert!(total >= 0);
            balance = total;
        }
        assert_eq!(balance, audit.total_points);

        let mut reported: Vec<i64> = run
            .updates
            .iter()
            .map(|u| u.data["total_points"].as_i64().unwrap())
            .collect();
        reported.sort_unstable();
        assert_eq!(
            reported, remaining,
            "the replies' balances are the events' balances"
        );
    }
}

/// Different users' draws run in parallel and meet only on the limited
/// prizes' stock rows; none of them may fail for it (a lock conflict there
/// would surface as a 3000).
#[tokio::test]
async fn ten_draws_by_many_users_at_once_all_succeed() {
    let server = TestServer::start().await;
    let mut users = Vec::new();
    for _ in 0..30 {
        users.push(server.login_new().await);
    }
    let url = server.url("/api/lottery/draw");
    let barrier = Arc::new(Barrier::new(users.len()));
    let mut tasks = Vec::new();
    for user in &users {
        let (http, url, token, barrier) = (
            server.http.clone(),
            url.clone(),
            user.access_token.clone(),
            barrier.clone(),
        );
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            post_json(&http, &url, &token, json!({ "draw_count": 10 }), None).await
        }));
    }
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!((a.status, a.code()), (200, 0), "{}", a.text);
    }
    for user in &users {
        server.audit(user.user_id).await.assert_consistent();
    }
}
