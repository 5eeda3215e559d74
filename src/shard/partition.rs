//! A partition as its owning shard holds it: the log, the idempotent-producer state and
//! the waiters of long-polling fetches. Lives on exactly one shard; never `Send`.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use futures::channel::oneshot;

use crate::net::error_code as ec;
use crate::net::metrics::{self, Stage, StagedApi};
use crate::segment::{self, Durability, LogConfig, PartitionLog, TimestampType, ValidBatch};

/// Batches per producer remembered for duplicate detection (Kafka keeps 5: the most a
/// client may have in flight with idempotence on).
const PRODUCER_BATCHES_REMEMBERED: usize = 5;
/// How much of a log's tail a restart scans to rebuild producer state.
const PRODUCER_STATE_SCAN_BYTES: usize = 16 << 20;
const PRODUCER_STATE_READ_BYTES: usize = 1 << 20;

#[derive(Default)]
struct ProducerState {
    epoch: i16,
    /// (first sequence, last sequence, base offset) of the latest batches.
    recent: VecDeque<(i32, i32, i64)>,
}

pub struct Partition {
    pub log: Rc<PartitionLog>,
    producers: RefCell<HashMap<i64, ProducerState>>,
    waiters: RefCell<Vec<oneshot::Sender<()>>>,
}

/// Result of appending one partition's records.
#[derive(Debug, Clone)]
pub struct ProduceOutcome {
    pub error_code: i16,
    pub base_offset: i64,
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
    pub error_message: Option<String>,
}

impl ProduceOutcome {
    pub fn error(code: i16, message: impl Into<String>) -> Self {
        ProduceOutcome {
            error_code: code,
            base_offset: -1,
            log_append_time_ms: -1,
            log_start_offset: -1,
            error_message: Some(message.into()),
        }
    }
}

enum SequenceCheck {
    Append,
    Duplicate(i64),
    Reject(i16, String),
}

impl Partition {
    pub fn new(log: Rc<PartitionLog>) -> Self {
        Partition {
            log,
            producers: RefCell::default(),
            waiters: RefCell::default(),
        }
    }

