//! `fanout`: N sockets open; a product is restocked R times, one at a time
//! (each waits until every socket got the previous `stock_update`, or a
//! timeout). Per socket and update: receive time − the event's
//! `timestamp` (the server's commit-time stamp, milliseconds), and receive
//! time − the moment the restock request was sent (an upper bound).
//!
//! With several servers (`--server a,b`) the sockets are spread over them
//! round-robin and the restocks go through the first: the other instances
//! deliver what they hear from it (through Redis), and the report gives
//! each instance's share of deliveries and delays. `--redis-pid` adds the
//! CPU time Redis spent while the updates went out.
//!
//! An `https://` server (nginx in front) is read through TLS by the same
//! `epoll` thread (see `crate::raw`); the connect phase's length and this
//! process's memory per socket are reported so the two paths compare.
//!
//! Split in two so `shard` can run the sockets in several processes: the
//! *listener* (sockets, this module's `run` with a link) and the *driver*
//! ([`drive`]: the restocks, run once by whoever owns the link).

use anyhow::Context;
use protocol::Product;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use super::{Setup, check_socket_budget, users};
use crate::client::{Api, Connector, Method, RawWs, parse_time_us, rss_kb, spread, unix_us};
use crate::cpu::{CpuMeter, CpuUse};
use crate::link::{self, Control, Driver, Link, Progress};
use crate::progress::{Phase, Sink, Tally, Ticker};
use crate::raw::{Event, Reader, Socket};
use crate::stats::{Counts, Hist, add_counts, bump, round3, share, show_counts};

const LINK_WAIT: Duration = Duration::from_secs(3600);

pub struct Opts {
    pub setup: Setup,
    pub sockets: usize,
    /// R: how many restocks.
    pub updates: usize,
    /// Restock this product instead of creating one.
    pub product: Option<u64>,
    /// How long one update may take to reach every socket.
    pub update_timeout: Duration,
    /// Bound on logging in and connecting.
    pub duration: Duration,
    pub connect_concurrency: usize,
    /// Redis's pid: its CPU time over the updates is reported.
    pub redis_pid: Option<u32>,
    /// Set when this process only listens and someone else drives.
    pub link: Option<Link>,
}

