//! `/ws` over real sockets and a real database: the refusals before the
//! upgrade, the frames a socket answers, heartbeat and liveness, the bounds
//! (frame size, command rate, sockets per user, outbox), logout and token
//! refresh, replay after a reconnect, fan-out and shutdown.

mod common;

use common::{TestServer, User, WAIT, WsClient};
use futures::{SinkExt, StreamExt};
use protocol::ServerFrame;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Tries to open `/ws…` and expects a refusal before the upgrade: returns
/// the HTTP status and the JSON body of the refusal.
async fn refused_upgrade(
    server: &TestServer,
    path_and_query: &str,
    bearer: Option<&str>,
) -> (u16, Value) {
    let (status, body, _) = refused_upgrade_with_headers(server, path_and_query, bearer).await;
    (status, body)
}

/// Like `refused_upgrade`, with the refusal's headers.
async fn refused_upgrade_with_headers(
    server: &TestServer,
    path_and_query: &str,
    bearer: Option<&str>,
) -> (u16, Value, axum::http::HeaderMap) {
    let mut request = format!("ws://{}{}", server.addr, path_and_query)
        .into_client_request()
        .unwrap();
    if let Some(token) = bearer {
        request
            .headers_mut()
            .insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Err(WsError::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_deref()
                .map(|b| serde_json::from_slice(b).expect("the refusal body is JSON"))
                .unwrap_or(Value::Null);
            (status, body, response.headers().clone())
        }
        Err(other) => panic!("expected an HTTP refusal, got {other:?}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
}

/// Opens a socket authenticated by the `Authorization` header only.
async fn connect_with_bearer_header(server: &TestServer, user: &User) -> WsClient {
    let mut request = format!("ws://{}/ws", server.addr)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        AUTHORIZATION,
        format!("Bearer {}", user.access_token).parse().unwrap(),
    );
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket connects with a bearer header");
    let mut client = WsClient {
        ws,
        pending: Vec::new(),
        welcome: None,
    };
    let welcome = client.next().await;
    assert_eq!(
        welcome.kind, "welcome",
        "first frame is welcome: {welcome:?}"
    );
    client.welcome = Some(welcome);
    client
}

/// The next raw message (ping, pong, text, close…) within `WAIT`.
async fn next_message(ws: &mut WsClient) -> Message {
    tokio::time::timeout(WAIT, ws.ws.next())
        .await
        .expect("a message arrives in time")
        .expect("socket open")
        .expect("message reads")
}

/// Reads every JSON frame until the server's close frame; returns the
/// frames in order and the close code.
async fn frames_until_close(ws: &mut WsClient) -> (Vec<ServerFrame>, Option<u16>) {
    let mut frames = std::mem::take(&mut ws.pending);
    loop {
        match tokio::time::timeout(WAIT, ws.ws.next())
            .await
            .expect("the server closes in time")
        {
            Some(Ok(Message::Text(t))) => {
                frames.push(serde_json::from_str(&t).expect("server frames are JSON"))
            }
            Some(Ok(Message::Close(frame))) => return (frames, frame.map(|f| u16::from(f.code))),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return (frames, None),
        }
    }
}

/// Asserts the socket still answers the `ping` command.
async fn assert_answers_ping(ws: &mut WsClient, id: &str) {
    let reply = ws.command(id, "ping", json!({})).await;
    assert_eq!(reply.code, Some(0), "the socket still answers: {reply:?}");
}

/// A user who drew once on a socket (event 2, seen live), went away, and
/// drew twice more over REST while offline (events 3 and 4, unseen).
async fn a_user_who_missed_two_events(server: &TestServer) -> User {
    let user = server.login_new().await;
    let mut ws = server.connect(&user).await;
    let reply = ws
        .command("draw-online", "lottery.draw", json!({ "draw_count": 1 }))
        .await;
    assert_eq!(reply.code, Some(0), "{reply:?}");
    let update = ws.next_of("points_update").await;
    assert_eq!(update.seq, Some(2));
    ws.ws.close(None).await.unwrap();
    drop(ws);

    server.draw_once(&user).await;
    server.draw_once(&user).await;
    let audit = server.audit(user.user_id).await;
    audit.assert_consistent();
    assert_eq!(audit.last_seq, 4);
    user
}

/// `checks.websocket.connections` of `/health`.
async fn health_connections(server: &TestServer) -> u64 {
    let (status, body) = server.get("/health", None).await;
    assert_eq!(status, 200, "health: {body}");
    body["checks"]["websocket"]["connections"]
        .as_u64()
        .unwrap_or_else(|| panic!("health reports websocket connections: {body}"))
}

/// Polls `/health` (bounded by `WAIT`) until it reports `expected` sockets.
async fn wait_for_health_connections(server: &TestServer, expected: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = health_connections(server).await;
        if seen == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/health still reports {seen} connections, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls (bounded by `WAIT`) until some transaction waits for a lock held
/// by the transaction `holder_trx`.
async fn wait_until_blocked_by(server: &TestServer, holder_trx: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (waiting,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM information_schema.INNODB_LOCK_WAITS WHERE blocking_trx_id = ?",
        )
        .bind(holder_trx)
        .fetch_one(&server.db)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nothing waited for the held row lock"
        );
        // InnoDB refreshes these tables only when they were not read for
        // 100 ms: polling faster would read the same stale snapshot forever.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Upgrades a raw TCP stream by hand; returns it with whatever bytes came
/// after the `101` response's headers.
async fn raw_upgrade(server: &TestServer, token: &str) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET /ws?token={token} HTTP/1.1\r\n\
         Host: {}\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let end_of_headers = loop {
        if let Some(i) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("the upgrade response arrives in time")
            .unwrap();
        assert!(n > 0, "the server hung up during the upgrade");
        received.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&received[..end_of_headers]).to_string();
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "the upgrade is accepted: {head}"
    );
    (stream, received[end_of_headers..].to_vec())
}

