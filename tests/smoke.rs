//! One pass through the whole slice: log in over REST, open the socket,
//! draw on it, and see the points change pushed back.

mod common;

use common::TestServer;
use serde_json::json;

#[tokio::test]
async fn a_guest_logs_in_draws_on_the_socket_and_sees_the_points_pushed() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let mut ws = server.connect(&user).await;
    let welcome = ws.welcome.clone().unwrap();
    assert_eq!(welcome.data["total_points"], 1000);
    assert_eq!(welcome.data["last_seq"], 1, "the register bonus is event 1");

    let reply = ws
        .command("d-1", "lottery.draw", json!({ "draw_count": 1 }))
        .await;
    assert_eq!(reply.code, Some(0), "{reply:?}");
    let remaining = reply.data["remaining_points"].as_i64().unwrap();

    let update = ws.next_of("points_update").await;
    assert_eq!(update.seq, Some(2));
    assert_eq!(update.data["total_points"].as_i64().unwrap(), remaining);
    assert_eq!(update.data["source"], "lottery");
    server.audit(user.user_id).await.assert_consistent();
}
