//! Differential tests: messages written by ferroturn's codec are decoded by an independent STUN
//! implementation (`stun-types`), and whatever ferroturn's parser accepts, `stun-types` accepts
//! with the same attributes.
use std::net::SocketAddr;

use ferroturn::codec::stun::{attr, method, Class, IntegrityKind, Message, Writer};
use ferroturn::codec::{long_term_key_md5, long_term_key_sha256};
use stun_types::attribute::{AttributeType, XorMappedAddress};
use stun_types::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message as Oracle, MessageIntegrityCredentials,
};

const USER: &str = "alice";
const REALM: &str = "example.org";
const PASS: &str = "s3cret";

fn creds() -> MessageIntegrityCredentials {
    LongTermKeyCredentials::new(USER.into(), PASS.into(), REALM.into()).into()
}

fn response(addr: SocketAddr, kind: IntegrityKind) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = Writer::new(&mut buf, method::ALLOCATE, Class::Success, &[0x5a; 12]);
    w.xor_addr(attr::XOR_RELAYED_ADDRESS, addr)
        .u32(attr::LIFETIME, 600)
        .xor_addr(attr::XOR_MAPPED_ADDRESS, addr)
        .attr(attr::SOFTWARE, b"ferroturn differential");
    match kind {
        IntegrityKind::Sha1 => w.integrity(kind, &long_term_key_md5(USER, REALM, PASS)),
        IntegrityKind::Sha256 => w.integrity(kind, &long_term_key_sha256(USER, REALM, PASS)),
    };
    w.fingerprint();
    buf
}

#[test]
fn oracle_decodes_what_we_write() {
    for a in [
        "192.0.2.1:32853",
        "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
    ] {
        let addr: SocketAddr = a.parse().unwrap();
        for (kind, algo) in [
            (IntegrityKind::Sha1, IntegrityAlgorithm::Sha1),
            (IntegrityKind::Sha256, IntegrityAlgorithm::Sha256),
        ] {
            let bytes = response(addr, kind);
            let m = Oracle::from_bytes(&bytes).expect("stun-types parses our message");
            let x: XorMappedAddress = m.attribute().expect("XOR-MAPPED-ADDRESS");
            assert_eq!(x.addr(m.transaction_id()), addr);
            assert_eq!(
                m.validate_integrity(&creds()).expect("integrity verifies"),
                algo
            );
            // and our own parser agrees
            let ours = Message::parse(&bytes).unwrap();
            assert!(ours.has_fingerprint);
        }
    }
}

#[test]
fn oracle_rejects_our_message_with_wrong_password() {
    let bytes = response("192.0.2.1:1".parse().unwrap(), IntegrityKind::Sha1);
    let m = Oracle::from_bytes(&bytes).unwrap();
    let wrong: MessageIntegrityCredentials =
        LongTermKeyCredentials::new(USER.into(), "nope".into(), REALM.into()).into();
    assert!(m.validate_integrity(&wrong).is_err());
}

/// Deterministic mutations of valid messages: whenever our parser accepts the bytes, the oracle
/// must accept them too and see the same attributes (before MESSAGE-INTEGRITY).
#[test]
fn accepted_messages_agree_with_oracle() {
    let seeds = [
        response("192.0.2.1:32853".parse().unwrap(), IntegrityKind::Sha1),
        response("[2001:db8::1]:9".parse().unwrap(), IntegrityKind::Sha256),
    ];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut accepted, mut total) = (0, 0);
    for i in 0..20_000 {
        let mut b = seeds[i % 2].clone();
        match rnd() % 4 {
            0 => {
                let p = (rnd() as usize) % b.len();
                b[p] = rnd() as u8;
            }
            1 => {
                // Mutate inside the attribute area but leave the header valid.
                let p = 20 + (rnd() as usize) % (b.len() - 20);
                b[p] ^= 1 << (rnd() % 8);
            }
            2 => {
                let n = 20 + (rnd() as usize) % (b.len() - 20);
                b.truncate(n);
                let l = (n - 20) as u16;
                b[2..4].copy_from_slice(&l.to_be_bytes());
            }
            _ => {}
        }
        total += 1;
        let Ok(ours) = Message::parse(&b) else {
            continue;
        };
        accepted += 1;
        let theirs = Oracle::from_bytes(&b)
            .unwrap_or_else(|e| panic!("ours accepted, stun-types rejected ({e:?}): {b:02x?}"));
        for (t, v) in ours.iter() {
            let raw = theirs
                .raw_attribute(AttributeType::new(t))
                .unwrap_or_else(|| panic!("stun-types lacks attribute {t:#06x}"));
            assert_eq!(&raw.value[..], v, "attribute {t:#06x} differs");
        }
    }
    assert!(
        accepted > 1000,
        "mutations too destructive: {accepted}/{total} accepted"
    );
}
