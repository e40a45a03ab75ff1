//! Relay ingest: subscribes to the opted-in accounts' events on every relay in `NOSTR_RELAYS`, admits them, and turns
//! each accepted event into a durable job (publish / delete / profile). Also pages an author's history for backfill.
//!
//! Owns relay connections, subscription filters, the per-relay cursor and the kind → job mapping. It must not
//! translate or publish anything: the worker does that from the job, so ingest stays cheap and a crash here loses
//! nothing that is not replayed from the cursor. It must not keep its own event checks either: admission is
//! [`crate::nostr::check_event`] (the check the fixture corpus tests) plus the opt-in set, in [`admit`], for live
//! events, truncated-replay catch-up and backfill alike.
//!
//! Cursor invariants (a relay's cursor is where the next (re)subscription resumes):
//! 1. A position comes only from an event that was ADMITTED and whose job is durably enqueued (or was already). A
//!    refused event — future-dated, bad id, bad signature, unsupported kind, author not opted in — never moves it:
//!    anyone who can publish could otherwise steer the cursor shared by every user of the relay.
//! 2. A position is `(min(created_at, received_at), id)` ([`cursor_position`]): an accepted event dated up to
//!    `MAX_FUTURE_SKEW_SECS` ahead does not carry the cursor past events that are still to come.
//! 3. Every (re)subscription asks for `since = min(cursor, now) - CURSOR_OVERLAP_SECS` ([`resume_since`]), so
//!    `since` is never later than `now - overlap` even when a stored cursor is in the future (written by an older
//!    version, by hand, or by a replica whose clock ran ahead). The overlap re-delivers events already seen, which
//!    the jobs' unique keys turn into no-ops; several replicas may ingest at once for the same reason.
//! 4. Persistence clamps again (`records::advance_cursor` stores at most the database's `now()` and repairs a stored
//!    position that is ahead of it); `bridge_relay_cursor_lag_seconds{relay}` (now − position, exported on every
//!    flush and at startup) makes a cursor ahead of now visible (alert `DivineBridgeRelayCursorAhead`).
//! 5. The cursor only advances after EOSE of the current subscription (stored events arrive newest-first, so
//!    advancing during the replay could skip older ones after a crash) and, after EOSE, as live events are enqueued.
//!
//! Not covered here: an event whose `created_at` is older than the cursor minus the overlap when it reaches the relay
//! (signed long before a slow upload finished) is never re-requested by the live path; finding those is the
//! reconciliation sweep's job (see docs/runbooks/crossposting.md).
//!
//! Relay limits: the author set is split over several subscriptions (`divine-bridge-live-<n>`, at most
//! `authors_per_subscription` authors each), because relays cap the authors of one filter. A relay that ends a
//! subscription with `CLOSED` (too many authors, rate limit, auth required, …) is counted in
//! `bridge_relay_subscriptions_closed_total{relay,reason}` and resubscribed after `closed_retry`; until its every
//! subscription has reached EOSE again its cursor does not move. Relays also cap how many stored events one REQ
//! replays: a replay that delivered at least `replay_truncation_hint` events may have been cut, so the bridge pages
//! back from the oldest one delivered (`until`) to `since` until a page adds nothing new, and only then counts the
//! subscription as caught up. An event that could not be enqueued (database down) holds the relay's cursor and
//! triggers a resubscription, so it is read again.

use crate::jobs::publish::event_time;
use crate::nostr::{self as bridge_nostr, Rejection, MAX_FUTURE_SKEW_SECS, SUPPORTED_KINDS};
use anyhow::Context;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use divine_bridge_db::queue::{self, keys, NewJob};
use divine_bridge_db::schema::account_links;
use divine_bridge_db::states::priority;
use divine_bridge_db::{records, Classified, Db, DbError, ErrorClass, JobKind};
use nostr_sdk::prelude::*;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;
use tokio::sync::watch;

