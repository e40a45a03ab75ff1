//! `nostr-tool`: a small dev/ops helper that makes, signs, publishes and fetches Nostr events (used by the smoke
//! scripts and by operators reproducing a user's event).
//!
//! Owns: key generation, NIP-71 video / NIP-09 delete / kind 0 profile / NIP-98 auth event construction with the
//! `nostr` 0.44 API, and a publish/fetch round trip against one relay with `nostr-sdk`. Output is JSON (or the bare
//! value asked for) on stdout; diagnostics go to stderr; a relay rejection or timeout exits non-zero. It must not talk
//! to the bridge database or the PDS, and must not hold keys anywhere but the command line / files it is given.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use clap::{Parser, Subcommand};
use nostr::nips::nip01::Coordinate;
use nostr::nips::nip09::EventDeletionRequest;
use nostr::prelude::{FromBech32, ToBech32};
use nostr::{Event, EventBuilder, EventId, Filter, JsonUtil, Keys, Kind, Metadata, PublicKey, Tag, Timestamp};
use sha2::{Digest, Sha256};

/// Nostr helper for the Divine bridge localnet and smoke tests.
#[derive(Debug, Parser)]
#[command(name = "nostr-tool", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Generate a key pair: prints {"secret_hex","pubkey_hex","npub"}.
    Keygen,
    /// Print a signed NIP-71 video event (JSON) with an `imeta` tag.
    VideoEvent(VideoArgs),
    /// Print a signed NIP-09 deletion request (kind 5) for an event id or address.
    DeleteEvent {
        /// Secret key (hex or nsec).
        #[arg(long)]
        secret: String,
        /// Event id (hex) to delete; repeatable.
        #[arg(long = "event-id")]
        event_ids: Vec<String>,
        /// Address `<kind>:<pubkey>:<d>` of an addressable event to delete; repeatable.
        #[arg(long = "address")]
        addresses: Vec<String>,
        /// Optional reason (the event content).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Print a signed kind 0 profile event.
    ProfileEvent {
        /// Secret key (hex or nsec).
        #[arg(long)]
        secret: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        about: Option<String>,
        /// Avatar URL.
        #[arg(long)]
        picture: Option<String>,
    },
    /// Send an event (JSON file, or `-` for stdin) to a relay, wait for its OK and print the event id.
    Publish {
        /// Relay websocket URL.
        #[arg(long)]
        relay: String,
        /// Seconds to wait for the connection and for the relay's OK.
        #[arg(long, default_value_t = 15)]
        timeout: u64,
        /// Event JSON file, or `-` for stdin.
        file: String,
    },
    /// Query a relay and print matching events, one JSON per line; exits 1 when nothing matched.
    Fetch {
        /// Relay websocket URL.
        #[arg(long)]
        relay: String,
        /// Event id (hex); repeatable.
        #[arg(long = "id")]
        ids: Vec<String>,
        /// Author pubkey (hex or npub); repeatable.
        #[arg(long = "author")]
        authors: Vec<String>,
        /// Event kind; repeatable.
        #[arg(long = "kind")]
        kinds: Vec<u16>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Print a NIP-98 `Authorization` header value (`Nostr <base64 of a kind 27235 event>`).
    Nip98 {
        /// Secret key (hex or nsec).
        #[arg(long)]
        secret: String,
        /// Absolute request URL, exactly as the server sees it.
        #[arg(long)]
        url: String,
        /// HTTP method.
        #[arg(long)]
        method: String,
        /// Request body file; adds a `payload` tag with its sha256.
        #[arg(long = "body-file")]
        body_file: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct VideoArgs {
    /// Secret key (hex or nsec).
    #[arg(long)]
    secret: String,
    /// Media URL (the imeta `url`).
    #[arg(long)]
    url: String,
    /// sha256 (hex) of the media file (the imeta `x`).
    #[arg(long)]
    sha256: Option<String>,
    /// Local copy of the media file: fills `x` (sha256) and `size` when not given.
    #[arg(long)]
    file: Option<PathBuf>,
    /// MIME type (the imeta `m`).
    #[arg(long, default_value = "video/mp4")]
    mime: String,
    /// Dimensions `WxH` (the imeta `dim`).
    #[arg(long, default_value = "64x64")]
    dim: String,
    /// Duration in seconds (the imeta `duration`).
    #[arg(long)]
    duration: Option<f64>,
    #[arg(long)]
    title: Option<String>,
    /// Event content (the description).
    #[arg(long, default_value = "")]
    content: String,
    /// Hashtag (`t` tag); repeatable.
    #[arg(long = "hashtag")]
    hashtags: Vec<String>,
    /// 21/22 (regular/short video) or 34235/34236 (addressable, needs --d).
    #[arg(long, default_value_t = 22)]
    kind: u16,
    /// `d` tag (identifier of an addressable video).
    #[arg(long)]
    d: Option<String>,
    /// Override created_at (unix seconds), e.g. to test ordering or clock skew.
    #[arg(long = "created-at")]
    created_at: Option<u64>,
}

fn parse_keys(secret: &str) -> Result<Keys> {
    Keys::parse(secret.trim()).map_err(|e| anyhow!("invalid secret key (want 64 hex chars or nsec): {e}"))
}

fn parse_pubkey(s: &str) -> Result<PublicKey> {
    let s = s.trim();
    if s.starts_with("npub1") {
        return PublicKey::from_bech32(s).map_err(|e| anyhow!("invalid npub {s}: {e}"));
    }
    PublicKey::from_hex(s).map_err(|e| anyhow!("invalid pubkey {s}: {e}"))
}

fn tag(values: &[&str]) -> Result<Tag> {
    Tag::parse(values.iter().map(|s| s.to_string())).map_err(|e| anyhow!("bad tag {values:?}: {e}"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn video_event(a: &VideoArgs) -> Result<Event> {
    let keys = parse_keys(&a.secret)?;
    if !matches!(a.kind, 21 | 22 | 34235 | 34236) {
        bail!("--kind must be 21, 22, 34235 or 34236 (NIP-71), got {}", a.kind);
    }
    let addressable = matches!(a.kind, 34235 | 34236);
    if addressable && a.d.is_none() {
        bail!("kind {} is addressable: pass --d <identifier>", a.kind);
    }
    let (file_sha, file_size) = match &a.file {
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            (Some(sha256_hex(&bytes)), Some(bytes.len()))
        }
        None => (None, None),
    };
    let sha = match (&a.sha256, file_sha) {
        (Some(given), Some(computed)) if !given.eq_ignore_ascii_case(&computed) => {
            bail!("--sha256 {given} does not match the sha256 of --file ({computed})")
        }
        (Some(given), _) => Some(given.to_ascii_lowercase()),
        (None, computed) => computed,
    };
    if let Some(s) = &sha {
        if s.len() != 64 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
            bail!("--sha256 must be 64 hex characters");
        }
    }

    let mut imeta = vec![format!("url {}", a.url), format!("m {}", a.mime)];
    if let Some(s) = &sha {
        imeta.push(format!("x {s}"));
    }
    if let Some(n) = file_size {
        imeta.push(format!("size {n}"));
    }
    imeta.push(format!("dim {}", a.dim));
    if let Some(d) = a.duration {
        imeta.push(format!("duration {d}"));
    }
    let mut imeta_tag = vec!["imeta".to_string()];
    imeta_tag.extend(imeta);

    let mut tags = Vec::new();
    if let Some(d) = &a.d {
        tags.push(tag(&["d", d])?);
    }
    if let Some(t) = &a.title {
        tags.push(tag(&["title", t])?);
    }
    tags.push(Tag::parse(imeta_tag).map_err(|e| anyhow!("bad imeta tag: {e}"))?);
    for h in &a.hashtags {
        tags.push(Tag::hashtag(h.trim_start_matches('#')));
    }
    let created_at = a.created_at.map(Timestamp::from).unwrap_or_else(Timestamp::now);
    tags.push(tag(&["published_at", &created_at.as_secs().to_string()])?);

    EventBuilder::new(Kind::from(a.kind), a.content.clone())
        .tags(tags)
        .custom_created_at(created_at)
        .sign_with_keys(&keys)
        .map_err(|e| anyhow!("signing failed: {e}"))
}

fn delete_event(secret: &str, event_ids: &[String], addresses: &[String], reason: Option<&str>) -> Result<Event> {
    let keys = parse_keys(secret)?;
    if event_ids.is_empty() && addresses.is_empty() {
        bail!("pass at least one --event-id or --address");
    }
    let mut req = EventDeletionRequest::new();
    for id in event_ids {
        req = req.id(EventId::from_hex(id.trim()).map_err(|e| anyhow!("invalid event id {id}: {e}"))?);
    }
    for a in addresses {
        req = req.coordinate(Coordinate::parse(a).map_err(|e| anyhow!("invalid address {a}: {e}"))?);
    }
    if let Some(r) = reason {
        req = req.reason(r);
    }
    EventBuilder::delete(req)
        .sign_with_keys(&keys)
        .map_err(|e| anyhow!("signing failed: {e}"))
}

fn profile_event(secret: &str, name: Option<&str>, about: Option<&str>, picture: Option<&str>) -> Result<Event> {
    let keys = parse_keys(secret)?;
    let mut m = Metadata::new();
    if let Some(n) = name {
        m = m.name(n).display_name(n);
    }
    if let Some(a) = about {
        m = m.about(a);
    }
    if let Some(p) = picture {
        m = m.picture(url::Url::parse(p).with_context(|| format!("invalid --picture URL {p}"))?);
    }
    EventBuilder::metadata(&m)
        .sign_with_keys(&keys)
        .map_err(|e| anyhow!("signing failed: {e}"))
}

fn nip98_header(secret: &str, url: &str, method: &str, body: Option<&[u8]>) -> Result<String> {
    let keys = parse_keys(secret)?;
    url::Url::parse(url).with_context(|| format!("--url must be an absolute URL, got {url}"))?;
    let mut tags = vec![tag(&["u", url])?, tag(&["method", &method.to_ascii_uppercase()])?];
    if let Some(b) = body {
        tags.push(tag(&["payload", &sha256_hex(b)])?);
    }
    let ev = EventBuilder::new(Kind::HttpAuth, "")
        .tags(tags)
        .sign_with_keys(&keys)
        .map_err(|e| anyhow!("signing failed: {e}"))?;
    Ok(format!(
        "Nostr {}",
        base64::engine::general_purpose::STANDARD.encode(ev.as_json())
    ))
}

fn read_input(file: &str) -> Result<String> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the event from stdin")?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))
    }
}

async fn connect(relay: &str, timeout: Duration) -> Result<nostr_sdk::Client> {
    let client = nostr_sdk::Client::default();
    client
        .add_relay(relay)
        .await
        .with_context(|| format!("invalid relay URL {relay}"))?;
    let out = client.try_connect(timeout).await;
    if out.success.is_empty() {
        let why: Vec<String> = out.failed.iter().map(|(u, e)| format!("{u}: {e}")).collect();
        client.shutdown().await;
        bail!(
            "could not connect to {relay} within {}s{}",
            timeout.as_secs(),
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({})", why.join("; "))
            }
        );
    }
    Ok(client)
}

async fn publish(relay: &str, file: &str, timeout: Duration) -> Result<EventId> {
    let raw = read_input(file)?;
    let event = Event::from_json(raw.trim()).context("input is not a Nostr event JSON")?;
    event
        .verify()
        .map_err(|e| anyhow!("event {} does not verify: {e}", event.id))?;
    let client = connect(relay, timeout).await?;
    let sent = tokio::time::timeout(timeout, client.send_event(&event)).await;
    client.shutdown().await;
    let out = match sent {
        Err(_) => bail!("no OK from {relay} within {}s", timeout.as_secs()),
        Ok(Err(e)) => bail!("sending to {relay} failed: {e}"),
        Ok(Ok(out)) => out,
    };
    if let Some((url, why)) = out.failed.iter().next() {
        bail!("{url} rejected event {}: {why}", event.id);
    }
    if out.success.is_empty() {
        bail!("{relay} did not accept event {}", event.id);
    }
    Ok(event.id)
}

async fn fetch(
    relay: &str,
    ids: &[String],
    authors: &[String],
    kinds: &[u16],
    limit: usize,
    timeout: Duration,
) -> Result<Vec<Event>> {
    let mut filter = Filter::new().limit(limit);
    if !ids.is_empty() {
        let ids = ids
            .iter()
            .map(|i| EventId::from_hex(i.trim()).map_err(|e| anyhow!("invalid id {i}: {e}")))
            .collect::<Result<Vec<_>>>()?;
        filter = filter.ids(ids);
    }
    if !authors.is_empty() {
        let a = authors.iter().map(|a| parse_pubkey(a)).collect::<Result<Vec<_>>>()?;
        filter = filter.authors(a);
    }
    if !kinds.is_empty() {
        filter = filter.kinds(kinds.iter().map(|k| Kind::from(*k)));
    }
    let client = connect(relay, timeout).await?;
    let res = client.fetch_events(filter, timeout).await;
    client.shutdown().await;
    let events = res.with_context(|| format!("query to {relay} failed"))?;
    Ok(events.into_iter().collect())
}

async fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Keygen => {
            let keys = Keys::generate();
            let out = serde_json::json!({
                "secret_hex": keys.secret_key().to_secret_hex(),
                "pubkey_hex": keys.public_key().to_hex(),
                "npub": keys.public_key().to_bech32().map_err(|e| anyhow!("bech32: {e}"))?,
            });
            println!("{out}");
        }
        Cmd::VideoEvent(a) => println!("{}", video_event(&a)?.as_json()),
        Cmd::DeleteEvent {
            secret,
            event_ids,
            addresses,
            reason,
        } => println!(
            "{}",
            delete_event(&secret, &event_ids, &addresses, reason.as_deref())?.as_json()
        ),
        Cmd::ProfileEvent {
            secret,
            name,
            about,
            picture,
        } => println!(
            "{}",
            profile_event(&secret, name.as_deref(), about.as_deref(), picture.as_deref())?.as_json()
        ),
        Cmd::Publish { relay, timeout, file } => {
            let id = publish(&relay, &file, Duration::from_secs(timeout)).await?;
            println!("{}", id.to_hex());
        }
        Cmd::Fetch {
            relay,
            ids,
            authors,
            kinds,
            limit,
            timeout,
        } => {
            let events = fetch(&relay, &ids, &authors, &kinds, limit, Duration::from_secs(timeout)).await?;
            if events.is_empty() {
                bail!("no events matched on {relay}");
            }
            for e in events {
                println!("{}", e.as_json());
            }
        }
        Cmd::Nip98 {
            secret,
            url,
            method,
            body_file,
        } => {
            let body = match &body_file {
                Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
                None => None,
            };
            println!("{}", nip98_header(&secret, &url, &method, body.as_deref())?);
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nostr-tool: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "6b911fd37cdf5c81d4c0adb1ab7fa822ed253ab0ad9aa18d77257c88b29b718e";

    fn args(kind: u16, d: Option<&str>) -> VideoArgs {
        VideoArgs {
            secret: SECRET.into(),
            url: "http://127.0.0.1:8088/tiny.mp4".into(),
            sha256: Some("AB".repeat(32)),
            file: None,
            mime: "video/mp4".into(),
            dim: "64x64".into(),
            duration: Some(1.0),
            title: Some("Hello".into()),
            content: "desc".into(),
            hashtags: vec!["#divine".into()],
            kind,
            d: d.map(Into::into),
            created_at: Some(1_700_000_000),
        }
    }

    fn tag_values(ev: &Event, name: &str) -> Vec<Vec<String>> {
        ev.tags
            .iter()
            .map(|t| t.as_slice().to_vec())
            .filter(|t| t.first().map(String::as_str) == Some(name))
            .collect()
    }

    #[test]
    fn video_event_carries_nip71_imeta() {
        let ev = video_event(&args(22, None)).unwrap();
        ev.verify().unwrap();
        assert_eq!(ev.kind.as_u16(), 22);
        assert_eq!(ev.created_at.as_secs(), 1_700_000_000);
        assert_eq!(ev.content, "desc");
        let imeta = &tag_values(&ev, "imeta")[0];
        assert_eq!(imeta[1], "url http://127.0.0.1:8088/tiny.mp4");
        assert!(imeta.contains(&"m video/mp4".to_string()));
        assert!(imeta.contains(&format!("x {}", "ab".repeat(32))));
        assert!(imeta.contains(&"dim 64x64".to_string()));
        assert_eq!(tag_values(&ev, "title")[0][1], "Hello");
        assert_eq!(tag_values(&ev, "t")[0][1], "divine");
        assert!(tag_values(&ev, "d").is_empty());
    }

    #[test]
    fn video_event_file_fills_hash_and_size_and_rejects_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.mp4");
        std::fs::write(&p, b"not really a video").unwrap();
        let mut a = args(22, None);
        a.sha256 = None;
        a.file = Some(p.clone());
        let ev = video_event(&a).unwrap();
        let imeta = &tag_values(&ev, "imeta")[0];
        assert!(imeta.contains(&format!("x {}", sha256_hex(b"not really a video"))));
        assert!(imeta.contains(&"size 18".to_string()));
        a.sha256 = Some("00".repeat(32));
        assert!(video_event(&a).is_err());
    }

    #[test]
    fn addressable_kinds_need_d() {
        assert!(video_event(&args(34236, None)).is_err());
        let ev = video_event(&args(34236, Some("vid-1"))).unwrap();
        assert_eq!(tag_values(&ev, "d")[0][1], "vid-1");
        assert!(video_event(&args(1, None)).is_err());
    }

    #[test]
    fn delete_event_references_ids_and_addresses() {
        let id = "a".repeat(64);
        let keys = parse_keys(SECRET).unwrap();
        let addr = format!("34236:{}:vid-1", keys.public_key().to_hex());
        let ev = delete_event(
            SECRET,
            std::slice::from_ref(&id),
            std::slice::from_ref(&addr),
            Some("oops"),
        )
        .unwrap();
        assert_eq!(ev.kind.as_u16(), 5);
        assert_eq!(ev.content, "oops");
        assert_eq!(tag_values(&ev, "e")[0][1], id);
        assert_eq!(tag_values(&ev, "a")[0][1], addr);
        assert!(delete_event(SECRET, &[], &[], None).is_err());
    }

    #[test]
    fn profile_event_is_kind0_json() {
        let ev = profile_event(SECRET, Some("alice"), Some("hi"), None).unwrap();
        assert_eq!(ev.kind.as_u16(), 0);
        let v: serde_json::Value = serde_json::from_str(&ev.content).unwrap();
        assert_eq!(v["name"], "alice");
        assert_eq!(v["about"], "hi");
    }

    #[test]
    fn nip98_header_decodes_to_signed_27235() {
        let h = nip98_header(SECRET, "http://localhost:3000/api/x", "post", Some(b"{}")).unwrap();
        let b64 = h.strip_prefix("Nostr ").unwrap();
        let json = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        let ev = Event::from_json(json).unwrap();
        ev.verify().unwrap();
        assert_eq!(ev.kind.as_u16(), 27235);
        assert_eq!(tag_values(&ev, "u")[0][1], "http://localhost:3000/api/x");
        assert_eq!(tag_values(&ev, "method")[0][1], "POST");
        assert_eq!(tag_values(&ev, "payload")[0][1], sha256_hex(b"{}"));
        assert!(nip98_header(SECRET, "/relative", "GET", None).is_err());
    }

    #[test]
    fn bad_secret_is_an_error() {
        assert!(parse_keys("zz").is_err());
    }
}
