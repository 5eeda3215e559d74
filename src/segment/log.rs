//! `PartitionLog`: the segments of one partition, the write path (aligned DMA buffers,
//! group commit), the batch cache and the read path.
//!
//! Runs on the shard that owns the partition; `!Send`, shared as `Rc`. All methods take
//! `&self`; state is in `Cell`/`RefCell`s that are never borrowed across an `.await`.
//!
//! Write path. `append` validates the batch, assigns its offsets and copies it into the
//! current aligned `DmaBuffer` before its first `.await` (the one user-space copy of
//! record bytes). Buffers are written by whichever task becomes the *flusher*: it seals
//! the current buffer (carrying the partial tail block into a fresh buffer, so that
//! block is rewritten by the next write), writes all sealed buffers in order, and, if
//! any waiter asked for `Durable`, fdatasyncs every file written since the last sync.
//! While one flush runs, new appends pile up and the next flusher takes them all: one
//! write + one fdatasync for many appends (group commit). `Written` appends return as
//! soon as the batch is in memory; a detached task writes full buffers (and honours
//! `flush.messages` / `flush.ms`), and appends wait only if the unwritten backlog
//! exceeds `UNWRITTEN_BYTES_MAX`.
//!
//! Read path. Recent batches are kept in a bounded cache as `Bytes` (the patched 61-byte
//! header and the caller's original body, no copy); every batch not yet written to disk
//! is in the cache, so reads never see a half-written file region. Older batches are
//! DMA-read from the segment file.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;
use glommio::io::{DmaBuffer, DmaFile, OpenOptions};

use super::batch::{
    claimed_len, patch_batch_with_epoch, split_batches, validate_batch, BatchHeader, PatchedBatch,
    ValidBatch, BATCH_HEADER_LEN,
};
use super::compact;
use super::epoch::LeaderEpochCache;
use super::error::StorageError;
use super::recovery::{recover_segment, scan, BATCH_BYTES_MAX};
use super::segment::{
    align_down, align_up, sync_dir, sync_dir_async, write_replace_durable, DsyncHandle, Segment,
    BLOCK_BYTES,
};

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
/// Capacity of a write buffer; a batch that does not fit continues in the next one.
const WRITE_BUFFER_BYTES: usize = 1 << 20;
/// Unwritten bytes (sealed buffers) above which `Written` appends wait for a write.
/// Bounds the memory one partition can pin before the disk catches up.
const UNWRITTEN_BYTES_MAX: usize = 8 << 20;
/// Soft bound of the batch cache (never evicts batches not yet written).
const CACHE_BYTES_MAX: usize = 8 << 20;
/// Preallocation step for segment files (fallocate; the file size grows with it).
/// Redpanda's default step. Each step changes file metadata, which the next
/// fdatasync commits (a slower sync once per step); a whole-segment preallocation
/// would avoid that but pin `segment.bytes` of disk per idle partition.
const PREALLOCATE_BYTES: u64 = 32 << 20;
/// First preallocation step of a segment; each later step doubles up to
/// `PREALLOCATE_BYTES`, so a partition that holds little data costs little disk
/// (2000 partitions with one record each took 64 GB at a flat 32 MiB).
const PREALLOCATE_BYTES_MIN: u64 = 1 << 20;
const _: () = assert!(PREALLOCATE_BYTES_MIN <= PREALLOCATE_BYTES);
/// Bounds of one DMA read on the fetch path.
const READ_WINDOW_BYTES_MIN: usize = 64 << 10;
const READ_WINDOW_BYTES_MAX: usize = 8 << 20;
/// Minimum new offset-index entries before the active segment's index is rewritten
/// (1024 entries = 4 MiB of batches at the default index.interval.bytes).
const ACTIVE_INDEX_PERSIST_ENTRIES: usize = 1024;
const LOG_START_CHECKPOINT: &str = "log-start-offset";
/// Offsets below this one are compacted (Kafka's cleaner-offset-checkpoint).
const CLEANER_CHECKPOINT: &str = "cleaner-offset";
/// Suffix of a compacted segment being written; renamed over `.log` when complete.
const CLEANED_SUFFIX: &str = "cleaned";
/// Bytes read per hop while compacting a segment.
const COMPACT_READ_BYTES: usize = 1 << 20;
/// `<offset, 20 digits>.snapshot`: an idempotent-producer state snapshot covering the
/// log below `offset` (opaque here: `shard::producer_state` encodes it).
const PRODUCER_SNAPSHOT_EXT: &str = "snapshot";
/// Snapshots kept: the newest is the one a restart loads; older ones are the fallback
/// when it is damaged.
const PRODUCER_SNAPSHOTS_KEPT: usize = 3;
/// A snapshot file larger than this is refused unread (a bound on what a damaged or
/// foreign file can make a restart allocate): ~10 million producers.
const PRODUCER_SNAPSHOT_BYTES_MAX: u64 = 1 << 30;

const _: () = assert!((WRITE_BUFFER_BYTES as u64).is_multiple_of(BLOCK_BYTES));
const _: () = assert!(UNWRITTEN_BYTES_MAX >= WRITE_BUFFER_BYTES);

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

/// One batch found by the read path, with the header fields callers need.
pub(crate) struct ReadBatch {
    pub last_offset: i64,
    pub max_timestamp: i64,
    /// Holds no records (left by compaction).
    pub empty: bool,
    pub chunks: [Option<Bytes>; 2],
}

/// The first record of `b` at or after offset `start` whose timestamp is >= `ts`:
/// (offset, timestamp). None if the batch's matching records all lie below `start`.
fn first_record_at_or_after(
    b: &ReadBatch,
    ts: i64,
    start: i64,
) -> Result<Option<(i64, i64)>, StorageError> {
    let parts: Vec<&[u8]> = b.chunks.iter().flatten().map(|c| c.as_ref()).collect();
    let d = compact::decode_batch(&parts.concat())?;
    Ok(d.refs
        .iter()
        .map(|r| (d.offset(r), d.timestamp(r)))
        .find(|&(o, t)| o >= start && t >= ts))
}

impl ReadBatch {
    fn len(&self) -> usize {
        self.chunks.iter().flatten().map(|c| c.len()).sum()
    }
}

struct CacheEntry {
    base_offset: i64,
    last_offset: i64,
    max_timestamp: i64,
    batch: PatchedBatch,
    seg: Rc<Segment>,
    end_pos: u64,
}

/// Recent batches, in offset order, covering a suffix of the log.
#[derive(Default)]
struct BatchCache {
    entries: VecDeque<CacheEntry>,
    bytes: usize,
}

impl BatchCache {
    fn first_offset(&self) -> Option<i64> {
        self.entries.front().map(|e| e.base_offset)
    }

    /// Evicts written batches from the front while over the bound.
    fn evict(&mut self, bytes_max: usize) {
        while self.bytes > bytes_max {
            let Some(e) = self.entries.front() else { break };
            if e.seg.written.get() < e.end_pos {
                break;
            }
            self.bytes -= e.batch.len();
            self.entries.pop_front();
        }
    }

    fn drop_segment(&mut self, seg: &Rc<Segment>) {
        while let Some(e) = self.entries.front() {
            if !Rc::ptr_eq(&e.seg, seg) {
                break;
            }
            self.bytes -= e.batch.len();
            self.entries.pop_front();
        }
    }

    /// Drops the (written) entries below `offset`: their segment was replaced.
    fn drop_below(&mut self, offset: i64) {
        while let Some(e) = self.entries.front() {
            if e.last_offset >= offset {
                break;
            }
            assert!(
                e.seg.written.get() >= e.end_pos,
                "only written batches are dropped"
            );
            self.bytes -= e.batch.len();
            self.entries.pop_front();
        }
    }

    fn read(&self, offset: i64, max_bytes: usize) -> Vec<ReadBatch> {
        let start = self.entries.partition_point(|e| e.last_offset < offset);
        let mut out = Vec::new();
        let mut total = 0usize;
        for e in self.entries.iter().skip(start) {
            if !out.is_empty() && total + e.batch.len() > max_bytes {
                break;
            }
            total += e.batch.len();
            out.push(ReadBatch {
                last_offset: e.last_offset,
                max_timestamp: e.max_timestamp,
                empty: false, // produced batches hold at least one record
                chunks: [Some(e.batch.header.clone()), Some(e.batch.body.clone())],
            });
        }
        out
    }
}

/// The aligned buffer appends copy into: file range [file_pos, file_pos + len) of `seg`.
struct WriteBuf {
    seg: Rc<Segment>,
    file_pos: u64,
    buf: DmaBuffer,
    len: usize,
    /// Holds bytes not yet handed to a write.
    dirty: bool,
}

/// A sealed buffer waiting for the flusher.
struct PendingWrite {
    seg: Rc<Segment>,
    file_pos: u64,
    buf: DmaBuffer,
    /// Logical segment position the data ends at.
    logical_end: u64,
    /// Ends in a zero-padded partial block that the next write of this segment
    /// rewrites: nothing else may be in flight with it.
    barrier: bool,
}

/// Submitted writes, in submission order, to know which prefix is complete.
#[derive(Default)]
struct WriteTracker {
    next_seq: u64,
    in_flight: VecDeque<InFlight>,
    /// Every write with seq below this is complete.
    done_prefix: u64,
    waiters: Vec<(u64, oneshot::Sender<()>)>,
    barrier_in_flight: bool,
    /// Bytes sealed and not yet written (queued or in flight).
    unwritten_bytes: usize,
}

struct InFlight {
    seq: u64,
    seg: Rc<Segment>,
    /// Logical segment position the write ends at.
    logical_end: u64,
    done: bool,
    /// Through the O_DSYNC handle: durable once complete, needs no fdatasync.
    dsync: bool,
}

struct Appender {
    cur: WriteBuf,
    queue: VecDeque<PendingWrite>,
    /// Capacity of the buffer that follows a one-block head buffer (see `rotate`).
    next_capacity: usize,
    /// A flush carries its partial tail block in a one-block buffer of its own (see
    /// `rotate`). Off after a sync round of one write: the next such round then has
    /// one write again, which goes O_DSYNC (one I/O instead of two writes plus an
    /// fdatasync).
    split_tail: bool,
}

impl Appender {
    /// Continues in a fresh buffer of `capacity` bytes that starts with the current
    /// partial tail block.
    ///
    /// `for_flush`: the whole old buffer, tail block zero-padded, is queued; the next
    /// round rewrites that tail block. Otherwise (the buffer is full) only its whole
    /// blocks are queued and the tail travels, still unwritten, with the new buffer:
    /// so the writes queued within one round never share a block and can be issued
    /// concurrently.
    ///
    /// A tail block carried by a flush goes into a buffer of its own (one block,
    /// `copy_in` continues in a buffer of `capacity` at the next block): its rewrite
    /// then never shares a write with preallocated blocks. ext4 cannot issue a direct
    /// write that covers both written and unwritten extents without blocking, so
    /// io_uring would hand every such write to a worker thread (one more thread
    /// wakeup per write, which on a busy machine costs up to a scheduler tick).
    /// Unless `split_tail` is off (see there): one punted O_DSYNC write beats two
    /// writes and an fdatasync.
    fn rotate(&mut self, capacity: usize, for_flush: bool) {
        let tail_start = align_down(self.cur.len as u64) as usize;
        let tail_len = self.cur.len - tail_start;
        if for_flush {
            self.next_capacity = capacity;
        }
        let capacity = if for_flush && tail_len > 0 && self.split_tail {
            BLOCK_BYTES as usize
        } else {
            align_up(capacity.max(tail_len + 1) as u64) as usize
        };
        let mut next = glommio::allocate_dma_buffer(capacity);
        next.as_bytes_mut()[..tail_len]
            .copy_from_slice(&self.cur.buf.as_bytes()[tail_start..self.cur.len]);
        let fresh = WriteBuf {
            seg: self.cur.seg.clone(),
            file_pos: self.cur.file_pos + tail_start as u64,
            buf: next,
            len: tail_len,
            dirty: !for_flush && self.cur.dirty && tail_len > 0,
        };
        let mut old = std::mem::replace(&mut self.cur, fresh);
        if !for_flush {
            old.len = tail_start;
        }
        self.seal(old, for_flush);
    }

    /// Queues `old` (zero-padded to a whole block) if it holds bytes not yet queued.
    fn seal(&mut self, mut old: WriteBuf, barrier: bool) {
        if !old.dirty || old.len == 0 {
            return;
        }
        let padded = align_up(old.len as u64) as usize;
        old.buf.as_bytes_mut()[old.len..padded].fill(0);
        old.buf.trim_to_size(padded);
        self.queue.push_back(PendingWrite {
            logical_end: old.file_pos + old.len as u64,
            seg: old.seg,
            file_pos: old.file_pos,
            buf: old.buf,
            barrier,
        });
    }