/// Splits unmasked server-to-client bytes into `(opcode, payload)` frames.
fn parse_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 2 {
        let opcode = bytes[0] & 0x0f;
        assert_eq!(bytes[1] & 0x80, 0, "server frames are not masked");
        let (len, header) = match bytes[1] & 0x7f {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        assert!(bytes.len() >= header + len, "a truncated frame");
        frames.push((opcode, bytes[header..header + len].to_vec()));
        bytes = &bytes[header + len..];
    }
    assert!(bytes.is_empty(), "trailing bytes after the last frame");
    frames
}

// ---------------------------------------------------------------------------
// Refusals before the upgrade
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_socket_without_a_token_is_refused_with_401_and_code_4001() {
    let server = TestServer::start().await;
    let (status, body) = refused_upgrade(&server, "/ws", None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], 4001, "{body}");
    assert!(body["msg"].is_string(), "the REST envelope: {body}");
    assert!(body["data"].is_null(), "the REST envelope: {body}");
}

#[tokio::test]
async fn a_socket_past_the_connection_cap_is_refused_with_503_2009_and_retry_after() {
    let server = TestServer::start_with(|c| c.ws_max_connections = 2).await;
    let (a, b, c) = (
        server.login_new().await,
        server.login_new().await,
        server.login_new().await,
    );
    let _first = server.connect(&a).await;
    let _second = server.connect(&b).await;
    let (status, body, headers) =
        refused_upgrade_with_headers(&server, &format!("/ws?token={}", c.access_token), None).await;
    assert_eq!((status, body["code"].as_i64()), (503, Some(2009)), "{body}");
    assert_eq!(
        headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1"),
        "a full server says when to retry"
    );
    drop(_first);
    wait_for_health_connections(&server, 1).await;
    let _third = server.connect(&c).await;
}

#[tokio::test]
async fn a_socket_with_a_bad_token_is_refused_with_401_and_code_4002() {
    let server = TestServer::start().await;
    let (status, body) = refused_upgrade(&server, "/ws?token=not-a-token", None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], 4002, "{body}");

    let (status, body) = refused_upgrade(&server, "/ws", Some("not-a-token")).await;
    assert_eq!(status, 401, "a bad bearer header too: {body}");
    assert_eq!(body["code"], 4002, "{body}");
}

#[tokio::test]
async fn a_token_in_the_authorization_header_opens_the_socket_like_the_query_does() {
    let server = TestServer::start().await;
    let user = server.login_new().await;

    let mut by_header = connect_with_bearer_header(&server, &user).await;
    let mut by_query = server.connect(&user).await;
    for ws in [&mut by_header, &mut by_query] {
        let welcome = ws.welcome.clone().unwrap();
        assert_eq!(welcome.data["user_id"].as_u64(), Some(user.user_id));
        assert_answers_ping(ws, "p-1").await;
    }
}

