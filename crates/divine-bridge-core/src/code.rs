//! Every stable error code the bridge can emit, in one place: [`ErrorCode`]. A code names a failure for operators
//! (job `last_error_code`, `error[<code>]` on the CLI, the gateway's problem `code`, metric labels) and each has an
//! entry in `docs/runbooks/troubleshooting.md`, checked by the unit test below over [`ErrorCode::ALL`] (it replaced
//! a Perl extractor that parsed the Rust source).
//!
//! Adding a code: add the variant here (grouped by the file where it is born) and its `### \`code\`` entry in the
//! runbook; `cargo test -p divine-bridge-core` fails until the runbook has the entry.
//!
//! [`ReasonLabel`] lists the metric `reason` labels that accompany a code rather than being one (gateway 401
//! reasons, `/ready` reasons); each must be mentioned in the runbook.

string_enum!(
    /// A stable error code (see the module comment). Grouped by the crate and file where the error is born.
    #[derive(PartialOrd, Ord)]
    ErrorCode {
        // divine-bridge-db accounts.rs
        AccountDisconnected => "account_disconnected",
        AccountSuspended => "account_suspended",
        HandleMismatch => "handle_mismatch",
        HandleTaken => "handle_taken",
        // divine-bridge-db error.rs
        DbConflict => "db_conflict",
        DbConnectRejected => "db_connect_rejected",
        DbConnectionLost => "db_connection_lost",
        DbCorruptValue => "db_corrupt_value",
        DbLockTimeout => "db_lock_timeout",
        DbMigrationFailed => "db_migration_failed",
        DbQueryFailed => "db_query_failed",
        DbReadOnly => "db_read_only",
        DbResourcesExhausted => "db_resources_exhausted",
        DbSerializationConflict => "db_serialization_conflict",
        DbStatementCanceled => "db_statement_canceled",
        // divine-bridge-db queue.rs
        Cancelled => "cancelled",
        HandlerPanicked => "handler_panicked",
        LeaseExpired => "lease_expired",
        ReleasedAtShutdown => "released_at_shutdown",
        SuspectedPoison => "suspected_poison",
        // divine-atproto jwt.rs
        JwtMalformed => "jwt_malformed",
        JwtSignatureInvalid => "jwt_signature_invalid",
        // divine-atproto keys.rs
        DidKeyInvalid => "did_key_invalid",
        KeyDecryptFailed => "key_decrypt_failed",
        KeyEncryptionKeyInvalid => "key_encryption_key_invalid",
        SecretKeyInvalid => "secret_key_invalid",
        SignatureInvalid => "signature_invalid",
        KeyEncryptionKeyUnknown => "key_encryption_key_unknown",
        // divine-atproto pds/client.rs
        AccountAlreadyExists => "account_already_exists",
        AccountDeactivated => "account_deactivated",
        AccountTakedown => "account_takedown",
        HandleUnavailable => "handle_unavailable",
        PdsRejected => "pds_rejected",
        PdsRequestInvalid => "pds_request_invalid",
        PdsValidation => "pds_validation",
        ServiceAuthExpired => "service_auth_expired",
        ServiceAuthRejected => "service_auth_rejected",
        // divine-atproto pds/session.rs
        SessionPasswordMissing => "session_password_missing",
        // divine-atproto plc.rs
        PlcNotFound => "plc_not_found",
        PlcOpInvalid => "plc_op_invalid",
        PlcOpTooLarge => "plc_op_too_large",
        PlcOrdering => "plc_ordering",
        PlcRejected => "plc_rejected",
        // divine-atproto xrpc.rs
        SessionExpired => "session_expired",
        XrpcRateLimited => "xrpc_rate_limited",
        XrpcRejected => "xrpc_rejected",
        XrpcRequestInvalid => "xrpc_request_invalid",
        XrpcServerError => "xrpc_server_error",
        XrpcTimeout => "xrpc_timeout",
        XrpcTransport => "xrpc_transport",
        XrpcInsecureUrl => "xrpc_insecure_url",
        XrpcRedirectRefused => "xrpc_redirect_refused",
        XrpcResponseTooLarge => "xrpc_response_too_large",
        // divine-nostr media.rs
        HashMismatch => "hash_mismatch",
        MediaAddressForbidden => "media_address_forbidden",
        MediaBadUrl => "media_bad_url",
        MediaHostNotAllowed => "media_host_not_allowed",
        MediaHttpStatus => "media_http_status",
        MediaSpoolIo => "media_spool_io",
        MediaTimeout => "media_timeout",
        MediaTooLarge => "media_too_large",
        MediaTooManyRedirects => "media_too_many_redirects",
        MediaTransport => "media_transport",
        MediaUnsupportedType => "media_unsupported_type",
        MediaHashMissing => "media_hash_missing",
        MediaInsecureUrl => "media_insecure_url",
        MediaPortNotAllowed => "media_port_not_allowed",
        // divine-nostr nostr.rs
        BadId => "bad_id",
        BadSignature => "bad_signature",
        FutureDated => "future_dated",
        UnsupportedKind => "unsupported_kind",
        // divine-nostr translate/mod.rs
        InvalidEvent => "invalid_event",
        NoVideo => "no_video",
        RecordUnserializable => "record_unserializable",
        // divine-atbridge app.rs
        AccountNotFound => "account_not_found",
        CliUsage => "cli_usage",
        ConfigInvalid => "config_invalid",
        DbUnavailable => "db_unavailable",
        HttpBindFailed => "http_bind_failed",
        TaskExited => "task_exited",
        // divine-atbridge config.rs
        ConfigMissing => "config_missing",
        // divine-atbridge identity.rs
        AccountExistsUnverified => "account_exists_unverified",
        AccountNotActive => "account_not_active",
        PdsEndpointMismatch => "pds_endpoint_mismatch",
        PlcConflict => "plc_conflict",
        ProvisionRequestInvalid => "provision_request_invalid",
        ProvisionStateMismatch => "provision_state_mismatch",
        // divine-atbridge ingest.rs
        IngestShardLost => "ingest_shard_lost",
        NoRelaysConfigured => "no_relays_configured",
        NotOptedIn => "not_opted_in",
        RelayCursorAhead => "relay_cursor_ahead",
        RelaySubscriptionClosed => "relay_subscription_closed",
        // divine-atbridge jobs/disconnect.rs
        DisconnectNotRequested => "disconnect_not_requested",
        DisconnectRepoInactive => "disconnect_repo_inactive",
        // divine-atbridge jobs/handlers.rs
        BackfillRelayError => "backfill_relay_error",
        // divine-atbridge jobs/mod.rs
        AccountBusy => "account_busy",
        AccountNotReady => "account_not_ready",
        InvalidJobPayload => "invalid_job_payload",
        JobAuthorMismatch => "job_author_mismatch",
        JobEventUnverified => "job_event_unverified",
        // divine-atbridge jobs/profile.rs
        Superseded => "superseded",
        // divine-atbridge jobs/provision.rs
        AccountDisabled => "account_disabled",
        // divine-atbridge jobs/publish.rs
        Deleted => "deleted",
        InvalidTid => "invalid_tid",
        // divine-atbridge jobs/sources.rs
        AvatarTooLarge => "avatar_too_large",
        AvatarUnsupportedFormat => "avatar_unsupported_format",
        BannerTooLarge => "banner_too_large",
        BannerUnsupportedFormat => "banner_unsupported_format",
        // divine-atbridge jobs/store.rs
        XrpcBadResponse => "xrpc_bad_response",
        // divine-atbridge reconcile.rs
        ReconcileFound => "reconcile_found",
        ReconcileRelayUnavailable => "reconcile_relay_unavailable",
        RetryWindowExhausted => "retry_window_exhausted",
        // divine-atbridge worker.rs
        LeaseLost => "lease_lost",
        NoHandler => "no_handler",
        TryTimeout => "try_timeout",
        // divine-handle-gateway config.rs
        GatewayConfigInvalid => "gateway_config_invalid",
        // divine-handle-gateway lib.rs
        GatewayBindFailed => "gateway_bind_failed",
        GatewayServeFailed => "gateway_serve_failed",
        // divine-handle-gateway problem.rs
        HandleNotFound => "handle_not_found",
        HandleReserved => "handle_reserved",
        Internal => "internal",
        InvalidCursor => "invalid_cursor",
        InvalidEventId => "invalid_event_id",
        InvalidHandle => "invalid_handle",
        InvalidJson => "invalid_json",
        InvalidPubkey => "invalid_pubkey",
        MethodNotAllowed => "method_not_allowed",
        NotFound => "not_found",
        NotReady => "not_ready",
        OperatorOnly => "operator_only",
        PayloadTooLarge => "payload_too_large",
        TooManyIds => "too_many_ids",
        Unauthorized => "unauthorized",
        Unavailable => "unavailable",
        UnsupportedMediaType => "unsupported_media_type",
        GlobalRateLimited => "global_rate_limited",
        InsufficientPow => "insufficient_pow",
        OptInNotAllowlisted => "opt_in_not_allowlisted",
        OptInServiceOnly => "opt_in_service_only",
        Overloaded => "overloaded",
        ProvisioningBudgetExhausted => "provisioning_budget_exhausted",
        RateLimited => "rate_limited",
        Timeout => "timeout",
        ToggleRateLimited => "toggle_rate_limited",
        // divine-bridge-db roles.rs
        DbRoleInvalid => "db_role_invalid",
        // divine-atbridge cli.rs
        AccountAlreadyReady => "account_already_ready",
        AccountAmbiguous => "account_ambiguous",
        JobAlreadyFinished => "job_already_finished",
        JobNotFound => "job_not_found",
        JobNotRetryable => "job_not_retryable",
    }
);

