//! Typed jobs (issue 13 §3, modelled on River's `JobArgs`): every job kind has one args type, a serde struct that
//! IS its payload, and the type — not its producer — decides the job's kind, account, unique key, ordering key,
//! priority and dispatch order. Producers build jobs with [`NewJob::of`]; handlers read the payload once with
//! [`LeasedJob::args`], a typed decode whose failure is the permanent `invalid_job_payload` (never a field looked up
//! with a fallback).
//!
//! Why the trait lives here and not in `divine-bridge-core`: a job's args are the queue's contract. They become a
//! [`NewJob`] (this crate), their ordering keys are spelled by [`crate::queue::keys`] and their unique keys follow the
//! conventions in the `queue` module header; core has neither `serde_json` nor the key formats. The args of the
//! account kinds (provision, disconnect, backfill) and of `noop` are defined here because the account store writes
//! them in the same transaction as the account change ([`crate::accounts`]); the event kinds (publish, delete,
//! profile) carry a Nostr event, so their args live with the Nostr types in divine-atbridge (`jobs::args`), which
//! also holds the test that every [`JobKind`] has exactly one args type (docs/runbooks/job-queue.md, "Job kinds and
//! their args").
//!
//! Payload compatibility (no data migration): the args types serialise to exactly the JSON the hand-built jobs
//! wrote — account kinds `{"nostr_pubkey": <pk>, "account": <pk>}`, event kinds `{"event": <event>, "account": <pk>}`
//! — and decode ignores fields they do not name, so rows queued by the old code decode unchanged (tested).

use crate::error::DbError;
use crate::queue::{keys, LeasedJob, NewJob};
use crate::states::{priority, JobKind};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The args of one job kind: the payload, plus everything the queue needs to know about the job, derived from it.
pub trait JobArgs: Serialize + DeserializeOwned {
    /// The kind of every job built from this type; [`LeasedJob::args`] refuses a row of another kind.
    const KIND: JobKind;

    /// The account (lower-case hex pubkey) the job belongs to, written into `payload.account` (what the account
    /// barrier, disable and the per-account listings read; see the `queue` module header). `None` only for jobs that
    /// belong to no account (`noop`).
    fn account(&self) -> Option<&str>;

    /// The deduplication key (conventions in the `queue` module header); `None` = never deduplicated.
    fn unique_key(&self) -> Option<String>;

    /// The serialisation key, built by [`crate::queue::keys`].
    fn ordering_key(&self) -> String;

    /// The job's priority, and with it its dispatch class ([`crate::states::DispatchClass::of`]). A producer may
    /// override it for one job with [`NewJob::at_priority`] (ingest queues backfilled history at
    /// [`priority::BACKFILL`]).
    fn priority(&self) -> i16 {
        priority::LIVE
    }

    /// When the job's source event was created (dispatch order within a priority); `None` = the enqueue time.
    fn source_created_at(&self) -> Option<DateTime<Utc>> {
        None
    }
}

impl NewJob {
    /// The job `args` describe: kind, payload (`args` serialised, `account` added), unique and ordering key,
    /// priority and source time all from the args type. Fails only when `args` do not serialise to a JSON object
    /// (`db_corrupt_value`), which no args type of this workspace can do (each has a test).
    pub fn of<A: JobArgs>(args: &A) -> Result<NewJob, DbError> {
        let mut payload = serde_json::to_value(args).map_err(|e| DbError::Corrupt(format!("{} args: {e}", A::KIND)))?;
        let Some(map) = payload.as_object_mut() else {
            return Err(DbError::Corrupt(format!("{} args are not a JSON object", A::KIND)));
        };
        if let Some(account) = args.account() {
            map.insert("account".into(), serde_json::Value::String(account.to_string()));
        }
        Ok(NewJob {
            kind: A::KIND,
            ordering_key: args.ordering_key(),
            unique_key: args.unique_key(),
            payload,
            priority: args.priority(),
            run_at: None,
            source_created_at: args.source_created_at(),
        })
    }

    /// Overrides the args type's priority for this one job.
    pub fn at_priority(mut self, priority: i16) -> NewJob {
        self.priority = priority;
        self
    }
}