// ---------------------------------------------------------------------------
// Welcome and ping
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_welcome_tells_the_user_their_points_last_seq_heartbeat_and_server_time() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let ws = server.connect(&user).await;
    let welcome = ws.welcome.clone().unwrap();

    assert_eq!(welcome.seq, None, "welcome is not a user event");
    let d = &welcome.data;
    assert_eq!(d["user_id"].as_u64(), Some(user.user_id), "{d}");
    assert_eq!(d["total_points"], 1000, "{d}");
    assert_eq!(d["last_seq"], 1, "the register bonus is event 1: {d}");
    assert_eq!(
        d["heartbeat_interval_ms"].as_u64(),
        Some(server.state.config.heartbeat_interval.as_millis() as u64),
        "{d}"
    );
    let server_time = d["server_time"].as_str().expect("server_time is a string");
    chrono::DateTime::parse_from_rfc3339(server_time)
        .unwrap_or_else(|e| panic!("server_time {server_time:?} is RFC 3339: {e}"));
}

#[tokio::test]
async fn the_ping_command_is_answered_with_its_id_and_the_server_time() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let mut ws = server.connect(&user).await;

    let reply = ws.command("hb-42", "ping", json!({})).await;
    assert_eq!(reply.kind, "reply");
    assert_eq!(reply.id.as_deref(), Some("hb-42"));
    assert_eq!(reply.code, Some(0), "{reply:?}");
    let server_time = reply.data["server_time"]
        .as_str()
        .unwrap_or_else(|| panic!("the reply carries server_time: {reply:?}"));
    chrono::DateTime::parse_from_rfc3339(server_time)
        .unwrap_or_else(|e| panic!("server_time {server_time:?} is RFC 3339: {e}"));
}

// ---------------------------------------------------------------------------
// Heartbeat and liveness
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed_with_4000_after_two_intervals() {
    let interval = Duration::from_millis(300);
    let server = TestServer::start_with(|c| c.heartbeat_interval = interval).await;
    let user = server.login_new().await;

    let (mut stream, mut received) = raw_upgrade(&server, &user.access_token).await;
    let upgraded = Instant::now();
    // Read everything until the server hangs up, never writing a byte.
    tokio::time::timeout(WAIT, stream.read_to_end(&mut received))
        .await
        .expect("the server hangs up on a silent client")
        .expect("the connection ends cleanly");
    let lived = upgraded.elapsed();

    let frames = parse_frames(&received);
    let opcodes: Vec<u8> = frames.iter().map(|(op, _)| *op).collect();
    assert_eq!(
        opcodes.first(),
        Some(&0x1),
        "welcome comes first: {opcodes:?}"
    );
    assert!(opcodes.contains(&0x9), "the server pinged: {opcodes:?}");
    let (last_opcode, payload) = frames.last().unwrap();
    assert_eq!(*last_opcode, 0x8, "the last frame is a close: {opcodes:?}");
    assert!(payload.len() >= 2, "the close frame carries a code");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 4000);
    assert!(
        received.contains(&0x88),
        "a close frame (0x88) is on the wire"
    );
    assert!(
        lived >= interval * 2,
        "not closed before two intervals: {lived:?}"
    );
    assert!(
        lived < interval * 10,
        "closed about two intervals after going silent: {lived:?}"
    );
}

#[tokio::test]
async fn a_client_that_reads_and_answers_pings_stays_open_across_several_intervals() {
    let server =
        TestServer::start_with(|c| c.heartbeat_interval = Duration::from_millis(300)).await;
    let user = server.login_new().await;
    let mut ws = server.connect(&user).await;

    // tokio-tungstenite answers each ping with a pong as it reads.
    let mut pings = 0;
    while pings < 4 {
        match next_message(&mut ws).await {
            Message::Ping(_) => pings += 1,
            Message::Close(frame) => panic!("closed while answering pings: {frame:?}"),
            _ => {}
        }
    }
    assert_answers_ping(&mut ws, "still-here").await;
}

// ---------------------------------------------------------------------------
// Bad frames
// ---------------------------------------------------------------------------

#[tokio::test]
async fn malformed_json_gets_an_error_event_7002_and_the_socket_stays_open() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let mut ws = server.connect(&user).await;

    ws.send_text("{\"id\": \"x\", \"type\": ").await;
    let error = ws.next().await;
    assert_eq!(error.kind, "error", "{error:?}");
    assert_eq!(error.code, Some(7002), "{error:?}");
    assert_eq!(error.id, None);
    assert!(error.data.is_null(), "{error:?}");
    assert_answers_ping(&mut ws, "after-garbage").await;
}

