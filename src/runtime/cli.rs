//! Command line. Flag names follow coturn's `turnserver` where the concept is the same, so
//! existing runbooks carry over. Every flag can also be set in the TOML file (same name,
//! without the dashes); a flag given here overrides the file. A list flag given here
//! (`--user`, `--listening-ip`, ...) replaces the file's list instead of adding to it.
//!
//! Numbers are taken as `u64` and range-checked by [`crate::runtime::config::load`], so
//! "not a port" has the same message whether it came from the file or from here.
use std::path::PathBuf;

use clap::{ArgAction, Parser, Subcommand};

/// ferroturn: a STUN/TURN relay server (RFC 8489, RFC 8656).
///
/// All options can also be set in the TOML file given with --config; options given on the
/// command line override the file. See turnserver.toml.example for every key.
#[derive(Parser, Clone, Default)]
#[command(name = "ferroturn", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// TOML configuration file (coturn: -c).
    #[arg(
        short = 'c',
        long,
        value_name = "FILE",
        env = "FERROTURN_CONFIG",
        global = true
    )]
    pub config: Option<PathBuf>,

    /// Run from a coturn `turnserver.conf` instead of a TOML file: the options ferroturn
    /// supports are converted as `ferroturn convert` does, ignored lines are reported on
    /// stderr. Not together with --config.
    #[arg(long, value_name = "FILE", global = true)]
    pub coturn_config: Option<PathBuf>,

    /// IP address to listen on; repeatable [default: 0.0.0.0] (coturn: -L).
    #[arg(short = 'L', long, value_name = "IP", global = true)]
    pub listening_ip: Vec<String>,

    /// UDP and TCP port to listen on [default: 3478] (coturn: -p).
    #[arg(short = 'p', long, value_name = "PORT", global = true)]
    pub listening_port: Option<u64>,

    /// TLS port (`turns:`), used when --cert and --pkey are given [default: 5349]
    /// (coturn: --tls-listening-port).
    #[arg(long, value_name = "PORT", global = true)]
    pub tls_listening_port: Option<u64>,

    /// TLS certificate chain, PEM; relative to the working directory. With --pkey, enables
    /// the TLS listeners (coturn: --cert).
    #[arg(long, value_name = "FILE", global = true)]
    pub cert: Option<PathBuf>,

    /// TLS private key, PEM, for --cert; relative to the working directory (coturn: --pkey).
    #[arg(long, value_name = "FILE", global = true)]
    pub pkey: Option<PathBuf>,

    /// Do not listen on UDP (coturn: --no-udp).
    #[arg(long, global = true)]
    pub no_udp: bool,

    /// Do not listen on TCP (coturn: --no-tcp).
    #[arg(long, global = true)]
    pub no_tcp: bool,

    /// Do not listen on TLS, even with --cert and --pkey (coturn: --no-tls).
    #[arg(long, global = true)]
    pub no_tls: bool,

    /// Address relay sockets are bound to; at most one per address family
    /// [default: the listening IP of that family] (coturn: -E).
    #[arg(short = 'E', long, value_name = "IP", global = true)]
    pub relay_ip: Vec<String>,

    /// Public address advertised in XOR-RELAYED-ADDRESS when behind NAT; one per family.
    /// coturn's PUBLIC/PRIVATE form is accepted (the public part is advertised) (coturn: -X).
    #[arg(short = 'X', long, value_name = "IP[/PRIVATE-IP]", global = true)]
    pub external_ip: Vec<String>,

    /// Lowest relay port [default: 49152] (coturn: --min-port).
    #[arg(long, value_name = "PORT", global = true)]
    pub min_port: Option<u64>,

    /// Highest relay port [default: 65535] (coturn: --max-port).
    #[arg(long, value_name = "PORT", global = true)]
    pub max_port: Option<u64>,

    /// REALM for long-term credentials [default: ferroturn] (coturn: -r).
    #[arg(short = 'r', long, value_name = "REALM", global = true)]
    pub realm: Option<String>,

    /// Static user NAME:PASSWORD, or NAME:0x<32 hex> for a precomputed
    /// MD5(name:realm:password) key; repeatable (coturn: -u).
    #[arg(short = 'u', long, value_name = "NAME:PASS", global = true)]
    pub user: Vec<String>,

    /// Enable TURN REST API credentials (time-limited, HMAC of a shared secret)
    /// (coturn: --use-auth-secret).
    #[arg(long, global = true)]
    pub use_auth_secret: bool,

    /// Shared secret for the TURN REST API; repeatable (first = current, all accepted, for
    /// rotation). Prefer the environment variable: the command line is visible in `ps`.
    /// Implies --use-auth-secret (coturn: --static-auth-secret).
    #[arg(
        long,
        value_name = "SECRET",
        env = "FERROTURN_STATIC_AUTH_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub static_auth_secret: Vec<String>,

    /// Allow relaying to loopback peers (127.0.0.0/8, ::1); for tests only
    /// (coturn: --allow-loopback-peers).
    #[arg(long, global = true)]
    pub allow_loopback_peers: bool,

    /// Also accept channel numbers 0x5000-0x7FFF (RFC 5766; RFC 8656 reserves them). Needed by
    /// older clients such as coturn's turnutils_uclient.
    #[arg(long, global = true)]
    pub legacy_channel_numbers: bool,

    /// Do not use UDP GSO (UDP_SEGMENT) for runs of equal-size datagrams to one destination
    /// (config: udp-gso = false). For devices that mis-handle it; the kernel's refusals are
    /// handled without it.
    #[arg(long, global = true)]
    pub no_udp_gso: bool,

    /// Interrupt coalescing for the relay: under dense traffic a shard polls at most once per
    /// this many microseconds, so one wake-up serves several datagrams (fewer system calls and
    /// wake-ups per packet, up to this much added latency per pass); 0-1000 [default: 0, off]
    /// (config: relay-coalesce-us; no coturn equivalent).
    #[arg(long, value_name = "US", global = true)]
    pub relay_coalesce_us: Option<u64>,

    /// Peer IP, CIDR or coturn range A-B that is always allowed, overriding every deny rule;
    /// repeatable (coturn: --allowed-peer-ip).
    #[arg(long, value_name = "RANGE", global = true)]
    pub allowed_peer_ip: Vec<String>,

    /// Peer IP, CIDR or coturn range A-B that is never relayed to; repeatable
    /// (coturn: --denied-peer-ip).
    #[arg(long, value_name = "RANGE", global = true)]
    pub denied_peer_ip: Vec<String>,

    /// Cap on the lifetime a client may request, seconds [default: 3600]
    /// (coturn: --max-allocate-lifetime).
    #[arg(long, value_name = "SECS", global = true)]
    pub max_allocate_lifetime: Option<u64>,

    /// Lifetime when the client requests none, seconds [default: 600]
    /// (no coturn equivalent: coturn always uses 600).
    #[arg(long, value_name = "SECS", global = true)]
    pub default_allocate_lifetime: Option<u64>,

    /// Nonce lifetime, seconds, before 438 Stale Nonce [default: 600] (coturn: --stale-nonce).
    #[arg(long, value_name = "SECS", global = true)]
    pub stale_nonce: Option<u64>,

    /// Max allocations per username, 0 = unlimited [default: 0] (coturn: -q).
    #[arg(short = 'q', long, value_name = "N", global = true)]
    pub user_quota: Option<u64>,

    /// Max allocations in total, 0 = unlimited [default: 0] (coturn: -Q).
    #[arg(short = 'Q', long, value_name = "N", global = true)]
    pub total_quota: Option<u64>,

    /// Relay worker threads [default: number of CPUs] (coturn: -m).
    #[arg(short = 'm', long, value_name = "N", global = true)]
    pub relay_threads: Option<u64>,

    /// SOFTWARE attribute value; not sent unless set (coturn: --software-attribute, which
    /// sends coturn's version).
    #[arg(long, value_name = "NAME", global = true)]
    pub software: Option<String>,

    /// Log file; `stdout` or `-` = standard output [default: stdout] (coturn: -l).
    #[arg(short = 'l', long, value_name = "PATH", global = true)]
    pub log_file: Option<String>,

    /// More logging: -v = debug, -vv = trace [default: info] (coturn: -v).
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count, global = true,
          conflicts_with = "log_level")]
    pub verbose: u8,

    /// Log level (error, warn, info, debug, trace, off) or a tracing filter such as
    /// `info,ferroturn::engine=debug` [default: info].
    #[arg(long, value_name = "LEVEL", global = true)]
    pub log_level: Option<String>,

    #[command(flatten)]
    pub abuse: AbuseArgs,
    /// RFC 5780 NAT behaviour discovery (OTHER-ADDRESS, RESPONSE-ORIGIN, CHANGE-REQUEST);
    /// needs two listening IPs. Off by default (coturn: on with two IPs, --no-rfc5780).
    #[arg(long, global = true)]
    pub rfc5780: bool,

    /// Alternate UDP port for --rfc5780 [default: listening-port + 1]
    /// (coturn: --alt-listening-port).
    #[arg(long, value_name = "PORT", global = true)]
    pub alt_listening_port: Option<u64>,

    /// Log line format: `text` or `json` (one JSON object per line; schema in the README,
    /// "Logs") [default: text].
    #[arg(long, value_name = "FORMAT", global = true)]
    pub log_format: Option<String>,
    // --- operations: metrics, admin API, drain (README "Metrics, health, admin API and drain")
    /// Serve Prometheus /metrics, /live and /ready (coturn: --prometheus).
    #[arg(long, global = true)]
    pub prometheus: bool,

    /// Port of the metrics listener [default: 9641] (coturn: --prometheus-port).
    #[arg(long, value_name = "PORT", global = true)]
    pub prometheus_port: Option<u64>,

    /// Address of the metrics listener [default: 127.0.0.1] (coturn: --prometheus-address).
    #[arg(long, value_name = "IP", global = true)]
    pub prometheus_address: Option<String>,

    /// Per-user series in /metrics (one per user: high cardinality) (coturn:
    /// --prometheus-username-labels).
    #[arg(long, global = true)]
    pub prometheus_username_labels: bool,

    /// Admin HTTP/JSON API address, e.g. 127.0.0.1:9642 [default: off].
    #[arg(long, value_name = "IP:PORT", global = true)]
    pub admin_listen: Option<String>,

    /// Allow a non-loopback admin-listen address.
    #[arg(long, global = true)]
    pub admin_allow_remote: bool,

    /// Bearer token of the admin API (prefer --admin-token-file: argv is visible to all users).
    #[arg(long, value_name = "TOKEN", global = true)]
    pub admin_token: Option<String>,

    /// File holding the admin API bearer token (first line).
    #[arg(long, value_name = "FILE", global = true)]
    pub admin_token_file: Option<PathBuf>,

    /// Where new Allocates are redirected (300 Try Alternate) while draining; repeatable
    /// (coturn: --alternate-server).
    #[arg(long, value_name = "IP[:PORT]", global = true)]
    pub alternate_server: Vec<String>,

    /// Seconds a drain waits for allocations to end before exiting [default: 3600].
    #[arg(long, value_name = "SECONDS", global = true)]
    pub drain_timeout: Option<u64>,

    /// Serve the connectivity test page on the admin listener (/test).
    #[arg(long, global = true)]
    pub test_page: bool,
}

