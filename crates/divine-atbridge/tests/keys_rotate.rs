//! `keys rotate` against Postgres (issue 12 §4): several KEKs at once selected by each row's `kek_id`, a rotation
//! interrupted after one batch and resumed, the old KEK opening what is not re-sealed yet, and a ciphertext from an
//! older generation failing to open once it is written back over a re-sealed row.

use diesel::prelude::*;
use divine_atbridge::identity::ProvisionSecrets;
use divine_atbridge::jobs::store::{save_session, DbSessionStore};
use divine_atbridge::keys::{KeyEncryptionKey, KeyRing};
use divine_atbridge::pds::{SessionStore, StoredSession};
use divine_atbridge::rekey;
use divine_bridge_db::accounts::{self, OptIn};
use divine_bridge_db::records::{self, AccountKeys, Resealed};
use divine_bridge_db::schema::{account_keys, account_sessions};
use divine_bridge_db::testutil::TestDb;
use divine_bridge_db::Classified;
use divine_bridge_db::ErrorCode;
use std::ops::ControlFlow;
use std::sync::Arc;

const ACCOUNTS: usize = 7;

fn pubkey(i: usize) -> String {
    format!("{:064x}", i + 1)
}

fn did(i: usize) -> String {
    format!("did:plc:{:0>24}", i + 1)
}

fn all_keys(db: &TestDb) -> Vec<AccountKeys> {
    account_keys::table
        .order(account_keys::nostr_pubkey)
        .select(AccountKeys::as_select())
        .load(&mut db.conn())
        .unwrap()
}

/// `ACCOUNTS` ready accounts whose keys and sessions are sealed by `old`; returns each account's signing did:key.
async fn seed(tdb: &TestDb, old: &KeyRing) -> Vec<String> {
    let db = tdb.pool(2);
    let mut signing = Vec::new();
    for i in 0..ACCOUNTS {
        let (pk, did) = (pubkey(i), did(i));
        let mut conn = tdb.conn();
        accounts::opt_in(
            &mut conn,
            &OptIn {
                nostr_pubkey: pk.clone(),
                handle: format!("user{i}.example.com"),
                crosspost_enabled: true,
            },
        )
        .unwrap();
        let row = ProvisionSecrets::generate().keys_row(old.primary(), &pk);
        signing.push(row.signing_did_key.clone());
        records::insert_keys_once(&mut conn, &row).unwrap();
        accounts::mark_ready(&mut conn, &pk, &did).unwrap();
        let session = StoredSession {
            access_jwt: format!("access-{i}"),
            refresh_jwt: format!("refresh-{i}"),
        };
        save_session(&db, old, &pk, &did, &session).await.unwrap();
    }
    signing
}

/// Every row opens under `ring`: keys with the right public halves, passwords, sessions.
async fn all_open(tdb: &TestDb, ring: &KeyRing, signing: &[String]) {
    for (row, want) in all_keys(tdb).iter().zip(signing) {
        let secrets = ProvisionSecrets::open_row(ring, row).unwrap();
        assert_eq!(&secrets.signing_key.did_key(), want);
    }
    let store = DbSessionStore {
        db: tdb.pool(2),
        kek: Arc::new(ring.clone()),
    };
    for i in 0..ACCOUNTS {
        assert!(!store.password(&did(i)).await.unwrap().is_empty());
        let s = store.load(&did(i)).await.unwrap().unwrap();
        assert_eq!(s.access_jwt, format!("access-{i}"));
    }
}

