//! Logging setup: text or JSON lines (`log-format`), to stdout or `log-file`, with a level
//! filter that can be replaced at run time ([`LogHandle::set_level`]: SIGHUP, admin API).
//!
//! JSON schema (one object per line, documented in the README, "Logs"): `timestamp`
//! (RFC 3339, UTC), `level`, `target`, `message`, and the event's own fields flattened
//! next to them (`event`, `client`, `user`, ...).
use std::cell::{Cell, RefCell};
use std::fmt;
use std::io::Write;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

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
            let writer = Lines(Arc::new(Sink::File(Mutex::new(f))));
            let text = tracing_subscriber::fmt::layer().with_ansi(false);
            match cfg.log_format {
                LogFormat::Text => text.with_writer(writer).boxed(),
                LogFormat::Json => json(text).with_writer(writer).boxed(),
            }
        }
        None => {
            use std::io::IsTerminal;
            // Colours only for a person at a terminal, never into the journal or a pipe.
            let text = tracing_subscriber::fmt::layer().with_writer(Lines(Arc::new(Sink::Stdout)));
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

/// Where formatted lines go. A relay thread (after [`buffer_this_thread`]) collects its lines
/// and writes them with one write(2) per event-loop round ([`flush_thread`], called before it
/// waits for events), not one per line: an allocation logs two records, and their writes were
/// about a third of the logging cost at 10 k allocations/s. Every other thread writes at once.
#[derive(Clone)]
struct Lines(Arc<Sink>);

enum Sink {
    Stdout,
    File(Mutex<std::fs::File>),
}

impl Sink {
    fn write_all(&self, b: &[u8]) {
        // A log line that cannot be written has nowhere to be reported.
        match self {
            Sink::Stdout => {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(b);
                let _ = o.flush();
            }
            Sink::File(f) => {
                let _ = f.lock().unwrap_or_else(|e| e.into_inner()).write_all(b);
            }
        }
    }
}

/// A buffering thread's lines not yet written, and where they go. Written when dropped (the
/// thread ends or unwinds), so no line is lost with the thread.
struct Pending {
    buf: Vec<u8>,
    sink: Option<Arc<Sink>>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        flush_pending(self);
    }
}

fn flush_pending(p: &mut Pending) {
    if let (false, Some(sink)) = (p.buf.is_empty(), &p.sink) {
        sink.write_all(&p.buf);
    }
    p.buf.clear();
}

/// Past this, a buffering thread writes at once (a burst of log lines stays bounded).
const PENDING_MAX: usize = 64 * 1024;

thread_local! {
    static BUFFERED: Cell<bool> = const { Cell::new(false) };
    static PENDING: RefCell<Pending> = const {
        RefCell::new(Pending { buf: Vec::new(), sink: None })
    };
}

/// The calling thread's log lines wait for [`flush_thread`] (relay threads).
pub fn buffer_this_thread() {
    BUFFERED.with(|b| b.set(true));
}

/// Write the calling thread's waiting log lines.
pub fn flush_thread() {
    let _ = PENDING.try_with(|p| {
        if let Ok(mut p) = p.try_borrow_mut() {
            if !p.buf.is_empty() {
                flush_pending(&mut p);
            }
        }
    });
}

impl Write for Lines {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        // tracing's fmt layer hands over one whole formatted line per write_all.
        let queued = BUFFERED.with(Cell::get)
            && PENDING
                .try_with(|p| match p.try_borrow_mut() {
                    Ok(mut p) => {
                        if p.sink.is_none() {
                            p.sink = Some(self.0.clone());
                        }
                        p.buf.extend_from_slice(b);
                        if p.buf.len() >= PENDING_MAX {
                            flush_pending(&mut p);
                        }
                        true
                    }
                    Err(_) => false,
                })
                .unwrap_or(false);
        if !queued {
            self.0.write_all(b);
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
    type Writer = Lines;
    fn make_writer(&'a self) -> Lines {
        self.clone()
    }
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
