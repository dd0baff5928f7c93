//! The contract as a client sees it: REST calls in the envelope, and
//! WebSocket connections bound to chosen loopback source addresses, plain
//! or through TLS (`https://` servers: nginx in front, see [`crate::tls`]).
//!
//! Nothing here knows the server's code: only `protocol` types and the
//! documented wire format, so the tool measures any server that speaks it.

use anyhow::{Context, bail};
use futures::stream::FuturesUnordered;
use futures::{SinkExt, StreamExt};
use protocol::{CommandFrame, LoginResponse, ServerFrame, Welcome, event};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::tls::Tls;

pub use reqwest::Method;

/// The development login code the contract's development mode accepts.
pub const DEV_CODE: &str = "123456";
/// The demo merchant every development server is seeded with.
pub const DEMO_MERCHANT: &str = "13900000000";
/// Bound on any single REST request.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on TCP connect + upgrade + `welcome`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on a command's reply and on a single write.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The server under test: always a loopback address.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// `https://` (or `wss://`): TLS to this address, e.g. nginx.
    pub tls: bool,
    /// The host as written (`localhost` or the address): the TLS server
    /// name and the `Host` header.
    pub host: String,
}

impl Target {
    /// Accepts `http://127.0.0.1:3000`, `ws://localhost:3000/`,
    /// `https://127.0.0.1:8443`, `wss://…`, `127.0.0.5:80`… and refuses any
    /// host outside 127.0.0.0/8: this tool only ever loads a server on this
    /// machine.
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let trimmed = url.trim();
        let (tls, rest) = [
            ("http://", false),
            ("ws://", false),
            ("https://", true),
            ("wss://", true),
        ]
        .iter()
        .find_map(|(scheme, tls)| trimmed.strip_prefix(scheme).map(|r| (*tls, r)))
        .unwrap_or((false, trimmed));
        if rest.contains("://") {
            bail!("--server {url:?}: only http://, https://, ws:// or wss:// on loopback");
        }
        let hostport = rest.split('/').next().unwrap_or_default();
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .with_context(|| format!("--server {url:?}: bad port"))?,
            ),
            None => (hostport, if tls { 443 } else { 80 }),
        };
        let ip = if host.eq_ignore_ascii_case("localhost") {
            Ipv4Addr::LOCALHOST
        } else {
            host.parse::<Ipv4Addr>().with_context(|| {
                format!("--server {url:?}: the host must be localhost or 127.x.x.x")
            })?
        };
        if ip.octets()[0] != 127 {
            bail!(
                "--server {url:?}: refusing a non-loopback target; only 127.0.0.0/8 may be loaded"
            );
        }
        Ok(Target {
            addr: SocketAddr::new(IpAddr::V4(ip), port),
            tls,
            host: host.to_ascii_lowercase(),
        })
    }

    /// The name TLS verifies the server's certificate against.
    pub fn server_name(&self) -> rustls::pki_types::ServerName<'static> {
        match self.addr.ip() {
            _ if self.host == "localhost" => {
                rustls::pki_types::ServerName::try_from("localhost").expect("a valid DNS name")
            }
            ip => rustls::pki_types::ServerName::IpAddress(ip.into()),
        }
    }

    /// `host:port` as the `Host` header and URLs say it.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.addr.port())
    }

    /// A comma-separated list of servers (`--server a,b,c`), each as
    /// [`Target::parse`] accepts it. At least one; no server twice (numbers
    /// per instance would be mixed up).
    pub fn parse_list(list: &str) -> anyhow::Result<Vec<Target>> {
        let mut out: Vec<Target> = Vec::new();
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let t = Target::parse(part)?;
            if out.iter().any(|o| o.addr == t.addr) {
                bail!("--server lists {} twice", t.addr);
            }
            out.push(t);
        }
        if out.is_empty() {
            bail!("--server names no server");
        }
        Ok(out)
    }

    pub fn http_url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{}", self.authority(), path)
    }

    fn ws_url(&self, path_and_query: &str) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}{}", self.authority(), path_and_query)
    }
}

/// A REST answer: HTTP status and the envelope.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub code: i32,
    pub msg: String,
    pub data: Value,
}