#[tokio::test]
async fn rotate_interrupted_resumes_and_old_generations_do_not_open() {
    let tdb = TestDb::migrated("keys_rotate");
    let old = KeyEncryptionKey::from_bytes([1u8; 32]);
    let new = KeyEncryptionKey::from_bytes([2u8; 32]);
    let signing = seed(&tdb, &KeyRing::from(old.clone())).await;
    let ring = KeyRing::new(vec![new.clone(), old.clone()]);
    let db = tdb.pool(2);

    // Before any rotation the new ring opens everything through the old KEK (rows name it).
    all_open(&tdb, &ring, &signing).await;
    // A ring without the KEK a row names refuses with its own code.
    let only_new = KeyRing::from(new.clone());
    let e = ProvisionSecrets::open_row(&only_new, &all_keys(&tdb)[0]).unwrap_err();
    assert_eq!(e.code(), ErrorCode::KeyEncryptionKeyUnknown);

    let before = all_keys(&tdb);

    // "Crash" after the first batch of 3.
    let first = rekey::rotate(&db, &ring, 3, |_| ControlFlow::Break(())).await.unwrap();
    assert_eq!(
        (first.keys_total, first.keys_done, first.sessions_done),
        (ACCOUNTS as i64, 3, 0)
    );
    let mid = all_keys(&tdb);
    assert_eq!(
        mid.iter()
            .filter(|r| r.kek_id == new.key_id() && r.seal_generation == 1)
            .count(),
        3
    );
    assert_eq!(
        mid.iter()
            .filter(|r| r.kek_id == old.key_id() && r.seal_generation == 0)
            .count(),
        4
    );
    // Half-rotated: both KEKs in use, everything still opens.
    all_open(&tdb, &ring, &signing).await;

    // Resume: only what is left is re-sealed; progress lines report each batch.
    let mut lines = Vec::new();
    let rest = rekey::rotate(&db, &ring, 3, |p| {
        lines.push(p.to_string());
        ControlFlow::Continue(())
    })
    .await
    .unwrap();
    assert_eq!((rest.keys_total, rest.keys_done), (4, 4));
    assert_eq!(
        (rest.sessions_total, rest.sessions_done, rest.skipped),
        (ACCOUNTS as i64, ACCOUNTS as i64, 0)
    );
    assert!(lines.last().unwrap().contains("account_sessions 7/7"), "{lines:?}");
    let after = all_keys(&tdb);
    assert!(after.iter().all(|r| r.kek_id == new.key_id() && r.seal_generation == 1));
    let session_keks: Vec<String> = account_sessions::table
        .select(account_sessions::kek_id)
        .load(&mut tdb.conn())
        .unwrap();
    assert!(session_keks.iter().all(|k| *k == new.key_id()));
    // The old KEK can now be retired: the new one alone opens everything, same keys as before.
    all_open(&tdb, &only_new, &signing).await;
    // Nothing left: a third run is a no-op.
    let again = rekey::rotate(&db, &ring, 3, |_| ControlFlow::Continue(()))
        .await
        .unwrap();
    assert_eq!((again.keys_total, again.sessions_total, again.keys_done), (0, 0, 0));

    // Replay: the generation-0 password ciphertext written back over the re-sealed row (even with its old kek_id)
    // does not open: the row is at generation 1, bound into the associated data.
    let (victim, old_row) = (&after[0], &before[0]);
    diesel::update(account_keys::table.find(&victim.nostr_pubkey))
        .set((
            account_keys::password_sealed.eq(&old_row.password_sealed),
            account_keys::kek_id.eq(&old_row.kek_id),
        ))
        .execute(&mut tdb.conn())
        .unwrap();
    let replayed = all_keys(&tdb).into_iter().next().unwrap();
    assert_eq!(replayed.seal_generation, 1);
    let e = ProvisionSecrets::open_row(&ring, &replayed).unwrap_err();
    assert_eq!(e.code(), ErrorCode::KeyDecryptFailed);

    // Fenced: a re-seal computed from generation 0 cannot land on a row at generation 1.
    let stale = Resealed {
        kek_id: old.key_id(),
        signing_key_sealed: old_row.signing_key_sealed.clone(),
        rotation_key_sealed: old_row.rotation_key_sealed.clone(),
        password_sealed: old_row.password_sealed.clone(),
    };
    assert!(!records::reseal_keys(&mut tdb.conn(), &victim.nostr_pubkey, 0, &stale).unwrap());

    // A row that does not open stops the rotation with its code (it is not skipped silently).
    diesel::update(account_keys::table.find(&victim.nostr_pubkey))
        .set(account_keys::kek_id.eq(old.key_id()))
        .execute(&mut tdb.conn())
        .unwrap();
    let e = rekey::rotate(&db, &ring, 3, |_| ControlFlow::Continue(()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::KeyDecryptFailed);
    assert!(e.to_string().contains(&victim.nostr_pubkey), "{e}");
}
