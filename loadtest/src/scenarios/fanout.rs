//! `fanout`: N sockets open; a product is restocked R times, one at a time
//! (each waits until every socket got the previous `stock_update`, or a
//! timeout). Per socket and update: receive time − the event's
//! `timestamp` (the server's commit-time stamp, milliseconds), and receive
//! time − the moment the restock request was sent (an upper bound).
//!
//! Split in two so `shard` can run the sockets in several processes: the
//! *listener* (sockets, this module's `run` with a link) and the *driver*
//! ([`drive`]: the restocks, run once by whoever owns the link).

use anyhow::Context;
use futures::StreamExt;
use protocol::{Product, event};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::hold::close_kind;
use super::{Setup, check_socket_budget, users};
use crate::client::{Api, Connector, Method, parse_time_us, spread, unix_us};
use crate::link::{self, Control, Driver, Link, Progress};
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
        writeln!(f, "  delay after commit:  {}", self.delay_commit)?;
        writeln!(f, "  delay after request: {}", self.delay_request)?;
        writeln!(f, "  request → all sockets: {}", self.update_complete)?;
        if !self.connect_errors.is_empty() {
            writeln!(f, "  connect errors: {}", show_counts(&self.connect_errors))?;
        }
        if !self.restock_errors.is_empty() {
            writeln!(f, "  restock errors: {}", show_counts(&self.restock_errors))?;
        }
        if !self.lost.is_empty() {
            writeln!(f, "  sockets lost: {}", show_counts(&self.lost))?;
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
            ..Report::default()
        };
        for p in &parts {
            m.product_id = p.product_id;
            m.sockets += p.sockets;
            m.connected += p.connected;
            add_counts(&mut m.connect_errors, &p.connect_errors);
            m.delivered += p.delivered;
            m.sockets_all += p.sockets_all;
            m.delay_commit.merge(&p.delay_commit);
            m.delay_request.merge(&p.delay_request);
            m.clock_skew_samples += p.clock_skew_samples;
            add_counts(&mut m.lost, &p.lost);
        }
        m.expected = m.connected as u64 * m.updates as u64;
        m.share_all = share(m.sockets_all as u64, m.connected as u64);
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
    Ok(p.product_id)
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
    let (updates, timeout) = (opts.updates, opts.update_timeout);
    let listener = tokio::spawn(listen(opts));
    let mut drivers = vec![driver];
    let driven = drive(&api, &merchant, product, updates, timeout, &mut drivers).await;
    let part = listener.await??;
    Ok(Report::merge(vec![part], driven?))
}

/// The R restocks, one at a time, each waiting until every listener has
/// seen it (or `update_timeout`), then `Stop` to all listeners.
pub async fn drive(
    api: &Api,
    merchant: &str,
    product: u64,
    updates: usize,
    update_timeout: Duration,
    drivers: &mut [Driver],
) -> anyhow::Result<Driven> {
    let result = drive_inner(api, merchant, product, updates, update_timeout, drivers).await;
    link::broadcast(drivers, Control::Stop);
    result
}

async fn drive_inner(
    api: &Api,
    merchant: &str,
    product: u64,
    updates: usize,
    update_timeout: Duration,
    drivers: &mut [Driver],
) -> anyhow::Result<Driven> {
    link::all_ready(drivers, LINK_WAIT).await?;
    let mut d = Driven::default();
    let path = format!("/api/merchant/products/{product}/stock");
    for _ in 0..updates {
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
    Ok(d)
}

/// Shared between the listener's sockets.
#[derive(Default)]
struct Shared {
    done: AtomicUsize,
    connected: AtomicUsize,
    /// Sockets expected to see each update (set once connecting is over).
    target: AtomicUsize,
    /// How many sockets have seen each stock value.
    seen: Mutex<HashMap<i64, usize>>,
    wake: Notify,
}

/// The parts of a server frame the listener measures; every other field
/// is skipped unparsed.
#[derive(Deserialize)]
struct StockFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    data: StockData<'a>,
}

#[derive(Deserialize, Default)]
struct StockData<'a> {
    product_id: Option<u64>,
    stock: Option<i64>,
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
}

/// One received `stock_update`: (stock, server timestamp µs, receive µs).
type Sample = (i64, i64, i64);

enum Outcome {
    Failed(String),
    /// Samples, and why the socket ended early (if it did).
    Listened(Vec<Sample>, Option<String>),
}

