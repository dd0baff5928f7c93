//! Where committed effects go: this instance's sockets (the hub). The
//! runner calls `deliver` after every commit and nowhere else.

use std::sync::Arc;
use std::time::Instant;

use crate::domain::Effects;
use crate::hub::Hub;
use crate::metrics::Metrics;

pub struct Delivery {
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
}

impl Delivery {
    pub fn new(hub: Arc<Hub>, metrics: Arc<Metrics>) -> Delivery {
        Delivery { hub, metrics }
    }

    pub fn deliver(&self, effects: Effects) {
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
