//! Keys of the "Abuse limits" section (issue #5): quotas, rates, back-off, bandwidth, TCP
//! connection limits and the privilege drop. Kept apart from the rest of the config so the
//! section can be read (and merged) on its own.
use std::time::Duration;

use super::{int, pick, pick_num, ConfigError, Ctx, FileConfig};
use crate::engine::limits::Limits;
use crate::runtime::cli::AbuseArgs;

/// The limits for the engine (and, for the TCP ones, the shard), and the privilege drop.
pub(super) struct Abuse {
    pub limits: Limits,
    pub proc_user: Option<String>,
    pub proc_group: Option<String>,
}

/// This section's keys, taken from the file before the rest of it is consumed.
pub(super) struct AbuseFile {
    max_allocations_per_ip: Option<i64>,
    max_allocations_per_prefix: Option<i64>,
    max_permissions_per_allocation: Option<i64>,
    max_channels_per_allocation: Option<i64>,
    max_peer_connections_per_allocation: Option<i64>,
    max_bps: Option<i64>,
    bps_capacity: Option<i64>,
    max_requests_per_ip: Option<i64>,
    max_401_per_ip: Option<i64>,
    auth_failures_before_backoff: Option<i64>,
    auth_backoff_max: Option<i64>,
    max_tcp_connections_per_ip: Option<i64>,
    max_pending_tcp_connections: Option<i64>,
    tcp_handshake_timeout: Option<i64>,
    proc_user: Option<String>,
    proc_group: Option<String>,
}

impl From<&FileConfig> for AbuseFile {
    fn from(f: &FileConfig) -> Self {
        AbuseFile {
            max_allocations_per_ip: f.max_allocations_per_ip,
            max_allocations_per_prefix: f.max_allocations_per_prefix,
            max_permissions_per_allocation: f.max_permissions_per_allocation,
            max_channels_per_allocation: f.max_channels_per_allocation,
            max_peer_connections_per_allocation: f.max_peer_connections_per_allocation,
            max_bps: f.max_bps,
            bps_capacity: f.bps_capacity,
            max_requests_per_ip: f.max_requests_per_ip,
            max_401_per_ip: f.max_401_per_ip,
            auth_failures_before_backoff: f.auth_failures_before_backoff,
            auth_backoff_max: f.auth_backoff_max,
            max_tcp_connections_per_ip: f.max_tcp_connections_per_ip,
            max_pending_tcp_connections: f.max_pending_tcp_connections,
            tcp_handshake_timeout: f.tcp_handshake_timeout,
            proc_user: f.proc_user.clone(),
            proc_group: f.proc_group.clone(),
        }
    }
}

