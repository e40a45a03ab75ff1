//! Relay ingest: subscribes to the opted-in accounts' events on every relay in `NOSTR_RELAYS`, admits them, and turns
//! each accepted event into a durable job (publish / delete / profile). Also pages an author's history for backfill.
//!
//! Owns relay connections, subscription filters, the division of relay × shard subscriptions among replicas (leases
//! in `divine_bridge_db::shards`), the per-shard cursors and the kind → job mapping. It must not translate or publish
//! anything: the worker does that from the job, so ingest stays cheap and a crash here loses nothing that is not
//! replayed from the cursor. It must not keep its own event checks either: admission is
//! [`crate::nostr::check_event`] (the check the fixture corpus tests) plus the opt-in set, in [`admit`], for live
//! events, truncated-replay catch-up and backfill alike.
//!
//! Fleet (issue 11 §4): the authors of each relay fall into `shards` stable buckets ([`shard_of`]: SHA-256 of the
//! pubkey), and each relay × shard is read by the one live replica holding its lease ([`run`]). A change of the
//! author set re-subscribes only the shards whose list changed ([`changed_shards`]). Each shard has its own cursor;
//! everything said below of "the cursor" holds per (relay, shard), and a cursor write is fenced by the shard's lease
//! token, so a replica that lost a shard cannot move it.
//!
//! Cursor invariants (a shard's cursor is where its next (re)subscription resumes):
//! 1. A position comes only from an event that was ADMITTED and whose job is durably enqueued (or was already). A
//!    refused event — future-dated, bad id, bad signature, unsupported kind, author not opted in — never moves it:
//!    anyone who can publish could otherwise steer the cursor shared by every user of the relay.
//! 2. A position is `(min(created_at, received_at), id)` ([`cursor_position`]): an accepted event dated up to
//!    `MAX_FUTURE_SKEW_SECS` ahead does not carry the cursor past events that are still to come.
//! 3. Every (re)subscription asks for `since = min(cursor, now) - CURSOR_OVERLAP_SECS` ([`resume_since`]), so
//!    `since` is never later than `now - overlap` even when a stored cursor is in the future (written by an older
//!    version, by hand, or by a replica whose clock ran ahead). The overlap re-delivers events already seen, which
//!    the jobs' unique keys turn into no-ops; a shard handed from one replica to another may be read by both for a
//!    moment for the same reason.
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
//! Relay limits: a shard's authors are split over several subscriptions (`divine-bridge-live-<shard>-<n>`, at most
//! `authors_per_subscription` authors each), because relays cap the authors of one filter. A relay that ends a
//! subscription with `CLOSED` (too many authors, rate limit, auth required, …) is counted in
//! `bridge_relay_subscriptions_closed_total{relay,reason}` and resubscribed after `closed_retry`; until every
//! subscription of the shard has reached EOSE again its cursor does not move. Relays also cap how many stored events
//! one REQ replays: a replay that delivered at least `replay_truncation_hint` events may have been cut, so the bridge pages
//! back from the oldest one delivered (`until`) to `since` until a page adds nothing new, and only then counts the
//! subscription as caught up. An event that could not be enqueued (database down) holds the shard's cursor and
//! triggers a resubscription, so it is read again.
//!
//! Logs: every line ingest writes while reading a relay is inside a span that says which read it belongs to.
//! Subscription traffic (the stored replay and live events, and the truncated-replay catch-up pages) is in
//! `relay_subscription{relay, shard, chunk, mode}` with `mode` `live` or `catchup`; history reads
//! ([`fetch_history`]: backfill and the reconciliation sweep) are in `relay_history{relay, mode}` with `mode`
//! `backfill` or `reconcile` ([`ReadMode`]).

use crate::jobs::args::EventJob;
use crate::nostr::{self as bridge_nostr, Rejection, MAX_FUTURE_SKEW_SECS, SUPPORTED_KINDS};
use anyhow::Context;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use divine_bridge_db::queue::{self, keys};
use divine_bridge_db::shards::{self, ShardLease};
use divine_bridge_db::states::priority;
use divine_bridge_db::{Classified, Db, DbError, ErrorClass, ErrorCode, JobKind};
use nostr_sdk::prelude::*;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument;

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
/// Live subscription ids are this prefix plus `<shard>-<chunk>`.
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
/// rust-nostr's default capacity of a relay pool's notification channel ([`IngestConfig::notification_capacity`]).
pub const DEFAULT_NOTIFICATION_CAPACITY: usize = 4096;
/// After the live pool's notification channel overflowed (`Lagged`), how long the resubscription of the held shards
/// waits (it runs on the next status tick after this).
const LAGGED_RESUBSCRIBE_DELAY: Duration = Duration::from_secs(1);

/// Which kind of relay read a log line belongs to: the `mode` field of the `relay_subscription` and `relay_history`
/// spans (see the module's "Logs").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// An event delivered on a live subscription (its stored replay included).
    Live,
    /// A page of the catch-up that pages back a truncated stored replay.
    Catchup,
    /// A page of an author's history read for a `backfill_author` job.
    Backfill,
    /// A page of the reconciliation sweep's window.
    Reconcile,
}

