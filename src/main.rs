//! `ferroturn` binary: parse CLI and config, set up logging, start the shards, handle signals.
use std::process::ExitCode;

use clap::Parser;
use tracing::{error, info, warn};

use ferroturn::runtime::cli::{Cli, Command};
use ferroturn::runtime::config::{self, Config};
use ferroturn::runtime::Server;

/// Exit code for configuration and startup errors (bad config, port in use).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::CheckConfig) = &cli.command {
        return config::check_config(&cli);
    }
    let cfg = match config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferroturn: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = init_logging(&cfg) {
        eprintln!("ferroturn: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let server = match Server::start(&cfg) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "startup failed");
            eprintln!("ferroturn: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    info!(
        listening = ?server.local_addrs(),
        relay_threads = cfg.relay_threads,
        realm = %cfg.engine.realm,
        "ferroturn {} started",
        env!("CARGO_PKG_VERSION")
    );
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
    rt.block_on(control_loop(&cli, &server));
    info!(allocations = server.allocation_count(), "shutting down");
    server.shutdown();
    info!("stopped");
    ExitCode::SUCCESS
}

/// Signals: SIGINT/SIGTERM stop, SIGHUP reloads the configuration (users, secrets, peer ACLs,
/// quotas); an invalid new configuration is logged and the running one kept.
async fn control_loop(cli: &Cli, server: &Server) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        error!("cannot install signal handlers; stopping");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM"); return; }
            _ = int.recv() => { info!("SIGINT"); return; }
            _ = hup.recv() => match config::load(cli) {
                Ok(new) => {
                    server.reload(new.engine);
                    info!("configuration reloaded");
                    if let Err(e) = server.reload_tls() {
                        warn!(error = %e, "new TLS certificate rejected; keeping the previous one");
                    }
                }
                Err(e) => warn!(error = %e, "reload rejected; keeping the running configuration"),
            },
        }
    }
}

fn init_logging(cfg: &Config) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log_level))
        .map_err(|e| format!("key 'log-level': {e}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match &cfg.log_file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("key 'log-file': cannot open {}: {e}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .init();
        }
        None => {
            use std::io::IsTerminal;
            // Colours only for a person at a terminal, never into the journal or a pipe.
            builder
                .with_ansi(std::io::stdout().is_terminal())
                .with_writer(std::io::stdout)
                .init()
        }
    }
    Ok(())
}