    /// Starts `seg` (just rolled) with an empty buffer sized for `first_len`.
    fn roll(&mut self, seg: Rc<Segment>, first_len: usize) {
        let capacity = align_up(first_len.max(WRITE_BUFFER_BYTES) as u64) as usize;
        let fresh = WriteBuf {
            seg,
            file_pos: 0,
            buf: glommio::allocate_dma_buffer(capacity),
            len: 0,
            dirty: false,
        };
        let old = std::mem::replace(&mut self.cur, fresh);
        // The sealed segment's last write: nothing follows it in that file.
        self.seal(old, false);
    }

    fn copy_in(&mut self, seg: &Rc<Segment>, pos: u64, batch: &PatchedBatch) {
        assert!(
            Rc::ptr_eq(&self.cur.seg, seg),
            "appends go to the active segment"
        );
        assert_eq!(
            self.cur.file_pos + self.cur.len as u64,
            pos,
            "write buffer tracks the segment end"
        );
        // A batch fills the buffer and continues in the next one: buffers are whole
        // blocks, so a full buffer is queued whole and the next starts at a block
        // boundary (a batch may straddle buffers; writes never share a block).
        let mut rest = batch.len();
        for mut src in [&batch.header[..], &batch.body[..]] {
            while !src.is_empty() {
                let room = self.cur.buf.len() - self.cur.len;
                if room == 0 {
                    // Grow geometrically up to WRITE_BUFFER_BYTES: a low-rate partition
                    // keeps a small buffer (thousands of partitions must not pin a MiB
                    // each).
                    let grown = (2 * self.cur.buf.len()).max(self.next_capacity);
                    self.rotate(rest.max(grown).min(WRITE_BUFFER_BYTES), false);
                    continue;
                }
                let n = room.min(src.len());
                let at = self.cur.len;
                self.cur.buf.as_bytes_mut()[at..at + n].copy_from_slice(&src[..n]);
                self.cur.len += n;
                self.cur.dirty = true;
                src = &src[n..];
                rest -= n;
            }
        }
    }
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
    dir: PathBuf,
    /// Created by the first flush round, so idle partitions carry no histograms.
    stats: RefCell<Option<FlushStats>>,
    me: Weak<PartitionLog>,
    config: RefCell<LogConfig>,
    /// Oldest first; the last one is active. Never empty.
    segments: RefCell<VecDeque<Rc<Segment>>>,
    log_start: Cell<i64>,
    log_end: Cell<i64>,
    /// All offsets below are written to disk / written and fdatasync'd.
    written_offset: Cell<i64>,
    durable_offset: Cell<i64>,
    appender: RefCell<Appender>,
    tracker: RefCell<WriteTracker>,
    cache: RefCell<BatchCache>,
    /// Segments written since the last fdatasync.
    unsynced: RefCell<Vec<Rc<Segment>>>,
    unsynced_messages: Cell<i64>,
    flushing: Cell<bool>,
    /// Woken when a flush round ends; a round that ran out of space sends its error.
    flush_waiters: RefCell<Vec<oneshot::Sender<Option<StorageError>>>>,
    background_write: Cell<bool>,
    flush_timer: Cell<bool>,
    /// Sticky: after a failed write or fdatasync nothing more is accepted.
    failed: RefCell<Option<StorageError>>,
    /// Not sticky: the last flush round could not get disk space (ENOSPC / EDQUOT from
    /// creating or preallocating a file) and put its writes back in the queue. New
    /// appends are refused until a retry round gets the space.
    no_space: RefCell<Option<StorageError>>,
    no_space_retrying: Cell<bool>,
    closed: Cell<bool>,
    /// Record bytes copied out of DMA read buffers (cold reads), for the copy metric.
    read_copied_bytes: Cell<u64>,
    /// Offsets below are compacted: only newer segments are dirty.
    clean_end: Cell<i64>,
    /// A compaction pass is running (one at a time per log).
    compacting: Cell<bool>,
    /// A truncation is running: appends and maintenance are refused (`Truncating`).
    truncating: Cell<bool>,
    /// Truncations started so far: a producer snapshot taken before one must not land.
    truncations: Cell<u64>,
    /// Stamped into produced batches (`set_leader_epoch`); 0 on a single node.
    leader_epoch: Cell<i32>,
    /// Where each leader epoch starts (see `epoch`).
    epochs: RefCell<LeaderEpochCache>,
    /// `epochs`' latest epoch, -1 if none: the per-batch check is one compare.
    epoch_latest: Cell<i32>,
    /// The epoch cache changed since its checkpoint was last written.
    epoch_dirty: Cell<bool>,
    /// A task is writing the checkpoint (`assign_epoch`).
    epoch_persisting: Cell<bool>,
    /// One checkpoint write at a time, each of the cache as it is then: the last
    /// rename always carries the newest state.
    epoch_write: glommio::sync::Semaphore,
}

