//! `cargo bench --bench relay_path`: nanoseconds per operation on the engine's per-packet paths
//! (no sockets), median of 7 rounds of 200 000 operations. A measuring tool, not a test: the
//! zero-allocation property is asserted in tests/zero_alloc.rs; end-to-end comparisons with
//! coturn use ferroturn-bench and /work/shared/bench (see README "Benchmarking").
#[path = "../tests/support/relay_setup.rs"]
mod relay_setup;

use std::hint::black_box;
use std::time::Instant;

use ferroturn::codec::stun::Message;
use ferroturn::engine::{PEER_HEADROOM, PEER_TAILROOM};
use relay_setup::{channel_data, send_indication, setup};

const OPS: u32 = 200_000;
const ROUNDS: usize = 7;

fn median_ns(mut f: impl FnMut()) -> f64 {
    for _ in 0..OPS / 10 {
        f();
    }
    let mut v: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..OPS {
                f();
            }
            t.elapsed().as_nanos() as f64 / OPS as f64
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[ROUNDS / 2]
}

fn main() {
    let mut s = setup();
    let payload = [0x5au8; 100];
    let cd = channel_data(&payload);
    let send = send_indication(s.ind_peer, &payload);
    let mut buf = vec![0u8; PEER_HEADROOM + 2048 + PEER_TAILROOM];
    let (now, tuple, relay, chan_peer, ind_peer) =
        (s.now, s.tuple, s.relay, s.chan_peer, s.ind_peer);
    let rows = [
        (
            "parse Send indication (STUN, 100 B DATA)",
            median_ns(|| {
                black_box(Message::parse(black_box(&send)).is_ok());
            }),
        ),
        (
            "ChannelData client -> peer (100 B)",
            median_ns(|| {
                black_box(s.engine.handle_client(now, tuple, black_box(&cd)));
            }),
        ),
        (
            "Send indication client -> peer (100 B)",
            median_ns(|| {
                black_box(s.engine.handle_client(now, tuple, black_box(&send)));
            }),
        ),
        (
            "peer -> client, ChannelData framing (100 B)",
            median_ns(|| {
                black_box(s.engine.handle_peer(
                    now,
                    relay,
                    chan_peer,
                    &mut buf,
                    PEER_HEADROOM,
                    100,
                ));
            }),
        ),
        (
            "peer -> client, Data indication (100 B)",
            median_ns(|| {
                black_box(
                    s.engine
                        .handle_peer(now, relay, ind_peer, &mut buf, PEER_HEADROOM, 100),
                );
            }),
        ),
    ];
    println!("{:<46} {:>10}", "engine step", "ns/op");
    for (name, ns) in rows {
        println!("{name:<46} {ns:>10.1}");
    }
}
