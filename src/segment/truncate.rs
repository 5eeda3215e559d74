//! Truncation: cutting a divergent tail (`truncate_to`, KIP-101) or restarting the log
//! empty at an offset (`truncate_fully_and_start_at`). Both hold the log to themselves
//! (`Exclusive`: appends and maintenance refused, flushes waiting) while memory is cut
//! in one synchronous step and the disk follows, durably, before they return.

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;

use futures::channel::oneshot;

use super::append::WriteBuf;
use super::batch::{BatchHeader, BATCH_HEADER_LEN};
use super::cleaner::CLEANER_CHECKPOINT;
use super::error::StorageError;
use super::log::{now_ms, PartitionLog, LOG_START_CHECKPOINT, OFFSET_MAX};
use super::read::BatchCache;
use super::recovery::{read_tail_block, repair_tail, scan};
use super::segment::{align_down, align_up, sync_dir, write_replace_durable, Segment, BLOCK_BYTES};

impl PartitionLog {
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
        let first_base = self.first_segment_base();
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
                    file,
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
    pub(super) async fn remove_segment_files(&self, seg: &Rc<Segment>) {
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
