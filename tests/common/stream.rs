//! A small blocking TURN client over any byte stream (TCP, TLS), built on ferroturn's codec:
//! long-term credentials, the relay cycle, RFC 8656 §12.5 stream framing and the RFC 6062
//! requests. The independent clients (webrtc-rs, coturn's, browsers) are tested elsewhere.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ferroturn::codec::framing::frame_len;
use ferroturn::codec::stun::{
    attr, decode_error_code, decode_u32, decode_xor_addr, method, Class, IntegrityKind, Message,
    Writer,
};
use ferroturn::codec::{channel_data, long_term_key_md5};

use super::{PASS, REALM, USER};

/// One network step (a request, a frame).
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A TURN client over any byte stream.
pub struct StreamClient<S: Read + Write> {
    /// The stream (taken out with [`StreamClient::into_inner`]).
    pub s: S,
    rbuf: Vec<u8>,
    realm: Vec<u8>,
    nonce: Vec<u8>,
    key: [u8; 16],
    tid: u8,
}

impl<S: Read + Write> StreamClient<S> {
    pub fn new(s: S) -> Self {
        StreamClient {
            s,
            rbuf: Vec::new(),
            realm: Vec::new(),
            nonce: Vec::new(),
            key: long_term_key_md5(USER, REALM, PASS),
            tid: 0,
        }
    }

    pub fn frame(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let framed = frame_len(&self.rbuf, channel_data::MAX_CHANNEL);
            if let Some(n) = framed.expect("server sends TURN framing") {
                return self.rbuf.drain(..n).collect();
            }
            assert!(
                Instant::now() < deadline,
                "no complete message within {IO_TIMEOUT:?}"
            );
            let mut b = [0u8; 4096];
            let n = self.s.read(&mut b).expect("read from server");
            assert!(n > 0, "server closed the connection");
            self.rbuf.extend_from_slice(&b[..n]);
        }
    }

    pub fn next_tid(&mut self) -> [u8; 12] {
        self.tid += 1;
        [self.tid; 12]
    }

    /// One request with the long-term credential dance (401 → realm/nonce → signed retry).
    pub fn request(&mut self, m: u16, body: impl Fn(&mut Writer)) -> Vec<u8> {
        for _ in 0..3 {
            let tid = self.next_tid();
            let mut buf = Vec::new();
            let mut w = Writer::new(&mut buf, m, Class::Request, &tid);
            body(&mut w);
            if !self.nonce.is_empty() {
                w.attr(attr::USERNAME, USER.as_bytes())
                    .attr(attr::REALM, &self.realm)
                    .attr(attr::NONCE, &self.nonce)
                    .integrity(IntegrityKind::Sha1, &self.key);
            }
            self.s.write_all(&buf).unwrap();
            let resp = self.frame();
            let msg = Message::parse(&resp).expect("a STUN response");
            assert_eq!(msg.transaction_id(), tid);
            if msg.class == Class::Error {
                let (code, _) = decode_error_code(msg.get(attr::ERROR_CODE).unwrap()).unwrap();
                if code == 401 || code == 438 {
                    self.realm = msg.get(attr::REALM).unwrap().to_vec();
                    self.nonce = msg.get(attr::NONCE).unwrap().to_vec();
                    continue;
                }
            }
            return resp;
        }
        panic!("authentication did not converge");
    }

    pub fn expect_success(&mut self, m: u16, body: impl Fn(&mut Writer)) -> Vec<u8> {
        let resp = self.request(m, body);
        let msg = Message::parse(&resp).unwrap();
        if msg.class != Class::Success {
            let e = decode_error_code(msg.get(attr::ERROR_CODE).unwrap()).unwrap();
            panic!("method {m:#x} failed: {} {}", e.0, e.1);
        }
        assert!(
            msg.verify_integrity(&self.key),
            "response signed with the user's key"
        );
        resp
    }

    pub fn allocate(&mut self) -> SocketAddr {
        let resp = self.expect_success(method::ALLOCATE, |w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        });
        let m = Message::parse(&resp).unwrap();
        decode_xor_addr(
            m.get(attr::XOR_RELAYED_ADDRESS).unwrap(),
            &m.transaction_id(),
        )
        .unwrap()
    }

    pub fn channel_bind(&mut self, number: u16, peer: SocketAddr) {
        self.expect_success(method::CHANNEL_BIND, |w| {
            w.attr(
                attr::CHANNEL_NUMBER,
                &[(number >> 8) as u8, number as u8, 0, 0],
            )
            .xor_addr(attr::XOR_PEER_ADDRESS, peer);
        });
    }

    pub fn create_permission(&mut self, peer: SocketAddr) {
        self.expect_success(method::CREATE_PERMISSION, |w| {
            w.xor_addr(attr::XOR_PEER_ADDRESS, peer);
        });
    }

    /// ChannelData over a stream: padded to a multiple of 4 (RFC 8656 §12.5).
    pub fn send_channel_data(&mut self, number: u16, payload: &[u8]) {
        let mut b = vec![0u8; 4 + payload.len()];
        b[4..].copy_from_slice(payload);
        b.extend_from_slice(&[0; 3]);
        let r = channel_data::frame_in_place(&mut b, 4, payload.len(), number, true);
        self.s.write_all(&b[r]).unwrap();
    }

    pub fn recv_channel_data(&mut self) -> (u16, Vec<u8>) {
        let f = self.frame();
        assert_eq!(f.len() % 4, 0, "ChannelData padded on streams");
        let (ch, p) = channel_data::parse(&f, channel_data::MAX_CHANNEL).expect("ChannelData");
        (ch, p.to_vec())
    }

    pub fn send_indication(&mut self, peer: SocketAddr, payload: &[u8]) {
        let tid = self.next_tid();
        let mut buf = Vec::new();
        Writer::new(&mut buf, method::SEND, Class::Indication, &tid)
            .xor_addr(attr::XOR_PEER_ADDRESS, peer)
            .attr(attr::DATA, payload);
        self.s.write_all(&buf).unwrap();
    }

    pub fn recv_data_indication(&mut self) -> (SocketAddr, Vec<u8>) {
        let f = self.frame();
        let m = Message::parse(&f).expect("a Data indication");
        assert_eq!((m.method, m.class), (method::DATA, Class::Indication));
        let peer = decode_xor_addr(m.get(attr::XOR_PEER_ADDRESS).unwrap(), &m.transaction_id());
        (peer.unwrap(), m.get(attr::DATA).unwrap().to_vec())
    }

    pub fn binding(&mut self) -> SocketAddr {
        let tid = self.next_tid();
        let mut buf = Vec::new();
        Writer::new(&mut buf, method::BINDING, Class::Request, &tid);
        self.s.write_all(&buf).unwrap();
        let f = self.frame();
        let m = Message::parse(&f).unwrap();
        decode_xor_addr(m.get(attr::XOR_MAPPED_ADDRESS).unwrap(), &tid).unwrap()
    }
}

