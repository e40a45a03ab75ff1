//! Diesel table definitions mirroring `migrations/`. Hand-maintained; `tests/schema.rs` checks the state enums
//! against the SQL CHECK constraints so the two cannot drift. Owns no logic.

diesel::table! {
    account_links (nostr_pubkey) {
        nostr_pubkey -> Text,
        handle -> Text,
        did -> Nullable<Text>,
        crosspost_enabled -> Bool,
        provisioning_state -> Text,
        provisioning_error -> Nullable<Text>,
        provisioning_error_detail -> Nullable<Text>,
        disabled_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        suspended_reason -> Nullable<Text>,
        disconnected_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    account_tombstones (id) {
        id -> Int8,
        nostr_pubkey -> Text,
        did -> Nullable<Text>,
        handle -> Text,
        disconnected_at -> Timestamptz,
        completed_at -> Nullable<Timestamptz>,
        handle_released_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    account_audit (id) {
        id -> Int8,
        nostr_pubkey -> Text,
        actor -> Text,
        action -> Text,
        reason -> Nullable<Text>,
        before_state -> Nullable<Jsonb>,
        after_state -> Nullable<Jsonb>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    account_keys (nostr_pubkey) {
        nostr_pubkey -> Text,
        kek_id -> Text,
        signing_key_sealed -> Bytea,
        rotation_key_sealed -> Bytea,
        password_sealed -> Bytea,
        signing_did_key -> Text,
        rotation_did_key -> Text,
        provision_state -> Nullable<Jsonb>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        seal_generation -> Int8,
    }
}

diesel::table! {
    account_sessions (did) {
        did -> Text,
        nostr_pubkey -> Text,
        access_jwt_sealed -> Bytea,
        refresh_jwt_sealed -> Bytea,
        access_expires_at -> Nullable<Timestamptz>,
        refresh_expires_at -> Nullable<Timestamptz>,
        updated_at -> Timestamptz,
        kek_id -> Text,
    }
}

diesel::table! {
    jobs (id) {
        id -> Int8,
        kind -> Text,
        ordering_key -> Text,
        unique_key -> Nullable<Text>,
        payload -> Jsonb,
        state -> Text,
        priority -> Int2,
        run_at -> Timestamptz,
        attempt -> Int4,
        lease_owner -> Nullable<Text>,
        lease_expires_at -> Nullable<Timestamptz>,
        cancel_requested_at -> Nullable<Timestamptz>,
        reclaim_count -> Int4,
        last_error -> Nullable<Text>,
        last_error_code -> Nullable<Text>,
        source_created_at -> Timestamptz,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
        lease_token -> Nullable<Int8>,
        panic_count -> Int4,
    }
}

diesel::table! {
    record_mappings (nostr_event_id) {
        nostr_event_id -> Text,
        nostr_pubkey -> Text,
        did -> Text,
        collection -> Text,
        rkey -> Text,
        event_kind -> Int4,
        coordinate -> Nullable<Text>,
        event_created_at -> Timestamptz,
        state -> Text,
        record -> Nullable<Jsonb>,
        at_uri -> Nullable<Text>,
        cid -> Nullable<Text>,
        published_at -> Nullable<Timestamptz>,
        deleted_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    nostr_tombstones (target, nostr_pubkey) {
        target -> Text,
        nostr_pubkey -> Text,
        delete_event_id -> Text,
        deleted_at -> Timestamptz,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    profile_sync (nostr_pubkey) {
        nostr_pubkey -> Text,
        event_id -> Text,
        event_created_at -> Timestamptz,
        synced_at -> Nullable<Timestamptz>,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    relay_cursors (relay_url) {
        relay_url -> Text,
        last_created_at -> Timestamptz,
        last_event_id -> Text,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    opt_in_allowlist (nostr_pubkey) {
        nostr_pubkey -> Text,
        added_at -> Timestamptz,
    }
}

diesel::table! {
    nip98_seen (event_id) {
        event_id -> Text,
        seen_at -> Timestamptz,
    }
}

diesel::table! {
    ingest_replicas (owner) {
        owner -> Text,
        expires_at -> Timestamptz,
    }
}

diesel::table! {
    ingest_shards (relay_url, shard) {
        relay_url -> Text,
        shard -> Int4,
        owner -> Nullable<Text>,
        token -> Nullable<Int8>,
        expires_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    relay_shard_cursors (relay_url, shards, shard) {
        relay_url -> Text,
        shards -> Int4,
        shard -> Int4,
        last_created_at -> Timestamptz,
        last_event_id -> Text,
        updated_at -> Timestamptz,
    }
}

diesel::joinable!(account_keys -> account_links (nostr_pubkey));
diesel::allow_tables_to_appear_in_same_query!(
    account_links,
    account_audit,
    account_tombstones,
    account_keys,
    account_sessions,
    jobs,
    record_mappings,
    nostr_tombstones,
    profile_sync,
    relay_cursors,
    nip98_seen,
    opt_in_allowlist,
    ingest_replicas,
    ingest_shards,
    relay_shard_cursors,
);
