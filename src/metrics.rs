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
    /// Times this shard could not run its reactor for `stall.threshold.ms` or longer.
    pub stalls: Cell<u64>,
    /// Record bytes served by Fetch (the denominator of the copy ratio).
    pub fetch_record_bytes: Cell<u64>,
    /// Records appended by Produce / served by Fetch (from batch headers).
    pub records_in: Cell<u64>,
    pub records_out: Cell<u64>,
    /// (api key, error code) → partitions answered with that error. A handful of
    /// entries; a new pair allocates once, an error path is never hot.
    pub partition_errors: RefCell<Vec<(i16, i16, u64)>>,
    /// `__consumer_offsets` batches the group load could not decode and skipped.
    pub offsets_batches_quarantined: Cell<u64>,
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

    /// Counts one partition answered with `code` (NONE is not counted).
    pub fn partition_error(&self, api_key: i16, code: i16) {
        if code == 0 {
            return;
        }
        let mut errors = self.partition_errors.borrow_mut();
        match errors
            .iter_mut()
            .find(|(a, c, _)| *a == api_key && *c == code)
        {
            Some((_, _, n)) => *n += 1,
            None => errors.push((api_key, code, 1)),
        }
    }

    pub fn add(cell: &Cell<u64>, n: u64) {
        cell.set(cell.get().wrapping_add(n));
    }
}

/// The APIs whose requests are timed stage by stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StagedApi {
    Produce = 0,
    Fetch = 1,
}

/// Where a produce or fetch request spends its time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Frame read → its handler task first runs (the shard was busy with others).
    QueueWait = 0,
    /// Sent over the shard mesh → running on the owning shard (remote owners only).
    Hop = 1,
    /// Produce: validate, assign offsets and copy one batch into the write buffer.
    Append = 2,
    /// Produce: waiting for the write + fdatasync that covers the batch (acks=all), or
    /// for a write round under backpressure.
    Flush = 3,
    /// Fetch: reading one partition (cache or disk).
    Read = 4,
    /// Fetch: parked waiting for data (max.wait.ms / min.bytes).
    LongPoll = 5,
    /// Writing the response to the socket.
    ResponseWrite = 6,
}

impl StagedApi {
    pub fn name(self) -> &'static str {
        match self {
            StagedApi::Produce => "Produce",
            StagedApi::Fetch => "Fetch",
        }
    }

    /// The stages that apply to this API, in request order.
    pub fn stages(self) -> &'static [Stage] {
        match self {
            StagedApi::Produce => &[
                Stage::QueueWait,
                Stage::Hop,
                Stage::Append,
                Stage::Flush,
                Stage::ResponseWrite,
            ],
            StagedApi::Fetch => &[
                Stage::QueueWait,
                Stage::Hop,
                Stage::Read,
                Stage::LongPoll,
                Stage::ResponseWrite,
            ],
        }
    }

    pub fn from_api_key(key: i16) -> Option<StagedApi> {
        match key {
            0 => Some(StagedApi::Produce),
            1 => Some(StagedApi::Fetch),
            _ => None,
        }
    }
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::QueueWait => "queue_wait",
            Stage::Hop => "cross_shard_hop",
            Stage::Append => "append",
            Stage::Flush => "flush",
            Stage::Read => "read",
            Stage::LongPoll => "long_poll",
            Stage::ResponseWrite => "response_write",
        }
    }
}

const STAGED_APIS: usize = 2;
const STAGES: usize = 7;

thread_local! {
    /// This shard's stage histograms (µs). A thread-local because the stages are timed
    /// in layers that do not hold the `Shard` (partition, mesh); each shard is one
    /// thread, so it is still per shard and never shared. Allocated once, on first use;
    /// recording never allocates.
    static STAGE_US: RefCell<Vec<Histogram<u64>>> = RefCell::new(
        (0..STAGED_APIS * STAGES)
            .map(|_| {
                // 1 µs .. 60 s at 1%: ~20 KiB each, 14 per shard.
                Histogram::new_with_bounds(1, LATENCY_US_MAX, 2)
                    .expect("static histogram bounds are valid")
            })
            .collect(),
    );
}

/// Records `d` for `api`'s `stage` on this shard.
pub fn record_stage(api: StagedApi, stage: Stage, d: std::time::Duration) {
    let us = (d.as_micros() as u64).max(1);
    STAGE_US.with(|h| {
        if let Ok(mut h) = h.try_borrow_mut() {
            h[api as usize * STAGES + stage as usize].saturating_record(us);
        }
    });
}

/// Copies of this shard's stage histograms: (api, stage, histogram in µs).
pub fn stage_snapshot() -> Vec<(StagedApi, Stage, Histogram<u64>)> {
    STAGE_US.with(|h| {
        let h = h.borrow();
        [StagedApi::Produce, StagedApi::Fetch]
            .iter()
            .flat_map(|api| {
                api.stages()
                    .iter()
                    .map(|s| (*api, *s, h[*api as usize * STAGES + *s as usize].clone()))
            })
            .collect()
    })
}

/// utime + stime of a process (`None`: this one) from `/proc/PID/stat`, in seconds.
pub fn process_cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces) start at state (field 3).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 / hz as f64)
}
