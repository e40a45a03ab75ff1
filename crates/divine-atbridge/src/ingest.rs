//! Relay ingest: subscribes to the opted-in accounts' events on every relay in `NOSTR_RELAYS`, checks them, and turns
//! each accepted event into a durable job (publish / delete / profile). Also pages an author's history for backfill.
//!
//! Owns relay connections, subscription filters, the per-relay cursor and the kind → job mapping. It must not
//! translate or publish anything: the worker does that from the job, so ingest stays cheap and a crash here loses
//! nothing that is not replayed from the cursor.
//!
//! Cursor semantics (lossless): a relay's cursor is the newest `(created_at, id)` whose job is durably enqueued. It
//! only advances after EOSE of the current subscription (stored events arrive newest-first, so advancing during the
//! replay could skip older ones after a crash) and, after EOSE, as live events are enqueued. Every (re)subscription
//! asks for `since = cursor - CURSOR_OVERLAP_SECS`; the overlap re-delivers events already seen, which the jobs'
//! unique keys turn into no-ops. Several replicas may ingest at once for the same reason.

use anyhow::Context;
use chrono::{DateTime, TimeZone, Utc};
use diesel::prelude::*;
use divine_bridge_db::queue::{self, NewJob};
use divine_bridge_db::schema::account_links;
use divine_bridge_db::states::priority;
use divine_bridge_db::{records, Db, DbError, JobKind};
use nostr_sdk::prelude::*;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use tokio::sync::watch;

/// Event kinds the bridge reads.
pub const KINDS: [u16; 6] = [0, 5, 21, 22, 34235, 34236];
/// Events dated further in the future than this are rejected.
pub const MAX_FUTURE_SKEW: Duration = Duration::from_secs(600);
const SUBSCRIPTION_ID: &str = "divine-bridge-live";

/// Ingest settings (from env via `config`).
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub relays: Vec<String>,
    pub cursor_overlap: Duration,
    /// How often the opted-in author set is re-read (subscription updated without restart).
    pub account_refresh: Duration,
}

/// Why an event was refused; the label of `bridge_nostr_events_rejected_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    BadSignature,
    FutureDated,
    NotOptedIn,
    UnsupportedKind,
}

impl Rejection {
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::BadSignature => "bad_signature",
            Rejection::FutureDated => "future_dated",
            Rejection::NotOptedIn => "not_opted_in",
            Rejection::UnsupportedKind => "unsupported_kind",
        }
    }
}

/// The job an accepted event becomes: `(kind, unique key)`.
pub fn job_for(event: &Event) -> Option<(JobKind, String)> {
    let id = event.id.to_hex();
    match event.kind.as_u16() {
        0 => Some((JobKind::SyncProfile, format!("profile:{id}"))),
        5 => Some((JobKind::DeletePost, format!("delete:{id}"))),
        21 | 22 | 34235 | 34236 => Some((JobKind::PublishPost, format!("publish:{id}"))),
        _ => None,
    }
}

/// Checks an event independent of who is opted in: id + signature, supported kind, not dated in the future.
pub fn check_event(event: &Event, now: DateTime<Utc>) -> Result<(), Rejection> {
    if event.verify().is_err() {
        return Err(Rejection::BadSignature);
    }
    if job_for(event).is_none() {
        return Err(Rejection::UnsupportedKind);
    }
    let created = event.created_at.as_secs() as i64;
    if created > now.timestamp() + MAX_FUTURE_SKEW.as_secs() as i64 {
        return Err(Rejection::FutureDated);
    }
    Ok(())
}

fn event_time(event: &Event) -> DateTime<Utc> {
    Utc.timestamp_opt(event.created_at.as_secs() as i64, 0)
        .single()
        .unwrap_or_else(Utc::now)
}

/// Enqueues the job for an accepted event; `Ok(None)` when it was already enqueued (duplicate delivery).
pub fn enqueue_event(conn: &mut PgConnection, event: &Event, prio: i16) -> Result<Option<i64>, DbError> {
    let Some((kind, unique)) = job_for(event) else {
        return Ok(None);
    };
    let payload =
        serde_json::json!({ "event": serde_json::to_value(event).map_err(|e| DbError::Corrupt(e.to_string()))? });
    let mut job = NewJob::new(kind, event.pubkey.to_hex(), payload).unique(unique);
    job.priority = prio;
    job.source_created_at = Some(event_time(event));
    queue::enqueue(conn, &job)
}

/// Pubkeys (hex) whose events the bridge accepts: opted in, cross-posting enabled, not disabled.
pub fn load_enabled_authors(conn: &mut PgConnection) -> Result<BTreeSet<String>, DbError> {
    let rows: Vec<String> = account_links::table
        .filter(account_links::crosspost_enabled.eq(true))
        .filter(account_links::provisioning_state.ne("disabled"))
        .select(account_links::nostr_pubkey)
        .load(conn)?;
    Ok(rows.into_iter().collect())
}

