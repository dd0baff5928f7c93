//! The hot in-process paths: frame encode/decode, the prize pick, and a hub
//! broadcast to 10 000 sockets. Figures and how to run them: BENCHMARKS.md.

use axum::extract::ws::Utf8Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use protocol::{IncomingFrame, PointsUpdate, StockUpdate};
use protocol::{ProductId, Source, StockOperation};
use rand::SeedableRng;
use rand::rngs::StdRng;
use restaurant_points::bench::{Hub, SessionId, UserId, demo_wheel};
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

fn broadcast(c: &mut Criterion) {
    let hub = Arc::new(Hub::new(5, 64));
    let sockets: Vec<_> = (0..10_000u64)
        .map(|u| hub.register(UserId(u), SessionId(u), false))
        .collect();
    let update = StockUpdate {
        product_id: ProductId(7),
        stock: 41,
        product_name: "招牌奶茶".into(),
        operation: StockOperation::Purchase,
        timestamp: "2026-11-21T13:51:00.123Z".into(),
    };
    c.bench_function("serialize once and broadcast to 10 000 sockets", |b| {
        b.iter_batched(
            || {
                for s in &sockets {
                    s.conn.outbox.take();
                }
            },
            |()| {
                let frame = serde_json::to_string(&protocol::EventFrame {
                    kind: "stock_update",
                    seq: None,
                    data: &update,
                })
                .unwrap();
                black_box(hub.broadcast_all(Utf8Bytes::from(frame)))
            },
            BatchSize::PerIteration,
        )
    });
}

criterion_group!(benches, frames, prize_pick, broadcast);
criterion_main!(benches);
