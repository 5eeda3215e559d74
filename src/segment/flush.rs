//! The write path from memory to disk. Buffers are written by whichever task becomes
//! the *flusher*: it seals the current buffer (carrying the partial tail block into a
//! fresh buffer, so that block is rewritten by the next write), writes all sealed
//! buffers in order, and, if any waiter asked for `Durable`, fdatasyncs every file
//! written since the last sync. While one flush runs, new appends pile up and the next
//! flusher takes them all: one write + one fdatasync for many appends (group commit).
//! Full buffers are written behind the appends, and a detached task honours
//! `flush.messages` / `flush.ms`. Also here: creating and preallocating segment files,
//! the O_DSYNC handles, the sticky write failure and the out-of-space retry.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use futures::channel::oneshot;
use glommio::io::{DmaFile, OpenOptions};

use super::append::{PendingWrite, WRITE_BUFFER_BYTES};
use super::error::StorageError;
use super::log::{FlushStats, LogConfig, PartitionLog};
use super::read::CACHE_BYTES_MAX;
use super::segment::{align_up, sync_dir_async, DsyncHandle, Segment, BLOCK_BYTES};

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

/// Minimum new offset-index entries before the active segment's index is rewritten
/// (1024 entries = 4 MiB of batches at the default index.interval.bytes).
const ACTIVE_INDEX_PERSIST_ENTRIES: usize = 1024;

/// Submitted writes, in submission order, to know which prefix is complete.
#[derive(Default)]
pub(super) struct WriteTracker {
    pub(super) next_seq: u64,
    pub(super) in_flight: VecDeque<InFlight>,
    /// Every write with seq below this is complete.
    pub(super) done_prefix: u64,
    pub(super) waiters: Vec<(u64, oneshot::Sender<()>)>,
    pub(super) barrier_in_flight: bool,
    /// Bytes sealed and not yet written (queued or in flight).
    pub(super) unwritten_bytes: usize,
}

pub(super) struct InFlight {
    seq: u64,
    seg: Rc<Segment>,
    /// Logical segment position the write ends at.
    logical_end: u64,
    done: bool,
    /// Through the O_DSYNC handle: durable once complete, needs no fdatasync.
    dsync: bool,
}

impl PartitionLog {
    /// Whether appends are refused because the disk was full at the last flush round.
    pub fn is_out_of_space(&self) -> bool {
        self.no_space.borrow().is_some()
    }

    /// While out of space, each refused append starts (at most one at a time) a flush
    /// round that retries the queued writes; once it gets the space, appends resume.
    /// Synchronous, so the caller's "nothing runs before the offset is assigned"
    /// window holds.
    pub(super) fn retry_no_space(&self) {
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

    /// Starts detached work that needs no waiter: writing sealed buffers, and the
    /// flush.messages / flush.ms policy.
    pub(super) fn schedule_background(&self) {
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
    pub(super) async fn flush_to(&self, target: i64, sync: bool) -> Result<(), StorageError> {
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
    pub(super) fn unwritten_bytes(&self) -> usize {
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
    pub(super) fn submit_ready(&self) {
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
    pub(super) async fn wait_submitted(&self) -> Result<(), StorageError> {
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
            let active = self.active_segment();
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
    pub(super) fn persist_sealed_indexes(&self) {
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
}
