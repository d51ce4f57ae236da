//! Operator configuration: a TOML file (`--config`) merged with the command line (which wins),
//! validated, and resolved into a [`Config`] that holds a ready [`EngineConfig`].
//!
//! Merge rules:
//! - A scalar given on the command line replaces the file's value.
//! - A list given on the command line (`--user`, `--listening-ip`, ...) replaces the file's
//!   list; it does not add to it. `--user` replaces both the file's `user` and `[users]`.
//! - Boolean flags (`--use-auth-secret`, `--allow-loopback-peers`, `--no-udp`, ...) can only
//!   switch on.
//!
//! Listeners, as coturn (RFC 8656 §3.1): on every `listening-ip`, UDP and TCP on
//! `listening-port` (3478) unless `no-udp` / `no-tcp`, and TLS on `tls-listening-port` (5349)
//! when both `cert` and `pkey` are given, unless `no-tls`. At least one listener is required.
//! `cert` / `pkey` are PEM files, relative paths being relative to the working directory (as
//! coturn), not to the config file. Here they are only checked to be readable; the runtime
//! parses them.
//!
//! Relay address resolution, per address family (IPv4, IPv6), in this order:
//! 1. `relay-ip` of that family, if given (at most one per family);
//! 2. else the first specific (non-wildcard) `listening-ip` of that family;
//! 3. else, when listening on the wildcard (0.0.0.0 / ::) of that family, or when an
//!    `external-ip` of that family is given: bind relay sockets to the wildcard and advertise
//!    the external IP;
//! 4. else that family has no relay (allocations for it get 440 from the engine).
//!
//! The advertised address (`external-ip`) defaults to the relay IP. A wildcard relay IP with
//! no external IP is an error: there would be nothing to put in XOR-RELAYED-ADDRESS. Unlike
//! coturn we do not guess "the first non-loopback address of the host": on multi-homed and
//! cloud hosts that guess is often the wrong one and fails silently.
//!
//! Every [`ConfigError`] is one line naming where the problem is (file, file:line:col, or
//! the command line), the key, and the problem.
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use tracing::level_filters::LevelFilter;

use super::cli::Cli;
use super::logging::LogFormat;
use crate::engine::nat_discovery::Rfc5780;
use crate::engine::peer_filter::{IpRange, PeerFilter, PeerFilterConfig};
use crate::engine::{EngineConfig, UserKey};

/// STUN/TURN port (RFC 8489 §18.6).
pub const DEFAULT_LISTENING_PORT: u16 = 3478;
/// TURN over TLS port (RFC 8656 §18, `turns:`).
pub const DEFAULT_TLS_LISTENING_PORT: u16 = 5349;
/// Socket buffer sizes, as coturn: bursts of relayed media need more than the OS default.
pub const DEFAULT_UDP_BUFFER: usize = 4 * 1024 * 1024;
/// Default log level / filter.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Clients refresh about a minute before expiry (RFC 8656 §7), so shorter lifetimes churn.
pub const MIN_ALLOCATE_LIFETIME: u64 = 60;
/// Cap on `relay-coalesce-us`: past 1 ms the added delay starts to matter to media.
const MAX_RELAY_COALESCE_US: u64 = 1000;
/// Sanity cap on `relay-threads`.
pub const MAX_RELAY_THREADS: u64 = 1024;

mod abuse;

// ---------------------------------------------------------------------------------------------
// The file
// ---------------------------------------------------------------------------------------------

/// The TOML file as written by the operator. Same names as the long command-line flags.
/// Numbers are read as `i64` so out-of-range values get our message, not serde's.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    #[serde(default, deserialize_with = "one_or_many")]
    listening_ip: Option<Vec<String>>,
    listening_port: Option<i64>,
    tls_listening_port: Option<i64>,
    cert: Option<String>,
    pkey: Option<String>,
    no_udp: Option<bool>,
    no_tcp: Option<bool>,
    no_tls: Option<bool>,
    #[serde(default, deserialize_with = "one_or_many")]
    relay_ip: Option<Vec<String>>,
    #[serde(default, deserialize_with = "one_or_many")]
    external_ip: Option<Vec<String>>,
    min_port: Option<i64>,
    max_port: Option<i64>,
    realm: Option<String>,
    /// `"name:pass"` entries.
    #[serde(default, deserialize_with = "one_or_many")]
    user: Option<Vec<String>>,
    /// `[users]` table: `name = "pass"`.
    users: Option<BTreeMap<String, String>>,
    use_auth_secret: Option<bool>,
    #[serde(default, deserialize_with = "one_or_many")]
    static_auth_secret: Option<Vec<String>>,
    allow_loopback_peers: Option<bool>,
    legacy_channel_numbers: Option<bool>,
    #[serde(default, deserialize_with = "one_or_many")]
    allowed_peer_ip: Option<Vec<String>>,
    #[serde(default, deserialize_with = "one_or_many")]
    denied_peer_ip: Option<Vec<String>>,
    max_allocate_lifetime: Option<i64>,
    default_allocate_lifetime: Option<i64>,
    stale_nonce: Option<i64>,
    user_quota: Option<i64>,
    total_quota: Option<i64>,
    relay_threads: Option<i64>,
    software: Option<String>,
    log_file: Option<String>,
    log_level: Option<String>,
    log_format: Option<String>,
    rfc5780: Option<bool>,
    alt_listening_port: Option<i64>,
    udp_recv_buffer: Option<i64>,
    udp_send_buffer: Option<i64>,
    udp_gso: Option<bool>,
    relay_coalesce_us: Option<i64>,
    // Abuse limits (config/abuse.rs).
    max_allocations_per_ip: Option<i64>,
    max_allocations_per_prefix: Option<i64>,
    max_permissions_per_allocation: Option<i64>,
    max_channels_per_allocation: Option<i64>,
    max_peer_connections_per_allocation: Option<i64>,
    max_bps: Option<i64>,
    bps_capacity: Option<i64>,
    max_requests_per_ip: Option<i64>,
    #[serde(rename = "max-401-per-ip")]
    max_401_per_ip: Option<i64>,
    auth_failures_before_backoff: Option<i64>,
    auth_backoff_max: Option<i64>,
    max_tcp_connections_per_ip: Option<i64>,
    max_pending_tcp_connections: Option<i64>,
    tcp_handshake_timeout: Option<i64>,
    proc_user: Option<String>,
    proc_group: Option<String>,
    // --- operations (metrics, admin API, drain; see `resolve_ops`)
    prometheus: Option<bool>,
    prometheus_port: Option<i64>,
    prometheus_address: Option<String>,
    prometheus_username_labels: Option<bool>,
    admin_listen: Option<String>,
    admin_allow_remote: Option<bool>,
    admin_token: Option<String>,
    admin_token_file: Option<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    alternate_server: Option<Vec<String>>,
    drain_timeout: Option<i64>,
    test_page: Option<bool>,
    #[serde(default, deserialize_with = "one_or_many")]
    test_page_urls: Option<Vec<String>>,
}

/// `key = "x"` or `key = ["x", "y"]`.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or a list of strings")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(vec![s.to_owned()])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(s) = seq.next_element::<String>()? {
                out.push(s);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V).map(Some)
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Where a configuration error is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The config file (value errors found after parsing).
    File(PathBuf),
    /// A position in the config file (TOML syntax, type and unknown-key errors).
    FileAt {
        path: PathBuf,
        line: usize,
        column: usize,
    },
    /// A command-line option (or a default, when there is no file).
    CommandLine,
}

/// A configuration problem. `Display` is one line, e.g.
/// `turnserver.toml: key 'min-port': 70000 is not a port (1-65535)` or
/// `command line: option '--min-port': 70000 is not a port (1-65535)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub origin: Origin,
    /// The key (kebab-case, as in the file) the problem is about, if any.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::File(p) => write!(f, "{}: ", p.display())?,
            Origin::FileAt { path, line, column } => {
                write!(f, "{}:{line}:{column}: ", path.display())?
            }
            Origin::CommandLine => f.write_str("command line: ")?,
        }
        match (&self.key, &self.origin) {
            (Some(k), Origin::CommandLine) => write!(f, "option '--{k}': ")?,
            (Some(k), _) => write!(f, "key '{k}': ")?,
            (None, _) => {}
        }
        // One line, whatever the message came from.
        f.write_str(&self.message.replace(['\n', '\r'], " "))
    }
}

impl std::error::Error for ConfigError {}

/// Where a merged value came from; decides which origin an error names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Src {
    File,
    Cli,
    Default,
}

struct Ctx<'a> {
    file: Option<&'a Path>,
}

