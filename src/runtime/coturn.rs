//! coturn migration: read a coturn `turnserver.conf` and produce the equivalent ferroturn TOML
//! (`ferroturn convert FILE`, `--coturn-config FILE`).
//!
//! coturn's file is one option per line, `name=value`, `name value` or a bare `name` for a
//! switch, `#` comments, names as the long command-line options without the dashes. Every
//! line is either mapped to a TOML key, recognised as already being ferroturn's behaviour
//! (a comment in the output), or reported as ignored with its line number and the reason.
//!
//! [`OPTIONS`] is the one table that decides; options marked [`Map::NotYet`] are ones ferroturn
//! plans to support (flip them to a mapping when the key exists in `config.rs`).
use std::fmt::{self, Write};

/// What to do with one coturn option.
#[derive(Clone, Copy, Debug)]
enum Map {
    /// A string value, same key.
    Str(&'static str),
    /// An integer value, same key.
    Int(&'static str),
    /// An integer value; a bare switch means this default (coturn's `stale-nonce`).
    IntOr(&'static str, i64),
    /// A repeatable option: a list of strings.
    List(&'static str),
    /// A switch that sets a boolean key to true.
    Flag(&'static str),
    /// A switch that sets `log-level`.
    Level(&'static str),
    /// Already how ferroturn behaves: kept as a comment in the output, not reported.
    Builtin(&'static str),
    /// Planned in ferroturn but not in this build: reported as "not supported yet".
    NotYet,
    /// Deliberately not supported: reported with this reason.
    No(&'static str),
    /// Insecure, refused: reported with this reason.
    Refused(&'static str),
}

use Map::*;

/// Every coturn option ferroturn knows about. Options not listed are reported as unknown.
const OPTIONS: &[(&str, Map)] = &[
    // --- listeners ---------------------------------------------------------------------------
    ("listening-ip", List("listening-ip")),
    ("listening-port", Int("listening-port")),
    ("tls-listening-port", Int("tls-listening-port")),
    ("cert", Str("cert")),
    ("pkey", Str("pkey")),
    ("no-udp", Flag("no-udp")),
    ("no-tcp", Flag("no-tcp")),
    ("no-tls", Flag("no-tls")),
    ("no-dtls", Builtin("ferroturn has no DTLS listener")),
    (
        "no-tlsv1",
        Builtin("TLS 1.0 is never offered (rustls: TLS 1.2 and 1.3)"),
    ),
    (
        "no-tlsv1_1",
        Builtin("TLS 1.1 is never offered (rustls: TLS 1.2 and 1.3)"),
    ),
    (
        "no-tlsv1_2",
        No("TLS 1.2 stays on: many WebRTC clients still need it"),
    ),
    (
        "listening-device",
        No("not supported: bind to an address with listening-ip"),
    ),
    ("alt-listening-port", Int("alt-listening-port")),
    (
        "alt-tls-listening-port",
        No("not supported: RFC 5780 is served over UDP only"),
    ),
    ("aux-server", No("not supported")),
    (
        "udp-self-balance",
        No("not supported: SO_REUSEPORT shards balance UDP already"),
    ),
    ("tcp-proxy-port", No("not supported")),
    // --- relay -------------------------------------------------------------------------------
    ("relay-ip", List("relay-ip")),
    ("external-ip", List("external-ip")),
    ("min-port", Int("min-port")),
    ("max-port", Int("max-port")),
    ("relay-threads", Int("relay-threads")),
    (
        "relay-device",
        No("not supported: bind to an address with relay-ip"),
    ),
    (
        "no-tcp-relay",
        No("not supported: RFC 6062 TCP relaying is always available"),
    ),
    (
        "no-udp-relay",
        No("not supported: UDP relaying is always available"),
    ),
    (
        "server-relay",
        Refused("insecure and refused: lets the server relay to itself"),
    ),
    (
        "keep-address-family",
        Builtin("RFC 8656 address family rules are always applied"),
    ),
    (
        "allocation-default-address-family",
        No("not supported: IPv4 is the default (RFC 8656 §7.2)"),
    ),
    // --- authentication ----------------------------------------------------------------------
    ("realm", Str("realm")),
    ("user", List("user")),
    (
        "lt-cred-mech",
        Builtin("long-term credentials are always on"),
    ),
    ("use-auth-secret", Flag("use-auth-secret")),
    ("static-auth-secret", List("static-auth-secret")),
    (
        "no-auth",
        Refused("insecure and refused: ferroturn always authenticates TURN requests"),
    ),
    (
        "st-cred-mech",
        No("not supported: short-term credentials are not used by TURN clients"),
    ),
    ("oauth", No("not supported")),
    (
        "server-name",
        No("not supported (used by coturn for OAuth)"),
    ),
    (
        "userdb",
        No("not supported: list users in the TOML file or use the REST API secret"),
    ),
    (
        "psql-userdb",
        No("not supported: list users in the TOML file or use the REST API secret"),
    ),
    (
        "mysql-userdb",
        No("not supported: list users in the TOML file or use the REST API secret"),
    ),
    (
        "mongo-userdb",
        No("not supported: list users in the TOML file or use the REST API secret"),
    ),
    (
        "redis-userdb",
        No("not supported: list users in the TOML file or use the REST API secret"),
    ),
    (
        "secure-stun",
        No("not supported: Binding requests are always answered without credentials"),
    ),
    ("check-origin-consistency", No("not supported")),
    ("stale-nonce", IntOr("stale-nonce", 600)),
    // --- limits ------------------------------------------------------------------------------
    ("user-quota", Int("user-quota")),
    ("total-quota", Int("total-quota")),
    ("max-bps", Int("max-bps")),
    (
        "bps-capacity",
        No(
            "not converted: coturn stops admitting sessions once their max-bps add up to it, \
            ferroturn's bps-capacity drops relayed packets over the rate instead; set it in the \
            TOML if that is what you want",
        ),
    ),
    ("max-allocate-lifetime", Int("max-allocate-lifetime")),
    (
        "channel-lifetime",
        No("not supported: RFC 8656 fixes it at 600 s (§12)"),
    ),
    (
        "permission-lifetime",
        No("not supported: RFC 8656 fixes it at 300 s (§9)"),
    ),
    ("max-allocate-timeout", No("not supported")),
    // --- peers -------------------------------------------------------------------------------
    ("allowed-peer-ip", List("allowed-peer-ip")),
    ("denied-peer-ip", List("denied-peer-ip")),
    ("allow-loopback-peers", Flag("allow-loopback-peers")),
    (
        "no-loopback-peers",
        Builtin("loopback peers are refused by default"),
    ),
    (
        "no-multicast-peers",
        Builtin("multicast peers are refused by default"),
    ),
    (
        "allow-multicast-peers",
        Refused("insecure and refused: multicast peers are always denied"),
    ),
    // --- STUN --------------------------------------------------------------------------------
    (
        "fingerprint",
        Builtin("FINGERPRINT is added whenever the request carries one (RFC 8489 §14.7)"),
    ),
    (
        "no-stun",
        No("not supported: Binding requests are always answered"),
    ),
    (
        "stun-only",
        No("not supported: ferroturn is always a TURN server too"),
    ),
    (
        "no-software-attribute",
        Builtin("SOFTWARE is not sent unless `software` is set"),
    ),
    ("mobility", No("not supported (RFC 8016)")),
    ("rfc5780", NotYet),
    (
        "no-rfc5780",
        Builtin("RFC 5780 NAT discovery is off by default"),
    ),
    (
        "response-origin-only-with-rfc5780",
        Builtin("RESPONSE-ORIGIN is not sent without RFC 5780"),
    ),
    // --- operations --------------------------------------------------------------------------
    ("log-file", Str("log-file")),
    ("verbose", Level("debug")),
    ("Verbose", Level("trace")),
    ("no-stdout-log", No("not supported: set log-file instead")),
    (
        "syslog",
        No("not supported: log to stdout, which systemd sends to the journal"),
    ),
    (
        "simple-log",
        Builtin("log-file is used as given, never renamed"),
    ),
    (
        "new-log-timestamp",
        Builtin("log timestamps are RFC 3339 UTC"),
    ),
    (
        "new-log-timestamp-format",
        No("not supported: log timestamps are RFC 3339 UTC"),
    ),
    ("log-binding", No("not supported")),
    (
        "pidfile",
        No("not supported: systemd tracks the process (Type=notify)"),
    ),
    (
        "proc-user",
        No(
            "not converted: the shipped systemd unit runs unprivileged already; without \
            systemd, set proc-user in the TOML",
        ),
    ),
    (
        "proc-group",
        No(
            "not converted: the shipped systemd unit runs unprivileged already; without \
            systemd, set proc-group in the TOML",
        ),
    ),
    ("prometheus", Flag("prometheus")),
    ("prometheus-port", Int("prometheus-port")),
    ("prometheus-address", Str("prometheus-address")),
    (
        "prometheus-username-labels",
        Flag("prometheus-username-labels"),
    ),
    (
        "alternate-server",
        No(
            "not converted: coturn redirects every Allocate there (load balancing), ferroturn \
            only while draining; set alternate-server in the TOML if that is what you want",
        ),
    ),
    (
        "tls-alternate-server",
        No("not supported: alternate-server covers every transport"),
    ),
    ("no-cli", Builtin("ferroturn has no telnet CLI")),
    (
        "cli-ip",
        No("not supported: coturn's telnet CLI has no equivalent"),
    ),
    (
        "cli-port",
        No("not supported: coturn's telnet CLI has no equivalent"),
    ),
    (
        "cli-password",
        No("not supported: coturn's telnet CLI has no equivalent"),
    ),
    (
        "cli-max-output-sessions",
        No("not supported: coturn's telnet CLI has no equivalent"),
    ),
    (
        "web-admin",
        No("not supported: coturn's web admin has no equivalent"),
    ),
    (
        "web-admin-ip",
        No("not supported: coturn's web admin has no equivalent"),
    ),
    (
        "web-admin-port",
        No("not supported: coturn's web admin has no equivalent"),
    ),
    (
        "web-admin-listen-on-workers",
        No("not supported: coturn's web admin has no equivalent"),
    ),
    (
        "CA-file",
        No("not supported: client certificates are not requested"),
    ),
    ("dh-file", No("not supported: rustls uses ECDHE only")),
    ("dh566", No("not supported: rustls uses ECDHE only")),
    ("dh1066", No("not supported: rustls uses ECDHE only")),
    (
        "cipher-list",
        No("not supported: rustls' default cipher suites are used"),
    ),
    (
        "ec-curve-name",
        No("not supported: rustls' default key exchange groups are used"),
    ),
    ("no-dynamic-ip-list", No("not supported")),
    ("no-dynamic-realms", No("not supported")),
    ("db", No("not supported")),
    (
        "sha256",
        No("not supported: the algorithm is negotiated per RFC 8489 §9.2.3"),
    ),
];

/// A coturn line that has no effect in ferroturn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ignored {
    /// 1-based line number in the coturn file.
    pub line: usize,
    pub option: String,
    pub reason: String,
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}: '{}' ignored: {}",
            self.line, self.option, self.reason
        )
    }
}

/// The result of a conversion.
#[derive(Clone, Debug)]
pub struct Converted {
    /// ferroturn TOML (with comments naming the coturn lines).
    pub toml: String,
    /// Lines that have no effect, in file order.
    pub ignored: Vec<Ignored>,
}

/// A value that cannot be converted (e.g. `listening-port=abc`): one line, like config errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvertError {
    pub line: usize,
    pub option: String,
    pub message: String,
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: '{}': {}", self.line, self.option, self.message)
    }
}

impl std::error::Error for ConvertError {}

enum Val {
    Str(String),
    Int(i64),
    Bool(bool),
    List(Vec<String>),
}

/// Convert coturn `turnserver.conf` text into ferroturn TOML.
pub fn convert(text: &str) -> Result<Converted, ConvertError> {
    // (toml key, value, coturn line numbers that set it), in first-seen order.
    let mut out: Vec<(&'static str, Val, Vec<usize>)> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut ignored = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        // coturn accepts `name=value`, `name value` and `--name=value`.
        let l = l.trim_start_matches('-');
        let (name, value) = match l.find(|c: char| c == '=' || c.is_whitespace()) {
            Some(at) => {
                // From `at`, not `at + 1`: the separator may be a multi-byte space (U+00A0
                // pasted from a web page), and the trim takes it off anyway.
                let v = l[at..].trim_start_matches(|c: char| c == '=' || c.is_whitespace());
                (&l[..at], Some(unquote(v.trim())))
            }
            None => (l, None),
        };
        let value = value.filter(|v| !v.is_empty());
        let err = |message: String| ConvertError {
            line,
            option: name.to_owned(),
            message,
        };
        let Some(&(_, map)) = OPTIONS.iter().find(|(n, _)| *n == name) else {
            ignored.push(Ignored {
                line,
                option: name.to_owned(),
                reason: "unknown coturn option".into(),
            });
            continue;
        };
        let need = || value.clone().ok_or_else(|| err("needs a value".into()));
        let int = |v: &str| {
            v.parse::<i64>()
                .map_err(|_| err(format!("{v:?} is not a number")))
        };
        let (key, val) = match map {
            Str(k) => (k, Val::Str(need()?)),
            Int(k) => (k, Val::Int(int(&need()?)?)),
            IntOr(k, d) => match &value {
                Some(v) => (k, Val::Int(int(v)?)),
                None => (k, Val::Int(d)),
            },
            List(k) => (k, Val::List(vec![need()?])),
            Flag(k) => {
                if value.is_some() && !is_true(value.as_deref()) {
                    // coturn switches take no value; "no-udp=false" is not something it reads.
                    return Err(err("is a switch and takes no value".into()));
                }
                (k, Val::Bool(true))
            }
            Level(level) => ("log-level", Val::Str(level.to_owned())),
            Builtin(why) => {
                notes.push(format!("# line {line}: {name}: {why}"));
                continue;
            }
            NotYet => {
                ignored.push(Ignored {
                    line,
                    option: name.to_owned(),
                    reason: "not supported yet".into(),
                });
                continue;
            }
            No(why) | Refused(why) => {
                ignored.push(Ignored {
                    line,
                    option: name.to_owned(),
                    reason: why.to_owned(),
                });
                continue;
            }
        };
        match out.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, Val::List(v), lines)) => {
                if let Val::List(new) = val {
                    v.extend(new);
                }
                lines.push(line);
            }
            Some((_, old, lines)) => {
                // coturn: the last one wins.
                for &l in lines.iter() {
                    ignored.push(Ignored {
                        line: l,
                        option: name.to_owned(),
                        reason: format!("overridden by line {line}"),
                    });
                }
                *old = val;
                *lines = vec![line];
            }
            None => out.push((key, val, vec![line])),
        }
    }
    ignored.sort_by_key(|i| i.line);

