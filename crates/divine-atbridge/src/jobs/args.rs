//! The args of the event job kinds (`publish_post`, `delete_post`, `sync_profile`): the Nostr event and the account
//! it was admitted for, typed ([`divine_bridge_db::JobArgs`]; the trait, the account kinds' args and the payload
//! compatibility rules are in `divine_bridge_db::job_args`). They live here, not in the db crate, because they carry
//! a `nostr::Event` and their ordering key is decided from the event ([`crate::ingest::ordering_key_for`]).
//!
//! [`EventJob::of`] is ingest's kind → job mapping (the one place that decides which event becomes which job); the
//! handlers read the payload back with `LeasedJob::args` and check the event again before writing anything
//! (`jobs::handlers::verified_event`). The test at the end proves every [`JobKind`] has exactly one args type whose
//! `KIND` is that kind (the table in docs/runbooks/job-queue.md, "Job kinds and their args", lists the same).

use crate::nostr as bridge_nostr;
use crate::nostr::admitted_time;
use chrono::{DateTime, Utc};
use divine_bridge_db::queue::NewJob;
use divine_bridge_db::{DbError, JobArgs, JobKind};
use nostr::Event;
use serde::{Deserialize, Serialize};

/// The payload of every event job: `{"account": <lower-case hex pubkey>, "event": <the signed event>}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventPayload {
    /// The account the event was admitted for (the job's `payload.account`); the worker checks it is the author.
    pub account: String,
    pub event: Event,
}

impl EventPayload {
    /// The payload of `event`, admitted for its author.
    pub fn of(event: &Event) -> EventPayload {
        EventPayload {
            account: event.pubkey.to_hex(),
            event: event.clone(),
        }
    }
}

/// One event args type: `$name(EventPayload)`, serialised as the payload itself, unique key `<$prefix>:<event id>`,
/// ordered by [`crate::ingest::ordering_key_for`], dispatched by the event's `created_at` at live priority (ingest
/// overrides the priority for backfilled history).
macro_rules! event_args {
    ($(#[$doc:meta])* $name:ident, $kind:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub EventPayload);

        impl $name {
            /// The unique key, `<prefix>:<event id>`.
            pub fn key(&self) -> String {
                format!(concat!($prefix, ":{}"), self.0.event.id.to_hex())
            }
        }

        impl JobArgs for $name {
            const KIND: JobKind = JobKind::$kind;
            fn account(&self) -> Option<&str> {
                Some(&self.0.account)
            }
            fn unique_key(&self) -> Option<String> {
                Some(self.key())
            }
            fn ordering_key(&self) -> String {
                crate::ingest::ordering_key_for(&self.0.event)
            }
            fn source_created_at(&self) -> Option<DateTime<Utc>> {
                Some(admitted_time(&self.0.event))
            }
        }
    };
}

event_args!(
    /// `publish_post`: bridge one video event (unique `publish:<event id>`).
    PublishPostArgs,
    PublishPost,
    "publish"
);
event_args!(
    /// `delete_post`: apply one kind 5 deletion (unique `delete:<event id>`).
    DeletePostArgs,
    DeletePost,
    "delete"
);
event_args!(
    /// `sync_profile`: sync one kind 0 profile (unique `profile:<event id>`).
    SyncProfileArgs,
    SyncProfile,
    "profile"
);

/// The job an admitted event becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum EventJob {
    Publish(PublishPostArgs),
    Delete(DeletePostArgs),
    Profile(SyncProfileArgs),
}

impl EventJob {
    /// The job for `event` by its kind (video kinds → publish, 5 → delete, 0 → profile); `None` for any other kind.
    pub fn of(event: &Event) -> Option<EventJob> {
        let payload = EventPayload::of(event);
        match event.kind.as_u16() {
            bridge_nostr::KIND_PROFILE => Some(EventJob::Profile(SyncProfileArgs(payload))),
            bridge_nostr::KIND_DELETE => Some(EventJob::Delete(DeletePostArgs(payload))),
            k if bridge_nostr::is_video_kind(k) => Some(EventJob::Publish(PublishPostArgs(payload))),
            _ => None,
        }
    }

    /// The job's kind.
    pub fn kind(&self) -> JobKind {
        match self {
            EventJob::Publish(_) => PublishPostArgs::KIND,
            EventJob::Delete(_) => DeletePostArgs::KIND,
            EventJob::Profile(_) => SyncProfileArgs::KIND,
        }
    }

    /// The job's unique key (`publish:` / `delete:` / `profile:` + event id).
    pub fn unique_key(&self) -> String {
        match self {
            EventJob::Publish(a) => a.key(),
            EventJob::Delete(a) => a.key(),
            EventJob::Profile(a) => a.key(),
        }
    }

