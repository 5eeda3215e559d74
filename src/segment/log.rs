//! `PartitionLog`: the log of one partition: its public types and configuration, its
//! state, and opening (with recovery), flushing, closing and deleting it. The work on
//! that state is split by job into sibling modules, each an `impl PartitionLog` block:
//! `append` (offset assignment, write buffers), `flush` (group commit, writes,
//! fdatasync), `read` (batch cache, DMA reads, lookups by time), `leader_epoch`,
//! `truncate`, `retention`, `cleaner` (compaction of sealed segments) and
//! `producer_snapshot`. `segment` is one segment and its indexes; `recovery` finds a
//! segment's logical end and repairs a torn tail.
//!
//! Runs on the shard that owns the partition; `!Send`, shared as `Rc`. All methods take
//! `&self`; state is in `Cell`/`RefCell`s that are never borrowed across an `.await`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};

use bytes::Bytes;
use futures::channel::oneshot;
use glommio::io::{DmaFile, OpenOptions};

use super::append::{Appender, WriteBuf};
use super::cleaner::{CLEANED_SUFFIX, CLEANER_CHECKPOINT};
use super::epoch::LeaderEpochCache;
use super::error::StorageError;
use super::flush::WriteTracker;
use super::read::BatchCache;
use super::recovery::{
    read_tail_block, recover_segment, repair_tail, tail_is_clean, BATCH_BYTES_MAX,
};
use super::segment::{align_down, align_up, sync_dir, sync_dir_async, Segment, BLOCK_BYTES};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Resolves once the batch is visible to `read` (in memory; not yet on disk).
    Written,
    /// Resolves once the batch is written and fdatasync'd.
    Durable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    /// segment.bytes, default 1 GiB. Capped at `SEGMENT_BYTES_MAX` (positions are u32).
    pub segment_bytes: u64,
    /// segment.ms, default 7 days.
    pub segment_ms: i64,
    /// index.interval.bytes, default 4096.
    pub index_interval_bytes: u32,
    /// retention.bytes, -1 = unlimited.
    pub retention_bytes: i64,
    /// retention.ms, default 7 days, -1 = unlimited.
    pub retention_ms: i64,
    /// flush.messages: fdatasync after this many unsynced messages; i64::MAX = never.
    pub flush_messages: i64,
    /// flush.ms: fdatasync unsynced data this long after it was appended; i64::MAX = never.
    pub flush_ms: i64,
    pub message_timestamp_type: TimestampType,
    /// max.message.bytes (one batch), default 1 MiB + 12.
    pub max_message_bytes: u32,
    /// cleanup.policy contains `delete`: retention by time and size applies.
    pub cleanup_delete: bool,
    /// cleanup.policy contains `compact`: `compact` keeps the last record per key.
    pub cleanup_compact: bool,
    /// delete.retention.ms: how long tombstones outlive the records they delete.
    pub delete_retention_ms: i64,
    /// min.cleanable.dirty.ratio: compact once uncompacted bytes are this share of the
    /// sealed segments.
    pub min_cleanable_dirty_ratio: f64,
    /// min.compaction.lag.ms: a segment is compacted only once its newest record is at
    /// least this old, so consumers get a window in which every update is visible.
    pub min_compaction_lag_ms: i64,
    /// max.compaction.lag.ms (KIP-354): a dirty segment whose first batch is older than
    /// this is compacted even when the dirty ratio is below `min.cleanable.dirty.ratio`,
    /// and the active segment of a compacted log rolls after this long (it is never
    /// compacted itself). Default i64::MAX: the ratio alone decides.
    pub max_compaction_lag_ms: i64,
    /// Bound of the key map one compaction pass builds (Kafka's dedupe buffer): when the
    /// dirty part has more keys, a pass cleans up to where the map filled up and the
    /// next pass continues from there. The broker sets the shard's share of
    /// `log.cleaner.dedupe.buffer.size`.
    pub dedupe_buffer_bytes: usize,
}