impl Opts {
    pub fn new(setup: Setup, sockets: usize, updates: usize) -> Opts {
        Opts {
            setup,
            sockets,
            updates,
            product: None,
            update_timeout: Duration::from_secs(10),
            duration: Duration::from_secs(300),
            connect_concurrency: 256,
            redis_pid: None,
            link: None,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub processes: usize,
    pub product_id: u64,
    pub sockets: usize,
    pub connected: usize,
    pub connect_errors: Counts,
    /// The connect phase (login excluded), the longest of the processes.
    pub connect_s: f64,
    pub connects_per_s: f64,
    /// This tool's RSS growth per connected socket (all processes).
    pub client_bytes_per_socket: Option<f64>,
    /// Restocks that succeeded (R unless the server refused some).
    pub updates: usize,
    pub restock_errors: Counts,
    /// Updates that did not reach every socket within the update timeout.
    pub update_timeouts: usize,
    /// (socket, update) pairs delivered, of `connected × updates`.
    pub delivered: u64,
    pub expected: u64,
    /// Sockets that got every update.
    pub sockets_all: usize,
    pub share_all: f64,
    /// Receive time − the event's commit timestamp.
    pub delay_commit: Hist,
    /// Receive time − when the restock request was sent.
    pub delay_request: Hist,
    /// Request sent → every socket had it.
    pub update_complete: Hist,
    /// Samples whose receive time was before the event's timestamp.
    pub clock_skew_samples: u64,
    pub lost: Counts,
    /// Per server, in the order of `--server` (one entry per server).
    pub by_server: Vec<ServerDelivery>,
    /// Redis's CPU from the first restock until the last update arrived.
    pub redis_cpu: Option<CpuUse>,
    /// This process's RSS growth, summed over processes (for merging).
    #[serde(default)]
    pub client_rss_growth_kb: u64,
}

/// What the sockets on one server instance received.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServerDelivery {
    pub server: String,
    pub connected: usize,
    /// (socket, update) pairs delivered by this instance.
    pub delivered: u64,
    pub sockets_all: usize,
    pub delay_commit: Hist,
}

impl ServerDelivery {
    fn merge(&mut self, o: &ServerDelivery) {
        if self.server.is_empty() {
            self.server.clone_from(&o.server);
        }
        self.connected += o.connected;
        self.delivered += o.delivered;
        self.sockets_all += o.sockets_all;
        self.delay_commit.merge(&o.delay_commit);
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "fanout: {} updates of product {} to {}/{} sockets{}",
            self.updates,
            self.product_id,
            self.connected,
            self.sockets,
            if self.processes > 1 {
                format!(" over {} processes", self.processes)
            } else {
                String::new()
            }
        )?;
        writeln!(
            f,
            "  delivered {}/{}; {:.2}% of sockets got every update; {} update(s) timed out",
            self.delivered,
            self.expected,
            self.share_all * 100.0,
            self.update_timeouts
        )?;
        writeln!(
            f,
            "  connect: {:.2} s ({:.0}/s){}",
            self.connect_s,
            self.connects_per_s,
            self.client_bytes_per_socket
                .map(|b| format!("; this tool {b:.0} bytes/socket"))
                .unwrap_or_default()
        )?;
        writeln!(f, "  delay after commit:  {}", self.delay_commit)?;
        writeln!(f, "  delay after request: {}", self.delay_request)?;
        writeln!(f, "  request → all sockets: {}", self.update_complete)?;
        if let Some(c) = &self.redis_cpu {
            writeln!(f, "  redis during the updates: {c}")?;
        }
        if !self.connect_errors.is_empty() {
            writeln!(f, "  connect errors: {}", show_counts(&self.connect_errors))?;
        }
        if !self.restock_errors.is_empty() {
            writeln!(f, "  restock errors: {}", show_counts(&self.restock_errors))?;
        }
        if !self.lost.is_empty() {
            writeln!(f, "  sockets lost: {}", show_counts(&self.lost))?;
        }
        if self.by_server.len() > 1 {
            for s in &self.by_server {
                writeln!(
                    f,
                    "    {}: {} sockets, delivered {}/{}, {} got every update; after commit {}",
                    s.server,
                    s.connected,
                    s.delivered,
                    s.connected as u64 * self.updates as u64,
                    s.sockets_all,
                    s.delay_commit
                )?;
            }
        }
        if self.clock_skew_samples > 0 {
            writeln!(
                f,
                "  {} samples arrived before their timestamp (clock skew; counted as 0)",
                self.clock_skew_samples
            )?;
        }
        Ok(())
    }
}

/// What the driver saw.
#[derive(Debug, Default)]
pub struct Driven {
    pub updates: usize,
    pub restock_errors: Counts,
    pub update_timeouts: usize,
    pub update_complete: Hist,
    pub redis_cpu: Option<CpuUse>,
}

impl Report {
    /// The listeners' parts and the driver's view in one report.
    pub fn merge(parts: Vec<Report>, driven: Driven) -> Report {
        let mut m = Report {
            processes: parts.len(),
            updates: driven.updates,
            restock_errors: driven.restock_errors,
            update_timeouts: driven.update_timeouts,
            update_complete: driven.update_complete,
            redis_cpu: driven.redis_cpu,
            ..Report::default()
        };
        for p in &parts {
            m.product_id = p.product_id;
            m.sockets += p.sockets;
            m.connected += p.connected;
            m.connect_s = m.connect_s.max(p.connect_s);
            m.client_rss_growth_kb += p.client_rss_growth_kb;
            add_counts(&mut m.connect_errors, &p.connect_errors);
            m.delivered += p.delivered;
            m.sockets_all += p.sockets_all;
            m.delay_commit.merge(&p.delay_commit);
            m.delay_request.merge(&p.delay_request);
            m.clock_skew_samples += p.clock_skew_samples;
            add_counts(&mut m.lost, &p.lost);
            if m.by_server.len() < p.by_server.len() {
                m.by_server
                    .resize(p.by_server.len(), ServerDelivery::default());
            }
            for (a, b) in m.by_server.iter_mut().zip(&p.by_server) {
                a.merge(b);
            }
        }
        m.expected = m.connected as u64 * m.updates as u64;
        m.share_all = share(m.sockets_all as u64, m.connected as u64);
        m.connects_per_s = round3(m.connected as f64 / m.connect_s.max(1e-3));
        m.client_bytes_per_socket = (m.connected > 0)
            .then(|| round3(m.client_rss_growth_kb as f64 * 1024.0 / m.connected as f64));
        m
    }
}

