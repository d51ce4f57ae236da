//! Sockets, shard threads, config, CLI, signals (being written).
pub mod cli;
pub mod config;