/// Default `dedupe_buffer_bytes` of a log opened outside a broker: one shard's share of
/// Kafka's 128 MiB default on four shards.
pub const DEDUPE_BUFFER_BYTES_DEFAULT: usize = 32 << 20;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            retention_bytes: -1,
            retention_ms: 7 * 24 * 3600 * 1000,
            flush_messages: i64::MAX,
            flush_ms: i64::MAX,
            message_timestamp_type: TimestampType::CreateTime,
            max_message_bytes: (1 << 20) + 12,
            cleanup_delete: true,
            cleanup_compact: false,
            delete_retention_ms: 24 * 3600 * 1000,
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            dedupe_buffer_bytes: DEDUPE_BUFFER_BYTES_DEFAULT,
        }
    }
}

impl LogConfig {
    /// How old the active segment may get before it rolls: `segment.ms`, or on a
    /// compacted log `max.compaction.lag.ms` when that is shorter, so its records become
    /// compactable in time (Kafka's `maxSegmentMs`).
    pub fn roll_ms(&self) -> i64 {
        if self.cleanup_compact && self.max_compaction_lag_ms > 0 {
            self.segment_ms.min(self.max_compaction_lag_ms)
        } else {
            self.segment_ms
        }
    }
}

/// Index positions are u32; keep one segment below 2 GiB like Kafka.
pub const SEGMENT_BYTES_MAX: u64 = i32::MAX as u64;

pub(super) const LOG_START_CHECKPOINT: &str = "log-start-offset";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    /// -1 unless LogAppendTime.
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
    /// How long `append_valid` waited for a flush (the durability asked for, or
    /// backpressure); `None` when it did not wait. The rest of its time was the append.
    pub flush_wait: Option<std::time::Duration>,
}

/// What `append_replicated` stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicatedAppend {
    /// Base offset of the first batch: the log end before the call.
    pub first_offset: i64,
    /// The log end after the call (the next offset to fetch); all below it is durable.
    pub log_end_offset: i64,
    pub batches: usize,
    /// Records counted from the batch headers.
    pub records: i64,
}

#[derive(Clone, Debug)]
pub struct ReadResult {
    /// Whole batches, in order; concatenated they are the fetch response's records.
    pub chunks: Vec<Bytes>,
    pub log_start_offset: i64,
    /// Next offset to be assigned.
    pub log_end_offset: i64,
}

/// Flush-stage measurements of one log (nanoseconds), merged by whoever reports them.
#[derive(Clone, Debug)]
pub struct FlushStats {
    /// One flusher round: writes + fdatasync if any.
    pub round_ns: hdrhistogram::Histogram<u64>,
    /// fdatasync alone.
    pub fdatasync_ns: hdrhistogram::Histogram<u64>,
    /// Bytes handed to O_DIRECT writes (including rewritten tail blocks and padding).
    pub bytes_written: u64,
    pub writes: u64,
}

impl Default for FlushStats {
    fn default() -> Self {
        // 1 µs .. 60 s at two significant digits (1%): about 20 KiB per histogram. Three
        // digits cost ~220 KiB each, which with two per partition made a 2000-partition
        // topic take a gigabyte.
        let h = || {
            hdrhistogram::Histogram::new_with_bounds(1_000, 60_000_000_000, 2)
                .expect("static histogram bounds")
        };
        FlushStats {
            round_ns: h(),
            fdatasync_ns: h(),
            bytes_written: 0,
            writes: 0,
        }
    }
}

