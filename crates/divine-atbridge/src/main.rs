//! `divine-atbridge` entry point: parse the command line, set up logging and TLS, hand over to [`app`].

use clap::Parser;
use divine_atbridge::app;
use divine_atbridge::cli::Cli;

fn main() -> std::process::ExitCode {
    // `--help` / `--version` print and exit here, before logging, configuration or any connection.
    let mut cli = Cli::parse();
    if cli.command.is_none() {
        // `run` is the default subcommand: parse again with it, so its options and environment variables apply.
        cli = Cli::parse_from(std::env::args_os().chain([std::ffi::OsString::from("run")]));
    }
    app::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(app::dispatch(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Every command, `run` included, reports a fatal error once, as `error[code]: …` on stderr: a log line
            // with the same message before it only doubled what an operator (or a log collector, which reads stderr
            // too) sees.
            eprintln!("error[{}]: {}", e.code(), e.message());
            std::process::ExitCode::FAILURE
        }
    }
}
