//! What the engine needs to know from the operator's configuration.
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::peer_filter::PeerFilter;

/// A static user's long-term credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserKey {
    /// Plain password; keys for both MD5 (RFC 8489 §9.2.2) and SHA-256 are derived from it.
    Password(String),
    /// coturn-style precomputed key `0x<32 hex>` = MD5(user:realm:pass). Only usable with
    /// MESSAGE-INTEGRITY / PASSWORD-ALGORITHM MD5.
    Ha1([u8; 16]),
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// REALM (RFC 8489 §14.9).
    pub realm: String,
    /// SOFTWARE attribute value; None = do not send it (the default: no version disclosure).
    pub software: Option<String>,
    /// Static long-term users.
    pub users: HashMap<String, UserKey>,
    /// TURN REST API shared secrets (first is current; all are accepted, for rotation).
    /// Empty = REST API auth disabled.
    pub auth_secrets: Vec<String>,
    /// How long a nonce stays valid before 438 Stale Nonce.
    pub nonce_lifetime: Duration,
    /// Allocation lifetime when the client asks for none (RFC 8656 §3.2: 600 s).
    pub default_lifetime: Duration,
    /// Cap on requested lifetimes (RFC 8656 §7.2: at least 3600 s recommended).
    pub max_lifetime: Duration,
    /// Addresses relay sockets are bound to, per family.
    pub relay_ip_v4: Option<IpAddr>,
    pub relay_ip_v6: Option<IpAddr>,
    /// Addresses advertised in XOR-RELAYED-ADDRESS (NAT'd deployments), per family.
    pub external_ip_v4: Option<IpAddr>,
    pub external_ip_v6: Option<IpAddr>,
    /// Relay port range (inclusive).
    pub min_port: u16,
    pub max_port: u16,
    /// Which peers may be reached through a relay.
    pub peer_filter: PeerFilter,
    /// Max allocations per username (0 = unlimited) → 486.
    pub user_quota: u32,
    /// Max allocations in the whole server (0 = unlimited) → 508.
    pub total_quota: u32,
    /// Also accept channel numbers 0x5000-0x7FFF, the RFC 5766 range that RFC 8656 §12 took
    /// back (coturn's clients still pick from it). Off by default.
    pub legacy_channel_numbers: bool,
    /// Abuse limits: per-IP quotas, rates, back-off, bandwidth (README "Abuse resistance").
    pub limits: super::limits::Limits,
    /// RFC 5780 NAT behaviour discovery (OTHER-ADDRESS, RESPONSE-ORIGIN, CHANGE-REQUEST) on
    /// these addresses; None = off (the default, as coturn), CHANGE-REQUEST gets 420.
    pub rfc5780: Option<super::nat_discovery::Rfc5780>,
    /// `alternate-server`: where Allocates are redirected (300 Try Alternate, RFC 8489 §10)
    /// while draining. Empty = 508 while draining.
    pub alternate_servers: Vec<SocketAddr>,
}

impl EngineConfig {
    /// Highest channel number a client may bind (RFC 8656 §12, or RFC 5766 §11 when legacy).
    pub fn max_channel(&self) -> u16 {
        if self.legacy_channel_numbers {
            crate::codec::channel_data::MAX_CHANNEL_LEGACY
        } else {
            crate::codec::channel_data::MAX_CHANNEL
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            realm: "ferroturn".into(),
            software: None,
            users: HashMap::new(),
            auth_secrets: Vec::new(),
            nonce_lifetime: Duration::from_secs(600),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            relay_ip_v4: None,
            relay_ip_v6: None,
            external_ip_v4: None,
            external_ip_v6: None,
            min_port: 49152,
            max_port: 65535,
            peer_filter: PeerFilter::default(),
            user_quota: 0,
            total_quota: 0,
            legacy_channel_numbers: false,
            limits: super::limits::Limits::default(),
            rfc5780: None,
            alternate_servers: Vec::new(),
        }
    }
}