/// What one compaction pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactStats {
    pub segments_rewritten: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub keys: usize,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

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

    /// Loads the leader-epoch checkpoint, trimmed to the recovered log (its entries
    /// are written before the batches that start the epochs, so a crash can leave some
    /// past the end), or rebuilds it from the batch headers when it is missing.
    async fn load_epochs(&self) -> Result<(), StorageError> {
        let (start, end) = (self.log_start.get(), self.log_end.get());
        let (cache, mut changed) = match LeaderEpochCache::load(&self.dir)? {
            Some(cache) if !self.epoch_missing_from(&cache).await? => (cache, false),
            Some(_) => (self.rebuild_epochs().await?, true),
            None => {
                let first_base = self
                    .segments
                    .borrow()
                    .front()
                    .expect("a segment")
                    .base_offset;
                if end == first_base {
                    // Empty: the first append writes the file.
                    return Ok(());
                }
                (self.rebuild_epochs().await?, true)
            }
        };
        *self.epochs.borrow_mut() = cache;
        changed |= self.epochs.borrow_mut().truncate_from_end(end);
        changed |= self.epochs.borrow_mut().truncate_from_start(start);
        self.sync_epoch_latest();
        if changed {
            self.persist_epochs().await?;
        }
        Ok(())
    }

    /// Whether the log's last batch carries an epoch `cache` does not know: the
    /// checkpoint is written after the batch that starts an epoch (`assign_epoch`),
    /// so a crash in between leaves it behind. Epochs only grow along the log, so the
    /// last batch tells.
    async fn epoch_missing_from(&self, cache: &LeaderEpochCache) -> Result<bool, StorageError> {
        let end = self.log_end.get();
        if end <= self.log_start.get() {
            return Ok(false);
        }
        let read = self.read(end - 1, 1).await?;
        let bytes = Bytes::from(read.chunks.concat());
        let Some(last) = split_batches(&bytes)?.pop() else {
            return Ok(false);
        };
        let epoch = validate_batch(&last)?.partition_leader_epoch;
        Ok(epoch >= 0 && cache.latest_epoch().is_none_or(|e| e < epoch))
    }

    /// Reads every batch header of the log (once, when the checkpoint is missing: a log
    /// written before epochs were kept, or a lost file). Batches without an epoch (-1,
    /// as clients send them) assign nothing.
    async fn rebuild_epochs(&self) -> Result<LeaderEpochCache, StorageError> {
        let mut cache = LeaderEpochCache::default();
        let segs: Vec<Rc<Segment>> = self.segments.borrow().iter().cloned().collect();
        for seg in segs.iter().filter(|s| s.size.get() > 0) {
            self.for_each_batch(seg, |raw| {
                let h = BatchHeader::parse(raw)?;
                if h.partition_leader_epoch >= 0
                    && cache.latest_epoch() != Some(h.partition_leader_epoch)
                {
                    cache.assign(h.partition_leader_epoch, h.base_offset);
                }
                Ok(true)
            })
            .await?;
        }
        tracing::info!(dir = ?self.dir, epochs = cache.entries().len(), "rebuilt the leader-epoch cache from batch headers");
        Ok(cache)
    }

    fn sync_epoch_latest(&self) {
        self.epoch_latest
            .set(self.epochs.borrow().latest_epoch().unwrap_or(-1));
    }

    /// Records that `epoch` starts at `start` (an append's first batch of a new epoch)
    /// and persists the cache. A failed write removes the file instead, so the next
    /// open rebuilds it rather than trusting a stale one; the append goes on.
    fn assign_epoch(&self, epoch: i32, start: i64) {
        if !self.epochs.borrow_mut().assign(epoch, start) {
            return;
        }
        self.sync_epoch_latest();
        self.epoch_dirty.set(true);
        // Written by a task, not here: this runs inside an append, and two blocking
        // fsyncs per new partition stalled the whole shard (10k fresh partitions:
        // seconds). A crash before the write leaves batches of an epoch the
        // checkpoint lacks; `load_epochs` sees that and rebuilds from the headers.
        if self.epoch_persisting.get() {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        self.epoch_persisting.set(true);
        glommio::spawn_local(async move {
            while me.epoch_dirty.get() {
                if let Err(e) = me.persist_epochs().await {
                    tracing::warn!(error = %e, "could not write the leader-epoch checkpoint: it will be rebuilt on open");
                    let _ = std::fs::remove_file(LeaderEpochCache::path(&me.dir));
                    break;
                }
            }
            me.epoch_persisting.set(false);
        })
        .detach();
    }

    /// Writes the epoch cache as it is now to its checkpoint, durably.
    async fn persist_epochs(&self) -> Result<(), StorageError> {
        let _permit = self
            .epoch_write
            .acquire_permit(1)
            .await
            .map_err(|e| StorageError::io("checkpoint", &self.dir, e))?;
        self.epoch_dirty.set(false);
        let text = self.epochs.borrow().render();
        super::segment::write_replace_durable_async(
            &LeaderEpochCache::path(&self.dir),
            text.as_bytes(),
        )
        .await
    }

    /// The leader epoch stamped into every batch produced from now on. Call when this
    /// broker becomes the partition's leader for `epoch` (followers keep the epochs of
    /// the batches they copy). 0 until called: a single node is leader of epoch 0.
    /// No I/O: the epoch enters the cache with its first batch, and until then
    /// `end_offset_for_epoch` counts it as starting at the log end.
    pub fn set_leader_epoch(&self, epoch: i32) {
        assert!(epoch >= 0, "leader epoch {epoch}");
        self.leader_epoch.set(epoch);
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch.get()
    }

    /// The latest epoch with batches in this log (what a follower sends in
    /// OffsetForLeaderEpoch before it fetches from a new leader); `None` when no batch
    /// carries an epoch.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.epochs.borrow().latest_epoch()
    }

    /// (epoch, start offset) of every epoch in the log, oldest first.
    pub fn epoch_entries(&self) -> Vec<(i32, i64)> {
        self.epochs.borrow().entries().to_vec()
    }

    /// OffsetForLeaderEpoch, Kafka's `endOffsetFor`: the largest epoch <= `requested`
    /// in this log and the offset where it ended (the start of the next epoch, or the
    /// log end for the latest one); (-1, -1) for an epoch newer than any here or -1.
    /// The epoch set by `set_leader_epoch` counts as the latest even before it has
    /// batches (Kafka's leader records it at election, at the then log end: with no
    /// batch of it yet, that is still the log end).
    pub fn end_offset_for_epoch(&self, requested: i32) -> (i32, i64) {
        let end = self.log_end.get();
        let current = self.leader_epoch.get();
        let cache = self.epochs.borrow();
        if cache.latest_epoch().is_some_and(|l| l >= current) {
            return cache.end_offset_for(requested, end);
        }
        let mut view = cache.clone();
        view.assign(current, end);
        view.end_offset_for(requested, end)
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

    fn check_usable(&self) -> Result<(), StorageError> {
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

    /// Whether appends are refused because the disk was full at the last flush round.
    pub fn is_out_of_space(&self) -> bool {
        self.no_space.borrow().is_some()
    }

    /// While out of space, each refused append starts (at most one at a time) a flush
    /// round that retries the queued writes; once it gets the space, appends resume.
    /// Synchronous, so the caller's "nothing runs before the offset is assigned"
    /// window holds.
    fn retry_no_space(&self) {
        if self.no_space_retrying.get() {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        self.no_space_retrying.set(true);
        glommio::spawn_local(async move {
            let target = me.log_end.get();
            if me.flush_to(target, false).await.is_ok() {
                me.no_space.borrow_mut().take();
            }
            me.no_space_retrying.set(false);
        })
        .detach();
    }

    /// Waits until every offset below `target` is written and fdatasync'd (for a
    /// producer retrying a batch that is already in the log: its ack must mean the
    /// same as the first one's).
    pub async fn sync_to(&self, target: i64) -> Result<(), StorageError> {
        self.check_usable()?;
        self.flush_to(target.min(self.log_end.get()), true).await
    }

    /// Writes (without fdatasync) everything below `target`: once it returns, a crash
    /// of the process can no longer take those batches back.
    pub async fn write_to(&self, target: i64) -> Result<(), StorageError> {
        self.check_usable()?;
        self.flush_to(target.min(self.log_end.get()), false).await
    }

    /// `batch` is exactly one v2 record batch as received (`records` field may hold
    /// several batches: the caller splits with `batch::split_batches` first). A batch
    /// that fails validation is refused with a typed error and nothing is written.
    /// Offsets are assigned before the first `.await`, in call order.
    pub async fn append(
        &self,
        batch: Bytes,
        durability: Durability,
    ) -> Result<AppendInfo, StorageError> {
        self.append_valid(ValidBatch::new(batch)?, durability).await
    }

    /// `append` for a batch already checked by `ValidBatch::new` (the produce path
    /// validates every batch of a request before writing any): the CRC is not
    /// computed twice. Same ordering and durability contract as `append`.
    pub async fn append_valid(
        &self,
        batch: ValidBatch,
        durability: Durability,
    ) -> Result<AppendInfo, StorageError> {
        let mut info = self.append_now(&batch)?;
        self.submit_ready();
        let target = info.last_offset + 1;
        let flush_started = std::time::Instant::now();
        match durability {
            Durability::Durable => {
                self.flush_to(target, true).await?;
                info.flush_wait = Some(flush_started.elapsed());
            }
            Durability::Written => {
                if self.unwritten_bytes() > UNWRITTEN_BYTES_MAX {
                    // Backpressure: the disk is behind; wait for a write round.
                    self.flush_to(target, false).await?;
                    info.flush_wait = Some(flush_started.elapsed());
                }
                self.schedule_background();
            }
        }
        Ok(info)
    }

    /// A follower's append: `batches` are the leader's batches laid end to end (a fetch
    /// response's records), stored exactly as received: offsets, timestamps and leader
    /// epochs kept, nothing patched. Every batch is checked like a produced one
    /// (length, magic, CRC32C) and their offsets must continue the log densely: the
    /// first base offset is the log end, each next one follows the previous batch's
    /// last offset. Any failure refuses the whole set with a typed error
    /// (`CorruptBatch` / `InvalidBatch` / `BatchTooLarge` / `NonContiguous`) and nothing
    /// is written. `max.message.bytes` is the leader's to enforce, not a follower's.
    ///
    /// Resolves once the batches are written and fdatasync'd: a follower's next fetch
    /// offset is its durable log end. Same ordering contract as `append` (placed before
    /// the first `.await`); concurrent calls for one log are the caller's to avoid (the
    /// second would fail `NonContiguous`).
    pub async fn append_replicated(
        &self,
        batches: Bytes,
    ) -> Result<ReplicatedAppend, StorageError> {
        let appended = self.append_replicated_now(&batches)?;
        if appended.batches > 0 {
            self.submit_ready();
            self.flush_to(appended.log_end_offset, true).await?;
        }
        Ok(appended)
    }

    /// The synchronous part of `append_replicated`: check all, then place all.
    fn append_replicated_now(&self, batches: &Bytes) -> Result<ReplicatedAppend, StorageError> {
        self.check_usable()?;
        let first_offset = self.log_end.get();
        let parts = split_batches(batches)?;
        let mut checked = Vec::with_capacity(parts.len());
        let mut next = first_offset;
        for bytes in parts {
            if bytes.len() as u64 > BATCH_BYTES_MAX {
                // Recovery would take a longer batch for a lying length and cut it off.
                return Err(StorageError::BatchTooLarge {
                    size: bytes.len(),
                    max: BATCH_BYTES_MAX as usize,
                });
            }
            let h = validate_batch(&bytes)?;
            if h.base_offset != next {
                return Err(StorageError::NonContiguous {
                    expected: next,
                    found: h.base_offset,
                });
            }
            if h.last_offset() >= OFFSET_MAX {
                return Err(StorageError::InvalidBatch(format!(
                    "last offset {} is beyond any real log",
                    h.last_offset()
                )));
            }
            next = h.last_offset() + 1;
            checked.push((bytes, h));
        }
        let config = self.config.borrow().clone();
        let now = now_ms();
        let mut records = 0i64;
        let count = checked.len();
        for (bytes, h) in checked {
            let epoch = h.partition_leader_epoch;
            if epoch >= 0 && epoch != self.epoch_latest.get() {
                self.assign_epoch(epoch, h.base_offset);
            }
            self.maybe_roll(&config, bytes.len(), h.last_offset(), now);
            let batch = PatchedBatch {
                header: bytes.slice(..BATCH_HEADER_LEN),
                body: bytes.slice(BATCH_HEADER_LEN..),
            };
            self.place(
                &config,
                batch,
                h.base_offset,
                h.last_offset(),
                h.max_timestamp,
                h.records_count,
            );
            records += i64::from(h.records_count.max(0));
        }
        assert_eq!(
            self.log_end.get(),
            next,
            "placed exactly the checked batches"
        );
        Ok(ReplicatedAppend {
            first_offset,
            log_end_offset: next,
            batches: count,
            records,
        })
    }

    /// The synchronous part of append: validate, roll, assign offsets, copy.
    fn append_now(&self, valid: &ValidBatch) -> Result<AppendInfo, StorageError> {
        let (batch, header) = (valid.bytes(), *valid.header());
        self.check_usable()?;
        let config = self.config.borrow().clone();
        if batch.len() > config.max_message_bytes as usize {
            return Err(StorageError::BatchTooLarge {
                size: batch.len(),
                max: config.max_message_bytes as usize,
            });
        }
        if header.records_count < 1
            || i64::from(header.last_offset_delta) != i64::from(header.records_count) - 1
        {
            return Err(StorageError::InvalidBatch(format!(
                "a produced batch must have dense offsets: last_offset_delta {} with {} records",
                header.last_offset_delta, header.records_count
            )));
        }
        let epoch = self.leader_epoch.get();
        if epoch != self.epoch_latest.get() {
            // Rare: the first batch of this leader's epoch (or a stale leader).
            let latest = self.epoch_latest.get();
            if epoch < latest {
                return Err(StorageError::StaleLeaderEpoch { epoch, latest });
            }
            self.assign_epoch(epoch, self.log_end.get());
        }
        let now = now_ms();
        let last_offset = self.log_end.get() + i64::from(header.last_offset_delta);
        self.maybe_roll(&config, batch.len(), last_offset, now);
        let base_offset = self.log_end.get();
        let append_time =
            (config.message_timestamp_type == TimestampType::LogAppendTime).then_some(now);
        let patched = patch_batch_with_epoch(batch, base_offset, epoch, append_time);
        let max_timestamp = append_time.unwrap_or(header.max_timestamp);
        self.place(
            &config,
            patched,
            base_offset,
            last_offset,
            max_timestamp,
            header.records_count,
        );
        Ok(AppendInfo {
            base_offset,
            last_offset,
            log_append_time_ms: append_time.unwrap_or(-1),
            log_start_offset: self.log_start.get(),
            flush_wait: None,
        })
    }

    /// Copies a batch whose offsets are final into the active segment's write buffer,
    /// indexes and caches it, and moves the log end past it. Synchronous; the caller
    /// rolled the segment first.
    fn place(
        &self,
        config: &LogConfig,
        batch: PatchedBatch,
        base_offset: i64,
        last_offset: i64,
        max_timestamp: i64,
        records: i32,
    ) {
        assert_eq!(
            base_offset,
            self.log_end.get(),
            "batches are placed at the log end"
        );
        assert!(last_offset >= base_offset);
        let len = batch.len();
        let seg = self
            .segments
            .borrow()
            .back()
            .expect("active segment")
            .clone();
        let pos = seg.size.get();
        self.appender.borrow_mut().copy_in(&seg, pos, &batch);
        seg.on_batch(
            base_offset,
            last_offset,
            pos,
            len as u64,
            max_timestamp,
            u64::from(config.index_interval_bytes),
        );
        {
            let mut cache = self.cache.borrow_mut();
            cache.bytes += len;
            cache.entries.push_back(CacheEntry {
                base_offset,
                last_offset,
                max_timestamp,
                batch,
                seg,
                end_pos: pos + len as u64,
            });
            cache.evict(CACHE_BYTES_MAX);
        }
        self.log_end.set(last_offset + 1);
        self.unsynced_messages
            .set(self.unsynced_messages.get() + i64::from(records.max(0)));
    }

    /// Rolls to a new segment when the batch would overflow `segment.bytes` or the
    /// active segment is older than `segment.ms`. Synchronous: the new file is created
    /// by the flusher before its first write.
    fn maybe_roll(&self, config: &LogConfig, len: usize, last_offset: i64, now: i64) {
        let active = self
            .segments
            .borrow()
            .back()
            .expect("active segment")
            .clone();
        if active.size.get() == 0 {
            return;
        }
        // Index entries hold offsets relative to the segment base as u32; replicated
        // batches (compacted ones) may advance offsets much faster than bytes.
        let full = active.size.get() + len as u64 > config.segment_bytes
            || last_offset - active.base_offset > i64::from(i32::MAX);
        let old = now.saturating_sub(active.created_ms.get()) > config.roll_ms();
        if !full && !old {
            return;
        }
        active.sealed.set(true);
        let seg = Rc::new(Segment::new(&self.dir, self.log_end.get(), now));
        self.segments.borrow_mut().push_back(seg.clone());
        self.appender.borrow_mut().roll(seg, len);
    }

    /// Starts detached work that needs no waiter: writing sealed buffers, and the
    /// flush.messages / flush.ms policy.
    fn schedule_background(&self) {
        let config = self.config.borrow();
        let sync_now = self.unsynced_messages.get() >= config.flush_messages;
        let write_now = !self.appender.borrow().queue.is_empty();
        if (sync_now || write_now) && !self.background_write.get() {
            if let Some(me) = self.me.upgrade() {
                self.background_write.set(true);
                glommio::spawn_local(async move {
                    let target = me.log_end.get();
                    let _ = me.flush_to(target, sync_now).await;
                    me.background_write.set(false);
                })
                .detach();
            }
        }
        if config.flush_ms != i64::MAX
            && !self.flush_timer.get()
            && self.durable_offset.get() < self.log_end.get()
        {
            if let Some(me) = self.me.upgrade() {
                self.flush_timer.set(true);
                let delay = Duration::from_millis(config.flush_ms.max(0) as u64);
                glommio::spawn_local(async move {
                    glommio::timer::sleep(delay).await;
                    me.flush_timer.set(false);
                    let target = me.log_end.get();
                    let _ = me.flush_to(target, true).await;
                })
                .detach();
            }
        }
    }

    /// Waits until every offset below `target` is written (and fdatasync'd if `sync`),
    /// becoming the flusher if no flush is running. Group commit: one flusher writes
    /// everything appended so far; others wait for it and re-check.
    async fn flush_to(&self, target: i64, sync: bool) -> Result<(), StorageError> {
        loop {
            if let Some(e) = self.failed.borrow().as_ref() {
                return Err(e.duplicate());
            }
            // A truncation may have cut the log below `target` meanwhile: what is left
            // of it is all there is to flush.
            let target = target.min(self.log_end.get());
            let done = if sync {
                self.durable_offset.get()
            } else {
                self.written_offset.get()
            };
            if done >= target {
                return Ok(());
            }
            if !self.flushing.get() {
                // The round runs as its own task: a caller that gives up (drops this
                // future) must not abort a round halfway, with buffers taken from the
                // queue but never written. Spawning also lets the other runnable
                // tasks (appenders just woken by the last round) copy their batches in
                // first, so the round takes them all.
                let me = self.me.upgrade().expect("a PartitionLog lives in an Rc");
                self.flushing.set(true);
                glommio::spawn_local(async move {
                    let result = me.run_flush(sync).await;
                    let no_space = match result {
                        Ok(()) => {
                            me.no_space.borrow_mut().take();
                            None
                        }
                        Err(e) if e.is_no_space() => {
                            tracing::warn!(error = %e, "out of disk space: appends refused until a write succeeds");
                            *me.no_space.borrow_mut() = Some(e.duplicate());
                            Some(e)
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "log write failed: appends refused until reopened");
                            me.failed.borrow_mut().get_or_insert(e);
                            None
                        }
                    };
                    me.flushing.set(false);
                    let waiters = std::mem::take(&mut *me.flush_waiters.borrow_mut());
                    for w in waiters {
                        let _ = w.send(no_space.as_ref().map(StorageError::duplicate));
                    }
                })
                .detach();
            }
            let (tx, rx) = oneshot::channel();
            self.flush_waiters.borrow_mut().push(tx);
            if let Ok(Some(e)) = rx.await {
                return Err(e);
            }
        }
    }

    /// Bytes sealed but not yet written (queued or in flight).
    fn unwritten_bytes(&self) -> usize {
        let queued: usize = self
            .appender
            .borrow()
            .queue
            .iter()
            .map(|w| w.buf.len())
            .sum();
        queued + self.tracker.borrow().unwritten_bytes
    }

    /// Write-behind: submits sealed full buffers right away (synchronously, from the
    /// append path) so the disk works while later batches are still being copied.
    /// Leaves in the queue, for the next flush round, whatever must wait: anything
    /// behind a barrier write still in flight, or a write that needs the file created
    /// or preallocated first.
    fn submit_ready(&self) {
        loop {
            let w = {
                let mut app = self.appender.borrow_mut();
                let Some(front) = app.queue.front() else {
                    return;
                };
                if front.barrier || self.tracker.borrow().barrier_in_flight {
                    return;
                }
                let end = front.file_pos + front.buf.len() as u64;
                if front.seg.file.borrow().is_none() || end > front.seg.allocated.get() {
                    drop(app);
                    self.schedule_background();
                    return;
                }
                app.queue.pop_front().expect("front exists")
            };
            let file = w.seg.file.borrow().clone().expect("checked above");
            self.submit(w, file, false);
        }
    }

    /// Starts one O_DIRECT write as its own task; `complete` records the result.
    /// `dsync`: `file` is the O_DSYNC handle.
    fn submit(&self, w: PendingWrite, file: Rc<DmaFile>, dsync: bool) {
        let me = self.me.upgrade().expect("a PartitionLog lives in an Rc");
        let seq = {
            let mut t = self.tracker.borrow_mut();
            let seq = t.next_seq;
            t.next_seq += 1;
            t.in_flight.push_back(InFlight {
                seq,
                seg: w.seg.clone(),
                logical_end: w.logical_end,
                done: false,
                dsync,
            });
            t.barrier_in_flight |= w.barrier;
            t.unwritten_bytes += w.buf.len();
            seq
        };
        glommio::spawn_local(async move {
            let len = w.buf.len();
            let result = file.write_at(w.buf, w.file_pos).await;
            let result = match result {
                Ok(n) if n == len => Ok(()),
                Ok(n) => Err(std::io::Error::other(format!("short write {n} of {len}"))),
                Err(e) => Err(e.into()),
            };
            me.complete(
                seq,
                w.barrier,
                len,
                result.map_err(|e| StorageError::io("write", w.seg.path("log"), e)),
            );
        })
        .detach();
    }

    fn complete(&self, seq: u64, barrier: bool, len: usize, result: Result<(), StorageError>) {
        if let Err(e) = result {
            self.failed.borrow_mut().get_or_insert(e);
        }
        let mut wake = Vec::new();
        {
            let mut t = self.tracker.borrow_mut();
            {
                let mut st = self.stats.borrow_mut();
                let st = st.get_or_insert_with(FlushStats::default);
                st.bytes_written += len as u64;
                st.writes += 1;
            }
            t.unwritten_bytes -= len;
            if barrier {
                t.barrier_in_flight = false;
            }
            let front = t.in_flight.front().map_or(seq, |e| e.seq);
            let i = (seq - front) as usize;
            t.in_flight[i].done = true;
            // Only a complete prefix is readable from the file.
            while t.in_flight.front().is_some_and(|e| e.done) {
                let e = t.in_flight.pop_front().expect("front exists");
                e.seg.written.set(e.seg.written.get().max(e.logical_end));
                let mut unsynced = self.unsynced.borrow_mut();
                if !e.dsync && !unsynced.iter().any(|u| Rc::ptr_eq(u, &e.seg)) {
                    unsynced.push(e.seg);
                }
                t.done_prefix = e.seq + 1;
            }
            let done = t.done_prefix;
            let failed = self.failed.borrow().is_some();
            let mut i = 0;
            while i < t.waiters.len() {
                if t.waiters[i].0 < done || failed {
                    wake.push(t.waiters.swap_remove(i).1);
                } else {
                    i += 1;
                }
            }
        }
        for w in wake {
            let _ = w.send(());
        }
        self.cache.borrow_mut().evict(CACHE_BYTES_MAX);
        if barrier {
            self.submit_ready();
        }
    }

    /// Waits until every write submitted before this call is complete.
    async fn wait_submitted(&self) -> Result<(), StorageError> {
        let target = self.tracker.borrow().next_seq;
        loop {
            if let Some(e) = self.failed.borrow().as_ref() {
                return Err(e.duplicate());
            }
            if self.tracker.borrow().done_prefix >= target {
                return Ok(());
            }
            let (tx, rx) = oneshot::channel();
            self.tracker.borrow_mut().waiters.push((target - 1, tx));
            let _ = rx.await;
        }
    }

    /// One round of the flusher: seal the current buffer, submit every queued buffer,
    /// wait for all writes submitted so far, fdatasync if asked.
    async fn run_flush(&self, sync: bool) -> Result<(), StorageError> {
        let (writes, snapshot_end) = {
            let mut app = self.appender.borrow_mut();
            if app.cur.dirty {
                // The next buffer is sized by what this round carried (twice it, up
                // to WRITE_BUFFER_BYTES, or what it carried plus a block if more):
                // steady flushes never reallocate mid-round, so a round of one large
                // batch stays one write, and an idle partition does not pin a large
                // buffer.
                let most = WRITE_BUFFER_BYTES
                    .max(align_up(app.cur.len as u64) as usize + BLOCK_BYTES as usize);
                let capacity = (2 * app.cur.len).clamp(BLOCK_BYTES as usize, most);
                // A sync round of this one buffer (it goes O_DSYNC): steady
                // flush-per-batch traffic, so the next round likely is one too.
                app.split_tail = !(sync && app.queue.is_empty());
                app.rotate(capacity, true);
                // From now until that write completes, no write-behind may start:
                // the next one would share its last block.
                self.tracker.borrow_mut().barrier_in_flight = true;
            }
            (std::mem::take(&mut app.queue), self.log_end.get())
        };
        let config = self.config.borrow().clone();
        let started = std::time::Instant::now();
        let mut synced = None;
        // A sync round whose one write is all that is not yet durable writes it
        // O_DSYNC: durable when it completes (the kernel syncs in its completion), no
        // second round trip for an fdatasync (which io_uring always hands to a worker
        // thread). With more writes, one fdatasync for all is cheaper than a sync each.
        let dsync = sync
            && writes.len() == 1
            && self.unsynced.borrow().is_empty()
            && self.tracker.borrow().in_flight.is_empty();
        // No barrier can be in flight here: only rounds submit barriers and every
        // round waits for its writes. The queued writes are disjoint from each other
        // and from the write-behind ones (see `Appender::rotate`).
        let count = writes.len();
        let mut writes = writes.into_iter();
        let mut i = 0;
        while let Some(w) = writes.next() {
            i += 1;
            // Space comes first: a write that cannot get it goes back to the queue
            // with everything after it, nothing is lost and nothing poisoned.
            let file = match self.reserve(&w, &config).await {
                Ok(file) => file,
                Err(e) if e.is_no_space() => {
                    self.wait_submitted().await?;
                    let mut app = self.appender.borrow_mut();
                    for back in std::iter::once(w).chain(writes).rev() {
                        app.queue.push_front(back);
                    }
                    // The round's barrier write (its last) was not submitted.
                    self.tracker.borrow_mut().barrier_in_flight = false;
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            let barrier = w.barrier;
            let dsync_file = if dsync {
                self.dsync_file(&w.seg).await
            } else {
                None
            };
            match dsync_file {
                Some(f) => self.submit(w, f, true),
                None => self.submit(w, file, false),
            }
            if barrier && i < count {
                // A barrier write put back by an out-of-space round shares its last
                // block with the next write of this round: it must land first.
                self.wait_submitted().await?;
            }
        }
        self.wait_submitted().await?;
        // Sealed segments give back their unused preallocation.
        let untrimmed: Vec<Rc<Segment>> = self
            .segments
            .borrow()
            .iter()
            .filter(|s| s.sealed.get() && !s.trimmed.get() && s.is_fully_written())
            .cloned()
            .collect();
        for seg in untrimmed {
            seg.close_dsync().await;
            let file = seg.file.borrow().clone();
            if let Some(file) = file {
                file.truncate(align_up(seg.size.get()))
                    .await
                    .map_err(|e| StorageError::io("truncate", seg.path("log"), e))?;
            }
            seg.trimmed.set(true);
        }
        // Everything appended before the snapshot is in the writes above or was before.
        self.written_offset
            .set(self.written_offset.get().max(snapshot_end));
        if sync {
            let synced_to = self.written_offset.get();
            let active = self
                .segments
                .borrow()
                .back()
                .expect("active segment")
                .clone();
            let active_durable_pos = active.written.get();
            let segs = std::mem::take(&mut *self.unsynced.borrow_mut());
            self.unsynced_messages.set(0);
            let syncs = segs.iter().map(|s| {
                let file = s.file.borrow().clone();
                async move {
                    match file {
                        Some(f) => f
                            .fdatasync()
                            .await
                            .map_err(|e| StorageError::io("fdatasync", s.path("log"), e)),
                        None => Ok(()),
                    }
                }
            });
            let sync_started = std::time::Instant::now();
            let any = !segs.is_empty();
            for r in futures::future::join_all(syncs).await {
                r?;
            }
            // Nothing to sync: the round's write went O_DSYNC.
            synced = any.then(|| sync_started.elapsed());
            self.durable_offset
                .set(self.durable_offset.get().max(synced_to));
            // Bound recovery time of the active segment: its index is written every
            // time it grew by a quarter (at least ACTIVE_INDEX_PERSIST_ENTRIES), so
            // the rewrites cost O(1) amortized per entry.
            let persisted = active.persisted_entries.get();
            let grown = active.index.borrow().len().saturating_sub(persisted);
            if !active.sealed.get() && grown >= ACTIVE_INDEX_PERSIST_ENTRIES.max(persisted / 4) {
                // Only recovery time depends on it: a failure (a full disk) is retried
                // at the next growth step and never fails the appends of this round.
                if let Err(e) = active.persist_index_upto(active_durable_pos) {
                    tracing::warn!(error = %e, "could not persist the active segment's index");
                }
            }
        }
        {
            let mut st = self.stats.borrow_mut();
            let st = st.get_or_insert_with(FlushStats::default);
            let ns = |d: Duration| (d.as_nanos() as u64).clamp(1_000, 60_000_000_000);
            st.round_ns.saturating_record(ns(started.elapsed()));
            if let Some(d) = synced {
                st.fdatasync_ns.saturating_record(ns(d));
            }
        }
        self.cache.borrow_mut().evict(CACHE_BYTES_MAX);
        self.persist_sealed_indexes();
        Ok(())
    }

    /// The file `w` goes to, created and preallocated far enough for it. Preallocation
    /// takes a step ahead; when the disk cannot give the step, just what `w` needs.
    async fn reserve(
        &self,
        w: &PendingWrite,
        config: &LogConfig,
    ) -> Result<Rc<DmaFile>, StorageError> {
        let file = self.ensure_file(&w.seg).await?;
        let end = w.file_pos + w.buf.len() as u64;
        let allocated = w.seg.allocated.get();
        if end <= allocated {
            return Ok(file);
        }
        let step = allocated.clamp(PREALLOCATE_BYTES_MIN, PREALLOCATE_BYTES);
        let target = end.max((allocated + step).min(align_up(config.segment_bytes)));
        // Not keep_size: writes inside the file size into preallocated (unwritten)
        // extents are not "extending" writes, which ext4 cannot do without blocking
        // (io_uring would punt each one to a worker). The logical end is found by
        // scanning on recovery anyway.
        let mut result = file.pre_allocate(target, false).await;
        let mut got = target;
        if result.is_err() && target > end {
            result = file.pre_allocate(end, false).await;
            got = end;
        }
        result.map_err(|e| StorageError::io("fallocate", w.seg.path("log"), e))?;
        w.seg.allocated.set(got);
        Ok(file)
    }

    /// The segment's O_DSYNC handle, opened on first use (after `ensure_file` created
    /// the file). `None` if the shard has no handle slot left (`DSYNC_HANDLES_MAX`;
    /// the first partitions to flush alone keep theirs until their segment rolls) or
    /// it cannot be opened: the caller writes through the plain handle and fdatasyncs.
    async fn dsync_file(&self, seg: &Rc<Segment>) -> Option<Rc<DmaFile>> {
        if let Some(f) = seg.dsync_file.borrow().as_ref().and_then(|h| h.file()) {
            return Some(f);
        }
        // A closing or deleted log: its directory may be going away (and glommio's
        // open cannot survive the file vanishing mid-open).
        if self.closed.get() || self.failed.borrow().is_some() {
            return None;
        }
        let mut slot = DsyncHandle::reserve()?;
        let path = seg.path("log");
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DSYNC)
            .dma_open(&path)
            .await
        {
            Ok(f) => {
                let f = Rc::new(f);
                slot.set(f.clone());
                *seg.dsync_file.borrow_mut() = Some(slot);
                Some(f)
            }
            Err(e) => {
                tracing::debug!(error = %e, path = %path.display(), "no O_DSYNC handle");
                None
            }
        }
    }

    /// The segment's file, created (and the directory synced) on first use.
    async fn ensure_file(&self, seg: &Rc<Segment>) -> Result<Rc<DmaFile>, StorageError> {
        if let Some(f) = seg.file.borrow().as_ref() {
            return Ok(f.clone());
        }
        let path = seg.path("log");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .dma_open(&path)
            .await
            .map_err(|e| StorageError::io("create", &path, e))?;
        // The new name must survive a crash before any batch in it is acknowledged
        // durable; through io_uring, so a partition's first write does not stall the
        // shard.
        sync_dir_async(&self.dir).await?;
        let file = Rc::new(file);
        *seg.file.borrow_mut() = Some(file.clone());
        Ok(file)
    }

    /// Indexes are an optimisation (recovery rebuilds a missing one): a failure to
    /// write one (a full disk) is logged and retried after the next round.
    fn persist_sealed_indexes(&self) {
        let segs: Vec<_> = self.segments.borrow().iter().cloned().collect();
        for s in segs {
            if s.sealed.get() && s.index_dirty.get() && s.is_fully_written() {
                if let Err(e) = s.persist_index() {
                    tracing::warn!(error = %e, "could not persist a sealed segment's index");
                    return;
                }
            }
        }
    }

    /// Returns whole batches starting at the batch containing `offset`, at least one
    /// batch even if it exceeds `max_bytes`. `offset == log_end_offset` gives no batches.
    pub async fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadResult, StorageError> {
        self.read_below(offset, max_bytes, i64::MAX).await
    }

    /// `read`, without batches whose last offset is at or past `limit` (a replicated
    /// partition's consumers see only what is below the high watermark).
    pub async fn read_below(
        &self,
        offset: i64,
        max_bytes: usize,
        limit: i64,
    ) -> Result<ReadResult, StorageError> {
        let mut batches = self.read_batches(offset, max_bytes).await?;
        if let Some(cut) = batches.iter().position(|b| b.last_offset >= limit) {
            batches.truncate(cut);
        }
        let mut chunks = Vec::with_capacity(batches.len() * 2);
        for b in batches {
            chunks.extend(b.chunks.into_iter().flatten());
        }
        Ok(ReadResult {
            chunks,
            log_start_offset: self.log_start.get(),
            log_end_offset: self.log_end.get(),
        })
    }

    pub(crate) async fn read_batches(
        &self,
        offset: i64,
        max_bytes: usize,
    ) -> Result<Vec<ReadBatch>, StorageError> {
        if self.closed.get() {
            return Err(StorageError::Closed);
        }
        let (start, end) = (self.log_start.get(), self.log_end.get());
        if offset < start || offset > end {
            return Err(StorageError::OffsetOutOfRange { offset, start, end });
        }
        if offset == end {
            return Ok(Vec::new());
        }
        {
            let cache = self.cache.borrow();
            if cache.first_offset().is_some_and(|first| first <= offset) {
                return Ok(cache.read(offset, max_bytes));
            }
        }
        // Below the cache: on disk. A batch may span to the next segment only if the
        // offset sits in a gap, so try segments from the one containing `offset` on.
        let segs: Vec<Rc<Segment>> = {
            let segments = self.segments.borrow();
            let i = segments
                .partition_point(|s| s.base_offset <= offset)
                .saturating_sub(1);
            segments.iter().skip(i).cloned().collect()
        };
        let mut out: Vec<ReadBatch> = Vec::new();
        let mut next = offset;
        for seg in segs {
            let found = self.read_segment(&seg, next, max_bytes).await?;
            let Some(last) = found.last() else {
                if next < seg.next_offset.get() && seg.written.get() < seg.size.get() {
                    // Its next batch is not all on disk yet; it is in the cache (never
                    // evicted unwritten), not in a later segment.
                    self.extend_from_cache(&mut out, next, max_bytes);
                    break;
                }
                continue;
            };
            next = last.last_offset + 1;
            let only_empty = found.iter().all(|b| b.empty);
            out.extend(found);
            if next < seg.next_offset.get() && seg.written.get() < seg.size.get() {
                // Stopped at the written end: the rest is in the cache.
                let left = max_bytes.saturating_sub(out.iter().map(|b| b.len()).sum());
                if left > 0 || only_empty {
                    self.extend_from_cache(&mut out, next, left);
                }
                break;
            }
            if !only_empty || next < seg.next_offset.get() {
                break;
            }
            // Only empty batches so far (their records were compacted away): go on, so
            // the response carries records. librdkafka counts a fetch without any
            // record as "message too large" and, after ten, gives up.
            let cache = self.cache.borrow();
            if cache.first_offset().is_some_and(|first| first <= next) {
                out.extend(cache.read(next, max_bytes));
                break;
            }
        }
        Ok(out)
    }

    /// Appends the cached batches from `offset` (up to `max_bytes`) if the cache starts
    /// at or below it; into an empty `out` at least one.
    /// Only whole batches within `max_bytes` go after others already in `out`.
    fn extend_from_cache(&self, out: &mut Vec<ReadBatch>, offset: i64, max_bytes: usize) {
        let cache = self.cache.borrow();
        if !cache.first_offset().is_some_and(|first| first <= offset) {
            return;
        }
        let mut left = max_bytes;
        for (i, b) in cache.read(offset, max_bytes).into_iter().enumerate() {
            let len = b.len();
            if len > left && !(i == 0 && out.is_empty()) {
                break;
            }
            left = left.saturating_sub(len);
            out.push(b);
        }
    }

    /// DMA-reads whole batches of `seg` from the batch containing `offset`. The data is
    /// copied once from glommio's aligned read buffer into `Bytes` (that buffer is
    /// `Rc`-owned and cannot cross shards); acceptable for now for cold reads.
    async fn read_segment(
        &self,
        seg: &Rc<Segment>,
        offset: i64,
        max_bytes: usize,
    ) -> Result<Vec<ReadBatch>, StorageError> {
        let Some(file) = seg.file.borrow().clone() else {
            return Ok(Vec::new());
        };
        let (mut pos, _) = seg.lookup(offset);
        let limit = seg.written.get();
        let mut out: Vec<ReadBatch> = Vec::new();
        let mut total = 0usize;
        let mut need = 0usize;
        let corrupt = |pos: u64, what: &str| {
            StorageError::CorruptBatch(format!("{:?} at {pos}: {what}", seg.path("log")))
        };
        while pos < limit {
            let want = max_bytes
                .saturating_sub(total)
                .clamp(READ_WINDOW_BYTES_MIN, READ_WINDOW_BYTES_MAX)
                .max(need);
            let window = (limit - pos).min(want as u64) as usize;
            let rr = file
                .read_at(pos, window)
                .await
                .map_err(|e| StorageError::io("read", seg.path("log"), e))?;
            if rr.len() < window {
                return Err(corrupt(pos, "short read below the written end"));
            }
            let data: &[u8] = &rr;
            // Parse in the DMA buffer; copy out only the batches served, once.
            let mut served: Vec<(usize, usize, BatchHeader)> = Vec::new();
            let mut p = 0usize;
            let mut done = false;
            while let Some(len) = claimed_len(&data[p..]) {
                if len < BATCH_HEADER_LEN as i64 || len as u64 > BATCH_BYTES_MAX {
                    return Err(corrupt(pos + p as u64, "bad batch length"));
                }
                let len = len as usize;
                if data.len() - p < len {
                    break;
                }
                let h = BatchHeader::parse(&data[p..p + len])?;
                if h.base_offset < seg.base_offset
                    || h.last_offset() >= seg.next_offset.get()
                    || h.last_offset() < h.base_offset
                {
                    // The index or the file is not what recovery left: refuse, never
                    // serve bytes from the wrong place.
                    return Err(corrupt(pos + p as u64, "batch offsets outside the segment"));
                }
                if h.last_offset() >= offset {
                    if (!out.is_empty() || !served.is_empty()) && total + len > max_bytes {
                        done = true;
                        break;
                    }
                    total += len;
                    served.push((p, len, h));
                }
                p += len;
            }
            if let (Some(first), Some(last)) = (served.first(), served.last()) {
                let base = first.0;
                let copied = Bytes::copy_from_slice(&data[base..last.0 + last.1]);
                self.read_copied_bytes
                    .set(self.read_copied_bytes.get() + copied.len() as u64);
                for (at, len, h) in served {
                    out.push(ReadBatch {
                        last_offset: h.last_offset(),
                        max_timestamp: h.max_timestamp,
                        empty: h.records_count == 0,
                        chunks: [Some(copied.slice(at - base..at - base + len)), None],
                    });
                }
            }
            if done || total >= max_bytes {
                break;
            }
            if p == 0 {
                // The next batch is larger than the window.
                need = claimed_len(&data).map_or(window + 1, |l| l as usize);
                if need <= window {
                    return Err(corrupt(pos, "truncated batch"));
                }
                if pos + need as u64 > limit {
                    // Its tail is not written yet (it is still in the write path and the
                    // cache): stop at the written end. Re-reading the same window until
                    // `limit` (fixed for this read) grew was an endless loop that hung
                    // the fetch, and with it the consumer's connection.
                    break;
                }
            }
            pos += p as u64;
        }
        Ok(out)
    }

    /// The first record at or after the log start whose timestamp is >= `ts`, as
    /// Some((offset, its timestamp)) (Kafka's ListOffsets by timestamp). Only the batch
    /// holding it is decoded (decompressed if need be): the indexes and batch headers
    /// find that batch.
    pub async fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>, StorageError> {
        let segs: Vec<Rc<Segment>> = self.segments.borrow().iter().cloned().collect();
        for seg in segs {
            if seg.max_timestamp.get() < ts {
                continue;
            }
            let mut offset = seg.time_lookup(ts).max(self.log_start.get());
            while offset < seg.next_offset.get() && offset < self.log_end.get() {
                let batches = self.read_batches(offset, 256 << 10).await?;
                let Some(last) = batches.last() else { break };
                let next = last.last_offset + 1;
                let start = self.log_start.get();
                for b in batches.iter().filter(|b| b.max_timestamp >= ts && !b.empty) {
                    if let Some(hit) = first_record_at_or_after(b, ts, start)? {
                        return Ok(Some(hit));
                    }
                }
                offset = next;
            }
        }
        Ok(None)
    }

    /// ListOffsets MAX_TIMESTAMP (KIP-734): the first record holding the log's largest
    /// timestamp, as (offset, timestamp); `None` for a log without timestamps.
    pub async fn max_timestamp_offset(&self) -> Result<Option<(i64, i64)>, StorageError> {
        let max = self
            .segments
            .borrow()
            .iter()
            .map(|s| s.max_timestamp.get())
            .max()
            .unwrap_or(-1);
        if max < 0 {
            return Ok(None);
        }
        self.offset_for_timestamp(max).await
    }

    /// DeleteRecords: moves the log start to `offset` (<= log end), persisting it, and
    /// deletes the whole segments below it. Returns the new log start offset.
    pub async fn delete_records_before(&self, offset: i64) -> Result<i64, StorageError> {
        self.check_usable()?;
        let (start, end) = (self.log_start.get(), self.log_end.get());
        if offset > end || offset < 0 {
            return Err(StorageError::OffsetOutOfRange { offset, start, end });
        }
        if offset > start {
            self.set_log_start(offset).await?;
        }
        self.delete_segments_below_start().await?;
        Ok(self.log_start.get())
    }

    /// Drops every batch at and after `offset` (a follower's or deposed leader's
    /// divergent tail, KIP-101): the segments after the one holding `offset`, that
    /// segment's tail, their index entries and cached batches. A batch straddling
    /// `offset` goes whole, so the log end becomes its base offset (truncation points
    /// from OffsetForLeaderEpoch are batch boundaries). `offset >= log end` does
    /// nothing. Below the first segment the log is emptied and restarts at `offset`
    /// (`truncate_fully_and_start_at`); below the log start but inside the first
    /// segment the log start moves back to the new end (Kafka's `truncateTo`).
    ///
    /// Durable before returning: a crash afterwards cannot bring the dropped batches
    /// back. While it runs, appends and maintenance are refused (`Truncating`) and
    /// flushes wait; a read racing with it may still return batches being dropped.
    /// A failure part-way poisons the log (`Io` until reopened, recovery decides).
    pub async fn truncate_to(&self, offset: i64) -> Result<(), StorageError> {
        self.check_usable()?;
        let (start, end) = (self.log_start.get(), self.log_end.get());
        if offset < 0 {
            return Err(StorageError::OffsetOutOfRange { offset, start, end });
        }
        if offset >= end {
            return Ok(());
        }
        let first_base = self
            .segments
            .borrow()
            .front()
            .expect("a segment")
            .base_offset;
        if offset < first_base {
            return self.truncate_fully_and_start_at(offset).await;
        }
        let guard = self.begin_exclusive().await?;
        let result = self.truncate_tail(offset, &guard).await;
        if let Err(e) = &result {
            if guard.io_pending.replace(false) {
                // Memory and disk disagree: only recovery can tell what is left.
                self.failed.borrow_mut().get_or_insert(e.duplicate());
            }
        }
        drop(guard);
        result
    }

    /// Deletes the whole log and restarts it, empty, at `offset` (log start = log end =
    /// `offset`): for a follower whose log end is below the leader's log start, and for
    /// `truncate_to` below the first segment. Durable before returning; a crash part-way
    /// leaves the old log or an empty one starting at the old log start (a follower
    /// then fetches from there and lands here again).
    pub async fn truncate_fully_and_start_at(&self, offset: i64) -> Result<(), StorageError> {
        self.check_usable()?;
        if !(0..OFFSET_MAX).contains(&offset) {
            let (start, end) = (self.log_start.get(), self.log_end.get());
            return Err(StorageError::OffsetOutOfRange { offset, start, end });
        }
        let guard = self.begin_exclusive().await?;
        // Memory first, in one synchronous step; then the disk follows.
        let seg = Rc::new(Segment::new(&self.dir, offset, now_ms()));
        let old: Vec<Rc<Segment>> = std::mem::replace(
            &mut *self.segments.borrow_mut(),
            VecDeque::from([seg.clone()]),
        )
        .into();
        self.appender.borrow_mut().cur = WriteBuf {
            seg,
            file_pos: 0,
            buf: glommio::allocate_dma_buffer(BLOCK_BYTES as usize),
            len: 0,
            dirty: false,
        };
        *self.cache.borrow_mut() = BatchCache::default();
        self.unsynced.borrow_mut().clear();
        self.unsynced_messages.set(0);
        for cell in [
            &self.log_start,
            &self.log_end,
            &self.written_offset,
            &self.durable_offset,
            &self.clean_end,
        ] {
            cell.set(offset);
        }
        let epochs_changed = self.epochs.borrow_mut().clear();
        self.sync_epoch_latest();
        guard.io_pending.set(true);
        let result = async {
            for seg in &old {
                self.remove_segment_files(seg).await;
            }
            // No producer has batches left in an emptied log.
            self.remove_producer_snapshots(|_| true);
            if epochs_changed {
                self.persist_epochs().await?;
            }
            sync_dir(&self.dir)?;
            write_replace_durable(
                &self.dir.join(LOG_START_CHECKPOINT),
                format!("{offset}\n").as_bytes(),
            )?;
            super::segment::write_replace(
                &self.dir.join(CLEANER_CHECKPOINT),
                format!("{offset}\n").as_bytes(),
            )
        }
        .await;
        if let Err(e) = &result {
            self.failed.borrow_mut().get_or_insert(e.duplicate());
        }
        guard.io_pending.set(false);
        result
    }

    /// The part of `truncate_to` for `first segment base <= offset < log end`, run
    /// with the log to itself (nothing unwritten, nothing in flight, no flush round).
    async fn truncate_tail(&self, offset: i64, guard: &Exclusive<'_>) -> Result<(), StorageError> {
        let interval = u64::from(self.config.borrow().index_interval_bytes);
        // Reads first (the file is fully written): where the cut falls, the kept part
        // of that segment re-indexed, and the block the next write starts in.
        let cut_seg = {
            let segs = self.segments.borrow();
            let i = segs.partition_point(|s| s.base_offset <= offset).max(1) - 1;
            segs[i].clone()
        };
        let (cut_pos, new_end) = self.find_batch(&cut_seg, offset).await?;
        let (kept, scan_from) = cut_seg.prefix_before(cut_pos);
        let kept = Rc::new(kept);
        let file = cut_seg.file.borrow().clone();
        let mut tail = glommio::allocate_dma_buffer(BLOCK_BYTES as usize);
        let tail_pos = align_down(cut_pos);
        let tail_len = (cut_pos - tail_pos) as usize;
        if let Some(file) = &file {
            let end = scan(&kept, file, cut_pos, scan_from, interval).await?;
            if end != cut_pos || kept.next_offset.get() != new_end {
                return Err(StorageError::CorruptBatch(format!(
                    "{:?}: rescan before a truncation at {offset} ended at byte {end} \
                     offset {}, expected byte {cut_pos} offset {new_end}",
                    cut_seg.path("log"),
                    kept.next_offset.get()
                )));
            }
            if tail_len > 0 {
                read_tail_block(
                    &file,
                    &cut_seg,
                    tail_pos,
                    &mut tail.as_bytes_mut()[..tail_len],
                )
                .await?;
            }
        } else {
            assert_eq!(cut_pos, 0, "a segment with bytes has a file");
        }
        cut_seg.close_dsync().await;
        // Memory, in one synchronous step: from here readers see the shorter log.
        assert!(self.truncating.get() && self.flushing.get());
        kept.written.set(cut_pos);
        kept.allocated.set(align_up(cut_pos));
        kept.trimmed.set(true);
        kept.sealed.set(false);
        kept.index_dirty.set(true);
        *kept.file.borrow_mut() = file.clone();
        let dropped: Vec<Rc<Segment>> = {
            let mut segs = self.segments.borrow_mut();
            let i = segs
                .iter()
                .position(|s| Rc::ptr_eq(s, &cut_seg))
                .expect("no other task changes segments while truncating");
            let dropped = segs.split_off(i + 1).into();
            *segs.back_mut().expect("the cut segment") = kept.clone();
            dropped
        };
        {
            let mut cache = self.cache.borrow_mut();
            while cache
                .entries
                .back()
                .is_some_and(|e| e.base_offset >= new_end)
            {
                let e = cache.entries.pop_back().expect("back exists");
                cache.bytes -= e.batch.len();
            }
            for e in cache
                .entries
                .iter_mut()
                .filter(|e| Rc::ptr_eq(&e.seg, &cut_seg))
            {
                e.seg = kept.clone();
            }
        }
        {
            let mut unsynced = self.unsynced.borrow_mut();
            let had_cut = unsynced.iter().any(|u| Rc::ptr_eq(u, &cut_seg));
            unsynced
                .retain(|u| !Rc::ptr_eq(u, &cut_seg) && !dropped.iter().any(|d| Rc::ptr_eq(u, d)));
            if had_cut {
                unsynced.push(kept.clone());
            }
        }
        self.appender.borrow_mut().cur = WriteBuf {
            seg: kept.clone(),
            file_pos: tail_pos,
            buf: tail,
            len: tail_len,
            dirty: false,
        };
        self.log_end.set(new_end);
        self.written_offset
            .set(self.written_offset.get().min(new_end));
        self.durable_offset
            .set(self.durable_offset.get().min(new_end));
        let clean_end = self.clean_end.get();
        self.clean_end.set(clean_end.min(new_end));
        let log_start = self.log_start.get();
        self.log_start.set(log_start.min(new_end));
        let epochs_changed = self.epochs.borrow_mut().truncate_from_end(new_end);
        self.sync_epoch_latest();
        // Then the disk: later segments' names, stale index files, the tail, epochs.
        guard.io_pending.set(true);
        for seg in &dropped {
            self.remove_segment_files(seg).await;
        }
        for ext in ["index", "timeindex"] {
            let _ = std::fs::remove_file(kept.path(ext));
        }
        // Durably gone (the dir sync) before appends can reach those offsets again.
        self.remove_producer_snapshots(|o| o > new_end);
        sync_dir(&self.dir)?;
        if let Some(file) = &file {
            repair_tail(file, cut_pos, &kept.path("log")).await?;
        }
        if new_end < log_start {
            write_replace_durable(
                &self.dir.join(LOG_START_CHECKPOINT),
                format!("{new_end}\n").as_bytes(),
            )?;
        }
        if epochs_changed {
            self.persist_epochs().await?;
        }
        if new_end < clean_end {
            super::segment::write_replace(
                &self.dir.join(CLEANER_CHECKPOINT),
                format!("{new_end}\n").as_bytes(),
            )?;
        }
        guard.io_pending.set(false);
        Ok(())
    }

    /// Position and base offset of the batch holding `offset` in a fully written
    /// segment; (size, next offset) when `offset` is past its last batch.
    async fn find_batch(&self, seg: &Rc<Segment>, offset: i64) -> Result<(u64, i64), StorageError> {
        if offset >= seg.next_offset.get() {
            return Ok((seg.size.get(), seg.next_offset.get()));
        }
        let file = seg.file.borrow().clone();
        let Some(file) = file else {
            return Ok((0, seg.base_offset)); // nothing written: an empty segment
        };
        let corrupt = |pos: u64, what: &str| {
            StorageError::CorruptBatch(format!("{:?} at {pos}: {what}", seg.path("log")))
        };
        let (mut pos, _) = seg.lookup(offset);
        let limit = seg.size.get();
        while pos < limit {
            let data = file
                .read_at(pos, BATCH_HEADER_LEN)
                .await
                .map_err(|e| StorageError::io("read", seg.path("log"), e))?;
            let h = BatchHeader::parse(&data)?;
            if (h.total_len() as u64) < BATCH_HEADER_LEN as u64 || h.last_offset() < h.base_offset {
                return Err(corrupt(pos, "bad batch header"));
            }
            if h.last_offset() >= offset {
                return Ok((pos, h.base_offset));
            }
            pos += h.total_len() as u64;
        }
        Err(corrupt(
            pos,
            "no batch holds an offset below the segment end",
        ))
    }

    /// Unlinks a segment no longer in the list and closes its file (readers may still
    /// hold it; the last `Rc` closes it then). The caller syncs the directory.
    async fn remove_segment_files(&self, seg: &Rc<Segment>) {
        seg.close_dsync().await;
        let file = seg.file.borrow_mut().take();
        seg.remove_files();
        if let Some(file) = file {
            if let Ok(f) = Rc::try_unwrap(file) {
                let _ = f.close().await;
            }
        }
    }

    /// Takes the log for a truncation: refuses appends, waits until everything
    /// appended is written and no write or flush round is in flight, then holds the
    /// flusher role (flushes wait) until the guard drops.
    async fn begin_exclusive(&self) -> Result<Exclusive<'_>, StorageError> {
        if self.truncating.replace(true) {
            return Err(StorageError::Truncating);
        }
        self.truncations.set(self.truncations.get() + 1);
        let guard = Exclusive {
            log: self,
            flusher: Cell::new(false),
            io_pending: Cell::new(false),
        };
        loop {
            self.flush_to(self.log_end.get(), false).await?;
            self.wait_submitted().await?;
            if self.flushing.get() {
                let (tx, rx) = oneshot::channel();
                self.flush_waiters.borrow_mut().push(tx);
                let _ = rx.await;
                continue;
            }
            let idle = {
                let app = self.appender.borrow();
                let t = self.tracker.borrow();
                app.queue.is_empty() && !app.cur.dirty && t.in_flight.is_empty()
            };
            if idle && self.written_offset.get() >= self.log_end.get() {
                break;
            }
        }
        self.flushing.set(true);
        guard.flusher.set(true);
        Ok(guard)
    }

    async fn set_log_start(&self, offset: i64) -> Result<(), StorageError> {
        assert!(
            offset >= self.log_start.get() && offset <= self.log_end.get(),
            "log start only moves forward within the log"
        );
        // Durable before anything is deleted: a crash must never resurrect records.
        write_replace_durable(
            &self.dir.join(LOG_START_CHECKPOINT),
            format!("{offset}\n").as_bytes(),
        )?;
        self.log_start.set(offset);
        // A snapshot below the log start covers batches retention or DeleteRecords
        // removed: a rebuild cannot replay from it.
        self.remove_producer_snapshots(|o| o < offset);
        if self.epochs.borrow_mut().truncate_from_start(offset) {
            self.persist_epochs().await?;
        }
        Ok(())
    }

    async fn delete_segments_below_start(&self) -> Result<(), StorageError> {
        loop {
            let victim = {
                let segs = self.segments.borrow();
                match segs.front() {
                    Some(s)
                        if segs.len() > 1
                            && s.next_offset.get() <= self.log_start.get()
                            && s.is_fully_written() =>
                    {
                        Some(s.clone())
                    }
                    _ => None,
                }
            };
            let Some(seg) = victim else { return Ok(()) };
            self.remove_front_segment(&seg).await?;
        }
    }

    async fn remove_front_segment(&self, seg: &Rc<Segment>) -> Result<(), StorageError> {
        let popped = self
            .segments
            .borrow_mut()
            .pop_front()
            .expect("segment to remove");
        assert!(Rc::ptr_eq(&popped, seg));
        self.cache.borrow_mut().drop_segment(seg);
        self.unsynced.borrow_mut().retain(|s| !Rc::ptr_eq(s, seg));
        seg.close_dsync().await;
        let file = seg.file.borrow_mut().take();
        seg.remove_files();
        if let Some(file) = file {
            // Readers may still hold it; the last Rc closes it.
            if let Ok(f) = Rc::try_unwrap(file) {
                let _ = f.close().await;
            }
        }
        sync_dir(&self.dir)
    }

    /// Retention by size and time: deletes whole sealed segments from the front while
    /// the rest still exceeds `retention.bytes`, or whose newest batch is older than
    /// `retention.ms`. Never the active segment. Call periodically.
    pub async fn enforce_retention(&self) -> Result<(), StorageError> {
        if self.truncating.get() {
            return Ok(()); // the next period retries
        }
        self.check_usable()?;
        let config = self.config.borrow().clone();
        if !config.cleanup_delete {
            return Ok(()); // compact-only topics keep every key's last record forever
        }
        let now = now_ms();
        loop {
            let victim = {
                let segs = self.segments.borrow();
                let total: u64 = segs.iter().map(|s| s.size.get()).sum();
                match segs.front() {
                    Some(s) if segs.len() > 1 && s.is_fully_written() => {
                        let by_size = config.retention_bytes >= 0
                            && total - s.size.get() >= config.retention_bytes as u64;
                        let by_time = config.retention_ms >= 0
                            && now - s.max_timestamp.get() > config.retention_ms;
                        (by_size || by_time).then(|| s.clone())
                    }
                    _ => None,
                }
            };
            let Some(seg) = victim else { break };
            let next_start = seg.next_offset.get();
            if next_start > self.log_start.get() {
                self.set_log_start(next_start).await?;
            }
            self.remove_front_segment(&seg).await?;
        }
        Ok(())
    }

    /// Compaction (`cleanup.policy=compact`): when the uncompacted share of the sealed
    /// segments reaches `min.cleanable.dirty.ratio`, or an uncompacted segment's first
    /// batch is older than `max.compaction.lag.ms`, keeps only each key's newest record
    /// in every sealed segment (the active segment is never touched) and drops
    /// tombstones older than `delete.retention.ms`. Segments holding records younger
    /// than `min.compaction.lag.ms` (and all after them) are left alone. The key map is
    /// bounded by `dedupe_buffer_bytes`: with more keys than fit, a pass cleans the log
    /// up to where the map filled and the next pass goes on from there. Call
    /// periodically; one pass at a time per log (a second call returns at once).
    ///
    /// Each changed segment is written to `<base>.cleaned`, fdatasync'd, and renamed
    /// over its `.log` (stale index files removed first, rebuilt after), then swapped in
    /// memory in one synchronous step. Readers already inside the old segment finish on
    /// the old file; a crash leaves either the old or the new file whole, and
    /// `open` deletes a leftover `.cleaned`.
    pub async fn compact(&self) -> Result<CompactStats, StorageError> {
        if self.truncating.get() {
            return Ok(CompactStats::default()); // the next period retries
        }
        self.check_usable()?;
        let config = self.config.borrow().clone();
        if !config.cleanup_compact || self.compacting.replace(true) {
            return Ok(CompactStats::default());
        }
        let result = self.compact_pass(&config).await;
        self.compacting.set(false);
        result
    }

    async fn compact_pass(&self, config: &LogConfig) -> Result<CompactStats, StorageError> {
        // Kafka's first uncleanable offset: the active segment, or the first segment
        // with a record younger than the compaction lag.
        let lag_horizon_ms = now_ms().saturating_sub(config.min_compaction_lag_ms.max(0));
        let sealed: Vec<Rc<Segment>> = {
            let segs = self.segments.borrow();
            segs.iter()
                .take(segs.len() - 1)
                .take_while(|s| s.sealed.get() && s.is_fully_written() && s.file.borrow().is_some())
                .take_while(|s| {
                    config.min_compaction_lag_ms <= 0 || s.max_timestamp.get() <= lag_horizon_ms
                })
                .cloned()
                .collect()
        };
        let mut stats = CompactStats::default();
        let Some(last) = sealed.last() else {
            return Ok(stats);
        };
        let clean_end = self.clean_end.get();
        let total: u64 = sealed.iter().map(|s| s.size.get()).sum();
        let dirty: u64 = sealed
            .iter()
            .filter(|s| s.next_offset.get() > clean_end)
            .map(|s| s.size.get())
            .sum();
        if dirty == 0 {
            return Ok(stats);
        }
        if (dirty as f64) < config.min_cleanable_dirty_ratio * total as f64
            && !self
                .max_compaction_lag_passed(&sealed, clean_end, config)
                .await?
        {
            return Ok(stats);
        }
        let dirty_end = last.next_offset.get();
        let mut map = compact::OffsetMap::default();
        // The map covers the dirty part from `clean_end` up to `mapped_end`; it always
        // takes at least one batch, so every pass makes progress.
        let mut mapped_end = clean_end;
        'map: for seg in sealed.iter().filter(|s| s.next_offset.get() > clean_end) {
            let mut full = false;
            self.for_each_batch(seg, |raw| {
                if map.bytes() >= config.dedupe_buffer_bytes && mapped_end > clean_end {
                    full = true;
                    return Ok(false);
                }
                let d = compact::decode_batch(raw)?;
                let last = d.header.last_offset();
                // Batches below `clean_end` in the first dirty segment were mapped by
                // earlier passes; mapping them again is harmless but wastes room.
                if last >= clean_end {
                    map.add_batch(&d);
                    mapped_end = mapped_end.max(last + 1);
                }
                Ok(true)
            })
            .await?;
            if full {
                break 'map;
            }
        }
        stats.keys = map.len();
        let retain = compact::Retain {
            map: &map,
            mapped_end,
            tombstone_horizon_ms: now_ms().saturating_sub(config.delete_retention_ms.max(0)),
        };
        for seg in sealed.iter().filter(|s| s.base_offset < mapped_end) {
            stats.bytes_before += seg.size.get();
            match self.compact_segment(seg, &retain, config).await? {
                Some(new) => {
                    stats.segments_rewritten += 1;
                    stats.bytes_after += new;
                }
                None => stats.bytes_after += seg.size.get(),
            }
        }
        // A truncation during the pass may have cut the log below `dirty_end`.
        let dirty_end = dirty_end.min(mapped_end).min(self.log_end.get());
        self.clean_end.set(dirty_end);
        // Not fsync'd: a stale checkpoint only makes the next pass do more work.
        super::segment::write_replace(
            &self.dir.join(CLEANER_CHECKPOINT),
            format!("{dirty_end}\n").as_bytes(),
        )?;
        Ok(stats)
    }

    /// max.compaction.lag.ms (KIP-354): whether a dirty segment's first batch is older
    /// than the lag, which makes the log due for compaction whatever its dirty ratio.
    /// Timestamps of 0 or less (none given) never count, as in Kafka.
    async fn max_compaction_lag_passed(
        &self,
        sealed: &[Rc<Segment>],
        clean_end: i64,
        config: &LogConfig,
    ) -> Result<bool, StorageError> {
        if config.max_compaction_lag_ms == i64::MAX {
            return Ok(false);
        }
        let horizon_ms = now_ms().saturating_sub(config.max_compaction_lag_ms.max(0));
        for seg in sealed.iter().filter(|s| s.next_offset.get() > clean_end) {
            if seg.first_batch_timestamp.get() < 0 && seg.size.get() > 0 {
                // Recovered from its index, which does not keep it: read the first batch.
                let first = self.read_segment(seg, seg.base_offset, 1).await?;
                if let Some(b) = first.first() {
                    seg.first_batch_timestamp.set(b.max_timestamp);
                }
            }
            let ts = seg.first_batch_timestamp.get();
            if ts > 0 && ts < horizon_ms {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Calls `f` with every batch of a fully written segment, in order (read from disk),
    /// until it returns `false`.
    async fn for_each_batch(
        &self,
        seg: &Rc<Segment>,
        mut f: impl FnMut(&[u8]) -> Result<bool, StorageError>,
    ) -> Result<(), StorageError> {
        let mut offset = seg.base_offset;
        while offset < seg.next_offset.get() {
            let batches = self.read_segment(seg, offset, COMPACT_READ_BYTES).await?;
            if batches.is_empty() {
                return Err(StorageError::CorruptBatch(format!(
                    "{:?}: no batch at offset {offset} below the segment end",
                    seg.path("log")
                )));
            }
            for b in batches {
                offset = b.last_offset + 1;
                let more = match b.chunks {
                    [Some(one), None] => f(&one)?,
                    [a, b] => {
                        let joined: Vec<u8> =
                            a.into_iter().chain(b).flat_map(|c| c.to_vec()).collect();
                        f(&joined)?
                    }
                };
                if !more {
                    return Ok(());
                }
            }
            // Decoding is CPU work on the shard: let requests run between reads.
            glommio::executor().yield_if_needed().await;
        }
        Ok(())
    }

    /// Rewrites one sealed segment without the records `retain` drops. Returns the new
    /// size, or `None` when nothing changed (or the segment went away meanwhile).
    async fn compact_segment(
        &self,
        seg: &Rc<Segment>,
        retain: &compact::Retain<'_>,
        config: &LogConfig,
    ) -> Result<Option<u64>, StorageError> {
        let tmp = seg.path(CLEANED_SUFFIX);
        let mut compactor = Some(compact::SegmentCompactor::new(seg.base_offset));
        let mut out: Vec<Bytes> = Vec::new();
        let mut writer = SegmentWriter::create(&tmp).await?;
        let mut offset = seg.base_offset;
        while offset < seg.next_offset.get() {
            let batches = self.read_segment(seg, offset, COMPACT_READ_BYTES).await?;
            if batches.is_empty() {
                writer.abandon().await;
                return Err(StorageError::CorruptBatch(format!(
                    "{:?}: no batch at offset {offset} below the segment end",
                    seg.path("log")
                )));
            }
            for b in batches {
                offset = b.last_offset + 1;
                let joined: Vec<u8> = b
                    .chunks
                    .into_iter()
                    .flatten()
                    .flat_map(|c| c.to_vec())
                    .collect();
                let c = compactor.as_mut().expect("until finish");
                if let Err(e) = c.push(&joined, retain, &mut out) {
                    writer.abandon().await;
                    return Err(e);
                }
            }
            for b in out.drain(..) {
                writer.write(&b).await?;
            }
            glommio::executor().yield_if_needed().await;
        }
        let c = compactor.take().expect("once");
        let changed = c.changed();
        if let Err(e) = c.finish(seg.next_offset.get(), &mut out) {
            writer.abandon().await;
            return Err(e);
        }
        if !changed {
            writer.abandon().await;
            return Ok(None);
        }
        for b in out.drain(..) {
            writer.write(&b).await?;
        }
        let (file, size, batches) = writer.finish().await?;
        // From here to the swap nothing awaits: readers see the old or the new segment.
        let index = self
            .segments
            .borrow()
            .iter()
            .position(|s| Rc::ptr_eq(s, seg));
        let Some(index) = index.filter(|_| !self.closed.get()) else {
            let _ = file.close().await;
            let _ = std::fs::remove_file(&tmp);
            return Ok(None); // deleted by retention / DeleteRecords meanwhile
        };
        let new = Rc::new(Segment::new(
            &self.dir,
            seg.base_offset,
            seg.created_ms.get(),
        ));
        let interval = u64::from(config.index_interval_bytes);
        for b in &batches {
            new.on_batch(b.0, b.1, b.2, b.3, b.4, interval);
        }
        assert_eq!(
            new.next_offset.get(),
            seg.next_offset.get(),
            "compaction keeps the offset range"
        );
        assert_eq!(new.size.get(), size);
        new.written.set(size);
        new.allocated.set(align_up(size));
        new.trimmed.set(true);
        new.sealed.set(true);
        *new.file.borrow_mut() = Some(Rc::new(file));
        for ext in ["index", "timeindex"] {
            let _ = std::fs::remove_file(seg.path(ext));
        }
        std::fs::rename(&tmp, seg.path("log"))
            .map_err(|e| StorageError::io("rename", seg.path("log"), e))?;
        sync_dir(&self.dir)?;
        self.segments.borrow_mut()[index] = new.clone();
        self.cache.borrow_mut().drop_below(seg.next_offset.get());
        self.unsynced.borrow_mut().retain(|s| !Rc::ptr_eq(s, seg));
        new.persist_index()?;
        seg.close_dsync().await;
        let old = seg.file.borrow_mut().take();
        if let Some(old) = old {
            // Readers still inside the old segment hold it; the last Rc closes it.
            if let Ok(f) = Rc::try_unwrap(old) {
                let _ = f.close().await;
            }
        }
        Ok(Some(size))
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

    /// Offsets of the producer-state snapshots in the log's directory, ascending.
    pub fn producer_snapshot_offsets(&self) -> Vec<i64> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let suffix = format!(".{PRODUCER_SNAPSHOT_EXT}");
        let mut offsets: Vec<i64> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let stem = name.to_str()?.strip_suffix(&suffix)?.to_owned();
                (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| stem.parse::<i64>().ok())
                    .flatten()
                    .filter(|o| *o < OFFSET_MAX)
            })
            .collect();
        offsets.sort_unstable();
        offsets
    }

    fn producer_snapshot_path(&self, offset: i64) -> PathBuf {
        self.dir
            .join(super::segment::file_name(offset, PRODUCER_SNAPSHOT_EXT))
    }

    /// The bytes of the snapshot covering the log below `offset` (rare: a rebuild).
    pub fn read_producer_snapshot(&self, offset: i64) -> Result<Vec<u8>, StorageError> {
        let path = self.producer_snapshot_path(offset);
        let len = std::fs::metadata(&path)
            .map_err(|e| StorageError::io("stat", &path, e))?
            .len();
        if len > PRODUCER_SNAPSHOT_BYTES_MAX {
            return Err(StorageError::CorruptBatch(format!(
                "{path:?}: {len} bytes, more than a producer snapshot can hold"
            )));
        }
        std::fs::read(&path).map_err(|e| StorageError::io("read", &path, e))
    }

    /// Removes the snapshots whose offset `doomed` picks; whether any was removed. The
    /// caller syncs the directory where a removal must survive a crash.
    pub fn remove_producer_snapshots(&self, doomed: impl Fn(i64) -> bool) -> bool {
        let mut removed = false;
        for offset in self.producer_snapshot_offsets() {
            if doomed(offset) {
                let path = self.producer_snapshot_path(offset);
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove a producer snapshot");
                } else {
                    removed = true;
                }
            }
        }
        removed
    }

    /// What `write_producer_snapshot` needs along with a snapshot taken now: it lands
    /// only if no truncation started since.
    pub fn producer_snapshot_token(&self) -> u64 {
        self.truncations.get()
    }

    /// Writes `data`, a producer snapshot of the log below `offset` taken when
    /// `producer_snapshot_token()` was `token`, durably (fsync'd, renamed into place,
    /// directory synced), then keeps only the newest `PRODUCER_SNAPSHOTS_KEPT`. Not
    /// written (`Ok(false)`) if a truncation started since the snapshot was taken, the
    /// log no longer holds `offset`, or the log is closed or failed. Runs its I/O
    /// through io_uring: call it from a task, off the append path.
    pub async fn write_producer_snapshot(
        &self,
        offset: i64,
        token: u64,
        data: &[u8],
    ) -> Result<bool, StorageError> {
        let wanted = || {
            self.truncations.get() == token
                && !self.truncating.get()
                && !self.closed.get()
                && self.failed.borrow().is_none()
                && (self.log_start.get()..=self.log_end.get()).contains(&offset)
        };
        if !wanted() {
            return Ok(false);
        }
        let path = self.producer_snapshot_path(offset);
        let written = super::segment::write_replace_durable_async_if(&path, data, wanted).await?;
        if written {
            let offsets = self.producer_snapshot_offsets();
            if offsets.len() > PRODUCER_SNAPSHOTS_KEPT {
                let oldest_kept = offsets[offsets.len() - PRODUCER_SNAPSHOTS_KEPT];
                self.remove_producer_snapshots(|o| o < oldest_kept);
            }
        }
        Ok(written)
    }

    /// The base offset of the active (last) segment: it changes when the log rolls.
    pub fn active_segment_base(&self) -> i64 {
        self.segments
            .borrow()
            .back()
            .expect("at least one segment")
            .base_offset
    }

    /// Removes the whole log directory (DeleteTopics).
    pub async fn delete(&self) -> Result<(), StorageError> {
        self.failed.borrow_mut().get_or_insert(StorageError::Closed);
        let _ = self.close().await;
        self.closed.set(true);
        std::fs::remove_dir_all(&self.dir).map_err(|e| StorageError::io("remove dir", &self.dir, e))
    }
}