/// Margin of the resubscribe overlap over the admission check's future skew: clock differences between replicas,
/// the relay and the database, plus delivery delay.
pub const CURSOR_OVERLAP_MARGIN_SECS: u64 = 120;
/// The smallest `CURSOR_OVERLAP_SECS` accepted at startup: `MAX_FUTURE_SKEW_SECS` plus the margin. Positions are
/// clamped to the receive time (invariant 2), so this is the second line of defence: a position taken from an event
/// dated at the skew limit (an older replica's cursor, a replica whose clock runs ahead) still cannot hide the
/// events that follow it.
pub const MIN_CURSOR_OVERLAP_SECS: u64 = MAX_FUTURE_SKEW_SECS + CURSOR_OVERLAP_MARGIN_SECS;
/// Default `CURSOR_OVERLAP_SECS` (15 min). A larger overlap only costs re-delivered duplicates, which unique job keys
/// absorb.
pub const DEFAULT_CURSOR_OVERLAP_SECS: u64 = 900;
/// Live subscription ids are this prefix plus the chunk number.
const SUBSCRIPTION_PREFIX: &str = "divine-bridge-live-";
/// Default authors per live subscription (`NOSTR_AUTHORS_PER_SUBSCRIPTION`): below the usual relay caps on one
/// filter's authors (strfry and nostr-rs-relay accept several hundred; some public relays 256–1,000).
pub const DEFAULT_AUTHORS_PER_SUBSCRIPTION: usize = 250;
/// A stored replay of at least this many events may have been truncated by the relay (common caps: 100–5,000).
pub const DEFAULT_REPLAY_TRUNCATION_HINT: usize = 100;
/// How long ingest waits before resubscribing to a relay that closed a subscription or whose events could not be
/// enqueued.
pub const DEFAULT_CLOSED_RETRY: Duration = Duration::from_secs(30);
/// Time allowed for one page of a truncated-replay catch-up.
const CATCH_UP_PAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Ingest settings (from env via `config`).
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub relays: Vec<String>,
    /// `since = min(cursor, now) - cursor_overlap`; `config` requires at least [`MIN_CURSOR_OVERLAP_SECS`] at startup.
    pub cursor_overlap: Duration,
    /// How often the opted-in author set is re-read (subscription updated without restart).
    pub account_refresh: Duration,
    /// At most this many authors in one subscription's filter (≥ 1).
    pub authors_per_subscription: usize,
    /// A stored replay of at least this many events is paged back to `since` before the cursor may move (≥ 1).
    pub replay_truncation_hint: usize,
    /// Delay before resubscribing after `CLOSED` or a failed enqueue.
    pub closed_retry: Duration,
}

impl IngestConfig {
    /// Settings with the default relay limits.
    pub fn new(relays: Vec<String>, cursor_overlap: Duration, account_refresh: Duration) -> IngestConfig {
        IngestConfig {
            relays,
            cursor_overlap,
            account_refresh,
            authors_per_subscription: DEFAULT_AUTHORS_PER_SUBSCRIPTION,
            replay_truncation_hint: DEFAULT_REPLAY_TRUNCATION_HINT,
            closed_retry: DEFAULT_CLOSED_RETRY,
        }
    }
}

/// The `reason` label of `bridge_relay_subscriptions_closed_total`: the NIP-01 machine-readable prefix of a
/// `CLOSED` message (`rate-limited: slow down` → `rate-limited`), or `other`. A closed set, so cardinality stays small.
pub fn closed_reason(message: &str) -> &'static str {
    const PREFIXES: [&str; 9] = [
        "auth-required",
        "blocked",
        "duplicate",
        "error",
        "invalid",
        "mute",
        "pow",
        "rate-limited",
        "restricted",
    ];
    let prefix = message.split(':').next().unwrap_or("").trim();
    PREFIXES.iter().find(|p| **p == prefix).copied().unwrap_or("other")
}

fn chunk_of(id: &SubscriptionId) -> Option<usize> {
    id.as_str().strip_prefix(SUBSCRIPTION_PREFIX)?.parse().ok()
}