#[derive(Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Load and validate the configuration, print a summary (no secrets) and exit:
    /// 0 = valid, 2 = invalid.
    CheckConfig,
    /// Mint short-lived TURN REST API credentials and print them as an `iceServers` entry.
    /// The secret comes from --secret, else from the config's first static-auth-secret.
    Credentials(CredentialsArgs),
    /// Print the ferroturn TOML equivalent of a coturn turnserver.conf (FILE, or standard
    /// input); every line that has no effect is reported on stderr with its number and why.
    Convert(ConvertArgs),
    /// Send one STUN Binding request (turnutils_stunclient-like) and print the mapped address,
    /// RESPONSE-ORIGIN, OTHER-ADDRESS and the round-trip time. Exit 0 = answered,
    /// 1 = timeout or error response, 2 = bad target.
    StunProbe(StunProbeArgs),
}

#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct StunProbeArgs {
    /// Server: HOST, HOST:PORT, IP or [IPv6]:PORT (port 3478 if omitted).
    #[arg(value_name = "HOST[:PORT]")]
    pub target: String,
    /// Use TCP instead of UDP.
    #[arg(long)]
    pub tcp: bool,
    /// RFC 5780 CHANGE-REQUEST: ask for the response from the server's other IP.
    #[arg(long)]
    pub change_ip: bool,
    /// RFC 5780 CHANGE-REQUEST: ask for the response from the server's other port.
    #[arg(long)]
    pub change_port: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Initial retransmission timeout in ms (RFC 8489 §6.2.1 RTO).
    #[arg(long, value_name = "MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub rto: u64,
    /// Transmissions over UDP (RFC 8489 §6.2.1 Rc); the last is waited for 16 x RTO.
    #[arg(long, value_name = "N", default_value_t = 7,
          value_parser = clap::value_parser!(u32).range(1..=10))]
    pub transmissions: u32,
}

