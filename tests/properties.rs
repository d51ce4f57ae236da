//! Property tests (proptest) for the codec and the engine: what must hold for ANY input, not
//! just for the examples of the unit tests.
//!
//! - STUN parse: any bytes never panic; what parses only borrows from the input.
//! - STUN writer → parser round trips: attribute lists, XOR addresses, integrity.
//! - ChannelData framing round trips; stream framing splits concatenated frames exactly.
//! - The engine never panics (and keeps its SSRF and accounting invariants) on arbitrary
//!   sequences of client datagrams, valid signed requests, peer datagrams and time jumps; the
//!   driver is the one the `engine_step` fuzz target uses (fuzz/src/engine_driver.rs).
//!
//! Case counts are kept moderate so the whole file runs in seconds in a debug build; the fuzz
//! targets (tests/fuzz/run.sh) explore the same ground much longer.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ferroturn::codec::channel_data::{self, MAX_CHANNEL, MAX_CHANNEL_LEGACY, MIN_CHANNEL};
use ferroturn::codec::framing::frame_len;
use ferroturn::codec::stun::{
    self, attr, decode_addr, decode_xor_addr, Class, IntegrityKind, Message, Writer,
};
use proptest::prelude::*;

#[path = "../fuzz/src/engine_driver.rs"]
mod engine_driver;

