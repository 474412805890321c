//! The `reviewloop` binary: parses arguments, starts tracing, loads the config, runs, and maps
//! failures to exit codes (64 bad config, 1 startup or runtime failure).
//!
//! Minimal wiring of `join` on the joiner's branch; the full command set lives on main.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use reviewloop::app;
use reviewloop::config::Config;
use reviewloop::telemetry::{self, LogFormat};

const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(name = "reviewloop", version)]
struct Cli {
    /// Log line format on stderr (the filter is RUST_LOG, default "info").
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the review joiner (a consumer group member; scale out with more processes).
    Join {
        /// TOML config file; built-in defaults apply when omitted.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let Command::Join { config } = cli.command;
    let config = match Config::load(config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("reviewloop: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("reviewloop: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run_join(config, app::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "reviewloop failed");
            eprintln!("reviewloop: {e:#}");
            ExitCode::FAILURE
        }
    }
}
