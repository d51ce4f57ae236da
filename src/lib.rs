//! ferroturn: a STUN/TURN relay server.
//!
//! Three layers, one folder each:
//! - [`codec`]: STUN/TURN messages and the hand-written ChannelData fast path. Pure functions on bytes.
//! - [`engine`]: the sans-IO protocol engine (auth, nonces, allocations, permissions, channels,
//!   timers). Input: a datagram, its 5-tuple and `now`. Output: transmits, relay-socket requests and
//!   the next timeout. No sockets, no tokio.
//! - [`runtime`]: sockets, shard threads (the relay loop is `runtime::shard`), config, CLI, signals.
pub mod codec;
pub mod engine;
pub mod runtime;