fn cfg(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Failures are reported with their seed; no persistence files in the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn class() -> impl Strategy<Value = Class> {
    prop_oneof![
        Just(Class::Request),
        Just(Class::Indication),
        Just(Class::Success),
        Just(Class::Error),
    ]
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<u32>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<u128>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

/// Attribute types the parser treats like any other (not integrity / fingerprint).
fn plain_attr_type() -> impl Strategy<Value = u16> {
    any::<u16>().prop_filter("integrity and fingerprint are positional", |t| {
        ![
            attr::MESSAGE_INTEGRITY,
            attr::MESSAGE_INTEGRITY_SHA256,
            attr::FINGERPRINT,
        ]
        .contains(t)
    })
}

fn attr_list(max: usize) -> impl Strategy<Value = Vec<(u16, Vec<u8>)>> {
    prop::collection::vec(
        (
            plain_attr_type(),
            prop::collection::vec(any::<u8>(), 0..=300),
        ),
        0..=max,
    )
}

/// Bytes shaped like STUN (valid header, consistent length) with an arbitrary body made of
/// attribute headers whose lengths may lie: reaches the attribute walk, which random bytes
/// almost never do.
fn stun_shaped() -> impl Strategy<Value = Vec<u8>> {
    (
        0u16..0x4000,
        any::<[u8; 12]>(),
        prop::collection::vec(
            (
                any::<u16>(),
                any::<u16>(),
                prop::collection::vec(any::<u8>(), 0..40),
            ),
            0..40,
        ),
    )
        .prop_map(|(ty, tid, attrs)| {
            let mut b = Vec::new();
            b.extend_from_slice(&ty.to_be_bytes());
            b.extend_from_slice(&[0, 0, 0x21, 0x12, 0xa4, 0x42]);
            b.extend_from_slice(&tid);
            for (t, len, v) in attrs {
                // Mostly honest lengths, sometimes not.
                let len = if len % 4 == 0 { len } else { v.len() as u16 };
                b.extend_from_slice(&t.to_be_bytes());
                b.extend_from_slice(&len.to_be_bytes());
                b.extend_from_slice(&v);
            }
            while b.len() % 4 != 0 {
                b.push(0);
            }
            let body = ((b.len() - 20) as u16).to_be_bytes();
            b[2..4].copy_from_slice(&body);
            b
        })
}

/// Exercise every accessor of a parsed message; values must lie inside `input`.
fn check_parsed(input: &[u8], m: &Message) {
    let range = input.as_ptr_range();
    let _ = m.transaction_id();
    let tid = m.transaction_id();
    for (t, v) in m.iter() {
        let vr = v.as_ptr_range();
        assert!(
            range.start <= vr.start && vr.end <= range.end,
            "attribute {t:#06x} value outside the input"
        );
        assert_eq!(m.get(t).is_some(), m.has(t));
        let _ = decode_xor_addr(v, &tid);
        let _ = decode_addr(v);
        let _ = stun::decode_error_code(v);
        let _ = stun::decode_address_error_code(v);
    }
    let mut unknown = [0u16; 8];
    assert!(m.unknown_required(&mut unknown) <= 8);
    let _ = m.integrity_kind();
    assert_eq!(m.has_integrity(), m.integrity_kind().is_some());
    let _ = m.verify_integrity(b"key");
    let _ = m.verify_integrity(&[0u8; 32]);
    assert_eq!(m.raw(), input);
}

// ------------------------------------------------------------------------------ (a) parse

proptest! {
    #![proptest_config(cfg(3000))]

    #[test]
    fn parse_never_panics_on_any_bytes(data in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(m) = Message::parse(&data) {
            check_parsed(&data, &m);
        }
        let _ = stun::looks_like_stun(&data);
        let _ = channel_data::parse(&data, MAX_CHANNEL_LEGACY);
        let _ = frame_len(&data, MAX_CHANNEL);
    }

    #[test]
    fn parse_never_panics_on_stun_shaped_bytes(data in stun_shaped()) {
        if let Ok(m) = Message::parse(&data) {
            check_parsed(&data, &m);
        }
    }
}

// ------------------------------------------------------------------------ (b) writer → parse

proptest! {
    #![proptest_config(cfg(300))]

    /// Methods 0x000-0x0FF: a higher method sets the type's first byte above 3, which RFC 7983
    /// demultiplexing (and so `Message::parse`) does not take for STUN.
    #[test]
    fn writer_roundtrip_attribute_lists(
        method in 0u16..0x100,
        class in class(),
        tid in any::<[u8; 12]>(),
        attrs in attr_list(stun::MAX_ATTRS),
        fingerprint in any::<bool>(),
    ) {
        let mut b = Vec::new();
        let mut w = Writer::new(&mut b, method, class, &tid);
        for (t, v) in &attrs {
            w.attr(*t, v);
        }
        if fingerprint {
            w.fingerprint();
        }
        let m = Message::parse(&b).expect("what the writer writes parses");
        prop_assert_eq!((m.method, m.class, m.transaction_id()), (method, class, tid));
        let got: Vec<(u16, Vec<u8>)> = m.iter().map(|(t, v)| (t, v.to_vec())).collect();
        prop_assert_eq!(got, attrs);
        prop_assert_eq!(m.has_fingerprint, fingerprint);
        prop_assert_eq!(b.len() % 4, 0);
    }

    #[test]
    fn xor_and_plain_addresses_roundtrip(
        addr in socket_addr(),
        tid in any::<[u8; 12]>(),
        class in class(),
    ) {
        let mut b = Vec::new();
        Writer::new(&mut b, stun::method::BINDING, class, &tid)
            .xor_addr(attr::XOR_MAPPED_ADDRESS, addr)
            .xor_addr(attr::XOR_PEER_ADDRESS, addr)
            .addr(attr::MAPPED_ADDRESS, addr);
        let m = Message::parse(&b).unwrap();
        for t in [attr::XOR_MAPPED_ADDRESS, attr::XOR_PEER_ADDRESS] {
            prop_assert_eq!(decode_xor_addr(m.get(t).unwrap(), &tid), Some(addr));
        }
        prop_assert_eq!(decode_addr(m.get(attr::MAPPED_ADDRESS).unwrap()), Some(addr));
        // The XOR form really is obfuscated: it never carries the port in clear (RFC 8489 §14.2).
        let v = m.get(attr::XOR_PEER_ADDRESS).unwrap();
        prop_assert_ne!(u16::from_be_bytes([v[2], v[3]]), addr.port());
    }

    #[test]
    fn integrity_verifies_with_its_key_only(
        attrs in attr_list(8),
        key in prop::collection::vec(any::<u8>(), 1..64),
        other in prop::collection::vec(any::<u8>(), 1..64),
        sha256 in any::<bool>(),
        fingerprint in any::<bool>(),
        tid in any::<[u8; 12]>(),
        flip in any::<prop::sample::Index>(),
    ) {
        prop_assume!(key != other);
        let kind = if sha256 { IntegrityKind::Sha256 } else { IntegrityKind::Sha1 };
        let mut b = Vec::new();
        let mut w = Writer::new(&mut b, stun::method::ALLOCATE, Class::Request, &tid);
        for (t, v) in &attrs {
            w.attr(*t, v);
        }
        w.integrity(kind, &key);
        if fingerprint {
            w.fingerprint();
        }
        let m = Message::parse(&b).unwrap();
        prop_assert_eq!(m.integrity_kind(), Some(kind));
        prop_assert!(m.verify_integrity(&key));
        prop_assert!(!m.verify_integrity(&other));
        // Any changed bit of what the MAC covers (type, cookie, transaction id, attributes
        // before the integrity attribute; not the length, which it patches) breaks it. Checked
        // without FINGERPRINT, which would refuse the message before integrity is looked at.
        let mut b = Vec::new();
        let mut w = Writer::new(&mut b, stun::method::ALLOCATE, Class::Request, &tid);
        for (t, v) in &attrs {
            w.attr(*t, v);
        }
        w.integrity(kind, &key);
        let mi_off = b.len() - if sha256 { 36 } else { 24 };
        let covered: Vec<usize> = (0..mi_off).filter(|i| !(2..4).contains(i)).collect();
        let i = covered[flip.index(covered.len())];
        let mut bad = b.clone();
        bad[i] ^= 0x01;
        if let Ok(m) = Message::parse(&bad) {
            prop_assert!(!m.verify_integrity(&key), "byte {} flipped, still verifies", i);
        }
    }
}

// --------------------------------------------------------------------- (c) ChannelData, framing

/// A message as it goes on a stream: ChannelData (padded) or a STUN message.
fn stream_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (
            MIN_CHANNEL..=MAX_CHANNEL,
            prop::collection::vec(any::<u8>(), 0..700)
        )
            .prop_map(|(ch, p)| {
                let mut b = vec![0u8; 4 + p.len() + 3];
                b[4..4 + p.len()].copy_from_slice(&p);
                let r = channel_data::frame_in_place(&mut b, 4, p.len(), ch, true);
                b[r].to_vec()
            }),
        (0u16..0x100, class(), any::<[u8; 12]>(), attr_list(4)).prop_map(|(m, c, tid, attrs)| {
            let mut b = Vec::new();
            let mut w = Writer::new(&mut b, m, c, &tid);
            for (t, v) in &attrs {
                w.attr(*t, v);
            }
            b
        }),
    ]
}

