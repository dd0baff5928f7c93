//! The merchant's points adjustment and wheel settings.

mod common;

use common::{TestServer, User};
use serde_json::json;

async fn merchant(server: &TestServer) -> User {
    server.login("13900000000").await
}

#[tokio::test]
async fn a_merchant_grants_and_deducts_points_and_the_guest_sees_each_change_pushed() {
    let server = TestServer::start().await;
    let m = merchant(&server).await;
    let guest = server.login_new().await;
    let mut ws = server.connect(&guest).await;

    let (status, body) = server
        .post(
            "/api/merchant/points/adjust",
            Some(&m.access_token),
            json!({ "user_id": guest.user_id, "points": 250, "reason": "生日礼物" }),
            &[],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["total_points"], 1250);
    let update = ws.next_of("points_update").await;
    assert_eq!(update.seq, Some(2));
    assert_eq!(update.data["change_points"], 250);
    assert_eq!(update.data["source"], "admin");

    let (status, body) = server
        .post(
            "/api/merchant/points/adjust",
            Some(&m.access_token),
            json!({ "user_id": guest.user_id, "points": -50, "reason": "误操作更正" }),
            &[],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["total_points"], 1200);
    assert_eq!(ws.next_of("points_update").await.data["change_points"], -50);

    let (_, records) = server
        .get(
            "/api/user/points/records?source=admin",
            Some(&guest.access_token),
        )
        .await;
    let kinds: Vec<_> = records["data"]["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["type"].as_str().unwrap().to_string(),
                r["points"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [("spend".to_string(), 50), ("earn".to_string(), 250)]
    );
    server.audit(guest.user_id).await.assert_consistent();
}

#[tokio::test]
async fn a_deduction_below_zero_and_bad_adjustments_change_nothing() {
    let server = TestServer::start().await;
    let m = merchant(&server).await;
    let guest = server.login_new().await;
    let cases = [
        (
            json!({ "user_id": guest.user_id, "points": -1001, "reason": "x" }),
            422,
            4005,
        ),
        (
            json!({ "user_id": guest.user_id, "points": 0, "reason": "x" }),
            400,
            2000,
        ),
        (
            json!({ "user_id": guest.user_id, "points": 2_000_000, "reason": "x" }),
            400,
            2000,
        ),
        (
            json!({ "user_id": guest.user_id, "points": 5, "reason": "  " }),
            400,
            2000,
        ),
        (json!({ "user_id": guest.user_id, "points": 5 }), 400, 2000),
        (
            json!({ "user_id": 999_999_999u64, "points": 5, "reason": "x" }),
            404,
            2001,
        ),
        (
            json!({ "user_id": "me", "points": 5, "reason": "x" }),
            400,
            2000,
        ),
    ];
    for (body, want_status, want_code) in cases {
        let (status, res) = server
            .post(
                "/api/merchant/points/adjust",
                Some(&m.access_token),
                body.clone(),
                &[],
            )
            .await;
        assert_eq!(
            (status, res["code"].as_i64().unwrap()),
            (want_status, want_code),
            "{body} -> {res}"
        );
    }
    let audit = server.audit(guest.user_id).await;
    assert_eq!((audit.total_points, audit.last_seq), (1000, 1));
    audit.assert_consistent();

    let (status, res) = server
        .post(
            "/api/merchant/points/adjust",
            Some(&guest.access_token),
            json!({ "user_id": guest.user_id, "points": 5, "reason": "x" }),
            &[],
        )
        .await;
    assert_eq!(
        (status, res["code"].as_i64().unwrap()),
        (403, 2003),
        "a guest cannot grant points"
    );
}

/// One test owns the wheel's settings in this binary's database, so no
/// other test here depends on them.
#[tokio::test]
async fn wheel_settings_change_the_next_draw_and_other_instances_follow() {
    let server = TestServer::start().await;
    let other_instance =
        TestServer::start_with(|c| c.wheel_reload_interval = std::time::Duration::from_millis(200))
            .await;
    let m = merchant(&server).await;
    let guest = server.login_new().await;

    let (_, before) = server
        .get("/api/merchant/lottery/settings", Some(&m.access_token))
        .await;
    let version = before["data"]["version"].as_u64().unwrap();

    let put = |body| {
        let server = &server;
        let token = m.access_token.clone();
        async move {
            let res = server
                .http
                .put(server.url("/api/merchant/lottery/settings"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            (status, res.json::<serde_json::Value>().await.unwrap())
        }
    };
    for bad in [
        json!({ "cost_points": 0 }),
        json!({ "pity_threshold": 0 }),
        json!({ "daily_limit": 10_001 }),
        json!({ "colour": "red" }),
    ] {
        let (status, res) = put(bad.clone()).await;
        assert_eq!(
            (status, res["code"].as_i64().unwrap()),
            (400, 2000),
            "{bad}"
        );
    }

    let (status, res) = put(json!({ "cost_points": 150, "daily_limit": 0 })).await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["data"]["version"].as_u64().unwrap(), version + 1);
    assert_eq!(res["data"]["daily_limit"], 0);

    let (_, config) = server
        .get("/api/lottery/config", Some(&guest.access_token))
        .await;
    assert_eq!(config["data"]["cost_points"], 150);
    let (_, drawn) = server
        .post(
            "/api/lottery/draw",
            Some(&guest.access_token),
            json!({ "draw_count": 1 }),
            &[],
        )
        .await;
    assert_eq!(drawn["data"]["points_cost"], 150, "{drawn}");

    // The other instance notices the new version by itself.
    let mut seen = 0;
    for _ in 0..200 {
        let (_, c) = other_instance
            .get("/api/lottery/config", Some(&guest.access_token))
            .await;
        seen = c["data"]["cost_points"].as_i64().unwrap();
        if seen == 150 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(seen, 150, "the other instance reloaded the wheel");

    let (status, _) = put(json!({ "cost_points": 100, "daily_limit": 50 })).await;
    assert_eq!(status, 200);
}