impl ReadMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            ReadMode::Live => "live",
            ReadMode::Catchup => "catchup",
            ReadMode::Backfill => "backfill",
            ReadMode::Reconcile => "reconcile",
        }
    }

    /// The span of one subscription chunk's traffic on `relay`.
    fn subscription_span(self, relay: &str, shard: u32, chunk: usize) -> tracing::Span {
        tracing::info_span!("relay_subscription", relay, shard, chunk, mode = self.as_str())
    }
}

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
    /// Stable author buckets per relay (`NOSTR_INGEST_SHARDS`, ≥ 1): the unit divided among replicas.
    pub shards: u32,
    /// Shard lease period (`INGEST_LEASE_SECS`); heartbeats and rebalancing every third of it.
    pub lease: Duration,
    /// Entries of a relay pool's notification channel (rust-nostr's default, [`DEFAULT_NOTIFICATION_CAPACITY`]). When
    /// the loop falls this far behind, notifications are dropped (`Lagged`) and the held shards are re-read from their
    /// cursors. Not an operator setting: tests shrink it to overflow it cheaply.
    pub notification_capacity: usize,
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
            shards: DEFAULT_INGEST_SHARDS,
            lease: DEFAULT_INGEST_LEASE,
            notification_capacity: DEFAULT_NOTIFICATION_CAPACITY,
        }
    }
}

/// The `reason` label of `bridge_relay_subscriptions_closed_total`: the NIP-01 machine-readable prefix of a
/// `CLOSED` message (`rate-limited: slow down` → `rate-limited`), or `other`. A closed set, so cardinality stays small.
pub fn closed_reason(message: &str) -> &'static str {
    let prefix = message.split(':').next().unwrap_or("").trim();
    let known = &CLOSED_REASONS[..CLOSED_REASONS.len() - 1];
    known.iter().find(|p| **p == prefix).copied().unwrap_or("other")
}

/// Every value [`closed_reason`] returns: the NIP-01 machine-readable prefixes, then `other` (last). The `reason`
/// label set of `bridge_relay_subscriptions_closed_total`, created at zero per relay at startup.
pub const CLOSED_REASONS: [&str; 10] = [
    "auth-required",
    "blocked",
    "duplicate",
    "error",
    "invalid",
    "mute",
    "pow",
    "rate-limited",
    "restricted",
    "other",
];

/// Default `NOSTR_INGEST_SHARDS`: one shard per relay, the pre-shard layout (one replica at a time ingests a relay).
/// A fleet sets more (e.g. 16) so replicas share a relay's authors.
pub const DEFAULT_INGEST_SHARDS: u32 = 1;
/// The largest `NOSTR_INGEST_SHARDS` accepted at startup (each held shard is at least one relay subscription).
pub const MAX_INGEST_SHARDS: u32 = 1024;
/// Default `INGEST_LEASE_SECS`: a dead replica's shards are taken over within this long; heartbeats and the
/// rebalancing round run every third of it.
pub const DEFAULT_INGEST_LEASE: Duration = Duration::from_secs(30);

/// The stable shard of an author: the first 8 bytes of SHA-256(pubkey), big-endian, modulo `shards`. Depends on
/// the author alone, so a change of the author set changes only the shards of the authors that came or went.
pub fn shard_of(author: &PublicKey, shards: u32) -> u32 {
    use nostr_sdk::hashes::{sha256, Hash as _};
    let digest = sha256::Hash::hash(&author.to_bytes()).to_byte_array();
    let head = u64::from_be_bytes([
        digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7],
    ]);
    (head % u64::from(shards.max(1))) as u32
}

/// The opted-in authors by shard: `result[s]` holds shard `s`'s authors in pubkey order.
pub fn shard_authors(authors: &BTreeSet<String>, shards: u32) -> Vec<Vec<PublicKey>> {
    let mut by_shard = vec![Vec::new(); shards.max(1) as usize];
    for key in authors.iter().filter_map(|a| PublicKey::from_hex(a).ok()) {
        by_shard[shard_of(&key, shards) as usize].push(key);
    }
    by_shard
}

/// The shards whose author lists differ between two [`shard_authors`] results: the only ones re-subscribed.
pub fn changed_shards(old: &[Vec<PublicKey>], new: &[Vec<PublicKey>]) -> Vec<u32> {
    (0..old.len().max(new.len()))
        .filter(|&s| old.get(s).map_or(&[][..], |v| v) != new.get(s).map_or(&[][..], |v| v))
        .map(|s| s as u32)
        .collect()
}

/// `(shard, chunk)` of a live subscription id `divine-bridge-live-<shard>-<chunk>`.
fn chunk_of(id: &SubscriptionId) -> Option<(u32, usize)> {
    let (shard, chunk) = id.as_str().strip_prefix(SUBSCRIPTION_PREFIX)?.split_once('-')?;
    Some((shard.parse().ok()?, chunk.parse().ok()?))
}

fn subscription_id(shard: u32, chunk: usize) -> SubscriptionId {
    SubscriptionId::new(format!("{SUBSCRIPTION_PREFIX}{shard}-{chunk}"))
}

/// One shard's authors split into subscription-sized chunks (a shard larger than the relay's author cap needs
/// several subscriptions).
fn chunk_authors(authors: &[PublicKey], per: usize) -> Vec<Vec<PublicKey>> {
    authors.chunks(per.max(1)).map(|c| c.to_vec()).collect()
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
    /// Every value of [`Refusal::reason`]: the `reason` label set of `bridge_nostr_events_rejected_total`, created
    /// at zero at startup.
    pub const REASONS: [&'static str; 5] = [
        bridge_nostr::Rejection::REASONS[0],
        bridge_nostr::Rejection::REASONS[1],
        bridge_nostr::Rejection::REASONS[2],
        bridge_nostr::Rejection::REASONS[3],
        ErrorCode::NotOptedIn.as_str(),
    ];

    pub fn reason(&self) -> &'static str {
        self.code().as_str()
    }
}

