//! `cargo bench --bench relay_path`: time per operation of the codec and of the engine's
//! per-packet steps (no sockets), with divan. A measuring tool, not a test: end-to-end
//! comparisons with coturn are benches/compare-coturn.sh (see benches/README.md).
//!
//! The global allocator is divan's counting `AllocProfiler` (its `alloc` rows), wrapped so this
//! file can also count on its own: after the timed benchmarks, `main` relays 10 000 packets on
//! each of the four relay paths and prints the heap allocations per relayed packet, which must
//! be 0 (it exits non-zero otherwise; tests/zero_alloc.rs asserts the same in `cargo test`).
#[path = "../tests/support/relay_setup.rs"]
mod relay_setup;

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use divan::{black_box, AllocProfiler, Bencher};
use ferroturn::codec::long_term_key_md5;
use ferroturn::codec::stun::{attr, method, Class, IntegrityKind, Message, Writer};
use ferroturn::codec::{channel_data, stun};
use ferroturn::engine::hash::Keyed;
use ferroturn::engine::{FiveTuple, Transport, PEER_HEADROOM, PEER_TAILROOM};
use relay_setup::{send_indication, setup};

/// Counts this thread's allocations while `ON`, for the per-packet figure printed by `main`.
struct Counting(AllocProfiler);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
}
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if ON.with(|c| c.get()) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        self.0.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        self.0.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if ON.with(|c| c.get()) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        self.0.realloc(p, l, n)
    }
}
#[global_allocator]
static GLOBAL: Counting = Counting(AllocProfiler::system());

const PAYLOAD: [u8; 100] = [0x5a; 100];
const TID: [u8; 12] = [7; 12];

fn channel_data_msg() -> Vec<u8> {
    relay_setup::channel_data(&PAYLOAD)
}

fn binding_request() -> Vec<u8> {
    let mut b = Vec::new();
    Writer::new(&mut b, method::BINDING, Class::Request, &TID).fingerprint();
    b
}

fn allocate_request() -> Vec<u8> {
    let key = long_term_key_md5("user", "bench.local", "pass");
    let mut b = Vec::new();
    Writer::new(&mut b, method::ALLOCATE, Class::Request, &TID)
        .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .attr(attr::LIFETIME, &600u32.to_be_bytes())
        .attr(attr::USERNAME, b"user")
        .attr(attr::REALM, b"bench.local")
        .attr(attr::NONCE, &[b'n'; 32])
        .integrity(IntegrityKind::Sha1, &key)
        .fingerprint();
    b
}

// ------------------------------------------------------------------ codec

mod codec {
    use super::*;

    #[divan::bench]
    fn parse_binding(b: Bencher) {
        let m = binding_request();
        b.bench(|| Message::parse(black_box(&m)).is_ok());
    }

    #[divan::bench]
    fn encode_binding_response(b: Bencher) {
        let peer: SocketAddr = "198.51.100.9:40000".parse().unwrap();
        let mut buf = Vec::with_capacity(256);
        b.bench_local(|| {
            buf.clear();
            Writer::new(&mut buf, method::BINDING, Class::Success, &TID)
                .xor_addr(attr::XOR_MAPPED_ADDRESS, black_box(peer))
                .fingerprint();
            black_box(buf.len())
        });
    }

    /// Parse plus MESSAGE-INTEGRITY check (HMAC-SHA1) with the long-term key.
    #[divan::bench]
    fn parse_verify_allocate(b: Bencher) {
        let m = allocate_request();
        let key = long_term_key_md5("user", "bench.local", "pass");
        b.bench(|| {
            let msg = Message::parse(black_box(&m)).unwrap();
            assert!(msg.verify_integrity(&key));
        });
    }

    #[divan::bench]
    fn encode_allocate_with_integrity(b: Bencher) {
        let key = long_term_key_md5("user", "bench.local", "pass");
        let mut buf = Vec::with_capacity(256);
        b.bench_local(|| {
            buf.clear();
            Writer::new(&mut buf, method::ALLOCATE, Class::Request, &TID)
                .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
                .attr(attr::USERNAME, b"user")
                .attr(attr::REALM, b"bench.local")
                .attr(attr::NONCE, &[b'n'; 32])
                .integrity(IntegrityKind::Sha1, black_box(&key))
                .fingerprint();
            black_box(buf.len())
        });
    }

    /// The long-term key derivation (MD5 of user:realm:password) a request without a cached
    /// key would pay.
    #[divan::bench]
    fn long_term_key(b: Bencher) {
        b.bench(|| long_term_key_md5(black_box("user"), "bench.local", "pass"));
    }

    #[divan::bench]
    fn parse_channel_data(b: Bencher) {
        let m = channel_data_msg();
        b.bench(|| channel_data::parse(black_box(&m), 0x4fff).map(|(c, p)| (c, p.len())));
    }

    #[divan::bench]
    fn parse_send_indication(b: Bencher) {
        let m = send_indication("203.0.113.6:6000".parse().unwrap(), &PAYLOAD);
        b.bench(|| Message::parse(black_box(&m)).is_ok());
    }

    #[divan::bench]
    fn frame_data_indication_in_place(b: Bencher) {
        let peer: SocketAddr = "203.0.113.6:6000".parse().unwrap();
        let mut buf = vec![0u8; PEER_HEADROOM + 2048 + PEER_TAILROOM];
        b.bench_local(|| {
            stun::data_indication_in_place(&mut buf, PEER_HEADROOM, 100, black_box(peer), &TID)
        });
    }
}

