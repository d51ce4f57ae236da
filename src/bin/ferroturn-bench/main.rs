//! `ferroturn-bench`: a TURN load client in the spirit of coturn's `turnutils_uclient`, for
//! any TURN server (ferroturn, coturn, ...).
//!
//! ```text
//! ferroturn-bench --server 127.0.0.1:3478 --user u --password p -m 20 --rate 20000 --duration 10
//! ferroturn-bench --server 127.0.0.1:3478 --secret S -m 40 --c2c --saturate
//! ferroturn-bench --server 127.0.0.1:3478 --user u --password p --allocate-only -m 10000 --concurrency 64
//! ```
//!
//! Design (see also README.md "Benchmarking"):
//! - setup and teardown (`control.rs`): every client is its own socket and allocation; requests
//!   run with `--concurrency` transactions outstanding over non-blocking sockets and one
//!   edge-triggered epoll set (one recv per UDP answer, timers looked at only when due):
//!   Allocate (401 → realm/nonce → MESSAGE-INTEGRITY; 438 → new nonce), CreatePermission,
//!   ChannelBind (channel 0x4000 + i), at the end Refresh lifetime 0;
//! - data (`worker.rs`): `--threads` workers each own a slice of the clients, pace their share
//!   of `--rate` on a cumulative schedule in small bursts per tick (epoll_pwait2, 1 µs timer
//!   slack), and receive with epoll + recvmmsg; every payload carries the sender, an epoch
//!   (warm-up / measurement / saturation step), a sequence number and its send time;
//! - latency (`hist.rs`): a log-linear histogram in µs (exact below 256 µs, < 0.8 % above);
//! - the built-in echo peer (`peer.rs`) sends every datagram back (recvmmsg/sendmmsg).
mod conn;
mod control;
mod epoll;
mod hist;
mod mmsg;
mod peer;
mod proto;
mod tls;
mod worker;

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde_json::{json, Value};

use conn::{Conn, Transport};
use control::{drive, Client, ControlSet, DriveStats};
use hist::Histogram;
use proto::{Auth, Req, PAYLOAD_HEADER};
use worker::{EpochStats, Mode, Steer, WorkerCfg, WorkerStats};

/// Set by SIGINT/SIGTERM: finish the current phase early, clean up, report.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

const NETNS_ENV: &str = "FERROTURN_BENCH_IN_NETNS";

