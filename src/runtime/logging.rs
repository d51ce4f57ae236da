//! Logging setup: text or JSON lines (`log-format`), to stdout or `log-file`, with a level
//! filter that can be replaced at run time ([`LogHandle::set_level`]: SIGHUP, admin API).
//!
//! JSON schema (one object per line, documented in the README, "Logs"): `timestamp`
//! (RFC 3339, UTC), `level`, `target`, `message`, and the event's own fields flattened
//! next to them (`event`, `client`, `user`, ...).
use std::fmt;
use std::str::FromStr;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use super::config::Config;

/// `log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (tracing's default format).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl FromStr for LogFormat {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(()),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Changes the level filter of the installed subscriber; cheap to clone, usable from any
/// thread. A reload rebuilds tracing's per-callsite interest cache, so a disabled `debug!` on
/// the relay path stays a cached "never" and does not touch the reload lock.
#[derive(Clone)]
pub struct LogHandle {
    filter: reload::Handle<EnvFilter, Registry>,
}

impl LogHandle {
    /// Replace the filter with `level`: a level (`debug`) or a tracing filter
    /// (`info,ferroturn::engine=debug`). An invalid one leaves the current filter in place.
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(level).map_err(|e| format!("log level {level:?}: {e}"))?;
        self.filter
            .reload(filter)
            .map_err(|e| format!("cannot change the log level: {e}"))
    }
}

/// Install the global subscriber for `cfg` (`log-level`, `log-format`, `log-file`).
/// `RUST_LOG`, when set, wins over `log-level` at start (not on reload).
pub fn init(cfg: &Config) -> Result<LogHandle, String> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log_level))
        .map_err(|e| format!("key 'log-level': {e}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    type S = tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>;
    let fmt_layer: Box<dyn Layer<S> + Send + Sync> = match &cfg.log_file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("key 'log-file': cannot open {}: {e}", path.display()))?;
            let writer = std::sync::Mutex::new(f);
            let text = tracing_subscriber::fmt::layer().with_ansi(false);
            match cfg.log_format {
                LogFormat::Text => text.with_writer(writer).boxed(),
                LogFormat::Json => json(text).with_writer(writer).boxed(),
            }
        }
        None => {
            use std::io::IsTerminal;
            // Colours only for a person at a terminal, never into the journal or a pipe.
            let text = tracing_subscriber::fmt::layer().with_writer(std::io::stdout);
            match cfg.log_format {
                LogFormat::Text => text.with_ansi(std::io::stdout().is_terminal()).boxed(),
                LogFormat::Json => json(text.with_ansi(false)).boxed(),
            }
        }
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .try_init()
        .map_err(|e| format!("cannot install the logger: {e}"))?;
    Ok(LogHandle { filter: handle })
}

/// The JSON variant of a fmt layer: fields flattened to the top level, no span context
/// (ferroturn logs events, not spans), timestamps in RFC 3339 UTC (the default timer).
fn json<S, W>(
    l: tracing_subscriber::fmt::Layer<
        S,
        tracing_subscriber::fmt::format::DefaultFields,
        tracing_subscriber::fmt::format::Format,
        W,
    >,
) -> tracing_subscriber::fmt::Layer<
    S,
    tracing_subscriber::fmt::format::JsonFields,
    tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json>,
    W,
>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    l.json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse() {
        assert_eq!("text".parse(), Ok(LogFormat::Text));
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert_eq!("JSON".parse::<LogFormat>(), Err(()));
        assert_eq!(LogFormat::Json.to_string(), "json");
    }
}
