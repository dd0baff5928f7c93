//! The hot in-process paths: frame encode/decode, the prize pick, and a hub
//! broadcast to 2 000 loopback sockets. Figures and how to run them: BENCHMARKS.md.

mod support;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use protocol::Source;
use protocol::{IncomingFrame, PointsUpdate};
use rand::SeedableRng;
use rand::rngs::StdRng;
use restaurant_points::bench::{Hub, UserId, demo_wheel};
use std::hint::black_box;
use std::sync::Arc;

fn frames(c: &mut Criterion) {
    let command = r#"{"id":"c-7f3a91","type":"lottery.draw","data":{"draw_count":1}}"#;
    c.bench_function("decode a command frame", |b| {
        b.iter(|| {
            let f: IncomingFrame = serde_json::from_str(black_box(command)).unwrap();
            black_box(f.kind);
        })
    });
    let update = PointsUpdate {
        user_id: UserId(123_456),
        total_points: 900,
        change_points: -100,
        reason: "抽奖消耗".into(),
        source: Source::Lottery,
        timestamp: "2026-11-21T13:51:00.123Z".into(),
    };
    c.bench_function("encode a points_update event", |b| {
        b.iter(|| {
            serde_json::to_string(&protocol::EventFrame {
                kind: "points_update",
                seq: Some(42),
                data: black_box(&update),
            })
            .unwrap()
        })
    });
}

fn prize_pick(c: &mut Criterion) {
    let wheel = demo_wheel();
    wheel.validate().unwrap();
    let mut rng = StdRng::from_os_rng();
    c.bench_function("pick a prize", |b| {
        b.iter(|| black_box(wheel.pick(black_box(3), &mut rng)))
    });
    c.bench_function("seed a CSPRNG from the OS (once per draw command)", |b| {
        b.iter(|| black_box(StdRng::from_os_rng()))
    });
}

/// Loopback TCP pairs: the server's ends registered in a hub, the
/// clients' ends read by the bench between iterations.
const SOCKETS: u64 = 2_000;

fn broadcast(c: &mut Criterion) {
    let rt = support::runtime();
    let hub = Arc::new(Hub::new(5, 64));
    let mut pairs = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        support::connect(&hub, &listener, 0..SOCKETS).await
    });
    let update = support::stock_update();
    c.bench_function("serialize once and write to 2 000 loopback sockets", |b| {
        b.iter_batched(
            || support::drain(pairs.iter_mut().map(|(_, c)| c)),
            |()| black_box(support::broadcast(&hub, &update)),
            BatchSize::PerIteration,
        )
    });
    drop(pairs);
}

criterion_group!(benches, frames, prize_pick, broadcast);
criterion_main!(benches);
