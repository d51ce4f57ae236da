//! Peer address filtering (placeholder; being written).
use std::net::IpAddr;

#[derive(Clone, Debug, Default)]
pub struct PeerFilter {}

impl PeerFilter {
    pub fn check(&self, _ip: IpAddr) -> Result<(), &'static str> {
        Ok(())
    }
}
