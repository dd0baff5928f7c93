//! Latency histograms and counters that survive a trip through JSON, so the
//! reports of several processes (`shard`) can be merged exactly.

use anyhow::{Context, anyhow};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// The largest value a histogram keeps exactly: one hour, in microseconds.
const HIGHEST_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds (3 significant figures). It
/// serializes as its percentiles plus the whole histogram in HdrHistogram's
/// V2 encoding (base64), which is what merging reads back.
#[derive(Clone, Debug)]
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist(Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("static bounds are valid"))
    }
}

impl Hist {
    pub fn new() -> Hist {
        Hist::default()
    }

    pub fn record(&mut self, d: Duration) {
        self.record_us(d.as_micros().min(u64::MAX as u128) as u64);
    }

    /// Values below 1 µs count as 1 µs; above an hour as an hour.
    pub fn record_us(&mut self, us: u64) {
        self.0.saturating_record(us.max(1));
    }

    pub fn merge(&mut self, other: &Hist) {
        // Same bounds on both sides, so this cannot fail.
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The value at `q` (0–1) in milliseconds; 0 when empty.
    pub fn ms(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.max() as f64 / 1000.0
    }

    pub fn mean_ms(&self) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.mean() / 1000.0
    }

    fn encode(&self) -> String {
        let mut buf = Vec::new();
        // Writing into a Vec does not fail.
        let _ = V2Serializer::new().serialize(&self.0, &mut buf);
        STANDARD.encode(buf)
    }

    fn decode(text: &str) -> anyhow::Result<Hist> {
        let bytes = STANDARD.decode(text).context("histogram base64")?;
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| anyhow!("histogram V2 encoding: {e:?}"))?;
        let mut out = Hist::new();
        out.0
            .add(&h)
            .map_err(|e| anyhow!("histogram bounds: {e:?}"))?;
        Ok(out)
    }
}

/// The JSON form: readable percentiles, and `hdr` for merging.
#[derive(Serialize, Deserialize)]
struct HistWire {
    count: u64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    mean_ms: f64,
    hdr: String,
}

impl Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        HistWire {
            count: self.count(),
            p50_ms: round3(self.ms(0.5)),
            p90_ms: round3(self.ms(0.9)),
            p99_ms: round3(self.ms(0.99)),
            max_ms: round3(self.max_ms()),
            mean_ms: round3(self.mean_ms()),
            hdr: self.encode(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = HistWire::deserialize(d)?;
        Hist::decode(&wire.hdr).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Hist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count() == 0 {
            return f.write_str("no samples");
        }
        write!(
            f,
            "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n={})",
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.max_ms(),
            self.count()
        )
    }
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Counts by kind (result codes, error kinds, close codes).
pub type Counts = BTreeMap<String, u64>;

pub fn bump(counts: &mut Counts, key: impl Into<String>) {
    *counts.entry(key.into()).or_default() += 1;
}

pub fn add_counts(into: &mut Counts, from: &Counts) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// `a=1, b=2`, or `none`.
pub fn show_counts(counts: &Counts) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `x / total` as a fraction, 0 when the total is 0.
pub fn share(x: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        x as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_survives_json_and_merges() {
        let mut a = Hist::new();
        for us in 1..=1000u64 {
            a.record_us(us * 10);
        }
        let text = serde_json::to_string(&a).unwrap();
        let back: Hist = serde_json::from_str(&text).unwrap();
        assert_eq!(back.count(), 1000);
        assert!((back.ms(0.5) - a.ms(0.5)).abs() < 1e-9);
        let mut m = Hist::new();
        m.merge(&back);
        m.merge(&a);
        assert_eq!(m.count(), 2000);
        assert!((m.max_ms() - 10.0).abs() < 0.02);
    }
}
