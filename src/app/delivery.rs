//! Where committed effects go: this instance's sockets (the hub), then the
//! other instances (the fan-out, when Redis is configured). The runner
//! calls `deliver` after every commit and nowhere else.

use std::sync::Arc;
use std::time::Instant;

use super::fanout::Fanout;
use crate::domain::Effects;
use crate::hub::Hub;
use crate::metrics::Metrics;

pub struct Delivery {
    hub: Arc<Hub>,
    fanout: Option<Arc<Fanout>>,
    metrics: Arc<Metrics>,
}

impl Delivery {
    pub fn new(hub: Arc<Hub>, fanout: Option<Arc<Fanout>>, metrics: Arc<Metrics>) -> Delivery {
        Delivery {
            hub,
            fanout,
            metrics,
        }
    }

    pub fn deliver(&self, effects: Effects) {
        if let Some(f) = &self.fanout {
            f.publish(&effects);
        }
        if !effects.events.is_empty() {
            self.hub.deliver(&effects.events);
        }
        for b in &effects.broadcasts {
            let started = Instant::now();
            self.hub.broadcast(b);
            self.metrics
                .broadcast_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        for c in &effects.closes {
            self.hub.close_sockets(c.user_id, c.session, c.code);
        }
    }
}