fn subscription_id(chunk: usize) -> SubscriptionId {
    SubscriptionId::new(format!("{SUBSCRIPTION_PREFIX}{chunk}"))
}

/// The opted-in authors split into subscription-sized chunks (sorted, so a chunk's members only shift when the set
/// changes).
fn chunk_authors(authors: &BTreeSet<String>, per: usize) -> Vec<Vec<PublicKey>> {
    let keys: Vec<PublicKey> = authors.iter().filter_map(|a| PublicKey::from_hex(a).ok()).collect();
    keys.chunks(per.max(1)).map(|c| c.to_vec()).collect()
}

fn live_filter(authors: &[PublicKey], since: Option<Timestamp>) -> Filter {
    let mut filter = Filter::new()
        .authors(authors.iter().copied())
        .kinds(SUPPORTED_KINDS.iter().map(|k| Kind::from(*k)));
    if let Some(since) = since {
        filter = filter.since(since);
    }
    filter
}

/// Why ingest refused an event: the shared admission check's verdict, or an author outside the opted-in set.
/// `reason()` is the label of `bridge_nostr_events_rejected_total{reason}` and equals `code()`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Refused by [`bridge_nostr::check_event`] (`bad_id`, `bad_signature`, `future_dated`, `unsupported_kind`).
    #[error(transparent)]
    Check(#[from] Rejection),
    /// The author is not opted in, has cross-posting off or is disabled.
    #[error("author is not opted in to cross-posting")]
    NotOptedIn,
}

impl Refusal {
    /// Stable label for `bridge_nostr_events_rejected_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Check(rejection) => rejection.code(),
            Refusal::NotOptedIn => "not_opted_in",
        }
    }
}

impl Classified for Refusal {
    fn code(&self) -> &'static str {
        self.reason()
    }
    fn class(&self) -> ErrorClass {
        ErrorClass::Permanent
    }
}

/// The one admission decision of ingest (live events, catch-up pages, backfill): [`bridge_nostr::check_event`] at
/// `now` (UNIX seconds), then the author must be in `authors`. Counts every refusal in
/// `bridge_nostr_events_rejected_total{reason}`.
pub fn admit(event: &Event, authors: &BTreeSet<String>, now: u64) -> Result<(), Refusal> {
    let verdict = match bridge_nostr::check_event(event, now) {
        Err(rejection) => Err(Refusal::Check(rejection)),
        Ok(()) if !authors.contains(&event.pubkey.to_hex()) => Err(Refusal::NotOptedIn),
        Ok(()) => Ok(()),
    };
    if let Err(refusal) = &verdict {
        metrics::counter!("bridge_nostr_events_rejected_total", "reason" => refusal.reason()).increment(1);
    }
    verdict
}

/// The cursor position an admitted, enqueued event reaches: `(min(created_at, received_at), id)` (invariant 2).
pub fn cursor_position(event: &Event, received_at: DateTime<Utc>) -> (DateTime<Utc>, String) {
    (event_time(event).min(received_at), event.id.to_hex())
}

/// `since` of a (re)subscription: `min(cursor, now) - overlap`, or `now - overlap` without a cursor (invariant 3).
/// Never later than `now - overlap`, whatever the stored cursor says.
pub fn resume_since(cursor: Option<DateTime<Utc>>, now: DateTime<Utc>, overlap: Duration) -> Timestamp {
    let from = cursor.map_or(now, |c| c.min(now)).timestamp();
    let since = from.saturating_sub(overlap.as_secs().min(i64::MAX as u64) as i64);
    Timestamp::from(since.max(0) as u64)
}

fn unix_secs(at: DateTime<Utc>) -> u64 {
    at.timestamp().max(0) as u64
}

