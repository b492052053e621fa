//! `switchboard`: run the gateway, or check a configuration file.

mod config_file;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use switchboard_gateway::Gateway;
use tracing_subscriber::EnvFilter;

/// jemalloc rather than mimalloc: 40 s after a 4,000 calls/s burst it kept
/// 67 MB (base 20) where mimalloc kept 112-132 MB (base 25-29), for the
/// same CPU per call (BENCHMARKS.md, "Memory after a burst").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts: a background thread returns
/// freed pages to the system within a second of a burst's end, instead of
/// waiting for the next allocations in the same arena (an idle gateway
/// makes none).
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: MallocConf = MallocConf(
    c"background_thread:true,max_background_threads:1,dirty_decay_ms:1000,muzzy_decay_ms:0"
        .as_ptr(),
);

/// A C string pointer jemalloc reads as `const char *malloc_conf`.
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);
// SAFETY: it points to a 'static C string literal nobody writes.
unsafe impl Sync for MallocConf {}

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Voice-AI gateway: SIP on one side, bots on the other"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway until SIGINT/SIGTERM, then drain calls.
    Run {
        /// Configuration file; defaults to config/switchboard.toml, or the
        /// embedded default when that file does not exist.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log line format.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Longest wait for calls to end on shutdown before they are hung up.
        #[arg(long, default_value_t = 30)]
        drain_secs: u64,
    },
    /// Validate a configuration file and exit (0 when valid).
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() {
    // Print the error chain on one line, without a backtrace: config errors
    // are for operators, not developers.
    if let Err(error) = real_main() {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => {
            let loaded = config_file::load(config.as_deref())?;
            println!(
                "{}: ok ({} listen addresses, {} trunks, {} flows)",
                loaded.source,
                loaded.valid.listen.len(),
                loaded.config.trunks.len(),
                loaded.config.flows.len()
            );
            Ok(())
        }
        Command::Run {
            config,
            log_format,
            drain_secs,
        } => {
            let _log_writer = init_logging(log_format);
            // One crypto provider for the whole process (SIP over TLS, wss://
            // bots, HTTPS webhooks), chosen before anything uses rustls.
            switchboard_connectors::install_crypto_provider();
            let loaded = config_file::load(config.as_deref())?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("switchboard")
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(run(config, loaded, Duration::from_secs(drain_secs)))
        }
    }
}

async fn run(path: Option<PathBuf>, loaded: config_file::Loaded, drain: Duration) -> Result<()> {
    tracing::info!(config = %loaded.source, "starting");
    let mut gateway = Gateway::start(loaded.config, loaded.valid)
        .await
        .context("starting the gateway")?;
    for (transport, addr) in gateway.local_addrs() {
        tracing::info!(%transport, %addr, "listening for SIP");
    }
    if let Some(addr) = gateway.api_addr() {
        tracing::info!(%addr, "HTTP API listening (/health, /metrics)");
    }
    let mut requests = gateway.take_reload_requests();
    let (mut stop, mut hangup) = install_signals()?;
    loop {
        tokio::select! {
            _ = stop.received() => break,
            _ = hangup.received() => {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = reload(&gateway, path.clone()).await;
            }
            Some(request) = async {
                match requests.as_mut() {
                    Some(requests) => requests.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                tracing::info!("reload asked for over the HTTP API");
                let _ = request.reply.send(reload(&gateway, path.clone()).await);
            }
        }
    }
    tracing::info!(
        drain_secs = drain.as_secs(),
        "shutting down: draining calls"
    );
    gateway.shutdown(drain).await;
    tracing::info!("stopped");
    Ok(())
}

/// Reads and validates the configuration file again, then puts it in
/// force; a bad file is refused with the same message as at start-up and
/// the running configuration stays.
async fn reload(
    gateway: &Gateway,
    path: Option<PathBuf>,
) -> Result<switchboard_gateway::reload::ReloadReport, String> {
    let loaded = tokio::task::spawn_blocking(move || config_file::load(path.as_deref()))
        .await
        .map_err(|error| error.to_string())
        .and_then(|loaded| loaded.map_err(|error| format!("{error:#}")));
    let loaded = match loaded {
        Ok(loaded) => loaded,
        Err(error) => {
            tracing::error!(%error, "reload refused: keeping the running configuration");
            return Err(error);
        }
    };
    gateway
        .reload(loaded.config, loaded.valid)
        .await
        .map_err(|error| error.to_string())
}

/// SIGINT or SIGTERM: stop the gateway.
struct StopSignal {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

/// SIGHUP: reload the configuration.
struct HangupSignal {
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

fn install_signals() -> Result<(StopSignal, HangupSignal)> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        Ok((
            StopSignal {
                term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            },
            HangupSignal {
                hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
            },
        ))
    }
    #[cfg(not(unix))]
    Ok((StopSignal {}, HangupSignal {}))
}

impl StopSignal {
    async fn received(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = self.term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

impl HangupSignal {
    async fn received(&mut self) {
        #[cfg(unix)]
        self.hup.recv().await;
        #[cfg(not(unix))]
        std::future::pending::<()>().await;
    }
}

/// Log lines go to a writer thread through a bounded queue: a call task
/// never blocks on a slow stdout (a pipe, a terminal, journald). When the
/// queue is full, lines are dropped rather than stalling calls. The guard
/// flushes what is queued when dropped at exit.
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = EnvFilter::try_from_env("SWITCHBOARD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let ansi = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .lossy(true)
        .finish(std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}

/// About 20 MB of log lines at most waiting for stdout.
const LOG_QUEUE_LINES: usize = 65_536;