/// Creates an inactive product (guests cannot buy it, so its stock moves
/// only by our restocks; stock broadcasts still go to every socket).
pub async fn create_product(api: &Api, merchant: &str, label: &str) -> anyhow::Result<u64> {
    let p: Product = api
        .send(
            Method::POST,
            "/api/merchant/products",
            merchant,
            &json!({
                "name": format!("loadtest {label} {}", super::run_tag()),
                "category": "loadtest",
                "description": "made by the load generator",
                "exchange_points": 1,
                "stock": 0,
                "status": "inactive",
            }),
        )
        .await
        .context("creating the fanout product")?;
    Ok(p.product_id.0 as u64)
}

pub async fn run(mut opts: Opts) -> anyhow::Result<Report> {
    if opts.link.is_some() {
        return listen(opts).await;
    }
    let api = opts.setup.api()?;
    let merchant = api.merchant_token().await?;
    let product = match opts.product {
        Some(p) => p,
        None => create_product(&api, &merchant, "fanout").await?,
    };
    let (link, driver) = link::pair();
    opts.link = Some(link);
    opts.product = Some(product);
    let (updates, timeout, redis_pid) = (opts.updates, opts.update_timeout, opts.redis_pid);
    let listener = tokio::spawn(listen(opts));
    let mut drivers = vec![driver];
    let driven = drive(
        &api,
        &merchant,
        Restocks {
            product,
            updates,
            update_timeout: timeout,
            redis_pid,
        },
        &mut drivers,
    )
    .await;
    let part = listener.await??;
    Ok(Report::merge(vec![part], driven?))
}

/// What the driver does: R restocks of one product.
pub struct Restocks {
    pub product: u64,
    pub updates: usize,
    /// How long one update may take to reach every socket.
    pub update_timeout: Duration,
    /// Redis's pid, for its CPU time over the updates.
    pub redis_pid: Option<u32>,
}

/// The R restocks, one at a time, each waiting until every listener has
/// seen it (or `update_timeout`), then `Stop` to all listeners.
pub async fn drive(
    api: &Api,
    merchant: &str,
    restocks: Restocks,
    drivers: &mut [Driver],
) -> anyhow::Result<Driven> {
    let result = drive_inner(api, merchant, &restocks, drivers).await;
    link::broadcast(drivers, Control::Stop);
    result
}

async fn drive_inner(
    api: &Api,
    merchant: &str,
    r: &Restocks,
    drivers: &mut [Driver],
) -> anyhow::Result<Driven> {
    let (product, update_timeout) = (r.product, r.update_timeout);
    link::all_ready(drivers, LINK_WAIT).await?;
    let mut d = Driven::default();
    let path = format!("/api/merchant/products/{product}/stock");
    let redis = match r.redis_pid {
        Some(pid) => Some(
            CpuMeter::start(pid).with_context(|| format!("--redis-pid {pid}: no such process"))?,
        ),
        None => None,
    };
    for _ in 0..r.updates {
        let at_us = unix_us();
        let t0 = Instant::now();
        let reply = api
            .call(
                Method::POST,
                &path,
                Some(merchant),
                Some(&json!({ "operation": "restock", "quantity": 1 })),
                None,
            )
            .await;
        let stock = match reply {
            Ok(r) if r.ok() => match serde_json::from_value::<Product>(r.data) {
                Ok(p) => p.stock,
                Err(_) => {
                    bump(&mut d.restock_errors, "bad_product");
                    continue;
                }
            },
            Ok(r) => {
                bump(&mut d.restock_errors, format!("code_{}", r.code));
                continue;
            }
            Err(e) => {
                bump(&mut d.restock_errors, e.kind);
                continue;
            }
        };
        d.updates += 1;
        link::broadcast(drivers, Control::Sent { stock, at_us });
        let deadline = t0 + update_timeout;
        let mut complete = true;
        'listeners: for driver in drivers.iter_mut() {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match driver.next(left).await {
                    Ok(Progress::Seen { stock: s }) if s == stock => break,
                    Ok(_) => continue,
                    Err(_) => {
                        complete = false;
                        break 'listeners;
                    }
                }
            }
        }
        if complete {
            d.update_complete.record(t0.elapsed());
        } else {
            d.update_timeouts += 1;
        }
    }
    d.redis_cpu = redis.and_then(|m| m.stop());
    Ok(d)
}