/// Held while a truncation has the log to itself (`PartitionLog::begin_exclusive`).
/// Dropping it (also when the truncating future is dropped) gives the log back; if
/// the disk part was interrupted, memory and disk disagree and the log is poisoned.
struct Exclusive<'a> {
    log: &'a PartitionLog,
    flusher: Cell<bool>,
    io_pending: Cell<bool>,
}

impl Drop for Exclusive<'_> {
    fn drop(&mut self) {
        let log = self.log;
        if self.io_pending.get() {
            log.failed.borrow_mut().get_or_insert(StorageError::io(
                "truncate",
                &log.dir,
                std::io::Error::other("truncation interrupted"),
            ));
        }
        log.truncating.set(false);
        if self.flusher.get() {
            log.flushing.set(false);
            let waiters = std::mem::take(&mut *log.flush_waiters.borrow_mut());
            for w in waiters {
                let _ = w.send(None);
            }
        }
    }
}

/// Writes a new segment file sequentially through O_DIRECT (aligned 1 MiB buffers,
/// zero-padded to a block at the end), remembering each batch's place.
struct SegmentWriter {
    path: PathBuf,
    file: DmaFile,
    buf: DmaBuffer,
    len: usize,
    file_pos: u64,
    /// (base offset, last offset, position, length, max timestamp) per batch.
    batches: Vec<(i64, i64, u64, u64, i64)>,
}

