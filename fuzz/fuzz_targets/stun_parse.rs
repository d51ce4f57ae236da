//! Any bytes through the STUN parser and every accessor: no panic, attribute values borrowed from
//! inside the input, and what parses re-encodes (with the writer) to a message that parses to the
//! same attributes.
#![no_main]
use ferroturn::codec::stun::{self, attr, Message, Writer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Message::parse(data) else {
        return;
    };
    let range = data.as_ptr_range();
    let tid = m.transaction_id();
    for (t, v) in m.iter() {
        let vr = v.as_ptr_range();
        assert!(range.start <= vr.start && vr.end <= range.end);
        match t {
            attr::XOR_MAPPED_ADDRESS | attr::XOR_PEER_ADDRESS | attr::XOR_RELAYED_ADDRESS => {
                // What decodes re-encodes to the same value.
                if let Some(a) = stun::decode_xor_addr(v, &tid) {
                    let mut b = Vec::new();
                    Writer::new(&mut b, m.method, m.class, &tid).xor_addr(t, a);
                    let again = Message::parse(&b).expect("re-encoded address parses");
                    assert_eq!(stun::decode_xor_addr(again.get(t).unwrap(), &tid), Some(a));
                }
            }
            attr::MAPPED_ADDRESS => {
                let _ = stun::decode_addr(v);
            }
            attr::ERROR_CODE | attr::ADDRESS_ERROR_CODE => {
                let _ = stun::decode_error_code(v);
                let _ = stun::decode_address_error_code(v);
            }
            _ => {
                let _ = stun::decode_u32(v);
            }
        }
    }
    let mut unknown = [0u16; 8];
    let _ = m.unknown_required(&mut unknown);
    let _ = m.integrity_kind();
    let _ = m.verify_integrity(b"key");
    // Re-encode the attributes the parser returned (those before any integrity attribute):
    // the writer's message parses to the same list.
    let mut b = Vec::new();
    let mut w = Writer::new(&mut b, m.method, m.class, &tid);
    for (t, v) in m.iter() {
        w.attr(t, v);
    }
    let again = Message::parse(&b).expect("re-encoded message parses");
    assert!(again.iter().eq(m.iter()));
});