    /// Appends every batch of a produce request's `records` for this partition. Batches
    /// are checked before anything is written: one bad batch refuses the whole set.
    pub async fn produce(&self, records: Bytes, durability: Durability) -> ProduceOutcome {
        let batches = match segment::batch::split_batches(&records) {
            Ok(b) if !b.is_empty() => b,
            Ok(_) => return ProduceOutcome::error(ec::CORRUPT_MESSAGE, "empty records"),
            Err(e) => return ProduceOutcome::error(e.kafka_error_code(), e.to_string()),
        };
        let mut valid = Vec::with_capacity(batches.len());
        for b in batches {
            match ValidBatch::new(b) {
                Ok(v) => valid.push(v),
                Err(e) => return ProduceOutcome::error(e.kafka_error_code(), e.to_string()),
            }
        }
        let mut first: Option<ProduceOutcome> = None;
        let mut appended = false;
        // End of the last batch answered as a duplicate of one already in the log.
        let mut duplicate_end: Option<i64> = None;
        let count = valid.len();
        for (i, batch) in valid.into_iter().enumerate() {
            let h = *batch.header();
            // Copies of many batches must not hold the core; yield before, never inside,
            // the read-log-end .. append window below.
            glommio::yield_if_needed().await;
            // Nothing runs between reading the log end and the append's first poll (which
            // assigns the offset), so this is the offset the batch will get.
            let base_if_appended = self.log.log_end_offset();
            match self.check_sequence(&h, base_if_appended) {
                SequenceCheck::Append => {}
                SequenceCheck::Duplicate(offset) => {
                    duplicate_end = Some(offset + i64::from(h.last_offset_delta) + 1);
                    first.get_or_insert(ProduceOutcome {
                        error_code: ec::NONE,
                        base_offset: offset,
                        log_append_time_ms: -1,
                        log_start_offset: self.log.log_start_offset(),
                        error_message: None,
                    });
                    continue;
                }
                SequenceCheck::Reject(code, msg) => {
                    if first.is_none() {
                        return ProduceOutcome::error(code, msg);
                    }
                    break;
                }
            }
            // Only the last batch waits for the durability asked for: the log is ordered, so
            // its flush covers the earlier ones (and concurrent requests share it).
            let d = if i + 1 == count {
                durability
            } else {
                Durability::Written
            };
            let append_started = Instant::now();
            match self.log.append_valid(batch, d).await {
                Ok(info) => {
                    let took = append_started.elapsed();
                    let flush = info.flush_wait.unwrap_or_default();
                    metrics::record_stage(
                        StagedApi::Produce,
                        Stage::Append,
                        took.saturating_sub(flush),
                    );
                    if let Some(flush) = info.flush_wait {
                        metrics::record_stage(StagedApi::Produce, Stage::Flush, flush);
                    }
                    appended = true;
                    first.get_or_insert(ProduceOutcome {
                        error_code: ec::NONE,
                        base_offset: info.base_offset,
                        log_append_time_ms: info.log_append_time_ms,
                        log_start_offset: info.log_start_offset,
                        error_message: None,
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "append failed");
                    if self.log.log_end_offset() == base_if_appended {
                        // Refused before an offset was assigned: forget the sequence,
                        // or the producer's retry would be answered as a duplicate of
                        // a batch that is not in the log.
                        self.forget_sequence(&h, base_if_appended);
                    }
                    if appended {
                        self.wake_waiters();
                    }
                    return ProduceOutcome::error(e.kafka_error_code(), e.to_string());
                }
            }
        }
        if appended {
            self.wake_waiters();
        }
        if let (Some(end), Durability::Durable) = (duplicate_end, durability) {
            // A retried batch is acknowledged with the same promise as the first try:
            // the first may still be waiting for its flush, or its flush may have
            // failed (a full disk) while the batch stayed queued in memory.
            if let Err(e) = self.log.sync_to(end).await {
                return ProduceOutcome::error(e.kafka_error_code(), e.to_string());
            }
        }
        first.unwrap_or_else(|| ProduceOutcome::error(ec::UNKNOWN_SERVER_ERROR, "no batch"))
    }

    fn check_sequence(&self, h: &segment::BatchHeader, base_offset: i64) -> SequenceCheck {
        if h.producer_id < 0 {
            return SequenceCheck::Append;
        }
        let first_seq = h.base_sequence;
        let last_seq = first_seq.wrapping_add(h.last_offset_delta);
        let mut producers = self.producers.borrow_mut();
        let state = producers.entry(h.producer_id).or_default();
        if h.producer_epoch < state.epoch {
            return SequenceCheck::Reject(
                ec::INVALID_PRODUCER_EPOCH,
                format!(
                    "producer epoch {} is older than {}",
                    h.producer_epoch, state.epoch
                ),
            );
        }
        if h.producer_epoch > state.epoch {
            state.epoch = h.producer_epoch;
            state.recent.clear();
        }
        if let Some(&(_, _, offset)) = state
            .recent
            .iter()
            .find(|(f, l, _)| *f == first_seq && *l == last_seq)
        {
            return SequenceCheck::Duplicate(offset);
        }
        // A producer this partition has no state for (new, or state lost with a restart:
        // it is not rebuilt from the log yet) starts wherever it says.
        if let Some(&(_, prev_last, _)) = state.recent.back() {
            let expected = if prev_last == i32::MAX {
                0
            } else {
                prev_last + 1
            };
            if first_seq != expected {
                return SequenceCheck::Reject(
                    ec::OUT_OF_ORDER_SEQUENCE_NUMBER,
                    format!("sequence {first_seq}, expected {expected}"),
                );
            }
        }
        state.recent.push_back((first_seq, last_seq, base_offset));
        if state.recent.len() > PRODUCER_BATCHES_REMEMBERED {
            state.recent.pop_front();
        }
        SequenceCheck::Append
    }

    /// Undoes `check_sequence`'s record of a batch that was then not appended.
    fn forget_sequence(&self, h: &segment::BatchHeader, base_offset: i64) {
        if h.producer_id < 0 {
            return;
        }
        let last_seq = h.base_sequence.wrapping_add(h.last_offset_delta);
        if let Some(state) = self.producers.borrow_mut().get_mut(&h.producer_id) {
            if state.recent.back() == Some(&(h.base_sequence, last_seq, base_offset)) {
                state.recent.pop_back();
            }
        }
    }

    /// Rebuilds idempotent-producer state from the log's tail after a restart, so a
    /// producer retrying a batch the broker wrote just before it died gets the original
    /// offset back instead of a second copy. The scan covers the newest batches (about
    /// `PRODUCER_STATE_SCAN_BYTES`), which hold every batch a live producer can retry.
    pub async fn rebuild_producer_state(&self) -> Result<usize, segment::StorageError> {
        let (start, end) = (self.log.log_start_offset(), self.log.log_end_offset());
        let mut window: i64 = 256;
        let headers = loop {
            let from = start.max(end - window);
            let mut headers = Vec::new();
            let mut scanned = 0usize;
            let mut offset = from;
            while offset < end {
                let read = self.log.read(offset, PRODUCER_STATE_READ_BYTES).await?;
                // Startup only: joining the chunks (one copy) keeps the parsing simple.
                let joined: Bytes = read.chunks.concat().into();
                if joined.is_empty() {
                    break;
                }
                scanned += joined.len();
                for b in segment::batch::split_batches(&joined)? {
                    let h = segment::BatchHeader::parse(&b)?;
                    offset = h.last_offset() + 1;
                    headers.push(h);
                }
            }
            if from == start || scanned >= PRODUCER_STATE_SCAN_BYTES {
                break headers;
            }
            window = window.saturating_mul(4);
        };
        let mut producers = self.producers.borrow_mut();
        for h in headers.iter().filter(|h| h.producer_id >= 0) {
            let state = producers.entry(h.producer_id).or_default();
            if h.producer_epoch > state.epoch {
                state.epoch = h.producer_epoch;
                state.recent.clear();
            }
            let last_seq = h.base_sequence.wrapping_add(h.last_offset_delta);
            state
                .recent
                .push_back((h.base_sequence, last_seq, h.base_offset));
            if state.recent.len() > PRODUCER_BATCHES_REMEMBERED {
                state.recent.pop_front();
            }
        }
        Ok(producers.len())
    }

    fn wake_waiters(&self) {
        for w in self.waiters.borrow_mut().drain(..) {
            let _ = w.send(());
        }
    }

    /// Resolves when the log end passes `offset`, or after `wait_ms`.
    pub async fn wait_for_data(&self, offset: i64, wait_ms: u64) {
        if self.log.log_end_offset() > offset || wait_ms == 0 {
            return;
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().push(tx);
        let timer = glommio::timer::sleep(std::time::Duration::from_millis(wait_ms));
        futures::pin_mut!(timer);
        let _ = futures::future::select(rx, timer).await;
    }
}

/// Topic configs with Kafka's names → the log's settings; unknown keys are kept in the
/// metadata but ignored here.
pub fn log_config_for(configs: &BTreeMap<String, String>, message_max_bytes: u32) -> LogConfig {
    let mut c = LogConfig {
        max_message_bytes: message_max_bytes,
        ..LogConfig::default()
    };
    for (k, v) in configs {
        let parsed = v.parse::<i64>().ok();
        match (k.as_str(), parsed) {
            ("segment.bytes", Some(n)) if n > 0 => c.segment_bytes = n as u64,
            ("segment.ms", Some(n)) if n > 0 => c.segment_ms = n,
            ("index.interval.bytes", Some(n)) if n > 0 => c.index_interval_bytes = n as u32,
            ("retention.bytes", Some(n)) => c.retention_bytes = n,
            ("retention.ms", Some(n)) => c.retention_ms = n,
            ("flush.messages", Some(n)) if n > 0 => c.flush_messages = n,
            ("flush.ms", Some(n)) if n >= 0 => c.flush_ms = n,
            ("max.message.bytes", Some(n)) if n > 0 => c.max_message_bytes = n as u32,
            ("delete.retention.ms", Some(n)) if n >= 0 => c.delete_retention_ms = n,
            ("min.cleanable.dirty.ratio", _) => {
                if let Ok(r) = v.parse::<f64>() {
                    c.min_cleanable_dirty_ratio = r.clamp(0.0, 1.0);
                }
            }
            ("cleanup.policy", _) => {
                c.cleanup_delete = v.split(',').any(|p| p.trim() == "delete");
                c.cleanup_compact = v.split(',').any(|p| p.trim() == "compact");
            }
            ("message.timestamp.type", _) => {
                c.message_timestamp_type = if v == "LogAppendTime" {
                    TimestampType::LogAppendTime
                } else {
                    TimestampType::CreateTime
                }
            }
            _ => {}
        }
    }
    c
}

/// Topic config keys AlterConfigs/CreateTopics accept, with a validity check each.
pub fn validate_topic_config(key: &str, value: &str) -> Result<(), String> {
    let int = || {
        value
            .parse::<i64>()
            .map_err(|_| format!("{key}={value}: not an integer"))
    };
    match key {
        "segment.bytes"
        | "segment.ms"
        | "index.interval.bytes"
        | "flush.messages"
        | "max.message.bytes" => {
            if int()? <= 0 {
                return Err(format!("{key}={value}: must be positive"));
            }
        }
        "retention.bytes"
        | "retention.ms"
        | "flush.ms"
        | "delete.retention.ms"
        | "min.insync.replicas"
        | "min.compaction.lag.ms" => {
            if int()? < -1 {
                return Err(format!("{key}={value}: must be -1 or more"));
            }
        }
        "message.timestamp.type" => {
            if value != "CreateTime" && value != "LogAppendTime" {
                return Err(format!(
                    "{key}={value}: must be CreateTime or LogAppendTime"
                ));
            }
        }
        "cleanup.policy" => {
            for p in value.split(',') {
                if p != "delete" && p != "compact" {
                    return Err(format!("{key}={value}: must be delete and/or compact"));
                }
            }
        }
        "min.cleanable.dirty.ratio" => match value.parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => {}
            _ => return Err(format!("{key}={value}: must be a number in [0, 1]")),
        },
        "compression.type" => {}
        _ => return Err(format!("unknown topic config {key}")),
    }
    Ok(())
}
