//! Which peers a relay may talk to: the SSRF guard.
//!
//! A TURN server relays to whatever XOR-PEER-ADDRESS a client names, from inside the operator's
//! network. Without a filter, any authenticated user can reach the server's loopback services, the
//! cloud metadata endpoint (169.254.169.254), the LAN, or the TURN listener itself (a relay loop).
//! RFC 8656 §21 asks servers to refuse such peers by default; coturn CVE-2020-26262 was exactly the
//! `0.0.0.0` / `::ffff:127.0.0.1` bypass of a blocklist that compared raw addresses.
//!
//! So every rule here runs on the *canonical* IP: IPv6 forms that carry an IPv4 address are
//! unwrapped first (see [`canonical_ip`]). The special-purpose blocks follow the IANA registries
//! of RFC 6890 (denying what is not globally reachable), except the documentation blocks, which
//! stay reachable so that examples and tests can use them as "public" addresses.
//!
//! [`PeerFilter::check`] is pure and allocation-free: it runs on every CreatePermission,
//! ChannelBind and Send indication.
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

// ---------------------------------------------------------------------------------------------
// IpRange
// ---------------------------------------------------------------------------------------------

/// An inclusive IP range, one address family.
///
/// Parses `10.0.0.1`, `10.0.0.0/8`, `fc00::/7`, `[::1]`, `[fc00::]/7` and coturn's range form
/// `10.0.0.1-10.0.0.9`. A prefix with host bits set (`10.0.0.1/8`) is accepted and means its
/// network (`10.0.0.0/8`), like iptables. Display prints the shortest of those forms and parses
/// back to the same range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpRange {
    inner: Range,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Range {
    V4 { start: u32, end: u32 },
    V6 { start: u128, end: u128 },
}

impl IpRange {
    /// The range holding exactly `ip`.
    pub fn single(ip: IpAddr) -> Self {
        let inner = match ip {
            IpAddr::V4(a) => Range::V4 {
                start: a.into(),
                end: a.into(),
            },
            IpAddr::V6(a) => Range::V6 {
                start: a.into(),
                end: a.into(),
            },
        };
        Self { inner }
    }

    /// Whether `ip` (as given, same family, no unwrapping) lies in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.inner, ip) {
            (Range::V4 { start, end }, IpAddr::V4(a)) => (start..=end).contains(&u32::from(a)),
            (Range::V6 { start, end }, IpAddr::V6(a)) => (start..=end).contains(&u128::from(a)),
            _ => false,
        }
    }
}

/// `[::1]` → `::1`; the brackets are optional (they are how IPv6 appears in URLs and configs).
fn parse_addr(s: &str, whole: &str) -> Result<IpAddr, String> {
    let s = s.trim();
    let bare = match (s.strip_prefix('['), s.strip_suffix(']')) {
        (Some(_), Some(_)) if s.len() >= 2 => &s[1..s.len() - 1],
        (None, None) => s,
        _ => return Err(format!("unbalanced brackets around `{s}` in `{whole}`")),
    };
    if bare.is_empty() {
        return Err(format!("missing IP address in `{whole}`"));
    }
    bare.parse()
        .map_err(|_| format!("`{bare}` is not an IP address (in `{whole}`)"))
}