#[tokio::test]
async fn a_frame_without_an_id_gets_an_error_event_7003() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let mut ws = server.connect(&user).await;

    ws.send_text(r#"{"type":"ping","data":{}}"#).await;
    let error = ws.next().await;
    assert_eq!(error.kind, "error", "{error:?}");
    assert_eq!(error.code, Some(7003), "{error:?}");
    assert_answers_ping(&mut ws, "after-no-id").await;
}

#[tokio::test]
async fn a_numeric_id_gets_an_error_event_7004() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let mut ws = server.connect(&user).await;

    ws.send_text(r#"{"id":7,"type":"ping","data":{}}"#).await;
    let error = ws.next().await;
    assert_eq!(error.kind, "error", "{error:?}");
    assert_eq!(error.code, Some(7004), "{error:?}");
    assert_answers_ping(&mut ws, "after-numeric-id").await;
}

#[tokio::test]
async fn an_id_with_illegal_characters_or_65_characters_gets_a_reply_7004_with_that_id() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let mut ws = server.connect(&user).await;

    let too_long = "x".repeat(65);
    for id in ["has space", "a/b", "中文", too_long.as_str()] {
        let reply = ws.command(id, "ping", json!({})).await;
        assert_eq!(reply.kind, "reply");
        assert_eq!(reply.id.as_deref(), Some(id));
        assert_eq!(reply.code, Some(7004), "id {id:?}: {reply:?}");
        assert!(reply.data.is_null(), "{reply:?}");
    }
    let longest = "y".repeat(64);
    assert_answers_ping(&mut ws, &longest).await;
}

#[tokio::test]
async fn an_unknown_command_type_gets_a_reply_7001() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let mut ws = server.connect(&user).await;

    let reply = ws.command("u-1", "lottery.cheat", json!({})).await;
    assert_eq!(reply.code, Some(7001), "{reply:?}");
    assert_answers_ping(&mut ws, "after-unknown").await;
}

#[tokio::test]
async fn a_draw_with_a_non_numeric_count_gets_a_reply_2000_and_charges_nothing() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let mut ws = server.connect(&user).await;

    let reply = ws
        .command("bad-count", "lottery.draw", json!({ "draw_count": "x" }))
        .await;
    assert_eq!(reply.code, Some(2000), "{reply:?}");
    let audit = server.audit(user.user_id).await;
    audit.assert_consistent();
    assert_eq!((audit.total_points, audit.last_seq), (1000, 1));
}

#[tokio::test]
async fn a_binary_frame_gets_an_error_event_7002_and_the_socket_stays_open() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let mut ws = server.connect(&user).await;

    ws.ws
        .send(Message::Binary(
            br#"{"id":"b","type":"ping"}"#.to_vec().into(),
        ))
        .await
        .unwrap();
    let error = ws.next().await;
    assert_eq!(error.kind, "error", "{error:?}");
    assert_eq!(error.code, Some(7002), "{error:?}");
    assert_answers_ping(&mut ws, "after-binary").await;
}

// ---------------------------------------------------------------------------
// Bounds: frame size, command rate, sockets per user, outbox
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_frame_over_the_size_limit_closes_that_socket_with_1009_and_spares_the_others() {
    let server = TestServer::start_with(|c| c.ws_max_frame_bytes = 1024).await;
    let big_user = server.login_new().await;
    let other_user = server.login_new().await;
    let mut big = server.connect(&big_user).await;
    let mut other = server.connect(&other_user).await;

    // Over the limit, but within one read of the server's buffer, so the
    // whole frame is consumed and the close frame is not lost to a reset.
    let padding = "x".repeat(2000);
    let frame = json!({ "id": "big", "type": "ping", "data": { "padding": padding } });
    big.send_text(&frame.to_string()).await;
    assert_eq!(big.closed().await, Some(1009));

    assert_answers_ping(&mut other, "unaffected").await;
}

#[tokio::test]
async fn an_unmasked_client_frame_closes_that_socket_with_4005_and_spares_the_others() {
    let server = TestServer::start().await;
    let bad_user = server.login_new().await;
    let other_user = server.login_new().await;
    let mut other = server.connect(&other_user).await;

    let (mut stream, mut received) = raw_upgrade(&server, &bad_user.access_token).await;
    // A text frame without the mask every client frame must carry.
    let command = br#"{"id":"bare","type":"ping","data":{}}"#;
    let mut frame = vec![0x81, command.len() as u8];
    frame.extend_from_slice(command);
    stream.write_all(&frame).await.unwrap();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut received))
        .await
        .expect("the server hangs up on a broken frame")
        .expect("the connection ends cleanly");

    let frames = parse_frames(&received);
    let (last_opcode, payload) = frames.last().expect("frames before the hang-up");
    assert_eq!(*last_opcode, 0x8, "the last frame is a close: {frames:?}");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 4005);
    assert!(
        !frames
            .iter()
            .any(|(op, p)| *op == 0x1 && String::from_utf8_lossy(p).contains("\"bare\"")),
        "the unmasked command is not answered: {frames:?}"
    );
    assert_answers_ping(&mut other, "unaffected").await;
}

