//! Any bytes through the STUN parser and every accessor: no panic, and what parses re-verifies.
#![no_main]
use ferroturn::codec::stun::{self, attr, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse(data) {
        let tid = m.transaction_id();
        for (t, v) in m.iter() {
            match t {
                attr::XOR_MAPPED_ADDRESS | attr::XOR_PEER_ADDRESS | attr::XOR_RELAYED_ADDRESS => {
                    let _ = stun::decode_xor_addr(v, &tid);
                }
                attr::MAPPED_ADDRESS => {
                    let _ = stun::decode_addr(v);
                }
                attr::ERROR_CODE => {
                    let _ = stun::decode_error_code(v);
                }
                _ => {
                    let _ = stun::decode_u32(v);
                }
            }
        }
        let mut unknown = [0u16; 8];
        let _ = m.unknown_required(&mut unknown);
        let _ = m.verify_integrity(b"key");
    }
});