/// TURN load generator: allocations, ChannelData / Send indications through any TURN server,
/// paced rate or saturation search, RTT percentiles, allocations per second.
#[derive(Parser, Debug, Clone)]
#[command(name = "ferroturn-bench", version)]
struct Args {
    /// TURN server HOST:PORT (port defaults to 3478).
    #[arg(
        long,
        short = 's',
        value_name = "HOST:PORT",
        required_unless_present = "peer_only"
    )]
    server: Option<String>,
    /// Long-term credential user name (with --secret: the part after "expiry:", default "bench").
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// Long-term credential password.
    #[arg(
        long,
        short = 'w',
        env = "FERROTURN_BENCH_PASSWORD",
        hide_env_values = true
    )]
    password: Option<String>,
    /// Realm to use instead of the one the server sends in its 401.
    #[arg(long)]
    realm: Option<String>,
    /// TURN REST API shared secret: user "<now+ttl>:<user>", password base64(HMAC-SHA1).
    #[arg(
        long,
        env = "FERROTURN_BENCH_SECRET",
        hide_env_values = true,
        conflicts_with = "password"
    )]
    secret: Option<String>,
    /// Lifetime of REST API credentials, seconds.
    #[arg(long, default_value_t = 86400)]
    rest_ttl: u64,

    /// Number of clients, each with its own socket and allocation.
    #[arg(long, short = 'm', default_value_t = 1)]
    allocations: usize,
    /// Data framing.
    #[arg(long, value_enum, default_value_t = Mode::Channel)]
    mode: Mode,
    /// Client-to-server transport (TCP and TLS: STUN/ChannelData framed on a stream, RFC 8656
    /// §12.5). The default port is 5349 for tls, else 3478.
    #[arg(long, value_enum, default_value_t = Transport::Udp)]
    transport: Transport,
    /// --transport tls: trust the CA certificates in this PEM file [default: the system bundle].
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// --transport tls: accept any server certificate (handshake signatures are still checked).
    #[arg(long)]
    tls_insecure: bool,
    /// --transport tls: the name to check the certificate against (and send as SNI)
    /// [default: the host of --server].
    #[arg(long, value_name = "NAME")]
    tls_name: Option<String>,
    /// Payload bytes per packet (at least 24: sender, epoch, sequence, timestamp).
    #[arg(long, short = 'l', default_value_t = 100)]
    size: usize,
    /// Total offered packets/s over all clients [default: 1000; --saturate: start rate 5000].
    #[arg(long)]
    rate: Option<f64>,
    /// Saturation search: raise the rate by --step-factor every --step-secs until a step
    /// sends < 99 % of its offered rate or loses > 1 % (after --step-retries re-runs), then
    /// halve the gap between the last pass and the first loss --refine times; report the
    /// highest rate that passed.
    #[arg(long)]
    saturate: bool,
    /// Length of one saturation step (each is followed by --drain).
    #[arg(long, default_value_t = 3.0, value_name = "SECS")]
    step_secs: f64,
    /// Rate multiplier from one saturation step to the next.
    #[arg(long, default_value_t = 1.25)]
    step_factor: f64,
    /// Run a failing saturation step again this many times before stopping (noisy hosts).
    #[arg(long, default_value_t = 1, value_name = "N")]
    step_retries: u32,
    /// Bisection steps after the first step lost > 1 % (between it and the last pass), so the
    /// result is not only a point on the --step-factor grid. A client-bound step ends the
    /// search at once.
    #[arg(long, default_value_t = 3, value_name = "N")]
    refine: u32,
    /// Measurement time, seconds [default: 10]; with --saturate the cap on all steps [120].
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Traffic before the measurement (not counted), seconds.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    warmup: f64,
    /// Wait after the last send before counting what is lost, seconds.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    drain: f64,

    /// External UDP echo peer (e.g. turnutils_peer) instead of the built-in one.
    #[arg(long, value_name = "ADDR", conflicts_with = "c2c")]
    peer: Option<String>,
    /// Where the built-in echo peer listens (must be reachable from the server's relay).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    peer_bind: SocketAddr,
    /// Only run the echo peer on --peer-bind until Ctrl-C (for a peer in another namespace).
    #[arg(long)]
    peer_only: bool,
    /// Client to client (uclient -y): clients in pairs, each sends to its partner's relayed
    /// address; latency is one-way (same process clock) instead of round trip.
    #[arg(long, short = 'y')]
    c2c: bool,

    /// Data-path worker threads (each owns a share of the clients).
    #[arg(long, short = 't', default_value_t = 1)]
    threads: usize,
    /// Busy-poll instead of sleeping: between data ticks, and while control requests
    /// (allocations, teardown) are outstanding (lowest latency, burns a core).
    #[arg(long)]
    spin: bool,
    /// Minimum pacing tick, microseconds: packets due are sent in one burst per tick, so at
    /// 100 k pps about 10 per tick. Smaller = smoother, but more wake-ups (client CPU).
    #[arg(long, default_value_t = 100)]
    tick_us: u64,
    /// Packets each client sends back to back per turn, like the packets of a video frame
    /// (1 = evenly interleaved; the rate stays --rate overall). At most 32.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=32))]
    burst: u16,

    /// Only measure authenticated allocations per second (Allocate 401 + Allocate), then
    /// delete them (Refresh 0) unless --keep.
    #[arg(long)]
    allocate_only: bool,
    /// Outstanding transactions during setup / --allocate-only.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Do not delete the allocations at the end (they expire after their lifetime).
    #[arg(long)]
    keep: bool,
    /// With --allocate-only: keep the allocations alive this long (refreshing) before exiting.
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    hold: f64,
    /// Requested allocation lifetime, seconds.
    #[arg(long, default_value_t = 600)]
    lifetime: u32,
    /// Refresh allocation, permission and channel this often during long runs, seconds.
    #[arg(long, default_value_t = 240.0, value_name = "SECS")]
    refresh_secs: f64,
    /// Give up on a request (and on an unreachable server) after this long, seconds.
    #[arg(long, default_value_t = 3.0, value_name = "SECS")]
    timeout: f64,
    /// Socket send/receive buffer per client socket, bytes (0 = system default).
    #[arg(long, default_value_t = 1 << 20)]
    sock_buf: usize,

    /// Print one JSON object instead of the text summary.
    #[arg(long)]
    json: bool,
    /// No progress line on stderr.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Run inside network namespace NAME (re-executes via `ip netns exec NAME`).
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("ferroturn-bench: {msg}");
    ExitCode::from(1)
}

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn install_signals() {
    // SAFETY: an async-signal-safe handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// The host part of a `--server` value (`h`, `h:p`, `1.2.3.4:p`, `[v6]:p`, bare `v6`).
fn host_of(s: &str) -> String {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return a.ip().to_string();
    }
    if s.parse::<std::net::IpAddr>().is_ok() {
        return s.to_string();
    }
    match s.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h.to_string(),
        _ => s.to_string(),
    }
}

fn resolve(s: &str, default_port: u16) -> Result<SocketAddr, String> {
    let with_port = if s.parse::<SocketAddr>().is_ok()
        || s.rsplit_once(':').is_some_and(|(h, p)| {
            !h.is_empty() && !h.ends_with(':') && p.parse::<u16>().is_ok() && !h.contains(':')
        }) {
        s.to_string()
    } else if s.contains(':') && !s.starts_with('[') {
        format!("[{s}]:{default_port}") // bare IPv6
    } else {
        format!("{s}:{default_port}")
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {s}: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot resolve {s}"))
}

/// `--netns NAME`: exec `ip netns exec NAME <this binary> <same args>` once.
fn reexec_in_netns(ns: &str) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return fail(format!("--netns: cannot find own executable: {e}")),
    };
    let err = std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(NETNS_ENV, ns)
        .exec();
    fail(format!("--netns {ns}: cannot run `ip netns exec`: {err}"))
}

fn credentials(a: &Args) -> Result<(String, String), String> {
    if let Some(secret) = &a.secret {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let user = format!(
            "{}:{}",
            now + a.rest_ttl,
            a.user.as_deref().unwrap_or("bench")
        );
        let pass = ferroturn::engine::auth::rest_password(secret, &user);
        return Ok((user, pass));
    }
    match (&a.user, &a.password) {
        (Some(u), Some(p)) => Ok((u.clone(), p.clone())),
        _ => Err("credentials needed: --user and --password, or --secret".into()),
    }
}

