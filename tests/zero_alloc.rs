//! The relay paths allocate nothing: ChannelData client→peer and peer→client, Send indication,
//! Data indication. Counted with a global allocator that counts only on this test's thread, over
//! 10 000 packets per path after one warm-up packet each.
#[path = "support/relay_setup.rs"]
mod relay_setup;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ferroturn::engine::{ClientAction, PEER_HEADROOM, PEER_TAILROOM};
use relay_setup::{channel_data, send_indication, setup, Setup};

struct Counting;
// Both per thread: tests run in parallel, and only the measuring thread's allocations count.
thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if ON.with(|c| c.get()) {
            ALLOCS.with(|c| c.set(c.get() + 1));
        }
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if ON.with(|c| c.get()) {
            ALLOCS.with(|c| c.set(c.get() + 1));
        }
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f`, run `n` times on this thread.
fn allocations(n: usize, mut f: impl FnMut()) -> usize {
    f(); // warm-up: first-use growth does not count
    ALLOCS.with(|c| c.set(0));
    ON.with(|c| c.set(true));
    for _ in 0..n {
        f();
    }
    ON.with(|c| c.set(false));
    ALLOCS.with(|c| c.get())
}

/// The four relay paths, 10 000 packets each: no heap allocation (`what` names the setup).
fn assert_relay_paths_allocate_nothing(s: &mut Setup, what: &str) {
    let payload = [0xabu8; 160];
    let cd = channel_data(&payload);
    let send = send_indication(s.ind_peer, &payload);
    let mut buf = vec![0u8; PEER_HEADROOM + 2048 + PEER_TAILROOM];
    let (now, tuple, relay, chan_peer, ind_peer) =
        (s.now, s.tuple, s.relay, s.chan_peer, s.ind_peer);

    let n = allocations(10_000, || {
        let a = s.engine.handle_client(now, tuple, &cd);
        assert!(matches!(a, ClientAction::ToPeer { peer, .. } if peer == chan_peer));
    });
    assert_eq!(
        n, 0,
        "{what}: ChannelData client → peer allocated {n} times"
    );

    let n = allocations(10_000, || {
        let a = s.engine.handle_client(now, tuple, &send);
        assert!(matches!(a, ClientAction::ToPeer { peer, .. } if peer == ind_peer));
    });
    assert_eq!(n, 0, "{what}: Send indication allocated {n} times");

    for (peer, path) in [(chan_peer, "ChannelData"), (ind_peer, "Data indication")] {
        let n = allocations(10_000, || {
            buf[PEER_HEADROOM..PEER_HEADROOM + payload.len()].copy_from_slice(&payload);
            let r = s
                .engine
                .handle_peer(now, relay, peer, &mut buf, PEER_HEADROOM, payload.len());
            assert!(r.is_some());
        });
        assert_eq!(n, 0, "{what}: peer → client {path} allocated {n} times");
    }
}

#[test]
fn relay_paths_do_not_allocate() {
    assert_relay_paths_allocate_nothing(&mut setup(), "no limits");
}

#[test]
fn bandwidth_limited_relay_paths_do_not_allocate() {
    // max-bps and bps-capacity on (high enough that nothing is dropped): the buckets are
    // plain integers in the allocation and the engine.
    let mut s = setup();
    let mut cfg = s.engine.config().clone();
    cfg.limits.max_bps = 1 << 40;
    cfg.limits.bps_capacity = 1 << 40;
    s.engine.set_config(std::sync::Arc::new(cfg));
    assert_relay_paths_allocate_nothing(&mut s, "max-bps and bps-capacity on");
    assert_eq!(s.engine.stats.dropped_bandwidth_allocation, 0);
    assert_eq!(s.engine.stats.dropped_bandwidth_server, 0);
}

#[test]
fn the_counter_counts() {
    // The instrument itself: a path that does allocate is seen.
    let n = allocations(10, || {
        std::hint::black_box(vec![1u8; 64]);
    });
    assert_eq!(n, 10);
}

/// The runtime side of a wildcard UDP listener (IP_PKTINFO, see src/runtime/pktinfo.rs): the
/// receive with per-slot control buffers and the send with a source-address control message
/// allocate nothing either. (The engine sees the same 5-tuples as above, only with a specific
/// server IP instead of the listener's.)
#[cfg(target_os = "linux")]
#[test]
fn wildcard_listener_io_does_not_allocate() {
    use ferroturn::runtime::batch::{send_from, Batch, Out};
    use ferroturn::runtime::pktinfo;
    use std::net::{SocketAddr, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    let server = UdpSocket::bind("0.0.0.0:0").unwrap();
    pktinfo::enable(server.as_raw_fd(), false).unwrap();
    server.set_nonblocking(true).unwrap();
    let to = SocketAddr::from(([127, 0, 0, 2], server.local_addr().unwrap().port()));
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.connect(to).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut batch = Batch::new();
    let mut reply = [0u8; 64];
    let deadline = Instant::now() + Duration::from_secs(20);
    let n = allocations(2_000, || {
        client.send(&[0x40, 0, 0, 4, 1, 2, 3, 4]).unwrap();
        let mut got = 0;
        while got == 0 && Instant::now() < deadline {
            got = batch.recv_with_dst(server.as_raw_fd(), 0).unwrap();
        }
        assert_eq!(batch.dst[0], Some(to.ip()));
        let out = Out {
            to: batch.from[0],
            ptr: batch.slot(0).as_ptr(),
            len: batch.len[0],
        };
        // SAFETY: the slot is not touched until the next receive.
        assert_eq!(
            unsafe { send_from(server.as_raw_fd(), &[out], batch.dst[0]) },
            0
        );
        assert_eq!(client.recv(&mut reply).unwrap(), 8);
    });
    assert_eq!(n, 0, "wildcard listener receive/send allocated {n} times");
}
