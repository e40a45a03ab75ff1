//! Chaos, end to end: 200 Nostr events over 5 opted-in accounts (kind 22 videos, addressable 34235 edits, kind 5
//! deletes of earlier videos, a few videos dated minutes ahead) are published to a real relay while, at random
//! moments, every backend of the test's own Postgres database is terminated, the real `divine-atbridge` workers (two
//! processes at once) are SIGKILLed and restarted, and a fault proxy in front of the reference PDS answers 500, 429
//! with `Retry-After: 0`, stalls, and drops responses after forwarding. Then the faults stop and, within a bounded
//! wait, everything must settle: exactly one post per eligible event (read back with `listRecords`, paged), no post
//! for a deleted event or a superseded revision, no job `queued`, `running` or `failed`, and the relay cursor —
//! sampled all along — never ahead of now.
//!
//! The schedule comes from a seeded RNG: the seed is printed and `CHAOS_SEED=<n>` replays it (the timing of the
//! processes still varies). Every violation is collected and reported together, so one run shows all that broke.
//!
//! Why provisioning bypasses the proxy: the PDS's identity (`atproto_pds` in the DID document, checked byte for byte
//! by provisioning against `PDS_URL`) is its public URL, not the proxy's. So a first bridge process with the real
//! `PDS_URL` provisions the accounts before the chaos starts; the chaos workers get `PDS_URL` = the proxy, which is
//! only used as the API base of repo writes, sessions and blob uploads (the publish path never compares it with the
//! DID document). No product change is needed for that.
//!
//! Observes only (PDS XRPC, the bridge's tables); it must not write to the bridge's tables. Its sole writes are the
//! `pg_terminate_backend` calls, restricted to its own database.

mod support;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use divine_bridge_db::testutil::TestDb;
use nostr_sdk::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::crosspost::*;
use support::faultproxy::{AfterStall, Fault, FaultPolicy, FaultProxy};
use support::*;

const POST: &str = "app.bsky.feed.post";
const ACCOUNTS: usize = 5;
const EVENTS: usize = 200;
/// Of the 200: addressable revisions (2 coordinates x 2 revisions per account), deletes, future-dated videos.
const EDITS: usize = ACCOUNTS * 2 * 2;
const DELETES: usize = 20;
const FUTURE: usize = 5;
/// Pause between two publishes (200 events → ~30 s of publishing).
const PUBLISH_EVERY: Duration = Duration::from_millis(150);
/// Faults go on this long after the last publish.
const CHAOS_TAIL: Duration = Duration::from_secs(4);
/// How long, after the last regular event, the deferred deletes wait for their targets' posts.
const DEFERRED_DELETE_WAIT: Duration = Duration::from_secs(10);
/// Bounded wait for everything to settle once the faults stop. Generous for today's code: an event that could not be
/// enqueued (database gone) is re-read only when ingest resubscribes, 30 s later (`ingest::DEFAULT_CLOSED_RETRY`).
const SETTLE: Duration = Duration::from_secs(75);

/// Worker settings for the chaos workers: short leases (a killed worker's jobs and relay shard come back in ~2-3 s), fast retries, and a
/// reclaim limit above what random SIGKILLs reach: here a job whose lease expires was killed by the test, not poison
/// (parking after `RECLAIM_LIMIT` is tested in the queue semantics tests).
const FAST: [(&str, &str); 11] = [
    // The reconciliation sweep is part of the zero-loss promise (issue 10 §2): it runs as in production, only more
    // often. What it finds is printed (`reconcile_found`), so a live-path loss it repairs stays visible.
    ("RECONCILE_INTERVAL_SECS", "5"),
    ("RECONCILE_GRACE_SECS", "2"),
    ("LEASE_SECS", "2"),
    ("RECLAIM_LIMIT", "1000"),
    // The relay subscription is leased like a job (issue 11 §4): a SIGKILLed holder's share is taken over when its
    // lease expires, so it is as short here as the job lease.
    ("INGEST_LEASE_SECS", "3"),
    ("WATCHDOG_INTERVAL_SECS", "1"),
    ("RETRY_BASE_SECS", "1"),
    ("RETRY_CAP_SECS", "2"),
    ("WORKERS", "4"),
    ("DB_POOL_SIZE", "8"),
    ("RUST_LOG", "info"),
];