/// The job an accepted event becomes: `(kind, unique key)`.
pub fn job_for(event: &Event) -> Option<(JobKind, String)> {
    let id = event.id.to_hex();
    match event.kind.as_u16() {
        bridge_nostr::KIND_PROFILE => Some((JobKind::SyncProfile, format!("profile:{id}"))),
        bridge_nostr::KIND_DELETE => Some((JobKind::DeletePost, format!("delete:{id}"))),
        k if bridge_nostr::is_video_kind(k) => Some((JobKind::PublishPost, format!("publish:{id}"))),
        _ => None,
    }
}

/// The ordering key of an accepted event's job: only what truly conflicts with it is ordered with it (issue 11 §2;
/// the rules are stated in `divine_bridge_db::queue`). A plain video is alone under `event:<id>`; the revisions of
/// one addressable video share `coord:<coordinate>`; a profile sync shares `profile:<pubkey>`; a delete runs after
/// the publish of its one target (its coordinate if it names one, else its one event id); a delete of several
/// targets runs under its own id, its order settled by tombstones (publish checks `records::is_tombstoned`).
pub fn ordering_key_for(event: &Event) -> String {
    let pubkey = event.pubkey.to_hex();
    match event.kind.as_u16() {
        bridge_nostr::KIND_PROFILE => keys::profile(&pubkey),
        bridge_nostr::KIND_DELETE => {
            let (ids, coords) = crate::jobs::publish::delete_targets(event);
            match (ids.as_slice(), coords.as_slice()) {
                (_, [coord]) => keys::coordinate(coord),
                ([id], []) => keys::event(id),
                _ => keys::event(&event.id.to_hex()),
            }
        }
        _ => match crate::jobs::publish::coordinate(event) {
            Some(coord) => keys::coordinate(&coord),
            None => keys::event(&event.id.to_hex()),
        },
    }
}