impl Ctx<'_> {
    fn origin(&self, src: Src) -> Origin {
        match (src, self.file) {
            (Src::Cli, _) | (_, None) => Origin::CommandLine,
            (_, Some(p)) => Origin::File(p.to_path_buf()),
        }
    }
    fn err(&self, src: Src, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            origin: self.origin(src),
            key: Some(key.to_owned()),
            message: message.into(),
        }
    }
    fn general(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            origin: self.origin(Src::File),
            key: None,
            message: message.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The result
// ---------------------------------------------------------------------------------------------

/// The resolved, validated configuration.
#[derive(Clone)]
pub struct Config {
    /// The config file, if one was given.
    pub source: Option<PathBuf>,
    /// UDP listening sockets: every listening IP × the listening port; empty with `no-udp`.
    pub listen: Vec<SocketAddr>,
    /// TCP listening sockets (RFC 8656 §3.1): the same addresses as UDP; empty with `no-tcp`.
    pub tcp_listen: Vec<SocketAddr>,
    /// TLS listening sockets (`turns:`): every listening IP × `tls-listening-port`; empty
    /// unless `cert` and `pkey` are set (and not `no-tls`).
    pub tls_listen: Vec<SocketAddr>,
    /// Certificate chain and private key (PEM) for the TLS listeners; `Some` exactly when
    /// `tls_listen` is not empty. Checked readable at load time, not parsed.
    pub tls: Option<TlsFiles>,
    /// Everything the engine needs, peer filter included.
    pub engine: EngineConfig,
    /// Relay worker (shard) threads.
    pub relay_threads: usize,
    /// None = stdout.
    pub log_file: Option<PathBuf>,
    /// A level (`info`) or a tracing filter (`info,ferroturn::engine=debug`).
    pub log_level: String,
    /// `log-format`: text (default) or JSON lines (README "Logs").
    pub log_format: LogFormat,
    /// SO_RCVBUF / SO_SNDBUF for every UDP socket, bytes.
    pub udp_recv_buffer: usize,
    pub udp_send_buffer: usize,
    /// `udp-gso`: send runs of equal-size datagrams for one destination as one GSO message.
    pub udp_gso: bool,
    /// `relay-coalesce-us`: under dense traffic a shard polls at most once per this window, so
    /// one wake-up handles several datagrams (zero = off, the default).
    pub relay_coalesce: Duration,
    /// `no-udp`: no UDP listeners (`listen` is empty).
    pub no_udp: bool,
    /// `proc-user` / `proc-group`: drop privileges to these after binding.
    pub proc_user: Option<String>,
    pub proc_group: Option<String>,
    /// Metrics / admin listeners, drain timeout, test page.
    pub ops: super::admin::OpsConfig,
    /// `no-tls` (for the summary: why TLS is off).
    no_tls: bool,
    /// Peer rules as text, for [`Config::summary`] (the filter itself is opaque).
    peer_rules: PeerRulesText,
}

/// PEM files for TLS (paths as given: relative ones are relative to the working directory);
/// re-read by the runtime when they change on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone)]
struct PeerRulesText {
    allow_loopback: bool,
    allowed: Vec<String>,
    denied: Vec<String>,
}

/// Debug without secrets (EngineConfig's derived Debug would print passwords).
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("source", &self.source)
            .field("listen", &self.listen)
            .field("tcp_listen", &self.tcp_listen)
            .field("tls_listen", &self.tls_listen)
            .field("tls", &self.tls)
            .field("realm", &self.engine.realm)
            .field("users", &self.engine.users.len())
            .field("auth_secrets", &self.engine.auth_secrets.len())
            .field("relay_threads", &self.relay_threads)
            .field("log_file", &self.log_file)
            .field("log_level", &self.log_level)
            .field("log_format", &self.log_format)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Keys that differ between the running configuration and `new` but only take effect after
    /// a restart (sockets, threads, log sink, privileges, RFC 5780): SIGHUP reloads the rest and
    /// names these in a warning. Listed in turnserver.toml.example ("Reload").
    pub fn restart_required(&self, new: &Config) -> Vec<&'static str> {
        let admin = |c: &Config| c.ops.admin.as_ref().map(|a| (a.listen, a.token.clone()));
        let checks = [
            (
                "listening-ip / listening-port / no-udp",
                self.listen != new.listen,
            ),
            (
                "listening-ip / listening-port / no-tcp",
                self.tcp_listen != new.tcp_listen,
            ),
            (
                "tls-listening-port / no-tls",
                self.tls_listen != new.tls_listen,
            ),
            (
                "cert / pkey (paths; the files themselves reload)",
                self.tls != new.tls,
            ),
            ("relay-threads", self.relay_threads != new.relay_threads),
            (
                "min-port / max-port",
                (self.engine.min_port, self.engine.max_port)
                    != (new.engine.min_port, new.engine.max_port),
            ),
            ("log-file", self.log_file != new.log_file),
            ("log-format", self.log_format != new.log_format),
            (
                "udp-recv-buffer / udp-send-buffer",
                (self.udp_recv_buffer, self.udp_send_buffer)
                    != (new.udp_recv_buffer, new.udp_send_buffer),
            ),
            ("udp-gso", self.udp_gso != new.udp_gso),
            (
                "proc-user / proc-group",
                (&self.proc_user, &self.proc_group) != (&new.proc_user, &new.proc_group),
            ),
            (
                "rfc5780 / alt-listening-port",
                self.engine.rfc5780 != new.engine.rfc5780,
            ),
            (
                "prometheus / prometheus-address / prometheus-port",
                self.ops.prometheus != new.ops.prometheus,
            ),
            ("admin-listen / admin-token", admin(self) != admin(new)),
            (
                "drain-timeout",
                self.ops.drain_timeout != new.ops.drain_timeout,
            ),
            (
                "test-page / test-page-urls",
                (self.ops.test_page, &self.ops.test_page_urls)
                    != (new.ops.test_page, &new.ops.test_page_urls),
            ),
        ];
        checks
            .into_iter()
            .filter_map(|(k, changed)| changed.then_some(k))
            .collect()
    }

    /// Multi-line human summary, for `check-config` and the startup log. Never prints a
    /// password, HA1 key or REST secret.
    pub fn summary(&self) -> String {
        use fmt::Write;
        let e = &self.engine;
        let mut s = String::new();
        let src = match &self.source {
            Some(p) => p.display().to_string(),
            None => "command line and defaults".into(),
        };
        let join = |v: &[String]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(", ")
            }
        };
        let relay = |ip: Option<IpAddr>, ext: Option<IpAddr>| match (ip, ext) {
            (None, _) => "disabled".to_owned(),
            (Some(r), Some(x)) if r == x => r.to_string(),
            (Some(r), Some(x)) => format!("bind {r}, advertise {x}"),
            (Some(r), None) => r.to_string(),
        };
        let secs = |d: Duration| format!("{} s", d.as_secs());
        let quota = |q: u32| {
            if q == 0 {
                "unlimited".to_owned()
            } else {
                q.to_string()
            }
        };
        let mut users: Vec<String> = e
            .users
            .iter()
            .map(|(name, key)| match key {
                UserKey::Password(_) => format!("{name}:********"),
                UserKey::Ha1(_) => format!("{name}:<HA1 key>"),
            })
            .collect();
        users.sort();
        let listeners = |v: &[SocketAddr], off: &str| {
            if v.is_empty() {
                off.to_owned()
            } else {
                v.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let tls = match &self.tls {
            Some(t) => format!("cert {}, key {}", t.cert.display(), t.key.display()),
            None if self.no_tls => "off (no-tls)".to_owned(),
            None => "off (no cert/pkey)".to_owned(),
        };
        let _ = writeln!(s, "configuration: {src}");
        let _ = writeln!(
            s,
            "  listen (udp):      {}",
            listeners(&self.listen, "off (no-udp)")
        );
        let _ = writeln!(
            s,
            "  listen (tcp):      {}",
            listeners(&self.tcp_listen, "off (no-tcp)")
        );
        let _ = writeln!(
            s,
            "  listen (tls):      {}",
            listeners(&self.tls_listen, "off")
        );
        let _ = writeln!(s, "  TLS:               {tls}");
        if let Some(r) = &e.rfc5780 {
            let _ = writeln!(
                s,
                "  RFC 5780:          {} and {}, ports {} and {}",
                r.ips[0], r.ips[1], r.ports[0], r.ports[1]
            );
        }
        let _ = writeln!(
            s,
            "  relay IPv4:        {}",
            relay(e.relay_ip_v4, e.external_ip_v4)
        );
        let _ = writeln!(
            s,
            "  relay IPv6:        {}",
            relay(e.relay_ip_v6, e.external_ip_v6)
        );
        let _ = writeln!(s, "  relay ports:       {}-{}", e.min_port, e.max_port);
        let _ = writeln!(s, "  realm:             {}", e.realm);
        let _ = writeln!(s, "  users:             {}", join(&users));
        let _ = writeln!(
            s,
            "  REST API secrets:  {}",
            match e.auth_secrets.len() {
                0 => "disabled".to_owned(),
                n => format!("{n} (hidden)"),
            }
        );
        let p = &self.peer_rules;
        let _ = writeln!(
            s,
            "  loopback peers:    {}",
            if p.allow_loopback {
                "ALLOWED"
            } else {
                "denied"
            }
        );
        let _ = writeln!(s, "  allowed peers:     {}", join(&p.allowed));
        let _ = writeln!(s, "  denied peers:      {}", join(&p.denied));
        let _ = writeln!(
            s,
            "  lifetimes:         default {}, max {}, nonce {}",
            secs(e.default_lifetime),
            secs(e.max_lifetime),
            secs(e.nonce_lifetime)
        );
        let _ = writeln!(
            s,
            "  quotas:            per user {}, total {}",
            quota(e.user_quota),
            quota(e.total_quota)
        );
        let _ = writeln!(s, "  abuse limits:      {}", abuse::summary(&e.limits));
        let _ = writeln!(s, "  relay threads:     {}", self.relay_threads);
        let _ = writeln!(
            s,
            "  SOFTWARE:          {}",
            e.software.as_deref().unwrap_or("not sent")
        );
        let _ = writeln!(
            s,
            "  log:               {} ({}) to {}",
            self.log_level,
            self.log_format.as_str(),
            self.log_file
                .as_ref()
                .map_or("stdout".to_owned(), |p| p.display().to_string())
        );
        let _ = write!(
            s,
            "  UDP buffers:       recv {} B, send {} B, GSO {}",
            self.udp_recv_buffer,
            self.udp_send_buffer,
            if self.udp_gso {
                "on where the kernel has it"
            } else {
                "off"
            }
        );
        if !self.relay_coalesce.is_zero() {
            let _ = write!(
                s,
                "\n  relay coalescing:  {} µs window under dense traffic",
                self.relay_coalesce.as_micros()
            );
        }
        let o = &self.ops;
        let off = || "off".to_owned();
        let _ = write!(
            s,
            "\n  metrics:           {}\n  admin API:         {}{}\n  drain:             \
             timeout {}, alternate {}",
            o.prometheus.map_or_else(off, |a| a.to_string()),
            o.admin
                .as_ref()
                .map_or_else(off, |a| format!("{} (token hidden)", a.listen)),
            if o.test_page { ", test page /test" } else { "" },
            secs(o.drain_timeout),
            if e.alternate_servers.is_empty() {
                "none (508)".to_owned()
            } else {
                e.alternate_servers
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        s
    }
}

/// `ferroturn check-config`: load, validate, print the summary. 0 = valid, 2 = invalid.
pub fn check_config(cli: &Cli) -> ExitCode {
    match load(cli) {
        Ok(cfg) => {
            println!("{}", cfg.summary());
            println!("configuration OK");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferroturn: {e}");
            ExitCode::from(2)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// Read the file (if `--config` was given), merge the command line over it, validate.
pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
    if let Some(path) = &cli.coturn_config {
        return load_coturn(cli, path);
    }
    match &cli.config {
        Some(path) => {
            let text = fs::read_to_string(path).map_err(|e| ConfigError {
                origin: Origin::File(path.clone()),
                key: None,
                message: format!("cannot read the config file: {e}"),
            })?;
            load_from(cli, Some((path, &text)))
        }
        None => load_from(cli, None),
    }
}

/// `--coturn-config`: convert (reporting ignored lines on stderr), then load the TOML. Errors
/// name the coturn file and the key; positions in the generated TOML would mean nothing.
fn load_coturn(cli: &Cli, path: &Path) -> Result<Config, ConfigError> {
    let in_file = |key: Option<String>, message: String| ConfigError {
        origin: Origin::File(path.to_path_buf()),
        key,
        message,
    };
    if cli.config.is_some() {
        return Err(in_file(
            None,
            "give either --config or --coturn-config, not both".into(),
        ));
    }
    let text = fs::read_to_string(path)
        .map_err(|e| in_file(None, format!("cannot read the coturn config file: {e}")))?;
    let conv = super::coturn::convert(&text).map_err(|e| in_file(None, e.to_string()))?;
    for i in &conv.ignored {
        eprintln!("ferroturn: {}: {i}", path.display());
    }
    load_from(cli, Some((path, &conv.toml))).map_err(|mut e| {
        if let Origin::FileAt { path, .. } = e.origin {
            e.origin = Origin::File(path);
        }
        e
    })
}

/// [`load`] with the file's text already in hand (`path` is only used in messages).
fn load_from(cli: &Cli, file: Option<(&Path, &str)>) -> Result<Config, ConfigError> {
    let (path, fc) = match file {
        Some((path, text)) => (Some(path), parse_file(path, text)?),
        None => (None, FileConfig::default()),
    };
    resolve(cli, fc, &Ctx { file: path })
}

fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| toml_error(path, text, &e))
}

/// Turn a toml/serde error into one line with line:col and, where we can tell, the key.
fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let raw = e.message().trim();
    let (mut key, origin) = match e.span() {
        Some(span) => {
            let (line, column) = line_col(text, span.start);
            let origin = Origin::FileAt {
                path: path.to_path_buf(),
                line,
                column,
            };
            (key_at(text, span.start), origin)
        }
        None => (None, Origin::File(path.to_path_buf())),
    };
    let message = if let Some(rest) = raw.strip_prefix("unknown field `") {
        // serde: "unknown field `x`, expected one of `a`, `b`, ..." -- too long for a line.
        key = None;
        let name = rest.split('`').next().unwrap_or_default();
        let known: Vec<&str> = rest.split('`').skip(2).step_by(2).collect();
        match closest(name, &known) {
            Some(k) => format!("unknown key '{name}' (did you mean '{k}'?)"),
            None => format!("unknown key '{name}'"),
        }
    } else {
        raw.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ")
    };
    ConfigError {
        origin,
        key,
        message,
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The key whose value contains `offset`: the nearest `key =` line at or above it, qualified
/// with its `[table]` if any. A heuristic for messages only.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = &text[..offset.min(text.len())];
    let line_end = text[before.len()..]
        .find('\n')
        .map_or(text.len(), |i| before.len() + i);
    let mut lines = text[..line_end].lines().rev();
    let key = lines.by_ref().find_map(|l| {
        let l = l.trim();
        if l.starts_with('#') || l.starts_with('[') {
            return None;
        }
        let (k, _) = l.split_once('=')?;
        let k = k.trim().trim_matches('"');
        let bare = !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        bare.then(|| k.to_owned())
    })?;
    let table = lines.find_map(|l| {
        let l = l.trim();
        l.strip_prefix('[')
            .and_then(|t| t.split(']').next())
            .map(|t| t.trim().to_owned())
    });
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key,
    })
}

