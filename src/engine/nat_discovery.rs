//! RFC 5780 NAT behaviour discovery: which local address answers a Binding request and what
//! the response says about the server's other address. Pure functions; the engine puts the
//! chosen source into the response's 5-tuple and the runtime sends it from the listener
//! socket bound to that address (every shard owns one socket per listening address).
use std::net::{IpAddr, SocketAddr};

/// The server's two IPs (same family) and two ports; it listens on all four combinations
/// (RFC 5780 §4.1 "alternate address" and "alternate port").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rfc5780 {
    pub ips: [IpAddr; 2],
    pub ports: [u16; 2],
}

/// RFC 5780 §7.2 CHANGE-REQUEST flag bits.
pub const CHANGE_IP: u32 = 0x4;
pub const CHANGE_PORT: u32 = 0x2;

/// A parsed CHANGE-REQUEST (RFC 5780 §7.2): 4 bytes, flags in the low bits.
pub fn change_request(v: &[u8]) -> Option<(bool, bool)> {
    let b: [u8; 4] = v.try_into().ok()?;
    let flags = u32::from_be_bytes(b);
    Some((flags & CHANGE_IP != 0, flags & CHANGE_PORT != 0))
}

/// Remove CHANGE-REQUEST from the first `n` unknown comprehension-required attributes;
/// returns how many are left.
pub fn strip_change_request(unknown: &mut [u16], n: usize) -> usize {
    let mut k = 0;
    for i in 0..n.min(unknown.len()) {
        if unknown[i] != crate::codec::stun::attr::CHANGE_REQUEST {
            unknown[k] = unknown[i];
            k += 1;
        }
    }
    k
}

/// Where the response to a Binding request goes out from and what it advertises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    /// Local address to send from; also RESPONSE-ORIGIN (RFC 5780 §7.3).
    pub source: SocketAddr,
    /// OTHER-ADDRESS (RFC 5780 §7.4): the address differing in both IP and port from the
    /// one the request was received on.
    pub other: SocketAddr,
}

impl Rfc5780 {
    /// For a request received on `local`: the source to answer from (the other IP and/or port
    /// as CHANGE-REQUEST asks, §7.2) and OTHER-ADDRESS. None when `local` is not one of the
    /// four addresses (another listener: answered as without RFC 5780).
    pub fn answer(&self, local: SocketAddr, change_ip: bool, change_port: bool) -> Option<Answer> {
        let i = self.ips.iter().position(|&ip| ip == local.ip())?;
        let p = self.ports.iter().position(|&p| p == local.port())?;
        let other_i = 1 - i;
        let other_p = 1 - p;
        let source = SocketAddr::new(
            self.ips[if change_ip { other_i } else { i }],
            self.ports[if change_port { other_p } else { p }],
        );
        let other = SocketAddr::new(self.ips[other_i], self.ports[other_p]);
        Some(Answer { source, other })
    }