/// Enqueues the job for an accepted event; `Ok(None)` when it was already enqueued (duplicate delivery).
pub fn enqueue_event(conn: &mut PgConnection, event: &Event, prio: i16) -> Result<Option<i64>, DbError> {
    let Some((kind, unique)) = job_for(event) else {
        return Ok(None);
    };
    let payload =
        serde_json::json!({ "event": serde_json::to_value(event).map_err(|e| DbError::Corrupt(e.to_string()))? });
    let mut job = NewJob::for_account(kind, &event.pubkey.to_hex(), ordering_key_for(event), payload).unique(unique);
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

/// One relay's view of the current subscription generation.
#[derive(Default)]
struct RelayProgress {
    connected: bool,
    /// `since` of the current generation (also the floor of a truncated-replay catch-up).
    since: Option<Timestamp>,
    /// Chunks whose stored replay is complete (EOSE received, and caught up when truncated).
    caught_up: HashSet<usize>,
    /// Per chunk, stored events delivered before its EOSE and the oldest `created_at` among them.
    replayed: HashMap<usize, (usize, Timestamp)>,
    /// Newest enqueued (created_at, id) not yet written to `relay_cursors`.
    pending: Option<(DateTime<Utc>, String)>,
    /// Set after `CLOSED` or a failed enqueue: resubscribe at this time; the cursor holds until then.
    retry_at: Option<tokio::time::Instant>,
}

impl RelayProgress {
    /// Every chunk of the current generation caught up and nothing waiting for a retry: the cursor may advance.
    fn complete(&self, chunks: usize) -> bool {
        self.retry_at.is_none() && self.caught_up.len() >= chunks
    }
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
    // The lag gauge exists from startup, before the first event: a cursor left ahead of now by an older version is
    // visible (and alerted on) at once.
    for relay in &cfg.relays {
        export_cursor_lag(&db, &relay_key(relay)).await;
    }

    let mut authors: BTreeSet<String> = BTreeSet::new();
    let mut chunks: Vec<Vec<PublicKey>> = Vec::new();
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
                        let previous = chunks.len();
                        chunks = chunk_authors(&authors, cfg.authors_per_subscription);
                        for stale in chunks.len()..previous {
                            client.unsubscribe(&subscription_id(stale)).await;
                        }
                        for relay in &cfg.relays {
                            let entry = progress.entry(relay_key(relay)).or_default();
                            subscribe_relay(&client, &db, &cfg, relay, &chunks, entry).await;
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
                    let reconnected = connected && !entry.connected;
                    let retry_due = connected && entry.retry_at.is_some_and(|t| t <= tokio::time::Instant::now());
                    if (reconnected || retry_due) && !chunks.is_empty() {
                        // (Re)connected or retrying: resubscribe from the persisted cursor minus the overlap.
                        subscribe_relay(&client, &db, &cfg, &key, &chunks, entry).await;
                    }
                    entry.connected = connected;
                }
            }
            _ = flush_tick.tick() => flush_cursors(&db, &mut progress, chunks.len()).await,
            n = notifications.recv() => {
                let n = match n {
                    Ok(n) => n,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => {
                        // Dropped notifications are recovered by the cursor overlap on the next resubscribe.
                        tracing::warn!(lagged = k, "ingest fell behind the relay pool; resubscribing");
                        for relay in &cfg.relays {
                            let entry = progress.entry(relay_key(relay)).or_default();
                            subscribe_relay(&client, &db, &cfg, relay, &chunks, entry).await;
                        }
                        continue;
                    }
                    Err(_) => break,
                };
                let RelayPoolNotification::Message { relay_url, message } = n else { continue };
                let relay = relay_url.to_string();
                match message {
                    RelayMessage::Event { subscription_id, event } => {
                        let Some(chunk) = chunk_of(&subscription_id) else { continue };
                        let received_at = Utc::now();
                        let event = event.into_owned();
                        let created = event.created_at;
                        let done = accept(&db, &authors, event, received_at).await;
                        let entry = progress.entry(relay).or_default();
                        if !entry.caught_up.contains(&chunk) {
                            let r = entry.replayed.entry(chunk).or_insert((0, created));
                            r.0 += 1;
                            r.1 = r.1.min(created);
                        }
                        note_accepted(entry, done, &cfg);
                    }
                    RelayMessage::EndOfStoredEvents(sub) => {
                        let Some(chunk) = chunk_of(&sub) else { continue };
                        let Some(authors_of_chunk) = chunks.get(chunk).cloned() else { continue };
                        let entry = progress.entry(relay.clone()).or_default();
                        let (count, oldest) = entry.replayed.remove(&chunk).unwrap_or((0, Timestamp::now()));
                        if count >= cfg.replay_truncation_hint.max(1) {
                            tracing::info!(relay = %relay, chunk, count, "stored replay may be truncated; paging back");
                            let floor = entry.since;
                            let ok = catch_up(&client, &db, &authors, &relay, &authors_of_chunk, floor, oldest, entry, &cfg).await;
                            if !ok {
                                continue;
                            }
                        }
                        entry.caught_up.insert(chunk);
                        flush_cursors(&db, &mut progress, chunks.len()).await;
                    }
                    RelayMessage::Closed { subscription_id, message } => {
                        let Some(chunk) = chunk_of(&subscription_id) else { continue };
                        let reason = closed_reason(&message);
                        metrics::counter!("bridge_relay_subscriptions_closed_total", "relay" => relay.clone(), "reason" => reason)
                            .increment(1);
                        tracing::warn!(
                            code = "relay_subscription_closed",
                            relay = %relay,
                            chunk,
                            reason,
                            message = %message,
                            retry_in_secs = cfg.closed_retry.as_secs(),
                            "relay closed a subscription; its cursor holds until the resubscription catches up"
                        );
                        let entry = progress.entry(relay).or_default();
                        entry.caught_up.remove(&chunk);
                        entry.retry_at = Some(tokio::time::Instant::now() + cfg.closed_retry);
                    }
                    RelayMessage::Notice(message) => {
                        tracing::warn!(relay = %relay, notice = %message, "relay notice");
                    }
                    _ => {}
                }
            }
        }
    }
    flush_cursors(&db, &mut progress, chunks.len()).await;
    client.shutdown().await;
    Ok(())
}

