//! The closed sets of states and kinds stored in Postgres. Each enum names exactly the values of the matching SQL
//! CHECK constraint (verified by `tests/schema.rs`). Allowed job-state transitions live here, in one place; the
//! queue's SQL only ever performs transitions this module allows. Owns no I/O.
//!
//! Columns: with the `diesel` feature (enabled by divine-bridge-db) [`JobKind`] and [`JobState`] are Diesel
//! `Text` values (`ToSql`/`FromSql` for Postgres, below): rows are read into the enums once, where they are loaded,
//! instead of as `String`s parsed at every use. A stored value outside the enum fails the row's decode with
//! [`UnknownValue`]; the CHECK constraints make that schema drift, never data.

/// Compares a stored enum with its stored spelling (`state == "queued"`), for tests and operators' filters.
macro_rules! str_eq {
    ($name:ident) => {
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

/// Diesel `Text` mapping of an enum of this module (the `diesel` feature): written as [`JobKind::as_str`] spells it,
/// read back through `FromStr` (an unknown value is a decode error carrying [`UnknownValue`]).
#[cfg(feature = "diesel")]
macro_rules! text_column {
    ($name:ident) => {
        impl diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg> for $name {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, diesel::pg::Pg>,
            ) -> diesel::serialize::Result {
                <str as diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg>>::to_sql(self.as_str(), out)
            }
        }

        impl diesel::deserialize::FromSql<diesel::sql_types::Text, diesel::pg::Pg> for $name {
            fn from_sql(value: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
                let s =
                    <String as diesel::deserialize::FromSql<diesel::sql_types::Text, diesel::pg::Pg>>::from_sql(value)?;
                Ok(s.parse::<$name>()?)
            }
        }
    };
}

/// A stored string that is not one of the enum's values (schema drift or corruption).
#[derive(Debug, thiserror::Error)]
#[error("unknown {0} value {1:?}")]
pub struct UnknownValue(pub &'static str, pub String);

string_enum!(serde:
    #[cfg_attr(feature = "diesel", derive(diesel::FromSqlRow, diesel::AsExpression), diesel(sql_type = diesel::sql_types::Text))]
    /// Job lifecycle. `queued → running → {succeeded | failed | ineligible | cancelled | queued (retry/reclaim)}`,
    /// `queued → cancelled`, and operator retry `{failed | cancelled | ineligible} → queued`.
    JobState {
        Queued => "queued",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
        Ineligible => "ineligible",
    }
);

str_eq!(JobState);
str_eq!(JobKind);
#[cfg(feature = "diesel")]
text_column!(JobState);
#[cfg(feature = "diesel")]
text_column!(JobKind);

impl JobState {
    /// Terminal states carry `finished_at` and are never leased again unless an operator retries them.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::Ineligible
        )
    }

    /// The one table of allowed transitions.
    pub fn can_transition_to(self, to: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, to),
            (Queued, Running)
                | (Queued, Cancelled)
                | (Running, Succeeded)
                | (Running, Failed)
                | (Running, Ineligible)
                | (Running, Cancelled)
                | (Running, Queued)
                | (Failed, Queued)
                | (Cancelled, Queued)
                | (Ineligible, Queued)
        )
    }
}

string_enum!(serde:
    #[cfg_attr(feature = "diesel", derive(diesel::FromSqlRow, diesel::AsExpression), diesel(sql_type = diesel::sql_types::Text))]
    /// Kinds of work. One generic table serves them all.
    JobKind {
        ProvisionAccount => "provision_account",
        PublishPost => "publish_post",
        DeletePost => "delete_post",
        SyncProfile => "sync_profile",
        BackfillAuthor => "backfill_author",
        Noop => "noop",
        DisconnectAccount => "disconnect_account",
    }
);

impl JobKind {
    /// Account lifecycle kinds (provision, disconnect): they run under the account key and only when
    /// no other job of the account is running (the account barrier, see `divine_bridge_db::queue`). Add every new kind that
    /// creates or ends an account here.
    pub fn is_lifecycle(self) -> bool {
        matches!(self, JobKind::ProvisionAccount | JobKind::DisconnectAccount)
    }
}

string_enum!(serde:
    /// Account link lifecycle as shown by the gateway's status endpoint.
    ProvisioningState {
        Pending => "pending",
        Provisioning => "provisioning",
        Ready => "ready",
        Failed => "failed",
        Disabled => "disabled",
        Suspended => "suspended",
        Disconnecting => "disconnecting",
        Disconnected => "disconnected",
    }
);

