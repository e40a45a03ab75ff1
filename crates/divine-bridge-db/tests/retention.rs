//! Issue 9 §6: retention prunes only terminal jobs older than the cutoff, in batches; the gauge query reads only
//! live rows (index-bound), whatever the number of finished jobs.

use chrono::{Duration as ChronoDuration, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use divine_bridge_db::queue::{self, NewJob};
use divine_bridge_db::testutil::TestDb;
use divine_bridge_db::JobKind;
use std::time::Duration;

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    ordering_key: String,
}

#[derive(QueryableByName)]
struct Plan {
    #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
    line: String,
}

fn enq(conn: &mut PgConnection, key: &str) -> i64 {
    queue::enqueue(conn, &NewJob::new(JobKind::Noop, key, serde_json::json!({})))
        .unwrap()
        .unwrap()
}

/// Moves a job to a terminal state that finished `days` ago (as a worker's finalize would have left it).
fn finish(conn: &mut PgConnection, id: i64, state: &str, days: i64) {
    diesel::sql_query(
        "UPDATE jobs SET state = $1, finished_at = now() - make_interval(days => $2::int), \
         updated_at = now() WHERE id = $3",
    )
    .bind::<Text, _>(state)
    .bind::<BigInt, _>(days)
    .bind::<BigInt, _>(id)
    .execute(conn)
    .unwrap();
}

fn keys(conn: &mut PgConnection) -> Vec<String> {
    let mut v: Vec<String> = diesel::sql_query("SELECT ordering_key FROM jobs")
        .load::<Row>(conn)
        .unwrap()
        .into_iter()
        .map(|r| r.ordering_key)
        .collect();
    v.sort();
    v
}

#[test]
fn prune_removes_only_old_terminal_jobs_in_batches() {
    let db = TestDb::migrated("retention_prune");
    let mut c = db.conn();
    for (i, state) in ["succeeded", "failed", "cancelled", "ineligible", "succeeded"]
        .iter()
        .enumerate()
    {
        let id = enq(&mut c, &format!("old-{i}"));
        finish(&mut c, id, state, 30);
    }
    let recent = enq(&mut c, "recent-done");
    finish(&mut c, recent, "failed", 1);
    enq(&mut c, "queued");
    // An old queued job (created long ago, still live) and a running one are never pruned.
    let old_queued = enq(&mut c, "old-queued");
    diesel::sql_query("UPDATE jobs SET created_at = now() - interval '90 days', source_created_at = now() - interval '90 days' WHERE id = $1")
        .bind::<BigInt, _>(old_queued)
        .execute(&mut c)
        .unwrap();
    enq(&mut c, "running");
    assert_eq!(queue::lease(&mut c, "w", 1, Duration::from_secs(60)).unwrap().len(), 1);

    let cutoff = Utc::now() - ChronoDuration::days(14);
    assert_eq!(
        queue::prune_finished(&mut c, cutoff, 2).unwrap(),
        2,
        "a batch is bounded"
    );
    assert_eq!(queue::prune_finished(&mut c, cutoff, 2).unwrap(), 2);
    assert_eq!(queue::prune_finished(&mut c, cutoff, 2).unwrap(), 1);
    assert_eq!(
        queue::prune_finished(&mut c, cutoff, 2).unwrap(),
        0,
        "idempotent once done"
    );
    assert_eq!(keys(&mut c), vec!["old-queued", "queued", "recent-done", "running"]);
}

#[test]
fn stats_ignore_terminal_rows_and_read_only_the_live_index() {
    let db = TestDb::migrated("retention_stats");
    let mut c = db.conn();
    for i in 0..20 {
        let id = enq(&mut c, &format!("done-{i}"));
        finish(&mut c, id, if i % 2 == 0 { "succeeded" } else { "failed" }, 0);
    }
    enq(&mut c, "a");
    enq(&mut c, "b");
    queue::lease(&mut c, "w", 1, Duration::from_secs(60)).unwrap();

    let stats = queue::stats(&mut c).unwrap();
    let mut seen: Vec<(String, i64)> = stats.iter().map(|s| (s.state.to_string(), s.count)).collect();
    seen.sort();
    assert_eq!(seen, vec![("queued".to_string(), 1), ("running".to_string(), 1)]);

    // Index-bound, independent of timing and table size: with sequential scans priced out, the plan reads the
    // partial index of live rows and never the table or an index over terminal rows.
    diesel::sql_query("SET enable_seqscan = off").execute(&mut c).unwrap();
    diesel::sql_query("VACUUM ANALYZE jobs").execute(&mut c).unwrap();
    let plan: Vec<String> = diesel::sql_query(format!("EXPLAIN {}", queue::STATS_SQL))
        .load::<Plan>(&mut c)
        .unwrap()
        .into_iter()
        .map(|p| p.line)
        .collect();
    let plan = plan.join("\n");
    assert!(plan.contains("jobs_live_kind_state"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
}