/// What became of one event in [`accept`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Accepted {
    /// Admitted and its job durably enqueued (now or before): the cursor may reach this position.
    Durable((DateTime<Utc>, String)),
    /// Refused for good (counted by reason): handled, but no cursor position (invariant 1).
    Refused,
    /// Could not be enqueued (database unavailable): it must be read again.
    Unavailable,
}

/// Records the outcome of [`accept`]: the newest durable position; nothing for a refused event; for an event that
/// could not be enqueued, a hold on the relay's cursor and a resubscription after `closed_retry`.
fn note_accepted(entry: &mut RelayProgress, done: Accepted, cfg: &IngestConfig) {
    match done {
        Accepted::Durable(position) => {
            if entry.pending.as_ref().is_none_or(|p| *p < position) {
                entry.pending = Some(position);
            }
        }
        Accepted::Refused => {}
        Accepted::Unavailable => {
            entry
                .retry_at
                .get_or_insert(tokio::time::Instant::now() + cfg.closed_retry);
        }
    }
}

fn relay_key(url: &str) -> String {
    RelayUrl::parse(url)
        .map(|u| u.to_string())
        .unwrap_or_else(|_| url.to_string())
}

/// Starts a new subscription generation on one relay: every chunk from the persisted cursor minus the overlap.
async fn subscribe_relay(
    client: &Client,
    db: &Db,
    cfg: &IngestConfig,
    relay: &str,
    chunks: &[Vec<PublicKey>],
    entry: &mut RelayProgress,
) {
    let key = relay_key(relay);
    entry.caught_up.clear();
    entry.replayed.clear();
    entry.retry_at = None;
    if chunks.is_empty() {
        return;
    }
    let cursor = {
        let key = key.clone();
        db.run(move |c| records::get_cursor(c, &key)).await
    };
    // No cursor yet (a new relay or a fresh database): start at now minus the overlap. Older history is the
    // `backfill_author` job's, which every opt-in and re-enable enqueues. A stored cursor ahead of now is not
    // trusted (invariant 3): resuming there would stop bridging for every user of the relay.
    let now = Utc::now();
    let stored = match cursor {
        Ok(stored) => stored.map(|(at, _)| at),
        Err(e) => {
            tracing::warn!(relay = %key, error = %e, "cursor unavailable; subscribing with overlap from now");
            None
        }
    };
    if let Some(at) = stored.filter(|at| *at > now) {
        tracing::warn!(
            code = "relay_cursor_ahead",
            relay = %key,
            cursor = %at,
            "stored relay cursor is ahead of now; resubscribing from now minus the overlap instead"
        );
    }
    let since = Some(resume_since(stored, now, cfg.cursor_overlap));
    entry.since = since;
    for (i, authors) in chunks.iter().enumerate() {
        let filter = live_filter(authors, since);
        if let Err(e) = client
            .subscribe_with_id_to([key.as_str()], subscription_id(i), filter, None)
            .await
        {
            tracing::warn!(relay = %key, chunk = i, error = %e, "subscribe failed; retrying later");
            entry.retry_at = Some(tokio::time::Instant::now() + cfg.closed_retry);
        }
    }
    tracing::info!(relay = %key, ?since, chunks = chunks.len(), "subscribed");
}