impl Reply {
    pub fn ok(&self) -> bool {
        self.code == 0
    }

    /// `data` as `T` when the code is 0; otherwise an error naming the code.
    pub fn into_data<T: DeserializeOwned>(self, what: &str) -> anyhow::Result<T> {
        if self.code != 0 {
            bail!(
                "{what}: HTTP {} code {} ({})",
                self.status,
                self.code,
                self.msg
            );
        }
        serde_json::from_value(self.data).with_context(|| format!("{what}: unexpected data"))
    }
}

/// Why a REST call got no envelope back.
#[derive(Debug, Clone)]
pub struct CallError {
    pub kind: &'static str,
    pub detail: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

impl std::error::Error for CallError {}

/// The REST door. Cheap to clone (one connection pool).
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    target: Target,
}

impl Api {
    /// The REST door of `target`; `tls` is required for an `https://` one.
    pub fn new(target: &Target, tls: Option<&Tls>) -> anyhow::Result<Api> {
        let mut builder = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(30));
        if target.tls {
            let tls = tls.with_context(|| need_ca(target))?;
            builder = builder.tls_backend_preconfigured(rustls::ClientConfig::clone(tls));
        }
        let http = builder.build().context("HTTP client")?;
        Ok(Api {
            http,
            target: target.clone(),
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// One request; any envelope (whatever its code) is `Ok`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Reply, CallError> {
        let mut req = self.http.request(method, self.target.http_url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req.send().await.map_err(http_failure)?;
        let status = res.status().as_u16();
        let body: Value = res.json().await.map_err(http_failure)?;
        Ok(Reply {
            status,
            code: body["code"].as_i64().unwrap_or(-1) as i32,
            msg: body["msg"].as_str().unwrap_or_default().to_string(),
            data: body.get("data").cloned().unwrap_or(Value::Null),
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str, token: &str) -> anyhow::Result<T> {
        self.call(Method::GET, path, Some(token), None, None)
            .await
            .with_context(|| format!("GET {path}"))?
            .into_data(&format!("GET {path}"))
    }

    pub async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: &Value,
    ) -> anyhow::Result<T> {
        let what = format!("{method} {path}");
        self.call(method, path, Some(token), Some(body), None)
            .await
            .with_context(|| what.clone())?
            .into_data(&what)
    }

    /// `GET /health` (not an envelope): the server's own report.
    pub async fn health(&self) -> anyhow::Result<Value> {
        let res = self
            .http
            .get(self.target.http_url("/health"))
            .send()
            .await
            .context("GET /health")?;
        res.json().await.context("GET /health: not JSON")
    }

    /// Logs in with the development code.
    pub async fn login(&self, phone: &str) -> Result<Reply, CallError> {
        let body = json!({ "phone": phone, "code": DEV_CODE });
        self.call(Method::POST, "/api/auth/login", None, Some(&body), None)
            .await
    }

    /// The demo merchant's access token, for server-side setup.
    pub async fn merchant_token(&self) -> anyhow::Result<String> {
        let reply = self.login(DEMO_MERCHANT).await.context("merchant login")?;
        let login: LoginResponse = reply.into_data("merchant login")?;
        if !login.user_info.is_merchant {
            bail!(
                "{DEMO_MERCHANT} is not a merchant on this server (a development server seeds it)"
            );
        }
        Ok(login.access_token)
    }
}

fn http_failure(e: reqwest::Error) -> CallError {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_decode() {
        "bad_body"
    } else {
        "http"
    };
    CallError {
        kind,
        detail: e.to_string(),
    }
}

/// Client sockets are spread over `127.0.0.<from> .. <from+count-1>` so
/// that the ~28k ephemeral ports per (source, destination) pair are no
/// limit. `count` 0 lets the kernel pick the source.
#[derive(Clone, Copy, Debug)]
pub struct Sources {
    pub from: u8,
    pub count: u8,
}

impl Default for Sources {
    fn default() -> Self {
        Sources { from: 2, count: 4 }
    }
}

impl Sources {
    pub fn addrs(&self) -> anyhow::Result<Vec<Ipv4Addr>> {
        let last = self.from as u32 + self.count as u32;
        if self.count > 0 && (self.from == 0 || last > 255) {
            bail!(
                "source addresses 127.0.0.{}..+{} leave 127.0.0.1-254",
                self.from,
                self.count
            );
        }
        Ok((0..self.count)
            .map(|i| Ipv4Addr::new(127, 0, 0, self.from + i))
            .collect())
    }
}

pub type Ws = WebSocketStream<Conn>;

/// A client connection: plain TCP, or TLS over it.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why an `https://` server cannot be reached.
fn need_ca(target: &Target) -> String {
    format!(
        "{} is https://: give --ca <pem> (e.g. scripts/cert's cert.pem) to trust its certificate",
        target.authority()
    )
}

/// Why a socket did not get as far as its `welcome`.
#[derive(Debug, Clone)]
pub struct ConnectError {
    /// A short stable kind for counting (`refused`, `http_503`, …).
    pub kind: String,
    pub detail: String,
}

impl ConnectError {
    fn new(kind: impl Into<String>, detail: impl ToString) -> ConnectError {
        ConnectError {
            kind: kind.into(),
            detail: detail.to_string(),
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// Opens authenticated sockets on one of several servers (chosen by the
/// caller, see [`Connector::server_for`]), round-robin over the source
/// addresses.
pub struct Connector {
    targets: Vec<Target>,
    sources: Vec<Ipv4Addr>,
    next: AtomicUsize,
    config: WebSocketConfig,
    /// For the `https://` targets.
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Connector {
    /// `tls` is required when any target is `https://`.
    pub fn new(
        targets: &[Target],
        sources: Sources,
        tls: Option<&Tls>,
    ) -> anyhow::Result<Connector> {
        if targets.is_empty() {
            bail!("a connector needs at least one server");
        }
        if let Some(t) = targets.iter().find(|t| t.tls)
            && tls.is_none()
        {
            bail!(need_ca(t));
        }
        // Small buffers: the client holds thousands of sockets and reads
        // small frames; the 128 KiB defaults would cost gigabytes.
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_write_buffer_size(1 << 20)
            .max_message_size(Some(1 << 20))
            .max_frame_size(Some(1 << 20));
        Ok(Connector {
            targets: targets.to_vec(),
            sources: sources.addrs()?,
            next: AtomicUsize::new(0),
            config,
            tls: tls.map(|t| tokio_rustls::TlsConnector::from(t.clone())),
        })
    }

    /// How many servers the sockets are spread over.
    pub fn servers(&self) -> usize {
        self.targets.len()
    }

    /// The server of the `i`-th socket: round-robin, so every instance
    /// gets an equal share whatever the count.
    pub fn server_for(&self, i: usize) -> usize {
        i % self.targets.len()
    }

    fn target(&self, server: usize) -> &Target {
        &self.targets[server % self.targets.len()]
    }

    /// TCP to server number `server` (from the next source address), and
    /// the TLS handshake when it is `https://`.
    async fn open(&self, server: usize) -> Result<Conn, ConnectError> {
        let target = self.target(server);
        let socket = tcp_socket(self.source()).map_err(|e| io_failure("bind", e))?;
        let stream = socket
            .connect(target.addr)
            .await
            .map_err(|e| io_failure("connect", e))?;
        let _ = stream.set_nodelay(true);
        match (&self.tls, target.tls) {
            (Some(tls), true) => {
                let tls = tls
                    .connect(target.server_name(), stream)
                    .await
                    .map_err(tls_failure)?;
                Ok(Conn::Tls(Box::new(tls)))
            }
            (None, true) => Err(ConnectError::new("tls", need_ca(target))),
            (_, false) => Ok(Conn::Plain(stream)),
        }
    }

    fn source(&self) -> Option<Ipv4Addr> {
        if self.sources.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.sources[i % self.sources.len()])
    }

    /// TCP connect to server number `server`, upgrade on
    /// `/ws?token=…[&since=…]` and read `welcome`, all within
    /// [`CONNECT_TIMEOUT`].
    pub async fn connect(
        &self,
        server: usize,
        token: &str,
        since: Option<u64>,
    ) -> Result<(Ws, Welcome), ConnectError> {
        match timeout(CONNECT_TIMEOUT, self.connect_inner(server, token, since)).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::new("timeout", "connect, upgrade and welcome")),
        }
    }

    async fn connect_inner(
        &self,
        server: usize,
        token: &str,
        since: Option<u64>,
    ) -> Result<(Ws, Welcome), ConnectError> {
        let target = self.target(server);
        let stream = self.open(server).await?;
        let mut url = target.ws_url(&format!("/ws?token={token}"));
        if let Some(s) = since {
            url.push_str(&format!("&since={s}"));
        }
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(self.config))
                .await
                .map_err(upgrade_failure)?;
        match recv(&mut ws).await {
            Incoming::Frame(f) if f.kind == event::WELCOME => {
                let welcome: Welcome = serde_json::from_value(f.data)
                    .map_err(|e| ConnectError::new("bad_welcome", e))?;
                Ok((ws, welcome))
            }
            Incoming::Frame(f) => Err(ConnectError::new(
                "not_welcome",
                format!("first frame was {}", f.kind),
            )),
            Incoming::Closed(code) => Err(ConnectError::new(
                format!("closed_{}", code.map_or("none".into(), |c| c.to_string())),
                "closed before welcome",
            )),
            Incoming::Failed(kind) => Err(ConnectError::new(kind, "before welcome")),
        }
    }
}

/// A socket upgraded by hand, for readers that parse frames themselves
/// (`fanout`, `cross`): the stream, the bytes that arrived after the `101`
/// response (the start of the frame stream, `welcome` first) and, through
/// TLS, the connection state the reader goes on with (it may hold more
/// decrypted bytes).
pub struct RawWs {
    pub stream: TcpStream,
    pub pending: Vec<u8>,
    pub tls: Option<Box<rustls::ClientConnection>>,
}

impl RawWs {
    /// For the bare `epoll` reader: the same socket, blocking I/O off.
    pub fn into_raw(self) -> std::io::Result<crate::raw::Socket> {
        Ok(crate::raw::Socket {
            stream: self.stream.into_std()?,
            pending: self.pending,
            tls: self.tls,
        })
    }
}

impl Connector {
    /// TCP connect to server number `server` and upgrade on `/ws?token=…`,
    /// within [`CONNECT_TIMEOUT`], without a WebSocket library: the caller
    /// reads the frames.
    pub async fn connect_raw(&self, server: usize, token: &str) -> Result<RawWs, ConnectError> {
        match timeout(CONNECT_TIMEOUT, self.connect_raw_inner(server, token)).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::new("timeout", "connect and upgrade")),
        }
    }

    async fn connect_raw_inner(&self, server: usize, token: &str) -> Result<RawWs, ConnectError> {
        let target = self.target(server);
        let mut stream = self.open(server).await?;
        let key = tungstenite::handshake::client::generate_key();
        let request = format!(
            "GET /ws?token={token} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            target.authority()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| io_failure("upgrade", e))?;
        // Through TLS the request may still sit in rustls until flushed.
        stream.flush().await.map_err(|e| io_failure("upgrade", e))?;
        let mut buf = Vec::with_capacity(512);
        let head_end = loop {
            let mut chunk = [0u8; 1024];
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| io_failure("upgrade", e))?;
            if n == 0 {
                return Err(ConnectError::new(
                    "closed_none",
                    "closed during the upgrade",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 16 * 1024 {
                return Err(ConnectError::new("handshake", "response head too large"));
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        if status != 101 {
            return Err(ConnectError::new(
                format!("http_{status}"),
                "upgrade refused",
            ));
        }
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let accepted = head.lines().any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                k.eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == accept
            })
        });
        if !accepted {
            return Err(ConnectError::new("handshake", "wrong Sec-WebSocket-Accept"));
        }
        let pending = buf.split_off(head_end);
        Ok(match stream {
            Conn::Plain(stream) => RawWs {
                stream,
                pending,
                tls: None,
            },
            Conn::Tls(tls) => {
                let (stream, conn) = tls.into_inner();
                RawWs {
                    stream,
                    pending,
                    tls: Some(Box::new(conn)),
                }
            }
        })
    }
}

/// A plain TCP connection to `127.0.0.1:port` from `src` (no WebSocket).
pub async fn connect_tcp(src: Option<Ipv4Addr>, port: u16) -> std::io::Result<TcpStream> {
    let stream = tcp_socket(src)?
        .connect(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
        .await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A TCP socket bound to `src` (port chosen at connect time, thanks to
/// `IP_BIND_ADDRESS_NO_PORT`, so one address serves every destination).
fn tcp_socket(src: Option<Ipv4Addr>) -> std::io::Result<TcpSocket> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = src {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let one: libc::c_int = 1;
            // SAFETY: a valid fd owned by `socket`, and a pointer to a
            // c_int with its size, as setsockopt expects.
            let rc = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    &one as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        socket.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
    }
    Ok(socket)
}

fn io_failure(step: &str, e: std::io::Error) -> ConnectError {
    use std::io::ErrorKind as K;
    let kind = match (e.raw_os_error(), e.kind()) {
        (Some(libc::EMFILE | libc::ENFILE), _) => "too_many_open_files",
        (_, K::ConnectionRefused) => "refused",
        (_, K::AddrNotAvailable) => "addr_not_available",
        (_, K::AddrInUse) => "addr_in_use",
        (_, K::ConnectionReset) => "reset",
        (_, K::TimedOut) => "tcp_timeout",
        _ => "io",
    };
    ConnectError::new(kind, format!("{step}: {e}"))
}

fn tls_failure(e: std::io::Error) -> ConnectError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(c)) => {
            ConnectError::new("tls_certificate", format!("{c:?}"))
        }
        Some(other) => ConnectError::new("tls", other),
        None => io_failure("tls", e),
    }
}

fn upgrade_failure(e: tungstenite::Error) -> ConnectError {
    match e {
        tungstenite::Error::Http(res) => {
            let status = res.status().as_u16();
            let code = res
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice::<Value>(b).ok())
                .and_then(|v| v["code"].as_i64());
            let kind = match code {
                Some(c) => format!("http_{status}_{c}"),
                None => format!("http_{status}"),
            };
            ConnectError::new(kind, "upgrade refused")
        }
        tungstenite::Error::Io(io) => io_failure("upgrade", io),
        other => ConnectError::new("handshake", other),
    }
}