proptest! {
    #![proptest_config(cfg(500))]

    #[test]
    fn channel_data_roundtrip(
        ch in MIN_CHANNEL..=MAX_CHANNEL_LEGACY,
        payload in prop::collection::vec(any::<u8>(), 0..2000),
        stream in any::<bool>(),
        junk in any::<[u8; 3]>(),
    ) {
        let n = payload.len();
        // Headroom and tail room hold junk: framing must overwrite what it uses.
        let mut b = vec![0xee; 4 + n + 3];
        b[4..4 + n].copy_from_slice(&payload);
        b[4 + n..].copy_from_slice(&junk);
        let r = channel_data::frame_in_place(&mut b, 4, n, ch, stream);
        let framed = &b[r];
        let want_len = if stream { 4 + n.div_ceil(4) * 4 } else { 4 + n };
        prop_assert_eq!(framed.len(), want_len);
        prop_assert!(framed[4 + n..].iter().all(|&x| x == 0), "padding is zeros");
        prop_assert_eq!(
            channel_data::parse(framed, MAX_CHANNEL_LEGACY),
            Some((ch, &payload[..]))
        );
        // With RFC 8656 numbers only, legacy channels are refused.
        let strict = channel_data::parse(framed, MAX_CHANNEL);
        prop_assert_eq!(strict.is_some(), ch <= MAX_CHANNEL);
        // A truncated datagram (length past the end) never parses.
        if n > 0 {
            prop_assert_eq!(channel_data::parse(&framed[..4 + n - 1], MAX_CHANNEL_LEGACY), None);
        }
    }

    #[test]
    fn frame_len_splits_concatenated_frames(
        frames in prop::collection::vec(stream_frame(), 1..12),
        cut in any::<prop::sample::Index>(),
    ) {
        let all: Vec<u8> = frames.concat();
        let mut off = 0;
        let mut got = Vec::new();
        while off < all.len() {
            let n = frame_len(&all[off..], MAX_CHANNEL)
                .expect("valid frames")
                .expect("a whole frame is there");
            got.push(all[off..off + n].to_vec());
            off += n;
        }
        prop_assert_eq!(&got, &frames);
        // Any strict prefix of the first frame asks for more bytes.
        let first = &frames[0];
        let k = cut.index(first.len());
        prop_assert_eq!(frame_len(&first[..k], MAX_CHANNEL), Ok(None));
    }
}

// -------------------------------------------------------------------------------- (d) engine

/// One step of the engine driver (see fuzz/src/engine_driver.rs for what each does).
#[derive(Clone, Debug)]
enum Op {
    /// Raw bytes from client `who`.
    Client(u8, Vec<u8>),
    /// A valid signed request (method index, attribute script).
    Signed(u8, u8, Vec<u8>),
    /// A valid Allocate with flags.
    Allocate(u8, u8),
    /// A datagram from peer `peer` on relay `relay`.
    Peer(u8, u8, Vec<u8>),
    /// Seconds pass.
    Time(u16),
    /// ChannelData from client `who` on channel 0x4000 + ch.
    ChannelData(u8, u8, Vec<u8>),
    /// A TCP peer connects to / leaves a relay.
    PeerTcp(u8, u8, bool),
    /// Client connection closed.
    Closed(u8),
}

fn script() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        (0u8..16, prop::collection::vec(any::<u8>(), 0..6)).prop_map(|(sel, v)| {
            let mut e = vec![sel, v.len() as u8];
            e.extend(v);
            e
        }),
        0..5,
    )
    .prop_map(|v| v.concat())
}