/// What must become of one published event.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expect {
    /// Exactly one post with this text in the author's repo.
    Post(String),
    /// No post: a later kind 5 deletes it.
    Deleted(String),
    /// No post: a newer revision of its coordinate replaces it.
    Superseded(String),
    /// A kind 5 of this earlier video; its job must succeed.
    DeleteOp(EventId),
}

struct Planned {
    account: usize,
    event: Event,
    expect: Expect,
}

/// The 200 events in publishing order. Positions are shuffled by `rng`; `created_at` grows with the position (the
/// relay and the bridge see a plausible history), except FUTURE videos dated 1–4 minutes ahead of now (accepted by
/// the bridge: within its 10-minute skew). Each delete is planned 4–25 positions after its target.
fn plan(rng: &mut StdRng, keys: &[Keys], url: &str, video: &[u8]) -> Vec<Planned> {
    #[derive(Clone, Copy)]
    enum Slot {
        Video(usize),
        Edit { account: usize, coord: usize },
    }
    let videos = EVENTS - EDITS - DELETES;
    let mut slots: Vec<Slot> = (0..videos).map(Slot::Video).collect();
    for account in 0..ACCOUNTS {
        for coord in 0..2 {
            slots.extend([Slot::Edit { account, coord }; 2]);
        }
    }
    slots.shuffle(rng);
    let now = unix_now();
    let t0 = now - 200;
    // Delete targets among videos early enough for their delete to follow; future-dated ones among the others.
    // Targets in the first half, so that the workers (lagging behind under the faults) publish them while the
    // test still publishes: half of the deletes wait for that.
    let videos_before =
        |end: usize| -> Vec<usize> { (0..end).filter(|p| matches!(slots[*p], Slot::Video(_))).collect() };
    let targets: Vec<usize> = videos_before(slots.len() / 2)
        .choose_multiple(rng, DELETES)
        .copied()
        .collect();
    let others: Vec<usize> = videos_before(slots.len())
        .into_iter()
        .filter(|p| !targets.contains(p))
        .collect();
    let future: Vec<usize> = others.choose_multiple(rng, FUTURE).copied().collect();
    let mut revision_seen: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    let mut ordered: Vec<(f64, Planned)> = Vec::new();
    for (pos, slot) in slots.iter().enumerate() {
        let planned = match *slot {
            Slot::Video(n) => {
                let account = n % ACCOUNTS;
                let text = format!("chaos video {n:03}");
                let at = if future.contains(&pos) {
                    now + rng.gen_range(60..240)
                } else {
                    t0 + pos as u64
                };
                let event = video_event(&keys[account], 22, None, "", &text, &[], url, video, at);
                if targets.contains(&pos) {
                    let delete_at = (pos + rng.gen_range(4..25)) as f64 + 0.5;
                    let delete = delete_event(&keys[account], &[event.id], &[], t0 + delete_at as u64);
                    ordered.push((
                        delete_at,
                        Planned {
                            account,
                            event: delete,
                            expect: Expect::DeleteOp(event.id),
                        },
                    ));
                    Planned {
                        account,
                        event,
                        expect: Expect::Deleted(text),
                    }
                } else {
                    Planned {
                        account,
                        event,
                        expect: Expect::Post(text),
                    }
                }
            }
            Slot::Edit { account, coord } => {
                let revision = {
                    let r = revision_seen.entry((account, coord)).or_default();
                    *r += 1;
                    *r - 1
                };
                let d = format!("chaos-clip-{coord}");
                let text = format!("chaos edit a{account} {d} r{revision}");
                let event = video_event(
                    &keys[account],
                    34235,
                    Some(&d),
                    "",
                    &text,
                    &[],
                    url,
                    video,
                    t0 + pos as u64,
                );
                let expect = if revision == 0 {
                    Expect::Superseded(text)
                } else {
                    Expect::Post(text)
                };
                Planned { account, event, expect }
            }
        };
        ordered.push((pos as f64, planned));
    }
    ordered.sort_by(|a, b| a.0.total_cmp(&b.0));
    let out: Vec<Planned> = ordered.into_iter().map(|(_, p)| p).collect();
    assert_eq!(out.len(), EVENTS);
    out
}

