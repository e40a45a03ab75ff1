//! divine-handle-gateway binary: command line and environment (clap: `--help` lists every variable, `--help` and
//! `--version` exit before anything else runs), logging, configuration, then [`divine_handle_gateway::run`].
//! Owns process setup only; everything else is in the library. A fatal error is printed once, as `error[code]: …`
//! on stderr (a log line repeating it only doubled what an operator and a log collector see).

use clap::Parser;
use divine_bridge_db::Classified;
use divine_handle_gateway::config::GatewayArgs;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let args = GatewayArgs::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json") {
        tracing_subscriber::fmt().with_env_filter(filter).json().init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let config = match args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error[{}]: {e}", e.code());
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error[gateway_serve_failed]: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(divine_handle_gateway::run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error[{}]: {e}", e.code());
            std::process::ExitCode::FAILURE
        }
    }
}