#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct ConvertArgs {
    /// coturn configuration file [default: standard input].
    pub file: Option<PathBuf>,
}

#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct CredentialsArgs {
    /// Shared secret (TURN REST API); default: the config's first static-auth-secret.
    #[arg(long)]
    pub secret: Option<String>,
    /// User id appended to the expiry timestamp (username = "expiry:user").
    #[arg(long, default_value = "user")]
    pub user: String,
    /// Lifetime of the credential in seconds.
    #[arg(long, default_value_t = 86400)]
    pub ttl: u64,
    /// TURN URI(s) to put in the iceServers entry; repeatable.
    #[arg(long = "uri", default_value = "turn:127.0.0.1:3478")]
    pub uris: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn coturn_style_flags_parse() {
        let cli = Cli::try_parse_from([
            "ferroturn",
            "-c",
            "/etc/t.toml",
            "-L",
            "10.0.0.1",
            "--listening-ip",
            "::1",
            "-p",
            "3479",
            "-X",
            "203.0.113.1/10.0.0.1",
            "-u",
            "a:b",
            "-u",
            "c:d",
            "--static-auth-secret",
            "s",
            "-vv",
            "--cert",
            "/etc/ferroturn/cert.pem",
            "--pkey",
            "/etc/ferroturn/key.pem",
            "--tls-listening-port",
            "443",
            "--no-udp",
            "--no-tcp",
        ])
        .unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("/etc/t.toml")));
        assert_eq!(cli.listening_ip, ["10.0.0.1", "::1"]);
        assert_eq!(cli.listening_port, Some(3479));
        assert_eq!(cli.external_ip, ["203.0.113.1/10.0.0.1"]);
        assert_eq!(cli.user, ["a:b", "c:d"]);
        assert_eq!(cli.verbose, 2);
        assert_eq!(cli.cert, Some(PathBuf::from("/etc/ferroturn/cert.pem")));
        assert_eq!(cli.pkey, Some(PathBuf::from("/etc/ferroturn/key.pem")));
        assert_eq!(cli.tls_listening_port, Some(443));
        assert!(cli.no_udp && cli.no_tcp && !cli.no_tls);
        assert_eq!(cli.command, None);
    }

    #[test]
    fn check_config_subcommand_takes_config_after_it() {
        let cli = Cli::try_parse_from(["ferroturn", "check-config", "--config", "f.toml"]).unwrap();
        assert_eq!(cli.command, Some(Command::CheckConfig));
        assert_eq!(cli.config, Some(PathBuf::from("f.toml")));
    }

    #[test]
    fn verbose_and_log_level_conflict() {
        assert!(Cli::try_parse_from(["ferroturn", "-v", "--log-level", "warn"]).is_err());
    }
}

