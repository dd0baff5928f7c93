//! Where committed effects go: this instance's sockets (the hub), then the
//! other instances (the fan-out, when Redis is configured). The runner
//! calls `deliver` after every commit and nowhere else.

use protocol::ProductId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::fanout::Fanout;
use crate::domain::{Broadcast, Effects};
use crate::hub::Hub;

/// How long a `product_update` waits for newer changes of its product.
const COALESCE: Duration = Duration::from_millis(5);

pub struct Delivery {
    hub: Arc<Hub>,
    fanout: Option<Arc<Fanout>>,
    /// Product changes waiting out `COALESCE`, the newest per product.
    pending: Arc<Mutex<HashMap<ProductId, Broadcast>>>,
}

impl Delivery {
    pub fn new(hub: Arc<Hub>, fanout: Option<Arc<Fanout>>) -> Delivery {
        Delivery {
            hub,
            fanout,
            pending: Arc::default(),
        }
    }

    pub fn deliver(&self, effects: Effects) {
        let Effects {
            events,
            broadcasts,
            closes,
            ..
        } = effects;
        let (later, now): (Vec<Broadcast>, Vec<Broadcast>) =
            broadcasts.into_iter().partition(|b| b.coalesce.is_some());
        if let Some(f) = &self.fanout {
            f.publish(&events, &now, &closes);
        }
        if !events.is_empty() {
            self.hub.deliver(&events);
        }
        for b in &now {
            self.hub.broadcast(b);
        }
        for c in &closes {
            self.hub.close_sockets(c.user_id, c.session, c.code);
        }
        for b in later {
            self.coalesce(b);
        }
    }

    /// Holds a product's change for `COALESCE`; a newer one of the same
    /// product replaces it. The first change of a quiet period starts the
    /// flush.
    fn coalesce(&self, b: Broadcast) {
        let Some(product) = b.coalesce else { return };
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let first = pending.is_empty();
        pending.insert(product, b);
        drop(pending);
        if first {
            let (pending, hub, fanout) =
                (self.pending.clone(), self.hub.clone(), self.fanout.clone());
            tokio::spawn(async move {
                tokio::time::sleep(COALESCE).await;
                let batch: Vec<Broadcast> =
                    std::mem::take(&mut *pending.lock().unwrap_or_else(|e| e.into_inner()))
                        .into_values()
                        .collect();
                if let Some(f) = &fanout {
                    f.publish(&[], &batch, &[]);
                }
                for b in &batch {
                    hub.broadcast(b);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Audience;
    use crate::hub::Outgoing;
    use protocol::{SessionId, UserId};

    fn update(product: u32, name: &str) -> Broadcast {
        Broadcast {
            audience: Audience::Everyone,
            version: None,
            coalesce: Some(ProductId(product)),
            frame: format!("{{\"type\":\"product_update\",\"name\":\"{name}\"}}"),
        }
    }

    #[tokio::test]
    async fn product_changes_landing_together_are_sent_once_the_newest() {
        let hub = Arc::new(Hub::new(5, 64));
        let socket = hub.register(UserId(1), SessionId(1), false);
        let delivery = Delivery::new(hub.clone(), None);
        for (product, name) in [(1, "a"), (1, "b"), (2, "x"), (1, "c")] {
            delivery.deliver(Effects {
                broadcasts: vec![update(product, name)],
                ..Effects::default()
            });
        }
        hub.settle();
        assert!(socket.conn.outbox.take().is_empty(), "held for a moment");
        tokio::time::sleep(COALESCE * 4).await;
        hub.settle();
        let mut got: Vec<String> = socket
            .conn
            .outbox
            .take()
            .into_iter()
            .map(|o| match o {
                Outgoing::Wire(f) => String::from_utf8(f[2..].to_vec()).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                "{\"type\":\"product_update\",\"name\":\"c\"}",
                "{\"type\":\"product_update\",\"name\":\"x\"}"
            ]
        );
    }
}
