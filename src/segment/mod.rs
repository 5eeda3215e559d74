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
//!   `Durability::Durable` = written and fdatasync'd (or the topic's flush policy).
//! - `read` returns whole batches starting at the batch containing `offset`, at least
//!   one batch even if it exceeds `max_bytes` (Kafka's fetch semantics), as `Bytes`
//!   chunks the network writes without another copy.

pub mod batch;
pub mod error;
pub mod log;
mod recovery;
mod segment;
#[doc(hidden)]
pub mod testing;

pub use batch::{BatchHeader, BATCH_HEADER_LEN};
pub use error::StorageError;
pub use log::{
    AppendInfo, Durability, FlushStats, LogConfig, PartitionLog, ReadResult, TimestampType,
};
