//! Runnel: a thread-per-core event streaming broker that speaks the Kafka wire protocol.

pub mod broker;
pub mod cli;
pub mod config;
pub mod data_dir;
pub mod group;
pub mod kafka_error;
pub mod log_limit;
pub mod logging;
pub mod metadata;
pub mod metrics;
pub mod net;
pub mod ports;
pub mod replication;
pub mod segment;
pub mod shard;
pub mod time;

/// Stops the whole process for an environment failure with no way forward: a panic that
/// kills one shard while its siblings keep serving would be worse.
pub fn fatal(message: &str) -> ! {
    tracing::error!("fatal: {message}");
    eprintln!("runnel: fatal: {message}");
    std::process::exit(70);
}
