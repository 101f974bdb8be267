//! The cloudmap-dns binary: parse the command line, load the config, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use cloudmap_dns::cli::{Cli, Command};
use cloudmap_dns::config::{Config, LogConfig, LogFormat};

// jemalloc, not glibc's malloc: at 100,000 cached instances the aws refresh's per-call garbage,
// freed among the cache's long-lived chunks, made glibc coalesce across a fragmented heap
// (`unlink_chunk`, `malloc_consolidate`: a third of the refresh's CPU). jemalloc's size-class
// slabs do not coalesce; mimalloc, also tried, kept memory freed on other threads. bench/README
// *Scale* has the measurements.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { config }) => check_config(&config),
        Some(Command::Serve(args)) => serve(*args),
        None => serve(cli.serve),
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    let config = match Config::from_file(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let problems = config.problems();
    if problems.is_empty() {
        print!("{}", config.to_toml());
        eprintln!("{}: ok", path.display());
        ExitCode::SUCCESS
    } else {
        for p in &problems {
            eprintln!("{}: {p}", path.display());
        }
        ExitCode::FAILURE
    }
}

fn serve(args: cloudmap_dns::cli::ServeArgs) -> ExitCode {
    let config = match args.load_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cloudmap-dns: {e}");
            return ExitCode::from(2);
        }
    };
    let set_log_level = init_logging(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cloudmap-dns: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let reload_args = args.clone();
    let options = cloudmap_dns::app::Options {
        demo: args.demo,
        reload: Some(Box::new(move || reload_args.load_config())),
        set_log_level: Some(set_log_level),
    };
    match runtime.block_on(cloudmap_dns::app::run(config, options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("cloudmap-dns: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the subscriber; returns a setter for the level filter (a reload may change it).
fn init_logging(log: &LogConfig) -> cloudmap_dns::reload::SetLogLevel {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{EnvFilter, fmt, reload};
    let filter = EnvFilter::try_new(&log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let layer = match log.format {
        LogFormat::Json => layer.json().boxed(),
        LogFormat::Text => layer.boxed(),
    };
    tracing_subscriber::registry().with(filter).with(layer).init();
    Box::new(move |level: &str| {
        let filter = EnvFilter::try_new(level).map_err(|e| format!("'{level}': {e}"))?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
}
