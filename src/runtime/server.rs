//! Starting and steering a server: listener groups, one shard thread per core, reload, shutdown.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::config::Config;
use super::shard::{self, Control, ShardHandle, ShardStats, SocketOptions};
use super::sockets;
use crate::engine::shared::Shared;
use crate::engine::{Engine, EngineConfig};

/// Why the server could not start; `Display` is the one line an operator sees.
#[derive(Debug)]
pub enum StartError {
    AddrInUse(SocketAddr),
    Bind(SocketAddr, std::io::Error),
    Io(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::AddrInUse(a) => write!(
                f,
                "listening address {a} is already in use (another TURN server running?)"
            ),
            StartError::Bind(a, e) => write!(f, "cannot listen on {a}: {e}"),
            StartError::Io(e) => write!(f, "cannot start: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

pub struct Server {
    shards: Vec<ShardHandle>,
    shared: Arc<Shared>,
    local_addrs: Vec<SocketAddr>,
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // The OS CSPRNG; failing that (no getrandom at all), time is better than a constant.
    if getrandom::fill(&mut b).is_err() {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        return t.as_nanos() as u64 ^ std::process::id() as u64;
    }
    u64::from_le_bytes(b)
}

impl Server {
    pub fn start(cfg: &Config) -> Result<Server, StartError> {
        let n = cfg.relay_threads.max(1);
        let mut nonce_key = [0u8; 32];
        for c in nonce_key.chunks_mut(8) {
            c.copy_from_slice(&random_u64().to_le_bytes());
        }
        let engine_cfg = Arc::new(cfg.engine.clone());
        let shared = Arc::new(Shared::new(
            engine_cfg.min_port,
            engine_cfg.max_port,
            nonce_key,
            random_u64(),
        ));
        // Bind everything before starting any thread, so a bad address fails cleanly.
        let mut per_shard: Vec<Vec<std::net::UdpSocket>> = (0..n).map(|_| Vec::new()).collect();
        let mut local_addrs = Vec::new();
        for &addr in &cfg.listen {
            let group =
                sockets::bind_listener_group(addr, n, cfg.udp_recv_buffer, cfg.udp_send_buffer)
                    .map_err(|e| {
                        if e.kind() == std::io::ErrorKind::AddrInUse {
                            StartError::AddrInUse(addr)
                        } else {
                            StartError::Bind(addr, e)
                        }
                    })?;
            local_addrs.push(group[0].local_addr().map_err(StartError::Io)?);
            for (i, s) in group.into_iter().enumerate() {
                per_shard[i].push(s);
            }
        }
        let opts = SocketOptions {
            recv_buffer: cfg.udp_recv_buffer,
            send_buffer: cfg.udp_send_buffer,
        };
        let now = Instant::now();
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut shards = Vec::with_capacity(n);
        for (i, listeners) in per_shard.into_iter().enumerate() {
            let engine = Engine::new(
                engine_cfg.clone(),
                shared.clone(),
                now,
                unix_now,
                random_u64(),
            );
            shards.push(shard::spawn(i, engine, listeners, opts).map_err(StartError::Io)?);
        }
        Ok(Server {
            shards,
            shared,
            local_addrs,
        })
    }

    /// The addresses actually bound (resolves port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Swap the engine configuration in every shard (users, secrets, peer ACLs, quotas...).
    pub fn reload(&self, cfg: EngineConfig) {
        let cfg = Arc::new(cfg);
        for s in &self.shards {
            s.send(Control::Reload(cfg.clone()));
        }
    }

    pub fn allocation_count(&self) -> u32 {
        self.shared.total_allocations()
    }

    /// Counters of every shard, as last published (at most a second old).
    pub fn stats(&self) -> Vec<ShardStats> {
        self.shards
            .iter()
            .map(|s| s.stats.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    /// Stop every shard (allocations are closed) and wait for the threads.
    pub fn shutdown(self) {
        for s in &self.shards {
            s.send(Control::Shutdown);
        }
        for s in self.shards {
            let _ = s.thread.join();
        }
    }
}