async fn listen(mut opts: Opts) -> anyhow::Result<Report> {
    let n = opts.sockets;
    check_socket_budget(n)?;
    let product = opts.product.context("a fanout listener needs --product")?;
    let mut link = opts.link.take().context("a fanout listener needs a link")?;
    let deadline = Instant::now() + opts.duration;
    let creds = users::ensure_all(&opts.setup, n as u64, opts.duration).await?;
    let connector = Arc::new(opts.setup.connector()?);
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<i64>();
    let sem = Arc::new(Semaphore::new(opts.connect_concurrency.max(1)));
    let futs: Vec<_> = creds
        .into_iter()
        .map(|c| {
            socket(
                c.access_token,
                product,
                connector.clone(),
                sem.clone(),
                shared.clone(),
                deadline,
                stop_rx.clone(),
                seen_tx.clone(),
            )
        })
        .collect();
    drop(seen_tx);
    let handle = spread(futs, crate::client::driver_tasks(n));
    while shared.done.load(Ordering::Acquire) < n {
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    let connected = shared.connected.load(Ordering::Relaxed);
    shared.target.store(connected, Ordering::Release);

    // Listen until the driver stops us; pass "everyone saw it" upstream.
    let mut sent: HashMap<i64, i64> = HashMap::new();
    link.report(Progress::Ready);
    loop {
        tokio::select! {
            c = link.next(LINK_WAIT) => match c? {
                Control::Sent { stock, at_us } => {
                    sent.insert(stock, at_us);
                    // Every socket may have seen it before the driver said so.
                    let all = shared.seen.lock().map(|m| m.get(&stock).copied().unwrap_or(0)).unwrap_or(0);
                    if connected > 0 && all >= connected {
                        link.report(Progress::Seen { stock });
                    }
                }
                Control::Go => {}
                Control::Stop | Control::Drop => break,
            },
            Some(stock) = seen_rx.recv() => {
                if sent.contains_key(&stock) {
                    link.report(Progress::Seen { stock });
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    let outcomes = handle.await?;

    let mut report = Report {
        processes: 1,
        product_id: product,
        sockets: n,
        connected,
        updates: sent.len(),
        ..Report::default()
    };
    for outcome in outcomes {
        match outcome {
            Outcome::Failed(kind) => bump(&mut report.connect_errors, kind),
            Outcome::Listened(samples, lost) => {
                if let Some(kind) = lost {
                    bump(&mut report.lost, kind);
                }
                let mut got = HashSet::new();
                for (stock, ts_us, recv_us) in samples {
                    let Some(at_us) = sent.get(&stock) else {
                        continue;
                    };
                    if !got.insert(stock) {
                        continue;
                    }
                    let commit = recv_us - ts_us;
                    if commit < 0 {
                        report.clock_skew_samples += 1;
                    }
                    report.delay_commit.record_us(commit.max(0) as u64);
                    report
                        .delay_request
                        .record_us((recv_us - at_us).max(0) as u64);
                }
                report.delivered += got.len() as u64;
                if !sent.is_empty() && got.len() == sent.len() {
                    report.sockets_all += 1;
                }
            }
        }
    }
    report.expected = connected as u64 * sent.len() as u64;
    report.share_all = round3(share(report.sockets_all as u64, connected as u64));
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn socket(
    token: String,
    product: u64,
    connector: Arc<Connector>,
    sem: Arc<Semaphore>,
    shared: Arc<Shared>,
    deadline: Instant,
    mut stop: watch::Receiver<bool>,
    seen_tx: mpsc::UnboundedSender<i64>,
) -> Outcome {
    let permit = tokio::select! {
        p = sem.acquire_owned() => p.ok(),
        _ = tokio::time::sleep_until(deadline) => None,
    };
    let connected = match permit {
        Some(_) => tokio::time::timeout_at(deadline, connector.connect(&token, None)).await,
        None => Ok(Err(crate::client::ConnectError {
            kind: "deadline".into(),
            detail: String::new(),
        })),
    };
    drop(permit);
    let finished = |ok: bool| {
        if ok {
            shared.connected.fetch_add(1, Ordering::Relaxed);
        }
        shared.done.fetch_add(1, Ordering::Release);
        shared.wake.notify_one();
    };
    let mut ws = match connected {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => {
            finished(false);
            return Outcome::Failed(e.kind);
        }
        Err(_) => {
            finished(false);
            return Outcome::Failed("deadline".into());
        }
    };
    finished(true);

    let mut samples = Vec::new();
    // The stop wait is made once, not once per frame (18,000 sockets
    // re-registering on one shared channel per update is measurable).
    let mut stopped = std::pin::pin!(stop.wait_for(|s| *s));
    loop {
        tokio::select! {
            _ = &mut stopped => return Outcome::Listened(samples, None),
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let recv_us = unix_us();
                    // Only the fields measured, borrowed from the frame: the
                    // generator shares the server's cores, so reading must
                    // cost as little as it can.
                    let Ok(f) = serde_json::from_str::<StockFrame>(&t) else { continue };
                    if f.kind != event::STOCK_UPDATE || f.data.product_id != Some(product) {
                        continue;
                    }
                    let Some(stock) = f.data.stock else { continue };
                    let ts_us = f.data.timestamp.as_deref().and_then(parse_time_us).unwrap_or(recv_us);
                    samples.push((stock, ts_us, recv_us));
                    let target = shared.target.load(Ordering::Acquire);
                    let count = {
                        let mut seen = shared.seen.lock().unwrap_or_else(|e| e.into_inner());
                        let c = seen.entry(stock).or_default();
                        *c += 1;
                        *c
                    };
                    if target > 0 && count == target {
                        let _ = seen_tx.send(stock);
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    return Outcome::Listened(samples, Some(close_kind(frame.map(|f| u16::from(f.code)))));
                }
                Some(Ok(_)) => {}
                None => return Outcome::Listened(samples, Some(close_kind(None))),
                Some(Err(_)) => return Outcome::Listened(samples, Some("read".into())),
            }
        }
    }
}