/// What the listener takes from a frame while the updates fly: found by
/// scanning the bytes as the server writes them
/// (`{"type":"stock_update","data":{"product_id":…,"stock":…,…,"timestamp":"…"}}`),
/// not by parsing the JSON, so that reading a message costs this process
/// about what `tcp-floor`'s reader pays for one. The timestamp is parsed
/// after the run. (Quotes inside a JSON string are escaped, so a product
/// name cannot fake a key.)
fn scan(text: &[u8]) -> Option<(u64, i64, Stamp)> {
    if !text.starts_with(br#"{"type":"stock_update""#) {
        return None;
    }
    let product_id = number_after(text, br#""product_id":"#)?;
    let stock = number_after(text, br#""stock":"#)?;
    let at = memchr::memmem::find(text, br#""timestamp":""#)? + 13;
    let len = memchr::memchr(b'"', &text[at..])?;
    let mut stamp = Stamp::default();
    let n = len.min(stamp.bytes.len());
    stamp.bytes[..n].copy_from_slice(&text[at..at + n]);
    stamp.len = n as u8;
    Some((product_id as u64, stock, stamp))
}

/// The digits (with an optional minus) right after `key`.
fn number_after(text: &[u8], key: &[u8]) -> Option<i64> {
    let mut at = memchr::memmem::find(text, key)? + key.len();
    let negative = text.get(at) == Some(&b'-');
    at += usize::from(negative);
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    let n: i64 = std::str::from_utf8(&text[at..at + digits])
        .ok()?
        .parse()
        .ok()?;
    Some(if negative { -n } else { n })
}

/// A timestamp's bytes, kept unparsed until the run is over.
#[derive(Clone, Copy, Default)]
struct Stamp {
    bytes: [u8; 32],
    len: u8,
}

impl Stamp {
    fn micros(&self) -> Option<i64> {
        std::str::from_utf8(&self.bytes[..self.len as usize])
            .ok()
            .and_then(parse_time_us)
    }
}

/// One received `stock_update`: (stock, server timestamp, receive µs).
type Sample = (i64, Stamp, i64);

async fn listen(mut opts: Opts) -> anyhow::Result<Report> {
    let n = opts.sockets;
    check_socket_budget(n)?;
    let product = opts.product.context("a fanout listener needs --product")?;
    let mut link = opts.link.take().context("a fanout listener needs a link")?;
    let mut report = Report {
        processes: 1,
        product_id: product,
        sockets: n,
        ..Report::default()
    };
    let Connected {
        streams,
        servers,
        started,
        rss_before,
    } = connect_all(&opts, Sink::of("fanout", Some(&link)), &mut report).await?;
    report.connect_s = round3(started.elapsed().as_secs_f64());
    let connected = streams.len();
    report.connects_per_s = round3(connected as f64 / report.connect_s.max(1e-3));
    let server_of: Vec<usize> = streams.iter().map(|s| s.0).collect();
    let streams: Vec<Socket> = streams.into_iter().map(|(_, s)| s).collect();

    // Every socket is read by one thread on a bare epoll (see `crate::raw`):
    // the load generator then takes as little of the shared cores as it can.
    let stop = Arc::new(AtomicBool::new(false));
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<i64>();
    let updates = opts.updates;
    let reading = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            read_all(streams, product, connected, updates, &stop, &seen_tx)
        })
    };

    // Listen until the driver stops us; pass "everyone saw it" upstream,
    // whichever of the two comes first.
    let mut sent: HashMap<i64, i64> = HashMap::new();
    let mut everyone: HashSet<i64> = HashSet::new();
    link.report(Progress::Ready);
    loop {
        tokio::select! {
            c = link.next(LINK_WAIT) => match c? {
                Control::Sent { stock, at_us } => {
                    sent.insert(stock, at_us);
                    if everyone.contains(&stock) {
                        link.report(Progress::Seen { stock });
                    }
                }
                Control::Go => {}
                Control::Stop | Control::Drop => break,
            },
            Some(stock) = seen_rx.recv() => {
                everyone.insert(stock);
                if sent.contains_key(&stock) {
                    link.report(Progress::Seen { stock });
                }
            }
        }
    }
    if let (Some(before), Some(now)) = (rss_before, rss_kb(std::process::id())) {
        report.client_rss_growth_kb = now.saturating_sub(before);
        report.client_bytes_per_socket = (connected > 0)
            .then(|| round3(report.client_rss_growth_kb as f64 * 1024.0 / connected as f64));
    }
    stop.store(true, Ordering::Release);
    let per_socket = reading.await??;

    report.connected = connected;
    report.updates = sent.len();
    report.by_server = servers
        .into_iter()
        .map(|server| ServerDelivery {
            server,
            ..ServerDelivery::default()
        })
        .collect();
    for (socket, server) in per_socket.into_iter().zip(server_of) {
        report.add_socket(socket, server, &sent);
    }
    report.expected = connected as u64 * sent.len() as u64;
    report.share_all = round3(share(report.sockets_all as u64, connected as u64));
    Ok(report)
}

