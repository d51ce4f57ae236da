//! Config (stand-in until the real one lands).
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::engine::EngineConfig;

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub engine: EngineConfig,
    pub relay_threads: usize,
    pub log_file: Option<PathBuf>,
    pub log_level: String,
    pub udp_recv_buffer: usize,
    pub udp_send_buffer: usize,
}
