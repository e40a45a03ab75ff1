//! `divine-atbridge` entry point: parse the command line, set up logging and TLS, hand over to [`app`].

use clap::Parser;
use divine_atbridge::app;
use divine_atbridge::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    // `--help` / `--version` print and exit here, before logging, configuration or any connection.
    let mut cli = Cli::parse();
    if cli.command.is_none() {
        // `run` is the default subcommand: parse again with it, so its options and environment variables apply.
        cli = Cli::parse_from(std::env::args_os().chain([std::ffi::OsString::from("run")]));
    }
    // Operator commands report a failure once, as `error[code]: …` on stderr; `run` reports it in its log too.
    let operator_command = !matches!(cli.command, None | Some(Command::Run(_)));
    app::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(app::dispatch(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if !operator_command {
                tracing::error!(code = %e.code(), error = %e.message(), "divine-atbridge stopped");
            }
            eprintln!("error[{}]: {}", e.code(), e.message());
            std::process::ExitCode::FAILURE
        }
    }
}
