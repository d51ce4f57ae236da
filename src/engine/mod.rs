//! Sans-IO protocol engine (being written).
pub mod config;
pub mod peer_filter;
pub use config::{EngineConfig, UserKey};
