//! A test binary of its own: it lowers this process's descriptor limit.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use restaurant_points::net::{self, HttpLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(8);

fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

fn set_soft_limit(soft: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        let old = lim.rlim_cur;
        lim.rlim_cur = soft;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        old
    }
}

fn is_emfile(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EMFILE)
}

#[tokio::test]
async fn the_accept_loop_survives_running_out_of_descriptors() {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(4096).unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let app = Router::new().route("/", get(|| async { "ok" }));
    // Connections that never send a head must stay open for the whole test.
    let limits = HttpLimits {
        header_timeout: Duration::from_secs(60),
        ..HttpLimits::default()
    };
    let server = tokio::spawn(net::serve(
        listener,
        app,
        limits,
        std::future::pending(),
        Duration::from_secs(1),
    ));

    // Sockets made while descriptors remain, connected once none do.
    let reserved: Vec<TcpSocket> = (0..2).map(|_| TcpSocket::new_v4().unwrap()).collect();
    let old_limit = set_soft_limit(open_descriptors() + 30);

    // Each client takes a descriptor, and so does each connection the
    // server accepts, until there is none left.
    let mut clients: Vec<TcpStream> = Vec::new();
    loop {
        let socket = match TcpSocket::new_v4() {
            Ok(socket) => socket,
            Err(e) if is_emfile(&e) => break,
            Err(e) => panic!("socket: {e}"),
        };
        clients.push(timeout(WAIT, socket.connect(addr)).await.unwrap().unwrap());
        // Let the server accept it.
        tokio::task::yield_now().await;
    }
    assert!(clients.len() >= 5, "only {} clients", clients.len());

    // These wait in the backlog: accepting them fails with EMFILE.
    let mut waiting = Vec::new();
    for socket in reserved {
        let mut stream = timeout(WAIT, socket.connect(addr)).await.unwrap().unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        waiting.push(stream);
    }
    assert!(
        matches!(TcpSocket::new_v4(), Err(e) if is_emfile(&e)),
        "descriptors were not exhausted"
    );

    // Hanging up frees descriptors on both sides; the loop, still running,
    // accepts the waiting connections and serves them.
    clients.truncate(clients.len() - 4);
    for mut stream in waiting {
        let mut reply = Vec::new();
        timeout(WAIT, stream.read_to_end(&mut reply))
            .await
            .expect("the waiting connection was never served")
            .unwrap();
        let reply = String::from_utf8(reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
        assert!(reply.ends_with("ok"), "{reply}");
    }
    assert!(!server.is_finished(), "serve ended");
    drop(clients);
    set_soft_limit(old_limit);
}