/// The known key closest to a misspelt one, if it is close.
fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    fn dist(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                let sub = prev[j] + usize::from(ca != *cb);
                cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
            }
            prev = cur;
        }
        prev[b.len()]
    }
    let name = name.replace('_', "-").to_ascii_lowercase();
    known
        .iter()
        .map(|k| (dist(&name, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

fn pick<T>(cli: Option<T>, file: Option<T>) -> Option<(T, Src)> {
    match (cli, file) {
        (Some(v), _) => Some((v, Src::Cli)),
        (None, Some(v)) => Some((v, Src::File)),
        (None, None) => None,
    }
}

fn pick_num(cli: Option<u64>, file: Option<i64>) -> Option<(i128, Src)> {
    pick(cli.map(i128::from), file.map(i128::from))
}

fn pick_list(cli: &[String], file: Option<Vec<String>>) -> (Vec<String>, Src) {
    if !cli.is_empty() {
        (cli.to_vec(), Src::Cli)
    } else if let Some(v) = file {
        (v, Src::File)
    } else {
        (Vec::new(), Src::Default)
    }
}

/// A `--no-*` style switch: the command line can only switch it on.
fn flag(cli: bool, file: Option<bool>) -> (bool, Src) {
    match (cli, file) {
        (true, _) => (true, Src::Cli),
        (false, Some(b)) => (b, Src::File),
        (false, None) => (false, Src::Default),
    }
}

/// A PEM file path (`cert`, `pkey`); empty is an error.
fn pem_path(
    ctx: &Ctx,
    key: &str,
    cli: Option<&PathBuf>,
    file: Option<String>,
) -> Result<Option<(PathBuf, Src)>, ConfigError> {
    match pick(cli.cloned(), file.map(PathBuf::from)) {
        Some((p, src)) if p.as_os_str().is_empty() => {
            Err(ctx.err(src, key, "must not be empty (a PEM file)"))
        }
        v => Ok(v),
    }
}

/// The file exists, is readable and is not a directory (its content is the runtime's
/// business). Relative paths are relative to the working directory, as in coturn.
fn check_readable(ctx: &Ctx, src: Src, key: &str, path: &Path) -> Result<(), ConfigError> {
    let problem = match fs::File::open(path) {
        Err(e) => Some(io_message(&e)),
        Ok(f) => match f.metadata() {
            Ok(m) if m.is_dir() => Some("is a directory".to_owned()),
            Ok(_) => None,
            Err(e) => Some(io_message(&e)),
        },
    };
    let Some(problem) = problem else {
        return Ok(());
    };
    let shown = match std::env::current_dir() {
        Ok(dir) if path.is_relative() => format!(
            "{} (relative to the working directory {})",
            path.display(),
            dir.display()
        ),
        _ => path.display().to_string(),
    };
    Err(ctx.err(src, key, format!("cannot read {shown}: {problem}")))
}

/// `No such file or directory`, without std's ` (os error 2)`.
fn io_message(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rsplit_once(" (os error ") {
        Some((msg, code)) if code.ends_with(')') => msg.to_owned(),
        _ => s,
    }
}

fn port(
    ctx: &Ctx,
    key: &str,
    v: Option<(i128, Src)>,
    default: u16,
) -> Result<(u16, Src), ConfigError> {
    match v {
        None => Ok((default, Src::Default)),
        Some((n, src)) => match u16::try_from(n) {
            Ok(p) if p != 0 => Ok((p, src)),
            _ => Err(ctx.err(src, key, format!("{n} is not a port (1-65535)"))),
        },
    }
}

/// An integer in `lo..=hi`, or `default`.
fn int(
    ctx: &Ctx,
    key: &str,
    v: Option<(i128, Src)>,
    default: u64,
    (lo, hi): (u64, u64),
) -> Result<(u64, Src), ConfigError> {
    match v {
        None => Ok((default, Src::Default)),
        Some((n, src)) if n >= i128::from(lo) && n <= i128::from(hi) => Ok((n as u64, src)),
        Some((n, src)) if n < i128::from(lo) && lo == 1 => {
            Err(ctx.err(src, key, format!("must be at least 1, got {n}")))
        }
        Some((n, src)) => Err(ctx.err(src, key, format!("{n} is out of range ({lo}-{hi})"))),
    }
}

fn parse_ip(ctx: &Ctx, src: Src, key: &str, s: &str) -> Result<IpAddr, ConfigError> {
    let t = s.trim();
    let t = t
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(t);
    t.parse()
        .map_err(|_| ctx.err(src, key, format!("{s:?} is not an IP address")))
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// At most one address per family.
fn one_per_family(
    ctx: &Ctx,
    src: Src,
    key: &str,
    ips: &[IpAddr],
) -> Result<(Option<IpAddr>, Option<IpAddr>), ConfigError> {
    let mut v4 = None;
    let mut v6 = None;
    for &ip in ips {
        let slot = if ip.is_ipv4() { &mut v4 } else { &mut v6 };
        match *slot {
            Some(prev) if prev != ip => {
                return Err(ctx.err(
                    src,
                    key,
                    format!(
                        "more than one {} address ({prev}, {ip}); give at most one per \
                         address family",
                        family(ip)
                    ),
                ))
            }
            _ => *slot = Some(ip),
        }
    }
    Ok((v4, v6))
}

/// Static users: `name:pass` entries (`key` = `user`) or `[users]` table entries.
fn parse_user(
    ctx: &Ctx,
    src: Src,
    key: &str,
    name: &str,
    pass: &str,
) -> Result<(String, UserKey), ConfigError> {
    if name.is_empty() {
        return Err(ctx.err(src, key, "an entry has an empty user name"));
    }
    // RFC 8489 §14.3: USERNAME is less than 513 bytes.
    if name.len() > 512 {
        return Err(ctx.err(
            src,
            key,
            format!("user name {name:?} is longer than 512 bytes"),
        ));
    }
    if pass.is_empty() {
        return Err(ctx.err(src, key, format!("user '{name}' has an empty password")));
    }
    let user_key = match pass.strip_prefix("0x") {
        // coturn: a password of the form 0x<32 hex> is the precomputed HA1 key.
        Some(hex) => UserKey::Ha1(parse_ha1(hex).ok_or_else(|| {
            ctx.err(
                src,
                key,
                format!(
                    "HA1 key of user '{name}' must be 0x followed by 32 hex digits \
                     (MD5 of name:realm:password)"
                ),
            )
        })?),
        None => UserKey::Password(pass.to_owned()),
    };
    Ok((name.to_owned(), user_key))
}

/// 32 hex digits → 16 bytes.
fn parse_ha1(hex: &str) -> Option<[u8; 16]> {
    let b = hex.as_bytes();
    if b.len() != 32 || !b.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in b.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// A level, or a comma-separated tracing filter whose directives each end in `=level`.
fn valid_log_level(s: &str) -> bool {
    !s.is_empty()
        && s.split(',').all(|directive| {
            let level = match directive.rsplit_once('=') {
                Some((target, _)) if target.trim().is_empty() => return false,
                Some((_, level)) => level,
                None => directive,
            };
            let level = level.trim();
            !level.is_empty() && LevelFilter::from_str(level).is_ok()
        })
}

/// `rfc5780` / `alt-listening-port`: RFC 5780 needs an alternate IP and an alternate port
/// (§4.1), so the first two specific listening IPs of one family, each with UDP listeners on
/// `listening-port` and `alt-listening-port` (default: listening-port + 1, as coturn).
#[allow(clippy::too_many_arguments)]
fn resolve_rfc5780(
    ctx: &Ctx,
    (cli_on, file_on): (bool, Option<bool>),
    alt: Option<(i128, Src)>,
    listen_ips: &[IpAddr],
    (listening_port, no_udp): (u16, bool),
    tls_port: Option<u16>,
    own_ports: &mut Vec<(u16, Src, &'static str)>,
    listen: &mut Vec<SocketAddr>,
) -> Result<Option<Rfc5780>, ConfigError> {
    let (on, src) = flag(cli_on, file_on);
    if !on {
        return Ok(None);
    }
    if no_udp {
        return Err(ctx.err(src, "rfc5780", "NAT discovery needs UDP, but no-udp is set"));
    }
    let specific: Vec<IpAddr> = listen_ips
        .iter()
        .copied()
        .filter(|ip| !ip.is_unspecified())
        .collect();
    let two: Vec<IpAddr> = match specific.first() {
        Some(first) => specific
            .iter()
            .copied()
            .filter(|ip| ip.is_ipv4() == first.is_ipv4())
            .take(2)
            .collect(),
        None => Vec::new(),
    };
    let [a, b] = two[..] else {
        return Err(ctx.err(
            src,
            "rfc5780",
            "needs two specific listening-ip addresses of one family (RFC 5780 §4.1: the \
             server answers from an alternate IP)",
        ));
    };
    let default_alt = listening_port.checked_add(1).ok_or_else(|| {
        ctx.err(
            src,
            "alt-listening-port",
            "listening-port is 65535; set alt-listening-port",
        )
    })?;
    let (alt, alt_src) = port(ctx, "alt-listening-port", alt, default_alt)?;
    if alt == listening_port || Some(alt) == tls_port {
        return Err(ctx.err(
            alt_src,
            "alt-listening-port",
            format!("{alt} must differ from listening-port and tls-listening-port"),
        ));
    }
    own_ports.push((alt, alt_src, "alt-listening-port"));
    listen.push(SocketAddr::new(a, alt));
    listen.push(SocketAddr::new(b, alt));
    Ok(Some(Rfc5780 {
        ips: [a, b],
        ports: [listening_port, alt],
    }))
}

fn resolve(cli: &Cli, fc: FileConfig, ctx: &Ctx) -> Result<Config, ConfigError> {
    let abuse_file = abuse::AbuseFile::from(&fc);
    // --- listening sockets -----------------------------------------------------------------
    let (list, listen_src) = pick_list(&cli.listening_ip, fc.listening_ip);
    let mut listen_ips: Vec<IpAddr> = Vec::new();
    for s in &list {
        let ip = parse_ip(ctx, listen_src, "listening-ip", s)?;
        if !listen_ips.contains(&ip) {
            listen_ips.push(ip);
        }
    }
    if listen_ips.is_empty() {
        if listen_src != Src::Default {
            return Err(ctx.err(listen_src, "listening-ip", "the list is empty"));
        }
        listen_ips.push(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }
    for w in listen_ips.iter().filter(|ip| ip.is_unspecified()) {
        if let Some(s) = listen_ips
            .iter()
            .find(|ip| !ip.is_unspecified() && ip.is_ipv4() == w.is_ipv4())
        {
            return Err(ctx.err(
                listen_src,
                "listening-ip",
                format!("{w} already covers {s}; list either the wildcard or specific addresses"),
            ));
        }
    }
    let (listening_port, lport_src) = port(
        ctx,
        "listening-port",
        pick_num(cli.listening_port, fc.listening_port),
        DEFAULT_LISTENING_PORT,
    )?;
    let (tls_listening_port, tls_port_src) = port(
        ctx,
        "tls-listening-port",
        pick_num(cli.tls_listening_port, fc.tls_listening_port),
        DEFAULT_TLS_LISTENING_PORT,
    )?;

    // --- transports ------------------------------------------------------------------------
    let (no_udp, no_udp_src) = flag(cli.no_udp, fc.no_udp);
    let (no_tcp, no_tcp_src) = flag(cli.no_tcp, fc.no_tcp);
    let (no_tls, no_tls_src) = flag(cli.no_tls, fc.no_tls);
    let cert = pem_path(ctx, "cert", cli.cert.as_ref(), fc.cert)?;
    let pkey = pem_path(ctx, "pkey", cli.pkey.as_ref(), fc.pkey)?;
    let both = "TLS needs both the certificate chain and its private key";
    let tls = match (cert, pkey) {
        (None, None) => None,
        (Some((_, src)), None) => {
            return Err(ctx.err(src, "pkey", format!("is not set but cert is; {both}")))
        }
        (None, Some((_, src))) => {
            return Err(ctx.err(src, "cert", format!("is not set but pkey is; {both}")))
        }
        // As coturn: no-tls ignores the certificate (the files are not even read).
        (Some(_), Some(_)) if no_tls => None,
        (Some((cert, cert_src)), Some((key, key_src))) => {
            check_readable(ctx, cert_src, "cert", &cert)?;
            check_readable(ctx, key_src, "pkey", &key)?;
            Some(TlsFiles { cert, key })
        }
    };
    if no_udp && no_tcp && tls.is_none() {
        let src = if [no_udp_src, no_tcp_src, no_tls_src].contains(&Src::Cli) {
            Src::Cli
        } else {
            Src::File
        };
        return Err(ConfigError {
            origin: ctx.origin(src),
            key: None,
            message: "nothing to listen on: no-udp, no-tcp and no TLS".into(),
        });
    }
    // Ports that are actually listened on; only those are checked against each other and
    // against the relay range.
    let mut own_ports: Vec<(u16, Src, &str)> = Vec::new();
    if !no_udp || !no_tcp {
        own_ports.push((listening_port, lport_src, "listening-port"));
    }
    if tls.is_some() {
        if !own_ports.is_empty() && tls_listening_port == listening_port {
            return Err(if tls_port_src != Src::Default {
                ctx.err(
                    tls_port_src,
                    "tls-listening-port",
                    format!("must differ from listening-port ({listening_port})"),
                )
            } else {
                ctx.err(
                    lport_src,
                    "listening-port",
                    format!("must differ from tls-listening-port ({tls_listening_port})"),
                )
            });
        }
        own_ports.push((tls_listening_port, tls_port_src, "tls-listening-port"));
    }
    let on_every_ip = |off: bool, port: u16| -> Vec<SocketAddr> {
        if off {
            return Vec::new();
        }
        listen_ips
            .iter()
            .map(|&ip| SocketAddr::new(ip, port))
            .collect()
    };
    let mut listen = on_every_ip(no_udp, listening_port);
    let tcp_listen = on_every_ip(no_tcp, listening_port);
    let tls_listen = on_every_ip(tls.is_none(), tls_listening_port);
    let rfc5780 = resolve_rfc5780(
        ctx,
        (cli.rfc5780, fc.rfc5780),
        pick_num(cli.alt_listening_port, fc.alt_listening_port),
        &listen_ips,
        (listening_port, no_udp),
        tls.is_some().then_some(tls_listening_port),
        &mut own_ports,
        &mut listen,
    )?;

    // --- relay and external addresses ------------------------------------------------------
    let (list, relay_src) = pick_list(&cli.relay_ip, fc.relay_ip);
    let relay_ips = list
        .iter()
        .map(|s| parse_ip(ctx, relay_src, "relay-ip", s))
        .collect::<Result<Vec<_>, _>>()?;
    let (relay_v4, relay_v6) = one_per_family(ctx, relay_src, "relay-ip", &relay_ips)?;

    let (list, ext_src) = pick_list(&cli.external_ip, fc.external_ip);
    let mut ext_public = Vec::new();
    let mut ext_private = Vec::new();
    for s in &list {
        // coturn: PUBLIC or PUBLIC/PRIVATE; we advertise PUBLIC and bind to relay-ip.
        let (public, private) = match s.split_once('/') {
            Some((p, q)) => (p, Some(q)),
            None => (s.as_str(), None),
        };
        let public = parse_ip(ctx, ext_src, "external-ip", public)?;
        if public.is_unspecified() {
            return Err(ctx.err(
                ext_src,
                "external-ip",
                format!("{public} cannot be advertised to clients"),
            ));
        }
        if let Some(q) = private {
            let private = parse_ip(ctx, ext_src, "external-ip", q)?;
            if private.is_ipv4() != public.is_ipv4() {
                return Err(ctx.err(
                    ext_src,
                    "external-ip",
                    format!("{s:?} mixes IPv4 and IPv6 (PUBLIC/PRIVATE must be one family)"),
                ));
            }
            ext_private.push(private);
        }
        ext_public.push(public);
    }
    let (ext_v4, ext_v6) = one_per_family(ctx, ext_src, "external-ip", &ext_public)?;

    let resolve_family = |explicit: Option<IpAddr>,
                          external: Option<IpAddr>,
                          wildcard: IpAddr|
     -> Result<(Option<IpAddr>, Option<IpAddr>), ConfigError> {
        let mine: Vec<IpAddr> = listen_ips
            .iter()
            .copied()
            .filter(|ip| ip.is_ipv4() == wildcard.is_ipv4())
            .collect();
        let relay = match explicit {
            Some(r) => Some(r),
            None => match mine.iter().find(|ip| !ip.is_unspecified()) {
                Some(&ip) => Some(ip),
                None if !mine.is_empty() || external.is_some() => Some(wildcard),
                None => None,
            },
        };
        let external = external.or(relay.filter(|r| !r.is_unspecified()));
        if relay.is_some() && external.is_none() {
            return Err(match explicit {
                Some(r) => ctx.err(
                    relay_src,
                    "relay-ip",
                    format!(
                        "{r} cannot be advertised to clients; set a specific relay-ip or an \
                         external-ip"
                    ),
                ),
                None => ctx.err(
                    listen_src,
                    "relay-ip",
                    format!(
                        "cannot advertise a relay address when listening on {wildcard}; set \
                         relay-ip or external-ip"
                    ),
                ),
            });
        }
        Ok((relay, external))
    };
    let (relay_ip_v4, external_ip_v4) =
        resolve_family(relay_v4, ext_v4, IpAddr::V4(Ipv4Addr::UNSPECIFIED))?;
    let (relay_ip_v6, external_ip_v6) =
        resolve_family(relay_v6, ext_v6, IpAddr::V6(Ipv6Addr::UNSPECIFIED))?;

    // --- relay port range ------------------------------------------------------------------
    let (min_port, min_src) = port(ctx, "min-port", pick_num(cli.min_port, fc.min_port), 49152)?;
    let (max_port, max_src) = port(ctx, "max-port", pick_num(cli.max_port, fc.max_port), 65535)?;
    if max_port < min_port {
        return Err(if max_src != Src::Default {
            ctx.err(
                max_src,
                "max-port",
                format!("must be >= min-port ({min_port})"),
            )
        } else {
            ctx.err(
                min_src,
                "min-port",
                format!("must be <= max-port ({max_port})"),
            )
        });
    }
    for &(p, p_src, key) in &own_ports {
        if !(min_port..=max_port).contains(&p) {
            continue;
        }
        return Err(if p_src != Src::Default {
            ctx.err(
                p_src,
                key,
                format!(
                    "{p} is inside the relay port range {min_port}-{max_port} \
                     (min-port/max-port)"
                ),
            )
        } else {
            let (src, range_key) = if min_src != Src::Default {
                (min_src, "min-port")
            } else {
                (max_src, "max-port")
            };
            ctx.err(
                src,
                range_key,
                format!("relay port range {min_port}-{max_port} contains {key} {p}"),
            )
        });
    }

    // --- realm and credentials -------------------------------------------------------------
    let realm = pick(cli.realm.clone(), fc.realm);
    if let Some((r, src)) = &realm {
        if r.trim().is_empty() {
            return Err(ctx.err(*src, "realm", "must not be empty"));
        }
        // RFC 8489 §14.9: fewer than 128 characters.
        if r.chars().count() > 127 {
            return Err(ctx.err(*src, "realm", "is longer than 127 characters"));
        }
    }

    let mut users: HashMap<String, UserKey> = HashMap::new();
    let mut entries: Vec<(Src, &str, String, String)> = Vec::new();
    let (list, user_src) = pick_list(&cli.user, fc.user);
    for s in list {
        let Some((name, pass)) = s.split_once(':') else {
            return Err(ctx.err(user_src, "user", format!("{s:?} is not name:password")));
        };
        entries.push((user_src, "user", name.to_owned(), pass.to_owned()));
    }
    if user_src != Src::Cli {
        for (name, pass) in fc.users.unwrap_or_default() {
            entries.push((Src::File, "users", name, pass));
        }
    }
    for (src, key, name, pass) in entries {
        let (name, k) = parse_user(ctx, src, key, &name, &pass)?;
        if users.contains_key(&name) {
            return Err(ctx.err(src, key, format!("user '{name}' is defined twice")));
        }
        users.insert(name, k);
    }
    if realm.is_none() {
        if let Some(name) = users
            .iter()
            .find(|(_, k)| matches!(k, UserKey::Ha1(_)))
            .map(|(n, _)| n)
        {
            return Err(ctx.err(
                Src::File,
                "realm",
                format!(
                    "must be set: user '{name}' has an HA1 key, which is MD5(name:realm:password)"
                ),
            ));
        }
    }

    let (secrets, secret_src) = pick_list(&cli.static_auth_secret, fc.static_auth_secret);
    if secrets.iter().any(|s| s.is_empty()) {
        return Err(ctx.err(secret_src, "static-auth-secret", "a secret is empty"));
    }
    let use_auth_secret = match (cli.use_auth_secret, fc.use_auth_secret) {
        (true, _) => Some((true, Src::Cli)),
        (false, Some(b)) => Some((b, Src::File)),
        (false, None) => None,
    };
    let mut auth_secrets: Vec<String> = Vec::new();
    match use_auth_secret {
        Some((true, src)) if secrets.is_empty() => {
            return Err(ctx.err(
                src,
                "static-auth-secret",
                "use-auth-secret is set but no secret was given",
            ))
        }
        Some((false, src)) if !secrets.is_empty() => {
            return Err(ctx.err(
                src,
                "use-auth-secret",
                "is false but static-auth-secret is set; remove one of them",
            ))
        }
        // As coturn: a static-auth-secret alone enables the REST API.
        _ => {
            for s in secrets {
                if !auth_secrets.contains(&s) {
                    auth_secrets.push(s);
                }
            }
        }
    }
    if users.is_empty() && auth_secrets.is_empty() {
        return Err(ctx.general("no credentials: set user or use-auth-secret + static-auth-secret"));
    }

    // --- peers -----------------------------------------------------------------------------
    let allow_loopback = cli.allow_loopback_peers || fc.allow_loopback_peers.unwrap_or(false);
    let ranges = |key: &str, cli: &[String], file: Option<Vec<String>>| {
        let (list, src) = pick_list(cli, file);
        list.iter()
            .map(|s| IpRange::from_str(s).map_err(|e| ctx.err(src, key, format!("{s:?}: {e}"))))
            .collect::<Result<Vec<IpRange>, ConfigError>>()
    };
    let allowed = ranges("allowed-peer-ip", &cli.allowed_peer_ip, fc.allowed_peer_ip)?;
    let denied = ranges("denied-peer-ip", &cli.denied_peer_ip, fc.denied_peer_ip)?;
    let peer_rules = PeerRulesText {
        allow_loopback,
        allowed: allowed.iter().map(ToString::to_string).collect(),
        denied: denied.iter().map(ToString::to_string).collect(),
    };
    let mut own_ips: Vec<IpAddr> = Vec::new();
    let own = [relay_ip_v4, relay_ip_v6, external_ip_v4, external_ip_v6];
    for ip in listen_ips
        .iter()
        .copied()
        .chain(own.into_iter().flatten())
        .chain(ext_private)
    {
        if !ip.is_unspecified() && !own_ips.contains(&ip) {
            own_ips.push(ip);
        }
    }
    // A wildcard listener answers on every address of the host (runtime::pktinfo): all of
    // them are ours. Taken now, again on reload, and followed while running (server.rs).
    let host_ips = if listen_ips.iter().any(IpAddr::is_unspecified) {
        super::pktinfo::interface_addresses()
    } else {
        Vec::new()
    };
    let mut peer_filter = PeerFilter::new(PeerFilterConfig {
        allow_loopback,
        allowed,
        denied,
        // Every transport: a peer must never reach our own TCP or TLS port through the relay.
        own_listeners: listen
            .iter()
            .chain(&tcp_listen)
            .chain(&tls_listen)
            .copied()
            .collect(),
        own_ips,
        host_ips,
        relay_ports: (min_port, max_port),
    });

    // --- lifetimes and quotas --------------------------------------------------------------
    let lifetime = |key: &str, v: Option<(i128, Src)>, default: u64| {
        let (n, src) = int(ctx, key, v, default, (0, u64::from(u32::MAX)))?;
        if n < MIN_ALLOCATE_LIFETIME {
            return Err(ctx.err(
                src,
                key,
                format!(
                    "{n} s is too short: clients refresh about a minute before expiry; use at \
                     least {MIN_ALLOCATE_LIFETIME}"
                ),
            ));
        }
        Ok((n, src))
    };
    let (default_lifetime, def_src) = lifetime(
        "default-allocate-lifetime",
        pick_num(cli.default_allocate_lifetime, fc.default_allocate_lifetime),
        600,
    )?;
    let (max_lifetime, max_l_src) = lifetime(
        "max-allocate-lifetime",
        pick_num(cli.max_allocate_lifetime, fc.max_allocate_lifetime),
        3600,
    )?;
    if max_lifetime < default_lifetime {
        return Err(if max_l_src != Src::Default {
            ctx.err(
                max_l_src,
                "max-allocate-lifetime",
                format!("must be >= default-allocate-lifetime ({default_lifetime})"),
            )
        } else {
            ctx.err(
                def_src,
                "default-allocate-lifetime",
                format!("must be <= max-allocate-lifetime ({max_lifetime})"),
            )
        });
    }
    let (stale_nonce, _) = int(
        ctx,
        "stale-nonce",
        pick_num(cli.stale_nonce, fc.stale_nonce),
        600,
        (1, u64::from(u32::MAX)),
    )?;
    let quota_range = (0, u64::from(u32::MAX));
    let (user_quota, _) = int(
        ctx,
        "user-quota",
        pick_num(cli.user_quota, fc.user_quota),
        0,
        quota_range,
    )?;
    let (total_quota, _) = int(
        ctx,
        "total-quota",
        pick_num(cli.total_quota, fc.total_quota),
        0,
        quota_range,
    )?;

    // --- runtime ---------------------------------------------------------------------------
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let (relay_threads, _) = int(
        ctx,
        "relay-threads",
        pick_num(cli.relay_threads, fc.relay_threads),
        cpus,
        (1, MAX_RELAY_THREADS),
    )?;

    let software = match pick(cli.software.clone(), fc.software) {
        None => None,
        Some((s, src)) if s.trim().is_empty() => {
            return Err(ctx.err(
                src,
                "software",
                "must not be empty; leave it unset to not send SOFTWARE",
            ))
        }
        // RFC 8489 §14.14: fewer than 128 characters.
        Some((s, src)) if s.chars().count() > 127 => {
            return Err(ctx.err(src, "software", "is longer than 127 characters"))
        }
        Some((s, _)) => Some(s),
    };

    let log_file = match pick(cli.log_file.clone(), fc.log_file) {
        None => None,
        Some((s, _)) if s == "stdout" || s == "-" => None,
        Some((s, src)) if s.trim().is_empty() => {
            return Err(ctx.err(src, "log-file", "must not be empty (use \"stdout\")"))
        }
        Some((s, _)) => Some(PathBuf::from(s)),
    };

    let verbose = match cli.verbose {
        0 => None,
        1 => Some("debug".to_owned()),
        _ => Some("trace".to_owned()),
    };
    let log_level = match pick(cli.log_level.clone().or(verbose), fc.log_level) {
        None => DEFAULT_LOG_LEVEL.to_owned(),
        Some((s, src)) => {
            let s = s.trim().to_owned();
            if !valid_log_level(&s) {
                return Err(ctx.err(
                    src,
                    "log-level",
                    format!(
                        "{s:?} is not a level (error, warn, info, debug, trace, off) or a \
                         filter like \"info,ferroturn=debug\""
                    ),
                ));
            }
            s
        }
    };
    let log_format = match pick(cli.log_format.clone(), fc.log_format) {
        None => LogFormat::Text,
        Some((s, src)) => LogFormat::from_str(s.trim())
            .map_err(|()| ctx.err(src, "log-format", format!("{s:?} is not text or json")))?,
    };

    let buffer_range = (1, i32::MAX as u64);
    let (udp_recv_buffer, _) = int(
        ctx,
        "udp-recv-buffer",
        pick_num(None, fc.udp_recv_buffer),
        DEFAULT_UDP_BUFFER as u64,
        buffer_range,
    )?;
    let (udp_send_buffer, _) = int(
        ctx,
        "udp-send-buffer",
        pick_num(None, fc.udp_send_buffer),
        DEFAULT_UDP_BUFFER as u64,
        buffer_range,
    )?;
    let (relay_coalesce_us, _) = int(
        ctx,
        "relay-coalesce-us",
        pick_num(cli.relay_coalesce_us, fc.relay_coalesce_us),
        0,
        (0, MAX_RELAY_COALESCE_US),
    )?;

    let abuse = abuse::resolve(ctx, &cli.abuse, &abuse_file)?;
    let (ops, alternate_servers) = resolve_ops(
        cli,
        ctx,
        OpsFile {
            prometheus: fc.prometheus,
            prometheus_port: fc.prometheus_port,
            prometheus_address: fc.prometheus_address,
            prometheus_username_labels: fc.prometheus_username_labels,
            admin_listen: fc.admin_listen,
            admin_allow_remote: fc.admin_allow_remote,
            admin_token: fc.admin_token,
            admin_token_file: fc.admin_token_file,
            alternate_server: fc.alternate_server,
            drain_timeout: fc.drain_timeout,
            test_page: fc.test_page,
            test_page_urls: fc.test_page_urls,
        },
        !auth_secrets.is_empty(),
    )?;

    // The HTTP listeners are the server's own too: no peer may be one of them.
    peer_filter.add_listeners(
        ops.prometheus
            .iter()
            .copied()
            .chain(ops.admin.as_ref().map(|a| a.listen)),
    );
    let defaults = EngineConfig::default();
    let engine = EngineConfig {
        realm: realm.map_or(defaults.realm, |(r, _)| r),
        software,
        users,
        auth_secrets,
        nonce_lifetime: Duration::from_secs(stale_nonce),
        default_lifetime: Duration::from_secs(default_lifetime),
        max_lifetime: Duration::from_secs(max_lifetime),
        relay_ip_v4,
        relay_ip_v6,
        external_ip_v4,
        external_ip_v6,
        min_port,
        max_port,
        peer_filter,
        user_quota: user_quota as u32,
        total_quota: total_quota as u32,
        legacy_channel_numbers: cli.legacy_channel_numbers
            || fc.legacy_channel_numbers.unwrap_or(false),
        limits: abuse.limits,
        rfc5780,
        alternate_servers,
    };

    Ok(Config {
        source: ctx.file.map(Path::to_path_buf),
        listen,
        tcp_listen,
        tls_listen,
        tls,
        engine,
        relay_threads: relay_threads as usize,
        log_file,
        log_level,
        log_format,
        udp_recv_buffer: udp_recv_buffer as usize,
        udp_send_buffer: udp_send_buffer as usize,
        udp_gso: !cli.no_udp_gso && fc.udp_gso.unwrap_or(true),
        relay_coalesce: Duration::from_micros(relay_coalesce_us),
        no_udp,
        proc_user: abuse.proc_user,
        proc_group: abuse.proc_group,
        ops,
        no_tls,
        peer_rules,
    })
}

/// The operations keys of the file, moved out of [`FileConfig`] for [`resolve_ops`].
struct OpsFile {
    prometheus: Option<bool>,
    prometheus_port: Option<i64>,
    prometheus_address: Option<String>,
    prometheus_username_labels: Option<bool>,
    admin_listen: Option<String>,
    admin_allow_remote: Option<bool>,
    admin_token: Option<String>,
    admin_token_file: Option<String>,
    alternate_server: Option<Vec<String>>,
    drain_timeout: Option<i64>,
    test_page: Option<bool>,
    test_page_urls: Option<Vec<String>>,
}

/// Default port of the metrics listener, as coturn.
pub const DEFAULT_PROMETHEUS_PORT: u16 = 9641;
/// Default drain timeout, seconds.
pub const DEFAULT_DRAIN_TIMEOUT: u64 = 3600;

/// Metrics and admin listeners, drain, test page; and `alternate-server` (for the engine).
/// Secure defaults: everything off; metrics on loopback; the admin API only on loopback
/// unless `admin-allow-remote`, and never without a token.
fn resolve_ops(
    cli: &Cli,
    ctx: &Ctx,
    f: OpsFile,
    rest_secret: bool,
) -> Result<(super::admin::OpsConfig, Vec<SocketAddr>), ConfigError> {
    use super::admin::{AdminConfig, OpsConfig};
    let (prometheus, _) = flag(cli.prometheus, f.prometheus);
    let (prom_port, _) = port(
        ctx,
        "prometheus-port",
        pick_num(cli.prometheus_port, f.prometheus_port),
        DEFAULT_PROMETHEUS_PORT,
    )?;
    let prom_ip = match pick(cli.prometheus_address.clone(), f.prometheus_address) {
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some((s, src)) => parse_ip(ctx, src, "prometheus-address", &s)?,
    };
    let (username_labels, _) = flag(cli.prometheus_username_labels, f.prometheus_username_labels);
    let (allow_remote, _) = flag(cli.admin_allow_remote, f.admin_allow_remote);
    let admin_listen = match pick(cli.admin_listen.clone(), f.admin_listen) {
        None => None,
        Some((s, src)) => {
            let a: SocketAddr = s.trim().parse().map_err(|_| {
                ctx.err(
                    src,
                    "admin-listen",
                    format!("{s:?} is not an IP:PORT address (e.g. \"127.0.0.1:9642\")"),
                )
            })?;
            if !a.ip().is_loopback() && !allow_remote {
                return Err(ctx.err(
                    src,
                    "admin-listen",
                    format!(
                        "{a} is not a loopback address; the admin API can kill sessions, so \
                         set admin-allow-remote = true to expose it on purpose"
                    ),
                ));
            }
            Some((a, src))
        }
    };
    let token = match (
        pick(cli.admin_token.clone(), f.admin_token),
        pick(
            cli.admin_token_file.clone(),
            f.admin_token_file.map(PathBuf::from),
        ),
    ) {
        (Some(_), Some((_, src))) => {
            return Err(ctx.err(
                src,
                "admin-token-file",
                "set either admin-token or admin-token-file, not both",
            ))
        }
        (Some((t, src)), None) => Some((t.trim().to_owned(), src, "admin-token")),
        (None, Some((p, src))) => {
            let text = fs::read_to_string(&p).map_err(|e| {
                ctx.err(
                    src,
                    "admin-token-file",
                    format!("cannot read {}: {}", p.display(), io_message(&e)),
                )
            })?;
            let t = text.lines().next().unwrap_or("").trim().to_owned();
            Some((t, src, "admin-token-file"))
        }
        (None, None) => None,
    };
    let admin = match (admin_listen, token) {
        (None, _) => None,
        (Some((_, src)), None) => {
            return Err(ctx.err(
                src,
                "admin-listen",
                "needs admin-token or admin-token-file (the API is never open without one)",
            ))
        }
        (Some(_), Some((t, src, key))) if t.len() < 16 => {
            return Err(ctx.err(src, key, "the token must be at least 16 characters"))
        }
        (Some((listen, _)), Some((token, _, _))) => Some(AdminConfig { listen, token }),
    };
    let mut alternates = Vec::new();
    let (list, src) = pick_list(&cli.alternate_server, f.alternate_server);
    for s in &list {
        let t = s.trim();
        // coturn's form: IP or IP:PORT, port 3478 by default.
        let a = t
            .parse::<SocketAddr>()
            .ok()
            .or_else(|| {
                t.parse::<IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, DEFAULT_LISTENING_PORT))
            })
            .filter(|a| a.port() != 0 && !a.ip().is_unspecified())
            .ok_or_else(|| {
                ctx.err(
                    src,
                    "alternate-server",
                    format!("{s:?} is not an IP or IP:PORT address"),
                )
            })?;
        alternates.push(a);
    }
    let (drain_timeout, _) = int(
        ctx,
        "drain-timeout",
        pick_num(cli.drain_timeout, f.drain_timeout),
        DEFAULT_DRAIN_TIMEOUT,
        (1, 7 * 86_400),
    )?;
    let (test_page, test_src) = flag(cli.test_page, f.test_page);
    if test_page {
        if admin.is_none() {
            return Err(ctx.err(
                test_src,
                "test-page",
                "is served on the admin listener: set admin-listen and admin-token",
            ));
        }
        if !rest_secret {
            return Err(ctx.err(
                test_src,
                "test-page",
                "mints TURN REST credentials: set use-auth-secret and static-auth-secret",
            ));
        }
    }
    let test_page_urls = f.test_page_urls.unwrap_or_default();
    Ok((
        OpsConfig {
            prometheus: prometheus.then_some(SocketAddr::new(prom_ip, prom_port)),
            admin,
            drain_timeout: Duration::from_secs(drain_timeout),
            test_page,
            test_page_urls,
            username_labels,
        },
        alternates,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    const EXAMPLE: &str = include_str!("../../turnserver.toml.example");
    /// Smallest valid file; tests append keys (no tables, so appending is safe).
    const MIN: &str =
        "realm = \"example.org\"\nuser = \"alice:pw\"\nlistening-ip = \"127.0.0.1\"\n";

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("ferroturn").chain(args.iter().copied())).unwrap()
    }

    fn load_text(text: &str, args: &[&str]) -> Result<Config, ConfigError> {
        load_from(&cli(args), Some((Path::new("turnserver.toml"), text)))
    }

    /// The error line, checked to be one line.
    fn err(text: &str, args: &[&str]) -> String {
        let e = load_text(text, args).unwrap_err().to_string();
        assert!(!e.contains('\n'), "multi-line error: {e}");
        e
    }

    fn ok(text: &str, args: &[&str]) -> Config {
        load_text(text, args).unwrap_or_else(|e| panic!("{e}"))
    }

    fn v4(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn defaults() {
        let c = load_from(&cli(&["-u", "a:b", "-L", "127.0.0.1"]), None).unwrap();
        assert_eq!(c.source, None);
        assert_eq!(c.listen, ["127.0.0.1:3478".parse().unwrap()]);
        let e = &c.engine;
        assert_eq!(e.realm, "ferroturn");
        assert_eq!(e.relay_ip_v4, v4("127.0.0.1"));
        assert_eq!(e.external_ip_v4, v4("127.0.0.1"));
        assert_eq!((e.relay_ip_v6, e.external_ip_v6), (None, None));
        assert_eq!((e.min_port, e.max_port), (49152, 65535));
        assert_eq!(e.default_lifetime, Duration::from_secs(600));
        assert_eq!(e.max_lifetime, Duration::from_secs(3600));
        assert_eq!(e.nonce_lifetime, Duration::from_secs(600));
        assert_eq!((e.user_quota, e.total_quota), (0, 0));
        assert_eq!(e.software, None);
        assert!(e.auth_secrets.is_empty());
        assert_eq!(e.users["a"], UserKey::Password("b".into()));
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(c.relay_threads, cpus);
        assert_eq!(c.log_file, None);
        assert_eq!(c.log_level, "info");
        assert_eq!((c.udp_recv_buffer, c.udp_send_buffer), (4 << 20, 4 << 20));
        assert!(!c.no_udp);
        // UDP and TCP on 3478 (RFC 8656), TLS off without a certificate.
        assert_eq!(c.tcp_listen, ["127.0.0.1:3478".parse().unwrap()]);
        assert!(c.tls_listen.is_empty());
        assert_eq!(c.tls, None);
        let s = c.summary();
        assert!(s.contains("listen (udp):      127.0.0.1:3478\n"), "{s}");
        assert!(s.contains("listen (tcp):      127.0.0.1:3478\n"), "{s}");
        assert!(s.contains("TLS:               off (no cert/pkey)\n"), "{s}");
        assert!(c.relay_coalesce.is_zero(), "coalescing is opt-in");
        assert!(!s.contains("coalescing"), "{s}");
    }

    #[test]
    fn relay_coalesce_from_file_and_cli() {
        let file = "relay-coalesce-us = 50";
        let c = load_text(file, &["-u", "a:b", "-L", "127.0.0.1"]).unwrap();
        assert_eq!(c.relay_coalesce, Duration::from_micros(50));
        assert!(c.summary().contains("relay coalescing:  50 µs"));
        let args = ["-u", "a:b", "-L", "127.0.0.1", "--relay-coalesce-us", "0"];
        let c = load_text(file, &args).unwrap();
        assert!(c.relay_coalesce.is_zero(), "the command line wins");
    }

    #[test]
    fn default_wildcard_listen_needs_relay_or_external_ip() {
        let e = load_from(&cli(&["-u", "a:b"]), None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "command line: option '--relay-ip': cannot advertise a relay address when \
             listening on 0.0.0.0; set relay-ip or external-ip"
        );
        // With external-ip: relay sockets on the wildcard, the external IP advertised.
        let c = load_from(&cli(&["-u", "a:b", "-X", "203.0.113.5"]), None).unwrap();
        assert_eq!(c.listen, ["0.0.0.0:3478".parse().unwrap()]);
        assert_eq!(c.engine.relay_ip_v4, v4("0.0.0.0"));
        assert_eq!(c.engine.external_ip_v4, v4("203.0.113.5"));
        // With relay-ip: that address is bound and advertised.
        let c = load_from(&cli(&["-u", "a:b", "-E", "192.0.2.7"]), None).unwrap();
        assert_eq!(c.engine.relay_ip_v4, v4("192.0.2.7"));
        assert_eq!(c.engine.external_ip_v4, v4("192.0.2.7"));
        // Explicit wildcard relay-ip without external-ip.
        assert_eq!(
            err(&format!("{MIN}relay-ip = \"0.0.0.0\"\n"), &[]),
            "turnserver.toml: key 'relay-ip': 0.0.0.0 cannot be advertised to clients; set a \
             specific relay-ip or an external-ip"
        );
        // IPv6 wildcard too.
        assert_eq!(
            err(
                &MIN.replace("\"127.0.0.1\"", "[\"127.0.0.1\", \"::\"]"),
                &[]
            ),
            "turnserver.toml: key 'relay-ip': cannot advertise a relay address when listening \
             on ::; set relay-ip or external-ip"
        );
    }

    #[test]
    fn relay_and_external_per_family() {
        let c = ok(
            "realm = \"r\"\nuser = \"a:b\"\nlistening-ip = [\"0.0.0.0\", \"::1\"]\n\
             external-ip = \"198.51.100.1/10.0.0.1\"\n",
            &[],
        );
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.engine.relay_ip_v4, v4("0.0.0.0"));
        assert_eq!(c.engine.external_ip_v4, v4("198.51.100.1"));
        assert_eq!(c.engine.relay_ip_v6, v4("::1"));
        assert_eq!(c.engine.external_ip_v6, v4("::1"));
        // NAT with a specific listening address: bind there, advertise the public one.
        let c = ok(&format!("{MIN}external-ip = \"203.0.113.9\"\n"), &[]);
        assert_eq!(c.engine.relay_ip_v4, v4("127.0.0.1"));
        assert_eq!(c.engine.external_ip_v4, v4("203.0.113.9"));
        assert_eq!(
            err(
                &format!("{MIN}relay-ip = [\"10.0.0.1\", \"10.0.0.2\"]\n"),
                &[]
            ),
            "turnserver.toml: key 'relay-ip': more than one IPv4 address (10.0.0.1, 10.0.0.2); \
             give at most one per address family"
        );
        assert_eq!(
            err(&format!("{MIN}external-ip = \"203.0.113.9/::1\"\n"), &[]),
            "turnserver.toml: key 'external-ip': \"203.0.113.9/::1\" mixes IPv4 and IPv6 \
             (PUBLIC/PRIVATE must be one family)"
        );
        assert_eq!(
            err(&format!("{MIN}relay-ip = \"10.0.0\"\n"), &[]),
            "turnserver.toml: key 'relay-ip': \"10.0.0\" is not an IP address"
        );
        assert_eq!(
            err(
                &MIN.replace("\"127.0.0.1\"", "[\"0.0.0.0\", \"127.0.0.1\"]"),
                &[]
            ),
            "turnserver.toml: key 'listening-ip': 0.0.0.0 already covers 127.0.0.1; list either \
             the wildcard or specific addresses"
        );
    }

    #[test]
    fn example_file_parses_and_validates() {
        let c = load_text(EXAMPLE, &[]).unwrap_or_else(|e| panic!("shipped example: {e}"));
        assert_eq!(c.listen, ["127.0.0.1:3478".parse().unwrap()]);
        assert_eq!(c.engine.realm, "example.org");
        assert_eq!(c.engine.users.len(), 1);
        assert_eq!(
            c.engine.users["demo"],
            UserKey::Password("demo-password".into())
        );
        assert!(c.engine.auth_secrets.is_empty());
        assert!(!c.peer_rules.allow_loopback);
        assert_eq!((c.engine.min_port, c.engine.max_port), (49152, 65535));
        assert_eq!(c.engine.software, None);
        assert_eq!(c.engine.relay_ip_v4, v4("127.0.0.1"));
        // Works on a fresh machine: TLS is commented out.
        assert_eq!(c.tcp_listen, ["127.0.0.1:3478".parse().unwrap()]);
        assert_eq!(c.tls, None);
        assert!(c.tls_listen.is_empty());
    }

    #[test]
    fn example_file_documents_every_key() {
        let e = toml::from_str::<FileConfig>("zzz = 1").err().unwrap();
        let known: Vec<&str> = e.message().split('`').skip(3).step_by(2).collect();
        assert!(known.len() > 20, "{known:?}");
        for key in known {
            let documented = if key == "users" {
                EXAMPLE.contains("\n# [users]\n")
            } else {
                EXAMPLE.contains(&format!("\n{key} = "))
                    || EXAMPLE.contains(&format!("\n# {key} = "))
            };
            assert!(
                documented,
                "key '{key}' is not shown in turnserver.toml.example"
            );
        }
    }

    #[test]
    fn example_file_with_its_commented_keys_enabled_still_parses() {
        // Uncommenting the documented examples must yield valid TOML and known keys.
        let mut seen = std::collections::HashSet::new();
        let mut text = String::new();
        for line in EXAMPLE.lines() {
            let l = line.strip_prefix("# ").unwrap_or(line);
            let is_kv = l.split_once(" = ").is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '-')
            });
            if line.starts_with("# [") {
                text.push_str(l);
                text.push('\n');
            } else if is_kv && line.starts_with('#') {
                let key = l.split(" = ").next().unwrap().to_owned();
                if seen.insert(key) {
                    text.push_str(l);
                    text.push('\n');
                }
            }
        }
        let fc: FileConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(fc.static_auth_secret.is_some() && fc.relay_ip.is_some());
        assert_eq!(fc.users.map(|u| u.len()), Some(2));
        assert!(fc.cert.is_some() && fc.pkey.is_some() && fc.tls_listening_port.is_some());
    }

    #[test]
    fn cli_overrides_file() {
        let file = "realm = \"a\"\nuser = [\"alice:x\"]\nlistening-ip = \"127.0.0.1\"\n\
                    listening-port = 3478\nmin-port = 50000\nsoftware = \"f\"\n\
                    [users]\ncarol = \"y\"\n";
        let base = ok(file, &[]);
        assert_eq!(base.engine.users.len(), 2);
        let c = ok(
            file,
            &[
                "-p",
                "3479",
                "--realm",
                "b",
                "-u",
                "bob:z",
                "--software",
                "g",
                "-L",
                "::1",
            ],
        );
        assert_eq!(c.listen, ["[::1]:3479".parse().unwrap()]);
        assert_eq!(c.engine.realm, "b");
        assert_eq!(c.engine.software.as_deref(), Some("g"));
        // A list on the command line replaces the file's (both `user` and `[users]`).
        assert_eq!(c.engine.users.keys().collect::<Vec<_>>(), ["bob"]);
        // Keys not given on the command line keep the file's value.
        assert_eq!(c.engine.min_port, 50000);
        assert_eq!(c.source, Some(PathBuf::from("turnserver.toml")));
    }

    #[test]
    fn error_messages() {
        let cases: &[(&str, &[&str], &str)] = &[
            ("min-port = 70000", &[], "turnserver.toml: key 'min-port': 70000 is not a port (1-65535)"),
            ("listening-port = 0", &[], "turnserver.toml: key 'listening-port': 0 is not a port (1-65535)"),
            ("min-port = -1", &[], "turnserver.toml: key 'min-port': -1 is not a port (1-65535)"),
            ("", &["--min-port", "70000"], "command line: option '--min-port': 70000 is not a port (1-65535)"),
            ("max-port = 40000", &[], "turnserver.toml: key 'max-port': must be >= min-port (49152)"),
            ("min-port = 60000\nmax-port = 50000", &[], "turnserver.toml: key 'max-port': must be >= min-port (60000)"),
            ("min-port = 3000\nmax-port = 4000", &[], "turnserver.toml: key 'min-port': relay port range 3000-4000 contains listening-port 3478"),
            ("listening-port = 50000", &[], "turnserver.toml: key 'listening-port': 50000 is inside the relay port range 49152-65535 (min-port/max-port)"),
            ("use-auth-secret = true", &[], "turnserver.toml: key 'static-auth-secret': use-auth-secret is set but no secret was given"),
            ("", &["--use-auth-secret"], "command line: option '--static-auth-secret': use-auth-secret is set but no secret was given"),
            ("use-auth-secret = false\nstatic-auth-secret = \"s\"", &[], "turnserver.toml: key 'use-auth-secret': is false but static-auth-secret is set; remove one of them"),
            ("static-auth-secret = \"\"", &[], "turnserver.toml: key 'static-auth-secret': a secret is empty"),
            ("default-allocate-lifetime = 4000", &[], "turnserver.toml: key 'default-allocate-lifetime': must be <= max-allocate-lifetime (3600)"),
            ("max-allocate-lifetime = 300", &[], "turnserver.toml: key 'max-allocate-lifetime': must be >= default-allocate-lifetime (600)"),
            ("default-allocate-lifetime = 30\nmax-allocate-lifetime = 30", &[], "turnserver.toml: key 'default-allocate-lifetime': 30 s is too short: clients refresh about a minute before expiry; use at least 60"),
            ("stale-nonce = 0", &[], "turnserver.toml: key 'stale-nonce': must be at least 1, got 0"),
            ("user-quota = -1", &[], "turnserver.toml: key 'user-quota': -1 is out of range (0-4294967295)"),
            ("relay-threads = 0", &[], "turnserver.toml: key 'relay-threads': must be at least 1, got 0"),
            ("relay-coalesce-us = 1001", &[], "turnserver.toml: key 'relay-coalesce-us': 1001 is out of range (0-1000)"),
            ("", &["--relay-coalesce-us", "5000"], "command line: option '--relay-coalesce-us': 5000 is out of range (0-1000)"),
            ("", &["--relay-threads", "0"], "command line: option '--relay-threads': must be at least 1, got 0"),
            ("relay-threads = 5000", &[], "turnserver.toml: key 'relay-threads': 5000 is out of range (1-1024)"),
            ("software = \"\"", &[], "turnserver.toml: key 'software': must not be empty; leave it unset to not send SOFTWARE"),
            ("log-level = \"loud\"", &[], "turnserver.toml: key 'log-level': \"loud\" is not a level (error, warn, info, debug, trace, off) or a filter like \"info,ferroturn=debug\""),
            ("udp-recv-buffer = 0", &[], "turnserver.toml: key 'udp-recv-buffer': must be at least 1, got 0"),
            ("tls-listening-port = 0", &[], "turnserver.toml: key 'tls-listening-port': 0 is not a port (1-65535)"),
            ("", &["--tls-listening-port", "70000"], "command line: option '--tls-listening-port': 70000 is not a port (1-65535)"),
            ("cert = \"/etc/ferroturn/cert.pem\"", &[], "turnserver.toml: key 'pkey': is not set but cert is; TLS needs both the certificate chain and its private key"),
            ("", &["--cert", "/etc/ferroturn/cert.pem"], "command line: option '--pkey': is not set but cert is; TLS needs both"),
            ("pkey = \"/etc/ferroturn/key.pem\"", &[], "turnserver.toml: key 'cert': is not set but pkey is; TLS needs both"),
            ("cert = \"\"\npkey = \"k.pem\"", &[], "turnserver.toml: key 'cert': must not be empty (a PEM file)"),
            // Also with no-tls: half a certificate is a mistake either way.
            ("cert = \"c.pem\"\nno-tls = true", &[], "turnserver.toml: key 'pkey': is not set but cert is"),
            ("cert = \"/nonexistent/ferroturn/cert.pem\"\npkey = \"/nonexistent/ferroturn/key.pem\"", &[], "turnserver.toml: key 'cert': cannot read /nonexistent/ferroturn/cert.pem: No such file or directory"),
            ("no-udp = true\nno-tcp = true", &[], "turnserver.toml: nothing to listen on: no-udp, no-tcp and no TLS"),
            ("no-udp = true", &["--no-tcp"], "command line: nothing to listen on: no-udp, no-tcp and no TLS"),
            ("denied-peer-ip = \"10.0.0.x\"", &[], "turnserver.toml: key 'denied-peer-ip': \"10.0.0.x\": "),
        ];
        for (extra, args, want) in cases {
            let got = err(&format!("{MIN}{extra}\n"), args);
            assert!(got.starts_with(want), "\n got: {got}\nwant: {want}");
        }
    }

    #[test]
    fn user_errors() {
        let base = "realm = \"example.org\"\nlistening-ip = \"127.0.0.1\"\n";
        let cases: &[(&str, &str)] = &[
            ("user = \"alice\"", "turnserver.toml: key 'user': \"alice\" is not name:password"),
            ("user = \":pw\"", "turnserver.toml: key 'user': an entry has an empty user name"),
            ("user = \"alice:\"", "turnserver.toml: key 'user': user 'alice' has an empty password"),
            ("user = \"bob:0x1234\"", "turnserver.toml: key 'user': HA1 key of user 'bob' must be 0x followed by 32 hex digits (MD5 of name:realm:password)"),
            ("user = \"bob:0x0123456789abcdef0123456789abcdeg\"", "turnserver.toml: key 'user': HA1 key of user 'bob'"),
            ("user = [\"a:1\", \"a:2\"]", "turnserver.toml: key 'user': user 'a' is defined twice"),
            ("user = \"a:1\"\n[users]\na = \"2\"", "turnserver.toml: key 'users': user 'a' is defined twice"),
            ("realm = \"\"", "turnserver.toml:3:1: key 'realm': duplicate key `realm`"),
        ];
        for (extra, want) in cases {
            let got = err(&format!("{base}{extra}\n"), &[]);
            assert!(got.starts_with(want), "\n got: {got}\nwant: {want}");
        }
        assert_eq!(
            err(
                "realm = \"\"\nuser = \"a:b\"\nlistening-ip = \"127.0.0.1\"\n",
                &[]
            ),
            "turnserver.toml: key 'realm': must not be empty"
        );
        assert_eq!(
            err("listening-ip = \"127.0.0.1\"\n", &[]),
            "turnserver.toml: no credentials: set user or use-auth-secret + static-auth-secret"
        );
        assert_eq!(
            load_from(&cli(&["-L", "127.0.0.1"]), None)
                .unwrap_err()
                .to_string(),
            "command line: no credentials: set user or use-auth-secret + static-auth-secret"
        );
        assert_eq!(
            err(
                "listening-ip = \"127.0.0.1\"\nuser = \"bob:0x0123456789abcdef0123456789abcdef\"\n",
                &[]
            ),
            "turnserver.toml: key 'realm': must be set: user 'bob' has an HA1 key, which is \
             MD5(name:realm:password)"
        );
    }

    #[test]
    fn ha1_keys() {
        assert_eq!(
            parse_ha1("0123456789abcdefFEDCBA9876543210"),
            Some([
                0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54,
                0x32, 0x10
            ])
        );
        assert_eq!(parse_ha1("0123456789abcdef0123456789abcde"), None);
        assert_eq!(parse_ha1("0123456789abcdef0123456789abcdef0"), None);
        assert_eq!(parse_ha1("+123456789abcdef0123456789abcdef"), None);
        assert_eq!(parse_ha1("é123456789abcdef0123456789abcde"), None);
        let c = ok(
            &format!("{MIN}[users]\nbob = \"0x000102030405060708090a0b0c0d0e0f\"\n"),
            &[],
        );
        assert_eq!(
            c.engine.users["bob"],
            UserKey::Ha1([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15])
        );
        // A password may contain ':' (split at the first one).
        let c = ok(MIN, &["-u", "carol:a:b"]);
        assert_eq!(c.engine.users["carol"], UserKey::Password("a:b".into()));
    }

    #[test]
    fn rest_secrets_and_users_together() {
        let c = ok(
            &format!("{MIN}static-auth-secret = [\"new\", \"old\"]\n"),
            &[],
        );
        assert_eq!(c.engine.auth_secrets, ["new", "old"]);
        assert_eq!(c.engine.users.len(), 1);
        // Secret only (implies use-auth-secret, as in coturn).
        let c = ok(
            "listening-ip = \"127.0.0.1\"\nuse-auth-secret = true\nstatic-auth-secret = \"s\"\n",
            &[],
        );
        assert_eq!(c.engine.auth_secrets, ["s"]);
        assert!(c.engine.users.is_empty());
    }

    #[test]
    fn toml_errors_are_one_line_with_position() {
        assert_eq!(
            err(&format!("{MIN}listening-prot = 3478\n"), &[]),
            "turnserver.toml:4:1: unknown key 'listening-prot' (did you mean 'listening-port'?)"
        );
        assert_eq!(
            err(&format!("{MIN}lt-cred-mech = true\n"), &[]),
            "turnserver.toml:4:1: unknown key 'lt-cred-mech'"
        );
        let e = err(&format!("{MIN}min-port = \"x\"\n"), &[]);
        assert!(
            e.starts_with("turnserver.toml:4:12: key 'min-port': invalid type: string \"x\""),
            "{e}"
        );
        let e = err(
            &format!("{MIN}denied-peer-ip = [\n  \"10.0.0.0/8\",\n  5,\n]\n"),
            &[],
        );
        assert!(
            e.starts_with("turnserver.toml:6:3: key 'denied-peer-ip': "),
            "{e}"
        );
        let e = err(&format!("{MIN}[users]\nbob = 5\n"), &[]);
        assert!(
            e.starts_with("turnserver.toml:5:7: key 'users.bob': invalid type"),
            "{e}"
        );
        let e = err(&format!("{MIN}min-port 3\n"), &[]);
        assert!(e.starts_with("turnserver.toml:4:"), "{e}");
    }

    #[test]
    fn unreadable_file() {
        let c = cli(&["--config", "/nonexistent/ferroturn.toml"]);
        let e = load(&c).unwrap_err().to_string();
        assert!(
            e.starts_with("/nonexistent/ferroturn.toml: cannot read the config file: "),
            "{e}"
        );
    }

    #[test]
    fn logging() {
        assert_eq!(ok(MIN, &["-v"]).log_level, "debug");
        assert_eq!(ok(MIN, &["-vv"]).log_level, "trace");
        assert_eq!(
            ok(&format!("{MIN}log-level = \"warn\"\n"), &["-v"]).log_level,
            "debug"
        );
        let c = ok(
            &format!("{MIN}log-level = \"info,ferroturn::engine=trace\"\n"),
            &[],
        );
        assert_eq!(c.log_level, "info,ferroturn::engine=trace");
        assert_eq!(ok(MIN, &["--log-level", "off"]).log_level, "off");
        assert_eq!(ok(MIN, &["--log-file", "-"]).log_file, None);
        assert_eq!(
            ok(&format!("{MIN}log-file = \"stdout\"\n"), &[]).log_file,
            None
        );
        assert_eq!(
            ok(MIN, &["-l", "/var/log/ferroturn/x.log"]).log_file,
            Some(PathBuf::from("/var/log/ferroturn/x.log"))
        );
        assert!(valid_log_level("warn,hyper=off"));
        assert!(!valid_log_level("=debug"));
        assert!(!valid_log_level("info,"));
    }

    #[test]
    fn summary_and_debug_hide_secrets() {
        let c = ok(
            &format!(
                "{MIN}static-auth-secret = \"topsecret\"\ndenied-peer-ip = \"10.0.0.1\"\n\
                 [users]\nbob = \"0x000102030405060708090a0b0c0d0e0f\"\n"
            ),
            &[
                "-u",
                "carol:hunter2",
                "-u",
                "dave:0x000102030405060708090a0b0c0d0e0f",
            ],
        );
        let s = c.summary();
        let d = format!("{c:?}");
        for text in [&s, &d] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(!text.contains("topsecret"), "{text}");
            assert!(!text.contains("000102"), "{text}");
        }
        assert!(s.contains("carol:********"), "{s}");
        assert!(s.contains("dave:<HA1 key>"), "{s}");
        assert!(s.contains("127.0.0.1:3478"), "{s}");
        assert!(s.contains("10.0.0.1"), "{s}");
        assert!(s.contains("REST API secrets:  1 (hidden)"), "{s}");
    }

    /// A cert.pem / key.pem pair in a fresh temp directory (content need not be valid PEM
    /// here: config only checks the files are readable), removed on drop.
    struct TempPem {
        dir: PathBuf,
    }

    impl TempPem {
        fn new(name: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "ferroturn-config-{name}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("cert.pem"), "-----BEGIN CERTIFICATE-----\n").unwrap();
            fs::write(dir.join("key.pem"), "-----BEGIN PRIVATE KEY-----\n").unwrap();
            Self { dir }
        }
        fn cert(&self) -> String {
            self.dir.join("cert.pem").display().to_string()
        }
        fn key(&self) -> String {
            self.dir.join("key.pem").display().to_string()
        }
        /// `cert = ...` and `pkey = ...` lines.
        fn keys(&self) -> String {
            format!("cert = {:?}\npkey = {:?}\n", self.cert(), self.key())
        }
    }

    impl Drop for TempPem {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn tls_with_cert_and_pkey() {
        let pem = TempPem::new("tls");
        let c = ok(&format!("{MIN}{}", pem.keys()), &[]);
        assert_eq!(c.listen, [sa("127.0.0.1:3478")]);
        assert_eq!(c.tcp_listen, [sa("127.0.0.1:3478")]);
        assert_eq!(c.tls_listen, [sa("127.0.0.1:5349")]);
        assert_eq!(
            c.tls,
            Some(TlsFiles {
                cert: pem.cert().into(),
                key: pem.key().into(),
            })
        );
        let s = c.summary();
        assert!(s.contains("listen (tls):      127.0.0.1:5349\n"), "{s}");
        assert!(
            s.contains(&format!(
                "TLS:               cert {}, key {}",
                pem.cert(),
                pem.key()
            )),
            "{s}"
        );
        // Every listening IP, the port from the command line; the file's paths kept.
        let c = ok(
            &format!(
                "{}{}",
                MIN.replace("\"127.0.0.1\"", "[\"127.0.0.1\", \"::1\"]"),
                pem.keys()
            ),
            &["--tls-listening-port", "5350"],
        );
        assert_eq!(c.tls_listen, [sa("127.0.0.1:5350"), sa("[::1]:5350")]);
        assert_eq!(c.tcp_listen, [sa("127.0.0.1:3478"), sa("[::1]:3478")]);
        // All on the command line; --cert overrides the file's cert only.
        let other = TempPem::new("tls-cli");
        let c = ok(
            &format!("{MIN}{}", pem.keys()),
            &["--cert", &other.cert(), "-p", "3479"],
        );
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert, PathBuf::from(other.cert()));
        assert_eq!(tls.key, PathBuf::from(pem.key()));
        assert_eq!(c.tcp_listen, [sa("127.0.0.1:3479")]);
        let c = load_from(
            &cli(&[
                "-u",
                "a:b",
                "-L",
                "127.0.0.1",
                "--cert",
                &pem.cert(),
                "--pkey",
                &pem.key(),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(c.tls_listen, [sa("127.0.0.1:5349")]);
    }

    #[test]
    fn tls_files_must_be_readable() {
        let pem = TempPem::new("missing");
        let gone = pem.dir.join("gone.pem").display().to_string();
        let text = format!("{MIN}cert = {:?}\npkey = {gone:?}\n", pem.cert());
        assert_eq!(
            err(&text, &[]),
            format!("turnserver.toml: key 'pkey': cannot read {gone}: No such file or directory")
        );
        // The error names where the path came from.
        assert_eq!(
            err(&format!("{MIN}{}", pem.keys()), &["--cert", &gone]),
            format!("command line: option '--cert': cannot read {gone}: No such file or directory")
        );
        let dir = pem.dir.display().to_string();
        assert_eq!(
            err(&format!("{MIN}{}", pem.keys()), &["--pkey", &dir]),
            format!("command line: option '--pkey': cannot read {dir}: is a directory")
        );
        // Relative paths are relative to the working directory (as coturn), and say so.
        let e = err(
            &format!(
                "{MIN}cert = \"no-such-ferroturn-cert.pem\"\npkey = {:?}\n",
                pem.key()
            ),
            &[],
        );
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            e,
            format!(
                "turnserver.toml: key 'cert': cannot read no-such-ferroturn-cert.pem (relative to \
                 the working directory {}): No such file or directory",
                cwd.display()
            )
        );
        // no-tls: the files are not read at all.
        let c = ok(
            &format!("{MIN}cert = {gone:?}\npkey = {gone:?}\n"),
            &["--no-tls"],
        );
        assert_eq!(c.tls, None);
        assert!(c.tls_listen.is_empty());
        assert!(c.summary().contains("TLS:               off (no-tls)\n"));
    }

    #[test]
    fn transports_switched_off() {
        let pem = TempPem::new("transports");
        let with_tls = format!("{MIN}{}", pem.keys());
        // no-udp: TCP (and TLS) only.
        let c = ok(MIN, &["--no-udp"]);
        assert!(c.no_udp);
        assert!(c.listen.is_empty());
        assert_eq!(c.tcp_listen, [sa("127.0.0.1:3478")]);
        assert!(c.summary().contains("listen (udp):      off (no-udp)\n"));
        // no-tcp: UDP only.
        let c = ok(&format!("{MIN}no-tcp = true\n"), &[]);
        assert_eq!(c.listen, [sa("127.0.0.1:3478")]);
        assert!(c.tcp_listen.is_empty());
        assert!(c.summary().contains("listen (tcp):      off (no-tcp)\n"));
        // TLS only.
        let c = ok(&with_tls, &["--no-udp", "--no-tcp"]);
        assert!(c.listen.is_empty() && c.tcp_listen.is_empty());
        assert_eq!(c.tls_listen, [sa("127.0.0.1:5349")]);
        // no-tls with a certificate: UDP and TCP only.
        let c = ok(&format!("{with_tls}no-tls = true\n"), &[]);
        assert_eq!(c.listen, [sa("127.0.0.1:3478")]);
        assert_eq!(c.tcp_listen, [sa("127.0.0.1:3478")]);
        assert!(c.tls_listen.is_empty() && c.tls.is_none());
        // The command line can only switch a no-* flag on.
        let c = ok(&format!("{MIN}no-udp = false\n"), &["--no-udp"]);
        assert!(c.listen.is_empty());
        let c = ok(&format!("{MIN}no-udp = true\n"), &[]);
        assert!(c.listen.is_empty());
        // Nothing left.
        assert_eq!(
            err(&with_tls, &["--no-udp", "--no-tcp", "--no-tls"]),
            "command line: nothing to listen on: no-udp, no-tcp and no TLS"
        );
        assert_eq!(
            load_from(
                &cli(&["-u", "a:b", "-L", "127.0.0.1", "--no-udp", "--no-tcp"]),
                None
            )
            .unwrap_err()
            .to_string(),
            "command line: nothing to listen on: no-udp, no-tcp and no TLS"
        );
    }

    #[test]
    fn tls_port_conflicts() {
        let pem = TempPem::new("ports");
        let with_tls = format!("{MIN}{}", pem.keys());
        assert_eq!(
            err(&format!("{with_tls}tls-listening-port = 3478\n"), &[]),
            "turnserver.toml: key 'tls-listening-port': must differ from listening-port (3478)"
        );
        assert_eq!(
            err(&with_tls, &["-p", "5349"]),
            "command line: option '--listening-port': must differ from tls-listening-port (5349)"
        );
        // Only ports actually listened on count: without TLS, or with neither UDP nor TCP.
        ok(&format!("{MIN}tls-listening-port = 3478\n"), &[]);
        ok(
            &format!("{with_tls}tls-listening-port = 3478\nno-udp = true\nno-tcp = true\n"),
            &[],
        );
        ok(&format!("{MIN}min-port = 5000\nmax-port = 6000\n"), &[]);
        ok(
            &format!("{MIN}min-port = 3000\nmax-port = 4000\n"),
            &[
                "--no-udp",
                "--no-tcp",
                "--cert",
                &pem.cert(),
                "--pkey",
                &pem.key(),
            ],
        );
        // The relay range must not contain the TLS port.
        assert_eq!(
            err(&format!("{with_tls}tls-listening-port = 50000\n"), &[]),
            "turnserver.toml: key 'tls-listening-port': 50000 is inside the relay port range \
             49152-65535 (min-port/max-port)"
        );
        assert_eq!(
            err(
                &format!("{with_tls}min-port = 5000\nmax-port = 6000\n"),
                &[]
            ),
            "turnserver.toml: key 'min-port': relay port range 5000-6000 contains \
             tls-listening-port 5349"
        );
        assert_eq!(
            err(&with_tls, &["--max-port", "5349", "--min-port", "4000"]),
            "command line: option '--min-port': relay port range 4000-5349 contains \
             tls-listening-port 5349"
        );
    }

    #[test]
    fn own_listeners_include_tcp_and_tls() {
        use crate::engine::peer_filter::DenyReason;
        let pem = TempPem::new("own");
        let with_tls = format!("{MIN}{}", pem.keys());
        let check = |c: &Config, a: &str| c.engine.peer_filter.check(sa(a));
        // Our TLS port is a listener, not just "some port of our own address".
        let c = ok(&with_tls, &[]);
        assert_eq!(check(&c, "127.0.0.1:5349"), Err(DenyReason::OwnListener));
        assert_eq!(check(&c, "127.0.0.1:3478"), Err(DenyReason::OwnListener));
        let c = ok(
            &with_tls,
            &["--allow-loopback-peers", "--tls-listening-port", "5350"],
        );
        // Even with loopback peers allowed (which lifts the own-address rule for loopback).
        assert_eq!(check(&c, "127.0.0.1:5350"), Err(DenyReason::OwnListener));
        assert_eq!(check(&c, "127.0.0.1:5349"), Ok(()));
        // TCP counts without UDP.
        let c = ok(MIN, &["--no-udp"]);
        assert_eq!(check(&c, "127.0.0.1:3478"), Err(DenyReason::OwnListener));
        // Without TLS, 5349 is not a listener (still one of our addresses).
        let c = ok(MIN, &[]);
        assert_eq!(check(&c, "127.0.0.1:5349"), Err(DenyReason::OwnAddress));
        // With UDP and TCP off, 3478 is not a listener either.
        let c = ok(&with_tls, &["--no-udp", "--no-tcp"]);
        assert_eq!(check(&c, "127.0.0.1:3478"), Err(DenyReason::OwnAddress));
        assert_eq!(check(&c, "127.0.0.1:5349"), Err(DenyReason::OwnListener));
        // Wildcard listener: the TLS port on the advertised address, even if allowed.
        let c = ok(
            &format!(
                "realm = \"r\"\nuser = \"a:b\"\nlistening-ip = \"0.0.0.0\"\n\
                 external-ip = \"203.0.113.5\"\nallowed-peer-ip = \"10.0.0.0/8\"\n{}",
                pem.keys()
            ),
            &[],
        );
        assert_eq!(c.tls_listen, [sa("0.0.0.0:5349")]);
        assert_eq!(check(&c, "203.0.113.5:5349"), Err(DenyReason::OwnListener));
        assert_eq!(check(&c, "203.0.113.5:3478"), Err(DenyReason::OwnListener));
        assert_eq!(check(&c, "203.0.113.6:5349"), Ok(()));
    }

    #[test]
    fn closest_key_suggestion() {
        let known = ["min-port", "max-port", "realm", "listening-port"];
        assert_eq!(closest("min_port", &known), Some("min-port"));
        assert_eq!(closest("relm", &known), Some("realm"));
        assert_eq!(closest("fingerprint", &known), None);
    }

    #[test]
    fn reload_names_the_keys_that_need_a_restart() {
        let run = ok(MIN, &[]);
        // Users, quotas, peer rules, the log level and coalescing reload: nothing to report.
        let hot = ok(
            &format!(
                "{MIN}user-quota = 3\nlog-level = \"debug\"\nallowed-peer-ip = \"10.0.0.1\"\n\
                 relay-coalesce-us = 100\n"
            ),
            &[],
        );
        assert!(run.restart_required(&hot).is_empty());
        let cold = ok(
            &format!("{MIN}listening-port = 3500\nrelay-threads = 3\nmin-port = 50000\n"),
            &[],
        );
        assert_eq!(
            run.restart_required(&cold),
            [
                "listening-ip / listening-port / no-udp",
                "listening-ip / listening-port / no-tcp",
                "relay-threads",
                "min-port / max-port"
            ]
        );
    }

    #[test]
    fn operations_keys() {
        // Off by default; metrics on loopback:9641 when switched on.
        let c = ok(MIN, &[]);
        assert!(c.ops.prometheus.is_none() && c.ops.admin.is_none() && !c.ops.test_page);
        assert_eq!(c.ops.drain_timeout, Duration::from_secs(3600));
        assert!(c.engine.alternate_servers.is_empty());
        let c = ok(&format!("{MIN}prometheus = true\n"), &[]);
        assert_eq!(c.ops.prometheus, Some("127.0.0.1:9641".parse().unwrap()));
        let c = ok(
            MIN,
            &[
                "--prometheus",
                "--prometheus-port",
                "9000",
                "--prometheus-address",
                "::1",
            ],
        );
        assert_eq!(c.ops.prometheus, Some("[::1]:9000".parse().unwrap()));

        let tok = "admin-token = \"0123456789abcdef\"\n";
        let c = ok(
            &format!("{MIN}admin-listen = \"127.0.0.1:9642\"\n{tok}"),
            &[],
        );
        let a = c.ops.admin.as_ref().unwrap();
        assert_eq!(a.listen, "127.0.0.1:9642".parse().unwrap());
        assert_eq!(a.token, "0123456789abcdef");
        assert!(
            !format!("{:?}", c.ops).contains("0123456789abcdef"),
            "token hidden"
        );
        let sum = c.summary();
        assert!(!sum.contains("0123456789abcdef"), "{sum}");
        assert!(
            sum.contains("admin API:         127.0.0.1:9642 (token hidden)"),
            "{sum}"
        );
        assert!(sum.contains("metrics:           off"), "{sum}");
        assert!(
            err(&format!("{MIN}admin-listen = \"0.0.0.0:9642\"\n{tok}"), &[])
                .contains("key 'admin-listen': 0.0.0.0:9642 is not a loopback address"),
        );
        ok(
            &format!("{MIN}admin-listen = \"0.0.0.0:9642\"\nadmin-allow-remote = true\n{tok}"),
            &[],
        );
        assert!(
            err(&format!("{MIN}admin-listen = \"127.0.0.1:9642\"\n"), &[])
                .contains("needs admin-token or admin-token-file")
        );
        assert!(err(
            &format!("{MIN}admin-listen = \"127.0.0.1:9642\"\nadmin-token = \"short\"\n"),
            &[]
        )
        .contains("key 'admin-token': the token must be at least 16 characters"));
        assert!(
            err(&format!("{MIN}admin-listen = \"localhost:1\"\n{tok}"), &[])
                .contains("is not an IP:PORT address")
        );
        let dir = std::env::temp_dir().join(format!("ferroturn-token-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        fs::write(&f, "abcdefghijklmnopqrstuvwxyz\nignored\n").unwrap();
        let c = ok(
            &format!(
                "{MIN}admin-listen = \"[::1]:9642\"\nadmin-token-file = \"{}\"\n",
                f.display()
            ),
            &[],
        );
        assert_eq!(c.ops.admin.unwrap().token, "abcdefghijklmnopqrstuvwxyz");
        assert!(err(
            &format!(
                "{MIN}admin-listen = \"[::1]:9642\"\nadmin-token-file = \"{}/nope\"\n",
                dir.display()
            ),
            &[]
        )
        .contains("key 'admin-token-file': cannot read"));
        let _ = fs::remove_dir_all(&dir);

        let c = ok(
            &format!("{MIN}alternate-server = [\"192.0.2.1\", \"[2001:db8::1]:5000\"]\n"),
            &[],
        );
        assert_eq!(
            c.engine.alternate_servers,
            [
                "192.0.2.1:3478".parse().unwrap(),
                "[2001:db8::1]:5000".parse::<SocketAddr>().unwrap()
            ]
        );
        assert!(err(&format!("{MIN}alternate-server = \"nope\"\n"), &[])
            .contains("key 'alternate-server': \"nope\" is not an IP or IP:PORT address"));
        assert!(err(&format!("{MIN}drain-timeout = 0\n"), &[]).contains("key 'drain-timeout'"));
        assert_eq!(
            ok(MIN, &["--drain-timeout", "5"]).ops.drain_timeout,
            Duration::from_secs(5)
        );

        assert!(err(&format!("{MIN}test-page = true\n"), &[])
            .contains("key 'test-page': is served on the admin listener"));
        assert!(err(
            &format!("{MIN}test-page = true\nadmin-listen = \"127.0.0.1:1\"\n{tok}"),
            &[]
        )
        .contains("set use-auth-secret and static-auth-secret"));
        ok(
            &format!(
                "{MIN}test-page = true\nadmin-listen = \"127.0.0.1:1\"\n{tok}use-auth-secret = true\n\
                 static-auth-secret = \"s\"\n"
            ),
            &[],
        );
    }
}