impl SegmentWriter {
    async fn create(path: &Path) -> Result<SegmentWriter, StorageError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .dma_open(path)
            .await
            .map_err(|e| StorageError::io("create", path, e))?;
        Ok(SegmentWriter {
            path: path.to_path_buf(),
            file,
            buf: glommio::allocate_dma_buffer(WRITE_BUFFER_BYTES),
            len: 0,
            file_pos: 0,
            batches: Vec::new(),
        })
    }

    fn size(&self) -> u64 {
        self.file_pos + self.len as u64
    }

    async fn write(&mut self, batch: &[u8]) -> Result<(), StorageError> {
        let h = BatchHeader::parse(batch)?;
        self.batches.push((
            h.base_offset,
            h.last_offset(),
            self.size(),
            batch.len() as u64,
            h.max_timestamp,
        ));
        let mut rest = batch;
        while !rest.is_empty() {
            let n = rest.len().min(self.buf.len() - self.len);
            self.buf.as_bytes_mut()[self.len..self.len + n].copy_from_slice(&rest[..n]);
            self.len += n;
            rest = &rest[n..];
            if self.len == self.buf.len() {
                self.flush_buffer().await?;
            }
        }
        Ok(())
    }

    /// Writes the buffer (zero-padded to a block) and starts a fresh one.
    async fn flush_buffer(&mut self) -> Result<(), StorageError> {
        if self.len == 0 {
            return Ok(());
        }
        let padded = align_up(self.len as u64) as usize;
        self.buf.as_bytes_mut()[self.len..padded].fill(0);
        let mut full = std::mem::replace(
            &mut self.buf,
            glommio::allocate_dma_buffer(WRITE_BUFFER_BYTES),
        );
        full.trim_to_size(padded);
        let n = self
            .file
            .write_at(full, self.file_pos)
            .await
            .map_err(|e| StorageError::io("write", &self.path, e))?;
        if n != padded {
            return Err(StorageError::io(
                "write",
                &self.path,
                std::io::Error::other("short write"),
            ));
        }
        // Only the last buffer may be partial: every earlier one is whole.
        self.file_pos += self.len as u64;
        self.len = 0;
        Ok(())
    }

    /// Writes the rest and fdatasyncs. Returns the file, the logical size and the batches.
    async fn finish(
        mut self,
    ) -> Result<(DmaFile, u64, Vec<(i64, i64, u64, u64, i64)>), StorageError> {
        let size = self.size();
        self.flush_buffer().await?;
        self.file
            .fdatasync()
            .await
            .map_err(|e| StorageError::io("fdatasync", &self.path, e))?;
        Ok((self.file, size, self.batches))
    }

    async fn abandon(self) {
        let _ = self.file.close().await;
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Offsets this large are corruption, not data (Kafka offsets are far below).
const OFFSET_MAX: i64 = 1 << 62;

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

/// Whether the bytes after the logical end, to the end of its block, are zero.
async fn tail_is_clean(
    file: &DmaFile,
    end: u64,
    file_size: u64,
    path: &Path,
) -> Result<bool, StorageError> {
    let block_end = align_up(end).min(file_size);
    if block_end <= end {
        return Ok(true);
    }
    let data = file
        .read_at(end, (block_end - end) as usize)
        .await
        .map_err(|e| StorageError::io("read", path, e))?;
    Ok(data.iter().all(|b| *b == 0))
}

/// Cuts a damaged tail: truncate to the block after `end`, zero that block past `end`,
/// and fdatasync, so neither garbage nor stale batches after the cut can come back.
async fn repair_tail(file: &DmaFile, end: u64, path: &Path) -> Result<(), StorageError> {
    let block = align_down(end);
    let keep = (end - block) as usize;
    file.truncate(align_up(end))
        .await
        .map_err(|e| StorageError::io("truncate", path, e))?;
    if keep > 0 {
        let data = file
            .read_at(block, keep)
            .await
            .map_err(|e| StorageError::io("read", path, e))?;
        let mut buf = glommio::allocate_dma_buffer(BLOCK_BYTES as usize);
        buf.as_bytes_mut().fill(0);
        buf.as_bytes_mut()[..keep].copy_from_slice(&data[..keep]);
        file.write_at(buf, block)
            .await
            .map_err(|e| StorageError::io("write", path, e))?;
    }
    file.fdatasync()
        .await
        .map_err(|e| StorageError::io("fdatasync", path, e))
}

/// Reads the partial tail block of `seg` at `pos` into `dst` (whose length is the read's):
/// appends after reopen and after a truncation rewrite that block with new bytes.
async fn read_tail_block(
    file: &DmaFile,
    seg: &Segment,
    pos: u64,
    dst: &mut [u8],
) -> Result<(), StorageError> {
    let data = file
        .read_at(pos, dst.len())
        .await
        .map_err(|e| StorageError::io("read", seg.path("log"), e))?;
    if data.len() != dst.len() {
        return Err(StorageError::io(
            "read",
            seg.path("log"),
            std::io::Error::other("short read of tail block"),
        ));
    }
    dst.copy_from_slice(&data);
    Ok(())
}
