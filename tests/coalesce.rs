//! `relay-coalesce-us` (interrupt coalescing in the shard loop): with it on, datagrams that
//! arrive a little apart are read, relayed and sent in one round instead of one wake-up each,
//! and none is lost or reordered on the way; it is set at start and changed on reload.
//! Measured from the shard's own histogram of datagrams per recvmmsg call (the
//! `ferroturn_relay_batch_size` metric).
mod common;
#[path = "support/ops_client.rs"]
mod ops_client;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{start_server, ServerOpts, TestServer, PASS, REALM, USER};
use ferroturn::engine::ops::Histogram;
use ops_client::{echo_peer, TurnUdp};

/// Shards publish their counters every second.
const PUBLISH: Duration = Duration::from_millis(1100);
const N: usize = 60;
/// Client datagrams leave this far apart: one wake-up each unless the server coalesces.
const GAP: Duration = Duration::from_micros(200);
const WINDOW: Duration = Duration::from_millis(1);

/// Relay N Send indications to the echo peer, GAP apart; returns datagrams per recvmmsg call
/// of the (only) shard over the round, after checking every echo came back in order.
fn spaced_round(srv: &TestServer, c: &TurnUdp, peer: SocketAddr, seen: &AtomicU64) -> f64 {
    let before = settled(srv, None);
    let seen0 = seen.load(Ordering::SeqCst);
    let start = Instant::now();
    for i in 0..N {
        // Paced by the clock, not by sleeps that add up (a sleep may overshoot).
        let due = start + GAP * i as u32;
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        c.send_indication(peer, &[i as u8; 100]);
    }
    for i in 0..N {
        match c.recv_data(Duration::from_secs(2)) {
            Some(d) => assert_eq!(d, [i as u8; 100], "echo {i}: out of order or corrupt"),
            None => panic!("echo {i} of {N} did not come back"),
        }
    }
    assert_eq!(seen.load(Ordering::SeqCst) - seen0, N as u64);
    let after = settled(srv, Some(before.sum + 2 * N as u64));
    let (reads, datagrams) = (after.count - before.count, after.sum - before.sum);
    // N indications in, N echoes back, nothing else (no refresh is due).
    assert_eq!(datagrams, 2 * N as u64, "datagrams read by the shard");
    datagrams as f64 / reads as f64
}

/// The shard's batch histogram once published figures stop moving (or reach `want`
/// datagrams and then stop): publication is once a second, and a busy machine may delay it.
fn settled(srv: &TestServer, want: Option<u64>) -> Histogram {
    let limit = Instant::now() + Duration::from_secs(15);
    let mut last = srv.server().stats()[0].batch_sizes;
    loop {
        std::thread::sleep(PUBLISH);
        let h = srv.server().stats()[0].batch_sizes;
        let still = (h.count, h.sum) == (last.count, last.sum);
        if (still && want.map_or(true, |w| h.sum >= w)) || Instant::now() > limit {
            return h;
        }
        last = h;
    }
}

#[test]
fn coalescing_batches_spaced_datagrams_loses_none_and_reloads() {
    let opts = ServerOpts::block(44).threads(1).ports(20);
    let srv = start_server(opts.runtime(|c| c.relay_coalesce = WINDOW));
    let (peer, seen) = echo_peer();
    let mut c = TurnUdp::new(srv.addr, USER, PASS, REALM);
    c.allocate_ok();
    c.permit(peer);

    // A 1 ms window, datagrams 200 µs apart: a round gathers about five of each direction.
    let on = spaced_round(&srv, &c, peer, &seen);
    srv.server().set_relay_coalesce(Duration::ZERO);
    let off = spaced_round(&srv, &c, peer, &seen);
    srv.server().set_relay_coalesce(WINDOW);
    let on_again = spaced_round(&srv, &c, peer, &seen);
    eprintln!("datagrams per recvmmsg call: {on:.2} (from config), off {off:.2}, on {on_again:.2}");
    for (what, v) in [("from the config", on), ("after a reload", on_again)] {
        assert!(
            v >= 2.5,
            "a 1 ms window {what} should gather several datagrams per read, got {v:.2}"
        );
    }
    // Off, each datagram has its own wake-up (more only if this machine stalls the shard).
    assert!(
        off < on.min(on_again),
        "off {off:.2}, on {on:.2} / {on_again:.2}"
    );
}
