//! Prometheus text exposition format 0.0.4: the shards' published counters summed at scrape
//! time. Nothing here runs per packet; the shards publish plain copies once a second.
use std::fmt::Write;

use super::shard::{ShardStats, TcpLimitStats};
use crate::engine::ops::{
    AuthFailure, EndReason, Gauges, Histogram, Refusal, BATCH_BOUNDS, DURATION_S_BOUNDS,
    SETUP_US_BOUNDS,
};
use crate::engine::Stats;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const TRANSPORTS: [&str; 3] = ["udp", "tcp", "tls"];

/// Everything the shards published, summed.
#[derive(Default)]
pub struct Totals {
    pub engine: Stats,
    pub gauges: Gauges,
    pub batch_sizes: Histogram,
    pub connections: u64,
    pub send_errors: u64,
    pub recv_errors: u64,
    pub stream_drops: u64,
    /// Abuse limits on client TCP/TLS connections.
    pub tcp: TcpLimitStats,
}

impl Totals {
    pub fn of(shards: &[ShardStats]) -> Self {
        let mut t = Totals::default();
        for s in shards {
            let (a, b) = (&mut t.engine, &s.engine);
            a.allocations_created += b.allocations_created;
            a.allocations_deleted += b.allocations_deleted;
            a.packets_to_peer += b.packets_to_peer;
            a.bytes_to_peer += b.bytes_to_peer;
            a.packets_to_client += b.packets_to_client;
            a.bytes_to_client += b.bytes_to_client;
            a.dropped_no_allocation += b.dropped_no_allocation;
            a.dropped_no_permission += b.dropped_no_permission;
            a.dropped_not_turn += b.dropped_not_turn;
            a.dropped_malformed += b.dropped_malformed;
            a.auth_challenges += b.auth_challenges;
            a.auth_failures += b.auth_failures;
            a.stale_nonces += b.stale_nonces;
            a.peers_denied += b.peers_denied;
            // Abuse limits (README "Abuse resistance").
            a.refused_quota_user += b.refused_quota_user;
            a.refused_quota_total += b.refused_quota_total;
            a.refused_quota_ip += b.refused_quota_ip;
            a.refused_quota_prefix += b.refused_quota_prefix;
            a.refused_permissions += b.refused_permissions;
            a.refused_channels += b.refused_channels;
            a.refused_peer_connections += b.refused_peer_connections;
            a.refused_rate_requests += b.refused_rate_requests;
            a.refused_rate_401 += b.refused_rate_401;
            a.refused_auth_backoff += b.refused_auth_backoff;
            a.dropped_bandwidth_allocation += b.dropped_bandwidth_allocation;
            a.dropped_bandwidth_server += b.dropped_bandwidth_server;
            a.refusal_logs_suppressed += b.refusal_logs_suppressed;
            t.tcp.refused_tcp_per_ip += s.tcp.refused_tcp_per_ip;
            t.tcp.refused_tcp_pending += s.tcp.refused_tcp_pending;
            t.tcp.closed_tcp_handshake_timeout += s.tcp.closed_tcp_handshake_timeout;
            t.tcp.pending += s.tcp.pending;
            for i in 0..a.ops.auth_failures.len() {
                a.ops.auth_failures[i] += b.ops.auth_failures[i];
            }
            for i in 0..a.ops.refusals.len() {
                a.ops.refusals[i] += b.ops.refusals[i];
            }
            for i in 0..a.ops.sessions_ended.len() {
                a.ops.sessions_ended[i] += b.ops.sessions_ended[i];
            }
            a.ops.setup_time.merge(&b.ops.setup_time);
            a.ops.session_duration.merge(&b.ops.session_duration);
            t.gauges.merge(&s.gauges);
            t.batch_sizes.merge(&s.batch_sizes);
            t.connections += s.connections as u64;
            t.send_errors += s.send_errors;
            t.recv_errors += s.recv_errors;
            t.stream_drops += s.stream_drops;
        }
        t
    }
}

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, v: u64) {
        self.head(name, kind, help);
        let _ = writeln!(self.0, "{name} {v}");
    }

    fn labelled(&mut self, name: &str, kind: &str, help: &str, label: &str, vs: &[(&str, u64)]) {
        self.head(name, kind, help);
        for (l, v) in vs {
            let _ = writeln!(self.0, "{name}{{{label}=\"{l}\"}} {v}");
        }
    }

    /// `scale`: units per exported unit (1e6 for µs → s).
    fn histogram(&mut self, name: &str, help: &str, bounds: &[u64], h: &Histogram, scale: f64) {
        self.head(name, "histogram", help);
        let mut cum = 0;
        for (i, b) in bounds.iter().enumerate() {
            cum += h.counts[i];
            let le = *b as f64 / scale;
            let _ = writeln!(self.0, "{name}_bucket{{le=\"{le}\"}} {cum}");
        }
        cum += h.counts[bounds.len()];
        let _ = writeln!(self.0, "{name}_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(self.0, "{name}_sum {}", h.sum as f64 / scale);
        let _ = writeln!(self.0, "{name}_count {}", h.count);
    }
}