/// Abuse limits (README "Abuse resistance"); 0 = unlimited for counts and rates.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct AbuseArgs {
    /// Live allocations per client IP (486) [default: 256].
    #[arg(long, value_name = "N", global = true)]
    pub max_allocations_per_ip: Option<u64>,
    /// Live allocations per client /24 (IPv4) or /64 (IPv6) (486) [default: 1024].
    #[arg(long, value_name = "N", global = true)]
    pub max_allocations_per_prefix: Option<u64>,
    /// Permissions per allocation (508) [default: 128].
    #[arg(long, value_name = "N", global = true)]
    pub max_permissions_per_allocation: Option<u64>,
    /// Channels per allocation (508) [default: 64].
    #[arg(long, value_name = "N", global = true)]
    pub max_channels_per_allocation: Option<u64>,
    /// RFC 6062 peer data connections per TCP allocation (Connect → 508; more peers
    /// connecting are closed) [default: 64].
    #[arg(long, value_name = "N", global = true)]
    pub max_peer_connections_per_allocation: Option<u64>,
    /// Relayed bytes per second per allocation, each direction; excess dropped
    /// [default: 0 = unlimited] (coturn: --max-bps).
    #[arg(long, value_name = "BYTES", global = true)]
    pub max_bps: Option<u64>,
    /// Relayed bytes per second for the whole server; excess dropped [default: 0 = unlimited]
    /// (coturn: --bps-capacity).
    #[arg(long, value_name = "BYTES", global = true)]
    pub bps_capacity: Option<u64>,
    /// STUN requests per second per source IP (IPv6: per /64); excess dropped [default: 500].
    #[arg(long, value_name = "N", global = true)]
    pub max_requests_per_ip: Option<u64>,
    /// 401/438 answers per second per source IP; excess not sent [default: 200].
    #[arg(long = "max-401-per-ip", value_name = "N", global = true)]
    pub max_401_per_ip: Option<u64>,
    /// Failed authentications per source and per user before back-off [default: 5].
    #[arg(long, value_name = "N", global = true)]
    pub auth_failures_before_backoff: Option<u64>,
    /// Longest failed-auth back-off, seconds (1 s, doubling) [default: 60].
    #[arg(long, value_name = "SECS", global = true)]
    pub auth_backoff_max: Option<u64>,
    /// Client TCP/TLS connections per source IP; excess closed at accept [default: 256].
    #[arg(long, value_name = "N", global = true)]
    pub max_tcp_connections_per_ip: Option<u64>,
    /// TCP/TLS connections without an allocation yet, whole server [default: 1024].
    #[arg(long, value_name = "N", global = true)]
    pub max_pending_tcp_connections: Option<u64>,
    /// Seconds a TCP/TLS connection has to finish its handshake and allocate [default: 10].
    #[arg(long, value_name = "SECS", global = true)]
    pub tcp_handshake_timeout: Option<u64>,
    /// Run as this user after the sockets are bound (coturn: --proc-user).
    #[arg(long, value_name = "USER", global = true)]
    pub proc_user: Option<String>,
    /// Run as this group after the sockets are bound (coturn: --proc-group).
    #[arg(long, value_name = "GROUP", global = true)]
    pub proc_group: Option<String>,
}