/// What reading a socket gave.
#[derive(Debug)]
pub enum Incoming {
    Frame(ServerFrame),
    /// The server closed (with its close code, if it sent one) or the
    /// stream ended.
    Closed(Option<u16>),
    /// A read error, by kind.
    Failed(String),
}

/// The next JSON frame; pings are answered by tungstenite while reading.
/// Cancel-safe (it only awaits the stream's `next`).
pub async fn recv(ws: &mut Ws) -> Incoming {
    loop {
        match ws.next().await {
            None => return Incoming::Closed(None),
            Some(Ok(Message::Text(t))) => {
                return match serde_json::from_str::<ServerFrame>(&t) {
                    Ok(f) => Incoming::Frame(f),
                    Err(_) => Incoming::Failed("bad_json".into()),
                };
            }
            Some(Ok(Message::Close(frame))) => {
                return Incoming::Closed(frame.map(|f| u16::from(f.code)));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                let kind = match &e {
                    tungstenite::Error::Io(io) => io_failure("read", io.kind().into()).kind,
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                        "closed".into()
                    }
                    tungstenite::Error::Protocol(_) => "protocol".into(),
                    _ => "read".into(),
                };
                return Incoming::Failed(kind);
            }
        }
    }
}

/// Sends one command frame, bounded by [`REPLY_TIMEOUT`].
pub async fn send_command<T: Serialize>(
    ws: &mut Ws,
    id: &str,
    kind: &str,
    data: T,
) -> anyhow::Result<()> {
    let text = serde_json::to_string(&CommandFrame { id, kind, data })?;
    timeout(REPLY_TIMEOUT, ws.send(Message::Text(text.into())))
        .await
        .context("write timed out")?
        .context("write failed")?;
    Ok(())
}

