//! Deleting from the front of the log: moving the log start offset (DeleteRecords; its
//! checkpoint is durable before anything is deleted), removing the whole segments
//! below it, and retention by size and time (`retention.bytes` / `retention.ms`).

use std::rc::Rc;

use super::error::StorageError;
use super::log::{now_ms, PartitionLog, LOG_START_CHECKPOINT};
use super::segment::{sync_dir, write_replace_durable, Segment};

impl PartitionLog {
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

    pub(super) async fn delete_segments_below_start(&self) -> Result<(), StorageError> {
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
        self.remove_segment_files(seg).await;
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
}