impl ProvisioningState {
    /// Paused: no new cross-posts (user `disabled` or operator `suspended`); deletes and profile changes of an
    /// account with a DID are still honoured.
    pub fn is_paused(self) -> bool {
        matches!(self, ProvisioningState::Disabled | ProvisioningState::Suspended)
    }

    /// Leaving for good (`disconnecting`) or gone (`disconnected`): nothing is bridged or kept in step any more, no
    /// enable, opt-in or worker transition takes the account out of it (accounts.rs, disconnect semantics).
    pub fn is_leaving(self) -> bool {
        matches!(self, ProvisioningState::Disconnecting | ProvisioningState::Disconnected)
    }
}

string_enum!(serde:
    /// Actions recorded in `account_audit` (one per operator or user action on an account link).
    AuditAction {
        OptIn => "opt_in",
        Enable => "enable",
        Disable => "disable",
        Suspend => "suspend",
        Unsuspend => "unsuspend",
        Reprovision => "reprovision",
        Disconnect => "disconnect",
        ReleaseHandle => "release_handle",
    }
);

string_enum!(serde:
    /// Lifecycle of a bridged record.
    RecordState {
        Reserved => "reserved",
        Published => "published",
        Deleted => "deleted",
        Superseded => "superseded",
    }
);

/// Job priorities: lower runs first. Live events go before backfill.
pub mod priority {
    /// Account provisioning: runs before any post of the same account (an account's posts wait behind it in the
    /// per-account order instead of failing against an account that does not exist yet).
    pub const ACCOUNT: i16 = -10;
    /// Live events.
    pub const LIVE: i16 = 0;
    /// History imported on opt-in.
    pub const BACKFILL: i16 = 10;
}

/// Dispatch classes (issue 11 §2, fair dispatch): priorities are grouped into three classes that share the fleet's
/// workers by weight instead of by strict priority, so a launch wave of provisioning or a long backfill never starves
/// live posts, and live traffic never starves backfill. The SQL twin is `job_dispatch_class(priority)` (migration
/// 2026-12-04-233000_lease_job_heads); `tests/queue_semantics.rs` checks they agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DispatchClass {
    /// `priority < LIVE`: account lifecycle (provisioning).
    Account = 0,
    /// `LIVE <= priority < BACKFILL`: live events.
    Live = 1,
    /// `priority >= BACKFILL`: history imported on opt-in.
    Backfill = 2,
}

impl DispatchClass {
    /// Every class, in tie-break order (on equal weighted load the lower priority value goes first).
    pub const ALL: [DispatchClass; 3] = [DispatchClass::Account, DispatchClass::Live, DispatchClass::Backfill];

    /// The class of a job priority.
    pub fn of(priority: i16) -> DispatchClass {
        if priority < priority::LIVE {
            DispatchClass::Account
        } else if priority < priority::BACKFILL {
            DispatchClass::Live
        } else {
            DispatchClass::Backfill
        }
    }

    /// The class's share of the fleet's running jobs when every class has work: live 4, account 2, backfill 1
    /// (8 busy workers ≈ 4.6 live, 2.3 provisioning, 1.1 backfill). Idle shares go to whoever has work. Live gets
    /// the most because its lag is the SLO; provisioning gets more than backfill because an account's live posts
    /// wait for it (`account_not_ready`); backfill is history and may lag, but never stops.
    pub fn weight(self) -> i32 {
        match self {
            DispatchClass::Account => 2,
            DispatchClass::Live => 4,
            DispatchClass::Backfill => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), *s);
        }
        for k in JobKind::ALL {
            assert_eq!(k.as_str().parse::<JobKind>().unwrap(), *k);
        }
        assert!("bogus".parse::<JobState>().is_err());
    }

    #[test]
    fn terminal_states_only_leave_by_operator_retry() {
        for from in JobState::ALL.iter().filter(|s| s.is_terminal()) {
            for to in JobState::ALL {
                let allowed = from.can_transition_to(*to);
                let expected = *to == JobState::Queued && *from != JobState::Succeeded;
                assert_eq!(allowed, expected, "{from} -> {to}");
            }
        }
        assert!(!JobState::Queued.can_transition_to(JobState::Succeeded));
    }
}
