//! `divine-atbridge` entry point: parse the command line, set up logging and TLS, hand over to [`app`].

use clap::Parser;
use divine_atbridge::{app, cli::Cli};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    app::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(app::dispatch(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(code = e.code(), error = %e.message(), "divine-atbridge stopped");
            eprintln!("error[{}]: {}", e.code(), e.message());
            std::process::ExitCode::FAILURE
        }
    }
}