pub(super) fn resolve(ctx: &Ctx, cli: &AbuseArgs, fc: &AbuseFile) -> Result<Abuse, ConfigError> {
    let d = Limits::default();
    let u32_range = (0, u64::from(u32::MAX));
    let n = |key: &str, c: Option<u64>, f: Option<i64>, def: u64, range| {
        int(ctx, key, pick_num(c, f), def, range).map(|(n, _)| n)
    };
    let allocations_per_ip = n(
        "max-allocations-per-ip",
        cli.max_allocations_per_ip,
        fc.max_allocations_per_ip,
        d.allocations_per_ip.into(),
        u32_range,
    )? as u32;
    let allocations_per_prefix = n(
        "max-allocations-per-prefix",
        cli.max_allocations_per_prefix,
        fc.max_allocations_per_prefix,
        d.allocations_per_prefix.into(),
        u32_range,
    )? as u32;
    // At least one: a client needs a permission to relay anything. The upper bounds keep one
    // allocation's memory small (each is a linear scan on the relay path).
    let max_permissions = n(
        "max-permissions-per-allocation",
        cli.max_permissions_per_allocation,
        fc.max_permissions_per_allocation,
        d.max_permissions as u64,
        (1, 1024),
    )? as usize;
    let max_channels = n(
        "max-channels-per-allocation",
        cli.max_channels_per_allocation,
        fc.max_channels_per_allocation,
        d.max_channels as u64,
        (1, 4096),
    )? as usize;
    let max_peer_connections = n(
        "max-peer-connections-per-allocation",
        cli.max_peer_connections_per_allocation,
        fc.max_peer_connections_per_allocation,
        d.max_peer_connections as u64,
        (1, 4096),
    )? as usize;
    let byte_range = (0, 1 << 40);
    let max_bps = n("max-bps", cli.max_bps, fc.max_bps, d.max_bps, byte_range)?;
    let bps_capacity = n(
        "bps-capacity",
        cli.bps_capacity,
        fc.bps_capacity,
        0,
        byte_range,
    )?;
    let requests_per_ip = n(
        "max-requests-per-ip",
        cli.max_requests_per_ip,
        fc.max_requests_per_ip,
        d.requests_per_ip.into(),
        (0, 1_000_000_000),
    )? as u32;
    let challenges_per_ip = n(
        "max-401-per-ip",
        cli.max_401_per_ip,
        fc.max_401_per_ip,
        d.challenges_per_ip.into(),
        (0, 1_000_000_000),
    )? as u32;
    let auth_failures_before_backoff = n(
        "auth-failures-before-backoff",
        cli.auth_failures_before_backoff,
        fc.auth_failures_before_backoff,
        d.auth_failures_before_backoff.into(),
        u32_range,
    )? as u32;
    let auth_backoff_max = n(
        "auth-backoff-max",
        cli.auth_backoff_max,
        fc.auth_backoff_max,
        d.auth_backoff_max.as_secs(),
        (1, 86400),
    )?;
    let tcp_connections_per_ip = n(
        "max-tcp-connections-per-ip",
        cli.max_tcp_connections_per_ip,
        fc.max_tcp_connections_per_ip,
        d.tcp_connections_per_ip.into(),
        u32_range,
    )? as u32;
    let pending_tcp = n(
        "max-pending-tcp-connections",
        cli.max_pending_tcp_connections,
        fc.max_pending_tcp_connections,
        d.pending_tcp_connections.into(),
        u32_range,
    )? as u32;
    let tcp_handshake_timeout = n(
        "tcp-handshake-timeout",
        cli.tcp_handshake_timeout,
        fc.tcp_handshake_timeout,
        d.tcp_handshake_timeout.as_secs(),
        (1, 3600),
    )?;
    let name = |key: &str, c: Option<String>, f: Option<String>| match pick(c, f) {
        None => Ok(None),
        Some((s, src)) if s.trim().is_empty() => Err(ctx.err(src, key, "must not be empty")),
        Some((s, _)) => Ok(Some(s.trim().to_owned())),
    };
    let proc_user = name("proc-user", cli.proc_user.clone(), fc.proc_user.clone())?;
    let proc_group = name("proc-group", cli.proc_group.clone(), fc.proc_group.clone())?;
    Ok(Abuse {
        limits: Limits {
            allocations_per_ip,
            allocations_per_prefix,
            max_permissions,
            max_channels,
            max_peer_connections,
            max_bps,
            bps_capacity,
            requests_per_ip,
            challenges_per_ip,
            auth_failures_before_backoff,
            auth_backoff_max: Duration::from_secs(auth_backoff_max),
            tcp_connections_per_ip,
            pending_tcp_connections: pending_tcp,
            tcp_handshake_timeout: Duration::from_secs(tcp_handshake_timeout),
        },
        proc_user,
        proc_group,
    })
}