fn main() -> ExitCode {
    let a = Args::parse();
    if let Some(ns) = &a.netns {
        if std::env::var(NETNS_ENV).ok().as_deref() != Some(ns.as_str()) {
            return reexec_in_netns(ns);
        }
    }
    install_signals();
    raise_fd_limit();
    if a.peer_only {
        return run_peer_only(&a);
    }
    if a.size < PAYLOAD_HEADER || a.size > 16000 {
        return fail(format!("--size must be {PAYLOAD_HEADER}..=16000"));
    }
    if a.threads == 0 || a.allocations == 0 {
        return fail("--threads and --allocations must be at least 1");
    }
    let default_port = if a.transport == Transport::Tls {
        5349
    } else {
        3478
    };
    let server_arg = a.server.as_deref().unwrap_or_default();
    let server = match resolve(server_arg, default_port) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    if a.transport == Transport::Tls {
        let host = host_of(server_arg);
        if let Err(e) = tls::setup(
            &host,
            a.tls_ca.as_deref(),
            a.tls_insecure,
            a.tls_name.as_deref(),
        ) {
            return fail(e);
        }
    }
    let (user, pass) = match credentials(&a) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let timeout = Duration::from_secs_f64(a.timeout.max(0.1));
    let mut set = match ControlSet::new() {
        Ok(s) => s,
        Err(e) => return fail(format!("epoll: {e}")),
    };
    set.spin = a.spin;
    // one socket per client, registered for the control path once, before anything is timed
    let mut clients = Vec::with_capacity(a.allocations);
    for i in 0..a.allocations {
        let sock_buf = if a.allocate_only { 0 } else { a.sock_buf };
        let mut c = match Conn::open(a.transport, server, sock_buf, timeout) {
            Ok(c) => Client::new(i, c, Auth::new(user.clone(), pass.clone(), a.realm.clone())),
            Err(e) => return fail(format!("client {i}: cannot open a socket to {server}: {e}")),
        };
        if let Err(e) = set.register(&mut c) {
            return fail(format!("client {i}: epoll_ctl: {e}"));
        }
        clients.push(c);
    }
    if a.allocate_only {
        run_allocate_only(&a, server, &mut set, clients, timeout)
    } else {
        run_data(&a, server, set, clients, timeout)
    }
}

fn run_peer_only(a: &Args) -> ExitCode {
    let mut p = match peer::EchoPeer::start(a.peer_bind, a.sock_buf) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    eprintln!("ferroturn-bench: echo peer on {} (Ctrl-C to stop)", p.addr);
    let mut last = 0;
    let mut t = Instant::now();
    while !INTERRUPTED.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if t.elapsed() < Duration::from_secs(1) {
            continue;
        }
        t = Instant::now();
        let n = p.echoed.load(Ordering::Relaxed);
        if !a.quiet && n != last {
            eprintln!("echoed {} ({}/s)", n, n - last);
        }
        last = n;
    }
    p.stop();
    ExitCode::SUCCESS
}

/// A rate as a JSON integer (rounded).
fn int(x: f64) -> Value {
    json!(x.round().max(0.0) as u64)
}

fn errors_json(st: &DriveStats) -> Value {
    Value::Object(
        st.errors
            .iter()
            .map(|(k, (n, _))| (k.clone(), json!(n)))
            .collect(),
    )
}