impl LeasedJob {
    /// The job's typed args, decoded from its payload: the one reading of a payload. A row of another kind than
    /// `A::KIND`, or a payload that does not decode as `A`, is [`DbError::InvalidPayload`] (`invalid_job_payload`,
    /// permanent: a bug or a hand-edited row; retrying cannot help).
    pub fn args<A: JobArgs>(&self) -> Result<A, DbError> {
        if self.kind != A::KIND {
            return Err(DbError::InvalidPayload {
                id: self.id,
                reason: format!("a {} job read as {}", self.kind, A::KIND),
            });
        }
        A::deserialize(&self.payload).map_err(|e| DbError::InvalidPayload {
            id: self.id,
            reason: format!("{} payload: {e}", self.kind),
        })
    }
}

/// Unique key of an account's provisioning job (one per account, ever; re-driven in place).
pub fn provision_unique_key(pubkey: &str) -> String {
    format!("provision:{pubkey}")
}

/// Unique key of an account's disconnect job (one per account link; re-driven in place by a repeated request).
pub fn disconnect_unique_key(pubkey: &str) -> String {
    format!("disconnect:{pubkey}")
}

/// Unique key of an account's backfill job: one per account, re-driven in place on every enable (accounts module
/// rule 4).
pub fn backfill_unique_key(pubkey: &str) -> String {
    format!("backfill:{pubkey}")
}

/// An account lifecycle args type: `{nostr_pubkey}`, account priority (it precedes the account's posts), under the
/// account key, unique key by `$unique` (one job per account, re-driven in place).
macro_rules! lifecycle_args {
    ($(#[$doc:meta])* $name:ident, $kind:ident, $unique:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        pub struct $name {
            /// Lower-case hex.
            pub nostr_pubkey: String,
        }

        impl JobArgs for $name {
            const KIND: JobKind = JobKind::$kind;
            fn account(&self) -> Option<&str> {
                Some(&self.nostr_pubkey)
            }
            fn unique_key(&self) -> Option<String> {
                Some($unique(&self.nostr_pubkey))
            }
            fn ordering_key(&self) -> String {
                keys::account(&self.nostr_pubkey)
            }
            fn priority(&self) -> i16 {
                priority::ACCOUNT
            }
        }
    };
}

lifecycle_args!(
    /// `provision_account`: make `nostr_pubkey` a did:plc with an active PDS account (unique `provision:<pubkey>`).
    ProvisionAccountArgs,
    ProvisionAccount,
    provision_unique_key
);
lifecycle_args!(
    /// `disconnect_account`: delete the account's records, deactivate its PDS account, crypto-shred its keys (unique
    /// `disconnect:<pubkey>`).
    DisconnectAccountArgs,
    DisconnectAccount,
    disconnect_unique_key
);

/// Which backfill of an account a [`BackfillAuthorArgs`] job is; it decides the unique key only and is not stored
/// (both write the same payload).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BackfillRun {
    /// The account's one re-drivable backfill, `backfill:<pubkey>` (enable re-drives it with
    /// [`crate::queue::requeue_or_enqueue`]).
    #[default]
    Account,
    /// The import provisioning queues once when the account becomes ready, `backfill:<pubkey>:initial` (a plain
    /// enqueue: a re-provisioned account does not import again). Kept distinct from [`BackfillRun::Account`] as the
    /// code before typed jobs had it, so no queued or finished row changes meaning.
    Initial,
}

/// `backfill_author`: import the account's history from the relays. Backfill priority, under the account key;
/// unique key by [`BackfillRun`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillAuthorArgs {
    /// Lower-case hex.
    pub nostr_pubkey: String,
    #[serde(skip)]
    pub run: BackfillRun,
}

impl JobArgs for BackfillAuthorArgs {
    const KIND: JobKind = JobKind::BackfillAuthor;
    fn account(&self) -> Option<&str> {
        Some(&self.nostr_pubkey)
    }
    fn unique_key(&self) -> Option<String> {
        let key = backfill_unique_key(&self.nostr_pubkey);
        Some(match self.run {
            BackfillRun::Account => key,
            BackfillRun::Initial => format!("{key}:initial"),
        })
    }
    fn ordering_key(&self) -> String {
        keys::account(&self.nostr_pubkey)
    }
    fn priority(&self) -> i16 {
        priority::BACKFILL
    }
}

/// `noop`: does nothing (tests, benchmarks, queue drills). Live priority under `key`, never deduplicated, no
/// account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoopArgs {
    /// The ordering key, as given.
    pub key: String,
}

