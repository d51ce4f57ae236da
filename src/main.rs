//! `ferroturn` binary: parse CLI and config, set up logging, start the shards, handle signals.
use std::process::ExitCode;

use clap::Parser;
use tracing::{error, info, warn};

use ferroturn::runtime::admin::{self, LogLevelSetter, Ops};
use ferroturn::runtime::cli::{Cli, Command, ConvertArgs, CredentialsArgs, StunProbeArgs};
use ferroturn::runtime::config;
use ferroturn::runtime::logging::{self, LogHandle};
use ferroturn::runtime::{notify, privdrop, sockets, Server};

/// Exit code for configuration and startup errors (bad config, port in use).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::CheckConfig) => return config::check_config(&cli),
        Some(Command::Credentials(args)) => return credentials(&cli, args),
        Some(Command::Convert(args)) => return convert(args),
        Some(Command::StunProbe(args)) => return stun_probe(args),
        None => {}
    }
    let cfg = match config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferroturn: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let log = match logging::init(&cfg) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("ferroturn: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Before any socket is opened; logged after the start line.
    let nofile = sockets::raise_nofile_limit();
    // After the raise (or without it, if it failed); before the shards open relay sockets.
    let fd_table = sockets::presize_fd_table();
    let server = match Server::start(&cfg) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "startup failed");
            eprintln!("ferroturn: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    info!(
        udp = ?server.local_addrs(),
        tcp = ?server.tcp_addrs(),
        tls = ?server.tls_addrs(),
        relay_threads = cfg.relay_threads,
        realm = %cfg.engine.realm,
        "ferroturn {} started",
        env!("CARGO_PKG_VERSION")
    );
    // Below this many descriptors an operator should hear about it at startup, not at the
    // first 508 under load.
    const LOW_NOFILE: u64 = 16384;
    match nofile {
        Ok((from, to)) if to < LOW_NOFILE => warn!(
            event = "fd_limit",
            from,
            to,
            "open-file limit (RLIMIT_NOFILE) is {to}: each allocation and TCP/TLS connection \
             takes a descriptor; raise LimitNOFILE (systemd) or ulimit -Hn"
        ),
        Ok((from, to)) => info!(
            event = "fd_limit",
            from, to, "open-file limit (RLIMIT_NOFILE) {to}"
        ),
        Err(e) => {
            warn!(event = "fd_limit", error = %e, "could not read or raise the open-file limit")
        }
    }
    if let Err(e) = fd_table {
        // Not fatal: the table grows as it would have, with a short stall per doubling.
        warn!(event = "fd_table", error = %e, "could not size the descriptor table at start");
    }
    // The admin API (PUT /api/v1/log-level) and SIGHUP change the same filter.
    let set_log_level: LogLevelSetter = {
        let h = log.clone();
        std::sync::Arc::new(move |s: &str| h.set_level(s))
    };
    // Metrics / admin listeners: bound now, so a bad address is a startup error (exit 2).
    let mut ops = match Ops::bind(
        &cfg,
        server.handle(),
        server.local_addrs(),
        server.tcp_addrs(),
        server.tls_addrs(),
        set_log_level,
    ) {
        Ok(o) => o,
        Err(e) => {
            error!(error = %e, "startup failed");
            eprintln!("ferroturn: {e}");
            server.shutdown();
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // proc-user / proc-group: every listener (TURN, metrics, admin) is bound and the TLS files
    // are read; give up root now.
    match privdrop::drop_privileges(cfg.proc_user.as_deref(), cfg.proc_group.as_deref()) {
        // proc-group alone changes the group only: still root.
        Ok(Some((0, gid))) => warn!(
            gid,
            "running as root (proc-group changed the group only); set proc-user to drop \
             privileges"
        ),
        Ok(Some((uid, gid))) => info!(event = "privileges_dropped", uid, gid, "privileges dropped"),
        Ok(None) if privdrop::running_as_root() => {
            warn!("running as root; set proc-user (or use the systemd unit) to drop privileges")
        }
        Ok(None) => {}
        Err(e) => {
            error!(error = %e, "privilege drop failed");
            eprintln!("ferroturn: privilege drop failed: {e}");
            server.shutdown();
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferroturn: cannot start the control runtime: {e}");
            server.shutdown();
            return ExitCode::FAILURE;
        }
    };
    let clean = rt.block_on(async {
        if let Err(e) = ops.serve() {
            error!(error = %e, "cannot start the HTTP listeners");
            return false;
        }
        control_loop(&cli, &cfg, &server, &ops, &log).await
    });
    notify::notify("STOPPING=1");
    info!(allocations = server.allocation_count(), "shutting down");
    server.shutdown();
    info!("stopped");
    // A failure to start exits non-zero, so `Restart=on-failure` restarts the service.
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Signals: SIGINT/SIGTERM stop, SIGHUP reloads the configuration (users, secrets, peer ACLs,
/// quotas, log level); an invalid new configuration is logged and the running one kept.
/// SIGUSR1 (or the admin API) starts a drain: the loop ends, and the process exits 0, once no
/// allocation is left or after `drain-timeout`. `false`: it could not run (no signal handlers).
async fn control_loop(
    cli: &Cli,
    running: &config::Config,
    server: &Server,
    ops: &Ops,
    log: &LogHandle,
) -> bool {
    let drain_timeout = running.ops.drain_timeout;
    use tokio::signal::unix::{signal, SignalKind};
    let handle = server.handle();
    let mut drain_started: Option<std::time::Instant> = None;
    let mut drain_tick = tokio::time::interval(std::time::Duration::from_millis(200));
    let (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut usr1)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined1()),
    ) else {
        error!("cannot install signal handlers; stopping");
        return false;
    };
    // Ready only now that SIGTERM and SIGHUP are handled.
    notify::notify(&format!(
        "READY=1\nSTATUS=listening on {:?}",
        server.local_addrs()
    ));
    // systemd: watchdog pings and a status line with the allocation count.
    let mut tick = tokio::time::interval(
        notify::watchdog_interval().unwrap_or(std::time::Duration::from_secs(10)),
    );
    let watchdog = notify::watchdog_interval().is_some();
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM"); return true; }
            _ = int.recv() => { info!("SIGINT"); return true; }
            _ = usr1.recv() => { handle.drain(); }
            // Polled rather than signalled: the admin API may start the drain too.
            _ = drain_tick.tick() => {
                if !handle.is_draining() {
                    continue;
                }
                let n = handle.allocation_count();
                let started = *drain_started.get_or_insert_with(|| {
                    admin::log_drain_start("SIGUSR1 or admin API", n, drain_timeout);
                    notify::notify(&format!("STATUS=draining, {n} allocations"));
                    std::time::Instant::now()
                });
                if n == 0 {
                    info!(event = "drain_complete", "drain complete: no allocation left");
                    return true;
                }
                if started.elapsed() >= drain_timeout {
                    warn!(event = "drain_timeout", allocations = n, "drain-timeout reached; exiting");
                    return true;
                }
            }
            _ = tick.tick() => {
                let draining = if handle.is_draining() { "draining, " } else { "" };
                let status = format!("STATUS={draining}{} allocations", server.allocation_count());
                if watchdog {
                    notify::notify(&format!("WATCHDOG=1\n{status}"));
                } else {
                    notify::notify(&status);
                }
            }
            _ = hup.recv() => match config::load(cli) {
                Ok(mut new) => {
                    notify::notify("RELOADING=1");
                    let restart = running.restart_required(&new);
                    if !restart.is_empty() {
                        warn!(event = "config_restart_required", keys = ?restart, "these keys changed and take effect only after a restart; the rest is reloaded");
                    }
                    // The engine answers CHANGE-REQUEST from the listeners it started with.
                    new.engine.rfc5780 = running.engine.rfc5780;
                    ops.set_config(&new);
                    server.reload(new.engine);
                    server.set_relay_coalesce(new.relay_coalesce);
                    if let Err(e) = log.set_level(&new.log_level) {
                        warn!(error = %e, "log level not changed");
                    }
                    info!(event = "config_reloaded", log_level = %new.log_level, "configuration reloaded");
                    if let Err(e) = server.reload_tls() {
                        warn!(error = %e, "new TLS certificate rejected; keeping the previous one");
                    }
                    notify::notify("READY=1");
                }
                Err(e) => warn!(event = "config_rejected", error = %e, "reload rejected; keeping the running configuration"),
            },
        }
    }
}