pub struct PartitionLog {
    pub(super) dir: PathBuf,
    /// Created by the first flush round, so idle partitions carry no histograms.
    pub(super) stats: RefCell<Option<FlushStats>>,
    pub(super) me: Weak<PartitionLog>,
    pub(super) config: RefCell<LogConfig>,
    /// Oldest first; the last one is active. Never empty.
    pub(super) segments: RefCell<VecDeque<Rc<Segment>>>,
    pub(super) log_start: Cell<i64>,
    pub(super) log_end: Cell<i64>,
    /// All offsets below are written to disk / written and fdatasync'd.
    pub(super) written_offset: Cell<i64>,
    pub(super) durable_offset: Cell<i64>,
    pub(super) appender: RefCell<Appender>,
    pub(super) tracker: RefCell<WriteTracker>,
    pub(super) cache: RefCell<BatchCache>,
    /// Segments written since the last fdatasync.
    pub(super) unsynced: RefCell<Vec<Rc<Segment>>>,
    pub(super) unsynced_messages: Cell<i64>,
    pub(super) flushing: Cell<bool>,
    /// Woken when a flush round ends; a round that ran out of space sends its error.
    pub(super) flush_waiters: RefCell<Vec<oneshot::Sender<Option<StorageError>>>>,
    pub(super) background_write: Cell<bool>,
    pub(super) flush_timer: Cell<bool>,
    /// Sticky: after a failed write or fdatasync nothing more is accepted.
    pub(super) failed: RefCell<Option<StorageError>>,
    /// Not sticky: the last flush round could not get disk space (ENOSPC / EDQUOT from
    /// creating or preallocating a file) and put its writes back in the queue. New
    /// appends are refused until a retry round gets the space.
    pub(super) no_space: RefCell<Option<StorageError>>,
    pub(super) no_space_retrying: Cell<bool>,
    pub(super) closed: Cell<bool>,
    /// Record bytes copied out of DMA read buffers (cold reads), for the copy metric.
    pub(super) read_copied_bytes: Cell<u64>,
    /// Offsets below are compacted: only newer segments are dirty.
    pub(super) clean_end: Cell<i64>,
    /// A compaction pass is running (one at a time per log).
    pub(super) compacting: Cell<bool>,
    /// A truncation is running: appends and maintenance are refused (`Truncating`).
    pub(super) truncating: Cell<bool>,
    /// Truncations started so far: a producer snapshot taken before one must not land.
    pub(super) truncations: Cell<u64>,
    /// Stamped into produced batches (`set_leader_epoch`); 0 on a single node.
    pub(super) leader_epoch: Cell<i32>,
    /// Where each leader epoch starts (see `epoch`).
    pub(super) epochs: RefCell<LeaderEpochCache>,
    /// `epochs`' latest epoch, -1 if none: the per-batch check is one compare.
    pub(super) epoch_latest: Cell<i32>,
    /// The epoch cache changed since its checkpoint was last written.
    pub(super) epoch_dirty: Cell<bool>,
    /// A task is writing the checkpoint (`assign_epoch`).
    pub(super) epoch_persisting: Cell<bool>,
    /// One checkpoint write at a time, each of the cache as it is then: the last
    /// rename always carries the newest state.
    pub(super) epoch_write: glommio::sync::Semaphore,
}

/// What one compaction pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactStats {
    pub segments_rewritten: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub keys: usize,
}

pub(super) use crate::time::now_ms;

fn sanitize(mut config: LogConfig) -> LogConfig {
    config.segment_bytes = config.segment_bytes.clamp(BLOCK_BYTES, SEGMENT_BYTES_MAX);
    config.max_message_bytes = config.max_message_bytes.min(BATCH_BYTES_MAX as u32);
    config
}

