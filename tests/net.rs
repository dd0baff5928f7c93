//! The HTTP front door over real sockets: timeouts, caps, upgrades and
//! shutdown. Clients bind to 127.0.0.x to appear as different addresses.
//! Every wait is for an event (a response, an EOF, a refused connect),
//! bounded by `WAIT` so that a failure cannot hang the run.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path};
use axum::routing::{get, post};
use futures::{SinkExt, StreamExt};
use restaurant_points::net::{self, HttpLimits, TrustedProxies};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

/// The longest any single awaited event may take before the test fails.
const WAIT: Duration = Duration::from_secs(8);

const FULL: &str = r#"{"code":2009,"msg":"连接数已满，请稍后重试","data":null}"#;
const TIMED_OUT: &str = r#"{"code":2012,"msg":"请求超时","data":null}"#;

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(limits: HttpLimits) -> Server {
        Server::start_with(limits, app(None), Duration::from_secs(5)).await
    }

    /// Binds the way production does (`TcpSocket::listen(4096)`); the
    /// listener queues connections at once, so no readiness wait is needed.
    async fn start_with(limits: HttpLimits, app: Router, grace: Duration) -> Server {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(4096).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let done = tokio::spawn(net::serve(listener, app, limits, shutdown, grace));
        Server {
            addr,
            stop: Some(stop),
            done,
        }
    }

    fn shutdown(&mut self) {
        let _ = self.stop.take().expect("shut down twice").send(());
    }
}

/// `/peer` answers with the `ConnectInfo` address; `/slow/{ms}` reports
/// that it started, then sleeps; `/echo` answers with the body's length;
/// `/ws` echoes text frames.
fn app(started: Option<mpsc::UnboundedSender<()>>) -> Router {
    Router::new()
        .route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }),
        )
        .route(
            "/slow/{ms}",
            get(move |Path(ms): Path<u64>| async move {
                if let Some(started) = started {
                    let _ = started.send(());
                }
                tokio::time::sleep(Duration::from_millis(ms)).await;
                "done"
            }),
        )
        .route(
            "/echo",
            post(|body: Bytes| async move { body.len().to_string() }),
        )
        .route(
            "/ws",
            get(|ws: WebSocketUpgrade| async move {
                ws.on_upgrade(|mut socket| async move {
                    while let Some(Ok(msg)) = socket.recv().await {
                        if let Message::Text(_) = msg
                            && socket.send(msg).await.is_err()
                        {
                            break;
                        }
                    }
                })
            }),
        )
}

fn limits() -> HttpLimits {
    HttpLimits::default()
}

async fn connect_from(from: [u8; 4], server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    timeout(WAIT, socket.connect(server))
        .await
        .expect("connect timed out")
        .expect("connect failed")
}

fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n")
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response with a `content-length` body.
async fn read_reply(stream: &mut (impl AsyncRead + Unpin)) -> Reply {
    timeout(WAIT, async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_len = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk).await.expect("read failed");
            assert!(
                n > 0,
                "closed before a complete response: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..head_len].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .expect("no content-length");
        while buf.len() < head_len + len {
            let n = stream.read(&mut chunk).await.expect("read failed");
            assert!(n > 0, "closed in the middle of a body");
            buf.extend_from_slice(&chunk[..n]);
        }
        Reply {
            status,
            headers,
            body: String::from_utf8(buf[head_len..head_len + len].to_vec()).unwrap(),
        }
    })
    .await
    .expect("no response in time")
}

async fn send(stream: &mut TcpStream, request: &str) -> Reply {
    stream.write_all(request.as_bytes()).await.unwrap();
    read_reply(stream).await
}

/// Waits for the server to close the connection (EOF or reset); any data
/// instead is a failure.
async fn assert_closed(stream: &mut (impl AsyncRead + Unpin)) {
    let mut buf = [0u8; 256];
    match timeout(WAIT, stream.read(&mut buf)).await {
        Err(_) => panic!("the server did not close the connection"),
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!(
            "expected the connection to close, got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
    }
}

async fn assert_refused_as_full(stream: &mut TcpStream) {
    let reply = send(stream, &get_request("/peer")).await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(reply.header("connection"), Some("close"));
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.body, FULL);
    assert_closed(stream).await;
}