    /// The four listening addresses.
    pub fn addresses(&self) -> [SocketAddr; 4] {
        let [a, b] = self.ips;
        let [p, q] = self.ports;
        [
            SocketAddr::new(a, p),
            SocketAddr::new(a, q),
            SocketAddr::new(b, p),
            SocketAddr::new(b, q),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Rfc5780 {
        Rfc5780 {
            ips: ["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()],
            ports: [3478, 3479],
        }
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn answers_from_the_requested_address() {
        let c = cfg();
        let local = a("10.0.0.1:3478");
        let other = a("10.0.0.2:3479");
        for (ip, port, src) in [
            (false, false, "10.0.0.1:3478"),
            (false, true, "10.0.0.1:3479"),
            (true, false, "10.0.0.2:3478"),
            (true, true, "10.0.0.2:3479"),
        ] {
            assert_eq!(
                c.answer(local, ip, port),
                Some(Answer {
                    source: a(src),
                    other
                }),
                "change ip {ip} port {port}"
            );
        }
        // Received on the alternate address: the other one is the primary.
        assert_eq!(
            c.answer(a("10.0.0.2:3479"), false, false).unwrap().other,
            a("10.0.0.1:3478")
        );
        assert_eq!(
            c.answer(a("10.0.0.2:3478"), true, false).unwrap(),
            Answer {
                source: a("10.0.0.1:3478"),
                other: a("10.0.0.1:3479")
            }
        );
        assert_eq!(c.answer(a("10.0.0.3:3478"), false, false), None);
        assert_eq!(c.answer(a("10.0.0.1:5349"), false, false), None);
    }

    #[test]
    fn change_request_parses() {
        assert_eq!(change_request(&[0, 0, 0, 6]), Some((true, true)));
        assert_eq!(change_request(&[0, 0, 0, 4]), Some((true, false)));
        assert_eq!(change_request(&[0, 0, 0, 2]), Some((false, true)));
        assert_eq!(change_request(&[0, 0, 0, 0]), Some((false, false)));
        assert_eq!(change_request(&[0, 0, 6]), None);
    }

    #[test]
    fn four_addresses() {
        assert_eq!(cfg().addresses().len(), 4);
        assert!(cfg().addresses().contains(&a("10.0.0.2:3479")));
    }
}

/// The engine with RFC 5780 on: which socket answers and what the response carries.
#[cfg(test)]
mod engine_tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::codec::stun::{
        attr, decode_addr, decode_error_code, method, Class, Message, Writer,
    };
    use crate::engine::shared::Shared;
    use crate::engine::{Engine, EngineConfig, FiveTuple, Transport};

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn engine(on: bool) -> Engine {
        let cfg = EngineConfig {
            rfc5780: on.then(|| Rfc5780 {
                ips: [a("10.0.0.1:0").ip(), a("10.0.0.2:0").ip()],
                ports: [3478, 3479],
            }),
            ..Default::default()
        };
        let shared = Arc::new(Shared::new(cfg.min_port, cfg.max_port, [1; 32], 7));
        Engine::new(Arc::new(cfg), shared, Instant::now(), 1_700_000_000, 1)
    }

    /// Send a Binding request (with CHANGE-REQUEST `change` if given) on `server`; return the
    /// socket it is answered from and the response bytes.
    fn bind(
        e: &mut Engine,
        server: &str,
        tr: Transport,
        change: Option<&[u8]>,
    ) -> (SocketAddr, Vec<u8>) {
        let mut buf = Vec::new();
        let mut w = Writer::new(&mut buf, method::BINDING, Class::Request, &[9; 12]);
        if let Some(c) = change {
            w.attr(attr::CHANGE_REQUEST, c);
        }
        let tuple = FiveTuple {
            client: a("198.51.100.7:5000"),
            server: a(server),
            transport: tr,
        };
        let _ = e.handle_client(Instant::now(), tuple, &buf);
        let t = e.poll_transmit().expect("a response");
        assert_eq!(t.tuple.client, tuple.client);
        assert!(e.poll_transmit().is_none());
        (t.tuple.server, t.data)
    }

    fn error_code(raw: &[u8]) -> Option<u16> {
        let m = Message::parse(raw).unwrap();
        m.get(attr::ERROR_CODE)
            .and_then(decode_error_code)
            .map(|(c, _)| c)
    }

    #[test]
    fn change_request_picks_the_sending_socket_and_attributes() {
        let mut e = engine(true);
        for (flags, from) in [
            (0u8, "10.0.0.1:3478"),
            (2, "10.0.0.1:3479"),
            (4, "10.0.0.2:3478"),
            (6, "10.0.0.2:3479"),
        ] {
            let (src, raw) = bind(
                &mut e,
                "10.0.0.1:3478",
                Transport::Udp,
                Some(&[0, 0, 0, flags]),
            );
            assert_eq!(src, a(from), "flags {flags}");
            let m = Message::parse(&raw).unwrap();
            assert_eq!(m.class, Class::Success);
            assert_eq!(
                m.get(attr::RESPONSE_ORIGIN).and_then(decode_addr),
                Some(a(from))
            );
            assert_eq!(
                m.get(attr::OTHER_ADDRESS).and_then(decode_addr),
                Some(a("10.0.0.2:3479"))
            );
        }
        // Without CHANGE-REQUEST: answered from where it came, attributes present.
        let (src, raw) = bind(&mut e, "10.0.0.2:3479", Transport::Udp, None);
        assert_eq!(src, a("10.0.0.2:3479"));
        let m = Message::parse(&raw).unwrap();
        assert_eq!(
            m.get(attr::OTHER_ADDRESS).and_then(decode_addr),
            Some(a("10.0.0.1:3478"))
        );
    }

    #[test]
    fn change_request_is_refused_where_rfc5780_does_not_apply() {
        // Off: CHANGE-REQUEST is an unknown comprehension-required attribute (RFC 8489 §6.3.1).
        let mut off = engine(false);
        let (src, raw) = bind(
            &mut off,
            "10.0.0.1:3478",
            Transport::Udp,
            Some(&[0, 0, 0, 6]),
        );
        assert_eq!((src, error_code(&raw)), (a("10.0.0.1:3478"), Some(420)));
        let (_, raw) = bind(&mut off, "10.0.0.1:3478", Transport::Udp, None);
        let m = Message::parse(&raw).unwrap();
        assert!(!m.has(attr::OTHER_ADDRESS) && !m.has(attr::RESPONSE_ORIGIN));

        let mut on = engine(true);
        // A stream cannot be answered from another address.
        let (_, raw) = bind(
            &mut on,
            "10.0.0.1:3478",
            Transport::Tcp,
            Some(&[0, 0, 0, 2]),
        );
        assert_eq!(error_code(&raw), Some(420));
        // Another listener than the four.
        let (_, raw) = bind(
            &mut on,
            "10.0.0.3:3478",
            Transport::Udp,
            Some(&[0, 0, 0, 2]),
        );
        assert_eq!(error_code(&raw), Some(420));
        // Malformed value.
        let (src, raw) = bind(&mut on, "10.0.0.1:3478", Transport::Udp, Some(&[0, 6]));
        assert_eq!((src, error_code(&raw)), (a("10.0.0.1:3478"), Some(400)));
    }
}