/// One line for `check-config` (configured values, not the per-shard shares).
pub(super) fn summary(l: &Limits) -> String {
    let n = |v: u64| {
        if v == 0 {
            "unlimited".to_owned()
        } else {
            v.to_string()
        }
    };
    format!(
        "allocations per IP {}, per prefix {}; permissions {}, channels {}, peer connections {} \
         per allocation; requests/s per source {}, 401s/s per source {}, failed logins before \
         back-off {}; max-bps {}, bps-capacity {}; TCP per IP {}, pending {}, handshake {} s",
        n(l.allocations_per_ip.into()),
        n(l.allocations_per_prefix.into()),
        l.max_permissions,
        l.max_channels,
        l.max_peer_connections,
        n(l.requests_per_ip.into()),
        n(l.challenges_per_ip.into()),
        match l.auth_failures_before_backoff {
            0 => "off".to_owned(),
            f => f.to_string(),
        },
        n(l.max_bps),
        n(l.bps_capacity),
        n(l.tcp_connections_per_ip.into()),
        n(l.pending_tcp_connections.into()),
        l.tcp_handshake_timeout.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::super::{load_from, Config, ConfigError};
    use crate::runtime::cli::Cli;
    use clap::Parser;
    use std::path::Path;
    use std::time::Duration;

    const MIN: &str = "realm = \"example.org\"\nuser = \"alice:pw\"\nlistening-ip = \"127.0.0.1\"\nrelay-threads = 2\n";

    fn load(text: &str, args: &[&str]) -> Result<Config, ConfigError> {
        let cli =
            Cli::try_parse_from(std::iter::once("ferroturn").chain(args.iter().copied())).unwrap();
        load_from(
            &cli,
            Some((Path::new("turnserver.toml"), &format!("{MIN}{text}"))),
        )
    }

    #[test]
    fn defaults_and_shares() {
        let c = load("", &[]).unwrap();
        let l = &c.engine.limits;
        assert_eq!(
            (l.allocations_per_ip, l.allocations_per_prefix),
            (256, 1024)
        );
        assert_eq!(
            (l.max_permissions, l.max_channels, l.max_peer_connections),
            (128, 64, 64)
        );
        assert_eq!((l.max_bps, l.bps_capacity), (0, 0));
        // Per-source rates and the pending cap hold server-wide (state the shards share).
        assert_eq!((l.requests_per_ip, l.challenges_per_ip), (500, 200));
        assert_eq!(l.pending_tcp_connections, 1024);
        assert_eq!(l.tcp_handshake_timeout, Duration::from_secs(10));
        assert_eq!(
            (c.proc_user.as_deref(), c.proc_group.as_deref()),
            (None, None)
        );
    }

    #[test]
    fn file_keys_and_flags() {
        let text = "max-allocations-per-ip = 3\nmax-bps = 1000\nbps-capacity = 1000001\n\
                    max-401-per-ip = 5\nmax-requests-per-ip = 0\nproc-user = \"nobody\"\n\
                    tcp-handshake-timeout = 3\nauth-backoff-max = 5\n";
        let c = load(
            text,
            &["--max-allocations-per-ip", "7", "--proc-group", "nogroup"],
        )
        .unwrap();
        let l = &c.engine.limits;
        assert_eq!(l.allocations_per_ip, 7, "the flag wins");
        assert_eq!((l.max_bps, l.bps_capacity), (1000, 1000001));
        assert_eq!((l.challenges_per_ip, l.requests_per_ip), (5, 0));
        assert_eq!(l.tcp_handshake_timeout, Duration::from_secs(3));
        assert_eq!(l.auth_backoff_max, Duration::from_secs(5));
        assert_eq!(c.proc_user.as_deref(), Some("nobody"));
        assert_eq!(c.proc_group.as_deref(), Some("nogroup"));
    }

    #[test]
    fn bad_values_are_one_line_errors() {
        for (text, needle) in [
            (
                "max-permissions-per-allocation = 0",
                "'max-permissions-per-allocation': must be at least 1",
            ),
            (
                "max-channels-per-allocation = 5000",
                "5000 is out of range (1-4096)",
            ),
            (
                "max-allocations-per-ip = -1",
                "'max-allocations-per-ip': -1 is out of range",
            ),
            (
                "tcp-handshake-timeout = 0",
                "'tcp-handshake-timeout': must be at least 1",
            ),
            ("proc-user = \" \"", "'proc-user': must not be empty"),
            ("max-401-per-ip = \"x\"", "max-401-per-ip"),
        ] {
            let e = load(&format!("{text}\n"), &[]).expect_err(text).to_string();
            assert!(!e.contains('\n') && e.contains(needle), "{text}: {e}");
        }
    }
}
