//! A minimal blocking TURN-over-UDP client on the project's own codec, for tests that drive the
//! `ferroturn` binary as a child process: Allocate with long-term credentials (the 401 round
//! trip of RFC 8489 §9.2), CreatePermission, ChannelBind, ChannelData. Every receive is bounded
//! by the socket's read timeout.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use ferroturn::codec::long_term_key_md5;
use ferroturn::codec::stun::{
    attr, decode_error_code, decode_xor_addr, method, Class, IntegrityKind, Message, Writer,
};

/// Result of a request: success attributes we care about, or the error code.
#[derive(Debug)]
pub enum Reply {
    Ok { relayed: Option<SocketAddr> },
    Err(u16),
}

pub struct TurnUdp {
    pub sock: UdpSocket,
    pub server: SocketAddr,
    user: String,
    key: [u8; 16],
    realm: Vec<u8>,
    nonce: Vec<u8>,
    tid: u32,
}

impl TurnUdp {
    pub fn new(server: SocketAddr, user: &str, pass: &str, realm: &str) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind client");
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        TurnUdp {
            sock,
            server,
            user: user.to_owned(),
            key: long_term_key_md5(user, realm, pass),
            realm: Vec::new(),
            nonce: Vec::new(),
            tid: 0,
        }
    }

    fn next_tid(&mut self) -> [u8; 12] {
        self.tid += 1;
        let mut t = [7u8; 12];
        t[..4].copy_from_slice(&self.tid.to_be_bytes());
        t
    }

    /// One signed request (unsigned before the first 401), retransmitted up to 5 times;
    /// the first 401 (and a 438) is answered by signing with its REALM and NONCE.
    pub fn request(&mut self, m: u16, body: &dyn Fn(&mut Writer)) -> Reply {
        for _round in 0..3 {
            let tid = self.next_tid();
            let mut buf = Vec::new();
            let mut w = Writer::new(&mut buf, m, Class::Request, &tid);
            body(&mut w);
            if !self.nonce.is_empty() {
                w.attr(attr::USERNAME, self.user.as_bytes())
                    .attr(attr::REALM, &self.realm)
                    .attr(attr::NONCE, &self.nonce)
                    .integrity(IntegrityKind::Sha1, &self.key);
            }
            let mut resp = None;
            'tx: for _ in 0..5 {
                self.sock.send_to(&buf, self.server).expect("send");
                let mut rb = [0u8; 2048];
                // Other traffic on this socket (ChannelData) does not extend the wait.
                let until = Instant::now() + Duration::from_millis(500);
                while Instant::now() < until {
                    match self.sock.recv_from(&mut rb) {
                        Ok((n, _)) => {
                            if let Ok(msg) = Message::parse(&rb[..n]) {
                                if msg.transaction_id() == tid {
                                    resp = Some(rb[..n].to_vec());
                                    break 'tx;
                                }
                            }
                        }
                        Err(_) => continue 'tx,
                    }
                }
            }
            let raw = resp.expect("no response from the server after 5 transmissions");
            let msg = Message::parse(&raw).expect("parse response");
            if msg.class == Class::Success {
                let relayed = msg
                    .get(attr::XOR_RELAYED_ADDRESS)
                    .and_then(|v| decode_xor_addr(v, &tid));
                return Reply::Ok { relayed };
            }
            let code = msg
                .get(attr::ERROR_CODE)
                .and_then(decode_error_code)
                .map(|(c, _)| c)
                .expect("error response without ERROR-CODE");
            // 401 to an unsigned request and 438 Stale Nonce carry the REALM/NONCE to sign
            // with (RFC 8489 §9.2.4); a 401 to a signed request is final.
            let signed = !self.nonce.is_empty();
            if let (Some(n), true) = (
                msg.get(attr::NONCE),
                (code == 401 && !signed) || code == 438,
            ) {
                self.nonce = n.to_vec();
                if let Some(r) = msg.get(attr::REALM) {
                    self.realm = r.to_vec();
                }
                continue;
            }
            return Reply::Err(code);
        }
        panic!("no final answer after 3 nonce rounds");
    }

    /// Allocate a UDP relay: the relayed address, or the error code.
    pub fn allocate(&mut self) -> Result<SocketAddr, u16> {
        match self.request(method::ALLOCATE, &|w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        }) {
            Reply::Ok { relayed } => {
                Ok(relayed.expect("Allocate success without XOR-RELAYED-ADDRESS"))
            }
            Reply::Err(c) => Err(c),
        }
    }

    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Result<(), u16> {
        let mut num = [0u8; 4];
        num[..2].copy_from_slice(&channel.to_be_bytes());
        match self.request(method::CHANNEL_BIND, &|w| {
            w.attr(attr::CHANNEL_NUMBER, &num)
                .xor_addr(attr::XOR_PEER_ADDRESS, peer);
        }) {
            Reply::Ok { .. } => Ok(()),
            Reply::Err(c) => Err(c),
        }
    }

    pub fn refresh(&mut self, lifetime: u32) -> Result<(), u16> {
        match self.request(method::REFRESH, &|w| {
            w.u32(attr::LIFETIME, lifetime);
        }) {
            Reply::Ok { .. } => Ok(()),
            Reply::Err(c) => Err(c),
        }
    }
}

/// ChannelData framing (RFC 8656 §12.4), no padding needed over UDP.
pub fn channel_data(channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + payload.len());
    v.extend_from_slice(&channel.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    v.extend_from_slice(payload);
    v
}