/// A client: mostly UDP client 0 or TCP client 4, so that steps meet the same allocation.
fn who() -> impl Strategy<Value = u8> {
    prop_oneof![4 => Just(0u8), 2 => Just(4u8), 1 => 0u8..8]
}

/// A peer index: mostly reachable peers of the driver's table, sometimes forbidden ones.
fn peer_ix() -> impl Strategy<Value = u8> {
    prop_oneof![3 => prop::sample::select(vec![0u8, 1, 2, 3, 14, 15]), 1 => 0u8..16]
}

fn op() -> impl Strategy<Value = Op> {
    let bytes = || prop::collection::vec(who(), 0..64);
    prop_oneof![
        // CreatePermission, ChannelBind (channel 0-7), Send indication, Connect to a peer.
        3 => (who(), peer_ix()).prop_map(|(w, p)| Op::Signed(w, 2, vec![2, 1, p])),
        3 => (who(), 0u8..8, peer_ix())
            .prop_map(|(w, c, p)| Op::Signed(w, 3, vec![3, 1, c, 2, 1, p])),
        3 => (who(), peer_ix(), bytes()).prop_map(|(w, p, b)| {
            let mut s = vec![2, 1, p, 10, b.len().min(255) as u8];
            s.extend_from_slice(&b[..b.len().min(255)]);
            Op::Signed(w, 7, s)
        }),
        1 => (who(), peer_ix()).prop_map(|(w, p)| Op::Signed(w, 4, vec![2, 1, p])),
        1 => (who(), 0u8..4).prop_map(|(w, c)| Op::Signed(w, 5, vec![9, 1, c])),
        3 => (0u8..8, peer_ix(), bytes()).prop_map(|(r, p, b)| Op::Peer(r, p, b)),
        2 => (who(), prop_oneof![bytes(), engine_like_stun()]).prop_map(|(w, b)| Op::Client(w, b)),
        4 => (who(), any::<u8>(), script()).prop_map(|(w, m, s)| Op::Signed(w, m, s)),
        3 => (who(), any::<u8>()).prop_map(|(w, f)| Op::Allocate(w, f)),
        2 => (who(), any::<u8>(), bytes()).prop_map(|(r, p, b)| Op::Peer(r, p, b)),
        1 => prop_oneof![0u16..10, 0u16..700, 0u16..4000].prop_map(Op::Time),
        2 => (who(), 0u8..8, bytes()).prop_map(|(w, c, b)| Op::ChannelData(w, c, b)),
        1 => (0u8..8, peer_ix(), any::<bool>()).prop_map(|(r, p, c)| Op::PeerTcp(r, p, c)),
        1 => who().prop_map(Op::Closed),
    ]
}

/// Unsigned STUN-shaped client messages: Binding, unknown comprehension-required attributes,
/// broken lengths.
fn engine_like_stun() -> impl Strategy<Value = Vec<u8>> {
    stun_shaped()
}

proptest! {
    #![proptest_config(cfg(400))]

    #[test]
    fn engine_never_panics_and_keeps_its_invariants(
        udp_flags in prop::sample::select(vec![0u8, 2, 4, 4, 6, 8]),
        tcp_flags in prop::sample::select(vec![0u8, 1, 1, 3]),
        ops in prop::collection::vec((op(), prop::bool::weighted(0.1)), 1..40),
    ) {
        let mut d = engine_driver::Driver::new();
        // Start with an allocation for the two usual clients (UDP: IPv4, IPv6, dual or
        // EVEN-PORT; TCP: UDP or RFC 6062 TCP relay), so that most steps meet one, and
        // permissions for the usual peers (IPv4 and IPv6; one of them fails with 443).
        d.allocate(0, udp_flags);
        d.allocate(4, tcp_flags);
        for who in [0, 4] {
            d.signed_request(who, 2, &[2, 1, 0]);
            d.signed_request(who, 2, &[2, 1, 2]);
        }
        for (op, fail) in ops {
            d.fail = fail && matches!(op, Op::Allocate(..) | Op::Signed(..));
            match op {
                Op::Client(w, b) => d.client_datagram(w, &b),
                Op::Signed(w, m, s) => d.signed_request(w, m, &s),
                Op::Allocate(w, f) => d.allocate(w, f),
                Op::Peer(r, p, b) => d.peer_datagram(r, p, &b),
                Op::Time(s) => d.advance(u64::from(s)),
                Op::ChannelData(w, c, b) => d.channel_data(w, c, &b),
                Op::PeerTcp(r, p, c) => d.peer_tcp(r, p, c),
                Op::Closed(w) => d.client_closed(w),
            }
            d.fail = false;
        }
        d.finish();
    }
}