fn errors_text(st: &DriveStats) -> String {
    st.errors
        .iter()
        .map(|(k, (n, msg))| format!("{k} x{n} ({msg})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// " [errors]" and " (N retried after 437 on a new socket)" for the allocation line.
fn alloc_notes(st: &DriveStats) -> String {
    let mut s = String::new();
    if !st.errors.is_empty() {
        s += &format!(" [{}]", errors_text(st));
    }
    if st.reopened_437 > 0 {
        s += &format!(" ({} retried after 437 on a new socket)", st.reopened_437);
    }
    s
}

fn lat_json(h: &Histogram) -> Value {
    json!({
        "samples": h.n,
        "min": if h.n == 0 { 0 } else { h.min },
        "p50": h.quantile(0.5),
        "p90": h.quantile(0.9),
        "p99": h.quantile(0.99),
        "p999": h.quantile(0.999),
        "max": h.max,
        "mean": (h.mean() * 10.0).round() / 10.0,
    })
}

fn lat_text(h: &Histogram) -> String {
    if h.n == 0 {
        return "no samples".into();
    }
    format!(
        "p50 {}  p99 {}  p99.9 {}  max {}  mean {:.0}  (min {}, {} samples)",
        h.quantile(0.5),
        h.quantile(0.99),
        h.quantile(0.999),
        h.max,
        h.mean(),
        h.min,
        h.n
    )
}

/// Delete (Refresh lifetime 0) every allocated client unless --keep.
fn teardown(
    a: &Args,
    set: &mut ControlSet,
    clients: &mut [Client],
    timeout: Duration,
    server: SocketAddr,
) -> Value {
    if a.keep {
        return json!({"kept": clients.iter().filter(|c| c.allocated).count()});
    }
    for c in clients.iter_mut() {
        c.failed = None;
        c.queue.clear();
        c.txn = None;
        if c.allocated {
            c.queue.push_back(Req::Refresh { lifetime: 0 });
        }
    }
    let was = INTERRUPTED.swap(false, Ordering::Relaxed);
    let st = drive(set, clients, a.concurrency, timeout, server, None);
    if was {
        INTERRUPTED.store(true, Ordering::Relaxed);
    }
    json!({"deleted": st.ok, "delete_failed": st.failed, "delete_errors": errors_json(&st)})
}

fn run_allocate_only(
    a: &Args,
    server: SocketAddr,
    set: &mut ControlSet,
    mut clients: Vec<Client>,
    timeout: Duration,
) -> ExitCode {
    for c in clients.iter_mut() {
        c.queue.push_back(Req::Allocate {
            lifetime: a.lifetime,
        });
    }
    if !a.quiet {
        eprintln!(
            "ferroturn-bench: {} allocations on {server} ({:?}), {} outstanding",
            a.allocations, a.transport, a.concurrency
        );
    }
    let reopen = || Conn::open(a.transport, server, 0, timeout);
    let st = drive(
        set,
        &mut clients,
        a.concurrency,
        timeout,
        server,
        Some(&reopen),
    );
    if let Some(msg) = &st.aborted {
        if st.allocs_ok == 0 || msg.starts_with("authentication") {
            let _ = teardown(a, set, &mut clients, timeout, server);
            return fail(msg);
        }
    }
    let per_s = st.allocs_ok as f64 / st.elapsed.as_secs_f64().max(1e-9);
    let mut held = 0.0;
    if a.hold > 0.0 {
        if !a.quiet {
            eprintln!(
                "ferroturn-bench: holding {} allocations for {:.0} s (pid {})",
                st.allocs_ok,
                a.hold,
                std::process::id()
            );
        }
        let t = Instant::now();
        let mut last_refresh = Instant::now();
        while t.elapsed().as_secs_f64() < a.hold && !INTERRUPTED.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            if last_refresh.elapsed().as_secs_f64() >= a.refresh_secs {
                for c in clients.iter_mut().filter(|c| c.allocated) {
                    c.failed = None;
                    c.queue.push_back(Req::Refresh {
                        lifetime: a.lifetime,
                    });
                }
                let r = drive(set, &mut clients, a.concurrency, timeout, server, None);
                if r.failed > 0 {
                    eprintln!(
                        "ferroturn-bench: {} refreshes failed: {}",
                        r.failed,
                        errors_text(&r)
                    );
                }
                last_refresh = Instant::now();
            }
        }
        held = t.elapsed().as_secs_f64();
    }
    let td = teardown(a, set, &mut clients, timeout, server);
    let report = json!({
        "mode": "allocate-only",
        "server": server.to_string(),
        "transport": format!("{:?}", a.transport).to_lowercase(),
        "requested": a.allocations,
        "concurrency": a.concurrency,
        "allocations_ok": st.allocs_ok,
        "allocations_failed": st.failed,
        "alloc_errors": errors_json(&st),
        "alloc_retried_437": st.reopened_437,
        "elapsed_s": st.elapsed.as_secs_f64(),
        "allocs_per_s": int(per_s),
        "alloc_latency_us": lat_json(&st.alloc_latency),
        "held_s": held,
        "teardown": td,
        "aborted": st.aborted,
    });
    if a.json {
        println!("{report}");
    } else {
        println!(
            "ferroturn-bench --allocate-only: {server} {:?}, {} allocations, {} outstanding",
            a.transport, a.allocations, a.concurrency
        );
        println!(
            "  allocations   {} ok, {} failed{}",
            st.allocs_ok,
            st.failed,
            alloc_notes(&st)
        );
        println!(
            "  rate          {:.0} allocs/s ({:.3} s)",
            per_s,
            st.elapsed.as_secs_f64()
        );
        println!("  latency (us)  {}", lat_text(&st.alloc_latency));
        println!("  teardown      {td}");
        if let Some(m) = &st.aborted {
            println!("  aborted       {m}");
        }
    }
    if st.allocs_ok == 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Sum of all workers' stats (snapshot).
fn collect(shared: &[Arc<Mutex<WorkerStats>>]) -> WorkerStats {
    let mut t = WorkerStats::default();
    for s in shared {
        let mut g = s.lock().unwrap_or_else(|e| e.into_inner());
        for (e, es) in g.epochs.iter().enumerate() {
            let d = t.epoch_mut(e as u32);
            d.sent += es.sent;
            d.delivered += es.delivered;
            d.send_drops += es.send_drops;
            d.skipped += es.skipped;
            d.hist.merge(&es.hist);
        }
        t.interval.merge(&g.interval);
        g.interval.clear();
        t.foreign += g.foreign;
        t.misdelivered += g.misdelivered;
        t.refresh_ok += g.refresh_ok;
        for (k, v) in &g.refresh_failed {
            *t.refresh_failed.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &g.errors {
            *t.errors.entry(k.clone()).or_default() += v;
        }
    }
    t
}

/// Progress on stderr once a second and sleeping in between, for `secs` (or until Ctrl-C).
struct Progress<'a> {
    shared: &'a [Arc<Mutex<WorkerStats>>],
    quiet: bool,
    t0: Instant,
    last: Instant,
    last_sent: u64,
    last_deliv: u64,
}

impl Progress<'_> {
    fn run_until(&mut self, end: Instant, label: &str) {
        loop {
            let now = Instant::now();
            if now >= end || INTERRUPTED.load(Ordering::Relaxed) {
                return;
            }
            let next = (self.last + Duration::from_secs(1)).min(end);
            std::thread::sleep(
                next.saturating_duration_since(now)
                    .min(Duration::from_millis(100)),
            );
            if Instant::now() >= self.last + Duration::from_secs(1) {
                self.tick(label);
            }
        }
    }

    fn tick(&mut self, label: &str) {
        let now = Instant::now();
        let s = collect(self.shared);
        let sent: u64 = s.epochs.iter().map(|e| e.sent).sum();
        let deliv: u64 = s.epochs.iter().map(|e| e.delivered).sum();
        let dt = (now - self.last).as_secs_f64();
        let ds = sent - self.last_sent;
        let dd = deliv - self.last_deliv;
        let loss = if ds > 0 {
            (1.0 - dd as f64 / ds as f64).max(0.0) * 100.0
        } else {
            0.0
        };
        if !self.quiet {
            let label = if label.is_empty() {
                String::new()
            } else {
                format!("{label} ")
            };
            eprintln!(
                "[{:6.1}s] {label}sent {:>8.0}/s delivered {:>8.0}/s loss {:5.2}% p99 {} us",
                (now - self.t0).as_secs_f64(),
                ds as f64 / dt,
                dd as f64 / dt,
                loss,
                s.interval.quantile(0.99)
            );
        }
        self.last = now;
        self.last_sent = sent;
        self.last_deliv = deliv;
    }
}

fn run_data(
    a: &Args,
    server: SocketAddr,
    mut set: ControlSet,
    mut clients: Vec<Client>,
    timeout: Duration,
) -> ExitCode {
    let duration = a.duration.unwrap_or(if a.saturate { 120.0 } else { 10.0 });
    let start_rate = a.rate.unwrap_or(if a.saturate { 5000.0 } else { 1000.0 });
    if start_rate <= 0.0 || !start_rate.is_finite() {
        return fail("--rate must be > 0");
    }
    if a.c2c && clients.len() < 2 {
        return fail("--c2c needs at least 2 allocations");
    }
    // the peer
    let mut echo = None;
    let peer_addr = if a.c2c {
        None
    } else if let Some(p) = &a.peer {
        match resolve(p, 3480) {
            Ok(x) => Some(x),
            Err(e) => return fail(e),
        }
    } else {
        if a.peer_bind.ip().is_loopback() && !server.ip().is_loopback() {
            return fail(format!(
                "the built-in echo peer listens on {} which the server {server} cannot reach: \
                 set --peer-bind to an address the relay can send to",
                a.peer_bind
            ));
        }
        match peer::EchoPeer::start(a.peer_bind, a.sock_buf) {
            Ok(p) => {
                let addr = p.addr;
                echo = Some(p);
                Some(addr)
            }
            Err(e) => return fail(e),
        }
    };

    // 1. allocations
    for c in clients.iter_mut() {
        c.queue.push_back(Req::Allocate {
            lifetime: a.lifetime,
        });
    }
    let reopen = || Conn::open(a.transport, server, a.sock_buf, timeout);
    let alloc = drive(
        &mut set,
        &mut clients,
        a.concurrency,
        timeout,
        server,
        Some(&reopen),
    );
    if let Some(msg) = &alloc.aborted {
        let _ = teardown(a, &mut set, &mut clients, timeout, server);
        return fail(msg);
    }
    let allocs_per_s = alloc.allocs_ok as f64 / alloc.elapsed.as_secs_f64().max(1e-9);
    let (mut ok, mut bad): (Vec<Client>, Vec<Client>) = clients
        .into_iter()
        .partition(|c| c.allocated && c.relayed.is_some());
    if ok.is_empty() {
        return fail(format!("no allocation succeeded: {}", errors_text(&alloc)));
    }
    // 2. peers, permissions, channels
    if a.c2c {
        if ok.len() % 2 == 1 {
            let last = ok.pop().expect("odd");
            eprintln!(
                "ferroturn-bench: odd number of allocations for --c2c, client {} idles",
                last.idx
            );
            bad.push(last);
        }
        for p in 0..ok.len() / 2 {
            let (x, y) = (ok[2 * p].relayed, ok[2 * p + 1].relayed);
            let (xi, yi) = (ok[2 * p].idx, ok[2 * p + 1].idx);
            ok[2 * p].peer = y;
            ok[2 * p + 1].peer = x;
            ok[2 * p].partner_idx = Some(yi);
            ok[2 * p + 1].partner_idx = Some(xi);
        }
    } else {
        for c in ok.iter_mut() {
            c.peer = peer_addr;
        }
    }
    for c in ok.iter_mut() {
        let peer = c.peer.expect("peer");
        c.queue.push_back(Req::CreatePermission { peer });
        if a.mode == Mode::Channel {
            c.queue.push_back(Req::ChannelBind {
                channel: c.channel,
                peer,
            });
        }
    }
    let bind = drive(&mut set, &mut ok, a.concurrency, timeout, server, None);
    if let Some(msg) = &bind.aborted {
        ok.append(&mut bad);
        let _ = teardown(a, &mut set, &mut ok, timeout, server);
        return fail(msg);
    }
    if bind.failed > 0 {
        eprintln!(
            "ferroturn-bench: {} permission/channel requests failed: {}",
            bind.failed,
            errors_text(&bind)
        );
    }
    let (mut ready, rest): (Vec<Client>, Vec<Client>) =
        ok.into_iter().partition(|c| c.failed.is_none());
    bad.extend(rest);
    if a.c2c {
        // a pair whose partner failed still sends, but nothing can come back: drop the loner
        let alive: std::collections::HashSet<SocketAddr> =
            ready.iter().filter_map(|c| c.relayed).collect();
        let (r, lone): (Vec<Client>, Vec<Client>) = ready
            .into_iter()
            .partition(|c| c.peer.is_some_and(|p| alive.contains(&p)));
        ready = r;
        bad.extend(lone);
    }
    if ready.is_empty() {
        let mut all = bad;
        let _ = teardown(a, &mut set, &mut all, timeout, server);
        return fail("no client got its permission/channel");
    }

    // 3. data; the control epoll set goes first (it would see every datagram of the run)
    drop(set);
    let n_ready = ready.len();
    let threads = a.threads.min(n_ready);
    let steer = Arc::new(Steer::default());
    let t0 = Instant::now();
    let mut shared = Vec::new();
    let mut handles = Vec::new();
    let per = n_ready.div_ceil(threads);
    let mut it = ready.into_iter();
    let refresh_every = Duration::from_secs_f64(
        a.refresh_secs
            .min(f64::from(a.lifetime.max(2)) / 2.0)
            .max(1.0),
    );
    for w in 0..threads {
        let part: Vec<Client> = it.by_ref().take(per).collect();
        if part.is_empty() {
            break;
        }
        let cfg = WorkerCfg {
            mode: a.mode,
            size: a.size,
            tick: Duration::from_micros(a.tick_us),
            spin: a.spin,
            burst: usize::from(a.burst),
            share: part.len() as f64 / n_ready as f64,
            lifetime: a.lifetime,
            refresh_every,
            timeout,
            t0,
        };
        let s = Arc::new(Mutex::new(WorkerStats::default()));
        match worker::spawn(w, part, cfg, steer.clone(), s.clone()) {
            Ok(h) => handles.push(h),
            Err(e) => return fail(format!("cannot start a worker thread: {e}")),
        }
        shared.push(s);
    }
    if !a.quiet {
        eprintln!(
            "ferroturn-bench: {n_ready} clients ready on {server} ({:?}, {:?}{}), {} worker thread(s), {}",
            a.transport,
            a.mode,
            if a.c2c { ", c2c" } else { "" },
            handles.len(),
            match peer_addr {
                Some(p) => format!("peer {p}"),
                None => "client to client".into(),
            }
        );
    }
    let mut prog = Progress {
        shared: &shared,
        quiet: a.quiet,
        t0: Instant::now(),
        last: Instant::now(),
        last_sent: 0,
        last_deliv: 0,
    };
    let mut steps: Vec<Value> = Vec::new();
    let mut best: Option<f64> = None;
    let mut stop_reason = String::new();
    let measured_epoch: u32;
    let measure_secs: f64;
    let mut offered = start_rate;
    let lead = Duration::from_millis(10);
    // Hard cap: whatever happens (a stuck socket, a server that stops answering), the data
    // phase ends within warm-up + duration + drain + 30 s.
    let cap = a.warmup + duration + a.drain + 30.0;
    let done = Arc::new(AtomicBool::new(false));
    {
        let done = done.clone();
        let _ = std::thread::Builder::new()
            .name("bench-watchdog".into())
            .spawn(move || {
                let t = Instant::now();
                while t.elapsed().as_secs_f64() < cap {
                    if done.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                eprintln!("ferroturn-bench: run exceeded its hard cap of {cap:.0} s; exiting");
                std::process::exit(3);
            });
    }
    // warm-up: epoch 0, not counted
    if a.warmup > 0.0 {
        let (_, end) = steer.begin(t0, 0, start_rate, a.warmup, lead);
        prog.run_until(end, "warmup");
    }
    if !a.saturate {
        let (start, end) = steer.begin(t0, 1, start_rate, duration, lead);
        prog.run_until(end, "");
        if INTERRUPTED.load(Ordering::Relaxed) {
            steer.halt();
        }
        measure_secs = (Instant::now().min(end) - start).as_secs_f64();
        prog.run_until(Instant::now() + Duration::from_secs_f64(a.drain), "drain");
        measured_epoch = 1;
    } else {
        let t_all = Instant::now();
        let mut rate = start_rate;
        let mut epoch = 1u32;
        let mut last_pass_epoch = 0u32;
        let mut retries_left = a.step_retries;
        let mut refine_left = a.refine;
        // The lowest rate that lost > 1 % (the bisection's upper end).
        let mut lost_at: Option<f64> = None;
        let secs = a.step_secs;
        loop {
            if INTERRUPTED.load(Ordering::Relaxed) {
                stop_reason = "interrupted".into();
                break;
            }
            if t_all.elapsed().as_secs_f64() + a.step_secs + a.drain > duration {
                stop_reason = format!("--duration {duration} s reached");
                break;
            }
            let (_, end) = steer.begin(t0, epoch, rate, secs, lead);
            prog.run_until(end, &format!("step {epoch} @{rate:.0}/s"));
            if INTERRUPTED.load(Ordering::Relaxed) {
                steer.halt();
                stop_reason = "interrupted".into();
                break;
            }
            prog.run_until(Instant::now() + Duration::from_secs_f64(a.drain), "drain");
            let s = collect(&shared);
            let es = s.epochs.get(epoch as usize).cloned().unwrap_or_default();
            let want = rate * secs;
            let loss = if es.sent > 0 {
                (1.0 - es.delivered as f64 / es.sent as f64) * 100.0
            } else {
                100.0
            };
            let kept_up = es.sent as f64 >= 0.99 * want;
            let pass = kept_up && loss <= 1.0;
            steps.push(json!({
                "epoch": epoch,
                "offered_pps": int(rate),
                "sent_pps": int(es.sent as f64 / secs),
                "delivered_pps": int(es.delivered as f64 / secs),
                "loss_pct": (loss * 1000.0).round() / 1000.0,
                "latency_p50_us": es.hist.quantile(0.5),
                "latency_p99_us": es.hist.quantile(0.99),
                "pass": pass,
            }));
            if !a.quiet {
                eprintln!(
                    "  step {epoch}: offered {rate:.0}/s sent {:.0}/s delivered {:.0}/s loss {loss:.3}% p99 {} us -> {}",
                    es.sent as f64 / secs,
                    es.delivered as f64 / secs,
                    es.hist.quantile(0.99),
                    if pass { "pass" } else { "FAIL" }
                );
            }
            if !pass && retries_left > 0 {
                retries_left -= 1;
                epoch += 1;
                continue;
            }
            if !pass {
                if !kept_up {
                    stop_reason = match (lost_at, best) {
                        // Bisecting: the server already lost above the last pass, so the
                        // bracket stands; only its refinement ends early.
                        (Some(hi), Some(lo)) => format!(
                            "between {lo:.0}/s (pass) and {hi:.0}/s (loss > 1%); bisection \
                             ended at {rate:.0}/s, where the client sent only {:.0}/s",
                            es.sent as f64 / secs
                        ),
                        _ => format!(
                            "step {epoch} at {rate:.0}/s: the client sent only {:.0}/s \
                             (client-bound: more --threads or a free core)",
                            es.sent as f64 / secs
                        ),
                    };
                    break;
                }
                lost_at = Some(lost_at.map_or(rate, |l: f64| l.min(rate)));
                stop_reason = format!("step {epoch} at {rate:.0}/s: loss {loss:.2}% > 1%");
                let Some(lo) = best.filter(|_| refine_left > 0) else {
                    break;
                };
                refine_left -= 1;
                retries_left = a.step_retries;
                epoch += 1;
                rate = (lo + rate) / 2.0;
                continue;
            }
            best = Some(rate);
            last_pass_epoch = epoch;
            retries_left = a.step_retries;
            epoch += 1;
            match lost_at {
                // Bisecting: halfway to the lowest rate that lost, while steps are left.
                Some(hi) if refine_left > 0 => {
                    refine_left -= 1;
                    rate = (rate + hi) / 2.0;
                }
                Some(hi) => {
                    stop_reason =
                        format!("bisected to between {rate:.0}/s (pass) and {hi:.0}/s (loss > 1%)");
                    break;
                }
                None => rate *= a.step_factor,
            }
        }
        measured_epoch = if last_pass_epoch > 0 {
            last_pass_epoch
        } else {
            1
        };
        measure_secs = secs;
        offered = best.unwrap_or(start_rate);
    }
    steer.stop.store(true, Ordering::Release);
    done.store(true, Ordering::Relaxed);
    let mut back: Vec<Client> = Vec::new();
    for h in handles {
        match h.join() {
            Ok(c) => back.extend(c),
            Err(_) => eprintln!("ferroturn-bench: a worker thread panicked"),
        }
    }
    // Loss at the load client's own UDP sockets (whole run, warm-up included).
    let client_rx_drops: u64 = back.iter().filter_map(|c| c.conn.udp_drops()).sum();
    let echoed = echo.map(|mut p| {
        p.stop();
        p.echoed.load(Ordering::Relaxed)
    });
    back.extend(bad);
    let td = match ControlSet::new() {
        Ok(mut set) => teardown(a, &mut set, &mut back, timeout, server),
        Err(e) => json!({"error": format!("epoll: {e}")}),
    };

    // 4. report
    let s = collect(&shared);
    let es: EpochStats = s
        .epochs
        .get(measured_epoch as usize)
        .cloned()
        .unwrap_or_default();
    let secs = measure_secs.max(1e-9);
    let loss = if es.sent > 0 {
        (es.sent.saturating_sub(es.delivered)) as f64 / es.sent as f64 * 100.0
    } else {
        0.0
    };
    let mbit = es.delivered as f64 * a.size as f64 * 8.0 / secs / 1e6;
    let latency_kind = if a.c2c { "one-way" } else { "rtt" };
    let mut report = json!({
        "mode": format!("{:?}", a.mode).to_lowercase(),
        "transport": format!("{:?}", a.transport).to_lowercase(),
        "c2c": a.c2c,
        "server": server.to_string(),
        "peer": peer_addr.map(|p| p.to_string()),
        "size": a.size,
        "burst": a.burst,
        "threads": shared.len(),
        "allocations_requested": a.allocations,
        "allocations_ok": alloc.allocs_ok,
        "allocations_failed": alloc.failed,
        "alloc_errors": errors_json(&alloc),
        "alloc_retried_437": alloc.reopened_437,
        "allocs_per_s": int(allocs_per_s),
        "alloc_latency_us": lat_json(&alloc.alloc_latency),
        "bind_failed": bind.failed,
        "bind_errors": errors_json(&bind),
        "clients_sending": n_ready,
        "offered_pps": int(offered),
        "duration_s": (secs * 1000.0).round() / 1000.0,
        "sent": es.sent,
        "sent_pps": int(es.sent as f64 / secs),
        "delivered": es.delivered,
        "delivered_pps": int(es.delivered as f64 / secs),
        "mbit_s": (mbit * 1000.0).round() / 1000.0,
        "loss_pct": (loss * 10000.0).round() / 10000.0,
        "send_drops": es.send_drops,
        "skipped": es.skipped,
        "latency_kind": latency_kind,
        "latency_us": lat_json(&es.hist),
        "foreign": s.foreign,
        "misdelivered": s.misdelivered,
        "refresh_ok": s.refresh_ok,
        "refresh_failed": s.refresh_failed,
        "errors": s.errors,
        "echoed_by_peer": echoed,
        "saturation": if a.saturate {
            json!({"max_pass_pps": best.map(int), "stop": stop_reason, "steps": steps})
        } else { Value::Null },
        "teardown": td,
        "interrupted": INTERRUPTED.load(Ordering::Relaxed),
    });
    // (outside the literal above: serde_json's macro would exceed the recursion limit)
    report["client_rx_drops"] = json!(client_rx_drops);
    // (outside the literal above: serde_json's macro would exceed the recursion limit)
    report["client_rx_drops"] = json!(client_rx_drops);
    if a.json {
        println!("{report}");
    } else {
        print_text(a, &report, &alloc, &es, &s.errors);
    }
    if es.delivered == 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn print_text(
    a: &Args,
    r: &Value,
    alloc: &DriveStats,
    es: &EpochStats,
    errors: &BTreeMap<String, u64>,
) {
    let g = |k: &str| r[k].clone();
    println!(
        "ferroturn-bench: {} {} {}{}, {} B payload, {}",
        g("server").as_str().unwrap_or(""),
        g("transport").as_str().unwrap_or(""),
        g("mode").as_str().unwrap_or(""),
        if a.c2c { " c2c" } else { "" },
        a.size,
        match g("peer").as_str() {
            Some(p) => format!("echo peer {p}"),
            None => "client to client".into(),
        }
    );
    println!(
        "  allocations   {} ok, {} failed{}; {} allocs/s; latency (us) {}",
        alloc.allocs_ok,
        alloc.failed,
        alloc_notes(alloc),
        g("allocs_per_s"),
        lat_text(&alloc.alloc_latency)
    );
    if let Some(sat) = r["saturation"].as_object() {
        println!(
            "  saturation    highest passing rate: {} pps; stopped: {}",
            sat["max_pass_pps"],
            sat["stop"].as_str().unwrap_or("")
        );
        for s in sat["steps"].as_array().into_iter().flatten() {
            println!(
                "    step {:>2}  offered {:>8} sent {:>8} delivered {:>8} loss {:>7}%  p50 {:>6} us p99 {:>6} us  {}",
                s["epoch"], s["offered_pps"], s["sent_pps"], s["delivered_pps"], s["loss_pct"],
                s["latency_p50_us"], s["latency_p99_us"],
                if s["pass"].as_bool() == Some(true) { "pass" } else { "FAIL" }
            );
        }
        if sat["max_pass_pps"].is_null() {
            println!("  (figures below: step 1, which did not pass)");
        } else {
            println!("  (figures below: the last passing step)");
        }
    }
    println!(
        "  offered       {} pps over {} clients for {} s",
        g("offered_pps"),
        g("clients_sending"),
        g("duration_s")
    );
    println!(
        "  sent          {} ({} pps); local drops {}, schedule skipped {}",
        es.sent,
        g("sent_pps"),
        es.send_drops,
        es.skipped
    );
    println!(
        "  delivered     {} ({} pps), {} Mbit/s payload",
        es.delivered,
        g("delivered_pps"),
        g("mbit_s")
    );
    println!(
        "  loss          {} % (after a {} s drain)",
        g("loss_pct"),
        a.drain
    );
    println!(
        "  {} (us) {}",
        if a.c2c { "one-way   " } else { "RTT       " },
        lat_text(&es.hist)
    );
    if !errors.is_empty() {
        println!("  errors        {errors:?}");
    }
    println!("  teardown      {}", g("teardown"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_forms() {
        assert_eq!(host_of("127.0.0.1:5349"), "127.0.0.1");
        assert_eq!(host_of("[::1]:5349"), "::1");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(host_of("turn.example.com:443"), "turn.example.com");
        assert_eq!(host_of("turn.example.com"), "turn.example.com");
    }

    #[test]
    fn resolve_forms() {
        assert_eq!(
            resolve("127.0.0.1", 3478).unwrap(),
            "127.0.0.1:3478".parse().unwrap()
        );
        assert_eq!(
            resolve("127.0.0.1:5", 3478).unwrap(),
            "127.0.0.1:5".parse().unwrap()
        );
        assert_eq!(resolve("::1", 3478).unwrap(), "[::1]:3478".parse().unwrap());
        assert_eq!(
            resolve("[::1]:9", 3478).unwrap(),
            "[::1]:9".parse().unwrap()
        );
        assert!(resolve("localhost:7", 3478).unwrap().port() == 7);
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
