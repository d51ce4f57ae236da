//! The I/O layer: sockets, shard threads, config, CLI, signals. It drives the sans-IO
//! [`crate::engine`]; the relay loop itself is [`shard`].
pub mod admin;
pub mod batch;
pub mod cli;
pub mod config;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod privdrop;
pub mod server;
pub mod shard;
pub mod sockets;
pub mod tls;

pub use server::{Server, StartError};