#[tokio::test]
async fn a_flood_of_commands_is_refused_with_2002_and_then_closed_with_4003() {
    let server = TestServer::start_with(|c| {
        c.ws_commands_per_sec = 1;
        c.ws_command_burst = 3;
    })
    .await;
    let user = server.login_new().await;
    let mut ws = server.connect(&user).await;

    // One ping at a time, as fast as replies come back, so that nothing is
    // left unread on the server when it hangs up.
    let mut codes = Vec::new();
    let close_code = loop {
        assert!(codes.len() < 50, "never closed; reply codes {codes:?}");
        let id = format!("flood-{}", codes.len());
        ws.send_command(&id, "ping", json!({})).await;
        match next_message(&mut ws).await {
            Message::Text(t) => {
                let reply: ServerFrame = serde_json::from_str(&t).unwrap();
                assert_eq!(reply.id.as_deref(), Some(id.as_str()), "{reply:?}");
                codes.push(reply.code.unwrap());
            }
            Message::Close(frame) => break frame.map(|f| u16::from(f.code)),
            _ => {}
        }
    };

    assert_eq!(
        close_code,
        Some(4003),
        "reply codes before the close: {codes:?}"
    );
    assert_eq!(codes.first(), Some(&0), "the burst is served: {codes:?}");
    let first_refusal = codes
        .iter()
        .position(|&c| c == 2002)
        .unwrap_or_else(|| panic!("some commands are refused with 2002: {codes:?}"));
    assert!(
        codes[first_refusal..].iter().all(|&c| c == 2002),
        "once refused, refused until closed: {codes:?}"
    );
}

#[tokio::test]
async fn a_third_socket_of_a_user_capped_at_two_replaces_the_oldest_with_4002() {
    let server = TestServer::start_with(|c| c.ws_max_sockets_per_user = 2).await;
    let user = server.login_new().await;
    let mut oldest = server.connect(&user).await;
    let mut middle = server.connect(&user).await;
    wait_for_health_connections(&server, 2).await;

    let mut newest = server.connect(&user).await;
    assert_eq!(oldest.closed().await, Some(4002));
    assert_answers_ping(&mut middle, "middle").await;
    assert_answers_ping(&mut newest, "newest").await;

    wait_for_health_connections(&server, 2).await;
    assert_eq!(server.state.hub.connections(), 2);
}