impl Report {
    /// One socket's samples of the updates in `sent` (stock → request µs).
    fn add_socket(
        &mut self,
        (samples, lost): (Vec<Sample>, Option<String>),
        server: usize,
        sent: &HashMap<i64, i64>,
    ) {
        if let Some(kind) = lost {
            bump(&mut self.lost, kind);
        }
        let mut mine = ServerDelivery::default();
        let mut got = HashSet::new();
        for (stock, stamp, recv_us) in samples {
            let Some(at_us) = sent.get(&stock) else {
                continue;
            };
            let ts_us = stamp.micros().unwrap_or(recv_us);
            if !got.insert(stock) {
                continue;
            }
            let commit = recv_us - ts_us;
            if commit < 0 {
                self.clock_skew_samples += 1;
            }
            self.delay_commit.record_us(commit.max(0) as u64);
            mine.delay_commit.record_us(commit.max(0) as u64);
            self.delay_request
                .record_us((recv_us - at_us).max(0) as u64);
        }
        let all = !sent.is_empty() && got.len() == sent.len();
        self.delivered += got.len() as u64;
        self.sockets_all += usize::from(all);
        if let Some(s) = self.by_server.get_mut(server) {
            mine.connected = 1;
            mine.delivered = got.len() as u64;
            mine.sockets_all = usize::from(all);
            s.merge(&mine);
        }
    }
}

/// A connected socket and its server.
type Stream = (usize, Socket);

/// The connect phase's outcome.
struct Connected {
    streams: Vec<Stream>,
    /// The servers' names, in the order of `--server`.
    servers: Vec<String>,
    /// When the first socket was opened (after the logins).
    started: Instant,
    /// This process's RSS then, KiB.
    rss_before: Option<u64>,
}