/// Netmask with the top `len` bits set (`len` <= 32 / 128, checked by the caller).
fn mask32(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}
fn mask128(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let s = text.trim();
        if s.is_empty() {
            return Err("empty IP range".into());
        }
        // IPv6 text never contains '-', so it can only be coturn's `start-end` form.
        if let Some((a, b)) = s.split_once('-') {
            let (start, end) = (parse_addr(a, s)?, parse_addr(b, s)?);
            let inner = match (start, end) {
                (IpAddr::V4(a), IpAddr::V4(b)) => Range::V4 {
                    start: a.into(),
                    end: b.into(),
                },
                (IpAddr::V6(a), IpAddr::V6(b)) => Range::V6 {
                    start: a.into(),
                    end: b.into(),
                },
                _ => return Err(format!("range `{s}` mixes IPv4 and IPv6 addresses")),
            };
            let backwards = match inner {
                Range::V4 { start, end } => start > end,
                Range::V6 { start, end } => start > end,
            };
            if backwards {
                return Err(format!(
                    "range `{s}` is backwards: start {start} is after end {end}"
                ));
            }
            return Ok(Self { inner });
        }
        if let Some((a, len)) = s.split_once('/') {
            let addr = parse_addr(a, s)?;
            let len = len.trim();
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let len: u8 = match len.parse() {
                Ok(n) if n <= max => n,
                Ok(n) => {
                    let fam = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
                    return Err(format!(
                        "prefix length {n} is too long for {fam} (max {max}) in `{s}`"
                    ));
                }
                Err(_) => {
                    return Err(format!(
                        "prefix length `{len}` is not a number from 0 to {max} (in `{s}`)"
                    ))
                }
            };
            let inner = match addr {
                IpAddr::V4(a) => {
                    let m = mask32(len);
                    let start = u32::from(a) & m;
                    Range::V4 {
                        start,
                        end: start | !m,
                    }
                }
                IpAddr::V6(a) => {
                    let m = mask128(len);
                    let start = u128::from(a) & m;
                    Range::V6 {
                        start,
                        end: start | !m,
                    }
                }
            };
            return Ok(Self { inner });
        }
        Ok(Self::single(parse_addr(s, s)?))
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `host` = the bits that differ; a prefix iff they are the low bits and start has none.
        match self.inner {
            Range::V4 { start, end } => {
                let (s, e) = (Ipv4Addr::from(start), Ipv4Addr::from(end));
                let host = start ^ end;
                if start == end {
                    write!(f, "{s}")
                } else if host & host.wrapping_add(1) == 0 && start & host == 0 {
                    write!(f, "{s}/{}", host.leading_zeros())
                } else {
                    write!(f, "{s}-{e}")
                }
            }
            Range::V6 { start, end } => {
                let (s, e) = (Ipv6Addr::from(start), Ipv6Addr::from(end));
                let host = start ^ end;
                if start == end {
                    write!(f, "{s}")
                } else if host & host.wrapping_add(1) == 0 && start & host == 0 {
                    write!(f, "{s}/{}", host.leading_zeros())
                } else {
                    write!(f, "{s}-{e}")
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Canonical form
// ---------------------------------------------------------------------------------------------

/// The IPv4 address an IPv6 address stands for, if it embeds one; otherwise `ip` unchanged.
///
/// Unwrapped forms:
/// - IPv4-mapped `::ffff:a.b.c.d` (RFC 4291 §2.5.5.2): a dual-stack socket sends to a.b.c.d.
/// - IPv4-compatible `::a.b.c.d` (RFC 4291 §2.5.5.1, deprecated), except `::` and `::1`, which
///   are the IPv6 unspecified and loopback addresses.
/// - NAT64 well-known prefix `64:ff9b::/96` (RFC 6052 §2.1): a translator on the path sends to
///   a.b.c.d. (RFC 6052 §3.1 forbids translating non-global addresses with it; not every
///   translator obeys, so we check anyway.)
/// - 6to4 `2002:AABB:CCDD::/48` (RFC 3056): a 6to4 interface on the host tunnels to AA.BB.CC.DD.
///
/// Not unwrapped: the NAT64 local-use prefix `64:ff9b:1::/48` (RFC 8215), where the operator
/// picks the embedding position, so it cannot be decoded; it is denied as a whole instead.
/// Teredo (`2001::/32`) is not unwrapped either (its packets go to the client's public mapping).
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(a) => match embedded_ipv4(a) {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
    }
}

const NAT64_WKP_96: u128 = 0x0064_ff9b_0000_0000_0000_0000; // top 96 bits of 64:ff9b::/96

fn embedded_ipv4(a: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(a);
    let low32 = Ipv4Addr::from(bits as u32);
    match bits >> 32 {
        0xffff => Some(low32),
        0 if bits > 1 => Some(low32),
        NAT64_WKP_96 => Some(low32),
        _ if bits >> 112 == 0x2002 => Some(Ipv4Addr::from((bits >> 80) as u32)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Reasons
// ---------------------------------------------------------------------------------------------

/// Why a peer was refused. [`Display`](fmt::Display) / [`DenyReason::as_str`] give a short
/// lowercase token for logs and metric labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// In `--denied-peer-ip`.
    DeniedByConfig,
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 0.0.0.0, :: (Linux delivers "to 0.0.0.0" to the local host).
    Unspecified,
    /// 169.254.0.0/16 (incl. cloud metadata 169.254.169.254), fe80::/10.
    LinkLocal,
    /// fec0::/10, deprecated by RFC 3879 but still routable inside some sites.
    SiteLocal,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// RFC 1918: 10/8, 172.16/12, 192.168/16.
    Private,
    /// 100.64.0.0/10, carrier-grade NAT (RFC 6598).
    SharedAddressSpace,
    /// 0.0.0.0/8 other than 0.0.0.0 itself.
    ThisNetwork,
    /// 240.0.0.0/4; also 192.0.0.0/24 (IETF protocol assignments, minus the globally reachable
    /// .9 and .10) and 198.18.0.0/15 (benchmarking), which RFC 6890 marks not globally reachable.
    Reserved,
    /// fc00::/7 (RFC 4193).
    UniqueLocal,
    /// 100::/64, the discard-only prefix (RFC 6666).
    DiscardOnly,
    /// 64:ff9b:1::/48, NAT64 local-use prefix (RFC 8215): reaches whatever IPv4 the operator's
    /// translator maps it to, typically internal.
    Nat64LocalUse,
    /// One of the server's own listening sockets (a relay loop).
    OwnListener,
    /// One of the server's own addresses, on a port outside the relay range.
    OwnAddress,
}

impl DenyReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::DeniedByConfig => "denied-by-config",
            Self::Loopback => "loopback",
            Self::Unspecified => "unspecified",
            Self::LinkLocal => "link-local",
            Self::SiteLocal => "site-local",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::Private => "private",
            Self::SharedAddressSpace => "shared-address-space",
            Self::ThisNetwork => "this-network",
            Self::Reserved => "reserved",
            Self::UniqueLocal => "unique-local",
            Self::DiscardOnly => "discard-only",
            Self::Nat64LocalUse => "nat64-local-use",
            Self::OwnListener => "own-listener",
            Self::OwnAddress => "own-address",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// Special-purpose blocks (RFC 6890 registries)
// ---------------------------------------------------------------------------------------------

fn in_v4(a: u32, net: [u8; 4], len: u8) -> bool {
    a & mask32(len) == u32::from_be_bytes(net)
}
fn in_v6(a: u128, net: u128, len: u8) -> bool {
    a & mask128(len) == net
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => in_v4(a.into(), [127, 0, 0, 0], 8),
        IpAddr::V6(a) => a == Ipv6Addr::LOCALHOST,
    }
}

/// Blocks that are never a legitimate peer (loopback is handled separately). `ip` is canonical.
fn special_purpose(ip: IpAddr) -> Option<DenyReason> {
    use DenyReason::*;
    match ip {
        IpAddr::V4(a) => {
            let a = u32::from(a);
            Some(match () {
                _ if a == 0 => Unspecified,
                _ if in_v4(a, [0, 0, 0, 0], 8) => ThisNetwork,
                _ if in_v4(a, [10, 0, 0, 0], 8)
                    || in_v4(a, [172, 16, 0, 0], 12)
                    || in_v4(a, [192, 168, 0, 0], 16) =>
                {
                    Private
                }
                _ if in_v4(a, [100, 64, 0, 0], 10) => SharedAddressSpace,
                _ if in_v4(a, [169, 254, 0, 0], 16) => LinkLocal,
                // 192.0.0.9 (PCP anycast) and 192.0.0.10 (TURN anycast) are globally reachable.
                _ if in_v4(a, [192, 0, 0, 0], 24)
                    && a != u32::from_be_bytes([192, 0, 0, 9])
                    && a != u32::from_be_bytes([192, 0, 0, 10]) =>
                {
                    Reserved
                }
                _ if in_v4(a, [198, 18, 0, 0], 15) => Reserved,
                _ if in_v4(a, [224, 0, 0, 0], 4) => Multicast,
                _ if a == u32::MAX => Broadcast,
                _ if in_v4(a, [240, 0, 0, 0], 4) => Reserved,
                _ => return None,
            })
        }
        IpAddr::V6(a) => {
            let a = u128::from(a);
            Some(match () {
                _ if a == 0 => Unspecified,
                _ if in_v6(a, 0xff00 << 112, 8) => Multicast,
                _ if in_v6(a, 0xfe80 << 112, 10) => LinkLocal,
                _ if in_v6(a, 0xfec0 << 112, 10) => SiteLocal,
                _ if in_v6(a, 0xfc00 << 112, 7) => UniqueLocal,
                _ if in_v6(a, 0x0100 << 112, 64) => DiscardOnly,
                _ if in_v6(a, 0x0064_ff9b_0001 << 80, 48) => Nat64LocalUse,
                _ => return None,
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The filter
// ---------------------------------------------------------------------------------------------

/// Operator input for [`PeerFilter::new`].
#[derive(Clone, Debug, Default)]
pub struct PeerFilterConfig {
    /// `--allow-loopback-peers`: lifts the loopback rule (tests, single-host setups).
    pub allow_loopback: bool,
    /// `--allowed-peer-ip`: overrides every deny rule.
    pub allowed: Vec<IpRange>,
    /// `--denied-peer-ip`.
    pub denied: Vec<IpRange>,
    /// The server's listening socket addresses (any transport).
    pub own_listeners: Vec<SocketAddr>,
    /// The server's listening, relay and external IPs.
    pub own_ips: Vec<IpAddr>,
    /// The addresses of the host's interfaces, when a listener is a wildcard (it answers on
    /// all of them). Kept apart from `own_ips` because they change at runtime
    /// ([`PeerFilter::set_host_ips`]).
    pub host_ips: Vec<IpAddr>,
    /// Inclusive relay port range (min-port, max-port).
    pub relay_ports: (u16, u16),
}

/// Decides whether a relay may talk to a peer. `default()` is the secure default: loopback
/// denied, no allow/deny lists, nothing known as own.
#[derive(Clone, Debug, Default)]
pub struct PeerFilter {
    allow_loopback: bool,
    allowed: Vec<IpRange>,
    denied: Vec<IpRange>,
    /// Canonical listener addresses with a specific IP.
    listeners: Vec<SocketAddr>,
    /// Ports of listeners bound to 0.0.0.0 / `::`.
    wildcard_ports: Vec<u16>,
    /// Canonical own IPs: `configured` and `host_ips` together, sorted; never unspecified.
    own_ips: Vec<IpAddr>,
    /// The configured part of `own_ips` (listener, relay and external IPs), canonical.
    configured: Vec<IpAddr>,
    /// The host's interface addresses as last seen (wildcard listeners only).
    host_ips: Vec<IpAddr>,
    relay_ports: (u16, u16),
}

impl PeerFilter {
    pub fn new(cfg: PeerFilterConfig) -> Self {
        let mut listeners = Vec::new();
        let mut wildcard_ports = Vec::new();
        let mut own_ips: Vec<IpAddr> = Vec::new();
        for l in &cfg.own_listeners {
            let ip = canonical_ip(l.ip());
            if ip.is_unspecified() {
                wildcard_ports.push(l.port());
            } else {
                listeners.push(SocketAddr::new(ip, l.port()));
                own_ips.push(ip);
            }
        }
        own_ips.extend(cfg.own_ips.iter().map(|&ip| canonical_ip(ip)));
        listeners.sort();
        listeners.dedup();
        wildcard_ports.sort_unstable();
        wildcard_ports.dedup();
        let mut f = Self {
            allow_loopback: cfg.allow_loopback,
            allowed: cfg.allowed,
            denied: cfg.denied,
            listeners,
            wildcard_ports,
            own_ips: Vec::new(),
            configured: own_ips,
            host_ips: Vec::new(),
            relay_ports: cfg.relay_ports,
        };
        f.set_host_ips(cfg.host_ips);
        f
    }

    /// More of the server's own listeners that no peer may be (the metrics and admin HTTP
    /// listeners): only their exact address (or port, for a wildcard), not their IP in general,
    /// so a loopback admin listener does not make loopback an own address.
    pub fn add_listeners(&mut self, addrs: impl IntoIterator<Item = SocketAddr>) {
        for l in addrs {
            let ip = canonical_ip(l.ip());
            if ip.is_unspecified() {
                self.wildcard_ports.push(l.port());
            } else {
                self.listeners.push(SocketAddr::new(ip, l.port()));
            }
        }
        self.listeners.sort();
        self.listeners.dedup();
        self.wildcard_ports.sort_unstable();
        self.wildcard_ports.dedup();
    }

    /// The host's interface addresses this filter counts as own (see [`PeerFilterConfig`]).
    pub fn host_ips(&self) -> &[IpAddr] {
        &self.host_ips
    }

    /// The host's interface addresses changed (an address added or removed while running): the
    /// own-address rules follow them.
    pub fn set_host_ips(&mut self, ips: Vec<IpAddr>) {
        let mut own = self.configured.clone();
        own.extend(ips.iter().map(|&ip| canonical_ip(ip)));
        own.retain(|ip| !ip.is_unspecified());
        own.sort();
        own.dedup();
        self.own_ips = own;
        self.host_ips = ips;
    }

    /// `ip` (canonical) is one of the server's addresses; `own_ips` is sorted.
    fn is_own(&self, ip: IpAddr) -> bool {
        self.own_ips.binary_search(&ip).is_ok()
    }

    /// `Err(reason)` if the relay must not talk to `peer`.
    pub fn check(&self, peer: SocketAddr) -> Result<(), DenyReason> {
        self.check_inner(peer.ip(), Some(peer.port()))
    }

    /// The check for CreatePermission, where the port carries no meaning (RFC 8656 §9: a
    /// permission is for an IP address). Port 0, which clients such as webrtc-rs send, means
    /// "no port": the port-based own-address rules are left to ChannelBind and Send, which see
    /// the real port. A non-zero port is checked like [`PeerFilter::check`].
    pub fn check_permission(&self, peer: SocketAddr) -> Result<(), DenyReason> {
        let port = (peer.port() != 0).then_some(peer.port());
        self.check_inner(peer.ip(), port)
    }

    fn check_inner(&self, raw: IpAddr, port: Option<u16>) -> Result<(), DenyReason> {
        let ip = canonical_ip(raw);

        // 1, 2: operator lists see the address as written and as unwrapped.
        if listed(&self.allowed, raw, ip) {
            return Ok(());
        }
        if listed(&self.denied, raw, ip) {
            return Err(DenyReason::DeniedByConfig);
        }
        // 3: never relay into our own TURN ports (loops, amplification), whatever allow_loopback
        // says. A wildcard listener answers on every own IP and on loopback.
        if let Some(port) = port {
            let wildcard_hit = self.wildcard_ports.contains(&port)
                && (is_loopback(ip) || ip.is_unspecified() || self.is_own(ip));
            if wildcard_hit || self.listeners.contains(&SocketAddr::new(ip, port)) {
                return Err(DenyReason::OwnListener);
            }
        }
        // 4: other services on the server host are refused. The relay range on a configured
        // address (relay, external, listening IP) is other allocations on this server, which two
        // users of the same server need to reach each other: allowed even when that address is
        // private or loopback (the range rules below would refuse it). Not on the host's other
        // interface addresses (a wildcard listener's 127.0.0.1, a docker bridge, a LAN
        // address): no client is given a relayed address there, and services of the host
        // listen there on ports of that range too. Without a port (CreatePermission with
        // port 0) the IP goes through the rules below, and ChannelBind/Send check the port
        // they actually use.
        if self.is_own(ip) {
            match port {
                Some(p) if self.in_relay_range(p) && self.configured.contains(&ip) => return Ok(()),
                Some(_) if !(self.allow_loopback && is_loopback(ip)) => {
                    return Err(DenyReason::OwnAddress)
                }
                _ => {}
            }
        }
        // 5
        if is_loopback(ip) {
            return if self.allow_loopback {
                Ok(())
            } else {
                Err(DenyReason::Loopback)
            };
        }
        // 6, 7
        match special_purpose(ip) {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }

    fn in_relay_range(&self, port: u16) -> bool {
        let (lo, hi) = self.relay_ports;
        port != 0 && lo <= port && port <= hi
    }
}

/// Whether a list holds the peer: raw form, canonical form, or (so that an entry written as
/// `::ffff:10.0.0.0/104` matches plain 10.0.0.1 too) the IPv4-mapped form of the canonical IPv4.
fn listed(list: &[IpRange], raw: IpAddr, canonical: IpAddr) -> bool {
    let mapped = match canonical {
        IpAddr::V4(a) => Some(IpAddr::V6(a.to_ipv6_mapped())),
        IpAddr::V6(_) => None,
    };
    list.iter()
        .any(|r| r.contains(raw) || r.contains(canonical) || mapped.is_some_and(|m| r.contains(m)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_private_relay_range_is_reachable() {
        // A server whose relay address is private (a LAN, a NAT without external-ip): one
        // allocation must reach another on the same server, but nothing else on that host.
        let f = super::PeerFilter::new(super::PeerFilterConfig {
            own_listeners: vec!["10.200.0.10:3478".parse().unwrap()],
            own_ips: vec!["10.200.0.10".parse().unwrap()],
            relay_ports: (49152, 49999),
            ..Default::default()
        });
        assert_eq!(f.check("10.200.0.10:49585".parse().unwrap()), Ok(()));
        assert!(f.check("10.200.0.10:22".parse().unwrap()).is_err());
        assert!(f.check("10.200.0.10:3478".parse().unwrap()).is_err());
        assert!(f.check("10.200.0.11:49585".parse().unwrap()).is_err());
    }

    #[test]
    fn permission_check_ignores_port_zero_only() {
        let f = super::PeerFilter::new(super::PeerFilterConfig {
            own_listeners: vec!["198.51.100.7:3478".parse().unwrap()],
            own_ips: vec!["198.51.100.7".parse().unwrap()],
            relay_ports: (49152, 65535),
            ..Default::default()
        });
        // webrtc-rs refreshes permissions with port 0: the IP (another allocation's relay
        // address on this server) must pass; the port rules apply on ChannelBind/Send.
        assert_eq!(
            f.check_permission("198.51.100.7:0".parse().unwrap()),
            Ok(())
        );
        assert!(f.check("198.51.100.7:0".parse().unwrap()).is_err());
        assert_eq!(
            f.check_permission("198.51.100.7:3478".parse().unwrap()),
            Err(super::DenyReason::OwnListener)
        );
        assert_eq!(
            f.check_permission("198.51.100.7:22".parse().unwrap()),
            Err(super::DenyReason::OwnAddress)
        );
        // IP-level rules still apply with port 0.
        assert!(f.check_permission("10.0.0.1:0".parse().unwrap()).is_err());
        assert!(f.check_permission("127.0.0.1:0".parse().unwrap()).is_err());
    }

    use super::*;
    use DenyReason::*;

    fn sa(ip: &str, port: u16) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), port)
    }
    fn r(s: &str) -> IpRange {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_denies_special_addresses() {
        let f = PeerFilter::default();
        let cases: &[(&str, DenyReason)] = &[
            ("127.0.0.1", Loopback),
            ("127.1.2.3", Loopback),
            ("0.0.0.0", Unspecified),
            ("::", Unspecified),
            ("::1", Loopback),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.0.0.1", Private),
            ("::ffff:0.0.0.0", Unspecified),
            ("::127.0.0.1", Loopback),
            ("::0.0.0.2", ThisNetwork),
            ("64:ff9b::7f00:1", Loopback),
            ("64:ff9b::a9fe:a9fe", LinkLocal),
            ("2002:7f00:1::", Loopback),
            ("2002:a00:1::5", Private),
            ("10.0.0.1", Private),
            ("10.255.255.255", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("100.64.0.1", SharedAddressSpace),
            ("100.127.255.255", SharedAddressSpace),
            ("169.254.169.254", LinkLocal),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fec0::1", SiteLocal),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("255.255.255.255", Broadcast),
            ("240.0.0.1", Reserved),
            ("255.255.255.254", Reserved),
            ("192.0.0.8", Reserved),
            ("198.18.0.1", Reserved),
            ("198.19.255.255", Reserved),
            ("0.1.2.3", ThisNetwork),
            ("ff02::1", Multicast),
            ("ff0e::1", Multicast),
            ("100::1", DiscardOnly),
            ("64:ff9b:1::a00:1", Nat64LocalUse),
        ];
        for (addr, want) in cases {
            assert_eq!(f.check(sa(addr, 4000)), Err(want.clone()), "{addr}");
        }
    }

    #[test]
    fn default_allows_public_addresses() {
        let f = PeerFilter::default();
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "::8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            // Block edges.
            "9.255.255.255",
            "11.0.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "169.253.255.255",
            "192.0.0.9",
            "192.0.0.10",
            "192.0.1.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "1.0.0.0",
            "126.255.255.255",
            "128.0.0.0",
            // Documentation blocks stay reachable (tests use them as public addresses).
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "2001:db8::1",
            "fbff::1",
            "fe7f::1",
            "64:ff9b:0:0:1::1",
        ] {
            assert_eq!(f.check(sa(addr, 4000)), Ok(()), "{addr}");
        }
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(canonical_ip(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(canonical_ip(ip("::1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(canonical_ip(ip("64:ff9b::1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(canonical_ip(ip("2002:102:304:5::6")), ip("1.2.3.4"));
        for keep in ["::", "::1", "2001:db8::1", "64:ff9b:1::1", "1.2.3.4"] {
            assert_eq!(canonical_ip(ip(keep)), ip(keep), "{keep}");
        }
    }

    #[test]
    fn allow_loopback_lifts_loopback_only() {
        let f = PeerFilter::new(PeerFilterConfig {
            allow_loopback: true,
            ..Default::default()
        });
        for addr in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
        ] {
            assert_eq!(f.check(sa(addr, 4000)), Ok(()), "{addr}");
        }
        assert_eq!(f.check(sa("10.0.0.1", 4000)), Err(Private));
        assert_eq!(f.check(sa("0.0.0.0", 4000)), Err(Unspecified));
        assert_eq!(f.check(sa("169.254.169.254", 80)), Err(LinkLocal));
    }

    #[test]
    fn config_lists() {
        let f = PeerFilter::new(PeerFilterConfig {
            allowed: vec![r("10.0.0.0/8"), r("192.168.1.5"), r("8.8.8.8")],
            denied: vec![r("8.8.8.0/24"), r("1.1.1.1-1.1.1.3")],
            ..Default::default()
        });
        // Allowed lifts private, in raw and unwrapped form.
        assert_eq!(f.check(sa("10.1.2.3", 1)), Ok(()));
        assert_eq!(f.check(sa("::ffff:10.1.2.3", 1)), Ok(()));
        assert_eq!(f.check(sa("192.168.1.5", 1)), Ok(()));
        assert_eq!(f.check(sa("192.168.1.6", 1)), Err(Private));
        // Denied denies public, also when wrapped.
        assert_eq!(f.check(sa("8.8.8.9", 1)), Err(DeniedByConfig));
        assert_eq!(f.check(sa("64:ff9b::808:809", 1)), Err(DeniedByConfig));
        assert_eq!(f.check(sa("1.1.1.2", 1)), Err(DeniedByConfig));
        assert_eq!(f.check(sa("1.1.1.4", 1)), Ok(()));
        // Allowed beats denied.
        assert_eq!(f.check(sa("8.8.8.8", 1)), Ok(()));
        assert_eq!(f.check(sa("::ffff:8.8.8.8", 1)), Ok(()));
        // Loopback is not in the allowed list.
        assert_eq!(f.check(sa("127.0.0.1", 1)), Err(Loopback));
    }

    #[test]
    fn config_lists_match_raw_and_mapped_forms() {
        let f = PeerFilter::new(PeerFilterConfig {
            allowed: vec![r("fc00::/7")],
            denied: vec![r("::ffff:9.9.9.0/120"), r("2002::/16")],
            ..Default::default()
        });
        assert_eq!(f.check(sa("fd00::1", 1)), Ok(()));
        assert_eq!(f.check(sa("9.9.9.9", 1)), Err(DeniedByConfig));
        assert_eq!(f.check(sa("::ffff:9.9.9.9", 1)), Err(DeniedByConfig));
        assert_eq!(f.check(sa("2002:808:808::1", 1)), Err(DeniedByConfig));
        assert_eq!(f.check(sa("8.8.8.8", 1)), Ok(()));
    }

    fn own_filter(allow_loopback: bool, listeners: &[&str]) -> PeerFilter {
        PeerFilter::new(PeerFilterConfig {
            allow_loopback,
            own_listeners: listeners.iter().map(|s| s.parse().unwrap()).collect(),
            own_ips: vec![ip("198.51.100.7"), ip("2001:db8::7")],
            relay_ports: (49152, 65535),
            ..Default::default()
        })
    }

    #[test]
    fn own_listener_denied_even_with_allow_loopback() {
        for allow in [false, true] {
            let f = own_filter(allow, &["198.51.100.7:3478", "[2001:db8::7]:5349"]);
            assert_eq!(f.check(sa("198.51.100.7", 3478)), Err(OwnListener));
            assert_eq!(f.check(sa("::ffff:198.51.100.7", 3478)), Err(OwnListener));
            assert_eq!(f.check(sa("2001:db8::7", 5349)), Err(OwnListener));
        }
        let f = own_filter(true, &["127.0.0.1:3478"]);
        assert_eq!(f.check(sa("127.0.0.1", 3478)), Err(OwnListener));
        assert_eq!(f.check(sa("::ffff:127.0.0.1", 3478)), Err(OwnListener));
        assert_eq!(f.check(sa("127.0.0.1", 8080)), Ok(()));
    }

    #[test]
    fn own_address_outside_relay_range() {
        let f = own_filter(false, &["198.51.100.7:3478"]);
        assert_eq!(f.check(sa("198.51.100.7", 22)), Err(OwnAddress));
        assert_eq!(f.check(sa("198.51.100.7", 49151)), Err(OwnAddress));
        assert_eq!(f.check(sa("2001:db8::7", 443)), Err(OwnAddress));
        // Another allocation on this server: client-to-client relaying.
        assert_eq!(f.check(sa("198.51.100.7", 49152)), Ok(()));
        assert_eq!(f.check(sa("198.51.100.7", 65535)), Ok(()));
        assert_eq!(f.check(sa("::ffff:198.51.100.7", 50000)), Ok(()));
        assert_eq!(f.check(sa("2001:db8::7", 50000)), Ok(()));
        // Other hosts are unaffected.
        assert_eq!(f.check(sa("198.51.100.8", 22)), Ok(()));
        // The default has no relay range: every own port is off limits.
        let f = PeerFilter::new(PeerFilterConfig {
            own_ips: vec![ip("198.51.100.7")],
            ..Default::default()
        });
        assert_eq!(f.check(sa("198.51.100.7", 50000)), Err(OwnAddress));
        assert_eq!(f.check(sa("198.51.100.7", 0)), Err(OwnAddress));
    }

    #[test]
    fn own_loopback_ip_follows_allow_loopback() {
        let cfg = PeerFilterConfig {
            own_ips: vec![ip("127.0.0.1")],
            relay_ports: (49152, 65535),
            ..Default::default()
        };
        let f = PeerFilter::new(cfg.clone());
        assert_eq!(f.check(sa("127.0.0.1", 22)), Err(OwnAddress));
        let f = PeerFilter::new(PeerFilterConfig {
            allow_loopback: true,
            ..cfg
        });
        assert_eq!(f.check(sa("127.0.0.1", 22)), Ok(()));
    }

    #[test]
    fn wildcard_listener_matches_own_ips_and_loopback() {
        let f = PeerFilter::new(PeerFilterConfig {
            allow_loopback: true,
            own_listeners: vec![sa("0.0.0.0", 3478), sa("::", 5349)],
            own_ips: vec![ip("198.51.100.7")],
            relay_ports: (49152, 65535),
            ..Default::default()
        });
        assert_eq!(f.check(sa("198.51.100.7", 3478)), Err(OwnListener));
        assert_eq!(f.check(sa("198.51.100.7", 5349)), Err(OwnListener));
        assert_eq!(f.check(sa("127.0.0.1", 3478)), Err(OwnListener));
        assert_eq!(f.check(sa("::1", 5349)), Err(OwnListener));
        assert_eq!(f.check(sa("0.0.0.0", 3478)), Err(OwnListener));
        // Not our IP: a TURN server elsewhere is a fine peer.
        assert_eq!(f.check(sa("198.51.100.8", 3478)), Ok(()));
        assert_eq!(f.check(sa("127.0.0.1", 3479)), Ok(()));
    }

    /// Host addresses change at runtime: a new one becomes own (listener port, other services),
    /// a removed one is an ordinary peer again, and the configured own IPs stay own throughout.
    #[test]
    fn host_addresses_follow_the_host() {
        let mut f = PeerFilter::new(PeerFilterConfig {
            own_listeners: vec![sa("0.0.0.0", 3478)],
            own_ips: vec![ip("198.51.100.7")],
            host_ips: vec![ip("11.0.0.7")],
            relay_ports: (49152, 65535),
            ..Default::default()
        });
        assert_eq!(f.check(sa("11.0.0.7", 3478)), Err(OwnListener));
        assert_eq!(f.check(sa("11.0.0.9", 22)), Ok(()));
        f.set_host_ips(vec![ip("11.0.0.9"), ip("::ffff:11.0.0.10")]);
        assert_eq!(f.host_ips(), [ip("11.0.0.9"), ip("::ffff:11.0.0.10")]);
        assert_eq!(f.check(sa("11.0.0.9", 22)), Err(OwnAddress));
        assert_eq!(f.check(sa("11.0.0.9", 3478)), Err(OwnListener));
        // An IPv4-mapped interface address is the IPv4 address.
        assert_eq!(f.check(sa("11.0.0.10", 22)), Err(OwnAddress));
        assert_eq!(f.check(sa("11.0.0.7", 3478)), Ok(()));
        assert_eq!(f.check(sa("198.51.100.7", 22)), Err(OwnAddress));
        // The relay range is open on the configured address only: an interface address is
        // another service of the host there too.
        assert_eq!(f.check(sa("198.51.100.7", 50000)), Ok(()));
        assert_eq!(f.check(sa("11.0.0.9", 50000)), Err(OwnAddress));
    }

    /// A wildcard listener makes every interface address own, loopback and private ones
    /// included; none of them opens the relay range (a UDP service of the host on
    /// 127.0.0.1:51820 must stay out of reach), while the configured relay address does.
    #[test]
    fn wildcard_host_addresses_do_not_open_the_relay_range() {
        let f = PeerFilter::new(PeerFilterConfig {
            own_listeners: vec![sa("0.0.0.0", 3478), sa("::", 3478)],
            own_ips: vec![ip("203.0.113.5")],
            host_ips: vec![
                ip("127.0.0.1"),
                ip("::1"),
                ip("172.17.0.1"),
                ip("169.254.3.4"),
                ip("203.0.113.5"),
            ],
            relay_ports: (49152, 65535),
            ..Default::default()
        });
        for peer in [
            sa("127.0.0.1", 51820),
            sa("::ffff:127.0.0.1", 50000),
            sa("::1", 50000),
            sa("172.17.0.1", 50000),
            sa("169.254.3.4", 50000),
        ] {
            assert_eq!(f.check(peer), Err(OwnAddress), "{peer}");
        }
        assert_eq!(f.check(sa("203.0.113.5", 50000)), Ok(()));
    }

    #[test]
    fn http_listeners_are_refused_as_peers() {
        // The metrics and admin listeners: their exact address (or any own/loopback address
        // for a wildcard one), even inside the relay range; their IP does not become own.
        let mut f = PeerFilter::new(PeerFilterConfig {
            own_listeners: vec![sa("203.0.113.5", 3478)],
            relay_ports: (49152, 65535),
            ..Default::default()
        });
        f.add_listeners([sa("203.0.113.5", 50001), sa("0.0.0.0", 50002)]);
        assert_eq!(f.check(sa("203.0.113.5", 50001)), Err(OwnListener));
        assert_eq!(f.check(sa("203.0.113.5", 50002)), Err(OwnListener));
        assert_eq!(f.check(sa("127.0.0.1", 50002)), Err(OwnListener));
        assert_eq!(f.check(sa("203.0.113.5", 50003)), Ok(()));
        f.add_listeners([sa("127.0.0.1", 9641)]);
        assert_eq!(f.check(sa("127.0.0.1", 9641)), Err(OwnListener));
        assert_eq!(f.check(sa("198.51.100.9", 9641)), Ok(()));
    }

    #[test]
    fn listener_ip_counts_as_own() {
        let f = PeerFilter::new(PeerFilterConfig {
            own_listeners: vec![sa("203.0.113.5", 3478)],
            relay_ports: (49152, 65535),
            ..Default::default()
        });
        assert_eq!(f.check(sa("203.0.113.5", 22)), Err(OwnAddress));
        assert_eq!(f.check(sa("203.0.113.5", 50000)), Ok(()));
    }

    #[test]
    fn range_parsing() {
        let single = r("10.0.0.1");
        assert_eq!(single, IpRange::single(ip("10.0.0.1")));
        assert!(single.contains(ip("10.0.0.1")));
        assert!(!single.contains(ip("10.0.0.2")));
        assert!(!single.contains(ip("::ffff:10.0.0.1")));

        let net = r("10.0.0.0/8");
        assert!(net.contains(ip("10.0.0.0")));
        assert!(net.contains(ip("10.255.255.255")));
        assert!(!net.contains(ip("11.0.0.0")));
        assert!(!net.contains(ip("9.255.255.255")));

        let ula = r("fc00::/7");
        assert!(ula.contains(ip("fdff:ffff::1")));
        assert!(!ula.contains(ip("fe00::")));
        assert_eq!(r("[fc00::]/7"), ula);

        let span = r("10.0.0.1-10.0.0.9");
        assert!(span.contains(ip("10.0.0.1")));
        assert!(span.contains(ip("10.0.0.9")));
        assert!(!span.contains(ip("10.0.0.10")));
        assert!(!span.contains(ip("10.0.0.0")));
        assert_eq!(r(" 10.0.0.1 - 10.0.0.9 "), span);

        assert_eq!(r("[::1]"), IpRange::single(ip("::1")));
        assert_eq!(r("[::1]-[::2]"), r("::1-::2"));
        assert_eq!(r("10.0.0.1/8"), net, "host bits are masked off");
        assert_eq!(r("10.0.0.5-10.0.0.5"), r("10.0.0.5"));
        assert!(r("0.0.0.0/0").contains(ip("255.255.255.255")));
        assert!(!r("0.0.0.0/0").contains(ip("::1")));
        assert!(r("::/0").contains(ip("ffff::1")));
        assert_eq!(r("10.0.0.7/32"), r("10.0.0.7"));
    }

    #[test]
    fn range_display_round_trips() {
        for (text, shown) in [
            ("10.0.0.1", "10.0.0.1"),
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.0.0.1/8", "10.0.0.0/8"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("10.0.0.1-10.0.0.9", "10.0.0.1-10.0.0.9"),
            ("10.0.0.0-10.0.0.255", "10.0.0.0/24"),
            ("fc00::/7", "fc00::/7"),
            ("[::1]", "::1"),
            ("::/0", "::/0"),
            ("::ffff:10.0.0.0/104", "::ffff:10.0.0.0/104"),
            ("2001:db8::1-2001:db8::3", "2001:db8::1-2001:db8::3"),
        ] {
            let range = r(text);
            assert_eq!(range.to_string(), shown, "{text}");
            assert_eq!(r(shown), range, "{text}");
        }
    }

    #[test]
    fn range_parse_errors() {
        let err = |s: &str| s.parse::<IpRange>().unwrap_err();
        let e = err("10.0.0.0/33");
        assert!(
            e.contains("prefix length 33") && e.contains("max 32"),
            "{e}"
        );
        let e = err("::/129");
        assert!(
            e.contains("prefix length 129") && e.contains("max 128"),
            "{e}"
        );
        let e = err("10.0.0.9-10.0.0.1");
        assert!(e.contains("backwards"), "{e}");
        let e = err("10.0.0.1-::1");
        assert!(e.contains("mixes IPv4 and IPv6"), "{e}");
        let e = err("banana");
        assert!(e.contains("`banana` is not an IP address"), "{e}");
        let e = err("10.0.0.0/abc");
        assert!(e.contains("prefix length `abc`"), "{e}");
        let e = err("10.0.0.0/");
        assert!(e.contains("prefix length ``"), "{e}");
        let e = err("10.0.0.0/-1");
        assert!(e.contains("`10.0.0.0/`"), "{e}"); // read as a range whose start is bad
        assert!(err("").contains("empty"));
        assert!(err("[::1").contains("brackets"));
        assert!(err("[]").contains("missing"));
        assert!(err("10.0.0.1-").contains("missing"));
        assert!(err("10.0.0.1:80").contains("not an IP address"));
        assert!(err("fe80::1%eth0").contains("not an IP address"));
    }

    #[test]
    fn reasons_display_lowercase_and_distinct() {
        let all = [
            DeniedByConfig,
            Loopback,
            Unspecified,
            LinkLocal,
            SiteLocal,
            Multicast,
            Broadcast,
            Private,
            SharedAddressSpace,
            ThisNetwork,
            Reserved,
            UniqueLocal,
            DiscardOnly,
            Nat64LocalUse,
            OwnListener,
            OwnAddress,
        ];
        let names: std::collections::HashSet<String> = all.iter().map(|r| r.to_string()).collect();
        assert_eq!(names.len(), all.len());
        for n in &names {
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{n}"
            );
        }
        assert_eq!(Loopback.to_string(), "loopback");
    }
}
