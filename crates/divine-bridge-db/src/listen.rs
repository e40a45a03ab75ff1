//! Wake-ups for idle workers (issue 11 §3): a dedicated connection `LISTEN`s on [`CHANNEL`], which the `job_heads`
//! triggers notify whenever a key's head is recomputed and queued (an enqueue, a finished head whose successor
//! waits, a retry, a reclaim, an operator re-drive); the woken pool leases, and sleeps until the next head in
//! backoff is due (`queue::next_due`). An idle worker pool waits on [`JobWakeups::notified`] instead of
//! polling the lease every 100 ms; its poll interval (`POLL_INTERVAL_MS`) is only the fallback for a lost
//! notification. Owns that one connection and nothing else.
//!
//! Decisions:
//! - **Diesel, not a second driver.** `PgConnection::notifications_iter` reads what libpq already received
//!   (`PQconsumeInput` + `PQnotifies`: a non-blocking read of the socket, no round trip to the server). Diesel does
//!   not expose the socket to wait on, so the listener thread checks it every [`CHECK_EVERY`] (10 ms): a local
//!   syscall, not a query; Postgres sees one idle connection per replica. tokio-postgres would give a true
//!   readiness wait at the price of a second Postgres stack in the build for a 10 ms gain.
//! - **Reconnect on error, and wake on reconnect.** A notification sent while the listener was disconnected is
//!   lost, so every (re)connection wakes the pool once; the connection is pinged every [`PING_EVERY`] so a
//!   half-open socket is found even when no notification arrives. Reconnects back off from 1 s to 30 s.
//! - **Wake-ups are hints.** A notification carries no job; the pool just leases. A wake-up with nothing to lease
//!   costs one empty lease; a lost one costs at most one poll interval.

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::Connection;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The channel the `job_heads` triggers notify (`pg_notify('bridge_jobs', '')`, migration 2026-12-04-233000).
pub const CHANNEL: &str = "bridge_jobs";

/// How often the listener thread reads its socket for notifications (a local non-blocking read).
pub const CHECK_EVERY: Duration = Duration::from_millis(10);

/// How often the idle listener connection is pinged (`SELECT 1`) to find a dead socket.
pub const PING_EVERY: Duration = Duration::from_secs(30);

/// A running listener. Dropping it stops the thread (within [`CHECK_EVERY`]).
pub struct JobWakeups {
    notify: Arc<Notify>,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
}

impl JobWakeups {
    /// Starts the listener thread on `url` (connection errors are logged and retried, never returned: the pool
    /// still works by polling while the listener is down).
    pub fn spawn(url: String) -> JobWakeups {
        let notify = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (n, s, r) = (notify.clone(), stop.clone(), received.clone());
        std::thread::Builder::new()
            .name("jobs-listener".into())
            .spawn(move || listen_loop(&url, &n, &s, &r))
            .expect("spawn the jobs listener thread");
        JobWakeups { notify, stop, received }
    }

    /// Resolves at the next wake-up (or at once if one arrived since the last wait: one permit is kept).
    pub async fn notified(&self) {
        self.notify.notified().await
    }

    /// Notifications received so far (diagnostics and tests).
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for JobWakeups {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn listen_loop(url: &str, notify: &Notify, stop: &AtomicBool, received: &AtomicU64) {
    let mut backoff = Duration::from_secs(1);
    while !stop.load(Ordering::Relaxed) {
        let mut conn = match PgConnection::establish(url)
            .map_err(|e| e.to_string())
            .and_then(|mut c| {
                c.batch_execute(&format!("LISTEN {CHANNEL}"))
                    .map(|_| c)
                    .map_err(|e| e.to_string())
            }) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "jobs listener cannot connect; workers poll meanwhile");
                sleep_unless_stopped(backoff, stop);
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        backoff = Duration::from_secs(1);
        tracing::debug!(channel = CHANNEL, "jobs listener connected");
        // Anything notified while we were not listening is lost: wake the pool once.
        notify.notify_one();
        if let Err(e) = serve(&mut conn, notify, stop, received) {
            tracing::warn!(error = %e, "jobs listener connection lost; reconnecting");
        }
    }
}

/// Reads notifications until `stop` or a connection error.
fn serve(conn: &mut PgConnection, notify: &Notify, stop: &AtomicBool, received: &AtomicU64) -> Result<(), String> {
    let mut pinged = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let mut got = 0;
        for n in conn.notifications_iter() {
            n.map_err(|e| e.to_string())?;
            got += 1;
        }
        if got > 0 {
            received.fetch_add(got, Ordering::Relaxed);
            notify.notify_one();
        }
        if pinged.elapsed() >= PING_EVERY {
            conn.batch_execute("SELECT 1").map_err(|e| e.to_string())?;
            pinged = Instant::now();
        }
        std::thread::sleep(CHECK_EVERY);
    }
    Ok(())
}

fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(CHECK_EVERY.max(Duration::from_millis(50)).min(until - Instant::now()));
    }
}
