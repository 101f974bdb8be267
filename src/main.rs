//! The cloudmap-dns binary: parse the command line, load the config, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use cloudmap_dns::cli::{Cli, Command};
use cloudmap_dns::config::{Config, LogConfig, LogFormat};

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
    init_logging(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cloudmap-dns: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = cloudmap_dns::app::Options { demo: args.demo };
    match runtime.block_on(cloudmap_dns::app::run(config, options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("cloudmap-dns: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(log: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_new(&log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