#[tokio::test]
async fn a_socket_that_never_reads_is_closed_with_4004_and_readers_still_get_broadcasts() {
    let server = TestServer::start_with(|c| c.ws_outbox_capacity = 4).await;
    let slow_user = server.login_new().await;
    let reader_user = server.login_new().await;
    let mut slow = server.connect(&slow_user).await;
    let mut reader = server.connect(&reader_user).await;

    // Large broadcasts, paced by the reader receiving each one, so that the
    // server writes into the silent socket until the kernel's buffers are
    // full; only then does its outbox fill and the hub stop queueing for it.
    let padding = "x".repeat(32 * 1024);
    let mut refused_at = None;
    for n in 0..4000 {
        let frame =
            format!(r#"{{"type":"stock_update","data":{{"n":{n},"padding":"{padding}"}}}}"#);
        let took = server.state.hub.broadcast_all(&frame);
        let update = reader.next().await;
        assert_eq!(update.kind, "stock_update", "{:?}", update.kind);
        assert_eq!(
            update.data["n"], n,
            "the reader gets every broadcast in order"
        );
        if took == 1 {
            refused_at = Some(n);
            break;
        }
        assert_eq!(took, 2, "both sockets take broadcast {n}");
    }
    let refused_at = refused_at.expect("the hub stops queueing for a socket that never reads");
    assert!(
        refused_at > 4,
        "the socket was written to before it was called slow (refused at {refused_at})"
    );

    let took = server
        .state
        .hub
        .broadcast_all("{\"type\":\"stock_update\",\"data\":{}}");
    assert_eq!(took, 1, "only the reading socket takes new broadcasts");
    let update = reader.next_of("stock_update").await;
    assert_eq!(update.data, json!({}));
    assert_answers_ping(&mut reader, "reader").await;

    // The slow client finally reads: what was written, then 4004.
    assert_eq!(slow.closed().await, Some(4004));
}

// ---------------------------------------------------------------------------
// Sessions: logout and token refresh
// ---------------------------------------------------------------------------

#[tokio::test]
async fn logout_closes_that_sessions_sockets_with_4001_and_spares_the_users_other_sessions() {
    let server = TestServer::start().await;
    let phone_session = server.login_new().await;
    let tablet_session = server.login(&phone_session.phone).await;
    assert_eq!(phone_session.user_id, tablet_session.user_id);
    let mut phone = server.connect(&phone_session).await;
    let mut tablet = server.connect(&tablet_session).await;

    let (status, body) = server
        .post(
            "/api/auth/logout",
            Some(&phone_session.access_token),
            json!({}),
            &[],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["code"], 0, "{body}");

    assert_eq!(phone.closed().await, Some(4001));
    assert_answers_ping(&mut tablet, "tablet").await;
}

#[tokio::test]
async fn auth_refresh_accepts_the_users_new_token_and_refuses_another_users_with_4002() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let stranger = server.login_new().await;
    let mut ws = server.connect(&user).await;

    let (status, body) = server
        .post(
            "/api/auth/refresh",
            None,
            json!({ "refresh_token": user.refresh_token }),
            &[],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let fresh = body["data"]["access_token"].as_str().unwrap().to_string();

    let reply = ws
        .command(
            "refresh-1",
            "auth.refresh",
            json!({ "access_token": fresh }),
        )
        .await;
    assert_eq!(reply.code, Some(0), "{reply:?}");
    assert_eq!(reply.data["user_id"].as_u64(), Some(user.user_id));

    let reply = ws
        .command(
            "refresh-2",
            "auth.refresh",
            json!({ "access_token": stranger.access_token }),
        )
        .await;
    assert_eq!(reply.code, Some(4002), "{reply:?}");
    assert_answers_ping(&mut ws, "after-refusal").await;
}

// ---------------------------------------------------------------------------
// Replay after a reconnect
// ---------------------------------------------------------------------------

#[tokio::test]
async fn sync_after_a_reconnect_replays_the_missed_events_in_order_then_replies() {
    let server = TestServer::start().await;
    let user = a_user_who_missed_two_events(&server).await;
    let mut ws = server.connect(&user).await;
    assert_eq!(ws.welcome.as_ref().unwrap().data["last_seq"], 4);

    ws.send_command("sync-1", "sync", json!({ "since": 2 }))
        .await;
    let third = ws.next().await;
    let fourth = ws.next().await;
    let reply = ws.next().await;
    for (frame, seq) in [(&third, 3), (&fourth, 4)] {
        assert_eq!(frame.kind, "points_update", "{frame:?}");
        assert_eq!(frame.seq, Some(seq), "{frame:?}");
        assert_eq!(frame.data["user_id"].as_u64(), Some(user.user_id));
    }
    assert_eq!(reply.kind, "reply", "the reply comes after the events");
    assert_eq!(reply.id.as_deref(), Some("sync-1"));
    assert_eq!(reply.code, Some(0), "{reply:?}");
    assert_eq!(
        reply.data,
        json!({ "from_seq": 3, "to_seq": 4, "count": 2 })
    );
    let audit = server.audit(user.user_id).await;
    assert_eq!(
        fourth.data["total_points"].as_i64(),
        Some(audit.total_points)
    );
}

#[tokio::test]
async fn connecting_with_since_replays_the_missed_events_after_welcome_then_a_sync_result() {
    let server = TestServer::start().await;
    let user = a_user_who_missed_two_events(&server).await;
    let mut ws = server
        .connect_with(&format!("/ws?token={}&since=2", user.access_token))
        .await;

    let third = ws.next().await;
    let fourth = ws.next().await;
    let result = ws.next().await;
    assert_eq!((third.kind.as_str(), third.seq), ("points_update", Some(3)));
    assert_eq!(
        (fourth.kind.as_str(), fourth.seq),
        ("points_update", Some(4))
    );
    assert_eq!(result.kind, "sync_result", "{result:?}");
    assert_eq!(result.code, Some(0), "{result:?}");
    assert_eq!(
        result.data,
        json!({ "from_seq": 3, "to_seq": 4, "count": 2 })
    );
}

#[tokio::test]
async fn sync_from_beyond_the_last_seq_is_answered_7005_with_a_reset() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let mut ws = server.connect(&user).await;

    let reply = ws
        .command("sync-ahead", "sync", json!({ "since": 9 }))
        .await;
    assert_eq!(reply.code, Some(7005), "{reply:?}");
    assert_eq!(reply.data, json!({ "reset": true, "last_seq": 1 }));
}