#[derive(Default)]
struct RelayProgress {
    eose: bool,
    /// Newest enqueued (created_at, id) not yet written to `relay_cursors`.
    pending: Option<(DateTime<Utc>, String)>,
    connected: bool,
}

/// The live subscription loop. Returns when `shutdown` flips to true.
pub async fn run(db: Db, cfg: IngestConfig, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    if cfg.relays.is_empty() {
        tracing::warn!(code = "no_relays_configured", "NOSTR_RELAYS is empty; ingest is idle");
        let _ = shutdown.wait_for(|s| *s).await;
        return Ok(());
    }
    let client = Client::builder()
        .opts(ClientOptions::new().verify_subscriptions(true))
        .build();
    for url in &cfg.relays {
        client
            .add_relay(url.as_str())
            .await
            .with_context(|| format!("bad relay url {url}"))?;
    }
    client.connect().await;
    let mut notifications = client.notifications();

    let mut authors: BTreeSet<String> = BTreeSet::new();
    let mut progress: HashMap<String, RelayProgress> = HashMap::new();
    let mut refresh = tokio::time::interval(cfg.account_refresh);
    let mut status_tick = tokio::time::interval(Duration::from_secs(2));
    let mut flush_tick = tokio::time::interval(Duration::from_secs(1));

    loop {
        tokio::select! {
            _ = shutdown.changed() => { if *shutdown.borrow() { break; } }
            _ = refresh.tick() => {
                match db.run(load_enabled_authors).await {
                    Ok(now_authors) if now_authors != authors => {
                        tracing::info!(count = now_authors.len(), "opted-in author set changed; resubscribing");
                        authors = now_authors;
                        for relay in &cfg.relays {
                            subscribe_relay(&client, &db, &cfg, relay, &authors).await;
                            progress.entry(relay_key(relay)).or_default().eose = false;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "could not load opted-in authors"),
                }
            }
            _ = status_tick.tick() => {
                for (url, relay) in client.relays().await {
                    let key = url.to_string();
                    let connected = relay.is_connected();
                    metrics::gauge!("bridge_relay_connected", "relay" => key.clone()).set(if connected { 1.0 } else { 0.0 });
                    let entry = progress.entry(key.clone()).or_default();
                    if connected && !entry.connected && !authors.is_empty() {
                        // (Re)connected: resubscribe from the persisted cursor minus the overlap.
                        entry.eose = false;
                        subscribe_relay(&client, &db, &cfg, &key, &authors).await;
                    }
                    entry.connected = connected;
                }
            }
            _ = flush_tick.tick() => flush_cursors(&db, &mut progress).await,
            n = notifications.recv() => {
                let n = match n {
                    Ok(n) => n,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => {
                        // Dropped notifications are recovered by the cursor overlap on the next resubscribe.
                        tracing::warn!(lagged = k, "ingest fell behind the relay pool; resubscribing");
                        for relay in &cfg.relays {
                            subscribe_relay(&client, &db, &cfg, relay, &authors).await;
                        }
                        continue;
                    }
                    Err(_) => break,
                };
                let RelayPoolNotification::Message { relay_url, message } = n else { continue };
                let relay = relay_url.to_string();
                match message {
                    RelayMessage::Event { subscription_id, event } if subscription_id.as_str() == SUBSCRIPTION_ID => {
                        let event = event.into_owned();
                        if let Some(done) = accept(&db, &authors, event).await {
                            let entry = progress.entry(relay).or_default();
                            if entry.pending.as_ref().is_none_or(|p| *p < done) {
                                entry.pending = Some(done);
                            }
                        }
                    }
                    RelayMessage::EndOfStoredEvents(sub) if sub.as_str() == SUBSCRIPTION_ID => {
                        progress.entry(relay).or_default().eose = true;
                        flush_cursors(&db, &mut progress).await;
                    }
                    _ => {}
                }
            }
        }
    }
    flush_cursors(&db, &mut progress).await;
    client.shutdown().await;
    Ok(())
}

fn relay_key(url: &str) -> String {
    RelayUrl::parse(url)
        .map(|u| u.to_string())
        .unwrap_or_else(|_| url.to_string())
}

async fn subscribe_relay(client: &Client, db: &Db, cfg: &IngestConfig, relay: &str, authors: &BTreeSet<String>) {
    let key = relay_key(relay);
    if authors.is_empty() {
        client.unsubscribe(&SubscriptionId::new(SUBSCRIPTION_ID)).await;
        return;
    }
    let cursor = {
        let key = key.clone();
        db.run(move |c| records::get_cursor(c, &key)).await
    };
    let since = match cursor {
        Ok(Some((at, _))) => Some(at.timestamp() - cfg.cursor_overlap.as_secs() as i64),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(relay = %key, error = %e, "cursor unavailable; subscribing with overlap from now");
            Some(Utc::now().timestamp() - cfg.cursor_overlap.as_secs() as i64)
        }
    };
    let pubkeys: Vec<PublicKey> = authors.iter().filter_map(|a| PublicKey::from_hex(a).ok()).collect();
    let mut filter = Filter::new()
        .authors(pubkeys)
        .kinds(KINDS.iter().map(|k| Kind::from(*k)));
    if let Some(since) = since {
        filter = filter.since(Timestamp::from(since.max(0) as u64));
    }
    match client
        .subscribe_with_id_to([key.as_str()], SubscriptionId::new(SUBSCRIPTION_ID), filter, None)
        .await
    {
        Ok(_) => tracing::info!(relay = %key, ?since, authors = authors.len(), "subscribed"),
        Err(e) => {
            tracing::warn!(relay = %key, error = %e, "subscribe failed; retried on reconnect")
        }
    }
}

