//! The log cleaner (`cleanup.policy=compact`): decides when a log is due and which
//! sealed segments a pass covers, builds the bounded key map, rewrites each changed
//! segment to a `.cleaned` file (`SegmentWriter`) and swaps it in. The record-level
//! work (decoding batches, choosing the records kept) is `compact`'s.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;
use glommio::io::{DmaBuffer, DmaFile, OpenOptions};

use super::append::WRITE_BUFFER_BYTES;
use super::batch::BatchHeader;
use super::compact;
use super::error::StorageError;
use super::log::{now_ms, CompactStats, LogConfig, PartitionLog};
use super::segment::{align_up, sync_dir, Segment};

/// Offsets below this one are compacted (Kafka's cleaner-offset-checkpoint).
pub(super) const CLEANER_CHECKPOINT: &str = "cleaner-offset";

/// Suffix of a compacted segment being written; renamed over `.log` when complete.
pub(super) const CLEANED_SUFFIX: &str = "cleaned";

/// Bytes read per hop while compacting a segment.
const COMPACT_READ_BYTES: usize = 1 << 20;

impl PartitionLog {
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
    pub(super) async fn for_each_batch(
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
