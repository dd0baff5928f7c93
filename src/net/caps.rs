//! Connection caps: how many plain HTTP connections are open, in total and
//! per peer address, and the refusal a connection over a cap gets.

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::{HttpLimits, TrustedProxies};

/// Refused sockets being closed politely at once; past this they are
/// closed at once (a flood is not owed politeness).
const LINGERING_MAX: usize = 256;
/// How long a refused socket may take to read our 503 and hang up.
const LINGER_FOR: Duration = Duration::from_secs(1);
/// Input read from a refused socket before giving up on it.
const LINGER_MAX_BYTES: usize = 64 * 1024;

pub(super) struct Caps {
    max_total: usize,
    max_per_ip: usize,
    /// Exempt from `max_per_ip` (still counted in the total).
    trusted: TrustedProxies,
    /// Total and per-address counts, changed together under one lock so a
    /// refusal never leaves a half-taken slot behind. Entries at zero are
    /// removed: the map holds only addresses with a connection open.
    counts: Mutex<Counts>,
    /// Permits for refused sockets still lingering.
    lingering: Arc<Semaphore>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One open connection's place in the counts, given back on drop.
pub(super) struct Slot {
    caps: Arc<Caps>,
    /// `None` for a trusted peer, which takes no per-address place.
    ip: Option<IpAddr>,
}

impl Caps {
    pub(super) fn new(limits: &HttpLimits) -> Self {
        Caps {
            max_total: limits.max_connections,
            max_per_ip: limits.max_per_ip,
            trusted: limits.trusted.clone(),
            counts: Mutex::new(Counts::default()),
            lingering: Arc::new(Semaphore::new(LINGERING_MAX)),
        }
    }

    /// A slot for a connection from `ip`, or `None` when a cap is reached.
    pub(super) fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        // A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d.
        let ip = ip.to_canonical();
        let per_ip = (!self.trusted.contains(ip)).then_some(ip);
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.total >= self.max_total {
            return None;
        }
        if let Some(ip) = per_ip {
            let n = counts.per_ip.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                if *n == 0 {
                    counts.per_ip.remove(&ip);
                }
                return None;
            }
            *n += 1;
        }
        counts.total += 1;
        Some(Slot {
            caps: Arc::clone(self),
            ip: per_ip,
        })
    }

    /// Writes the 503 envelope straight to the socket and closes it; no
    /// hyper connection is spent on a peer we are turning away.
    pub(super) fn refuse(&self, stream: TcpStream) {
        match Arc::clone(&self.lingering).try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(async move {
                    refuse_politely(stream).await;
                    drop(permit);
                });
            }
            // Too many being refused at once: one non-blocking write (a fresh
            // socket's send buffer takes it whole), then close at once.
            Err(_) => {
                if let Ok(stream) = stream.into_std() {
                    let _ = (&stream).write(&REFUSAL);
                }
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self
            .caps
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        counts.total -= 1;
        if let Some(ip) = self.ip
            && let Some(n) = counts.per_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&ip);
            }
        }
    }
}

/// Writes the refusal, half-closes, then reads and discards what the
/// client had already sent until it hangs up, all within `LINGER_FOR`.
/// Closing a socket with unread input makes the kernel answer with RST, and
/// an RST can reach the client before it has read our 503, which it would
/// then never see.
async fn refuse_politely(mut stream: TcpStream) {
    let _ = tokio::time::timeout(LINGER_FOR, async {
        stream.write_all(&REFUSAL).await?;
        stream.shutdown().await?;
        let mut buf = [0u8; 4096];
        let mut read = 0;
        while read < LINGER_MAX_BYTES {
            match stream.read(&mut buf).await? {
                0 => break,
                n => read += n,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// `{"code":2009,...}` as a complete HTTP/1.1 response.
static REFUSAL: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let body = r#"{"code":2009,"msg":"连接数已满，请稍后重试","data":null}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\n\
         content-type: application/json\r\n\
         retry-after: 1\r\n\
         connection: close\r\n\
         content-length: {}\r\n\
         \r\n\
         {body}",
        body.len()
    )
    .into_bytes()
});

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(total: usize, per_ip: usize, trusted: &str) -> Arc<Caps> {
        Arc::new(Caps::new(&HttpLimits {
            max_connections: total,
            max_per_ip: per_ip,
            trusted: TrustedProxies::parse(trusted).unwrap(),
            ..HttpLimits::default()
        }))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_slot_is_given_back_when_dropped_and_the_map_forgets_the_address() {
        let caps = caps(10, 2, "");
        let a = caps.try_acquire(ip("10.0.0.1")).unwrap();
        let b = caps.try_acquire(ip("10.0.0.1")).unwrap();
        assert!(caps.try_acquire(ip("10.0.0.1")).is_none());
        drop(a);
        let c = caps.try_acquire(ip("10.0.0.1")).unwrap();
        drop((b, c));
        let counts = caps.counts.lock().unwrap();
        assert_eq!(counts.total, 0);
        assert!(counts.per_ip.is_empty());
    }

    #[test]
    fn a_refusal_at_the_total_cap_leaves_no_per_address_entry() {
        let caps = caps(1, 5, "");
        let _a = caps.try_acquire(ip("10.0.0.1")).unwrap();
        assert!(caps.try_acquire(ip("10.0.0.2")).is_none());
        assert!(
            !caps
                .counts
                .lock()
                .unwrap()
                .per_ip
                .contains_key(&ip("10.0.0.2"))
        );
    }

    #[test]
    fn a_zero_per_address_cap_refuses_without_leaking_an_entry() {
        let caps = caps(10, 0, "");
        assert!(caps.try_acquire(ip("10.0.0.1")).is_none());
        assert!(caps.counts.lock().unwrap().per_ip.is_empty());
    }

    #[test]
    fn trusted_peers_skip_the_per_address_cap_but_count_in_the_total() {
        let caps = caps(3, 1, "127.0.0.1/32");
        let held: Vec<_> = (0..3)
            .map(|_| caps.try_acquire(ip("127.0.0.1")).unwrap())
            .collect();
        assert!(caps.try_acquire(ip("127.0.0.1")).is_none());
        assert!(caps.try_acquire(ip("10.0.0.1")).is_none());
        drop(held);
        assert_eq!(caps.counts.lock().unwrap().total, 0);
    }

    #[test]
    fn an_ipv4_mapped_peer_counts_as_its_ipv4_address() {
        let caps = caps(10, 1, "");
        let _a = caps.try_acquire(ip("10.0.0.1")).unwrap();
        assert!(caps.try_acquire(ip("::ffff:10.0.0.1")).is_none());
    }

    #[test]
    fn the_refusal_is_a_complete_503_with_the_2009_envelope() {
        let text = String::from_utf8(REFUSAL.clone()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains("retry-after: 1\r\n"));
        assert!(head.contains("connection: close\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert_eq!(
            body,
            r#"{"code":2009,"msg":"连接数已满，请稍后重试","data":null}"#
        );
    }
}
