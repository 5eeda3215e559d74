//! Per-shard request latency histograms and counters. Each shard records into its own;
//! they are merged on demand (never shared across cores while recording).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use hdrhistogram::Histogram;

/// Highest latency a histogram tracks before saturating: 60 s in µs.
const LATENCY_US_MAX: u64 = 60_000_000;

#[derive(Default)]
pub struct ShardMetrics {
    /// API key → request latency in µs (receive complete → response queued).
    pub request_latency_us: RefCell<HashMap<i16, Histogram<u64>>>,
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
    /// Record bytes copied in user space (the zero-copy goal makes this small).
    pub record_bytes_copied: Cell<u64>,
    pub connections: Cell<u64>,
    /// Record bytes served by Fetch (the denominator of the copy ratio).
    pub fetch_record_bytes: Cell<u64>,
}

impl ShardMetrics {
    pub fn record_latency(&self, api_key: i16, micros: u64) {
        let mut map = self.request_latency_us.borrow_mut();
        let h = map.entry(api_key).or_insert_with(|| {
            Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
                .expect("static histogram bounds are valid")
        });
        h.saturating_record(micros.max(1));
    }

    pub fn add(cell: &Cell<u64>, n: u64) {
        cell.set(cell.get().wrapping_add(n));
    }
}