impl Classified for Refusal {
    fn code(&self) -> ErrorCode {
        match self {
            Refusal::Check(rejection) => rejection.code(),
            Refusal::NotOptedIn => ErrorCode::NotOptedIn,
        }
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
        metrics::counter!(crate::metrics::NOSTR_EVENTS_REJECTED, "reason" => refusal.reason()).increment(1);
    }
    verdict
}

/// The cursor position an admitted, enqueued event reaches: `(min(created_at, received_at), id)` (invariant 2).
pub fn cursor_position(event: &Event, received_at: DateTime<Utc>) -> (DateTime<Utc>, String) {
    (bridge_nostr::admitted_time(event).min(received_at), event.id.to_hex())
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

/// The job an accepted event becomes: `(kind, unique key)` ([`EventJob::of`], the one kind → job mapping).
pub fn job_for(event: &Event) -> Option<(JobKind, String)> {
    EventJob::of(event).map(|job| (job.kind(), job.unique_key()))
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
            let targets = bridge_nostr::deletion_targets(event);
            match (targets.ids.as_slice(), targets.coordinates.as_slice()) {
                (_, [coord]) => keys::coordinate(&coord.to_string()),
                ([id], []) => keys::event(&id.to_hex()),
                _ => keys::event(&event.id.to_hex()),
            }
        }
        _ => match bridge_nostr::event_coordinate(event) {
            Some(coord) => keys::coordinate(&coord.to_string()),
            None => keys::event(&event.id.to_hex()),
        },
    }
}

/// Enqueues the job for an accepted event; `Ok(None)` when it was already enqueued (duplicate delivery).
/// The job is built from the event's args ([`EventJob`]: kind, keys, payload, source time), at `prio` (live, or
/// backfill for imported history).
pub fn enqueue_event(conn: &mut PgConnection, event: &Event, prio: i16) -> Result<Option<i64>, DbError> {
    let Some(job) = EventJob::of(event) else {
        return Ok(None);
    };
    queue::enqueue(conn, &job.new_job()?.at_priority(prio))
}

/// Pubkeys (hex) whose events the bridge accepts: [`divine_bridge_db::accounts::followed_pubkeys`] — enabled
/// accounts, and paused ones that have a DID (their deletes and profile changes are still honoured; their posts end
/// `ineligible account_disabled` and are re-queued on enable).
pub fn load_enabled_authors(conn: &mut PgConnection) -> Result<BTreeSet<String>, DbError> {
    divine_bridge_db::accounts::followed_pubkeys(conn)
}

/// One held shard of one relay: its lease and the current subscription generation.
struct ShardProgress {
    lease: ShardLease,
    /// Until when the lease is known to be held (last successful heartbeat + lease): past it the shard is dropped
    /// even when the database cannot be reached to confirm.
    valid_until: tokio::time::Instant,
    /// The authors currently subscribed for this shard.
    authors: Vec<PublicKey>,
    /// Subscriptions open for it on the relay (`divine-bridge-live-<shard>-0..subs`).
    subs: usize,
    /// `since` of the current generation (also the floor of a truncated-replay catch-up).
    since: Option<Timestamp>,
    /// Chunks whose stored replay is complete (EOSE received, and caught up when truncated).
    caught_up: HashSet<usize>,
    /// Per chunk, stored events delivered before its EOSE and the oldest `created_at` among them.
    replayed: HashMap<usize, (usize, Timestamp)>,
    /// Newest enqueued (created_at, id) not yet written to the shard's cursor.
    pending: Option<(DateTime<Utc>, String)>,
    /// Set after `CLOSED` or a failed enqueue: resubscribe at this time; the cursor holds until then.
    retry_at: Option<tokio::time::Instant>,
}

impl ShardProgress {
    fn new(lease: ShardLease, valid_until: tokio::time::Instant) -> ShardProgress {
        ShardProgress {
            lease,
            valid_until,
            authors: Vec::new(),
            subs: 0,
            since: None,
            caught_up: HashSet::new(),
            replayed: HashMap::new(),
            pending: None,
            retry_at: None,
        }
    }

    /// Every chunk of the current generation caught up and nothing waiting for a retry: the cursor may advance.
    fn complete(&self) -> bool {
        self.retry_at.is_none() && self.caught_up.len() >= self.subs
    }
}

/// A relay pool connected to `relays` that verifies what its subscriptions return (the live pool, and the pool of
/// catch-up pages in [`run`]).
async fn relay_pool(relays: &[String], notification_capacity: usize) -> anyhow::Result<Client> {
    let pool = RelayPoolOptions::new().notification_channel_size(notification_capacity.max(1));
    let client = Client::builder()
        .opts(ClientOptions::new().verify_subscriptions(true).pool(pool))
        .build();
    for url in relays {
        client
            .add_relay(url.as_str())
            .await
            .with_context(|| format!("bad relay url {url}"))?;
    }
    client.connect().await;
    Ok(client)
}

/// This process's replica id in `ingest_replicas` / `ingest_shards.owner`: host, pid and a random suffix (one per
/// [`run`], so two loops in one process — tests — are two replicas).
fn replica_id() -> String {
    let host = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "replica".into());
    format!("{host}-{}-{:08x}", std::process::id(), rand::random::<u32>())
}

/// Relay and held shards, keyed by (normalized relay url, shard).
type Held = HashMap<(String, u32), ShardProgress>;

