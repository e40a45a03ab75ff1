//! divine-handle-gateway binary: logging, configuration from the environment, then [`divine_handle_gateway::run`].
//! Owns process setup only; everything else is in the library.

use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json") {
        tracing_subscriber::fmt().with_env_filter(filter).json().init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let config = match divine_handle_gateway::config::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(code = "gateway_config_invalid", error = %e, "invalid configuration");
            std::process::exit(2);
        }
    };
    if let Err(e) = divine_handle_gateway::run(config).await {
        tracing::error!(error = %e, "gateway failed");
        std::process::exit(1);
    }
}
