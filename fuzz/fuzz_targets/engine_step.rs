//! The engine driven by arbitrary sequences of steps: raw client datagrams, VALID signed requests
//! built by the harness (so the fuzzer gets past authentication: the harness answers the 401
//! challenge with the engine's own nonce), valid Allocates (UDP, TCP, IPv6, dual, EVEN-PORT),
//! peer datagrams, RFC 6062 peer connections, client disconnects, ChannelData and time jumps;
//! relay binds and TCP connects succeed or fail as the input says.
//!
//! Input: frames `[op, len, bytes...]`, see `Driver::run` in `fuzz/src/engine_driver.rs`.
//! Properties (checked by the driver): no panic, the SSRF guard (nothing relayed or connected to
//! a peer the filter refuses), well-formed output, no port or quota leak.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../src/engine_driver.rs"]
mod engine_driver;

fuzz_target!(|data: &[u8]| {
    engine_driver::Driver::run(data);
});