/// Pages one chunk's history on `relay` back from `until` (inclusive: events sharing that second are re-fetched and
/// deduplicated) to `since`, enqueueing every accepted event, until a page adds nothing new. Returns false when the
/// catch-up could not finish (fetch or enqueue failed); a resubscription is then scheduled.
#[allow(clippy::too_many_arguments)]
async fn catch_up(
    client: &Client,
    db: &Db,
    authors: &BTreeSet<String>,
    relay: &str,
    chunk: &[PublicKey],
    since: Option<Timestamp>,
    mut until: Timestamp,
    entry: &mut RelayProgress,
    cfg: &IngestConfig,
) -> bool {
    let mut seen: HashSet<EventId> = HashSet::new();
    loop {
        let filter = live_filter(chunk, since).until(until);
        let events = match client.fetch_events_from([relay], filter, CATCH_UP_PAGE_TIMEOUT).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(relay = %relay, error = %e, "catch-up page failed; resubscribing later");
                entry.retry_at = Some(tokio::time::Instant::now() + cfg.closed_retry);
                return false;
            }
        };
        let received_at = Utc::now();
        let mut new = 0usize;
        let mut oldest = until;
        for event in events.into_iter() {
            oldest = oldest.min(event.created_at);
            if !seen.insert(event.id) {
                continue;
            }
            new += 1;
            let done = accept(db, authors, event, received_at).await;
            let unavailable = done == Accepted::Unavailable;
            note_accepted(entry, done, cfg);
            if unavailable {
                return false;
            }
        }
        if new == 0 || since.is_some_and(|s| oldest <= s) {
            return true;
        }
        until = oldest;
    }
}

/// Admits and enqueues one event received at `received_at`. Only an admitted event whose job is durably enqueued
/// (or already was) yields a cursor position, clamped to `received_at` (invariants 1 and 2).
async fn accept(db: &Db, authors: &BTreeSet<String>, event: Event, received_at: DateTime<Utc>) -> Accepted {
    if admit(&event, authors, unix_secs(received_at)).is_err() {
        return Accepted::Refused;
    }
    let position = cursor_position(&event, received_at);
    match db.run(move |c| enqueue_event(c, &event, priority::LIVE)).await {
        Ok(_) => Accepted::Durable(position),
        Err(e) => {
            tracing::warn!(error = %e, "could not enqueue event; it will be re-read from the cursor");
            Accepted::Unavailable
        }
    }
}

/// Writes each caught-up relay's newest durable position, then exports every relay's cursor lag.
async fn flush_cursors(db: &Db, progress: &mut HashMap<String, RelayProgress>, chunks: usize) {
    for (relay, p) in progress.iter_mut() {
        if chunks > 0 && p.complete(chunks) {
            if let Some((at, id)) = p.pending.take() {
                let (relay2, id2) = (relay.clone(), id.clone());
                if let Err(e) = db.run(move |c| records::advance_cursor(c, &relay2, at, &id2)).await {
                    tracing::warn!(relay = %relay, error = %e, "cursor not saved");
                    p.pending = Some((at, id));
                }
            }
        }
        export_cursor_lag(db, relay).await;
    }
}

/// Sets `bridge_relay_cursor_lag_seconds{relay}` to now minus the stored position (negative: the cursor is ahead of
/// now; 0 while the relay has no cursor, as its subscription then starts at now). Reads the stored row, so the gauge
/// also shows what other replicas wrote.
async fn export_cursor_lag(db: &Db, relay: &str) {
    let key = relay.to_string();
    match db.run(move |c| records::get_cursor(c, &key)).await {
        Ok(cursor) => {
            let lag = cursor.map_or(0.0, |(at, _)| (Utc::now() - at).num_milliseconds() as f64 / 1000.0);
            metrics::gauge!("bridge_relay_cursor_lag_seconds", "relay" => relay.to_string()).set(lag);
        }
        Err(e) => tracing::debug!(relay = %relay, error = %e, "cursor lag not exported: cursor unavailable"),
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
            .kinds(SUPPORTED_KINDS.iter().map(|k| Kind::from(*k)))
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
        // Continue from the oldest second seen (inclusive): events sharing it that did not fit in the page are
        // fetched by the next page, the ones already seen are deduplicated, and a page adding nothing ends the walk.
        until = oldest;
    }
    client.shutdown().await;
    // The same admission as the live path; the only accepted author is the one being backfilled (a relay answering
    // with someone else's events is refused as `not_opted_in`).
    let only_author = BTreeSet::from([author.to_hex()]);
    let now = unix_secs(Utc::now());
    let mut events: Vec<Event> = collected
        .into_values()
        .filter(|e| admit(e, &only_author, now).is_ok())
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