/// Runs `futs` on `tasks` tokio tasks, each driving its share with a
/// `FuturesUnordered`: thousands of sockets cost a few tasks, not thousands.
/// The outputs come back in no particular order.
pub fn spread<T, F>(futs: Vec<F>, tasks: usize) -> JoinHandle<Vec<T>>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let tasks = tasks.max(1);
    let groups: Vec<FuturesUnordered<F>> = (0..tasks).map(|_| FuturesUnordered::new()).collect();
    for (i, f) in futs.into_iter().enumerate() {
        groups[i % tasks].push(f);
    }
    let handles: Vec<JoinHandle<Vec<T>>> = groups
        .into_iter()
        .map(|g| tokio::spawn(g.collect::<Vec<T>>()))
        .collect();
    tokio::spawn(async move {
        let mut out = Vec::new();
        for h in handles {
            if let Ok(v) = h.await {
                out.extend(v);
            }
        }
        out
    })
}

/// How many driver tasks for `n` sockets: a few per core, at most one per
/// 64 sockets.
pub fn driver_tasks(n: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |c| c.get());
    (n / 64 + 1).min(cores * 4)
}

/// Resident memory of a process in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Wall-clock now in microseconds since the epoch (comparable with the
/// server's event timestamps on the same machine).
pub fn unix_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// An RFC 3339 timestamp (`2026-11-21T13:51:00.123Z`) in microseconds.
pub fn parse_time_us(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_micros())
}

