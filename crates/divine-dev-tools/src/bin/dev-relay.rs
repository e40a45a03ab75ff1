//! `dev-relay`: an in-memory Nostr relay for the localnet and smoke tests (nostr-relay-builder's `LocalRelay`).
//!
//! Owns: binding one loopback address, printing a single ready line (`dev-relay ready ws://ADDR`) once the listener
//! is bound, and shutting down cleanly on SIGTERM/SIGINT. It must not persist anything (memory database only), must
//! not be used in production, and must not contain bridge logic: it is a stand-in for Divine's relays.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use nostr_relay_builder::prelude::{LocalRelay, MemoryDatabase, MemoryDatabaseOptions, RateLimit, RelayBuilder};

/// In-memory Nostr relay for local development (NOT for production).
#[derive(Debug, Parser)]
#[command(name = "dev-relay", version)]
struct Args {
    /// Address to listen on (keep it on loopback).
    #[arg(long, env = "DEV_RELAY_ADDR", default_value = "127.0.0.1:7777")]
    addr: SocketAddr,
    /// Maximum number of events kept in memory (oldest dropped first).
    #[arg(long, default_value_t = 100_000)]
    max_events: usize,
    /// Events accepted per minute per connection (the library default of 60 is too low for smoke loops).
    #[arg(long, default_value_t = 6_000)]
    notes_per_minute: u32,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();

    let database = MemoryDatabase::with_opts(MemoryDatabaseOptions {
        events: true,
        max_events: Some(args.max_events),
    });
    let builder = RelayBuilder::default()
        .addr(args.addr.ip())
        .port(args.addr.port())
        .database(database)
        .rate_limit(RateLimit {
            max_reqs: 500,
            notes_per_minute: args.notes_per_minute,
        });
    let relay = LocalRelay::new(builder);
    if let Err(e) = relay.run().await {
        eprintln!("dev-relay: cannot listen on {}: {e}", args.addr);
        return ExitCode::from(1);
    }
    println!("dev-relay ready {}", relay.url().await);

    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dev-relay: cannot install SIGTERM handler: {e}");
            relay.shutdown();
            return ExitCode::from(1);
        }
    };
    tokio::select! {
        _ = term.recv() => eprintln!("dev-relay: SIGTERM, shutting down"),
        _ = tokio::signal::ctrl_c() => eprintln!("dev-relay: SIGINT, shutting down"),
    }
    relay.shutdown();
    ExitCode::SUCCESS
}
