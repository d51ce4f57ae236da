//! The I/O layer: sockets, shard threads, config, CLI, signals. It drives the sans-IO
//! [`crate::engine`]; the relay loop itself is [`shard`].
pub mod admin;
pub mod batch;
pub mod cli;
pub mod config;
pub mod coturn;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod pktinfo;
pub mod privdrop;
pub mod server;
pub mod shard;
pub mod sockets;
pub mod stun_probe;
pub mod tls;

pub use server::{Server, StartError};
