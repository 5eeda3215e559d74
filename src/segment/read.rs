//! The read path. Recent batches are kept in a bounded cache (`BatchCache`) as `Bytes`
//! (the patched 61-byte header and the caller's original body, no copy); every batch
//! not yet written to disk is in the cache, so reads never see a half-written file
//! region. Older batches are DMA-read from the segment file. Also the lookups by
//! timestamp (ListOffsets).

use std::collections::VecDeque;
use std::rc::Rc;

use bytes::Bytes;

use super::batch::{claimed_len, BatchHeader, PatchedBatch, BATCH_HEADER_LEN};
use super::compact;
use super::error::StorageError;
use super::log::{PartitionLog, ReadResult};
use super::recovery::BATCH_BYTES_MAX;
use super::segment::Segment;

/// Soft bound of the batch cache (never evicts batches not yet written).
pub(super) const CACHE_BYTES_MAX: usize = 8 << 20;

/// Bounds of one DMA read on the fetch path.
const READ_WINDOW_BYTES_MIN: usize = 64 << 10;

const READ_WINDOW_BYTES_MAX: usize = 8 << 20;

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

pub(super) struct CacheEntry {
    pub(super) base_offset: i64,
    pub(super) last_offset: i64,
    pub(super) max_timestamp: i64,
    pub(super) batch: PatchedBatch,
    pub(super) seg: Rc<Segment>,
    pub(super) end_pos: u64,
}

/// Recent batches, in offset order, covering a suffix of the log.
#[derive(Default)]
pub(super) struct BatchCache {
    pub(super) entries: VecDeque<CacheEntry>,
    pub(super) bytes: usize,
}

impl BatchCache {
    fn first_offset(&self) -> Option<i64> {
        self.entries.front().map(|e| e.base_offset)
    }

    /// Evicts written batches from the front while over the bound.
    pub(super) fn evict(&mut self, bytes_max: usize) {
        while self.bytes > bytes_max {
            let Some(e) = self.entries.front() else { break };
            if e.seg.written.get() < e.end_pos {
                break;
            }
            self.bytes -= e.batch.len();
            self.entries.pop_front();
        }
    }

    pub(super) fn drop_segment(&mut self, seg: &Rc<Segment>) {
        while let Some(e) = self.entries.front() {
            if !Rc::ptr_eq(&e.seg, seg) {
                break;
            }
            self.bytes -= e.batch.len();
            self.entries.pop_front();
        }
    }

    /// Drops the (written) entries below `offset`: their segment was replaced.
    pub(super) fn drop_below(&mut self, offset: i64) {
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

impl PartitionLog {
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
        if cache.first_offset().is_none_or(|first| first > offset) {
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
    pub(super) async fn read_segment(
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
                need = claimed_len(data).map_or(window + 1, |l| l as usize);
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
}
