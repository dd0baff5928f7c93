//! What the hub benches share: a hub with loopback sockets registered in
//! it, the broadcast they measure, and emptying the clients between rounds.
#![allow(dead_code)]

use protocol::{ProductId, StockOperation, StockUpdate};
use restaurant_points::bench::{Hub, SessionId, UserId};
use std::io::Read;
use std::net::TcpStream;
use std::ops::Range;
use std::sync::Arc;

/// The runtime the benches run on: one worker (the hub has threads of its own).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Registers one loopback TCP pair per user of `users`: the server's end in
/// the hub, the client's end (non-blocking) returned beside its
/// registration, which keeps it registered while held.
pub async fn connect(
    hub: &Arc<Hub>,
    listener: &tokio::net::TcpListener,
    users: Range<u64>,
) -> Vec<(impl Sized + use<>, TcpStream)> {
    let addr = listener.local_addr().unwrap();
    let mut pairs = Vec::new();
    for u in users {
        let client = TcpStream::connect(addr).unwrap();
        client.set_nonblocking(true).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let reg = hub.register(UserId(u), SessionId(u), false);
        reg.conn.outbox.install(server);
        pairs.push((reg, client));
    }
    pairs
}

pub fn stock_update() -> StockUpdate {
    StockUpdate {
        product_id: ProductId(7),
        stock: 41,
        product_name: "招牌奶茶".into(),
        operation: StockOperation::Purchase,
        timestamp: "2026-11-21T13:51:00.123Z".into(),
    }
}

/// One broadcast as the server makes it: serialized once, handed to every
/// socket; returns how many took it.
pub fn broadcast(hub: &Hub, update: &StockUpdate) -> usize {
    let frame = serde_json::to_string(&protocol::EventFrame {
        kind: "stock_update",
        seq: None,
        data: update,
    })
    .unwrap();
    hub.broadcast_all(&frame)
}

/// Empties the clients' buffers so every write is taken whole.
pub fn drain<'a>(clients: impl IntoIterator<Item = &'a mut TcpStream>) {
    let mut buf = [0u8; 4096];
    for c in clients {
        while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
    }
}
