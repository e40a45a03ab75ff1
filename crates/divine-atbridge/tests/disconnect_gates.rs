//! The publish and upkeep gates refuse an account that is disconnecting (divine_bridge_db::accounts, disconnect
//! rule 2): nothing new is bridged and nothing is written to a repo that is being let go, with the stable code
//! `account_disconnected`; before the disconnect both gates let the ready account through.

use divine_atbridge::jobs::gates::{account_gate, upkeep_gate};
use divine_atbridge::jobs::JobError;
use divine_bridge_db::accounts::{self, OptIn};
use divine_bridge_db::testutil::TestDb;

const A: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
const DID: &str = "did:plc:cccccccccccccccccccccccc";

fn code(r: Result<String, JobError>) -> &'static str {
    match r {
        Err(JobError::Ineligible { code, .. }) => code.as_str(),
        other => panic!("expected ineligible, got {other:?}"),
    }
}

#[test]
fn gates_refuse_a_disconnecting_account() {
    let db = TestDb::migrated("disc_gates");
    let mut conn = db.conn();
    accounts::opt_in(
        &mut conn,
        &OptIn {
            nostr_pubkey: A.into(),
            handle: "carol.example.com".into(),
            crosspost_enabled: true,
        },
    )
    .unwrap();
    accounts::mark_ready(&mut conn, A, DID).unwrap();
    assert_eq!(account_gate(&mut conn, A).unwrap(), DID);
    assert_eq!(upkeep_gate(&mut conn, A).unwrap(), DID);

    accounts::begin_disconnect(&mut conn, A).unwrap();
    assert_eq!(code(account_gate(&mut conn, A)), "account_disconnected");
    assert_eq!(code(upkeep_gate(&mut conn, A)), "account_disconnected");
}