/// The live subscription loop. Returns when `shutdown` flips to true.
///
/// Division among replicas (issue 11 §4; lease semantics in `divine_bridge_db::shards`): every `lease / 3` the loop
/// renews its registration and its shard leases, drops the shards it lost, releases those above its fair share and
/// acquires free ones up to it. It subscribes only to the shards it holds, so each relay × shard is read by one
/// replica; a replica that dies stops renewing and its shards are taken within one lease period. A change of the
/// author set re-subscribes only the held shards whose author list changed.
pub async fn run(db: Db, cfg: IngestConfig, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    if cfg.relays.is_empty() {
        tracing::warn!(code = "no_relays_configured", "NOSTR_RELAYS is empty; ingest is idle");
        let _ = shutdown.wait_for(|s| *s).await;
        return Ok(());
    }
    let client = relay_pool(&cfg.relays, cfg.notification_capacity).await?;
    // Catch-up pages are read through a pool of their own. Every event a pool receives is broadcast on its
    // notification channel (4,096 entries by default), and this loop does not read that channel while it awaits a
    // catch-up: a catch-up of more than 4,096 events through the live pool overflowed it, the loop saw `Lagged`,
    // resubscribed every shard from the cursor minus the overlap, and the replay started the same catch-up again —
    // without end (seen on the localnet with ~10,000 events inside the overlap window; test
    // `a_catch_up_larger_than_the_notification_channel_settles`). The live pool carries live subscriptions only.
    let history = relay_pool(&cfg.relays, cfg.notification_capacity).await?;
    let mut notifications = client.notifications();
    let relays: Vec<String> = cfg.relays.iter().map(|r| relay_key(r)).collect();
    // The lag gauge exists from startup, before the first event: a cursor left ahead of now by an older version is
    // visible (and alerted on) at once.
    for relay in &relays {
        export_cursor_lag(&db, relay, cfg.shards).await;
    }
    let owner = replica_id();
    tracing::info!(owner = %owner, shards = cfg.shards, lease_secs = cfg.lease.as_secs(), "ingest replica starting");

    let mut authors: BTreeSet<String> = BTreeSet::new();
    let mut by_shard: Vec<Vec<PublicKey>> = vec![Vec::new(); cfg.shards.max(1) as usize];
    let mut held: Held = HashMap::new();
    let mut connected: HashMap<String, bool> = HashMap::new();
    let mut ensured: HashSet<String> = HashSet::new();
    let mut refresh = tokio::time::interval(cfg.account_refresh);
    let mut lease_tick = tokio::time::interval((cfg.lease / 3).max(Duration::from_millis(100)));
    let mut status_tick = tokio::time::interval(Duration::from_secs(2));
    let mut flush_tick = tokio::time::interval(Duration::from_secs(1));
    // Authors first, so the first shards acquired are subscribed with the right lists.
    refresh.tick().await;
    match db.run(load_enabled_authors).await {
        Ok(a) => {
            by_shard = shard_authors(&a, cfg.shards);
            authors = a;
        }
        Err(e) => tracing::warn!(error = %e, "could not load opted-in authors"),
    }

    loop {
        tokio::select! {
            _ = shutdown.changed() => { if *shutdown.borrow() { break; } }
            _ = refresh.tick() => {
                match db.run(load_enabled_authors).await {
                    Ok(now_authors) if now_authors != authors => {
                        let next = shard_authors(&now_authors, cfg.shards);
                        let changed = changed_shards(&by_shard, &next);
                        tracing::info!(count = now_authors.len(), ?changed, "opted-in author set changed; resubscribing the changed shards");
                        authors = now_authors;
                        by_shard = next;
                        for ((relay, shard), p) in held.iter_mut() {
                            if changed.contains(shard) {
                                p.authors = by_shard[*shard as usize].clone();
                                if connected.get(relay).copied().unwrap_or(false) {
                                    subscribe_shard(&client, &db, &cfg, relay, *shard, p).await;
                                }
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "could not load opted-in authors"),
                }
            }
            _ = lease_tick.tick() => {
                rebalance(&client, &db, &cfg, &owner, &relays, &by_shard, &connected, &mut ensured, &mut held).await;
            }
            _ = status_tick.tick() => {
                for (url, relay) in client.relays().await {
                    let key = url.to_string();
                    let is_connected = relay.is_connected();
                    metrics::gauge!(crate::metrics::RELAY_CONNECTED, "relay" => key.clone()).set(if is_connected { 1.0 } else { 0.0 });
                    let was = connected.insert(key.clone(), is_connected).unwrap_or(false);
                    if !is_connected {
                        continue;
                    }
                    let now = tokio::time::Instant::now();
                    for ((relay, shard), p) in held.iter_mut().filter(|((r, _), _)| *r == key) {
                        let retry_due = p.retry_at.is_some_and(|t| t <= now);
                        if !was || retry_due {
                            // (Re)connected or retrying: resubscribe from the persisted cursor minus the overlap.
                            subscribe_shard(&client, &db, &cfg, relay, *shard, p).await;
                        }
                    }
                }
            }
            _ = flush_tick.tick() => flush_cursors(&db, &cfg, &mut held, &relays).await,
            n = notifications.recv() => {
                let n = match n {
                    Ok(n) => n,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => {
                        // Dropped notifications are recovered by the cursor overlap on the next resubscribe. The
                        // cursors hold from now on (no chunk is caught up) and the resubscription waits
                        // [`LAGGED_RESUBSCRIBE_DELAY`] (the status tick runs it), so the channel drains first: an
                        // immediate resubscription whose replay overflows the channel again would never settle.
                        tracing::warn!(lagged = k, "ingest fell behind the relay pool; resubscribing");
                        let at = tokio::time::Instant::now() + LAGGED_RESUBSCRIBE_DELAY;
                        for p in held.values_mut() {
                            p.caught_up.clear();
                            p.retry_at = Some(p.retry_at.map_or(at, |t| t.min(at)));
                        }
                        continue;
                    }
                    Err(_) => break,
                };
                let RelayPoolNotification::Message { relay_url, message } = n else { continue };
                let relay = relay_url.to_string();
                match message {
                    RelayMessage::Event { subscription_id, event } => {
                        let Some((shard, chunk)) = chunk_of(&subscription_id) else { continue };
                        // A late event of a shard this replica no longer holds is left to the new holder.
                        let Some(p) = held.get_mut(&(relay, shard)) else { continue };
                        let received_at = Utc::now();
                        let event = event.into_owned();
                        let created = event.created_at;
                        let span = ReadMode::Live.subscription_span(relay_url.as_str(), shard, chunk);
                        let done = accept(&db, &authors, event, received_at).instrument(span).await;
                        if !p.caught_up.contains(&chunk) {
                            let r = p.replayed.entry(chunk).or_insert((0, created));
                            r.0 += 1;
                            r.1 = r.1.min(created);
                        }
                        note_accepted(p, done, &cfg);
                    }
                    RelayMessage::EndOfStoredEvents(sub) => {
                        let Some((shard, chunk)) = chunk_of(&sub) else { continue };
                        let Some(p) = held.get_mut(&(relay.clone(), shard)) else { continue };
                        let Some(authors_of_chunk) = chunk_authors(&p.authors, cfg.authors_per_subscription).get(chunk).cloned() else { continue };
                        let (count, oldest) = p.replayed.remove(&chunk).unwrap_or((0, Timestamp::now()));
                        if count >= cfg.replay_truncation_hint.max(1) {
                            let span = ReadMode::Catchup.subscription_span(&relay, shard, chunk);
                            span.in_scope(|| tracing::info!(count, "stored replay may be truncated; paging back"));
                            let floor = p.since;
                            let ok = catch_up(&history, &db, &authors, &relay, &authors_of_chunk, floor, oldest, p, &cfg)
                                .instrument(span)
                                .await;
                            if !ok {
                                continue;
                            }
                        }
                        p.caught_up.insert(chunk);
                        flush_cursors(&db, &cfg, &mut held, &relays).await;
                    }
                    RelayMessage::Closed { subscription_id, message } => {
                        let Some((shard, chunk)) = chunk_of(&subscription_id) else { continue };
                        let reason = closed_reason(&message);
                        metrics::counter!(crate::metrics::RELAY_SUBSCRIPTIONS_CLOSED, "relay" => relay.clone(), "reason" => reason)
                            .increment(1);
                        tracing::warn!(
                            code = "relay_subscription_closed",
                            relay = %relay,
                            shard,
                            chunk,
                            reason,
                            message = %message,
                            retry_in_secs = cfg.closed_retry.as_secs(),
                            "relay closed a subscription; its shard's cursor holds until the resubscription catches up"
                        );
                        if let Some(p) = held.get_mut(&(relay, shard)) {
                            p.caught_up.remove(&chunk);
                            p.retry_at = Some(tokio::time::Instant::now() + cfg.closed_retry);
                        }
                    }
                    RelayMessage::Notice(message) => {
                        tracing::warn!(relay = %relay, notice = %message, "relay notice");
                    }
                    _ => {}
                }
            }
        }
    }
    flush_cursors(&db, &cfg, &mut held, &relays).await;
    history.shutdown().await;
    // Hand the shards over at once instead of after a lease period.
    for ((relay, _), p) in held.drain() {
        let lease = p.lease;
        if let Err(e) = db.run(move |c| shards::release(c, &relay, lease)).await {
            tracing::warn!(error = %e, "shard not released; it is free when its lease expires");
        }
    }
    {
        let owner = owner.clone();
        if let Err(e) = db.run(move |c| shards::unregister(c, &owner)).await {
            tracing::warn!(error = %e, "replica not unregistered; it stops counting when its registration expires");
        }
    }
    for relay in &relays {
        metrics::gauge!(crate::metrics::INGEST_SHARDS_HELD, "relay" => relay.clone()).set(0.0);
    }
    client.shutdown().await;
    Ok(())
}

/// One lease round (every `lease / 3`): renew the registration (which counts the live replicas), renew held
/// shards and drop the lost ones, release the surplus above the fair share, acquire free shards up to it.
#[allow(clippy::too_many_arguments)]
async fn rebalance(
    client: &Client,
    db: &Db,
    cfg: &IngestConfig,
    owner: &str,
    relays: &[String],
    by_shard: &[Vec<PublicKey>],
    connected: &HashMap<String, bool>,
    ensured: &mut HashSet<String>,
    held: &mut Held,
) {
    let now = tokio::time::Instant::now();
    let live = {
        let owner = owner.to_string();
        let ttl = cfg.lease;
        db.run(move |c| shards::register(c, &owner, ttl)).await
    };
    let live = match live {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "ingest lease round failed; keeping shards until their leases run out");
            drop_expired(client, held, now).await;
            return;
        }
    };
    let share = shards::fair_share(cfg.shards, live) as usize;
    for relay in relays {
        if !ensured.contains(relay) {
            let (r, n) = (relay.clone(), cfg.shards);
            match db.run(move |c| shards::ensure(c, &r, n)).await {
                Ok(()) => {
                    ensured.insert(relay.clone());
                }
                Err(e) => {
                    tracing::warn!(relay = %relay, error = %e, "shard rows not created");
                    continue;
                }
            }
        }
        // Renew; whatever is not renewed was lost (expired and maybe taken).
        let mine: Vec<ShardLease> = held
            .iter()
            .filter(|((r, _), _)| r == relay)
            .map(|(_, p)| p.lease)
            .collect();
        let renewed = {
            let (r, o, m, ttl) = (relay.clone(), owner.to_string(), mine.clone(), cfg.lease);
            db.run(move |c| shards::heartbeat(c, &r, &o, &m, ttl)).await
        };
        let renewed = match renewed {
            Ok(renewed) => renewed,
            Err(e) => {
                tracing::warn!(relay = %relay, error = %e, "shard heartbeat failed");
                continue;
            }
        };
        for lease in &mine {
            let key = (relay.clone(), lease.shard as u32);
            if renewed.contains(lease) {
                if let Some(p) = held.get_mut(&key) {
                    p.valid_until = now + cfg.lease;
                }
            } else if let Some(p) = held.remove(&key) {
                tracing::warn!(code = "ingest_shard_lost", relay = %relay, shard = lease.shard, "shard lease lost; unsubscribing");
                unsubscribe_shard(client, relay, key.1, p.subs).await;
            }
        }
        // Surplus above the fair share (a replica joined): hand the highest shards back, cursor first.
        let mut mine: Vec<u32> = held.keys().filter(|(r, _)| r == relay).map(|(_, s)| *s).collect();
        mine.sort_unstable();
        while mine.len() > share {
            let shard = mine.pop().expect("non-empty");
            let Some(mut p) = held.remove(&(relay.clone(), shard)) else {
                continue;
            };
            flush_shard(db, cfg, relay, &mut p).await;
            unsubscribe_shard(client, relay, shard, p.subs).await;
            let (r, lease) = (relay.clone(), p.lease);
            if let Err(e) = db.run(move |c| shards::release(c, &r, lease)).await {
                tracing::warn!(relay = %relay, shard, error = %e, "surplus shard not released; free at lease expiry");
            }
        }
        // Up to the fair share from the free (or expired) shards.
        let want = share.saturating_sub(mine.len()) as u32;
        if want > 0 {
            let (r, o, n, ttl) = (relay.clone(), owner.to_string(), cfg.shards, cfg.lease);
            match db.run(move |c| shards::acquire(c, &r, &o, n, want, ttl)).await {
                Ok(taken) => {
                    for lease in taken {
                        let shard = lease.shard as u32;
                        let mut p = ShardProgress::new(lease, now + cfg.lease);
                        p.authors = by_shard.get(shard as usize).cloned().unwrap_or_default();
                        tracing::info!(relay = %relay, shard, token = lease.token, "shard acquired");
                        if connected.get(relay).copied().unwrap_or(false) {
                            subscribe_shard(client, db, cfg, relay, shard, &mut p).await;
                        }
                        held.insert((relay.clone(), shard), p);
                    }
                }
                Err(e) => tracing::warn!(relay = %relay, error = %e, "shards not acquired"),
            }
        }
        let count = held.keys().filter(|(r, _)| r == relay).count();
        metrics::gauge!(crate::metrics::INGEST_SHARDS_HELD, "relay" => relay.clone()).set(count as f64);
    }
}

