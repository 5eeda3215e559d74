//! Idempotent-producer state snapshots, `<offset, 20 digits>.snapshot` beside the
//! segments: listed, read, written durably (only if no truncation started since the
//! snapshot was taken), pruned to the newest few. Their contents are opaque here.

use std::path::PathBuf;

use super::error::StorageError;
use super::log::{PartitionLog, OFFSET_MAX};

/// `<offset, 20 digits>.snapshot`: an idempotent-producer state snapshot covering the
/// log below `offset` (opaque here: `shard::producer_state` encodes it).
const PRODUCER_SNAPSHOT_EXT: &str = "snapshot";

/// Snapshots kept: the newest is the one a restart loads; older ones are the fallback
/// when it is damaged.
const PRODUCER_SNAPSHOTS_KEPT: usize = 3;

/// A snapshot file larger than this is refused unread (a bound on what a damaged or
/// foreign file can make a restart allocate): ~10 million producers.
const PRODUCER_SNAPSHOT_BYTES_MAX: u64 = 1 << 30;

impl PartitionLog {
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
}