    let mut toml =
        String::from("# Converted from a coturn turnserver.conf by `ferroturn convert`.\n");
    for (key, val, lines) in &out {
        let from = lines
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let v = match val {
            Val::Str(s) => toml_str(s),
            Val::Int(n) => n.to_string(),
            Val::Bool(b) => b.to_string(),
            Val::List(v) => format!(
                "[{}]",
                v.iter().map(|s| toml_str(s)).collect::<Vec<_>>().join(", ")
            ),
        };
        let _ = writeln!(toml, "{key} = {v}  # line {from}");
    }
    if !notes.is_empty() {
        toml.push_str("\n# Already ferroturn's behaviour:\n");
        for n in &notes {
            let _ = writeln!(toml, "{n}");
        }
    }
    Ok(Converted { toml, ignored })
}

fn is_true(v: Option<&str>) -> bool {
    matches!(v, None | Some("1" | "true" | "yes" | "on"))
}

/// coturn allows `realm="example.org"`.
fn unquote(v: &str) -> String {
    let q = |c| v.len() >= 2 && v.starts_with(c) && v.ends_with(c);
    if q('"') || q('\'') {
        v[1..v.len() - 1].to_owned()
    } else {
        v.to_owned()
    }
}

/// A TOML basic string (escapes quotes, backslashes and control characters).
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_values_lists_and_switches() {
        let c = convert(
            "# comment\n\
             listening-port=3479\n\
             listening-ip=10.0.0.1\n\
             listening-ip 10.0.0.2\n\
             --realm=\"example.org\"\n\
             user=a:b\n\
             user=c:0x0123456789abcdef0123456789abcdef\n\
             no-tcp\n\
             verbose\n\
             stale-nonce\n\
             lt-cred-mech\n\
             prometheus\n\
             prometheus-port=9642\n",
        )
        .unwrap();
        let v: toml::Table = toml::from_str(&c.toml).unwrap();
        assert_eq!(v["listening-port"].as_integer(), Some(3479));
        assert_eq!(
            v["listening-ip"].as_array().unwrap().len(),
            2,
            "repeatable options accumulate"
        );
        assert_eq!(v["realm"].as_str(), Some("example.org"));
        assert_eq!(
            v["user"].as_array().unwrap()[1].as_str(),
            Some("c:0x0123456789abcdef0123456789abcdef")
        );
        assert_eq!(v["no-tcp"].as_bool(), Some(true));
        assert_eq!(v["log-level"].as_str(), Some("debug"));
        assert_eq!(v["stale-nonce"].as_integer(), Some(600));
        assert!(c.toml.contains("# line 11: lt-cred-mech"));
        assert_eq!(v["prometheus"].as_bool(), Some(true));
        assert_eq!(v["prometheus-port"].as_integer(), Some(9642));
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);
    }

    #[test]
    fn reports_ignored_lines_with_numbers_and_reasons() {
        let c = convert("realm=a\nno-auth\nrfc5780\nfoo-bar=1\nrealm=b\n").unwrap();
        let lines: Vec<String> = c.ignored.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "line 1: 'realm' ignored: overridden by line 5",
                "line 2: 'no-auth' ignored: insecure and refused: ferroturn always authenticates TURN requests",
                "line 3: 'rfc5780' ignored: not supported yet",
                "line 4: 'foo-bar' ignored: unknown coturn option",
            ]
        );
        let v: toml::Table = toml::from_str(&c.toml).unwrap();
        assert_eq!(v["realm"].as_str(), Some("b"));
    }

    #[test]
    fn bad_values_are_errors_not_silence() {
        let e = convert("x=1\nmin-port=abc\n").unwrap_err();
        assert_eq!(e.to_string(), "line 2: 'min-port': \"abc\" is not a number");
        assert_eq!(convert("realm\n").unwrap_err().message, "needs a value");
        assert!(convert("no-udp=false\n").is_err());
    }

    #[test]
    fn multibyte_space_separator_is_a_separator() {
        // A no-break space (U+00A0, two bytes) between name and value, as pasted from a web
        // page: a separator like any whitespace, not a panic (this runs again on SIGHUP).
        let c = convert("realm\u{a0}example.org\nmin-port\u{a0}=\u{a0}50000\n").unwrap();
        let v: toml::Table = toml::from_str(&c.toml).unwrap();
        assert_eq!(v["realm"].as_str(), Some("example.org"));
        assert_eq!(v["min-port"].as_integer(), Some(50000));
    }

    #[test]
    fn strings_are_escaped() {
        let c = convert("realm=a\"b\\c\n").unwrap();
        let v: toml::Table = toml::from_str(&c.toml).unwrap();
        assert_eq!(v["realm"].as_str(), Some("a\"b\\c"));
    }

    #[test]
    fn table_has_no_duplicates() {
        for (i, (a, _)) in OPTIONS.iter().enumerate() {
            assert!(
                OPTIONS[i + 1..].iter().all(|(b, _)| a != b),
                "{a} listed twice"
            );
        }
    }
}
