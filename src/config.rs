//! Broker configuration, validated once at start.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Bytes of io_uring-registered memory per executor. glommio registers it under
/// RLIMIT_MEMLOCK; 2 MiB per core fits the common 8 MiB default on small machines.
pub const IO_MEMORY_BYTES_DEFAULT: usize = 2 << 20;
/// Kafka's `socket.request.max.bytes` default: a frame larger than this closes the
/// connection before any allocation (guards against a bit-flipped or hostile length).
pub const SOCKET_REQUEST_MAX_BYTES_DEFAULT: usize = 100 * 1024 * 1024;
/// Kafka's `message.max.bytes` default (largest record batch accepted).
pub const MESSAGE_MAX_BYTES_DEFAULT: u32 = 1024 * 1024 + 12;
/// Requests a connection may have in flight before the broker stops reading from it.
pub const CONNECTION_INFLIGHT_MAX: usize = 64;
pub const CONNECTIONS_MAX_DEFAULT: usize = 10_000;

#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub listen: SocketAddr,
    /// Admin HTTP (metrics, health); `None` disables it.
    pub admin_listen: Option<SocketAddr>,
    /// Host and port put in Metadata responses.
    pub advertised_host: String,
    pub advertised_port: u16,
    pub data_dir: PathBuf,
    pub cores: usize,
    pub node_id: i32,
    pub io_memory_bytes: usize,
    pub auto_create_topics: bool,
    pub num_partitions: u32,
    pub socket_request_max_bytes: usize,
    pub message_max_bytes: u32,
    pub connections_max: usize,
    /// Per-task stall bound for glommio's stall detector.
    pub stall_threshold_ms: u64,
}

impl BrokerConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.cores == 0 {
            return Err("cores: must be at least 1".into());
        }
        if self.num_partitions == 0 || self.num_partitions > 100_000 {
            return Err(format!(
                "num.partitions={}: must be between 1 and 100000",
                self.num_partitions
            ));
        }
        if self.socket_request_max_bytes < 1024 {
            return Err(format!(
                "socket.request.max.bytes={}: must be at least 1024",
                self.socket_request_max_bytes
            ));
        }
        if self.message_max_bytes as usize > self.socket_request_max_bytes {
            return Err(format!(
                "message.max.bytes={} exceeds socket.request.max.bytes={}",
                self.message_max_bytes, self.socket_request_max_bytes
            ));
        }
        if self.io_memory_bytes < 64 * 1024 {
            return Err(format!(
                "io-memory={} bytes: must be at least 64 KiB",
                self.io_memory_bytes
            ));
        }
        Ok(())
    }
}