    /// The job to enqueue ([`NewJob::of`]).
    pub fn new_job(&self) -> Result<NewJob, DbError> {
        match self {
            EventJob::Publish(a) => NewJob::of(a),
            EventJob::Delete(a) => NewJob::of(a),
            EventJob::Profile(a) => NewJob::of(a),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use divine_bridge_db::job_args::{BackfillAuthorArgs, DisconnectAccountArgs, NoopArgs, ProvisionAccountArgs};
    use divine_bridge_db::states::priority;
    use divine_bridge_db::testutil::leased_job as leased;
    use divine_bridge_db::Classified;
    use nostr::{EventBuilder, Keys, Kind, Tag};

    /// The args type of each kind, by an exhaustive match: a new [`JobKind`] does not compile until it has one, and
    /// an args type whose `KIND` names another kind fails the assertion.
    fn args_kind(kind: JobKind) -> JobKind {
        match kind {
            JobKind::ProvisionAccount => ProvisionAccountArgs::KIND,
            JobKind::PublishPost => PublishPostArgs::KIND,
            JobKind::DeletePost => DeletePostArgs::KIND,
            JobKind::SyncProfile => SyncProfileArgs::KIND,
            JobKind::BackfillAuthor => BackfillAuthorArgs::KIND,
            JobKind::Noop => NoopArgs::KIND,
            JobKind::DisconnectAccount => DisconnectAccountArgs::KIND,
        }
    }

    #[test]
    fn every_job_kind_has_args_whose_kind_matches() {
        for kind in JobKind::ALL {
            assert_eq!(args_kind(*kind), *kind);
        }
        // And the runbook's table names every kind with its args type.
        let runbook = include_str!("../../../../docs/runbooks/job-queue.md");
        let table = runbook
            .split("## Job kinds and their args")
            .nth(1)
            .expect("docs/runbooks/job-queue.md has the section \"Job kinds and their args\"");
        for kind in JobKind::ALL {
            assert!(
                table.contains(&format!("| `{kind}` |")),
                "the runbook table lacks {kind}"
            );
        }
    }

    fn signed(keys: &Keys, kind: u16, tags: Vec<Tag>) -> Event {
        EventBuilder::new(Kind::from(kind), "hello")
            .tags(tags)
            .sign_with_keys(keys)
            .unwrap()
    }

    /// The event jobs are what ingest hand-built before typed jobs: `{"event", "account"}` payload, unique key by
    /// kind, ordering key from the event, source time from `created_at`; and a payload the old code wrote decodes.
    #[test]
    fn event_jobs_match_the_old_hand_built_jobs_and_old_payloads_decode() {
        let keys = Keys::generate();
        let pk = keys.public_key().to_hex();
        let video = signed(&keys, 34236, vec![Tag::identifier("clip")]);
        let delete = signed(&keys, 5, vec![Tag::event(video.id)]);
        let profile = signed(&keys, 0, vec![]);
        for (event, kind, prefix) in [
            (&video, JobKind::PublishPost, "publish"),
            (&delete, JobKind::DeletePost, "delete"),
            (&profile, JobKind::SyncProfile, "profile"),
        ] {
            let job = EventJob::of(event).unwrap();
            let new = job.new_job().unwrap();
            let old_payload = serde_json::json!({ "event": serde_json::to_value(event).unwrap(), "account": pk });
            assert_eq!(new.kind, kind);
            assert_eq!(job.kind(), kind);
            assert_eq!(new.payload, old_payload, "{kind}");
            assert_eq!(new.unique_key, Some(format!("{prefix}:{}", event.id.to_hex())));
            assert_eq!(job.unique_key(), format!("{prefix}:{}", event.id.to_hex()));
            assert_eq!(new.ordering_key, crate::ingest::ordering_key_for(event));
            assert_eq!(new.priority, priority::LIVE);
            assert_eq!(new.source_created_at, Some(admitted_time(event)));

            let row = leased(kind, old_payload);
            let decoded = match kind {
                JobKind::PublishPost => row.args::<PublishPostArgs>().unwrap().0,
                JobKind::DeletePost => row.args::<DeletePostArgs>().unwrap().0,
                _ => row.args::<SyncProfileArgs>().unwrap().0,
            };
            assert_eq!(decoded, EventPayload::of(event));
        }
        assert_eq!(EventJob::of(&signed(&keys, 1, vec![])), None, "a text note is no job");
        let err = leased(JobKind::PublishPost, serde_json::json!({ "account": pk }))
            .args::<PublishPostArgs>()
            .unwrap_err();
        assert_eq!(err.code(), divine_bridge_db::ErrorCode::InvalidJobPayload);
    }
}