#[tokio::test]
async fn sync_of_more_events_than_the_replay_limit_is_answered_7005_with_a_reset() {
    let server = TestServer::start_with(|c| c.sync_replay_limit = 2).await;
    let user = server.login_new().await;
    for _ in 0..3 {
        server.draw_once(&user).await;
    }
    let mut ws = server.connect(&user).await;
    assert_eq!(ws.welcome.as_ref().unwrap().data["last_seq"], 4);

    let reply = ws.command("sync-all", "sync", json!({ "since": 0 })).await;
    assert_eq!(reply.code, Some(7005), "{reply:?}");
    assert_eq!(reply.data, json!({ "reset": true, "last_seq": 4 }));
    assert!(
        ws.pending.is_empty(),
        "nothing is replayed: {:?}",
        ws.pending
    );

    let reply = ws.command("sync-two", "sync", json!({ "since": 2 })).await;
    assert_eq!(reply.code, Some(0), "within the limit: {reply:?}");
    assert_eq!(reply.data["count"], 2);
}

// ---------------------------------------------------------------------------
// Fan-out
// ---------------------------------------------------------------------------

#[tokio::test]
async fn every_socket_of_a_user_gets_the_points_update_of_a_rest_draw_with_the_same_seq() {
    let server = TestServer::start().await;
    let user = server.login_new().await;
    let mut phone = server.connect(&user).await;
    let mut tablet = server.connect(&user).await;

    let draw = server.draw_once(&user).await;
    let remaining = draw["remaining_points"].as_i64().unwrap();
    let on_phone = phone.next_of("points_update").await;
    let on_tablet = tablet.next_of("points_update").await;
    assert_eq!(on_phone.seq, Some(2));
    assert_eq!(on_tablet.seq, on_phone.seq);
    assert_eq!(on_phone.data, on_tablet.data);
    assert_eq!(on_phone.data["total_points"].as_i64(), Some(remaining));
    server.audit(user.user_id).await.assert_consistent();
}

// ---------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------

#[tokio::test]
async fn stopping_the_server_closes_every_socket_with_1001_and_returns() {
    let mut server = TestServer::start().await;
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let user = server.login_new().await;
        sockets.push(server.connect(&user).await);
    }

    server.stop().await;
    for ws in &mut sockets {
        assert_eq!(ws.closed().await, Some(1001));
    }
}

#[tokio::test]
async fn a_draw_sent_just_before_shutdown_is_answered_before_the_1001_close() {
    let mut server = TestServer::start().await;
    let user = server.login_new().await;
    let mut ws = server.connect(&user).await;

    // Once sent over loopback the command is in the server's receive
    // buffer: it is in flight when shutdown begins.
    ws.send_command("last-draw", "lottery.draw", json!({ "draw_count": 1 }))
        .await;
    let ((), (frames, close_code)) = tokio::join!(server.stop(), frames_until_close(&mut ws));

    assert_eq!(
        close_code,
        Some(1001),
        "frames before the close: {frames:?}"
    );
    let audit = server.audit(user.user_id).await;
    audit.assert_consistent();
    let reply = frames
        .iter()
        .find(|f| f.is_reply() && f.id.as_deref() == Some("last-draw"));
    let committed = audit.last_seq == 2;
    assert!(
        reply.is_some() || committed,
        "a draw sent before shutdown began is answered (or at least committed) \
         before the 1001 close; got frames {frames:?}, {audit:?}"
    );
    if let Some(reply) = reply {
        assert_eq!(reply.code, Some(0), "{reply:?}");
        assert!(committed, "the answered draw committed: {audit:?}");
        assert_eq!(
            reply.data["remaining_points"].as_i64(),
            Some(audit.total_points)
        );
    }
}