string_enum!(
    /// A metric `reason` label that accompanies an error code (gateway 401 reasons, `/ready` reasons).
    #[derive(PartialOrd, Ord)]
    ReasonLabel {
        BadScheme => "bad_scheme",
        BadSignature => "bad_signature",
        BadToken => "bad_token",
        DatabaseUnavailable => "database_unavailable",
        Future => "future",
        Malformed => "malformed",
        MigrationsPending => "migrations_pending",
        Missing => "missing",
        PayloadMismatch => "payload_mismatch",
        PayloadMissing => "payload_missing",
        Rejected => "rejected",
        Replay => "replay",
        Stale => "stale",
        Starting => "starting",
        TaskExited => "task_exited",
        WrongKind => "wrong_kind",
        WrongMethod => "wrong_method",
        WrongPubkey => "wrong_pubkey",
        WrongUrl => "wrong_url",
    }
);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const RUNBOOK: &str = include_str!("../../../docs/runbooks/troubleshooting.md");

    /// The codes of the runbook's entry headings (`### \`code\`` or `#### \`code\``).
    fn documented_codes() -> BTreeSet<&'static str> {
        RUNBOOK
            .lines()
            .filter_map(|l| l.strip_prefix("#### ").or_else(|| l.strip_prefix("### ")))
            .filter_map(|h| h.trim().strip_prefix('`')?.strip_suffix('`'))
            .collect()
    }

    #[test]
    fn every_error_code_has_a_runbook_entry() {
        let documented = documented_codes();
        let missing: Vec<&str> = ErrorCode::ALL
            .iter()
            .map(|c| c.as_str())
            .filter(|c| !documented.contains(c))
            .collect();
        assert!(
            missing.is_empty(),
            "codes without a `### `code`` entry in troubleshooting.md: {missing:?}"
        );
    }

    #[test]
    fn every_runbook_entry_names_a_code_or_label() {
        let stale: Vec<&str> = documented_codes()
            .into_iter()
            .filter(|d| d.parse::<ErrorCode>().is_err() && d.parse::<ReasonLabel>().is_err())
            .collect();
        assert!(
            stale.is_empty(),
            "troubleshooting.md entries for codes that no longer exist: {stale:?}"
        );
    }

    #[test]
    fn every_reason_label_is_mentioned_in_the_runbook() {
        let missing: Vec<&str> = ReasonLabel::ALL
            .iter()
            .map(|l| l.as_str())
            .filter(|l| !RUNBOOK.contains(&format!("`{l}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "reason labels not mentioned in troubleshooting.md: {missing:?}"
        );
    }

    #[test]
    fn codes_are_unique_snake_case_and_round_trip() {
        let mut seen = BTreeSet::new();
        for c in ErrorCode::ALL {
            let s = c.as_str();
            assert!(seen.insert(s), "duplicate code {s}");
            assert!(
                !s.is_empty()
                    && s.split('_')
                        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())),
                "{s} is not snake_case"
            );
            assert_eq!(s.parse::<ErrorCode>().unwrap(), *c);
        }
        assert!("no_such_code".parse::<ErrorCode>().is_err());
        for l in ReasonLabel::ALL {
            assert_eq!(l.as_str().parse::<ReasonLabel>().unwrap(), *l);
        }
    }
}
