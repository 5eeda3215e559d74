//! The partition log: Kafka v2 record batches stored as they arrived, in segment files
//! written with O_DIRECT through glommio's `DmaFile`.
//!
//! Contract (the network layer is written against exactly this surface):
//! - A `PartitionLog` lives on one glommio executor (one shard) and is `!Send`; share it
//!   on that shard as `Rc<PartitionLog>`. All methods take `&self` so that many
//!   connection tasks may append concurrently (group commit).
//! - `append` assigns offsets in call order: validation, offset assignment and the copy
//!   into the aligned write buffer happen before the first `.await`, so two appends
//!   started in order get increasing offsets even though both are still in flight.
//! - The future returned by `append` resolves at the durability point asked for:
//!   `Durability::Written` = visible to `read` (in the write buffer / batch cache),
//!   `Durability::Durable` = written and fdatasync'd. Durable appends are group
//!   committed (one write + one fdatasync for all appends waiting at that moment); a
//!   round whose one write is all that is not yet durable writes it through an
//!   O_DSYNC handle instead (durable on completion: one I/O, no fdatasync round trip,
//!   which io_uring always hands to a worker thread).
//!   The topic's `flush.messages` / `flush.ms` drive background fdatasyncs of
//!   `Written` appends; a caller that wants "durable per the topic's flush policy"
//!   asks for `Written` and reads `durable_offset()`.
//! - Dropping an `append` future after its first poll does not undo the append (its
//!   offset is assigned) and cannot abort a flush round (rounds run as their own tasks).
//! - `read` returns whole batches starting at the batch containing `offset`, at least
//!   one batch even if it exceeds `max_bytes` (Kafka's fetch semantics), as `Bytes`
//!   chunks the network writes without another copy. Recent batches come from an
//!   in-memory cache as two chunks (patched 61-byte header, original body); older ones
//!   are DMA-read, with one copy into `Bytes` (glommio's read buffers are `Rc`-owned).
//! - A write or fdatasync failure is sticky: every later append returns `Io` until the
//!   log is reopened (recovery finds what reached the disk).
//!
//! Files: `<dir>/<base offset, 20 digits>.log` (batches exactly as on the wire,
//! preallocated, zero-padded to 4 KiB at the logical end), `.index` (sparse offset ->
//! position, every `index.interval.bytes`), `.timeindex` (max timestamp so far ->
//! offset), both ending in a CRC32C; `log-start-offset` (DeleteRecords / retention
//! checkpoint, written atomically and fsync'd); `<offset>.snapshot` (idempotent-producer
//! state covering the log below `offset`, opaque here, written by
//! `write_producer_snapshot`; the newest three are kept, and truncation, retention and
//! reopening remove those outside the log).
//!
//! Replication: a follower stores the leader's batches as they are with
//! `append_replicated` (offsets kept, must continue the log) and cuts a divergent tail
//! with `truncate_to` (or restarts the log with `truncate_fully_and_start_at`). A
//! leader stamps its epoch (`set_leader_epoch`) into produced batches; `epoch` keeps
//! where each epoch started (`leader-epoch-checkpoint`) for OffsetForLeaderEpoch.
//!
//! Modules: `batch` (v2 header, CRC32C, offset patching), `compact` (record-level
//! compaction of batches), `log` (`PartitionLog`: its types, state, open and close),
//! and the `impl PartitionLog` blocks split by job: `append` (offsets, write buffers),
//! `flush` (group commit, writes, fdatasync), `read` (batch cache, reads, lookups by
//! time), `leader_epoch`, `truncate`, `retention`, `cleaner` (swaps compacted segments
//! in) and `producer_snapshot`; `segment` (one segment and its indexes), `recovery`
//! (scan for the logical end, tail repair), `remove` (deleting a partition directory
//! in the background), `testing` (a batch encoder for tests).

mod append;
pub mod batch;
mod cleaner;
pub mod compact;
pub mod epoch;
pub mod error;
mod flush;
mod leader_epoch;
pub mod log;
mod producer_snapshot;
mod read;
pub mod records;
pub mod recovery;
pub mod remove;
mod retention;
mod segment;
#[doc(hidden)]
pub mod testing;
mod truncate;

pub use batch::{BatchHeader, ValidBatch, BATCH_HEADER_LEN};
pub use error::StorageError;
pub use log::{
    AppendInfo, CompactStats, Durability, FlushStats, LogConfig, PartitionLog, ReadResult,
    ReplicatedAppend, TimestampType,
};
