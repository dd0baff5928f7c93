//! Login, tokens, sessions, the user's own reads, and the envelope every
//! response shares: real HTTP against the real server and database.

mod common;

use common::{TestServer, User, unique_phone};
use futures::future::join_all;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// `138****8001` for `13800138001`.
fn masked(phone: &str) -> String {
    format!("{}****{}", &phone[..3], &phone[7..])
}

/// Sends a prepared request and returns status, headers and the JSON body
/// (`Value::Null` when the body is not JSON).
async fn send(req: reqwest::RequestBuilder) -> (u16, HeaderMap, Value) {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

/// Asserts an error envelope: the HTTP status, the code, a non-empty
/// message and `data: null`.
#[track_caller]
fn assert_refused(status: u16, body: &Value, want_status: u16, want_code: i64) {
    assert_eq!(status, want_status, "HTTP status of {body}");
    assert_eq!(body["code"], want_code, "code of {body}");
    assert!(
        body["msg"].as_str().is_some_and(|m| !m.is_empty()),
        "a message in {body}"
    );
    assert!(
        body.get("data").is_some_and(Value::is_null),
        "data is null in {body}"
    );
}

/// Asserts a success envelope and returns its `data`.
#[track_caller]
fn ok_data(status: u16, body: &Value) -> Value {
    assert_eq!(status, 200, "HTTP status of {body}");
    assert_eq!(body["code"], 0, "code of {body}");
    assert_eq!(body["msg"], "success", "msg of {body}");
    body["data"].clone()
}

async fn login_raw(server: &TestServer, phone: &str, code: &str) -> (u16, Value) {
    server
        .post(
            "/api/auth/login",
            None,
            json!({ "phone": phone, "code": code }),
            &[],
        )
        .await
}

async fn refresh(server: &TestServer, refresh_token: &str) -> (u16, Value) {
    server
        .post(
            "/api/auth/refresh",
            None,
            json!({ "refresh_token": refresh_token }),
            &[],
        )
        .await
}

async fn verify(server: &TestServer, access_token: &str) -> (u16, Value) {
    server.get("/api/auth/verify", Some(access_token)).await
}

async fn records(server: &TestServer, user: &User, query: &str) -> (u16, Value) {
    server
        .get(
            &format!("/api/user/points/records{query}"),
            Some(&user.access_token),
        )
        .await
}

/// The claims of an access token issued by this server, read with its secret.
fn claims_of(server: &TestServer, access_token: &str) -> Value {
    let secret = server.state.config.jwt_secret.expose();
    jsonwebtoken::decode::<Value>(
        access_token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &Validation::new(Algorithm::HS256),
    )
    .expect("the server's own token decodes with its secret")
    .claims
}

fn sign(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn users_with_mobile(server: &TestServer, phone: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users WHERE mobile = ?")
        .bind(phone)
        .fetch_one(&server.db)
        .await
        .unwrap();
    n
}

async fn register_bonuses(server: &TestServer, user_id: u64) -> i64 {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM points_records WHERE user_id = ? AND source = 'register'",
    )
    .bind(user_id)
    .fetch_one(&server.db)
    .await
    .unwrap();
    n
}

const USER_INFO_FIELDS: [&str; 7] = [
    "user_id",
    "mobile",
    "nickname",
    "total_points",
    "is_merchant",
    "avatar",
    "status",
];

/// Every field of the contract's `user_info`, and nothing else, for a new
/// user with the register bonus.
#[track_caller]
fn assert_new_user_info(info: &Value, user: &User) {
    let obj = info.as_object().expect("user_info is an object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = USER_INFO_FIELDS.to_vec();
    want.sort_unstable();
    assert_eq!(keys, want, "user_info fields: {info}");
    assert_eq!(info["user_id"], user.user_id);
    assert_eq!(info["mobile"], masked(&user.phone));
    assert!(
        info["nickname"].as_str().is_some_and(|n| !n.is_empty()),
        "nickname: {info}"
    );
    assert_eq!(info["total_points"], 1000);
    assert_eq!(info["is_merchant"], false);
    assert!(
        info["avatar"].is_null() || info["avatar"].is_string(),
        "avatar: {info}"
    );
    assert_eq!(info["status"], "active");
}

// ---------------------------------------------------------------------------
// Login
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_first_login_with_the_development_code_creates_a_user_with_1000_points() {
    let server = TestServer::start().await;
    let phone = unique_phone();

    let (status, body) = login_raw(&server, &phone, "123456").await;
    let data = ok_data(status, &body);

    assert_eq!(data["is_new_user"], true);
    assert_eq!(data["expires_in"], 7200);
    assert!(data["access_token"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(
        data["refresh_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    let info = &data["user_info"];
    assert_eq!(info["mobile"], masked(&phone));
    assert_eq!(info["total_points"], 1000);
    let user_id = info["user_id"].as_u64().unwrap();

    let access = data["access_token"].as_str().unwrap();
    let (status, body) = server.get("/api/user/points/records", Some(access)).await;
    let page = ok_data(status, &body);
    let rows = page["records"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "one ledger record: {page}");
    assert_eq!(rows[0]["type"], "earn");
    assert_eq!(rows[0]["source"], "register");
    assert_eq!(rows[0]["points"], 1000);
    assert_eq!(rows[0]["balance_after"], 1000);
    assert_eq!(page["pagination"]["total"], 1);

    server.audit(user_id).await.assert_consistent();
}

#[tokio::test]
async fn logging_in_again_returns_the_same_user_without_a_second_bonus() {
    let server = TestServer::start().await;
    let first = server.login_new().await;

    let (status, body) = login_raw(&server, &first.phone, "123456").await;
    let data = ok_data(status, &body);

    assert_eq!(data["is_new_user"], false);
    assert_eq!(data["user_info"]["user_id"], first.user_id);
    assert_eq!(data["user_info"]["total_points"], 1000);
    let (status, body) = records(&server, &first, "").await;
    let page = ok_data(status, &body);
    assert_eq!(page["pagination"]["total"], 1, "still one record: {page}");
    assert_eq!(page["records"].as_array().unwrap().len(), 1);
    assert_eq!(register_bonuses(&server, first.user_id).await, 1);
    server.audit(first.user_id).await.assert_consistent();
}

#[tokio::test]
async fn concurrent_first_logins_of_one_phone_create_one_user_and_one_bonus() {
    let server = TestServer::start().await;
    let phone = unique_phone();

    let results = join_all((0..10).map(|_| login_raw(&server, &phone, "123456"))).await;

    let mut user_ids = Vec::new();
    let mut new_users = 0;
    for (status, body) in &results {
        let data = ok_data(*status, body);
        user_ids.push(data["user_info"]["user_id"].as_u64().unwrap());
        if data["is_new_user"] == true {
            new_users += 1;
        }
    }
    assert_eq!(new_users, 1, "exactly one login is the first: {results:?}");
    let user_id = user_ids[0];
    assert!(
        user_ids.iter().all(|&id| id == user_id),
        "every login got the same user: {user_ids:?}"
    );
    assert_eq!(users_with_mobile(&server, &phone).await, 1);
    assert_eq!(register_bonuses(&server, user_id).await, 1);
    let audit = server.audit(user_id).await;
    audit.assert_consistent();
    assert_eq!(audit.total_points, 1000);
}

#[tokio::test]
async fn a_malformed_phone_is_refused_with_1001() {
    let server = TestServer::start().await;
    for phone in [
        "12800138001",
        "1380013800",
        "138001380011",
        "13800138001\n",
        "１３８００１３８００１",
        "١٣٨٠٠١٣٨٠٠١",
        "1380013800١",
        "",
    ] {
        let (status, body) = login_raw(&server, phone, "123456").await;
        assert_refused(status, &body, 400, 1001);
        assert_eq!(
            users_with_mobile(&server, phone).await,
            0,
            "no user for {phone:?}"
        );
    }
}

#[tokio::test]
async fn a_wrong_code_is_refused_with_1002_and_creates_no_user() {
    let server = TestServer::start().await;
    let phone = unique_phone();

    let (status, body) = login_raw(&server, &phone, "000000").await;

    assert_refused(status, &body, 400, 1002);
    assert_eq!(users_with_mobile(&server, &phone).await, 0);
}

#[tokio::test]
async fn a_wrong_code_after_a_code_was_sent_is_refused_with_1002() {
    let server = TestServer::start().await;
    let phone = unique_phone();
    let (status, body) = server
        .post("/api/auth/send-code", None, json!({ "phone": phone }), &[])
        .await;
    ok_data(status, &body);

    // One in a million that the issued code is 000000; 111111 then differs.
    let (s1, b1) = login_raw(&server, &phone, "000000").await;
    let (s2, b2) = login_raw(&server, &phone, "111111").await;

    // The issued code is random: at most one of two different codes can be
    // it, so at least one is wrong, and a wrong one is refused with 1002.
    let outcomes = [(s1, &b1), (s2, &b2)];
    let refused = outcomes
        .iter()
        .filter(|(s, b)| *s == 400 && b["code"] == 1002)
        .count();
    assert!(refused >= 1, "a wrong code is refused: {b1} {b2}");
    assert!(
        outcomes
            .iter()
            .all(|(s, b)| (*s == 400 && b["code"] == 1002) || *s == 200),
        "nothing but a refusal or a match: {b1} {b2}"
    );
}

#[tokio::test]
async fn a_login_body_that_is_not_json_is_refused_with_the_envelope() {
    let server = TestServer::start().await;

    let (status, _, body) = send(
        server
            .http
            .post(server.url("/api/auth/login"))
            .header(CONTENT_TYPE, "application/json")
            .body(r#"{"phone": "13800138001", "code": "#),
    )
    .await;

    assert_refused(status, &body, 400, 2000);
}

#[tokio::test]
async fn a_login_body_with_wrong_field_types_is_refused_with_the_envelope() {
    let server = TestServer::start().await;
    for body in [
        json!({ "phone": 13800138001u64, "code": "123456" }),
        json!({ "phone": "13800138001", "code": 123456 }),
        json!({ "phone": ["13800138001"], "code": "123456" }),
        json!({ "phone": "13800138001" }),
        json!([]),
        json!("13800138001"),
    ] {
        let (status, reply) = server
            .post("/api/auth/login", None, body.clone(), &[])
            .await;
        assert_refused(status, &reply, 400, 2000);
    }
}

#[tokio::test]
async fn a_login_body_without_a_json_content_type_is_refused_with_the_envelope() {
    let server = TestServer::start().await;
    let phone = unique_phone();
    let text = json!({ "phone": phone, "code": "123456" }).to_string();

    let (status, _, body) = send(
        server
            .http
            .post(server.url("/api/auth/login"))
            .body(text.clone()),
    )
    .await;
    assert_refused(status, &body, 400, 2000);

    let (status, _, body) = send(
        server
            .http
            .post(server.url("/api/auth/login"))
            .header(CONTENT_TYPE, "text/plain")
            .body(text),
    )
    .await;
    assert_refused(status, &body, 400, 2000);
    assert_eq!(users_with_mobile(&server, &phone).await, 0);
}

// ---------------------------------------------------------------------------
// Send code
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_second_code_for_the_same_phone_right_away_is_rate_limited_with_1003() {
    let server = TestServer::start().await;
    let phone = unique_phone();

    let (status, body) = server
        .post("/api/auth/send-code", None, json!({ "phone": phone }), &[])
        .await;
    ok_data(status, &body);

    let (status, body) = server
        .post("/api/auth/send-code", None, json!({ "phone": phone }), &[])
        .await;
    assert_refused(status, &body, 429, 1003);
}

#[tokio::test]
async fn a_code_for_an_invalid_phone_is_refused_with_1001() {
    let server = TestServer::start().await;
    for phone in ["12800138001", "1380013800", "13800138001\n", ""] {
        let (status, body) = server
            .post("/api/auth/send-code", None, json!({ "phone": phone }), &[])
            .await;
        assert_refused(status, &body, 400, 1001);
    }
}

// ---------------------------------------------------------------------------
// Access tokens
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_request_without_a_token_is_refused_with_4001() {
    let server = TestServer::start().await;
    for path in [
        "/api/auth/verify",
        "/api/user/info",
        "/api/user/points/records",
    ] {
        let (status, body) = server.get(path, None).await;
        assert_refused(status, &body, 401, 4001);
        assert_eq!(body["msg"], "缺少访问令牌");
    }
    let (status, _, body) = send(
        server
            .http
            .get(server.url("/api/user/info"))
            .header("Authorization", "Bearer "),
    )
    .await;
    assert_refused(status, &body, 401, 4001);
}

#[tokio::test]
async fn a_garbage_token_is_refused_with_4002() {
    let server = TestServer::start().await;
    for token in ["garbage", "not.a.jwt", "eyJhbGciOiJIUzI1NiJ9.e30.AAAA"] {
        let (status, body) = server.get("/api/user/info", Some(token)).await;
        assert_refused(status, &body, 401, 4002);
    }
}

#[tokio::test]
async fn a_token_signed_with_another_secret_is_refused_with_4002() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let claims = claims_of(&server, &user.access_token);

    let forged = sign("an-entirely-different-secret-of-32-chars!", &claims);

    let (status, body) = server.get("/api/user/info", Some(&forged)).await;
    assert_refused(status, &body, 401, 4002);
    let (status, body) = server.get("/api/user/info", Some(&user.access_token)).await;
    ok_data(status, &body);
}

#[tokio::test]
async fn an_expired_token_is_refused_with_4003() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let mut claims = claims_of(&server, &user.access_token);
    claims["iat"] = json!(now() - 7300);
    claims["exp"] = json!(now() - 100);

    let expired = sign(server.state.config.jwt_secret.expose(), &claims);

    let (status, body) = server.get("/api/user/info", Some(&expired)).await;
    assert_refused(status, &body, 401, 4003);
}

#[tokio::test]
async fn a_well_signed_token_that_is_not_an_access_token_is_refused_with_4002() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let mut claims = claims_of(&server, &user.access_token);
    claims["typ"] = json!("refresh");

    let token = sign(server.state.config.jwt_secret.expose(), &claims);

    let (status, body) = server.get("/api/user/info", Some(&token)).await;
    assert_refused(status, &body, 401, 4002);
}

// ---------------------------------------------------------------------------
// Refresh
// ---------------------------------------------------------------------------

#[tokio::test]
async fn refreshing_returns_a_new_pair_whose_access_token_works() {
    let server = TestServer::start().await;
    let user = server.login_new().await;

    let (status, body) = refresh(&server, &user.refresh_token).await;
    let pair = ok_data(status, &body);

    let access = pair["access_token"].as_str().unwrap();
    let refresh_token = pair["refresh_token"].as_str().unwrap();
    assert_ne!(
        refresh_token, user.refresh_token,
        "the refresh token rotates"
    );
    assert_eq!(pair["expires_in"], 7200);
    let (status, body) = verify(&server, access).await;
    let data = ok_data(status, &body);
    assert_eq!(data["valid"], true);
    assert_eq!(data["user_info"]["user_id"], user.user_id);
}

#[tokio::test]
async fn reusing_a_refresh_token_revokes_its_whole_family() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let (status, body) = refresh(&server, &user.refresh_token).await;
    let pair = ok_data(status, &body);
    let newer_access = pair["access_token"].as_str().unwrap().to_string();
    let newer_refresh = pair["refresh_token"].as_str().unwrap().to_string();

    let (status, body) = refresh(&server, &user.refresh_token).await;
    assert_refused(status, &body, 401, 1005);

    let (status, body) = refresh(&server, &newer_refresh).await;
    assert_refused(status, &body, 401, 1004);
    let (status, body) = verify(&server, &newer_access).await;
    assert_refused(status, &body, 401, 4002);
    let (status, body) = verify(&server, &user.access_token).await;
    assert_refused(status, &body, 401, 4002);
}

#[tokio::test]
async fn reuse_revokes_only_the_family_of_the_reused_token() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let other = server.login(&user.phone).await;
    let (status, body) = refresh(&server, &user.refresh_token).await;
    ok_data(status, &body);

    let (status, body) = refresh(&server, &user.refresh_token).await;
    assert_refused(status, &body, 401, 1005);

    let (status, body) = verify(&server, &other.access_token).await;
    ok_data(status, &body);
    let (status, body) = refresh(&server, &other.refresh_token).await;
    ok_data(status, &body);
}

#[tokio::test]
async fn two_concurrent_refreshes_of_one_token_let_exactly_one_through() {
    let server = TestServer::start().await;
    let user = server.login_new().await;

    let results = join_all((0..2).map(|_| refresh(&server, &user.refresh_token))).await;

    let succeeded = results.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(succeeded, 1, "exactly one refresh succeeds: {results:?}");
    for (status, body) in results.iter().filter(|(s, _)| *s != 200) {
        assert_eq!(*status, 401, "the loser is refused: {body}");
        assert!(
            body["code"] == 1005 || body["code"] == 1004,
            "the loser is refused as a reuse: {body}"
        );
    }
}

#[tokio::test]
async fn a_refresh_token_that_was_never_issued_is_refused_with_1004() {
    let server = TestServer::start().await;
    for token in ["nonsense", "", &"x".repeat(500)] {
        let (status, body) = refresh(&server, token).await;
        assert_refused(status, &body, 401, 1004);
    }
}

// ---------------------------------------------------------------------------
// Logout
// ---------------------------------------------------------------------------

#[tokio::test]
async fn logging_out_ends_the_session_but_not_the_users_other_sessions() {
    let server = TestServer::start().await;
    let phone_session = server.login_new().await;
    let tablet_session = server.login(&phone_session.phone).await;
    assert_eq!(tablet_session.user_id, phone_session.user_id);

    let (status, body) = server
        .post(
            "/api/auth/logout",
            Some(&phone_session.access_token),
            json!({}),
            &[],
        )
        .await;
    ok_data(status, &body);

    let (status, body) = refresh(&server, &phone_session.refresh_token).await;
    assert_refused(status, &body, 401, 1004);
    let (status, body) = verify(&server, &phone_session.access_token).await;
    assert_refused(status, &body, 401, 4002);
    let (status, body) = server
        .get("/api/user/info", Some(&phone_session.access_token))
        .await;
    assert_refused(status, &body, 401, 4002);

    let (status, body) = verify(&server, &tablet_session.access_token).await;
    ok_data(status, &body);
    let (status, body) = refresh(&server, &tablet_session.refresh_token).await;
    ok_data(status, &body);
}

#[tokio::test]
async fn logging_out_without_a_token_is_refused_with_4001() {
    let server = TestServer::start().await;
    let (status, body) = server.post("/api/auth/logout", None, json!({}), &[]).await;
    assert_refused(status, &body, 401, 4001);
}

// ---------------------------------------------------------------------------
// Verify and user info
// ---------------------------------------------------------------------------

#[tokio::test]
async fn verify_says_valid_and_returns_every_user_info_field() {
    let server = TestServer::start().await;
    let user = server.login_new().await;

    let (status, body) = verify(&server, &user.access_token).await;
    let data = ok_data(status, &body);

    let mut keys: Vec<&str> = data
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["user_info", "valid"], "verify's fields: {data}");
    assert_eq!(data["valid"], true);
    assert_new_user_info(&data["user_info"], &user);
}

#[tokio::test]
async fn user_info_returns_every_field_with_the_mobile_masked() {
    let server = TestServer::start().await;
    let user = server.login_new().await;

    let (status, body) = server.get("/api/user/info", Some(&user.access_token)).await;
    let info = ok_data(status, &body);

    assert_new_user_info(&info, &user);
    assert!(
        !body.to_string().contains(&user.phone),
        "the full number never appears: {body}"
    );
}

// ---------------------------------------------------------------------------
// Points records
// ---------------------------------------------------------------------------

/// A new user who has drawn three times: a register bonus, three spends
/// of 100 and whatever points prizes the wheel gave.
async fn user_with_three_draws(server: &TestServer) -> User {
    let user = server.login_new().await;
    for _ in 0..3 {
        server.draw_once(&user).await;
    }
    user
}

#[tokio::test]
async fn points_records_list_newest_first_with_pagination() {
    let server = TestServer::start().await;
    let user = user_with_three_draws(&server).await;
    let audit = server.audit(user.user_id).await;
    audit.assert_consistent();

    let (status, body) = records(&server, &user, "").await;
    let page = ok_data(status, &body);

    let rows = page["records"].as_array().unwrap();
    let total = rows.len() as u64;
    assert!(total >= 4, "register + three spends at least: {page}");
    let p = &page["pagination"];
    assert_eq!(p["total"], total);
    assert_eq!(p["page"], 1);
    assert_eq!(p["limit"], 20);
    assert_eq!(p["total_pages"], 1);
    let ids: Vec<u64> = rows
        .iter()
        .map(|r| r["record_id"].as_u64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    assert_eq!(
        rows[0]["balance_after"], audit.total_points,
        "newest is current"
    );
    let oldest = rows.last().unwrap();
    assert_eq!(oldest["source"], "register");
    assert_eq!(oldest["balance_after"], 1000);
    for r in rows {
        for field in [
            "record_id",
            "type",
            "points",
            "balance_after",
            "source",
            "description",
            "related_id",
            "created_at",
        ] {
            assert!(r.get(field).is_some(), "{field} in {r}");
        }
        assert!(
            r["points"].as_i64().unwrap() > 0,
            "points are positive: {r}"
        );
        let at = r["created_at"].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(at).is_ok(),
            "created_at is RFC 3339: {at}"
        );
    }

    let (status, body) = records(&server, &user, "?page=1&page_size=2").await;
    let first = ok_data(status, &body);
    let (status, body) = records(&server, &user, "?page=2&page_size=2").await;
    let second = ok_data(status, &body);
    assert_eq!(first["pagination"]["total_pages"], total.div_ceil(2));
    assert_eq!(first["pagination"]["limit"], 2);
    assert_eq!(second["pagination"]["page"], 2);
    let paged: Vec<u64> = first["records"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["records"].as_array().unwrap())
        .map(|r| r["record_id"].as_u64().unwrap())
        .collect();
    assert_eq!(paged, ids[..4], "pages continue one another");
}

#[tokio::test]
async fn points_records_clamp_a_page_size_above_100_to_100() {
    let server = TestServer::start().await;
    let user = server.login_new().await;

    let (status, body) = records(&server, &user, "?page_size=1000").await;
    let page = ok_data(status, &body);

    assert_eq!(page["pagination"]["limit"], 100);
    assert_eq!(page["records"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_page_of_points_records_past_the_end_is_empty() {
    let server = TestServer::start().await;
    let user = server.login_new().await;

    let (status, body) = records(&server, &user, "?page=99&page_size=20").await;
    let page = ok_data(status, &body);

    assert_eq!(page["records"], json!([]));
    assert_eq!(page["pagination"]["total"], 1);
    assert_eq!(page["pagination"]["page"], 99);
}

#[tokio::test]
async fn bad_paging_parameters_of_points_records_are_refused_with_2000() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    for query in [
        "?page=0",
        "?page_size=0",
        "?page=abc",
        "?page_size=abc",
        "?page=-1",
        "?page=1.5",
    ] {
        let (status, body) = records(&server, &user, query).await;
        assert_refused(status, &body, 400, 2000);
    }
}

#[tokio::test]
async fn points_records_filter_by_type() {
    let server = TestServer::start().await;
    let user = user_with_three_draws(&server).await;

    let (status, body) = records(&server, &user, "?type=earn").await;
    let earn = ok_data(status, &body);
    let (status, body) = records(&server, &user, "?type=spend").await;
    let spend = ok_data(status, &body);
    let (status, body) = records(&server, &user, "?type=all").await;
    let all = ok_data(status, &body);

    let earn_rows = earn["records"].as_array().unwrap();
    assert!(earn_rows.iter().all(|r| r["type"] == "earn"), "{earn}");
    assert!(
        earn_rows.iter().any(|r| r["source"] == "register"),
        "the register bonus is earned: {earn}"
    );
    let spend_rows = spend["records"].as_array().unwrap();
    assert!(spend_rows.iter().all(|r| r["type"] == "spend"), "{spend}");
    assert_eq!(spend_rows.len(), 3, "one spend per draw: {spend}");
    assert!(
        spend_rows
            .iter()
            .all(|r| r["points"] == 100 && r["source"] == "lottery"),
        "{spend}"
    );
    assert_eq!(spend["pagination"]["total"], 3);
    assert_eq!(
        earn["pagination"]["total"].as_u64().unwrap() + 3,
        all["pagination"]["total"].as_u64().unwrap(),
        "earn and spend make up all"
    );
}

#[tokio::test]
async fn an_unknown_type_filter_on_points_records_is_refused_with_2000() {
    let server = TestServer::start().await;
    let user = server.login_new().await;

    let (status, body) = records(&server, &user, "?type=bogus").await;

    assert_refused(status, &body, 400, 2000);
}

#[tokio::test]
async fn points_records_filter_by_source() {
    let server = TestServer::start().await;
    let user = user_with_three_draws(&server).await;

    let (status, body) = records(&server, &user, "?source=register").await;
    let register = ok_data(status, &body);
    let (status, body) = records(&server, &user, "?source=lottery").await;
    let lottery = ok_data(status, &body);

    let rows = register["records"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{register}");
    assert_eq!(rows[0]["source"], "register");
    assert_eq!(register["pagination"]["total"], 1);
    let rows = lottery["records"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{lottery}");
    assert!(rows.iter().all(|r| r["source"] == "lottery"), "{lottery}");
}

#[tokio::test]
async fn an_unknown_source_filter_on_points_records_is_refused_with_2000() {
    let server = TestServer::start().await;
    let user = server.login_new().await;

    let (status, body) = records(&server, &user, "?source=nope").await;

    assert_refused(status, &body, 400, 2000);
}

#[tokio::test]
async fn points_records_show_only_the_callers_own_records() {
    let server = TestServer::start().await;
    let drawer = user_with_three_draws(&server).await;
    let bystander = server.login_new().await;

    let (status, body) = records(&server, &bystander, "").await;
    let page = ok_data(status, &body);

    assert_eq!(page["pagination"]["total"], 1, "{page}");
    let (status, body) = records(&server, &drawer, "").await;
    let page = ok_data(status, &body);
    assert!(page["pagination"]["total"].as_u64().unwrap() >= 4, "{page}");
}

// ---------------------------------------------------------------------------
// Envelope details
// ---------------------------------------------------------------------------

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let requests = [
        server
            .http
            .get(server.url("/api/user/info"))
            .bearer_auth(&user.access_token),
        server.http.get(server.url("/api/user/info")),
        server.http.get(server.url("/api/does/not/exist")),
        server.http.get(server.url("/api/auth/login")),
        server.http.get(server.url("/health")),
        server.http.get(server.url("/metrics")),
        server
            .http
            .post(server.url("/api/auth/login"))
            .json(&json!({ "phone": "1", "code": "123456" })),
    ];
    let mut ids = Vec::new();
    for req in requests {
        let (status, headers, _) = send(req).await;
        let id = headers
            .get("x-request-id")
            .unwrap_or_else(|| panic!("X-Request-Id on a {status} response"))
            .to_str()
            .unwrap()
            .to_string();
        assert!(!id.is_empty());
        ids.push(id);
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        ids.len(),
        "each request has its own id: {ids:?}"
    );
}

#[tokio::test]
async fn a_request_id_sent_by_the_client_is_echoed_back() {
    let server = TestServer::start().await;
    let user = server.login_new().await;

    let (_, headers, _) = send(
        server
            .http
            .get(server.url("/api/user/info"))
            .bearer_auth(&user.access_token)
            .header("X-Request-Id", "abc-123"),
    )
    .await;
    assert_eq!(headers["x-request-id"], "abc-123");

    let (status, headers, _) = send(
        server
            .http
            .get(server.url("/api/user/info"))
            .header("X-Request-Id", "abc-123"),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(headers["x-request-id"], "abc-123", "errors echo it too");
}

#[tokio::test]
async fn an_unknown_api_route_answers_404_in_the_envelope() {
    let server = TestServer::start().await;
    for req in [
        server.http.get(server.url("/api/does/not/exist")),
        server
            .http
            .post(server.url("/api/does/not/exist"))
            .json(&json!({})),
        server.http.get(server.url("/api/auth/nothing-here")),
    ] {
        let (status, headers, body) = send(req).await;
        assert_refused(status, &body, 404, 2001);
        let content_type = headers[CONTENT_TYPE].to_str().unwrap();
        assert!(
            content_type.starts_with("application/json"),
            "JSON, not HTML: {content_type}"
        );
    }
}

#[tokio::test]
async fn a_wrong_method_answers_405_in_the_envelope() {
    let server = TestServer::start().await;

    let (status, headers, body) = send(server.http.get(server.url("/api/auth/login"))).await;

    assert_refused(status, &body, 405, 2008);
    assert!(
        headers[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
}

// ---------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------

#[tokio::test]
async fn health_and_healthz_report_healthy_with_the_database_up() {
    let server = TestServer::start().await;
    for path in ["/health", "/healthz"] {
        let (status, body) = server.get(path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["status"], "healthy", "{path}: {body}");
        assert_eq!(body["checks"]["database"]["status"], "up", "{path}: {body}");
        assert!(body["uptime_s"].is_u64(), "{path}: {body}");
        assert!(body["version"].is_string(), "{path}: {body}");
    }
}

#[tokio::test]
async fn metrics_are_served_as_openmetrics_text() {
    let server = TestServer::start().await;

    let res = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();

    assert_eq!(res.status().as_u16(), 200);
    let content_type = res.headers()[CONTENT_TYPE].to_str().unwrap().to_string();
    // OpenMetrics text, which Prometheus reads.
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = res.text().await.unwrap();
    assert!(
        text.contains("# TYPE points_ws_connections gauge"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("points_ws_connections ")
            && l["points_ws_connections ".len()..]
                .trim()
                .parse::<u64>()
                .is_ok()),
        "a numeric points_ws_connections sample: {text}"
    );
}

// ---------------------------------------------------------------------------
// Start-up
// ---------------------------------------------------------------------------

#[tokio::test]
async fn servers_starting_together_on_an_empty_database_all_start() {
    let base = common::database_url().await;
    let root = base[..base.rfind('/').unwrap()].to_string();
    let db = format!("rpt_auth_start_race_{}", rand::random::<u32>());
    let admin = sqlx::MySqlPool::connect(&root).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE `{db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    )))
    .execute(&admin)
    .await
    .unwrap();
    let url = format!("{root}/{db}");

    let configs = (0..4).map(|_| {
        let url = url.clone();
        async move {
            let mut config = common::test_config().await;
            config.database_url = restaurant_points::config::Secret::new(url);
            restaurant_points::prepare(config)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    });
    let results = join_all(configs).await;

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS `{db}`"
    )))
    .execute(&admin)
    .await
    .unwrap();
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "every server prepares on a fresh database: {failures:?}"
    );
}