/// Logs in and opens every socket (round-robin over the servers),
/// counting failures into `report`.
async fn connect_all(opts: &Opts, sink: Sink, report: &mut Report) -> anyhow::Result<Connected> {
    let n = opts.sockets;
    let deadline = Instant::now() + opts.duration;
    let creds = users::ensure_all(&opts.setup, n as u64, opts.duration).await?;
    let rss_before = rss_kb(std::process::id());
    let started = Instant::now();
    let connector = Arc::new(opts.setup.connector()?);
    let sem = Arc::new(Semaphore::new(opts.connect_concurrency.max(1)));
    let counts = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let futs: Vec<_> = creds
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let server = connector.server_for(i);
            let up = connect(
                server,
                c.access_token,
                connector.clone(),
                sem.clone(),
                deadline,
            );
            let counts = counts.clone();
            async move {
                let r = up.await;
                let counter = if r.is_ok() { &counts.0 } else { &counts.1 };
                counter.fetch_add(1, Ordering::Relaxed);
                (server, r)
            }
        })
        .collect();
    let ticker = {
        let c = counts.clone();
        Ticker::start(&sink, Phase::Connect, move || {
            Tally::new(n, c.0.load(Ordering::Relaxed), c.1.load(Ordering::Relaxed))
        })
    };
    let mut streams = Vec::with_capacity(n);
    for (server, r) in spread(futs, crate::client::driver_tasks(n)).await? {
        match r {
            Ok(raw) => streams.push((server, raw.into_raw()?)),
            Err(kind) => bump(&mut report.connect_errors, kind),
        }
    }
    drop(ticker);
    Ok(Connected {
        streams,
        servers: opts.setup.server_names(),
        started,
        rss_before,
    })
}

/// One socket's upgrade, bounded by the connect phase's deadline.
async fn connect(
    server: usize,
    token: String,
    connector: Arc<Connector>,
    sem: Arc<Semaphore>,
    deadline: Instant,
) -> Result<RawWs, String> {
    let permit = tokio::select! {
        p = sem.acquire_owned() => p.ok(),
        _ = tokio::time::sleep_until(deadline) => None,
    };
    if permit.is_none() {
        return Err("deadline".into());
    }
    match tokio::time::timeout_at(deadline, connector.connect_raw(server, &token)).await {
        Ok(Ok(raw)) => Ok(raw),
        Ok(Err(e)) => Err(e.kind),
        Err(_) => Err("deadline".into()),
    }
}

/// The reading thread: samples of every socket, and why it ended early (if
/// it did). Says on `seen_tx` when all `target` sockets have a stock value.
fn read_all(
    streams: Vec<Socket>,
    product: u64,
    target: usize,
    updates: usize,
    stop: &AtomicBool,
    seen_tx: &mpsc::UnboundedSender<i64>,
) -> anyhow::Result<Vec<(Vec<Sample>, Option<String>)>> {
    let n = streams.len();
    let mut reader = Reader::new(streams).context("registering the sockets")?;
    // Room for every update up front: no allocation while they fly.
    let mut samples: Vec<Vec<Sample>> = (0..n).map(|_| Vec::with_capacity(updates)).collect();
    let mut lost: Vec<Option<String>> = vec![None; n];
    let mut seen: HashMap<i64, usize> = HashMap::new();
    let mut on = |ev: Event| match ev {
        Event::Text(i, text) => {
            let recv_us = unix_us();
            let Some((id, stock, stamp)) = scan(text) else {
                return;
            };
            if id != product {
                return;
            }
            samples[i].push((stock, stamp, recv_us));
            let count = seen.entry(stock).or_default();
            *count += 1;
            if *count == target {
                let _ = seen_tx.send(stock);
            }
        }
        Event::Ended(i, kind) => lost[i] = Some(kind),
    };
    reader.drain_pending(&mut on);
    while !stop.load(Ordering::Acquire) {
        reader.poll(50, &mut on)?;
    }
    Ok(samples.into_iter().zip(lost).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{ProductId, StockOperation, StockUpdate};

    #[test]
    fn the_scan_reads_a_servers_stock_update() {
        let frame = serde_json::to_string(&protocol::EventFrame {
            kind: protocol::event::STOCK_UPDATE,
            seq: None,
            data: &StockUpdate {
                product_id: ProductId(42),
                stock: -3,
                product_name: r#"假的 "stock":99 名字"#.into(),
                operation: StockOperation::Restock,
                timestamp: "2026-12-02T16:09:34.123Z".into(),
            },
        })
        .unwrap();
        let (id, stock, stamp) = scan(frame.as_bytes()).expect("a stock_update");
        assert_eq!((id, stock), (42, -3));
        assert_eq!(stamp.micros(), parse_time_us("2026-12-02T16:09:34.123Z"));
        assert!(scan(br#"{"type":"points_update","data":{"stock":1}}"#).is_none());
    }
}
