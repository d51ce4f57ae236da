//! The engine driven by arbitrary sequences of client datagrams, peer datagrams, relay-bind
//! results and time jumps. Property: no panic, and the allocation count never exceeds what the
//! port range allows.
#![no_main]
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferroturn::engine::peer_filter::{PeerFilter, PeerFilterConfig};
use ferroturn::engine::shared::Shared;
use ferroturn::engine::{
    Engine, EngineConfig, FiveTuple, RelayCommand, Transport, UserKey, PEER_HEADROOM, PEER_TAILROOM,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut cfg = EngineConfig {
        realm: "fuzz".into(),
        relay_ip_v4: Some("192.0.2.1".parse().unwrap()),
        min_port: 50000,
        max_port: 50015,
        auth_secrets: vec!["s".into()],
        peer_filter: PeerFilter::new(PeerFilterConfig {
            allow_loopback: true,
            relay_ports: (50000, 50015),
            ..Default::default()
        }),
        ..Default::default()
    };
    cfg.users.insert("u".into(), UserKey::Password("p".into()));
    let shared = Arc::new(Shared::new(50000, 50015, [3; 32], 9));
    let mut e = Engine::new(Arc::new(cfg), shared, t0, 1_700_000_000, 5);
    let mut now = t0;
    let mut buf = vec![0u8; PEER_HEADROOM + 2048 + PEER_TAILROOM];
    // Frames: [op, len, bytes...]
    let mut i = 0;
    while i + 2 <= data.len() {
        let op = data[i];
        let len = (data[i + 1] as usize).min(data.len() - i - 2);
        let chunk = &data[i + 2..i + 2 + len];
        i += 2 + len;
        let client: SocketAddr = SocketAddr::from(([198, 51, 100, op & 3], 40000 + (op as u16 >> 2 & 3)));
        let tuple = FiveTuple {
            client,
            server: "192.0.2.1:3478".parse().unwrap(),
            transport: Transport::Udp,
        };
        match op % 4 {
            0 | 1 => {
                let _ = e.handle_client(now, tuple, chunk);
            }
            2 => {
                let relay = chunk.first().copied().unwrap_or(0) as u32 % 8;
                let peer: SocketAddr = SocketAddr::from(([203, 0, 113, op >> 4], 5000));
                let n = chunk.len();
                buf[PEER_HEADROOM..PEER_HEADROOM + n].copy_from_slice(chunk);
                let _ = e.handle_peer(now, relay, peer, &mut buf, PEER_HEADROOM, n);
            }
            _ => {
                let secs = chunk.first().copied().unwrap_or(1) as u64 * 13;
                now += Duration::from_secs(secs);
                e.handle_timeout(now);
            }
        }
        while let Some(c) = e.poll_command() {
            if let RelayCommand::Bind { relay, addr, .. } = c {
                let r = if op & 0x40 != 0 { Err(std::io::ErrorKind::AddrInUse) } else { Ok(addr) };
                e.on_relay_bound(now, relay, r);
            }
        }
        while e.poll_transmit().is_some() {}
        assert!(e.allocation_count() <= 16);
    }
});
