//! `ferroturn stun-probe HOST[:PORT]`: one STUN Binding transaction (turnutils_stunclient-like)
//! over UDP or TCP, reporting XOR-MAPPED-ADDRESS, RESPONSE-ORIGIN and OTHER-ADDRESS (RFC 5780
//! §7.3, §7.4) and the round-trip time. `--change-ip` / `--change-port` send CHANGE-REQUEST
//! (RFC 5780 §7.2); the answer then comes from another address, so the UDP socket is not
//! connected and the response is matched by transaction id only.
//!
//! Retransmission per RFC 8489 §6.2.1: over UDP the request is sent Rc times (default 7), the
//! gap starting at RTO (default 500 ms) and doubling, and the last one waited for Rm × RTO
//! (Rm = 16): 39.5 s in all with the defaults. Over TCP (§6.2.2) one send and the same total
//! wait. Both are bounded by the options.
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use crate::codec::stun::{
    attr, decode_addr, decode_error_code, decode_xor_addr, method, Class, Message, Writer,
};

/// RFC 8489 §6.2.1: Rm, the last wait in units of RTO.
const RM: u32 = 16;
/// Default STUN port (RFC 8489 §18.6).
const DEFAULT_PORT: u16 = 3478;

/// RFC 5780 §7.2 CHANGE-REQUEST flags.
pub const CHANGE_IP: u32 = 0x4;
pub const CHANGE_PORT: u32 = 0x2;

#[derive(Clone, Debug)]
pub struct ProbeOptions {
    pub server: SocketAddr,
    pub tcp: bool,
    pub change_ip: bool,
    pub change_port: bool,
    /// Initial retransmission timeout (RFC 8489 §6.2.1 RTO).
    pub rto: Duration,
    /// Transmissions over UDP (RFC 8489 §6.2.1 Rc).
    pub transmissions: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    pub server: SocketAddr,
    pub transport: &'static str,
    /// Our local address (as the OS chose it).
    pub local: SocketAddr,
    /// XOR-MAPPED-ADDRESS (or MAPPED-ADDRESS from an RFC 3489 server).
    pub mapped: Option<SocketAddr>,
    /// The address the response actually came from (UDP; for TCP the server).
    pub source: SocketAddr,
    pub response_origin: Option<SocketAddr>,
    pub other_address: Option<SocketAddr>,
    pub rtt: Duration,
    /// How many times the request was sent.
    pub transmissions: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// No response within the RFC 8489 §6.2.1 schedule.
    Timeout {
        waited: Duration,
        transmissions: u32,
    },
    /// The server answered with an error response.
    ErrorResponse { code: u16, reason: String },
    /// Socket / connection error, malformed response.
    Io(String),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Timeout {
                waited,
                transmissions,
            } => write!(
                f,
                "no response after {transmissions} transmission(s) and {:.1} s",
                waited.as_secs_f64()
            ),
            ProbeError::ErrorResponse { code, reason } => {
                write!(f, "error response {code} {reason}")
            }
            ProbeError::Io(e) => f.write_str(e),
        }
    }
}

/// `HOST`, `HOST:PORT`, `IP`, `[IPv6]:PORT` -> the first address it resolves to.
pub fn resolve(target: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = target.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    let with_port = if target.parse::<SocketAddr>().is_ok()
        || target
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.contains(':') && p.parse::<u16>().is_ok())
    {
        target.to_owned()
    } else {
        format!("{target}:{DEFAULT_PORT}")
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {target:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{target:?} resolves to no address"))
}

fn request(opts: &ProbeOptions) -> ([u8; 12], Vec<u8>) {
    let mut tid = [0u8; 12];
    // A weak id only costs a spoofable probe; the time is a fine fallback.
    if getrandom::fill(&mut tid).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let n = t ^ (u128::from(std::process::id()) << 64);
        tid.copy_from_slice(&n.to_be_bytes()[4..]);
    }
    let mut buf = Vec::new();
    let mut w = Writer::new(&mut buf, method::BINDING, Class::Request, &tid);
    let flags =
        if opts.change_ip { CHANGE_IP } else { 0 } | if opts.change_port { CHANGE_PORT } else { 0 };
    if flags != 0 {
        w.u32(attr::CHANGE_REQUEST, flags);
    }
    w.fingerprint();
    (tid, buf)
}

