//! The log's side of its leader-epoch cache (`epoch::LeaderEpochCache`, pure state):
//! loading or rebuilding it on open, recording the epochs of appended batches,
//! persisting the checkpoint from a task off the append path, and answering
//! OffsetForLeaderEpoch.

use std::rc::Rc;

use bytes::Bytes;

use super::batch::{split_batches, validate_batch, BatchHeader};
use super::epoch::LeaderEpochCache;
use super::error::StorageError;
use super::log::PartitionLog;
use super::segment::Segment;

impl PartitionLog {
    /// Loads the leader-epoch checkpoint, trimmed to the recovered log (its entries
    /// are written before the batches that start the epochs, so a crash can leave some
    /// past the end), or rebuilds it from the batch headers when it is missing.
    pub(super) async fn load_epochs(&self) -> Result<(), StorageError> {
        let (start, end) = (self.log_start.get(), self.log_end.get());
        let (cache, mut changed) = match LeaderEpochCache::load(&self.dir)? {
            Some(cache) if !self.epoch_missing_from(&cache).await? => (cache, false),
            Some(_) => (self.rebuild_epochs().await?, true),
            None => {
                let first_base = self.first_segment_base();
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

    pub(super) fn sync_epoch_latest(&self) {
        self.epoch_latest
            .set(self.epochs.borrow().latest_epoch().unwrap_or(-1));
    }

    /// Records that `epoch` starts at `start` (an append's first batch of a new epoch)
    /// and persists the cache. A failed write removes the file instead, so the next
    /// open rebuilds it rather than trusting a stale one; the append goes on.
    pub(super) fn assign_epoch(&self, epoch: i32, start: i64) {
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
    pub(super) async fn persist_epochs(&self) -> Result<(), StorageError> {
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
}