/// Per-user series (`prometheus-username-labels`), from a live session snapshot: the
/// allocations of each user and the bytes their live sessions relayed. REST API usernames
/// (`expiry:user`) are labelled by the user part, so one user is one series, not one per
/// credential. Ended sessions are in the `session_end` records, not here.
pub fn render_users(out: &mut String, sessions: &[crate::engine::ops::SessionInfo]) {
    use std::collections::BTreeMap;
    let mut by: BTreeMap<&str, [u64; 3]> = BTreeMap::new();
    for s in sessions {
        let user = match s.user.split_once(':') {
            Some((exp, u)) if !exp.is_empty() && exp.bytes().all(|b| b.is_ascii_digit()) => u,
            _ => s.user.as_str(),
        };
        let e = by.entry(user).or_default();
        e[0] += 1;
        e[1] += s.to_peer_bytes;
        e[2] += s.to_client_bytes;
    }
    let mut o = Out(std::mem::take(out));
    o.head(
        "ferroturn_user_allocations",
        "gauge",
        "Live allocations per user (prometheus-username-labels).",
    );
    for (u, v) in &by {
        let _ = writeln!(
            o.0,
            "ferroturn_user_allocations{{user=\"{}\"}} {}",
            escape(u),
            v[0]
        );
    }
    o.head(
        "ferroturn_user_session_bytes",
        "gauge",
        "Payload bytes relayed by each user's live sessions, by direction.",
    );
    for (u, v) in &by {
        for (d, n) in [("to_peer", v[1]), ("to_client", v[2])] {
            let _ = writeln!(
                o.0,
                "ferroturn_user_session_bytes{{user=\"{}\",direction=\"{d}\"}} {n}",
                escape(u)
            );
        }
    }
    *out = o.0;
}