/// A blocking TCP connection with the I/O timeout and TCP_NODELAY.
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

impl<S: Read + Write> StreamClient<S> {
    pub fn allocate_tcp(&mut self) -> SocketAddr {
        let resp = self.expect_success(method::ALLOCATE, |w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
        });
        let m = Message::parse(&resp).unwrap();
        decode_xor_addr(
            m.get(attr::XOR_RELAYED_ADDRESS).unwrap(),
            &m.transaction_id(),
        )
        .unwrap()
    }

    /// Connect → Ok(CONNECTION-ID) or Err(error code).
    pub fn connect(&mut self, peer: SocketAddr) -> Result<u32, u16> {
        let resp = self.request(method::CONNECT, |w| {
            w.xor_addr(attr::XOR_PEER_ADDRESS, peer);
        });
        let m = Message::parse(&resp).unwrap();
        match m.class {
            Class::Success => Ok(u32::from_be_bytes(
                m.get(attr::CONNECTION_ID).unwrap().try_into().unwrap(),
            )),
            _ => Err(decode_error_code(m.get(attr::ERROR_CODE).unwrap())
                .unwrap()
                .0),
        }
    }

    /// ConnectionBind on this (new) connection → Ok(()) or Err(code).
    pub fn connection_bind(&mut self, id: u32) -> Result<(), u16> {
        let resp = self.request(method::CONNECTION_BIND, |w| {
            w.u32(attr::CONNECTION_ID, id);
        });
        let m = Message::parse(&resp).unwrap();
        match m.class {
            Class::Success => Ok(()),
            _ => Err(decode_error_code(m.get(attr::ERROR_CODE).unwrap())
                .unwrap()
                .0),
        }
    }
}

impl<S: Read + Write> StreamClient<S> {
    /// A request signed with the credentials learnt so far, not sent: (transaction id, bytes).
    pub fn signed(&mut self, m: u16, body: impl Fn(&mut Writer)) -> ([u8; 12], Vec<u8>) {
        let tid = self.next_tid();
        let mut buf = Vec::new();
        let mut w = Writer::new(&mut buf, m, Class::Request, &tid);
        body(&mut w);
        w.attr(attr::USERNAME, USER.as_bytes())
            .attr(attr::REALM, &self.realm)
            .attr(attr::NONCE, &self.nonce)
            .integrity(IntegrityKind::Sha1, &self.key);
        (tid, buf)
    }

    /// Bytes as they are, in one write.
    pub fn write_raw(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    /// [`StreamClient::request`] as a result: Ok(response) on success, Err(error code).
    pub fn try_request(&mut self, m: u16, body: impl Fn(&mut Writer)) -> Result<Vec<u8>, u16> {
        let resp = self.request(m, body);
        let msg = Message::parse(&resp).expect("a STUN response");
        if msg.class == Class::Success {
            Ok(resp)
        } else {
            Err(decode_error_code(msg.get(attr::ERROR_CODE).unwrap())
                .unwrap()
                .0)
        }
    }

    /// Refresh LIFETIME 0: delete the allocation.
    pub fn refresh_zero(&mut self) {
        self.expect_success(method::REFRESH, |w| {
            w.u32(attr::LIFETIME, 0);
        });
    }

    /// The CONNECTION-ID of the next ConnectionAttempt (RFC 6062 §5.3).
    pub fn connection_attempt(&mut self) -> u32 {
        let f = self.frame();
        let m = Message::parse(&f).unwrap();
        assert_eq!(
            (m.method, m.class),
            (method::CONNECTION_ATTEMPT, Class::Indication)
        );
        decode_u32(m.get(attr::CONNECTION_ID).unwrap()).unwrap()
    }

    /// Bytes read from the stream but not yet taken as frames.
    pub fn buffered(&self) -> usize {
        self.rbuf.len()
    }

    pub fn into_inner(self) -> S {
        self.s
    }
}
