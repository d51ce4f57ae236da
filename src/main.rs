//! `ferroturn` binary: parse CLI and config, set up logging, start the shards, handle signals.
use std::process::ExitCode;

use clap::Parser;
use tracing::{error, info, warn};

use ferroturn::runtime::admin::{self, LogLevelSetter, Ops};
use ferroturn::runtime::cli::{Cli, Command, CredentialsArgs};
use ferroturn::runtime::config::{self, Config};
use ferroturn::runtime::{notify, privdrop, Server};

/// Exit code for configuration and startup errors (bad config, port in use).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::CheckConfig) => return config::check_config(&cli),
        Some(Command::Credentials(args)) => return credentials(&cli, args),
        None => {}
    }
    let cfg = match config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferroturn: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let set_log_level = match init_logging(&cfg) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ferroturn: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let server = match Server::start(&cfg) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "startup failed");
            eprintln!("ferroturn: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // proc-user / proc-group: every listener is bound and the TLS files are read; give up
    // root before serving anyone.
    match privdrop::drop_privileges(cfg.proc_user.as_deref(), cfg.proc_group.as_deref()) {
        Ok(Some((uid, gid))) => info!(uid, gid, "privileges dropped"),
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
    info!(
        udp = ?server.local_addrs(),
        tcp = ?server.tcp_addrs(),
        tls = ?server.tls_addrs(),
        relay_threads = cfg.relay_threads,
        realm = %cfg.engine.realm,
        "ferroturn {} started",
        env!("CARGO_PKG_VERSION")
    );
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
    rt.block_on(async {
        if let Err(e) = ops.serve() {
            error!(error = %e, "cannot start the HTTP listeners");
            return;
        }
        control_loop(&cli, &server, &ops, cfg.ops.drain_timeout).await
    });
    notify::notify("STOPPING=1");
    info!(allocations = server.allocation_count(), "shutting down");
    server.shutdown();
    info!("stopped");
    ExitCode::SUCCESS
}

/// Signals: SIGINT/SIGTERM stop, SIGHUP reloads the configuration (users, secrets, peer ACLs,
/// quotas); an invalid new configuration is logged and the running one kept.
/// SIGUSR1 (or the admin API) starts a drain: the loop ends, and the process exits 0, once no
/// allocation is left or after `drain-timeout`.
async fn control_loop(cli: &Cli, server: &Server, ops: &Ops, drain_timeout: std::time::Duration) {
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
        return;
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
            _ = term.recv() => { info!("SIGTERM"); return; }
            _ = int.recv() => { info!("SIGINT"); return; }
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
                    return;
                }
                if started.elapsed() >= drain_timeout {
                    warn!(event = "drain_timeout", allocations = n, "drain-timeout reached; exiting");
                    return;
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
                Ok(new) => {
                    notify::notify("RELOADING=1");
                    ops.set_config(&new);
                    server.reload(new.engine);
                    info!("configuration reloaded");
                    if let Err(e) = server.reload_tls() {
                        warn!(error = %e, "new TLS certificate rejected; keeping the previous one");
                    }
                    notify::notify("READY=1");
                }
                Err(e) => warn!(error = %e, "reload rejected; keeping the running configuration"),
            },
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

/// Returns the admin API's way to change the filter at run time (PUT /api/v1/log-level).
fn init_logging(cfg: &Config) -> Result<LogLevelSetter, String> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log_level))
        .map_err(|e| format!("key 'log-level': {e}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    /// A reload handle as a setter; the handle's type depends on the writer, hence a macro.
    macro_rules! setter {
        ($b:expr) => {{
            let h = $b.reload_handle();
            let f: LogLevelSetter = std::sync::Arc::new(move |s: &str| {
                let f = EnvFilter::try_new(s).map_err(|e| format!("bad filter {s:?}: {e}"))?;
                h.reload(f).map_err(|e| e.to_string())
            });
            f
        }};
    }
    match &cfg.log_file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("key 'log-file': cannot open {}: {e}", path.display()))?;
            let b = builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .with_filter_reloading();
            let set = setter!(b);
            b.init();
            Ok(set)
        }
        None => {
            use std::io::IsTerminal;
            // Colours only for a person at a terminal, never into the journal or a pipe.
            let b = builder
                .with_ansi(std::io::stdout().is_terminal())
                .with_writer(std::io::stdout)
                .with_filter_reloading();
            let set = setter!(b);
            b.init();
            Ok(set)
        }
    }
}