/// Terminates every other backend of the test's own database; returns how many.
fn terminate_backends(db: &TestDb) -> i64 {
    #[derive(QueryableByName)]
    struct Terminated {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let Ok(mut conn) = PgConnection::establish(&db.url) else {
        return 0;
    };
    diesel::sql_query(
        "SELECT coalesce(sum(CASE WHEN pg_terminate_backend(pid) THEN 1 ELSE 0 END), 0)::bigint AS n \
         FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .get_result::<Terminated>(&mut conn)
    .map(|t| t.n)
    .unwrap_or(0)
}

/// Cursor samples: how many were taken and every one found ahead of the sampling time.
#[derive(Default)]
struct CursorSamples {
    taken: usize,
    errors: usize,
    ahead: Vec<(String, DateTime<Utc>, DateTime<Utc>)>,
}

/// Samples `relay_cursors` every 100 ms until `stop`, on its own connection (reconnecting after a termination).
fn sample_cursors(
    db_url: String,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<CursorSamples>>,
) -> std::thread::JoinHandle<()> {
    use divine_bridge_db::schema::relay_cursors;
    std::thread::spawn(move || {
        let mut conn: Option<PgConnection> = None;
        while !stop.load(Ordering::SeqCst) {
            if conn.is_none() {
                conn = PgConnection::establish(&db_url).ok();
            }
            if let Some(c) = conn.as_mut() {
                let rows = relay_cursors::table
                    .select((relay_cursors::relay_url, relay_cursors::last_created_at))
                    .load::<(String, DateTime<Utc>)>(c);
                let now = Utc::now();
                let mut s = out.lock().unwrap();
                match rows {
                    Ok(rows) => {
                        s.taken += 1;
                        for (relay, at) in rows {
                            if at > now {
                                s.ahead.push((relay, at, now));
                            }
                        }
                    }
                    Err(_) => {
                        s.errors += 1;
                        conn = None;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// The publisher's view of `record_mappings`, on one connection (re-established after a termination).
struct Watcher {
    url: String,
    conn: Option<PgConnection>,
}

impl Watcher {
    /// Which of these events have a `published` mapping now (none when the database cannot be reached).
    fn published_among(&mut self, ids: &[EventId]) -> BTreeSet<EventId> {
        use divine_bridge_db::schema::record_mappings;
        if self.conn.is_none() {
            self.conn = PgConnection::establish(&self.url).ok();
        }
        let Some(conn) = self.conn.as_mut() else {
            return BTreeSet::new();
        };
        let hex: Vec<String> = ids.iter().map(|id| id.to_hex()).collect();
        let rows = record_mappings::table
            .filter(record_mappings::nostr_event_id.eq_any(&hex))
            .filter(record_mappings::state.eq("published"))
            .select(record_mappings::nostr_event_id)
            .load::<String>(conn);
        match rows {
            Ok(rows) => rows.iter().filter_map(|h| EventId::from_hex(h).ok()).collect(),
            Err(_) => {
                self.conn = None;
                BTreeSet::new()
            }
        }
    }
}

/// Publishes the deferred deletes whose target is published (all of them when `all`); returns how many went out
/// after their target was published.
async fn send_deferred(
    client: &Client,
    watcher: &mut Watcher,
    deferred: &mut Vec<(Event, EventId)>,
    all: bool,
) -> usize {
    if deferred.is_empty() {
        return 0;
    }
    let targets: Vec<EventId> = deferred.iter().map(|(_, t)| *t).collect();
    let published = watcher.published_among(&targets);
    let mut sent = 0;
    let mut keep = Vec::new();
    for (e, target) in deferred.drain(..) {
        if published.contains(&target) {
            publish(client, &e).await;
            sent += 1;
        } else if all {
            publish(client, &e).await;
        } else {
            keep.push((e, target));
        }
    }
    *deferred = keep;
    sent
}

/// The last `n` WARN/ERROR lines of a worker log.
fn warnings(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `(state, count)` of all jobs.
fn job_states(db: &TestDb) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (_, _, state, _) in job_rows(db) {
        *m.entry(state).or_default() += 1;
    }
    m
}

/// The job unique key ingest gives an event (its own mapping, not a copy).
fn unique_key(event: &Event) -> String {
    divine_atbridge::ingest::job_for(event).expect("a bridged kind").1
}

/// Whether ingest must have read `p`. Two kinds of event need not be, because a relay may no longer hold them:
/// - a superseded addressable revision: relays keep only the newest event of an addressable coordinate (NIP-01), so a
///   revision replaced while no replica was subscribed (all killed) is gone, and its successor is what gets bridged;
/// - the target of a delete: a relay drops an event when its author's kind 5 arrives (NIP-09). When the live path
///   lost the target (its enqueue died with the database) and the delete followed within seconds, no later read
///   (resubscription, reconciliation sweep) can find it. Not bridging it is the right outcome.
///
/// Both are still checked: neither may have a post at the end, and every delete's own job must exist and succeed.
fn must_be_read(p: &Planned) -> bool {
    !matches!(p.expect, Expect::Superseded(_) | Expect::Deleted(_))
}

/// Settled: a job for every event ingest must read, none queued or running.
fn settled(db: &TestDb, events: &[Planned]) -> bool {
    let Ok(rows) = std::panic::catch_unwind(|| job_rows(db)) else {
        return false;
    };
    let keys: BTreeSet<&str> = rows.iter().filter_map(|(_, u, _, _)| u.as_deref()).collect();
    let all_enqueued = events
        .iter()
        .filter(|p| must_be_read(p))
        .all(|p| keys.contains(unique_key(&p.event).as_str()));
    all_enqueued && rows.iter().all(|(_, _, s, _)| s != "queued" && s != "running")
}

// Run alone: `cargo test -p divine-atbridge --test e2e_chaos -- --nocapture` (CHAOS_SEED replays a schedule).
// The "1-6 of 200 events never enqueued" once reported here were all delete targets the relay had dropped (NIP-09)
// before any replica read them: seeds 13574631441174007084 and 7498661440283376545 replayed with the unread events
// printed showed only `Deleted` and `Superseded` expectations. See `must_be_read`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_events_under_db_kills_sigkills_and_pds_faults_settle_exactly_once() {
    let Some(stack) = Refstack::from_env() else { return };
    let started = Instant::now();
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .map(|s| s.parse().expect("CHAOS_SEED must be a u64"))
        .unwrap_or_else(rand::random);
    eprintln!("CHAOS_SEED={seed} (set CHAOS_SEED to replay this schedule)");
    let mut rng = StdRng::seed_from_u64(seed);

    let db = TestDb::migrated("e2e_chaos");
    let probe = Probe::new(&stack);
    let media = MediaServer::start().await;
    let video = tiny_mp4();
    let url = media.put("chaos.mp4", video.clone());
    let relay = TestRelay::start_unlimited().await;
    let kek = random_kek();

    // 1. Provision the accounts with the real PDS_URL (see the module doc), then stop that bridge and the gateway.
    let env = bridge_env(&db, &stack, &[&relay.url], &kek);
    let mut provisioner = BridgeProcess::spawn(&env, &[]);
    let gateway = GatewayProcess::spawn(&db);
    let keys: Vec<Keys> = (0..ACCOUNTS).map(|_| Keys::generate()).collect();
    let handles: Vec<String> = keys.iter().map(|_| random_handle("chaos")).collect();
    let dids: Vec<String> =
        futures::future::join_all(keys.iter().zip(&handles).map(|(k, h)| opt_in_ready(&gateway, k, h))).await;
    provisioner.terminate();
    drop(gateway);
    eprintln!(
        "provisioned {ACCOUNTS} accounts in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // 2. The chaos workers talk to the PDS through the proxy only.
    let proxy = FaultProxy::start(&stack.pds_url, rng.r#gen()).await;
    let chaos_env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| match k.as_str() {
            "PDS_URL" => (k.clone(), proxy.url.clone()),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    let mut workers: Vec<BridgeProcess> = (0..2).map(|_| BridgeProcess::spawn(&chaos_env, &FAST)).collect();
    let baseline = FaultPolicy::Random {
        p: 0.08,
        max_stall: Duration::from_secs(3),
    };
    proxy.set_policy(baseline);

    let stop_sampling = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(CursorSamples::default()));
    let sampler = sample_cursors(db.url.clone(), stop_sampling.clone(), samples.clone());

    // 3. Publish the 200 events in the background.
    let events = plan(&mut rng, &keys, &url, &video);
    let client = nostr_client(&[&relay.url]).await;
    let publisher = {
        let list: Vec<(Event, Option<EventId>)> = events
            .iter()
            .map(|p| match p.expect {
                Expect::DeleteOp(target) => (p.event.clone(), Some(target)),
                _ => (p.event.clone(), None),
            })
            .collect();
        let mut watcher = Watcher {
            url: db.url.clone(),
            conn: None,
        };
        tokio::spawn(async move {
            // Every other delete waits until its target's post is in the repo (a delete of a published post); the
            // rest go out at their position, usually before the post exists (a delete racing its publish).
            let mut deferred: Vec<(Event, EventId)> = Vec::new();
            let mut deletes_of_published = 0usize;
            let mut deletes_seen = 0usize;
            for (e, target) in &list {
                match target {
                    Some(target) if deletes_seen.is_multiple_of(2) => {
                        deletes_seen += 1;
                        deferred.push((e.clone(), *target));
                    }
                    Some(target) => {
                        deletes_seen += 1;
                        deletes_of_published += watcher.published_among(&[*target]).len();
                        publish(&client, e).await;
                    }
                    None => publish(&client, e).await,
                }
                deletes_of_published += send_deferred(&client, &mut watcher, &mut deferred, false).await;
                tokio::time::sleep(PUBLISH_EVERY).await;
            }
            let until = Instant::now() + DEFERRED_DELETE_WAIT;
            while !deferred.is_empty() && Instant::now() < until {
                deletes_of_published += send_deferred(&client, &mut watcher, &mut deferred, false).await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            send_deferred(&client, &mut watcher, &mut deferred, true).await;
            deletes_of_published
        })
    };

    // 4. Chaos until the publisher is done plus a tail.
    let (mut db_kills, mut backends_killed, mut sigkills, mut bursts) = (0usize, 0i64, 0usize, 0usize);
    let mut timeline: Vec<String> = Vec::new();
    let mut chaos_end: Option<Instant> = None;
    let chaos_started = Instant::now();
    loop {
        if publisher.is_finished() && chaos_end.is_none() {
            chaos_end = Some(Instant::now() + CHAOS_TAIL);
        }
        if chaos_end.is_some_and(|end| Instant::now() >= end) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(600..2000))).await;
        let t = chaos_started.elapsed().as_secs_f64();
        match rng.gen_range(0..10) {
            0..=2 => {
                let n = terminate_backends(&db);
                db_kills += 1;
                backends_killed += n;
                timeline.push(format!("{t:.1}s pg_terminate_backend x{n}"));
            }
            3..=5 => {
                // Kill one worker, sometimes both; restart at once (unready: it may be killed again before /ready).
                let both = rng.gen_bool(0.25);
                let first = rng.gen_range(0..workers.len());
                for (i, w) in workers.iter_mut().enumerate() {
                    if both || i == first {
                        w.kill();
                        sigkills += 1;
                        *w = BridgeProcess::spawn_unready(&chaos_env, &FAST);
                    }
                }
                timeline.push(format!("{t:.1}s SIGKILL {}", if both { "both" } else { "one" }));
            }
            _ => {
                let n = rng.gen_range(3..12);
                let fault = match rng.gen_range(0..4) {
                    0 => Fault::ServerError,
                    1 => Fault::RateLimited,
                    k => Fault::Stall {
                        hold: Duration::from_millis(rng.gen_range(500..4000)),
                        then: if k == 2 { AfterStall::Pass } else { AfterStall::Drop },
                    },
                };
                proxy.script(&vec![fault; n]);
                bursts += 1;
                timeline.push(format!("{t:.1}s proxy burst {fault:?} x{n}"));
            }
        }
    }
    let deletes_of_published = publisher.await.expect("publisher");
    let chaos_secs = chaos_started.elapsed().as_secs_f64();

    // 5. Faults stop; dead workers come back; everything must settle within SETTLE.
    proxy.calm();
    for w in workers.iter_mut() {
        if w.exited() {
            *w = BridgeProcess::spawn_unready(&chaos_env, &FAST);
        }
    }
    let settle_started = Instant::now();
    let is_settled = eventually(SETTLE, || async { settled(&db, &events).then_some(()) })
        .await
        .is_some();
    let settle_secs = settle_started.elapsed().as_secs_f64();
    stop_sampling.store(true, Ordering::SeqCst);
    sampler.join().expect("sampler");

    // 6. Verdict: collect every violation.
    let mut violations: Vec<String> = Vec::new();
    if !is_settled {
        violations.push(format!(
            "not settled within {SETTLE:?} (a job for every event, none queued/running): job states {:?}",
            job_states(&db)
        ));
    }
    let rows = job_rows(&db);
    for (kind, key, state, code) in &rows {
        if matches!(state.as_str(), "queued" | "running" | "failed") {
            violations.push(format!("job {kind} {key:?} left {state} (last error {code:?})"));
        }
    }
    let job_keys: BTreeSet<&str> = rows.iter().filter_map(|(_, u, _, _)| u.as_deref()).collect();
    let lost: Vec<String> = events
        .iter()
        .filter(|p| must_be_read(p) && !job_keys.contains(unique_key(&p.event).as_str()))
        .map(|p| {
            format!(
                "{} (kind {}, created_at {}, {:?})",
                p.event.id,
                p.event.kind.as_u16(),
                p.event.created_at.as_secs(),
                p.expect
            )
        })
        .collect();
    // What the relay may have dropped before any replica read it (see `must_be_read`): shown, not a violation.
    let unread: Vec<&Expect> = events
        .iter()
        .filter(|p| !must_be_read(p) && !job_keys.contains(unique_key(&p.event).as_str()))
        .map(|p| &p.expect)
        .collect();
    eprintln!("never read, allowed (superseded or deleted on the relay first): {unread:?}");
    if !lost.is_empty() {
        violations.push(format!(
            "{} events never became a job (lost by ingest): {lost:?}",
            lost.len()
        ));
    }
    let link_back = format!("\n{}", divine_atbridge::translate::links::LINK_BACK_TEXT);
    for (a, did) in dids.iter().enumerate() {
        let records = list_records_paged(&probe, did, POST, 25).await;
        let mut got: BTreeMap<String, usize> = BTreeMap::new();
        for r in &records {
            // The post text is the event's content plus the link back to Divine on its own last line.
            let text = r["value"]["text"].as_str().unwrap_or("<no text>");
            let text = text.strip_suffix(link_back.as_str()).unwrap_or(text);
            *got.entry(text.to_string()).or_default() += 1;
        }
        for p in events.iter().filter(|p| p.account == a) {
            match &p.expect {
                Expect::Post(text) => match got.get(text).copied().unwrap_or(0) {
                    1 => {}
                    n => violations.push(format!("account {a}: {n} posts for eligible {text:?} (want 1)")),
                },
                Expect::Deleted(text) => {
                    if let Some(n) = got.get(text) {
                        violations.push(format!("account {a}: deleted {text:?} still has {n} post(s)"));
                    }
                }
                Expect::Superseded(text) => {
                    if let Some(n) = got.get(text) {
                        violations.push(format!("account {a}: superseded {text:?} still has {n} post(s)"));
                    }
                }
                Expect::DeleteOp(_) => {}
            }
        }
        let known: BTreeSet<&str> = events
            .iter()
            .filter(|p| p.account == a)
            .filter_map(|p| match &p.expect {
                Expect::Post(t) | Expect::Deleted(t) | Expect::Superseded(t) => Some(t.as_str()),
                Expect::DeleteOp(_) => None,
            })
            .collect();
        for text in got.keys().filter(|t| !known.contains(t.as_str())) {
            violations.push(format!("account {a}: unexpected post {text:?}"));
        }
    }
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    if let Some((relay, at, now)) = samples.ahead.first() {
        let worst = samples.ahead.iter().map(|(_, at, now)| *at - *now).max().unwrap();
        violations.push(format!(
            "relay cursor ahead of now in {} of {} samples (first: {relay} at {at} sampled at {now}; worst {}s ahead)",
            samples.ahead.len(),
            samples.taken,
            worst.num_seconds()
        ));
    }

    let counts = proxy.counts();
    eprintln!(
        "seed={seed} chaos_secs={chaos_secs:.1} settle_secs={settle_secs:.1} total_secs={:.1}\n\
         db_kills={db_kills} backends_killed={backends_killed} sigkills={sigkills} proxy_bursts={bursts} \
         deletes_of_published={deletes_of_published}/{DELETES}\n\
         proxy={counts:?}\ncursor samples={} (errors {})\njob states={:?}\ntimeline:\n  {}",
        started.elapsed().as_secs_f64(),
        samples.taken,
        samples.errors,
        job_states(&db),
        timeline.join("\n  ")
    );
    // The chaos must really have happened, or a pass means nothing.
    let mut vacuous: Vec<String> = Vec::new();
    if db_kills == 0 || backends_killed == 0 {
        vacuous.push("no backend was terminated".into());
    }
    if sigkills == 0 {
        vacuous.push("no worker was SIGKILLed".into());
    }
    if counts.server_errors == 0 || counts.rate_limited == 0 || counts.stalled == 0 || counts.dropped == 0 {
        vacuous.push(format!("the proxy did not inject every fault kind: {counts:?}"));
    }
    if samples.taken < 50 {
        vacuous.push(format!("too few cursor samples: {}", samples.taken));
    }
    if deletes_of_published == 0 {
        vacuous.push("no delete was sent after its target was published".into());
    }
    violations.extend(vacuous.into_iter().map(|v| format!("vacuous run: {v}")));
    assert!(
        violations.is_empty(),
        "seed {seed}: {} violations:\n  {}\nworker warnings (last 15 each):\n{}",
        violations.len(),
        violations.join("\n  "),
        workers
            .iter()
            .map(|w| warnings(&w.log(), 15))
            .collect::<Vec<_>>()
            .join("\n--\n")
    );
}

/// The proxy itself, against a loopback upstream (no reference stack needed): passes method, path, query, headers
/// and body; injects 500 and 429 `Retry-After: 0` without forwarding; a stall holds until released, then passes; a
/// drop forwards and then breaks the response; the seeded random policy mixes them; everything is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_proxy_injects_each_fault_and_counts_it() {
    use axum::extract::Request;
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let upstream_hits = hits.clone();
    let app = axum::Router::new().fallback(move |req: Request| {
        let hits = upstream_hits.clone();
        async move {
            hits.fetch_add(1, Ordering::SeqCst);
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            let auth = parts
                .headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_string());
            axum::Json(serde_json::json!({
                "method": parts.method.as_str(),
                "uri": parts.uri.to_string(),
                "auth": auth,
                "body": String::from_utf8_lossy(&body),
            }))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let proxy = FaultProxy::start(&upstream, 7).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let call = || {
        http.post(format!("{}/xrpc/com.atproto.repo.putRecord?x=1", proxy.url))
            .bearer_auth("tok")
            .body("payload")
            .send()
    };

    // Pass: forwarded as is.
    let resp = call().await.unwrap();
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["uri"], "/xrpc/com.atproto.repo.putRecord?x=1");
    assert_eq!(echo["auth"], "Bearer tok");
    assert_eq!(echo["body"], "payload");
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // 500 and 429 (Retry-After: 0) are answered by the proxy; the upstream sees nothing.
    proxy.script(&[Fault::ServerError, Fault::RateLimited]);
    let resp = call().await.unwrap();
    assert_eq!(resp.status(), 500);
    let resp = call().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "0");
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // A long stall ends early on release, then passes.
    proxy.script(&[Fault::Stall {
        hold: Duration::from_secs(30),
        then: AfterStall::Pass,
    }]);
    let t = Instant::now();
    let pending = tokio::spawn(call());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "a stalled request must be held");
    proxy.release_stalls();
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    // A drop: the upstream got the request, the client gets an error instead of a response.
    proxy.script(&[Fault::Stall {
        hold: Duration::from_millis(50),
        then: AfterStall::Drop,
    }]);
    let outcome = match call().await {
        Err(e) => Err(e),
        Ok(resp) => resp.bytes().await.map(|_| ()),
    };
    assert!(outcome.is_err(), "a dropped response must fail the client");
    assert_eq!(hits.load(Ordering::SeqCst), 3);

    // Random faults with p = 1: every request is faulted, each kind shows up, the same seed gives the same kinds.
    proxy.set_policy(FaultPolicy::Random {
        p: 1.0,
        max_stall: Duration::from_millis(20),
    });
    for _ in 0..40 {
        let _ = call().await.map(|r| r.status());
    }
    proxy.calm();
    let c = proxy.counts();
    assert_eq!(c.requests, 45);
    assert_eq!(
        c.server_errors + c.rate_limited + c.stalled,
        44,
        "every request but the first was faulted: {c:?}"
    );
    assert!(
        c.server_errors >= 2 && c.rate_limited >= 2 && c.stalled >= 3 && c.dropped >= 2,
        "{c:?}"
    );
    assert_eq!(c.forwarded as usize, hits.load(Ordering::SeqCst));
    assert_eq!(c.upstream_errors, 0);
    let resp = call().await.unwrap();
    assert_eq!(resp.status(), 200, "calm: passes again");
}
