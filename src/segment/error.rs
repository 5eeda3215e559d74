//! The one error type of the partition log. Each variant maps to exactly one Kafka
//! error code (`kafka_error_code`), so the network layer never has to guess.

use std::path::PathBuf;

#[derive(thiserror::Error, Debug)]
pub enum StorageError {
    /// The bytes are not a well-formed v2 batch: bad length, bad CRC. CORRUPT_MESSAGE.
    #[error("corrupt record batch: {0}")]
    CorruptBatch(String),
    /// Well-formed but not acceptable (magic != 2, bad offset deltas). CORRUPT_MESSAGE.
    #[error("invalid record batch: {0}")]
    InvalidBatch(String),
    /// A well-formed batch whose records lie (lengths, counts, offset deltas) or break
    /// a rule of the topic (a null key on a compacted topic). INVALID_RECORD.
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    /// One batch larger than `max.message.bytes`. MESSAGE_TOO_LARGE.
    #[error("record batch of {size} bytes exceeds the maximum of {max}")]
    BatchTooLarge { size: usize, max: usize },
    /// OFFSET_OUT_OF_RANGE.
    #[error("offset {offset} is outside the log range [{start}, {end}]")]
    OffsetOutOfRange { offset: i64, start: i64, end: i64 },
    /// An environment failure. After a failed write or fdatasync the log refuses all
    /// further appends: what reached the disk is unknown until recovery. KAFKA_STORAGE_ERROR.
    #[error("{op} {path:?}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A replicated batch does not continue the log: its base offset is not the next
    /// offset (a gap or an overlap with what the follower has). Internal to replication
    /// (a follower's fetcher), never answered to a client. UNKNOWN_SERVER_ERROR.
    #[error("replicated batch starts at offset {found}, the log continues at {expected}")]
    NonContiguous { expected: i64, found: i64 },
    /// The log is being truncated (its leadership changed): appends and maintenance
    /// wait for the next leader. NOT_LEADER_OR_FOLLOWER, so producers refresh metadata.
    #[error("partition log is being truncated")]
    Truncating,
    /// A producer append stamped with a leader epoch older than one already in the
    /// log: this broker is no longer the leader it thinks it is. NOT_LEADER_OR_FOLLOWER.
    #[error("leader epoch {epoch} is older than the log's latest epoch {latest}")]
    StaleLeaderEpoch { epoch: i32, latest: i32 },
    /// The log was closed or deleted (the partition left this shard). NOT_LEADER_OR_FOLLOWER,
    /// so clients refresh metadata and retry elsewhere.
    #[error("partition log is closed")]
    Closed,
}

impl StorageError {
    pub fn kafka_error_code(&self) -> i16 {
        use crate::kafka_error as ec;
        match self {
            StorageError::CorruptBatch(_) | StorageError::InvalidBatch(_) => ec::CORRUPT_MESSAGE,
            StorageError::InvalidRecord(_) => ec::INVALID_RECORD,
            StorageError::BatchTooLarge { .. } => ec::MESSAGE_TOO_LARGE,
            StorageError::OffsetOutOfRange { .. } => ec::OFFSET_OUT_OF_RANGE,
            StorageError::Io { .. } => ec::KAFKA_STORAGE_ERROR,
            StorageError::NonContiguous { .. } => ec::UNKNOWN_SERVER_ERROR,
            StorageError::Truncating
            | StorageError::StaleLeaderEpoch { .. }
            | StorageError::Closed => ec::NOT_LEADER_OR_FOLLOWER,
        }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<std::io::Error>,
    ) -> Self {
        StorageError::Io {
            op,
            path: path.into(),
            source: source.into(),
        }
    }

    /// The disk (or the quota) is full: retryable once space is freed.
    pub fn is_no_space(&self) -> bool {
        matches!(self, StorageError::Io { source, .. }
            if matches!(source.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded))
    }

    /// A copy for every waiter of a failed group commit (io::Error is not Clone).
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            StorageError::CorruptBatch(s) => StorageError::CorruptBatch(s.clone()),
            StorageError::InvalidBatch(s) => StorageError::InvalidBatch(s.clone()),
            StorageError::InvalidRecord(s) => StorageError::InvalidRecord(s.clone()),
            StorageError::BatchTooLarge { size, max } => StorageError::BatchTooLarge {
                size: *size,
                max: *max,
            },
            StorageError::OffsetOutOfRange { offset, start, end } => {
                StorageError::OffsetOutOfRange {
                    offset: *offset,
                    start: *start,
                    end: *end,
                }
            }
            StorageError::Io { op, path, source } => StorageError::Io {
                op,
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            StorageError::NonContiguous { expected, found } => StorageError::NonContiguous {
                expected: *expected,
                found: *found,
            },
            StorageError::Truncating => StorageError::Truncating,
            StorageError::StaleLeaderEpoch { epoch, latest } => StorageError::StaleLeaderEpoch {
                epoch: *epoch,
                latest: *latest,
            },
            StorageError::Closed => StorageError::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_its_kafka_code() {
        assert_eq!(
            StorageError::CorruptBatch(String::new()).kafka_error_code(),
            2
        );
        assert_eq!(
            StorageError::InvalidBatch(String::new()).kafka_error_code(),
            2
        );
        assert_eq!(
            StorageError::InvalidRecord(String::new()).kafka_error_code(),
            87
        );
        assert_eq!(
            StorageError::BatchTooLarge { size: 2, max: 1 }.kafka_error_code(),
            10
        );
        assert_eq!(
            StorageError::OffsetOutOfRange {
                offset: 0,
                start: 1,
                end: 2
            }
            .kafka_error_code(),
            1
        );
        let io = StorageError::io("write", "/x", std::io::Error::other("boom"));
        assert_eq!(io.kafka_error_code(), 56);
        assert_eq!(io.duplicate().kafka_error_code(), 56);
        assert_eq!(StorageError::Closed.kafka_error_code(), 6);
        assert_eq!(StorageError::Truncating.kafka_error_code(), 6);
        assert_eq!(
            StorageError::NonContiguous {
                expected: 1,
                found: 2
            }
            .kafka_error_code(),
            -1
        );
    }
}