/// Run one Binding transaction.
pub fn probe(opts: &ProbeOptions) -> Result<ProbeResult, ProbeError> {
    let io = |what: &str, e: std::io::Error| ProbeError::Io(format!("{what}: {e}"));
    let (tid, req) = request(opts);
    let total = total_wait(opts);
    if opts.tcp {
        let start = Instant::now();
        let mut s = TcpStream::connect_timeout(&opts.server, total)
            .map_err(|e| io(&format!("connect to {}", opts.server), e))?;
        let local = s.local_addr().map_err(|e| io("local address", e))?;
        // RTT of the transaction, not of the TCP handshake.
        let sent = Instant::now();
        s.write_all(&req).map_err(|e| io("send", e))?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        loop {
            let left = total.checked_sub(start.elapsed()).filter(|d| !d.is_zero());
            let Some(left) = left else {
                return Err(ProbeError::Timeout {
                    waited: start.elapsed(),
                    transmissions: 1,
                });
            };
            s.set_read_timeout(Some(left))
                .map_err(|e| io("socket", e))?;
            match s.read(&mut chunk) {
                Ok(0) => return Err(ProbeError::Io("connection closed by the server".into())),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(io("receive", e)),
            }
            if buf.len() >= 20 {
                let len = 20 + usize::from(u16::from_be_bytes([buf[2], buf[3]]));
                if buf.len() >= len {
                    let rtt = sent.elapsed();
                    return interpret(&buf[..len], &tid, opts, local, opts.server, rtt, 1);
                }
            }
            if buf.len() > 65_556 {
                return Err(ProbeError::Io("oversized response".into()));
            }
        }
    }
    let bind: SocketAddr = if opts.server.is_ipv4() {
        "0.0.0.0:0"
            .parse()
            .map_err(|_| ProbeError::Io("bind".into()))?
    } else {
        "[::]:0"
            .parse()
            .map_err(|_| ProbeError::Io("bind".into()))?
    };
    let sock = UdpSocket::bind(bind).map_err(|e| io("bind", e))?;
    // The local address as the server sees it: connect a throwaway socket for the route.
    let local = {
        let probe = UdpSocket::bind(bind).map_err(|e| io("bind", e))?;
        probe.connect(opts.server).map_err(|e| io("route", e))?;
        let ip = probe.local_addr().map_err(|e| io("route", e))?.ip();
        SocketAddr::new(ip, sock.local_addr().map_err(|e| io("bind", e))?.port())
    };
    let start = Instant::now();
    let mut first_sent = start;
    let mut rto = opts.rto;
    let mut buf = [0u8; 2048];
    for n in 1..=opts.transmissions {
        let sent = Instant::now();
        if n == 1 {
            first_sent = sent;
        }
        sock.send_to(&req, opts.server).map_err(|e| io("send", e))?;
        let wait = if n == opts.transmissions {
            opts.rto * RM
        } else {
            rto
        };
        let until = sent + wait;
        while let Some(left) = until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        {
            sock.set_read_timeout(Some(left))
                .map_err(|e| io("socket", e))?;
            match sock.recv_from(&mut buf) {
                Ok((len, from)) => {
                    let Ok(msg) = Message::parse(&buf[..len]) else {
                        continue;
                    };
                    if msg.transaction_id() != tid {
                        continue;
                    }
                    // RTT of a retransmitted request is ambiguous (Karn): measure from the
                    // last transmission, which is what answered at the earliest.
                    let rtt = sent.elapsed();
                    return interpret(&buf[..len], &tid, opts, local, from, rtt, n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                // ICMP port unreachable on Linux surfaces as ECONNREFUSED on the next recv;
                // keep retransmitting as the RFC schedule says.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(io("receive", e)),
            }
        }
        rto *= 2;
    }
    Err(ProbeError::Timeout {
        waited: first_sent.elapsed(),
        transmissions: opts.transmissions,
    })
}

/// The whole RFC 8489 §6.2.1 schedule: RTO × (1 + 2 + ... + 2^(Rc-2)) + Rm × RTO.
pub fn total_wait(opts: &ProbeOptions) -> Duration {
    let gaps: u32 = (0..opts.transmissions.saturating_sub(1))
        .map(|i| 1u32 << i.min(20))
        .sum();
    opts.rto * (gaps + RM)
}

fn interpret(
    raw: &[u8],
    tid: &[u8; 12],
    opts: &ProbeOptions,
    local: SocketAddr,
    source: SocketAddr,
    rtt: Duration,
    transmissions: u32,
) -> Result<ProbeResult, ProbeError> {
    let msg =
        Message::parse(raw).map_err(|e| ProbeError::Io(format!("malformed response: {e:?}")))?;
    if msg.method != method::BINDING {
        return Err(ProbeError::Io("response is not a Binding response".into()));
    }
    match msg.class {
        Class::Success => {}
        Class::Error => {
            let (code, reason) = msg
                .get(attr::ERROR_CODE)
                .and_then(decode_error_code)
                .map(|(c, r)| (c, r.to_owned()))
                .unwrap_or((0, "without ERROR-CODE".into()));
            return Err(ProbeError::ErrorResponse { code, reason });
        }
        _ => return Err(ProbeError::Io("response of an unexpected class".into())),
    }
    let mapped = msg
        .get(attr::XOR_MAPPED_ADDRESS)
        .and_then(|v| decode_xor_addr(v, tid))
        .or_else(|| msg.get(attr::MAPPED_ADDRESS).and_then(decode_addr));
    Ok(ProbeResult {
        server: opts.server,
        transport: if opts.tcp { "tcp" } else { "udp" },
        local,
        mapped,
        source,
        response_origin: msg.get(attr::RESPONSE_ORIGIN).and_then(decode_addr),
        other_address: msg.get(attr::OTHER_ADDRESS).and_then(decode_addr),
        rtt,
        transmissions,
    })
}

impl ProbeResult {
    pub fn text(&self) -> String {
        let opt = |a: Option<SocketAddr>| a.map_or("-".to_owned(), |a| a.to_string());
        let mut s = String::new();
        let _ = writeln!(s, "server:          {} ({})", self.server, self.transport);
        let _ = writeln!(s, "local address:   {}", self.local);
        let _ = writeln!(s, "mapped address:  {}", opt(self.mapped));
        let _ = writeln!(s, "response from:   {}", self.source);
        let _ = writeln!(s, "response origin: {}", opt(self.response_origin));
        let _ = writeln!(s, "other address:   {}", opt(self.other_address));
        let _ = write!(
            s,
            "rtt:             {:.3} ms ({} transmission{})",
            self.rtt.as_secs_f64() * 1e3,
            self.transmissions,
            if self.transmissions == 1 { "" } else { "s" }
        );
        s
    }

    pub fn json(&self) -> String {
        let opt = |a: Option<SocketAddr>| a.map(|a| a.to_string());
        serde_json::json!({
            "server": self.server.to_string(),
            "transport": self.transport,
            "local": self.local.to_string(),
            "mapped_address": opt(self.mapped),
            "response_source": self.source.to_string(),
            "response_origin": opt(self.response_origin),
            "other_address": opt(self.other_address),
            "rtt_ms": self.rtt.as_secs_f64() * 1e3,
            "transmissions": self.transmissions,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(rto_ms: u64, rc: u32) -> ProbeOptions {
        ProbeOptions {
            server: "127.0.0.1:9".parse().unwrap(),
            tcp: false,
            change_ip: false,
            change_port: false,
            rto: Duration::from_millis(rto_ms),
            transmissions: rc,
        }
    }

    #[test]
    fn rfc8489_schedule_is_39_5_s_by_default() {
        // §6.2.1: "if RTO is 500 ms ... the client will give up after 39.5 s".
        assert_eq!(total_wait(&opts(500, 7)), Duration::from_millis(39_500));
        assert_eq!(total_wait(&opts(100, 1)), Duration::from_millis(1_600));
    }

    #[test]
    fn resolves_host_forms() {
        assert_eq!(
            resolve("127.0.0.1").unwrap(),
            "127.0.0.1:3478".parse().unwrap()
        );
        assert_eq!(
            resolve("127.0.0.1:9").unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        assert_eq!(resolve("::1").unwrap(), "[::1]:3478".parse().unwrap());
        assert_eq!(resolve("[::1]:5").unwrap(), "[::1]:5".parse().unwrap());
        assert_eq!(resolve("localhost:7").unwrap().port(), 7);
        assert!(resolve("no-such-host.invalid").is_err());
    }

    #[test]
    fn change_request_is_encoded() {
        let mut o = opts(100, 1);
        o.change_ip = true;
        o.change_port = true;
        let (_, raw) = request(&o);
        let m = Message::parse(&raw).unwrap();
        assert_eq!(m.get(attr::CHANGE_REQUEST), Some(&[0, 0, 0, 6][..]));
        let (_, raw) = request(&opts(100, 1));
        assert!(!Message::parse(&raw).unwrap().has(attr::CHANGE_REQUEST));
    }
}