/// `ferroturn convert [FILE]`: coturn turnserver.conf -> ferroturn TOML on stdout, ignored
/// lines on stderr. 0 = converted, 2 = unreadable file or a value that cannot be converted.
fn convert(args: &ConvertArgs) -> ExitCode {
    use std::io::Read;
    let (name, text) = match &args.file {
        Some(p) => (p.display().to_string(), std::fs::read_to_string(p)),
        None => {
            let mut s = String::new();
            let r = std::io::stdin().read_to_string(&mut s).map(|_| s);
            ("standard input".to_owned(), r)
        }
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ferroturn: {name}: cannot read the coturn config file: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match ferroturn::runtime::coturn::convert(&text) {
        Ok(c) => {
            for i in &c.ignored {
                eprintln!("{i}");
            }
            print!("{}", c.toml);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferroturn: {name}: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `ferroturn stun-probe`: 0 = answered, 1 = timeout or error response, 2 = bad target.
fn stun_probe(args: &StunProbeArgs) -> ExitCode {
    use ferroturn::runtime::stun_probe::{probe, resolve, ProbeOptions};
    let server = match resolve(&args.target) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ferroturn stun-probe: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.tcp && (args.change_ip || args.change_port) {
        // RFC 5780 §7.2: CHANGE-REQUEST only makes sense over UDP.
        eprintln!("ferroturn stun-probe: --change-ip/--change-port need UDP, not --tcp");
        return ExitCode::from(EXIT_CONFIG);
    }
    let opts = ProbeOptions {
        server,
        tcp: args.tcp,
        change_ip: args.change_ip,
        change_port: args.change_port,
        rto: std::time::Duration::from_millis(args.rto),
        transmissions: args.transmissions,
    };
    match probe(&opts) {
        Ok(r) => {
            println!("{}", if args.json { r.json() } else { r.text() });
            ExitCode::SUCCESS
        }
        Err(e) => {
            if args.json {
                println!(
                    "{{\"server\":{},\"error\":{}}}",
                    json_string(&server.to_string()),
                    json_string(&e.to_string())
                );
            }
            eprintln!("ferroturn stun-probe: {server}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `ferroturn credentials`: TURN REST API username/password (the coturn recipe), as JSON.
fn credentials(cli: &Cli, args: &CredentialsArgs) -> ExitCode {
    let secret = match &args.secret {
        Some(s) => s.clone(),
        None => match config::load(cli) {
            Ok(cfg) => match cfg.engine.auth_secrets.first() {
                Some(s) => s.clone(),
                None => {
                    eprintln!(
                        "ferroturn: no --secret and no static-auth-secret in the configuration"
                    );
                    return ExitCode::from(EXIT_CONFIG);
                }
            },
            Err(e) => {
                eprintln!("ferroturn: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let username = format!("{}:{}", now + args.ttl, args.user);
    let password = ferroturn::engine::auth::rest_password(&secret, &username);
    let uris: Vec<String> = args.uris.iter().map(|u| json_string(u)).collect();
    println!(
        "{{\"urls\":[{}],\"username\":{},\"credential\":{}}}",
        uris.join(","),
        json_string(&username),
        json_string(&password)
    );
    ExitCode::SUCCESS
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