thread_local! {
    /// Devices whose glommio iopoll probe ran on this executor thread.
    static PROBED_DEVICES: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// glommio probes iopoll support with a read of the first DMA file opened on a device;
/// an empty file makes the probe "succeed" and every later DMA read fail with
/// EOPNOTSUPP. Open a non-empty scratch file first, once per device per thread.
async fn probe_device(dir: &Path) -> Result<(), StorageError> {
    let dev = std::fs::metadata(dir)
        .map_err(|e| StorageError::io("stat", dir, e))?
        .dev();
    if PROBED_DEVICES.with(|p| p.borrow().contains(&dev)) {
        return Ok(());
    }
    let path = dir.join(".dma-probe");
    std::fs::write(&path, [0u8; BLOCK_BYTES as usize])
        .map_err(|e| StorageError::io("write", &path, e))?;
    let file = DmaFile::open(&path)
        .await
        .map_err(|e| StorageError::io("open", &path, e))?;
    let _ = file.close().await;
    let _ = std::fs::remove_file(&path);
    PROBED_DEVICES.with(|p| p.borrow_mut().push(dev));
    Ok(())
}

impl PartitionLog {
    /// Opens (creating if absent) the log in `dir`, running recovery: every segment's
    /// logical end is found by scanning from its last index entry; a torn or corrupt
    /// tail is cut off (the file is truncated to the block after the last good batch
    /// and that block's garbage zeroed), later segments that no longer follow on are
    /// deleted, missing or damaged indexes are rebuilt.
    pub async fn open(dir: PathBuf, config: LogConfig) -> Result<Rc<PartitionLog>, StorageError> {
        let config = sanitize(config);
        std::fs::create_dir_all(&dir).map_err(|e| StorageError::io("create dir", &dir, e))?;
        // glommio cannot open relative directory paths.
        let dir = std::path::absolute(&dir).map_err(|e| StorageError::io("open dir", &dir, e))?;
        probe_device(&dir).await?;
        super::segment::remove_stale_tmp(&dir);
        let checkpoint = read_checkpoint(&dir);
        let clean_end = read_offset_file(&dir, CLEANER_CHECKPOINT).unwrap_or(0);
        let mut bases = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| StorageError::io("read dir", &dir, e))? {
            let entry = entry.map_err(|e| StorageError::io("read dir", &dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(&format!(".{CLEANED_SUFFIX}")) {
                // A compaction that did not finish: the original `.log` is intact.
                let path = entry.path();
                std::fs::remove_file(&path).map_err(|e| StorageError::io("remove", &path, e))?;
                continue;
            }
            if let Some(stem) = name.strip_suffix(".log") {
                if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
                    if let Some(base) = stem.parse::<i64>().ok().filter(|b| *b < OFFSET_MAX) {
                        bases.push(base);
                    }
                }
            }
        }
        bases.sort_unstable();
        let interval = u64::from(config.index_interval_bytes);
        let now = now_ms();
        let mut segments: VecDeque<Rc<Segment>> = VecDeque::new();
        for (i, &base) in bases.iter().enumerate() {
            let seg = Rc::new(Segment::new(&dir, base, now));
            let follows = segments.back().is_none_or(|p| p.next_offset.get() == base);
            if !follows {
                // An earlier segment lost its tail: nothing after it can be trusted.
                for later in &bases[i..] {
                    Segment::new(&dir, *later, now).remove_files();
                }
                sync_dir(&dir)?;
                break;
            }
            let path = seg.path("log");
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .dma_open(&path)
                .await
                .map_err(|e| StorageError::io("open", &path, e))?;
            assert!(
                BLOCK_BYTES.is_multiple_of(file.alignment()),
                "O_DIRECT alignment above 4 KiB"
            );
            let file_size = file
                .file_size()
                .await
                .map_err(|e| StorageError::io("stat", &path, e))?;
            let end = recover_segment(&seg, &file, file_size, interval).await?;
            let damaged =
                align_up(end) < file_size || !tail_is_clean(&file, end, file_size, &path).await?;
            if damaged {
                repair_tail(&file, end, &path).await?;
            }
            // Preallocated space beyond the end is released here (the truncate in
            // `repair_tail`) and preallocated again by the first write.
            seg.written.set(end);
            seg.allocated.set(align_up(end));
            seg.trimmed.set(true);
            seg.index_dirty.set(seg.index_dirty.get() || damaged);
            if i > 0 {
                segments.back().expect("previous segment").sealed.set(true);
            }
            // segment.ms ages from open: a restart resets the clock (Kafka uses the
            // first batch's timestamp, which a client clock can put far in the past).
            *seg.file.borrow_mut() = Some(Rc::new(file));
            segments.push_back(seg);
        }
        if segments.is_empty() {
            let base = checkpoint.unwrap_or(0).max(0);
            segments.push_back(Rc::new(Segment::new(&dir, base, now)));
        }
        let active = segments.back().expect("at least one segment").clone();
        active.sealed.set(false);
        let log_end = active.next_offset.get();
        let first_base = segments.front().expect("at least one segment").base_offset;
        let log_start = checkpoint.unwrap_or(first_base).clamp(first_base, log_end);

        // The active segment's partial tail block goes into the first write buffer.
        let tail_pos = align_down(active.size.get());
        let tail_len = (active.size.get() - tail_pos) as usize;
        let mut buf = glommio::allocate_dma_buffer(BLOCK_BYTES as usize);
        if tail_len > 0 {
            let file = active
                .file
                .borrow()
                .clone()
                .expect("a non-empty segment has a file");
            read_tail_block(
                &file,
                &active,
                tail_pos,
                &mut buf.as_bytes_mut()[..tail_len],
            )
            .await?;
        }
        let cur = WriteBuf {
            seg: active.clone(),
            file_pos: tail_pos,
            buf,
            len: tail_len,
            dirty: false,
        };
        let log = Rc::new_cyclic(|me| PartitionLog {
            dir,
            stats: RefCell::new(None),
            me: me.clone(),
            config: RefCell::new(config),
            segments: RefCell::new(segments),
            log_start: Cell::new(log_start),
            log_end: Cell::new(log_end),
            written_offset: Cell::new(log_end),
            durable_offset: Cell::new(log_end),
            appender: RefCell::new(Appender {
                cur,
                queue: VecDeque::new(),
                next_capacity: BLOCK_BYTES as usize,
                split_tail: true,
            }),
            tracker: RefCell::new(WriteTracker::default()),
            cache: RefCell::new(BatchCache::default()),
            unsynced: RefCell::new(Vec::new()),
            unsynced_messages: Cell::new(0),
            flushing: Cell::new(false),
            flush_waiters: RefCell::new(Vec::new()),
            background_write: Cell::new(false),
            flush_timer: Cell::new(false),
            failed: RefCell::new(None),
            no_space: RefCell::new(None),
            no_space_retrying: Cell::new(false),
            closed: Cell::new(false),
            read_copied_bytes: Cell::new(0),
            clean_end: Cell::new(clean_end),
            compacting: Cell::new(false),
            truncating: Cell::new(false),
            truncations: Cell::new(0),
            leader_epoch: Cell::new(0),
            epochs: RefCell::new(LeaderEpochCache::default()),
            epoch_latest: Cell::new(-1),
            epoch_dirty: Cell::new(false),
            epoch_persisting: Cell::new(false),
            epoch_write: glommio::sync::Semaphore::new(1),
        });
        log.persist_sealed_indexes();
        // A crash between the checkpoint and the deletions leaves segments below the
        // log start: finish the job.
        log.delete_segments_below_start().await?;
        // Snapshots past the recovered end (taken before a crash lost the batches they
        // cover) must go before appends reach their offsets again; those below the log
        // start cover batches that are gone.
        if log.remove_producer_snapshots(|o| o > log_end || o < log_start) {
            sync_dir_async(&log.dir).await?;
        }
        log.load_epochs().await?;
        // Produce continues in the log's latest epoch until a cluster leader sets its
        // own: a single node (epoch 0) must not refuse appends to a log whose batches
        // carry a later epoch (a data dir from a cluster, or any header epoch, which the
        // CRC does not cover).
        log.leader_epoch.set(log.epoch_latest.get().max(0));
        Ok(log)
    }

    /// Record bytes copied so far out of DMA read buffers (cold reads).
    pub fn read_copied_bytes(&self) -> u64 {
        self.read_copied_bytes.get()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start.get()
    }

    /// Next offset to be assigned.
    pub fn log_end_offset(&self) -> i64 {
        self.log_end.get()
    }

    /// All offsets below this are on disk and fdatasync'd.
    pub fn durable_offset(&self) -> i64 {
        self.durable_offset.get()
    }

    /// Offsets below are written to the segment files (maybe not fdatasync'd): they
    /// survive a crash of the process, unlike batches still in the write buffers.
    pub fn written_offset(&self) -> i64 {
        self.written_offset.get()
    }

    /// Flush measurements since open or the last `take_flush_stats`.
    pub fn take_flush_stats(&self) -> FlushStats {
        self.stats.borrow_mut().take().unwrap_or_default()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.borrow().len()
    }

    /// `cleanup.policy` contains `compact`: produced records need keys.
    pub fn is_compacted(&self) -> bool {
        self.config.borrow().cleanup_compact
    }

    pub fn set_config(&self, config: LogConfig) {
        *self.config.borrow_mut() = sanitize(config);
    }

    pub(super) fn check_usable(&self) -> Result<(), StorageError> {
        if self.closed.get() {
            return Err(StorageError::Closed);
        }
        if self.truncating.get() {
            return Err(StorageError::Truncating);
        }
        if let Some(e) = self.failed.borrow().as_ref() {
            return Err(e.duplicate());
        }
        let no_space = self.no_space.borrow().as_ref().map(StorageError::duplicate);
        if let Some(e) = no_space {
            self.retry_no_space();
            return Err(e);
        }
        Ok(())
    }

    /// Writes and fdatasyncs everything appended so far.
    pub async fn flush(&self) -> Result<(), StorageError> {
        self.check_usable()?;
        self.flush_to(self.log_end.get(), true).await
    }

    /// Flushes, writes all indexes and closes the files. Later calls return `Closed`.
    pub async fn close(&self) -> Result<(), StorageError> {
        if self.closed.get() {
            return Ok(());
        }
        let flushed = if self.failed.borrow().is_none() {
            self.flush_to(self.log_end.get(), true).await
        } else {
            Ok(())
        };
        self.closed.set(true);
        let segs: Vec<Rc<Segment>> = self.segments.borrow().iter().cloned().collect();
        let mut result = flushed;
        for s in segs {
            if result.is_ok()
                && s.index_dirty.get()
                && s.is_fully_written()
                && s.file.borrow().is_some()
            {
                result = s.persist_index();
            }
            s.close_dsync().await;
            let file = s.file.borrow_mut().take();
            if let Some(file) = file {
                if let Ok(f) = Rc::try_unwrap(file) {
                    let _ = f.close().await;
                }
            }
        }
        result
    }

    /// The base offset of the active (last) segment: it changes when the log rolls.
    pub fn active_segment_base(&self) -> i64 {
        self.active_segment().base_offset
    }

    /// The segment appends go to. A log always has one (open creates it, truncation
    /// and retention never remove the last).
    pub(super) fn active_segment(&self) -> Rc<Segment> {
        self.segments
            .borrow()
            .back()
            .expect("a log always has an active segment")
            .clone()
    }

    /// The base offset of the oldest segment.
    pub(super) fn first_segment_base(&self) -> i64 {
        self.segments
            .borrow()
            .front()
            .expect("a log always has a segment")
            .base_offset
    }

    /// Closes the log and removes its directory (DeleteTopics). When this returns the
    /// directory has been renamed to a `*.delete` name (so a new log of the same
    /// partition starts empty); its files are unlinked afterwards by a background task
    /// of this shard, which logs the bytes freed (see `remove`): a big log's unlinks
    /// must not hold the shard.
    pub async fn delete(&self) -> Result<(), StorageError> {
        self.failed.borrow_mut().get_or_insert(StorageError::Closed);
        let _ = self.close().await;
        self.closed.set(true);
        let renamed = super::remove::rename_for_delete(&self.dir)
            .map_err(|e| StorageError::io("rename for delete", &self.dir, e))?;
        let name = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        super::remove::remove_in_background(renamed, name);
        Ok(())
    }
}

/// Offsets this large are corruption, not data (Kafka offsets are far below).
pub(super) const OFFSET_MAX: i64 = 1 << 62;

fn read_checkpoint(dir: &Path) -> Option<i64> {
    read_offset_file(dir, LOG_START_CHECKPOINT)
}

fn read_offset_file(dir: &Path, name: &str) -> Option<i64> {
    let v: i64 = std::fs::read_to_string(dir.join(name))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (0..OFFSET_MAX).contains(&v).then_some(v)
}
