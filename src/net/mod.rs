//! The Kafka wire protocol server: listeners, connections, one handler per API.

pub mod admin;
pub mod connection;
pub mod handlers;
pub mod listener;
pub mod memory;