// ------------------------------------------------------------------ lookup

/// The client → peer lookup: a 5-tuple in a map of 10 000 allocations. `Keyed` is the
/// engine's keyed foldhash; `std::hash::RandomState` (SipHash-1-3) is what it replaced.
#[divan::bench(types = [Keyed, std::hash::RandomState])]
fn lookup_5tuple<S: BuildHasher + Default>(b: Bencher) {
    let tuple = |i: u32| FiveTuple {
        client: SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 40000)),
        server: "192.0.2.1:3478".parse().unwrap(),
        transport: Transport::Udp,
    };
    let mut m: HashMap<FiveTuple, u32, S> = HashMap::with_hasher(S::default());
    for i in 0..10_000 {
        m.insert(tuple(i), i);
    }
    let probe = tuple(4321);
    b.bench_local(|| m.get(black_box(&probe)).copied());
}

// ------------------------------------------------------------------ engine steps

mod engine {
    use super::*;

    /// A Binding request in, its response out (control path, allocates its transmit).
    #[divan::bench]
    fn binding(b: Bencher) {
        let mut s = setup();
        let m = binding_request();
        let (now, tuple) = (s.now, s.tuple);
        b.bench_local(|| {
            black_box(s.engine.handle_client(now, tuple, black_box(&m)));
            s.engine.poll_transmit().map(|t| t.data.len())
        });
    }

    /// ChannelData client → peer: parse, 5-tuple lookup, channel, permission.
    #[divan::bench]
    fn channel_data_to_peer(b: Bencher) {
        let mut s = setup();
        let m = channel_data_msg();
        let (now, tuple) = (s.now, s.tuple);
        b.bench_local(|| {
            black_box(s.engine.handle_client(now, tuple, black_box(&m)));
        });
    }

    #[divan::bench]
    fn send_indication_to_peer(b: Bencher) {
        let mut s = setup();
        let m = send_indication(s.ind_peer, &PAYLOAD);
        let (now, tuple) = (s.now, s.tuple);
        b.bench_local(|| {
            black_box(s.engine.handle_client(now, tuple, black_box(&m)));
        });
    }

    #[divan::bench]
    fn peer_to_client_channel_data(b: Bencher) {
        let mut s = setup();
        let mut buf = vec![0u8; PEER_HEADROOM + 2048 + PEER_TAILROOM];
        let (now, relay, peer) = (s.now, s.relay, s.chan_peer);
        b.bench_local(|| {
            black_box(
                s.engine
                    .handle_peer(now, relay, peer, &mut buf, PEER_HEADROOM, 100),
            );
        });
    }

    #[divan::bench]
    fn peer_to_client_data_indication(b: Bencher) {
        let mut s = setup();
        let mut buf = vec![0u8; PEER_HEADROOM + 2048 + PEER_TAILROOM];
        let (now, relay, peer) = (s.now, s.relay, s.ind_peer);
        b.bench_local(|| {
            black_box(
                s.engine
                    .handle_peer(now, relay, peer, &mut buf, PEER_HEADROOM, 100),
            );
        });
    }
}

/// Heap allocations per relayed packet on the four relay paths, over 10 000 packets each after
/// one warm-up packet.
fn allocations_per_packet() -> bool {
    const N: usize = 10_000;
    let mut s = setup();
    let cd = channel_data_msg();
    let send = send_indication(s.ind_peer, &PAYLOAD);
    let mut buf = vec![0u8; PEER_HEADROOM + 2048 + PEER_TAILROOM];
    let (now, tuple, relay) = (s.now, s.tuple, s.relay);
    let (chan_peer, ind_peer) = (s.chan_peer, s.ind_peer);
    let count = |f: &mut dyn FnMut() -> bool| {
        assert!(f(), "warm-up packet was not relayed");
        ALLOCS.store(0, Ordering::Relaxed);
        ON.with(|c| c.set(true));
        let mut relayed = 0;
        for _ in 0..N {
            relayed += f() as usize;
        }
        ON.with(|c| c.set(false));
        assert_eq!(relayed, N, "every packet relayed");
        ALLOCS.load(Ordering::Relaxed) as f64 / N as f64
    };
    let is_to_peer = |a: ferroturn::engine::ClientAction| {
        matches!(a, ferroturn::engine::ClientAction::ToPeer { .. })
    };
    let rows = [
        (
            "ChannelData client -> peer",
            count(&mut || is_to_peer(s.engine.handle_client(now, tuple, &cd))),
        ),
        (
            "Send indication client -> peer",
            count(&mut || is_to_peer(s.engine.handle_client(now, tuple, &send))),
        ),
        (
            "peer -> client, ChannelData",
            count(&mut || {
                s.engine
                    .handle_peer(now, relay, chan_peer, &mut buf, PEER_HEADROOM, 100)
                    .is_some()
            }),
        ),
        (
            "peer -> client, Data indication",
            count(&mut || {
                s.engine
                    .handle_peer(now, relay, ind_peer, &mut buf, PEER_HEADROOM, 100)
                    .is_some()
            }),
        ),
    ];
    println!("\nheap allocations per relayed packet ({N} packets per path):");
    for (name, per) in &rows {
        println!("  {name:<34} {per}");
    }
    rows.iter().all(|(_, per)| *per == 0.0)
}

fn main() {
    divan::main();
    if !allocations_per_packet() {
        eprintln!("FAIL: a relay path allocates");
        std::process::exit(1);
    }
}
