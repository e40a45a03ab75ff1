//! `divine-atbridge` entry point: parse the command line, set up logging and TLS, hand over to [`app`].

use clap::Parser;
use divine_atbridge::app;
use divine_atbridge::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Operator commands report a failure once, as `error[code]: …` on stderr; `run` reports it in its log.
    let operator_command = !matches!(cli.command, None | Some(Command::Run));
    app::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(app::dispatch(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if !operator_command {
                tracing::error!(code = e.code(), error = %e.message(), "divine-atbridge stopped");
            }
            eprintln!("error[{}]: {}", e.code(), e.message());
            std::process::ExitCode::FAILURE
        }
    }
}