/// The `exp` claim of a JWT access token, when it is one.
pub fn token_expiry(token: &str) -> Option<i64> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<Value>(&bytes).ok()?["exp"].as_i64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        assert_eq!(
            Target::parse("http://127.0.0.1:3000").unwrap().addr,
            "127.0.0.1:3000".parse().unwrap()
        );
        assert_eq!(
            Target::parse("localhost:3100/").unwrap().addr,
            "127.0.0.1:3100".parse().unwrap()
        );
        assert!(Target::parse("http://127.9.8.7:1").is_ok());
        assert!(Target::parse("http://10.0.0.1:3000").is_err());
        assert!(Target::parse("http://example.com:3000").is_err());
        let t = Target::parse("https://127.0.0.1:9443").unwrap();
        assert!(t.tls && t.addr.port() == 9443);
        assert_eq!(t.http_url("/x"), "https://127.0.0.1:9443/x");
        let t = Target::parse("wss://localhost/ws").unwrap();
        assert!(t.tls && t.addr.port() == 443 && t.host == "localhost");
        assert_eq!(t.ws_url("/ws"), "wss://localhost:443/ws");
        assert!(!Target::parse("http://127.0.0.1").unwrap().tls);
        assert!(Target::parse("https://10.0.0.1:443").is_err());
        assert!(Target::parse("ftp://127.0.0.1:21").is_err());
    }

    #[test]
    fn a_server_list_is_split_on_commas_and_checked_whole() {
        let l = Target::parse_list("http://127.0.0.1:3001, http://127.0.0.1:3002").unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].addr, "127.0.0.1:3002".parse().unwrap());
        assert_eq!(Target::parse_list("127.0.0.1:3000").unwrap().len(), 1);
        assert!(Target::parse_list("127.0.0.1:3001,10.0.0.1:3002").is_err());
        assert!(Target::parse_list("127.0.0.1:3001,localhost:3001").is_err());
        assert!(Target::parse_list(" , ").is_err());
    }

    #[test]
    fn source_ranges_stay_inside_127_0_0_x() {
        let s = Sources { from: 2, count: 3 }.addrs().unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[2], Ipv4Addr::new(127, 0, 0, 4));
        assert!(
            Sources {
                from: 250,
                count: 10
            }
            .addrs()
            .is_err()
        );
        assert!(Sources { from: 0, count: 0 }.addrs().unwrap().is_empty());
    }

    #[test]
    fn times_and_token_expiry_are_read() {
        assert_eq!(parse_time_us("1970-01-01T00:00:01.500Z"), Some(1_500_000));
        // {"exp":2000000000}
        let t = "x.eyJleHAiOjIwMDAwMDAwMDB9.y";
        assert_eq!(token_expiry(t), Some(2_000_000_000));
    }
}