/// A place given back is observed by the server a moment after the client
/// hangs up: try until a request from `from` is served.
async fn eventually_served_from(from: [u8; 4], server: SocketAddr) {
    timeout(WAIT, async {
        loop {
            let mut stream = connect_from(from, server).await;
            if send(&mut stream, &get_request("/peer")).await.status == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the freed place was never given out again");
}

fn assert_between(elapsed: Duration, low: Duration, high: Duration, what: &str) {
    assert!(
        elapsed >= low && elapsed <= high,
        "{what}: {elapsed:?}, expected between {low:?} and {high:?}"
    );
}

#[tokio::test]
async fn slow_loris_connections_are_closed_after_the_header_timeout_while_a_normal_client_is_served()
 {
    let header_timeout = Duration::from_secs(1);
    let server = Server::start(HttpLimits {
        header_timeout,
        ..limits()
    })
    .await;

    // 300 from ten addresses (30 each, under the per-address cap of 64):
    // the even ones trickle a header byte every 500 ms, the odd ones send
    // nothing. Each reports how long after its connect the server closed it.
    let mut slow = Vec::new();
    for i in 0..300u16 {
        let from = [127, 0, 0, 2 + (i % 10) as u8];
        let mut stream = connect_from(from, server.addr).await;
        let opened = Instant::now();
        let trickles = i % 2 == 0;
        slow.push(tokio::spawn(async move {
            let head = b"GET /peer HTTP/1.1\r\nhost: test\r\nx-filler: ";
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let mut sent = 0;
            let mut buf = [0u8; 64];
            loop {
                tokio::select! {
                    read = stream.read(&mut buf) => match read {
                        Ok(0) | Err(_) => return opened.elapsed(),
                        Ok(_) => panic!("a slow client got a response"),
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

    // Meanwhile a normal client is served promptly, on fresh connections.
    for _ in 0..5 {
        let asked = Instant::now();
        let mut stream = connect_from([127, 0, 0, 1], server.addr).await;
        let reply = send(&mut stream, &get_request("/peer")).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "127.0.0.1"));
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "a normal request took {:?}",
            asked.elapsed()
        );
    }

    let mut closed_after = Vec::new();
    for task in slow {
        closed_after.push(
            timeout(WAIT, task)
                .await
                .expect("a slow connection was never closed")
                .unwrap(),
        );
    }
    let earliest = closed_after.iter().min().unwrap();
    let latest = closed_after.iter().max().unwrap();
    assert_between(
        *earliest,
        header_timeout - Duration::from_millis(50),
        header_timeout + Duration::from_secs(2),
        "earliest close",
    );
    assert_between(
        *latest,
        header_timeout - Duration::from_millis(50),
        header_timeout + Duration::from_secs(2),
        "latest close",
    );
}

#[tokio::test]
async fn the_connection_over_the_per_ip_cap_gets_the_503_envelope_and_other_addresses_are_served() {
    let server = Server::start(HttpLimits {
        max_per_ip: 3,
        ..limits()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = connect_from([127, 0, 0, 1], server.addr).await;
        assert_eq!(send(&mut stream, &get_request("/peer")).await.status, 200);
        held.push(stream);
    }

    let mut over = connect_from([127, 0, 0, 1], server.addr).await;
    assert_refused_as_full(&mut over).await;

    let mut other = connect_from([127, 0, 0, 2], server.addr).await;
    let reply = send(&mut other, &get_request("/peer")).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "127.0.0.2"));

    // The held connections are still served, and a closed one frees its place.
    assert_eq!(send(&mut held[0], &get_request("/peer")).await.status, 200);
    drop(held.pop());
    eventually_served_from([127, 0, 0, 1], server.addr).await;
}

#[tokio::test]
async fn a_trusted_peer_is_exempt_from_the_per_ip_cap() {
    let server = Server::start(HttpLimits {
        max_per_ip: 2,
        trusted: TrustedProxies::parse("127.0.0.3/32").unwrap(),
        ..limits()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..6 {
        let mut proxy = connect_from([127, 0, 0, 3], server.addr).await;
        let reply = send(&mut proxy, &get_request("/peer")).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "127.0.0.3"));
        held.push(proxy);
    }
    // The cap itself is in force for everyone else.
    for _ in 0..2 {
        let mut stream = connect_from([127, 0, 0, 4], server.addr).await;
        assert_eq!(send(&mut stream, &get_request("/peer")).await.status, 200);
        held.push(stream);
    }
    let mut over = connect_from([127, 0, 0, 4], server.addr).await;
    assert_refused_as_full(&mut over).await;
}

#[tokio::test]
async fn the_connection_over_the_total_cap_gets_the_503_envelope_trusted_or_not() {
    let server = Server::start(HttpLimits {
        max_connections: 3,
        trusted: TrustedProxies::parse("127.0.0.3/32").unwrap(),
        ..limits()
    })
    .await;
    let mut held = Vec::new();
    for from in [[127, 0, 0, 2], [127, 0, 0, 3], [127, 0, 0, 4]] {
        let mut stream = connect_from(from, server.addr).await;
        assert_eq!(send(&mut stream, &get_request("/peer")).await.status, 200);
        held.push(stream);
    }
    let mut over = connect_from([127, 0, 0, 5], server.addr).await;
    assert_refused_as_full(&mut over).await;
    let mut trusted_over = connect_from([127, 0, 0, 3], server.addr).await;
    assert_refused_as_full(&mut trusted_over).await;

    drop(held.remove(0));
    eventually_served_from([127, 0, 0, 5], server.addr).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let idle_timeout = Duration::from_secs(1);
    let server = Server::start(HttpLimits {
        idle_timeout,
        header_timeout: Duration::from_secs(10),
        ..limits()
    })
    .await;
    let mut stream = connect_from([127, 0, 0, 1], server.addr).await;
    assert_eq!(send(&mut stream, &get_request("/peer")).await.status, 200);
    let answered = Instant::now();
    assert_closed(&mut stream).await;
    assert_between(
        answered.elapsed(),
        idle_timeout - Duration::from_millis(50),
        idle_timeout + Duration::from_secs(2),
        "idle close",
    );
}

#[tokio::test]
async fn an_idle_connection_outlives_the_header_timeout_but_a_started_head_does_not() {
    let header_timeout = Duration::from_secs(1);
    let server = Server::start(HttpLimits {
        header_timeout,
        idle_timeout: Duration::from_secs(10),
        ..limits()
    })
    .await;
    let mut stream = connect_from([127, 0, 0, 1], server.addr).await;
    assert_eq!(send(&mut stream, &get_request("/peer")).await.status, 200);
    // Idle for longer than the header timeout (hyper's own header timer
    // would have closed the connection by now)...
    tokio::time::sleep(header_timeout + Duration::from_millis(500)).await;
    assert_eq!(send(&mut stream, &get_request("/peer")).await.status, 200);
    // ...but once a head has started it must be complete within it.
    stream.write_all(b"GET /pe").await.unwrap();
    let started = Instant::now();
    assert_closed(&mut stream).await;
    assert_between(
        started.elapsed(),
        header_timeout - Duration::from_millis(50),
        header_timeout + Duration::from_secs(2),
        "close of a started head",
    );
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408_with_code_2012() {
    let body_timeout = Duration::from_secs(1);
    let server = Server::start(HttpLimits {
        body_timeout,
        ..limits()
    })
    .await;
    let head = "POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: 100\r\n\r\n";

    // A body that stalls.
    let mut stream = connect_from([127, 0, 0, 1], server.addr).await;
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[b'a'; 10]).await.unwrap();
    let sent = Instant::now();
    let reply = read_reply(&mut stream).await;
    assert_between(
        sent.elapsed(),
        body_timeout - Duration::from_millis(50),
        body_timeout + Duration::from_secs(2),
        "408 for a stalled body",
    );
    assert_eq!(reply.status, 408);
    assert_eq!(reply.header("connection"), Some("close"));
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.body, TIMED_OUT);
    assert_closed(&mut stream).await;

    // A body that trickles (a byte every 100 ms, each one a frame): the
    // deadline is for the whole body, not between frames.
    let stream = connect_from([127, 0, 0, 1], server.addr).await;
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(head.as_bytes()).await.unwrap();
    let sent = Instant::now();
    let trickle = tokio::spawn(async move {
        for _ in 0..99 {
            if writer.write_all(b"a").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let reply = read_reply(&mut reader).await;
    assert_eq!((reply.status, reply.body.as_str()), (408, TIMED_OUT));
    assert_between(
        sent.elapsed(),
        body_timeout - Duration::from_millis(50),
        body_timeout + Duration::from_secs(2),
        "408 for a trickled body",
    );
    trickle.abort();

    // A body that arrives is served, large ones too (past hyper's buffer).
    let mut stream = connect_from([127, 0, 0, 1], server.addr).await;
    let request = format!("{head}{}", "a".repeat(100));
    let reply = send(&mut stream, &request).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "100"));
    let big = 1 << 20;
    let request = format!(
        "POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: {big}\r\n\r\n{}",
        "a".repeat(big)
    );
    let reply = send(&mut stream, &request).await;
    assert_eq!((reply.status, reply.body), (200, big.to_string()));
}

#[tokio::test]
async fn upgraded_websockets_do_not_count_toward_the_caps() {
    let server = Server::start(HttpLimits {
        max_per_ip: 2,
        max_connections: 3,
        ..limits()
    })
    .await;
    let url = format!("ws://{}/ws", server.addr);
    let mut sockets = Vec::new();
    for i in 0..7 {
        let stream = connect_from([127, 0, 0, 1], server.addr).await;
        let (mut ws, response) = timeout(WAIT, tokio_tungstenite::client_async(&url, stream))
            .await
            .expect("handshake timed out")
            .unwrap_or_else(|e| panic!("socket {i} was not upgraded: {e}"));
        assert_eq!(response.status(), 101);
        // The echo comes from the upgraded socket's own task: by now hyper
        // has handed the socket over and its connection future is done.
        let text = format!("hello {i}");
        ws.send(tokio_tungstenite::tungstenite::Message::text(text.clone()))
            .await
            .unwrap();
        let echo = timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(echo.into_text().unwrap().as_str(), text);
        sockets.push(ws);
    }

    let mut plain = connect_from([127, 0, 0, 1], server.addr).await;
    let reply = send(&mut plain, &get_request("/peer")).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "127.0.0.1"));

    // The upgraded sockets live on without hyper's deadlines.
    for ws in &mut sockets {
        ws.send(tokio_tungstenite::tungstenite::Message::text("still here"))
            .await
            .unwrap();
        let echo = timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(echo.into_text().unwrap().as_str(), "still here");
    }
}

#[tokio::test]
async fn graceful_shutdown_lets_an_in_flight_request_finish_and_refuses_new_connections() {
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let mut server =
        Server::start_with(limits(), app(Some(started_tx)), Duration::from_secs(5)).await;

    let mut idle = connect_from([127, 0, 0, 1], server.addr).await;
    assert_eq!(send(&mut idle, &get_request("/peer")).await.status, 200);
    let mut busy = connect_from([127, 0, 0, 1], server.addr).await;
    busy.write_all(get_request("/slow/700").as_bytes())
        .await
        .unwrap();
    timeout(WAIT, started.recv()).await.unwrap().unwrap();

    server.shutdown();

    // The listener is closed: new connections are refused.
    timeout(WAIT, async {
        loop {
            match TcpStream::connect(server.addr).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await
    .expect("the listener still accepts after shutdown");
    // The idle connection is closed at once, the busy one after its response.
    assert_closed(&mut idle).await;
    let reply = read_reply(&mut busy).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "done"));
    assert_closed(&mut busy).await;

    timeout(WAIT, server.done)
        .await
        .expect("serve did not return")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_drops_requests_that_outlast_the_grace_period() {
    let grace = Duration::from_millis(300);
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let mut server = Server::start_with(limits(), app(Some(started_tx)), grace).await;
    let mut busy = connect_from([127, 0, 0, 1], server.addr).await;
    busy.write_all(get_request("/slow/60000").as_bytes())
        .await
        .unwrap();
    timeout(WAIT, started.recv()).await.unwrap().unwrap();

    let asked = Instant::now();
    server.shutdown();
    timeout(WAIT, server.done)
        .await
        .expect("serve did not return")
        .unwrap()
        .unwrap();
    assert_between(
        asked.elapsed(),
        grace,
        grace + Duration::from_secs(2),
        "serve's return",
    );
    assert_closed(&mut busy).await;
}

/// Not our code: the premise of it. hyper 1.12's `header_read_timeout`
/// restarts when a keep-alive connection goes idle, so it cannot be the
/// header limit (10 s) without also being the idle limit. If this starts
/// failing, hyper changed and `net`'s own deadlines may be replaceable.
#[tokio::test]
async fn hypers_own_header_read_timeout_also_closes_idle_keep_alive_connections() {
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let service = hyper::service::service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(hyper::Response::new(axum::body::Body::from("hi")))
        });
        let _ = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(1))
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
    let mut stream = connect_from([127, 0, 0, 1], addr).await;
    assert_eq!(send(&mut stream, &get_request("/")).await.status, 200);
    let answered = Instant::now();
    assert_closed(&mut stream).await;
    assert_between(
        answered.elapsed(),
        Duration::from_millis(950),
        Duration::from_secs(3),
        "hyper's idle close",
    );
}