/// Checks and enqueues one event. Returns the cursor position it reached when the event is durably handled
/// (enqueued, duplicate, or refused for good); `None` when it must be seen again (database unavailable).
async fn accept(db: &Db, authors: &BTreeSet<String>, event: Event) -> Option<(DateTime<Utc>, String)> {
    let position = (event_time(&event), event.id.to_hex());
    if let Err(rejection) = check_event(&event, Utc::now()) {
        metrics::counter!("bridge_nostr_events_rejected_total", "reason" => rejection.reason()).increment(1);
        return Some(position);
    }
    if !authors.contains(&event.pubkey.to_hex()) {
        metrics::counter!("bridge_nostr_events_rejected_total", "reason" => Rejection::NotOptedIn.reason())
            .increment(1);
        return Some(position);
    }
    match db.run(move |c| enqueue_event(c, &event, priority::LIVE)).await {
        Ok(_) => Some(position),
        Err(e) => {
            tracing::warn!(error = %e, "could not enqueue event; it will be re-read from the cursor");
            None
        }
    }
}

async fn flush_cursors(db: &Db, progress: &mut HashMap<String, RelayProgress>) {
    for (relay, p) in progress.iter_mut() {
        if !p.eose {
            continue;
        }
        if let Some((at, id)) = p.pending.take() {
            let (relay2, id2) = (relay.clone(), id.clone());
            if let Err(e) = db.run(move |c| records::advance_cursor(c, &relay2, at, &id2)).await {
                tracing::warn!(relay = %relay, error = %e, "cursor not saved");
                p.pending = Some((at, id));
            }
        }
    }
}

/// Pages an author's history on the relays, oldest first, and enqueues up to `max_events` events at backfill
/// priority. Returns how many new jobs were enqueued.
pub async fn backfill(
    db: &Db,
    relays: &[String],
    pubkey: &str,
    max_events: usize,
    page_timeout: Duration,
) -> anyhow::Result<usize> {
    let author = PublicKey::from_hex(pubkey).context("invalid pubkey")?;
    let client = Client::default();
    for url in relays {
        client.add_relay(url.as_str()).await?;
    }
    client.connect().await;
    let mut collected: HashMap<EventId, Event> = HashMap::new();
    let mut until: Option<Timestamp> = None;
    let page = 500usize.min(max_events.max(1));
    loop {
        let mut filter = Filter::new()
            .author(author)
            .kinds(KINDS.iter().map(|k| Kind::from(*k)))
            .limit(page);
        if let Some(u) = until {
            filter = filter.until(u);
        }
        let events = client.fetch_events(filter, page_timeout).await?;
        let before = collected.len();
        let mut oldest: Option<Timestamp> = None;
        for e in events.into_iter() {
            oldest = Some(oldest.map_or(e.created_at, |o| o.min(e.created_at)));
            collected.insert(e.id, e);
        }
        let new = collected.len() - before;
        if new == 0 || collected.len() >= max_events {
            break;
        }
        // Step back one second past the oldest seen; events sharing that second are re-fetched and deduplicated.
        until = oldest.map(|o| Timestamp::from(o.as_secs().saturating_sub(1)));
        if until.is_some_and(|u| u.as_secs() == 0) {
            break;
        }
    }
    client.shutdown().await;
    let mut events: Vec<Event> = collected
        .into_values()
        .filter(|e| check_event(e, Utc::now()).is_ok())
        .collect();
    events.sort_by_key(|e| (e.created_at, e.id));
    // Keep the newest `max_events` (the history the user most likely cares about), enqueued oldest first.
    if events.len() > max_events {
        events.drain(..events.len() - max_events);
    }
    let enqueued = db
        .run(move |c| {
            let mut n = 0;
            for e in &events {
                if enqueue_event(c, e, priority::BACKFILL)?.is_some() {
                    n += 1;
                }
            }
            Ok(n)
        })
        .await?;
    Ok(enqueued)
}
