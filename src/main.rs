//! `switchboard`: run the gateway, or check a configuration file.

mod config_file;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use switchboard_gateway::Gateway;
use tracing_subscriber::EnvFilter;

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
            init_logging(log_format);
            let loaded = config_file::load(config.as_deref())?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("switchboard")
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(run(loaded, Duration::from_secs(drain_secs)))
        }
    }
}

async fn run(loaded: config_file::Loaded, drain: Duration) -> Result<()> {
    tracing::info!(config = %loaded.source, "starting");
    let gateway = Gateway::start(loaded.config, loaded.valid)
        .await
        .context("starting the gateway")?;
    for (transport, addr) in gateway.local_addrs() {
        tracing::info!(%transport, %addr, "listening for SIP");
    }
    if let Some(addr) = gateway.api_addr() {
        tracing::info!(%addr, "HTTP API listening (/health, /metrics)");
    }
    wait_for_signal().await;
    tracing::info!(
        drain_secs = drain.as_secs(),
        "shutting down: draining calls"
    );
    gateway.shutdown(drain).await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("SWITCHBOARD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let ansi = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
