//! The leader-epoch cache of one partition (KIP-101 / KIP-279): for every leader epoch
//! that wrote to the log, the offset of its first batch. A follower that starts
//! following asks the leader (OffsetForLeaderEpoch) where its latest epoch ended and
//! cuts its log there, so a deposed leader's unreplicated tail cannot survive.
//!
//! Persisted as `leader-epoch-checkpoint` in the partition directory, in Kafka's text
//! format (`0` version line, entry count, then `epoch start_offset` lines). Written
//! durably when an epoch starts (rare: once per leader change, never per batch), when
//! a truncation drops entries, and after a rebuild. Entries are written before the
//! batch that starts the epoch is durable, so after a crash the file may name epochs
//! past the recovered log end; `PartitionLog::open` trims those. A missing file is
//! rebuilt from the batch headers.
//!
//! Pure state: `PartitionLog` owns one, calls it on the shard that owns the log, and
//! does the file I/O through `load` / `persist`.

use std::path::{Path, PathBuf};

use super::error::StorageError;
use super::segment::write_replace_durable_async;

pub const CHECKPOINT_FILE: &str = "leader-epoch-checkpoint";
const CHECKPOINT_VERSION: u32 = 0;
/// Bounds what a damaged file can make us allocate: far above any real history (one
/// entry per leader change that wrote data).
const ENTRIES_MAX: usize = 1 << 20;

/// Kafka's UNDEFINED_EPOCH / UNDEFINED_EPOCH_OFFSET.
pub const UNDEFINED_EPOCH: i32 = -1;
pub const UNDEFINED_OFFSET: i64 = -1;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderEpochCache {
    /// (epoch, start offset), both strictly increasing.
    entries: Vec<(i32, i64)>,
}

impl LeaderEpochCache {
    pub fn entries(&self) -> &[(i32, i64)] {
        &self.entries
    }

    /// The latest epoch that wrote (or, on a leader, was assigned at election).
    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|e| e.0)
    }

    /// Records that `epoch` starts at `start`. Like Kafka's `assign`: nothing changes if
    /// `epoch` is already the latest and starts no later; otherwise entries that
    /// would break monotonicity (epoch >= `epoch` or start >= `start`) are dropped
    /// first. Returns whether the cache changed (the caller persists it then).
    pub fn assign(&mut self, epoch: i32, start: i64) -> bool {
        assert!(epoch >= 0 && start >= 0, "epoch {epoch} at {start}");
        if let Some(&(last_epoch, last_start)) = self.entries.last() {
            if last_epoch == epoch && last_start <= start {
                return false;
            }
        }
        while self
            .entries
            .last()
            .is_some_and(|&(e, s)| e >= epoch || s >= start)
        {
            self.entries.pop();
        }
        self.entries.push((epoch, start));
        true
    }

    /// Kafka's `LeaderEpochFileCache.endOffsetFor`: the largest epoch <= `requested`
    /// and where it ended (the start of the next larger epoch, or `log_end` when
    /// `requested` is the latest). A `requested` below every entry answers
    /// (`requested`, first entry's start); above every entry, or undefined (-1), answers
    /// (-1, -1).
    pub fn end_offset_for(&self, requested: i32, log_end: i64) -> (i32, i64) {
        if requested == UNDEFINED_EPOCH {
            return (UNDEFINED_EPOCH, UNDEFINED_OFFSET);
        }
        if self.latest_epoch() == Some(requested) {
            return (requested, log_end);
        }
        // First entry with a larger epoch.
        let higher = self.entries.partition_point(|e| e.0 <= requested);
        let Some(&(_, higher_start)) = self.entries.get(higher) else {
            return (UNDEFINED_EPOCH, UNDEFINED_OFFSET);
        };
        match higher.checked_sub(1).map(|i| self.entries[i]) {
            Some((floor_epoch, _)) => (floor_epoch, higher_start),
            None => (requested, higher_start),
        }
    }

    /// Drops the entries starting at or after `end` (a truncation of the log to `end`).
    pub fn truncate_from_end(&mut self, end: i64) -> bool {
        let keep = self.entries.partition_point(|e| e.1 < end);
        let changed = keep < self.entries.len();
        self.entries.truncate(keep);
        changed
    }

    /// The log now starts at `start`: entries wholly below it collapse into one that
    /// starts at `start` (Kafka's `truncateFromStart`).
    pub fn truncate_from_start(&mut self, start: i64) -> bool {
        let below = self.entries.partition_point(|e| e.1 <= start);
        if below == 0 || (below == 1 && self.entries[0].1 == start) {
            return false;
        }
        let epoch = self.entries[below - 1].0;
        self.entries.drain(..below - 1);
        self.entries[0] = (epoch, start);
        true
    }

    pub fn clear(&mut self) -> bool {
        let changed = !self.entries.is_empty();
        self.entries.clear();
        changed
    }

    pub fn path(dir: &Path) -> PathBuf {
        dir.join(CHECKPOINT_FILE)
    }

    /// Reads the checkpoint. `Ok(None)`: no usable file (missing, or damaged: logged),
    /// so the caller rebuilds from the batches.
    pub fn load(dir: &Path) -> Result<Option<LeaderEpochCache>, StorageError> {
        let path = Self::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                tracing::warn!(?path, "leader-epoch checkpoint is not text: rebuilding it");
                return Ok(None);
            }
            Err(e) => return Err(StorageError::io("read", path, e)),
        };
        match Self::parse(&text) {
            Some(cache) => Ok(Some(cache)),
            None => {
                tracing::warn!(?path, "leader-epoch checkpoint is damaged: rebuilding it");
                Ok(None)
            }
        }
    }

    fn parse(text: &str) -> Option<LeaderEpochCache> {
        let mut lines = text.lines();
        if lines.next()?.trim().parse::<u32>().ok()? != CHECKPOINT_VERSION {
            return None;
        }
        let count: usize = lines.next()?.trim().parse().ok()?;
        if count > ENTRIES_MAX {
            return None;
        }
        let mut cache = LeaderEpochCache::default();
        for _ in 0..count {
            let mut fields = lines.next()?.split_whitespace();
            let epoch: i32 = fields.next()?.parse().ok()?;
            let start: i64 = fields.next()?.parse().ok()?;
            let increasing = cache
                .entries
                .last()
                .is_none_or(|&(e, s)| epoch > e && start > s);
            if fields.next().is_some() || epoch < 0 || start < 0 || !increasing {
                return None;
            }
            cache.entries.push((epoch, start));
        }
        lines.all(|l| l.trim().is_empty()).then_some(cache)
    }

    /// The checkpoint file's text (Kafka's format).
    pub fn render(&self) -> String {
        let mut text = format!("{CHECKPOINT_VERSION}\n{}\n", self.entries.len());
        for (epoch, start) in &self.entries {
            text.push_str(&format!("{epoch} {start}\n"));
        }
        text
    }

    /// Writes the checkpoint durably (tmp + fsync + rename + directory fsync), the
    /// fsyncs through io_uring so the shard keeps serving meanwhile.
    pub async fn persist(&self, dir: &Path) -> Result<(), StorageError> {
        write_replace_durable_async(&Self::path(dir), self.render().as_bytes()).await
    }
}
