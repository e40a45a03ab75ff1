//! Ingest shard leases: fair shares among live replicas, takeover after expiry, rebalancing towards a new replica,
//! token fencing of heartbeats and cursor writes, per-shard cursors seeded from the relay cursor.

use chrono::{Duration as CDuration, Utc};
use divine_bridge_db::records::{advance_cursor, get_cursor};
use divine_bridge_db::shards::*;
use divine_bridge_db::testutil::TestDb;
use std::time::Duration;

const R: &str = "wss://relay.test/";
const TTL: Duration = Duration::from_secs(30);

#[test]
fn fair_share_rounds_up_and_counts_at_least_one_replica() {
    assert_eq!(fair_share(8, 1), 8);
    assert_eq!(fair_share(8, 3), 3);
    assert_eq!(fair_share(8, 0), 8);
    assert_eq!(fair_share(1, 2), 1);
}

#[test]
fn replicas_split_the_shards_and_never_take_the_same_one() {
    let db = TestDb::migrated("shards_split");
    let mut c = db.conn();
    ensure(&mut c, R, 8).unwrap();
    ensure(&mut c, R, 8).unwrap();
    assert_eq!(register(&mut c, "a", TTL).unwrap(), 1);
    assert_eq!(register(&mut c, "b", TTL).unwrap(), 2);
    let a = acquire(&mut c, R, "a", 8, fair_share(8, 2), TTL).unwrap();
    let b = acquire(&mut c, R, "b", 8, 8, TTL).unwrap();
    assert_eq!(a.len(), 4);
    assert_eq!(b.len(), 4, "b gets only what a left free");
    let mut all: Vec<i32> = a.iter().chain(&b).map(|l| l.shard).collect();
    all.sort();
    assert_eq!(all, (0..8).collect::<Vec<_>>());
    let tokens: std::collections::HashSet<i64> = a.iter().chain(&b).map(|l| l.token).collect();
    assert_eq!(tokens.len(), 8, "a token per lease");
    assert_eq!(holders(&mut c, R).unwrap().len(), 8);
    assert!(acquire(&mut c, R, "c", 8, 8, TTL).unwrap().is_empty(), "nothing free");
}

#[test]
fn an_expired_lease_is_taken_over_and_its_old_token_is_fenced() {
    let db = TestDb::migrated("shards_expiry");
    let mut c = db.conn();
    ensure(&mut c, R, 2).unwrap();
    let short = Duration::from_millis(300);
    let dead = acquire(&mut c, R, "dead", 2, 2, short).unwrap();
    assert_eq!(dead.len(), 2);
    assert!(acquire(&mut c, R, "live", 2, 2, TTL).unwrap().is_empty());
    std::thread::sleep(Duration::from_millis(400));
    let taken = acquire(&mut c, R, "live", 2, 2, TTL).unwrap();
    assert_eq!(taken.len(), 2, "a dead replica's share is free after one lease period");
    // The old holder can neither renew, release nor write a cursor with its token.
    assert!(heartbeat(&mut c, R, "dead", &dead, TTL).unwrap().is_empty());
    assert!(!release(&mut c, R, dead[0]).unwrap());
    advance_shard_cursor(&mut c, R, 2, dead[0], Utc::now(), "aa").unwrap();
    assert_eq!(get_shard_cursor(&mut c, R, 2, dead[0].shard).unwrap(), None);
    // The new holder can.
    assert_eq!(heartbeat(&mut c, R, "live", &taken, TTL).unwrap().len(), 2);
    let lease = taken.iter().find(|l| l.shard == dead[0].shard).copied().unwrap();
    let at = Utc::now() - CDuration::seconds(5);
    advance_shard_cursor(&mut c, R, 2, lease, at, "bb").unwrap();
    let (stored, id) = get_shard_cursor(&mut c, R, 2, lease.shard).unwrap().unwrap();
    assert_eq!(id, "bb");
    assert!((stored - at).num_milliseconds().abs() < 1000);
    assert!(release(&mut c, R, lease).unwrap());
    assert_eq!(holders(&mut c, R).unwrap().len(), 1);
}

#[test]
fn one_shard_writes_the_relay_cursor_and_more_shards_are_seeded_from_it() {
    let db = TestDb::migrated("shards_cursor");
    let mut c = db.conn();
    let seed = Utc::now() - CDuration::minutes(10);
    advance_cursor(&mut c, R, seed, "00").unwrap();
    // Four shards: each starts from the relay cursor until it has its own row.
    ensure(&mut c, R, 4).unwrap();
    let leases = acquire(&mut c, R, "a", 4, 4, TTL).unwrap();
    for shard in 0..4 {
        assert_eq!(get_shard_cursor(&mut c, R, 4, shard).unwrap().unwrap().1, "00");
    }
    let later = Utc::now() - CDuration::minutes(1);
    advance_shard_cursor(&mut c, R, 4, leases[1], later, "11").unwrap();
    assert_eq!(
        get_shard_cursor(&mut c, R, 4, leases[1].shard).unwrap().unwrap().1,
        "11"
    );
    assert_eq!(
        get_shard_cursor(&mut c, R, 4, leases[0].shard).unwrap().unwrap().1,
        "00"
    );
    let floor = relay_floor(&mut c, R, 4).unwrap().unwrap();
    assert!(
        (floor - seed).num_milliseconds().abs() < 1000,
        "the floor is the furthest-behind shard"
    );
    // A future position is clamped to now.
    advance_shard_cursor(&mut c, R, 4, leases[2], Utc::now() + CDuration::days(3650), "22").unwrap();
    assert!(get_shard_cursor(&mut c, R, 4, leases[2].shard).unwrap().unwrap().0 <= Utc::now());
    // One shard: the relay's own row, fenced by the lease of shard 0.
    let db1 = TestDb::migrated("shards_cursor1");
    let mut c1 = db1.conn();
    ensure(&mut c1, R, 1).unwrap();
    let l = acquire(&mut c1, R, "a", 1, 1, TTL).unwrap()[0];
    advance_shard_cursor(&mut c1, R, 1, l, later, "ff").unwrap();
    assert_eq!(get_cursor(&mut c1, R).unwrap().unwrap().1, "ff");
    let stale = ShardLease {
        shard: 0,
        token: l.token + 1000,
    };
    advance_shard_cursor(&mut c1, R, 1, stale, Utc::now(), "fff").unwrap();
    assert_eq!(
        get_cursor(&mut c1, R).unwrap().unwrap().1,
        "ff",
        "a foreign token writes nothing"
    );
}

#[test]
fn live_replicas_expire_and_unregister() {
    let db = TestDb::migrated("shards_live");
    let mut c = db.conn();
    register(&mut c, "a", TTL).unwrap();
    register(&mut c, "b", Duration::from_millis(200)).unwrap();
    assert_eq!(live_replicas(&mut c).unwrap(), vec!["a".to_string(), "b".to_string()]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(register(&mut c, "a", TTL).unwrap(), 1);
    unregister(&mut c, "a").unwrap();
    assert!(live_replicas(&mut c).unwrap().is_empty());
}