#[tokio::test]
async fn a_draw_running_when_shutdown_begins_is_answered_before_the_1001_close() {
    let mut server = TestServer::start().await;
    let user = server.login_new().await;
    let mut ws = server.connect(&user).await;

    // Hold the user's row so that the draw is certainly running (waiting
    // for the lock inside its transaction) when shutdown begins.
    let mut holder = server.db.begin().await.unwrap();
    sqlx::query("SELECT user_id FROM users WHERE user_id = ? FOR UPDATE")
        .bind(user.user_id)
        .execute(&mut *holder)
        .await
        .unwrap();
    let (holder_trx,): (u64,) = sqlx::query_as(
        "SELECT trx_id FROM information_schema.INNODB_TRX WHERE trx_mysql_thread_id = CONNECTION_ID()",
    )
    .fetch_one(&mut *holder)
    .await
    .unwrap();
    ws.send_command("running-draw", "lottery.draw", json!({ "draw_count": 1 }))
        .await;
    wait_until_blocked_by(&server, holder_trx).await;

    let state = server.state.clone();
    let release_once_shutdown_began = async move {
        state.shutdown.cancelled().await;
        holder.rollback().await.unwrap();
    };
    let ((), (), (frames, close_code)) = tokio::join!(
        server.stop(),
        release_once_shutdown_began,
        frames_until_close(&mut ws)
    );

    let reply = frames
        .iter()
        .find(|f| f.is_reply() && f.id.as_deref() == Some("running-draw"))
        .unwrap_or_else(|| panic!("the running draw is answered before the close: {frames:?}"));
    assert_eq!(reply.code, Some(0), "{reply:?}");
    assert_eq!(close_code, Some(1001));
    let audit = server.audit(user.user_id).await;
    audit.assert_consistent();
    assert_eq!(audit.last_seq, 2, "the answered draw committed");
    assert_eq!(
        reply.data["remaining_points"].as_i64(),
        Some(audit.total_points)
    );
}

// ---------------------------------------------------------------------------
// Order when broadcasts and replies interleave
// ---------------------------------------------------------------------------

/// A guest draws on their socket while a merchant restocks a product over
/// and over: the socket's frames interleave — replies, the guest's own
/// `points_update`s, everyone's `stock_update`s — and each stream keeps its
/// order: one reply per command, events gap-free by `seq`, the product's
/// stock only ever going up as the restocks did.
#[tokio::test]
async fn a_sockets_replies_events_and_broadcasts_each_keep_their_order_when_they_interleave() {
    let server = TestServer::start().await;
    let merchant = server.new_merchant().await;
    let guest = server.login_new().await;
    let (_, body) = server
        .post(
            "/api/merchant/products",
            Some(&merchant.access_token),
            json!({ "name": "顺序测试", "category": "测试", "exchange_points": 10, "stock": 0, "status": "inactive" }),
            &[],
        )
        .await;
    let product = body["data"]["product_id"]
        .as_u64()
        .expect("product created");
    let mut ws = server.connect(&guest).await;
    let first_seq = ws.welcome.as_ref().unwrap().data["last_seq"]
        .as_u64()
        .unwrap();

    const DRAWS: usize = 8;
    const RESTOCKS: i64 = 60;
    let restocks = {
        let http = server.http.clone();
        let url = server.url(&format!("/api/merchant/products/{product}/stock"));
        let token = merchant.access_token.clone();
        tokio::spawn(async move {
            for _ in 0..RESTOCKS {
                let a = common::post_json(
                    &http,
                    &url,
                    &token,
                    json!({ "operation": "restock", "quantity": 1 }),
                    None,
                )
                .await;
                a.ok();
            }
        })
    };
    for i in 0..DRAWS {
        ws.send_command(
            &format!("o-{i}"),
            "lottery.draw",
            json!({ "draw_count": 1 }),
        )
        .await;
    }

    let (mut replies, mut seqs, mut stocks) = (Vec::new(), Vec::new(), Vec::new());
    while replies.len() < DRAWS || stocks.last() != Some(&RESTOCKS) {
        let f = ws.next().await;
        match f.kind.as_str() {
            "reply" => {
                assert_eq!(f.code, Some(0), "{f:?}");
                replies.push(f.id.clone().unwrap());
            }
            "points_update" => seqs.push(f.seq.unwrap()),
            "stock_update" if f.data["product_id"] == product => {
                stocks.push(f.data["stock"].as_i64().unwrap())
            }
            _ => {}
        }
    }
    restocks.await.unwrap();

    let expected: Vec<String> = (0..DRAWS).map(|i| format!("o-{i}")).collect();
    assert_eq!(
        replies, expected,
        "one reply per command, in the order sent"
    );
    let expected: Vec<u64> = (first_seq + 1..=first_seq + DRAWS as u64).collect();
    assert_eq!(seqs, expected, "the guest's events gap-free and in order");
    assert!(
        stocks.windows(2).all(|w| w[0] < w[1]),
        "the stock only goes up, as the restocks did: {stocks:?}"
    );
    server.audit(guest.user_id).await.assert_consistent();
}
