//! The `reviewloop` binary: parses arguments, starts tracing, loads the config, runs, and maps
//! failures to exit codes (64 bad config, 1 startup or runtime failure).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use reviewloop::app::{self, App, Roles};
use reviewloop::config::{Checked, Config};
use reviewloop::demo::{self, DemoOptions};
use reviewloop::telemetry::{self, LogFormat};

/// mimalloc instead of glibc malloc: the proxy allocates per request (bodies, headers, records).
/// Its memory use is tuned from the environment (`MIMALLOC_PURGE_DELAY=0`,
/// `MIMALLOC_ARENA_EAGER_COMMIT=0`, set in the Dockerfile; README "Memory").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// sysexits.h EX_CONFIG-ish: the configuration is wrong (EX_USAGE = 64).
const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "reviewloop",
    version,
    about = "Human review loop for ML inference: a streaming sidecar proxy, a Kafka review joiner, metrics."
)]
struct Cli {
    /// Log line format on stderr (the filter is RUST_LOG, default "info").
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar proxy (data plane) and its admin server.
    Proxy {
        /// TOML config file; built-in defaults apply when omitted.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the review joiner (a consumer group member; scale out with more processes).
    Join {
        /// TOML config file; built-in defaults apply when omitted.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the reviewer console: people answer reviews in a browser.
    Console {
        /// TOML config file; built-in defaults apply when omitted.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the Label Studio bridge: review records become Label Studio tasks, annotations
    /// become answers on the completed topic.
    LabelStudio {
        /// TOML config file with a `[label_studio]` section.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the proxy, the joiner and the console in one process (and the Label Studio bridge
    /// when `[label_studio] url` is set).
    Run {
        /// TOML config file; built-in defaults apply when omitted.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Everything in one process — embedded Kafka, a model that learns from reviews, simulated
    /// reviewers and traffic — with a live table; nothing to install.
    Demo(DemoOptions),
    /// Validate a config file and print the effective configuration (exit 0, or 64 if bad).
    CheckConfig { file: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's table is the output: logs only for warnings unless RUST_LOG asks.
    let default_filter = match cli.command {
        Command::Demo(_) => "warn",
        _ => "info",
    };
    telemetry::init_with_default(cli.log_format, default_filter);
    match cli.command {
        Command::CheckConfig { file } => match Config::load(Some(&file)) {
            Ok(checked) => {
                print!("{}", checked.config.to_redacted_toml());
                eprintln!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                ExitCode::from(EXIT_BAD_CONFIG)
            }
        },
        Command::Proxy { config } => serve(config, Roles::PROXY),
        Command::Join { config } => serve(config, Roles::JOIN),
        Command::Console { config } => serve(config, Roles::CONSOLE),
        Command::LabelStudio { config } => serve(config, Roles::LABEL_STUDIO),
        Command::Demo(options) => {
            let problems = options.validate();
            if !problems.is_empty() {
                eprintln!("reviewloop: {}", demo::OptionsError(problems));
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
            run(async move {
                demo::run(options, &mut std::io::stdout(), app::shutdown_signal()).await?;
                Ok(())
            })
        }
        Command::Run { config } => serve(config, Roles::ALL),
    }
}

/// Loads the configuration and runs `roles` until SIGTERM/SIGINT.
fn serve(path: Option<PathBuf>, roles: Roles) -> ExitCode {
    match load(path) {
        Ok(checked) => {
            let runtime = app::main_runtime(&checked.config, roles);
            run_on(runtime, async move {
                App::build(checked, roles)
                    .await?
                    .run(app::shutdown_signal())
                    .await
            })
        }
        Err(code) => code,
    }
}

fn load(path: Option<PathBuf>) -> Result<Checked, ExitCode> {
    Config::load(path.as_deref()).map_err(|e| {
        eprintln!("reviewloop: {e}");
        ExitCode::from(EXIT_BAD_CONFIG)
    })
}

fn run(task: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    run_on(tokio::runtime::Runtime::new(), task)
}

fn run_on(
    runtime: std::io::Result<tokio::runtime::Runtime>,
    task: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("reviewloop: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "reviewloop failed");
            eprintln!("reviewloop: {e:#}");
            ExitCode::FAILURE
        }
    }
}