/// Label value escaping of the text format: backslash, double quote, newline.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole scrape.
pub fn render(shards: &[ShardStats], draining: bool) -> String {
    let t = Totals::of(shards);
    let e = &t.engine;
    let mut o = Out(String::with_capacity(8192));
    o.labelled(
        "ferroturn_build_info",
        "gauge",
        "Version of this ferroturn.",
        "version",
        &[(env!("CARGO_PKG_VERSION"), 1)],
    );
    o.one(
        "ferroturn_draining",
        "gauge",
        "1 while draining (new allocations refused or redirected).",
        u64::from(draining),
    );
    o.one(
        "ferroturn_shards",
        "gauge",
        "Relay threads (shards).",
        shards.len() as u64,
    );
    let by_t = |v: &[u64; 3]| -> Vec<(&str, u64)> {
        TRANSPORTS.iter().copied().zip(v.iter().copied()).collect()
    };
    o.labelled(
        "ferroturn_allocations",
        "gauge",
        "Live allocations, by client transport.",
        "transport",
        &by_t(&t.gauges.allocations),
    );
    o.labelled(
        "ferroturn_permissions",
        "gauge",
        "Live permissions, by client transport.",
        "transport",
        &by_t(&t.gauges.permissions),
    );
    o.labelled(
        "ferroturn_channels",
        "gauge",
        "Live channel bindings, by client transport.",
        "transport",
        &by_t(&t.gauges.channels),
    );
    o.one(
        "ferroturn_stream_connections",
        "gauge",
        "TCP and TLS client connections.",
        t.connections,
    );
    o.one(
        "ferroturn_allocations_created_total",
        "counter",
        "Allocations created.",
        e.allocations_created,
    );
    let ended: Vec<(&str, u64)> = EndReason::ALL
        .iter()
        .map(|r| (r.label(), e.ops.sessions_ended[*r as usize]))
        .collect();
    o.labelled(
        "ferroturn_sessions_ended_total",
        "counter",
        "Allocations ended, by reason.",
        "reason",
        &ended,
    );
    o.labelled(
        "ferroturn_relayed_packets_total",
        "counter",
        "Datagrams relayed, by direction.",
        "direction",
        &[
            ("to_peer", e.packets_to_peer),
            ("to_client", e.packets_to_client),
        ],
    );
    o.labelled(
        "ferroturn_relayed_bytes_total",
        "counter",
        "Payload bytes relayed, by direction.",
        "direction",
        &[
            ("to_peer", e.bytes_to_peer),
            ("to_client", e.bytes_to_client),
        ],
    );
    o.one(
        "ferroturn_auth_challenges_total",
        "counter",
        "401 challenges to requests without credentials (the normal first round trip).",
        e.auth_challenges,
    );
    let auth: Vec<(&str, u64)> = AuthFailure::ALL
        .iter()
        .map(|r| (r.label(), e.ops.auth_failures[*r as usize]))
        .collect();
    o.labelled(
        "ferroturn_auth_failures_total",
        "counter",
        "Requests with credentials that failed authentication, by reason.",
        "reason",
        &auth,
    );
    o.one(
        "ferroturn_stale_nonces_total",
        "counter",
        "438 Stale Nonce answers.",
        e.stale_nonces,
    );
    let mut refusals: Vec<(&str, u64)> = vec![
        ("peer_denied", e.peers_denied),
        ("no_permission", e.dropped_no_permission),
        ("no_allocation", e.dropped_no_allocation),
        // Abuse limits (user_quota and total_quota come from the ops counters below).
        ("ip_quota", e.refused_quota_ip),
        ("prefix_quota", e.refused_quota_prefix),
        ("permissions_cap", e.refused_permissions),
        ("channels_cap", e.refused_channels),
        ("peer_connections_cap", e.refused_peer_connections),
        ("request_rate", e.refused_rate_requests),
        ("challenge_rate", e.refused_rate_401),
        ("auth_backoff", e.refused_auth_backoff),
        ("bandwidth_allocation", e.dropped_bandwidth_allocation),
        ("bandwidth_server", e.dropped_bandwidth_server),
        ("tcp_per_ip", t.tcp.refused_tcp_per_ip),
        ("tcp_pending", t.tcp.refused_tcp_pending),
        ("tcp_handshake_timeout", t.tcp.closed_tcp_handshake_timeout),
    ];
    refusals.extend(
        Refusal::ALL
            .iter()
            .map(|r| (r.label(), e.ops.refusals[*r as usize])),
    );
    o.labelled(
        "ferroturn_refusals_total",
        "counter",
        "Requests refused and datagrams dropped by policy, by reason.",
        "reason",
        &refusals,
    );
    o.labelled(
        "ferroturn_dropped_total",
        "counter",
        "Datagrams dropped as not TURN or malformed.",
        "reason",
        &[
            ("not_turn", e.dropped_not_turn),
            ("malformed", e.dropped_malformed),
        ],
    );
    o.labelled(
        "ferroturn_listener_errors_total",
        "counter",
        "Socket errors (receive/accept, send).",
        "kind",
        &[("recv", t.recv_errors), ("send", t.send_errors)],
    );
    o.one(
        "ferroturn_stream_drops_total",
        "counter",
        "Messages dropped for TCP/TLS clients that do not read.",
        t.stream_drops,
    );
    o.histogram(
        "ferroturn_allocation_setup_seconds",
        "Time from taking an Allocate to its success answer (relay socket bind included).",
        SETUP_US_BOUNDS,
        &e.ops.setup_time,
        1e6,
    );
    o.histogram(
        "ferroturn_session_duration_seconds",
        "Lifetime of ended allocations.",
        DURATION_S_BOUNDS,
        &e.ops.session_duration,
        1.0,
    );
    o.histogram(
        "ferroturn_relay_batch_size",
        "Datagrams per recvmmsg call on listeners and relay sockets.",
        BATCH_BOUNDS,
        &t.batch_sizes,
        1.0,
    );
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_labels_group_rest_users_and_escape() {
        use crate::engine::ops::SessionInfo;
        use crate::engine::Transport;
        let s = |user: &str, bytes| SessionInfo {
            id: 1,
            user: user.into(),
            transport: Transport::Udp,
            client: "127.0.0.1:1".parse().unwrap(),
            server: "127.0.0.1:2".parse().unwrap(),
            relays: vec![],
            tcp_relay: false,
            age: std::time::Duration::ZERO,
            to_peer_packets: 0,
            to_peer_bytes: bytes,
            to_client_packets: 0,
            to_client_bytes: 2 * bytes,
            permissions: 0,
            channels: 0,
        };
        let mut out = String::new();
        render_users(
            &mut out,
            &[
                s("1700000000:alice", 10),
                s("1700000999:alice", 5),
                s("b\"o\\b\n", 1),
                s("x:y", 1),
            ],
        );
        assert!(
            out.contains("ferroturn_user_allocations{user=\"alice\"} 2\n"),
            "{out}"
        );
        assert!(out
            .contains("ferroturn_user_session_bytes{user=\"alice\",direction=\"to_client\"} 30\n"));
        assert!(
            out.contains("ferroturn_user_allocations{user=\"b\\\"o\\\\b\\n\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("ferroturn_user_allocations{user=\"x:y\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("# TYPE ferroturn_user_allocations gauge\n"));
    }

    #[test]
    fn abuse_refusals_are_exported() {
        let mut a = ShardStats::default();
        a.engine.refused_quota_ip = 3;
        a.engine.refused_rate_401 = 5;
        a.engine.dropped_bandwidth_allocation = 1;
        a.tcp.refused_tcp_per_ip = 2;
        a.tcp.closed_tcp_handshake_timeout = 1;
        let b = a.clone();
        let text = render(&[a, b], false);
        for (reason, n) in [
            ("ip_quota", 6),
            ("challenge_rate", 10),
            ("bandwidth_allocation", 2),
            ("tcp_per_ip", 4),
            ("tcp_handshake_timeout", 2),
            ("auth_backoff", 0),
        ] {
            let line = format!("ferroturn_refusals_total{{reason=\"{reason}\"}} {n}\n");
            assert!(text.contains(&line), "{line}{text}");
        }
    }

    #[test]
    fn renders_sums_and_cumulative_buckets() {
        let mut a = ShardStats::default();
        a.engine.packets_to_peer = 3;
        a.engine.ops.setup_time.observe(SETUP_US_BOUNDS, 30);
        a.batch_sizes.observe(BATCH_BOUNDS, 1);
        a.gauges.allocations = [2, 0, 1];
        let mut b = a.clone();
        b.engine.packets_to_peer = 4;
        b.batch_sizes.observe(BATCH_BOUNDS, 100);
        let text = render(&[a, b], true);
        assert!(text.contains("ferroturn_relayed_packets_total{direction=\"to_peer\"} 7\n"));
        assert!(text.contains("ferroturn_allocations{transport=\"udp\"} 4\n"));
        assert!(text.contains("ferroturn_allocations{transport=\"tls\"} 2\n"));
        assert!(text.contains("ferroturn_draining 1\n"));
        assert!(text.contains("ferroturn_allocation_setup_seconds_bucket{le=\"0.000025\"} 0\n"));
        assert!(text.contains("ferroturn_allocation_setup_seconds_bucket{le=\"0.00005\"} 2\n"));
        assert!(text.contains("ferroturn_allocation_setup_seconds_count 2\n"));
        assert!(text.contains("ferroturn_relay_batch_size_bucket{le=\"1\"} 2\n"));
        assert!(text.contains("ferroturn_relay_batch_size_bucket{le=\"16\"} 2\n"));
        assert!(text.contains("ferroturn_relay_batch_size_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("ferroturn_relay_batch_size_sum 102\n"));
        // Every sample has HELP and TYPE lines before it.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                text.contains(&format!("# TYPE {name} "))
                    || text.contains(&format!("# TYPE {base} histogram")),
                "{l}"
            );
        }
    }
}