/// Drops the shards whose lease has certainly run out by the local clock (the database could not renew them).
async fn drop_expired(client: &Client, held: &mut Held, now: tokio::time::Instant) {
    let expired: Vec<(String, u32)> = held
        .iter()
        .filter(|(_, p)| p.valid_until <= now)
        .map(|(k, _)| k.clone())
        .collect();
    for key in expired {
        if let Some(p) = held.remove(&key) {
            tracing::warn!(code = "ingest_shard_lost", relay = %key.0, shard = key.1, "shard lease ran out unrenewed; unsubscribing");
            unsubscribe_shard(client, &key.0, key.1, p.subs).await;
        }
    }
}

async fn unsubscribe_shard(client: &Client, relay: &str, shard: u32, subs: usize) {
    if let Ok(r) = client.relay(relay).await {
        for chunk in 0..subs {
            let _ = r.unsubscribe(&subscription_id(shard, chunk)).await;
        }
    }
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
fn note_accepted(entry: &mut ShardProgress, done: Accepted, cfg: &IngestConfig) {
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

/// Starts a new subscription generation for one held shard on one relay: each chunk of its authors from the shard's
/// persisted cursor minus the overlap. Subscriptions of chunks the shard no longer has are closed.
async fn subscribe_shard(client: &Client, db: &Db, cfg: &IngestConfig, relay: &str, shard: u32, p: &mut ShardProgress) {
    p.caught_up.clear();
    p.replayed.clear();
    p.retry_at = None;
    let chunks = chunk_authors(&p.authors, cfg.authors_per_subscription);
    if p.subs > chunks.len() {
        if let Ok(r) = client.relay(relay).await {
            for stale in chunks.len()..p.subs {
                let _ = r.unsubscribe(&subscription_id(shard, stale)).await;
            }
        }
    }
    p.subs = chunks.len();
    if chunks.is_empty() {
        return;
    }
    let cursor = {
        let (key, n) = (relay.to_string(), cfg.shards);
        db.run(move |c| shards::get_shard_cursor(c, &key, n, shard as i32))
            .await
    };
    // No cursor yet (a new relay or a fresh database): start at now minus the overlap. Older history is the
    // `backfill_author` job's, which every opt-in and re-enable enqueues. A stored cursor ahead of now is not
    // trusted (invariant 3): resuming there would stop bridging for every user of the shard.
    let now = Utc::now();
    let stored = match cursor {
        Ok(stored) => stored.map(|(at, _)| at),
        Err(e) => {
            tracing::warn!(relay = %relay, shard, error = %e, "cursor unavailable; subscribing with overlap from now");
            None
        }
    };
    if let Some(at) = stored.filter(|at| *at > now) {
        tracing::warn!(
            code = "relay_cursor_ahead",
            relay = %relay,
            shard,
            cursor = %at,
            "stored relay cursor is ahead of now; resubscribing from now minus the overlap instead"
        );
    }
    let since = Some(resume_since(stored, now, cfg.cursor_overlap));
    p.since = since;
    for (i, authors) in chunks.iter().enumerate() {
        let filter = live_filter(authors, since);
        if let Err(e) = client
            .subscribe_with_id_to([relay], subscription_id(shard, i), filter, None)
            .await
        {
            tracing::warn!(relay = %relay, shard, chunk = i, error = %e, "subscribe failed; retrying later");
            p.retry_at = Some(tokio::time::Instant::now() + cfg.closed_retry);
        }
    }
    metrics::counter!(crate::metrics::INGEST_SHARD_SUBSCRIPTIONS, "relay" => relay.to_string()).increment(1);
    tracing::info!(relay = %relay, shard, ?since, chunks = chunks.len(), "subscribed");
}

/// Pages one chunk's history on `relay` back from `until` (inclusive: events sharing that second are re-fetched and
/// deduplicated) to `since`, enqueueing every accepted event, until a page adds nothing new. Returns false when the
/// catch-up could not finish (fetch or enqueue failed); a resubscription is then scheduled. Runs inside the chunk's
/// `relay_subscription` span with `mode=catchup`.
#[allow(clippy::too_many_arguments)]
async fn catch_up(
    client: &Client,
    db: &Db,
    authors: &BTreeSet<String>,
    relay: &str,
    chunk: &[PublicKey],
    since: Option<Timestamp>,
    mut until: Timestamp,
    entry: &mut ShardProgress,
    cfg: &IngestConfig,
) -> bool {
    let mut seen: HashSet<EventId> = HashSet::new();
    loop {
        let filter = live_filter(chunk, since).until(until);
        let events = match client.fetch_events_from([relay], filter, CATCH_UP_PAGE_TIMEOUT).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, "catch-up page failed; resubscribing later");
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
///
/// Logs the event's fate with its id, author and kind (the first line of "trace one Nostr event to its Bluesky
/// post", troubleshooting.md): `event refused at ingest` with the reason, `event enqueued` with the job id; an event
/// already enqueued (re-read through the cursor overlap) only at debug.
async fn accept(db: &Db, authors: &BTreeSet<String>, event: Event, received_at: DateTime<Utc>) -> Accepted {
    let (event_id, pubkey, kind) = (event.id.to_hex(), event.pubkey.to_hex(), event.kind.as_u16());
    if let Err(refusal) = admit(&event, authors, unix_secs(received_at)) {
        tracing::info!(
            event_id,
            pubkey,
            kind,
            reason = refusal.reason(),
            "event refused at ingest"
        );
        return Accepted::Refused;
    }
    let position = cursor_position(&event, received_at);
    match db.run(move |c| enqueue_event(c, &event, priority::LIVE)).await {
        Ok(Some(job)) => {
            tracing::info!(event_id, pubkey, kind, job.id = job, "event enqueued");
            Accepted::Durable(position)
        }
        Ok(None) => {
            tracing::debug!(event_id, pubkey, kind, "event needs no new job (already enqueued)");
            Accepted::Durable(position)
        }
        Err(e) => {
            tracing::warn!(event_id, error = %e, "could not enqueue event; it will be re-read from the cursor");
            Accepted::Unavailable
        }
    }
}

/// Writes a caught-up shard's newest durable position under its lease (a lost lease writes nothing).
async fn flush_shard(db: &Db, cfg: &IngestConfig, relay: &str, p: &mut ShardProgress) {
    if p.subs == 0 || !p.complete() {
        return;
    }
    if let Some((at, id)) = p.pending.take() {
        let (relay2, id2, n, lease) = (relay.to_string(), id.clone(), cfg.shards, p.lease);
        if let Err(e) = db
            .run(move |c| shards::advance_shard_cursor(c, &relay2, n, lease, at, &id2))
            .await
        {
            tracing::warn!(relay = %relay, shard = lease.shard, error = %e, "cursor not saved");
            p.pending = Some((at, id));
        }
    }
}

/// Writes each caught-up held shard's newest durable position, then exports every relay's cursor lag.
async fn flush_cursors(db: &Db, cfg: &IngestConfig, held: &mut Held, relays: &[String]) {
    for ((relay, _), p) in held.iter_mut() {
        flush_shard(db, cfg, relay, p).await;
    }
    for relay in relays {
        export_cursor_lag(db, relay, cfg.shards).await;
    }
}

/// Sets `bridge_relay_cursor_lag_seconds{relay}` to now minus the oldest shard position of the relay (negative: a
/// cursor is ahead of now; 0 while the relay has no cursor, as its subscriptions then start at now). Reads the
/// stored rows, so the gauge also shows what other replicas wrote.
async fn export_cursor_lag(db: &Db, relay: &str, n: u32) {
    let key = relay.to_string();
    match db.run(move |c| shards::relay_floor(c, &key, n)).await {
        Ok(floor) => {
            let lag = floor.map_or(0.0, |at| (Utc::now() - at).num_milliseconds() as f64 / 1000.0);
            metrics::gauge!(crate::metrics::RELAY_CURSOR_LAG, "relay" => relay.to_string()).set(lag);
        }
        Err(e) => tracing::debug!(relay = %relay, error = %e, "cursor lag not exported: cursor unavailable"),
    }
}

/// What [`fetch_history`] read: every distinct event, and the relays that could not be read to the end.
#[derive(Debug, Default)]
pub struct History {
    pub events: HashMap<EventId, Event>,
    /// `(relay, error)` for each relay whose paging stopped on an error (its older events are missing from `events`).
    pub failed: Vec<(String, String)>,
}

/// Pages the history matching `filter` (authors and kinds; its since/until/limit are replaced) back from now to
/// `since` (or to the beginning), `page` events per request, on EACH relay separately, and merges the results.
///
/// Paging is per relay because relays differ in density and in how many events one request returns: continuing a
/// merged walk from the oldest event of the union would jump over the events a denser (or more tightly capped)
/// relay still had between its own oldest and that point. Each relay continues from the oldest second it returned
/// (inclusive: events sharing it that did not fit are fetched by the next page; the ones already seen are
/// deduplicated) until a page adds nothing new to that relay's walk, reaches `since`, or the relay has returned
/// `max_per_relay` distinct events. Nothing is admitted or enqueued here: callers run [`admit`] on the result.
/// Each relay's walk runs in a `relay_history{relay, mode}` span (`mode`: what the caller reads for).
#[allow(clippy::too_many_arguments)]
pub async fn fetch_history(
    client: &Client,
    relays: &[String],
    filter: &Filter,
    since: Option<Timestamp>,
    page: usize,
    max_per_relay: usize,
    page_timeout: Duration,
    mode: ReadMode,
) -> History {
    let mut history = History::default();
    let page = page.max(1);
    for relay in relays {
        let span = tracing::info_span!("relay_history", relay = relay.as_str(), mode = mode.as_str());
        fetch_relay_history(
            client,
            relay,
            filter,
            since,
            page,
            max_per_relay,
            page_timeout,
            &mut history,
        )
        .instrument(span)
        .await;
    }
    history
}

/// One relay's walk of [`fetch_history`].
#[allow(clippy::too_many_arguments)]
async fn fetch_relay_history(
    client: &Client,
    relay: &str,
    filter: &Filter,
    since: Option<Timestamp>,
    page: usize,
    max_per_relay: usize,
    page_timeout: Duration,
    history: &mut History,
) {
    // A relay that is not connected answers every page with nothing, which would read as "no history": wait
    // for it up to one page timeout, then count it as failed.
    if let Err(e) = wait_connected(client, relay, page_timeout).await {
        tracing::debug!(error = %e, "relay history not read: relay not connected");
        history.failed.push((relay.to_string(), e));
        return;
    }
    let mut seen: HashSet<EventId> = HashSet::new();
    let mut until: Option<Timestamp> = None;
    loop {
        let mut f = filter.clone().limit(page);
        if let Some(s) = since {
            f = f.since(s);
        }
        if let Some(u) = until {
            f = f.until(u);
        }
        let events = match client.fetch_events_from([relay], f, page_timeout).await {
            Ok(events) => events,
            Err(e) => {
                tracing::debug!(error = %e, "relay history page failed");
                history.failed.push((relay.to_string(), e.to_string()));
                break;
            }
        };
        let mut new = 0usize;
        let mut oldest: Option<Timestamp> = None;
        let read = events.len();
        for e in events.into_iter() {
            oldest = Some(oldest.map_or(e.created_at, |o| o.min(e.created_at)));
            if seen.insert(e.id) {
                new += 1;
                history.events.entry(e.id).or_insert(e);
            }
        }
        tracing::debug!(read, new, until = until.map(|u| u.as_secs()), "relay history page read");
        let Some(oldest) = oldest else { break };
        if new == 0 || seen.len() >= max_per_relay || since.is_some_and(|s| oldest <= s) {
            break;
        }
        until = Some(oldest);
    }
}

async fn wait_connected(client: &Client, relay: &str, timeout: Duration) -> Result<(), String> {
    let r = client.relay(relay).await.map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + timeout;
    while !r.is_connected() {
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("not connected after {timeout:?} ({})", r.status()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Pages an author's history on the relays ([`fetch_history`]: each relay walked on its own), and enqueues the
/// newest `max_events` admitted events at backfill priority, oldest first. Returns how many new jobs were enqueued.
/// When no relay could be read the job fails (it is retried; unique keys make the retry a no-op for what was
/// already enqueued); when only some could, it imports what the others had and logs the rest (one dead relay in
/// `NOSTR_RELAYS` must not block every opt-in; the reconciliation sweep covers its recent window).
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
    let filter = Filter::new()
        .author(author)
        .kinds(SUPPORTED_KINDS.iter().map(|k| Kind::from(*k)));
    let page = 500usize.min(max_events.max(1));
    let history = fetch_history(
        &client,
        relays,
        &filter,
        None,
        page,
        max_events.max(1),
        page_timeout,
        ReadMode::Backfill,
    )
    .await;
    client.shutdown().await;
    if !relays.is_empty() && history.failed.len() == relays.len() {
        let (relay, error) = &history.failed[0];
        anyhow::bail!("history of {pubkey} could not be read from any relay ({relay}: {error})");
    }
    for (relay, error) in &history.failed {
        tracing::warn!(relay = %relay, error = %error, "backfill: relay history not read; importing the others");
    }
    // The same admission as the live path; the only accepted author is the one being backfilled (a relay answering
    // with someone else's events is refused as `not_opted_in`).
    let only_author = BTreeSet::from([author.to_hex()]);
    let now = unix_secs(Utc::now());
    let mut events: Vec<Event> = history
        .events
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
            Ok::<_, DbError>(n)
        })
        .await?;
    Ok(enqueued)
}
