//! The write path up to memory. `append` / `append_valid` (produce) and
//! `append_replicated` (a follower's copy) check the batch, roll the active segment,
//! assign offsets and copy the batch into the current aligned `DmaBuffer` before their
//! first `.await` (the one user-space copy of record bytes), then index and cache it.
//! `Appender` owns those buffers and queues full ones, whole blocks only, for `flush`.
//! `Written` appends return as soon as the batch is in memory and wait only if the
//! unwritten backlog exceeds `UNWRITTEN_BYTES_MAX`.

use std::collections::VecDeque;
use std::rc::Rc;

use bytes::Bytes;
use glommio::io::DmaBuffer;

use super::batch::{
    patch_batch_with_epoch, split_batches, validate_batch, PatchedBatch, ValidBatch,
    BATCH_HEADER_LEN,
};
use super::error::StorageError;
use super::log::{
    now_ms, AppendInfo, Durability, LogConfig, PartitionLog, ReplicatedAppend, TimestampType,
    OFFSET_MAX,
};
use super::read::{CacheEntry, CACHE_BYTES_MAX};
use super::recovery::BATCH_BYTES_MAX;
use super::segment::{align_down, align_up, Segment, BLOCK_BYTES};

/// Capacity of a write buffer; a batch that does not fit continues in the next one.
pub(super) const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// Unwritten bytes (sealed buffers) above which `Written` appends wait for a write.
/// Bounds the memory one partition can pin before the disk catches up.
const UNWRITTEN_BYTES_MAX: usize = 8 << 20;

const _: () = assert!((WRITE_BUFFER_BYTES as u64).is_multiple_of(BLOCK_BYTES));

const _: () = assert!(UNWRITTEN_BYTES_MAX >= WRITE_BUFFER_BYTES);

/// The aligned buffer appends copy into: file range [file_pos, file_pos + len) of `seg`.
pub(super) struct WriteBuf {
    pub(super) seg: Rc<Segment>,
    pub(super) file_pos: u64,
    pub(super) buf: DmaBuffer,
    pub(super) len: usize,
    /// Holds bytes not yet handed to a write.
    pub(super) dirty: bool,
}

/// A sealed buffer waiting for the flusher.
pub(super) struct PendingWrite {
    pub(super) seg: Rc<Segment>,
    pub(super) file_pos: u64,
    pub(super) buf: DmaBuffer,
    /// Logical segment position the data ends at.
    pub(super) logical_end: u64,
    /// Ends in a zero-padded partial block that the next write of this segment
    /// rewrites: nothing else may be in flight with it.
    pub(super) barrier: bool,
}

pub(super) struct Appender {
    pub(super) cur: WriteBuf,
    pub(super) queue: VecDeque<PendingWrite>,
    /// Capacity of the buffer that follows a one-block head buffer (see `rotate`).
    pub(super) next_capacity: usize,
    /// A flush carries its partial tail block in a one-block buffer of its own (see
    /// `rotate`). Off after a sync round of one write: the next such round then has
    /// one write again, which goes O_DSYNC (one I/O instead of two writes plus an
    /// fdatasync).
    pub(super) split_tail: bool,
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
    pub(super) fn rotate(&mut self, capacity: usize, for_flush: bool) {
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

impl PartitionLog {
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
        let seg = self.active_segment();
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
        let active = self.active_segment();
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
}