impl JobArgs for NoopArgs {
    const KIND: JobKind = JobKind::Noop;
    fn account(&self) -> Option<&str> {
        None
    }
    fn unique_key(&self) -> Option<String> {
        None
    }
    fn ordering_key(&self) -> String {
        self.key.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PK: &str = "ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12";

    use crate::testutil::leased_job as leased;

    /// The account jobs are exactly what `accounts::{provision,disconnect,backfill}_job` and provisioning's initial
    /// backfill hand-built before typed jobs: payload, keys and priority.
    #[test]
    fn account_args_build_the_jobs_the_old_code_built() {
        let old_payload = json!({ "nostr_pubkey": PK, "account": PK });
        let cases: [(NewJob, JobKind, String, i16); 4] = [
            (
                NewJob::of(&ProvisionAccountArgs {
                    nostr_pubkey: PK.into(),
                })
                .unwrap(),
                JobKind::ProvisionAccount,
                format!("provision:{PK}"),
                priority::ACCOUNT,
            ),
            (
                NewJob::of(&DisconnectAccountArgs {
                    nostr_pubkey: PK.into(),
                })
                .unwrap(),
                JobKind::DisconnectAccount,
                format!("disconnect:{PK}"),
                priority::ACCOUNT,
            ),
            (
                NewJob::of(&BackfillAuthorArgs {
                    nostr_pubkey: PK.into(),
                    run: BackfillRun::Account,
                })
                .unwrap(),
                JobKind::BackfillAuthor,
                format!("backfill:{PK}"),
                priority::BACKFILL,
            ),
            (
                NewJob::of(&BackfillAuthorArgs {
                    nostr_pubkey: PK.into(),
                    run: BackfillRun::Initial,
                })
                .unwrap(),
                JobKind::BackfillAuthor,
                format!("backfill:{PK}:initial"),
                priority::BACKFILL,
            ),
        ];
        for (job, kind, unique, prio) in cases {
            assert_eq!(job.kind, kind);
            assert_eq!(job.payload, old_payload, "{kind}");
            assert_eq!(job.unique_key.as_deref(), Some(unique.as_str()));
            assert_eq!(job.ordering_key, keys::account(PK));
            assert_eq!(job.priority, prio);
            assert_eq!(job.source_created_at, None);
        }
        let noop = NewJob::of(&NoopArgs { key: "k".into() }).unwrap().at_priority(3);
        assert_eq!(
            (noop.kind, noop.ordering_key.as_str(), noop.unique_key, noop.priority),
            (JobKind::Noop, "k", None, 3)
        );
    }

    /// A payload written by the code before typed jobs (and one that also went through the 2026-12-04-000110
    /// migration, which added `account`) decodes; a payload of the wrong shape or a row of another kind is
    /// `invalid_job_payload`, permanent.
    #[test]
    fn old_payloads_decode_and_bad_ones_are_classified() {
        use crate::class::{Classified, ErrorClass};
        let old = leased(JobKind::ProvisionAccount, json!({ "nostr_pubkey": PK, "account": PK }));
        assert_eq!(old.args::<ProvisionAccountArgs>().unwrap().nostr_pubkey, PK);
        let old = leased(JobKind::BackfillAuthor, json!({ "nostr_pubkey": PK, "account": PK }));
        let args = old.args::<BackfillAuthorArgs>().unwrap();
        assert_eq!((args.nostr_pubkey.as_str(), args.run), (PK, BackfillRun::Account));
        let old = leased(JobKind::DisconnectAccount, json!({ "nostr_pubkey": PK, "account": PK }));
        assert_eq!(old.args::<DisconnectAccountArgs>().unwrap().nostr_pubkey, PK);

        for err in [
            leased(JobKind::ProvisionAccount, json!({ "account": PK }))
                .args::<ProvisionAccountArgs>()
                .unwrap_err(),
            leased(JobKind::ProvisionAccount, json!({ "nostr_pubkey": 5 }))
                .args::<ProvisionAccountArgs>()
                .unwrap_err(),
            leased(JobKind::DisconnectAccount, json!({ "nostr_pubkey": PK }))
                .args::<ProvisionAccountArgs>()
                .unwrap_err(),
        ] {
            assert_eq!(
                (err.code(), err.class()),
                (divine_bridge_db::ErrorCode::InvalidJobPayload, ErrorClass::Permanent),
                "{err}"
            );
        }
    }
}
