//! Safe fetch of user-supplied media URLs (videos, captions, avatars) named in Nostr events.
//!
//! Owns the SSRF defences: http/https only, a host allow-list checked on every redirect hop (redirects are followed
//! here, never by reqwest), DNS resolved here and refused if ANY address is non-public (loopback is allowed only
//! with `allow_loopback`, for the local stack), and the connection pinned to the vetted addresses so DNS rebinding
//! cannot swap them; plus size caps (declared and streamed), SHA-256 verification, an overall deadline and content
//! sniffing. Errors are [`Classified`] where they are born. It must not upload, translate or retry.
//!
//! Transport and content rules (issue 12 §3), on the first URL and every redirect hop:
//! 1. `https` on port 443 or 80 only. Plain `http` and other ports only in `allow_loopback` mode (the local stack,
//!    `MEDIA_ALLOW_LOOPBACK`), where media servers listen on 127.0.0.1:<any port>.
//! 2. A primary URL and at most [`MAX_FALLBACK_URLS`] fallbacks are tried, all under ONE deadline
//!    ([`MediaFetchConfig::timeout`]); further fallbacks are ignored, so a hostile event cannot make a job walk a
//!    long list of slow URLs.
//! 3. A video must name its SHA-256 (the NIP-71 `x`) unless `require_video_hash` is off
//!    (`MEDIA_REQUIRE_VIDEO_HASH=false`): without it the bytes fetched are whatever the server chose to send.
//! 4. The type is SNIFFED from the body's magic bytes and must suit the kind; the declared `Content-Type` is never
//!    trusted for a video, caption or image (a "video/mp4" that is HTML is refused).
//!
//! Which addresses are public is decided in [`ip`] alone.
//!
//! HTTP clients are kept per pinning (host + the exact set of vetted addresses; one plain client for IP-literal
//! hosts), so a fetch reuses the TLS setup and the kept-alive connections of earlier fetches from the same place
//! instead of building a client (and a TLS handshake) per video (issue 11 §5). A client only ever connects where
//! it was pinned, so reusing it is the same as building it again; the address set is re-resolved and re-vetted on
//! every hop, and an answer with other addresses gets (or builds) the client pinned to those.

use crate::spool::{Spool, SpoolFile};
use divine_bridge_core::{Classified, ErrorClass, ErrorCode};
use sha2::{Digest, Sha256};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use url::{Host, Url};

/// Fetch policy.
#[derive(Debug, Clone)]
pub struct MediaFetchConfig {
    /// Hosts media may come from: an exact host (`cdn.divine.video`, `127.0.0.1`) or `*.suffix` (any subdomain of
    /// `suffix`, not `suffix` itself). Empty = nothing allowed.
    pub allowed_hosts: Vec<String>,
    /// Also allow loopback addresses (env `MEDIA_ALLOW_LOOPBACK`; local stack only). Private, link-local and other
    /// non-public ranges stay refused.
    pub allow_loopback: bool,
    /// Largest body accepted for [`MediaKind::Video`] / [`MediaKind::Any`] (other kinds have lexicon caps).
    pub max_bytes: u64,
    /// Deadline for the whole fetch: DNS, every redirect hop and the body.
    pub timeout: Duration,
    /// TCP/TLS connect deadline per hop.
    pub connect_timeout: Duration,
    /// Redirects followed before giving up.
    pub max_redirects: usize,
    /// Refuse a [`MediaKind::Video`] fetch without an expected SHA-256 (rule 3; env `MEDIA_REQUIRE_VIDEO_HASH`).
    pub require_video_hash: bool,
}

/// Rule 2: fallback URLs tried after the primary one.
pub const MAX_FALLBACK_URLS: usize = 3;

impl Default for MediaFetchConfig {
    fn default() -> Self {
        MediaFetchConfig {
            allowed_hosts: Vec::new(),
            allow_loopback: false,
            max_bytes: 100_000_000,
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            max_redirects: 3,
            require_video_hash: true,
        }
    }
}

impl MediaFetchConfig {
    /// Defaults with the given allow-list and loopback switch.
    pub fn new(allowed_hosts: Vec<String>, allow_loopback: bool) -> MediaFetchConfig {
        MediaFetchConfig {
            allowed_hosts,
            allow_loopback,
            ..MediaFetchConfig::default()
        }
    }
}

/// Records one fetch (one URL) in `bridge_media_fetch_duration_seconds{kind,outcome}` (`ok` or the error's code)
/// and, when it succeeded, its size in `bridge_media_fetch_bytes{kind}`.
fn observe_fetch(kind: MediaKind, started: std::time::Instant, result: Result<u64, &MediaError>) {
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code().as_str(),
    };
    metrics::histogram!(crate::metrics::MEDIA_FETCH_DURATION, "kind" => kind.label(), "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
    if let Ok(bytes) = result {
        metrics::histogram!(crate::metrics::MEDIA_FETCH_BYTES, "kind" => kind.label()).record(bytes as f64);
    }
}

/// What is being fetched; decides the accepted (sniffed) type and the size cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// `video/mp4` only, ≤ `max_bytes`.
    Video,
    /// `text/vtt`, ≤ 20,000 bytes (`app.bsky.embed.video#caption`).
    Caption,
    /// `image/png` or `image/jpeg`, ≤ 1,000,000 bytes (`app.bsky.actor.profile#avatar`).
    Avatar,
    /// Any type, ≤ `max_bytes`.
    Any,
}

impl MediaKind {
    /// Every kind, for the metric label set.
    pub const ALL: [MediaKind; 4] = [MediaKind::Video, MediaKind::Caption, MediaKind::Avatar, MediaKind::Any];

    /// The `kind` label of the media fetch metrics.
    pub fn label(self) -> &'static str {
        match self {
            MediaKind::Video => "video",
            MediaKind::Caption => "caption",
            MediaKind::Avatar => "avatar",
            MediaKind::Any => "any",
        }
    }

    fn cap(self, config: &MediaFetchConfig) -> u64 {
        match self {
            MediaKind::Video | MediaKind::Any => config.max_bytes,
            MediaKind::Caption => crate::translate::MAX_CAPTION_BYTES.min(config.max_bytes),
            MediaKind::Avatar => crate::translate::MAX_AVATAR_BYTES.min(config.max_bytes),
        }
    }

    fn accepts(self, mime: &str) -> bool {
        match self {
            MediaKind::Video => mime == "video/mp4",
            MediaKind::Caption => mime == "text/vtt",
            MediaKind::Avatar => matches!(mime, "image/png" | "image/jpeg"),
            MediaKind::Any => true,
        }
    }

    fn expected(self) -> &'static str {
        match self {
            MediaKind::Video => "video/mp4",
            MediaKind::Caption => "text/vtt",
            MediaKind::Avatar => "image/png|image/jpeg",
            MediaKind::Any => "*/*",
        }
    }
}

/// Fetch failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("media URL is unusable: {0}")]
    BadUrl(String),
    #[error("media host {host:?} is not on the allow-list")]
    HostNotAllowed { host: String },
    #[error("media host {host:?} resolves to forbidden address {addr}")]
    AddressForbidden { host: String, addr: IpAddr },
    #[error("media exceeds {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("media SHA-256 {actual} does not match the event's x {expected}")]
    HashMismatch { expected: String, actual: String },
    #[error("media server answered HTTP {status}")]
    HttpStatus { status: u16, retry_after: Option<Duration> },
    #[error("media fetch timed out")]
    Timeout,
    #[error("media transport error: {0}")]
    Transport(String),
    #[error("more than {max} redirects")]
    TooManyRedirects { max: usize },
    #[error("media is {found}, expected {expected}")]
    UnsupportedType { expected: &'static str, found: String },
    /// Rule 1: plain http outside `allow_loopback` mode.
    #[error("media URL {url:?} is not https (plain http only with MEDIA_ALLOW_LOOPBACK)")]
    InsecureUrl { url: String },
    /// Rule 1: a port other than 443/80 outside `allow_loopback` mode.
    #[error("media URL port {port} is not 443 or 80")]
    PortNotAllowed { port: u16 },
    /// Rule 3: a video without its expected SHA-256.
    #[error("video has no SHA-256 (x) to verify against (MEDIA_REQUIRE_VIDEO_HASH)")]
    HashMissing,
    /// The spool file could not be written (disk full, directory removed).
    #[error("media spool: {0}")]
    Spool(String),
}

impl MediaError {
    /// Every code a [`MediaError`] can carry while [`ErrorClass::Permanent`] (a closed set: metric labels such as
    /// `bridge_profile_images_skipped_total{code}` are created at zero from it; the unit test
    /// `permanent_codes_are_exactly_those_of_permanent_errors` keeps it in step with `code`/`class`).
    pub const PERMANENT_CODES: &'static [ErrorCode] = &[
        ErrorCode::MediaBadUrl,
        ErrorCode::MediaHostNotAllowed,
        ErrorCode::MediaAddressForbidden,
        ErrorCode::MediaTooLarge,
        ErrorCode::HashMismatch,
        ErrorCode::MediaHttpStatus,
        ErrorCode::MediaTooManyRedirects,
        ErrorCode::MediaUnsupportedType,
        ErrorCode::MediaInsecureUrl,
        ErrorCode::MediaPortNotAllowed,
        ErrorCode::MediaHashMissing,
    ];
}

impl Classified for MediaError {
    fn code(&self) -> ErrorCode {
        match self {
            MediaError::BadUrl(_) => ErrorCode::MediaBadUrl,
            MediaError::HostNotAllowed { .. } => ErrorCode::MediaHostNotAllowed,
            MediaError::AddressForbidden { .. } => ErrorCode::MediaAddressForbidden,
            MediaError::TooLarge { .. } => ErrorCode::MediaTooLarge,
            MediaError::HashMismatch { .. } => ErrorCode::HashMismatch,
            MediaError::HttpStatus { .. } => ErrorCode::MediaHttpStatus,
            MediaError::Timeout => ErrorCode::MediaTimeout,
            MediaError::Transport(_) => ErrorCode::MediaTransport,
            MediaError::TooManyRedirects { .. } => ErrorCode::MediaTooManyRedirects,
            MediaError::UnsupportedType { .. } => ErrorCode::MediaUnsupportedType,
            MediaError::InsecureUrl { .. } => ErrorCode::MediaInsecureUrl,
            MediaError::PortNotAllowed { .. } => ErrorCode::MediaPortNotAllowed,
            MediaError::HashMissing => ErrorCode::MediaHashMissing,
            MediaError::Spool(_) => ErrorCode::MediaSpoolIo,
        }
    }

    fn class(&self) -> ErrorClass {
        match self {
            MediaError::Timeout | MediaError::Transport(_) | MediaError::Spool(_) => ErrorClass::Transient,
            MediaError::HttpStatus { status, .. } => match status {
                408 | 429 => ErrorClass::Transient,
                s if *s >= 500 => ErrorClass::Transient,
                _ => ErrorClass::Permanent,
            },
            _ => ErrorClass::Permanent,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            MediaError::HttpStatus { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A fetched, verified body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedMedia {
    pub bytes: Vec<u8>,
    /// Sniffed type (rule 4); for [`MediaKind::Any`] the declared one when unrecognised, else
    /// `application/octet-stream`.
    pub mime: String,
    /// `Content-Type` as sent (lower-case, no parameters).
    pub declared_mime: Option<String>,
    /// Lower-case hex SHA-256 of `bytes`.
    pub sha256: String,
    /// URL of the last hop.
    pub final_url: String,
}

/// A fetched, verified body streamed to the spool ([`MediaFetcher::fetch_any_to_spool`]).
#[derive(Debug, Clone)]
pub struct SpooledMedia {
    /// The body on disk, with its size and SHA-256.
    pub file: SpoolFile,
    /// Sniffed type (rule 4); for [`MediaKind::Any`] the declared one when unrecognised, else
    /// `application/octet-stream`.
    pub mime: String,
    /// `Content-Type` as sent (lower-case, no parameters).
    pub declared_mime: Option<String>,
    /// Lower-case hex SHA-256 of the body.
    pub sha256: String,
    /// URL of the last hop.
    pub final_url: String,
}

pub mod ip;
pub use ip::{classify_ip, ip_allowed, IpClass};

fn normalize_host(h: &str) -> String {
    h.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Whether `host` (as in a URL, lower-case) matches the allow-list (exact, or `*.suffix` for strict subdomains).
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let host = normalize_host(host);
    if host.is_empty() {
        return false;
    }
    allowed.iter().any(|entry| {
        let entry = normalize_host(entry);
        match entry.strip_prefix("*.") {
            Some(suffix) if !suffix.is_empty() => {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix)
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
            _ => !entry.is_empty() && host == entry,
        }
    })
}

/// Recognises the formats the bridge handles from their magic bytes.
pub fn sniff_mime(bytes: &[u8]) -> Option<&'static str> {
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        return Some(match &bytes[8..12] {
            b"qt  " => "video/quicktime",
            b"M4A " | b"M4B " => "audio/mp4",
            b"avif" | b"avis" => "image/avif",
            b"heic" | b"heix" | b"mif1" => "image/heic",
            _ => "video/mp4",
        });
    }
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Some("image/png");
    }
    if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        return Some("image/jpeg");
    }
    if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        return Some("image/gif");
    }
    if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP" {
        return Some("image/webp");
    }
    if bytes.starts_with(&[0x1a, 0x45, 0xdf, 0xa3]) {
        return Some("video/webm");
    }
    let text = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
    if text.starts_with(b"WEBVTT") && text.get(6).is_none_or(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
        return Some("text/vtt");
    }
    None
}

fn map_reqwest(e: reqwest::Error) -> MediaError {
    if e.is_timeout() {
        MediaError::Timeout
    } else {
        MediaError::Transport(e.to_string())
    }
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Clients kept per pinning before the cache is emptied and rebuilt (a CDN rotating its addresses makes new keys).
const MAX_CACHED_CLIENTS: usize = 64;

/// What a client is pinned to: `None` for IP-literal hosts (no DNS, no override), else the domain and its vetted
/// addresses (sorted).
type Pinning = Option<(String, Vec<SocketAddr>)>;

/// Fetches media under a [`MediaFetchConfig`]. Clones share the client cache.
#[derive(Debug, Clone)]
pub struct MediaFetcher {
    config: MediaFetchConfig,
    clients: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<Pinning, reqwest::Client>>>,
}

impl MediaFetcher {
    /// Also installs the rustls ring provider (idempotent).
    pub fn new(config: MediaFetchConfig) -> MediaFetcher {
        let _ = rustls::crypto::ring::default_provider().install_default();
        MediaFetcher {
            config,
            clients: Default::default(),
        }
    }

    /// The client for one hop to `url`, pinned to the vetted `addrs` (built once per pinning, then reused).
    fn client_for(&self, url: &Url, addrs: &[SocketAddr]) -> Result<reqwest::Client, MediaError> {
        let pinning: Pinning = match url.host() {
            Some(Host::Domain(d)) => {
                let mut addrs = addrs.to_vec();
                addrs.sort();
                Some((d.to_string(), addrs))
            }
            _ => None,
        };
        if let Some(client) = self.clients.lock().unwrap().get(&pinning) {
            return Ok(client.clone());
        }
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(self.config.connect_timeout)
            .timeout(self.config.timeout);
        if let Some((d, addrs)) = &pinning {
            // Pin the connection to the addresses vetted above (no second DNS lookup to rebind).
            builder = builder.resolve_to_addrs(d, addrs);
        }
        let client = builder
            .build()
            .map_err(|e| MediaError::Transport(format!("client: {e}")))?;
        let mut clients = self.clients.lock().unwrap();
        if clients.len() >= MAX_CACHED_CLIENTS {
            clients.clear();
        }
        clients.insert(pinning, client.clone());
        Ok(client)
    }

    /// How many pinned clients are kept (diagnostics and tests).
    pub fn cached_clients(&self) -> usize {
        self.clients.lock().unwrap().len()
    }

    pub fn config(&self) -> &MediaFetchConfig {
        &self.config
    }

    /// Fetches `url`, following up to `max_redirects` vetted redirects, within the overall timeout. Verifies
    /// `expected_sha256` (hex, any case) when given and that the sniffed type suits `kind`.
    pub async fn fetch(
        &self,
        url: &str,
        expected_sha256: Option<&str>,
        kind: MediaKind,
    ) -> Result<FetchedMedia, MediaError> {
        self.require_hash(expected_sha256, kind)?;
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(self.config.timeout, self.fetch_inner(url, expected_sha256, kind)).await
        {
            Ok(r) => r,
            Err(_) => Err(MediaError::Timeout),
        };
        observe_fetch(kind, started, result.as_ref().map(|m| m.bytes.len() as u64));
        result
    }

    /// Tries `urls` in order (a primary URL then at most [`MAX_FALLBACK_URLS`] of its NIP-71 fallbacks) under one
    /// overall deadline (rule 2), and returns the first success. When all fail: the first transient error if there
    /// was one (a retry may succeed), else the primary URL's error. An empty list is `media_bad_url`.
    pub async fn fetch_any(
        &self,
        urls: &[String],
        expected_sha256: Option<&str>,
        kind: MediaKind,
    ) -> Result<FetchedMedia, MediaError> {
        self.within_deadline(first_success(urls, |url| self.fetch(url, expected_sha256, kind)))
            .await
    }

    /// Rule 2's single deadline around a whole fallback walk.
    async fn within_deadline<T>(
        &self,
        walk: impl std::future::Future<Output = Result<T, MediaError>>,
    ) -> Result<T, MediaError> {
        match tokio::time::timeout(self.config.timeout, walk).await {
            Ok(r) => r,
            Err(_) => Err(MediaError::Timeout),
        }
    }

    /// Rule 3, checked before any network access.
    fn require_hash(&self, expected_sha256: Option<&str>, kind: MediaKind) -> Result<(), MediaError> {
        if kind == MediaKind::Video && self.config.require_video_hash && expected_sha256.is_none() {
            return Err(MediaError::HashMissing);
        }
        Ok(())
    }

    /// Like [`MediaFetcher::fetch`], but the body is streamed to a file in `spool` while it is hashed, never held
    /// in memory: what a video fetch uses. The file is removed on every failure (and when the result is dropped).
    pub async fn fetch_to_spool(
        &self,
        url: &str,
        expected_sha256: Option<&str>,
        kind: MediaKind,
        spool: &Spool,
    ) -> Result<SpooledMedia, MediaError> {
        self.require_hash(expected_sha256, kind)?;
        let fetch = async {
            let expected = expected_hash(expected_sha256)?;
            let (resp, cap) = self.open(url, kind).await?;
            let declared_mime = declared_mime(&resp);
            let final_url = resp.url().to_string();
            let mut resp = resp;
            let mut writer = spool.create().map_err(|e| MediaError::Spool(e.to_string()))?;
            while let Some(chunk) = resp.chunk().await.map_err(map_reqwest)? {
                if writer.size() + chunk.len() as u64 > cap {
                    return Err(MediaError::TooLarge { limit: cap });
                }
                writer.write(&chunk).map_err(|e| MediaError::Spool(e.to_string()))?;
            }
            let head = writer.head().to_vec();
            let file = writer.finish().map_err(|e| MediaError::Spool(e.to_string()))?;
            let sha256 = hex::encode(file.sha256());
            check_hash(expected, &sha256)?;
            let mime = accept(kind, &head, &declared_mime)?;
            Ok(SpooledMedia {
                file,
                mime,
                declared_mime,
                sha256,
                final_url,
            })
        };
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(self.config.timeout, fetch).await {
            Ok(r) => r,
            Err(_) => Err(MediaError::Timeout),
        };
        observe_fetch(kind, started, result.as_ref().map(|m| m.file.size()));
        result
    }

    /// [`MediaFetcher::fetch_any`] to the spool.
    pub async fn fetch_any_to_spool(
        &self,
        urls: &[String],
        expected_sha256: Option<&str>,
        kind: MediaKind,
        spool: &Spool,
    ) -> Result<SpooledMedia, MediaError> {
        self.within_deadline(first_success(urls, |url| {
            self.fetch_to_spool(url, expected_sha256, kind, spool)
        }))
        .await
    }

    /// Checks a URL's scheme and host against the policy without any network access.
    pub fn check_url(&self, url: &Url) -> Result<(), MediaError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(MediaError::BadUrl(format!(
                "scheme {:?} is not http/https",
                url.scheme()
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(MediaError::BadUrl("credentials in URL".into()));
        }
        if !self.config.allow_loopback {
            if url.scheme() != "https" {
                return Err(MediaError::InsecureUrl { url: url.to_string() });
            }
            match url.port_or_known_default() {
                Some(443 | 80) => {}
                other => {
                    return Err(MediaError::PortNotAllowed {
                        port: other.unwrap_or(0),
                    })
                }
            }
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| MediaError::BadUrl("URL has no host".into()))?;
        if !host_allowed(host, &self.config.allowed_hosts) {
            return Err(MediaError::HostNotAllowed {
                host: normalize_host(host),
            });
        }
        Ok(())
    }

    /// Resolves the URL's host and vets every address.
    async fn vetted_addrs(&self, url: &Url) -> Result<Vec<SocketAddr>, MediaError> {
        let port = url
            .port_or_known_default()
            .ok_or_else(|| MediaError::BadUrl("no port".into()))?;
        let (host, addrs): (String, Vec<SocketAddr>) = match url.host() {
            Some(Host::Ipv4(ip)) => (ip.to_string(), vec![SocketAddr::new(IpAddr::V4(ip), port)]),
            Some(Host::Ipv6(ip)) => (ip.to_string(), vec![SocketAddr::new(IpAddr::V6(ip), port)]),
            Some(Host::Domain(d)) => {
                let found: Vec<SocketAddr> = tokio::net::lookup_host((d, port))
                    .await
                    .map_err(|e| MediaError::Transport(format!("resolving {d}: {e}")))?
                    .collect();
                (d.to_string(), found)
            }
            None => return Err(MediaError::BadUrl("URL has no host".into())),
        };
        if addrs.is_empty() {
            return Err(MediaError::Transport(format!("{host} resolved to no address")));
        }
        if let Some(bad) = addrs.iter().find(|a| !ip_allowed(a.ip(), self.config.allow_loopback)) {
            return Err(MediaError::AddressForbidden { host, addr: bad.ip() });
        }
        Ok(addrs)
    }

    /// Follows vetted redirects to a successful response whose declared length fits the cap; returns it and
    /// the cap. The body is not read.
    async fn open(&self, url: &str, kind: MediaKind) -> Result<(reqwest::Response, u64), MediaError> {
        let cap = kind.cap(&self.config);
        let mut current = Url::parse(url).map_err(|e| MediaError::BadUrl(format!("{url:?}: {e}")))?;
        let mut redirects = 0usize;
        let resp = loop {
            self.check_url(&current)?;
            let addrs = self.vetted_addrs(&current).await?;
            let client = self.client_for(&current, &addrs)?;
            let resp = client
                .get(current.clone())
                .header(reqwest::header::ACCEPT_ENCODING, "identity")
                .send()
                .await
                .map_err(map_reqwest)?;
            let status = resp.status();
            if status.is_redirection() && status != reqwest::StatusCode::NOT_MODIFIED {
                let Some(location) = resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                else {
                    return Err(MediaError::HttpStatus {
                        status: status.as_u16(),
                        retry_after: None,
                    });
                };
                if redirects >= self.config.max_redirects {
                    return Err(MediaError::TooManyRedirects {
                        max: self.config.max_redirects,
                    });
                }
                redirects += 1;
                current = current
                    .join(location)
                    .map_err(|e| MediaError::BadUrl(format!("redirect to {location:?}: {e}")))?;
                continue;
            }
            if !status.is_success() {
                return Err(MediaError::HttpStatus {
                    status: status.as_u16(),
                    retry_after: retry_after(&resp),
                });
            }
            break resp;
        };
        if resp.content_length().is_some_and(|n| n > cap) {
            return Err(MediaError::TooLarge { limit: cap });
        }
        Ok((resp, cap))
    }

    async fn fetch_inner(
        &self,
        url: &str,
        expected_sha256: Option<&str>,
        kind: MediaKind,
    ) -> Result<FetchedMedia, MediaError> {
        let expected = expected_hash(expected_sha256)?;
        let (resp, cap) = self.open(url, kind).await?;
        let declared_mime = declared_mime(&resp);
        let final_url = resp.url().to_string();
        let mut resp = resp;
        let mut bytes: Vec<u8> = Vec::new();
        let mut hasher = Sha256::new();
        while let Some(chunk) = resp.chunk().await.map_err(map_reqwest)? {
            if bytes.len() as u64 + chunk.len() as u64 > cap {
                return Err(MediaError::TooLarge { limit: cap });
            }
            hasher.update(&chunk);
            bytes.extend_from_slice(&chunk);
        }
        let sha256 = hex::encode(hasher.finalize());
        check_hash(expected, &sha256)?;
        let mime = accept(kind, &bytes, &declared_mime)?;
        Ok(FetchedMedia {
            bytes,
            mime,
            declared_mime,
            sha256,
            final_url,
        })
    }
}

/// Tries `urls` in order; see [`MediaFetcher::fetch_any`] for which error is returned when all fail.
async fn first_success<'u, T, F, Fut>(urls: &'u [String], mut fetch: F) -> Result<T, MediaError>
where
    F: FnMut(&'u str) -> Fut,
    Fut: std::future::Future<Output = Result<T, MediaError>>,
{
    let mut errors: Vec<MediaError> = Vec::new();
    for url in urls.iter().take(1 + MAX_FALLBACK_URLS) {
        match fetch(url).await {
            Ok(m) => return Ok(m),
            Err(e) => errors.push(e),
        }
    }
    if let Some(i) = errors.iter().position(|e| e.class() == ErrorClass::Transient) {
        return Err(errors.swap_remove(i));
    }
    Err(errors
        .into_iter()
        .next()
        .unwrap_or_else(|| MediaError::BadUrl("no URL to fetch".into())))
}

/// The event's `x` as lower-case hex; a value that is not a hex SHA-256 can never match.
fn expected_hash(expected_sha256: Option<&str>) -> Result<Option<String>, MediaError> {
    match expected_sha256 {
        Some(x) if x.len() == 64 && x.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(Some(x.to_ascii_lowercase())),
        Some(x) => Err(MediaError::HashMismatch {
            expected: x.to_string(),
            actual: "(expected value is not a hex SHA-256)".into(),
        }),
        None => Ok(None),
    }
}

fn check_hash(expected: Option<String>, actual: &str) -> Result<(), MediaError> {
    match expected {
        Some(expected) if expected != actual => Err(MediaError::HashMismatch {
            expected,
            actual: actual.to_string(),
        }),
        _ => Ok(()),
    }
}

fn declared_mime(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(crate::nostr::normalize_mime)
        .filter(|m| !m.is_empty())
}

/// The body's type from its first bytes, if `kind` accepts it (rule 4). Only [`MediaKind::Any`] falls back to the
/// declared type when the bytes are not recognised.
fn accept(kind: MediaKind, head: &[u8], declared_mime: &Option<String>) -> Result<String, MediaError> {
    let mime = match (sniff_mime(head), kind) {
        (Some(sniffed), _) => sniffed.to_string(),
        (None, MediaKind::Any) => declared_mime
            .clone()
            .unwrap_or_else(|| "application/octet-stream".into()),
        (None, _) => format!(
            "unrecognised bytes (declared {})",
            declared_mime.as_deref().unwrap_or("nothing")
        ),
    };
    if !kind.accepts(&mime) {
        return Err(MediaError::UnsupportedType {
            expected: kind.expected(),
            found: mime,
        });
    }
    Ok(mime)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ip_classification() {
        for s in [
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "fc00::1",
            "fdff:ffff::1",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "::",
            "::ffff:10.0.0.1",
            "::ffff:192.168.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2002:c0a8:0101::1",
            "2001:db8::1",
            "::10.0.0.1",
        ] {
            assert_eq!(classify_ip(ip(s)), IpClass::Forbidden, "{s}");
            assert!(!ip_allowed(ip(s), true), "{s} stays refused with allow_loopback");
        }
        for s in ["127.0.0.1", "127.255.0.9", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(classify_ip(ip(s)), IpClass::Loopback, "{s}");
            assert!(!ip_allowed(ip(s), false), "{s}");
            assert!(ip_allowed(ip(s), true), "{s}");
        }
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "192.169.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(classify_ip(ip(s)), IpClass::Public, "{s}");
        }
    }

    #[test]
    fn allow_list_matching() {
        let list = vec![
            "cdn.divine.video".to_string(),
            "*.blossom.example".to_string(),
            "127.0.0.1".to_string(),
            "[::1]".to_string(),
        ];
        assert!(host_allowed("cdn.divine.video", &list));
        assert!(host_allowed("CDN.Divine.Video.", &list));
        assert!(!host_allowed("evil-cdn.divine.video", &list));
        assert!(!host_allowed("cdn.divine.video.evil.com", &list));
        assert!(host_allowed("a.blossom.example", &list));
        assert!(host_allowed("x.y.blossom.example", &list));
        assert!(
            !host_allowed("blossom.example", &list),
            "wildcard means strict subdomains"
        );
        assert!(!host_allowed("evilblossom.example", &list));
        assert!(host_allowed("127.0.0.1", &list));
        assert!(host_allowed("[::1]", &list));
        assert!(!host_allowed("localhost", &list));
        assert!(!host_allowed("anything", &[]));
        assert!(!host_allowed("x", &["*.".to_string(), "".to_string()]));
    }

    #[test]
    fn sniffing() {
        assert_eq!(sniff_mime(b"\0\0\0\x18ftypisom\0\0\x02\0"), Some("video/mp4"));
        assert_eq!(sniff_mime(b"\0\0\0\x14ftypqt  \0\0\0\0"), Some("video/quicktime"));
        assert_eq!(sniff_mime(b"\x89PNG\r\n\x1a\n...."), Some("image/png"));
        assert_eq!(sniff_mime(&[0xff, 0xd8, 0xff, 0xe0]), Some("image/jpeg"));
        assert_eq!(sniff_mime(b"\xef\xbb\xbfWEBVTT\n\n00:00.000"), Some("text/vtt"));
        assert_eq!(sniff_mime(b"WEBVTT"), Some("text/vtt"));
        assert_eq!(sniff_mime(b"WEBVTTX"), None);
        assert_eq!(sniff_mime(b"<html>"), None);
    }

    #[test]
    fn classes() {
        let s = |status| {
            MediaError::HttpStatus {
                status,
                retry_after: None,
            }
            .class()
        };
        assert_eq!(s(404), ErrorClass::Permanent);
        assert_eq!(s(403), ErrorClass::Permanent);
        assert_eq!(s(408), ErrorClass::Transient);
        assert_eq!(s(429), ErrorClass::Transient);
        assert_eq!(s(500), ErrorClass::Transient);
        assert_eq!(s(503), ErrorClass::Transient);
        assert_eq!(MediaError::Timeout.class(), ErrorClass::Transient);
        assert_eq!(MediaError::Transport("x".into()).class(), ErrorClass::Transient);
        assert_eq!(MediaError::TooLarge { limit: 1 }.class(), ErrorClass::Permanent);
    }

    #[test]
    fn permanent_codes_are_exactly_those_of_permanent_errors() {
        // One value of every variant (and HTTP statuses of both classes); `code` and `class` match exhaustively, so
        // a new variant fails to compile there and must be added here.
        let samples = [
            MediaError::BadUrl("x".into()),
            MediaError::HostNotAllowed { host: "h".into() },
            MediaError::AddressForbidden {
                host: "h".into(),
                addr: IpAddr::from([127, 0, 0, 1]),
            },
            MediaError::TooLarge { limit: 1 },
            MediaError::HashMismatch {
                expected: "a".into(),
                actual: "b".into(),
            },
            MediaError::HttpStatus {
                status: 404,
                retry_after: None,
            },
            MediaError::HttpStatus {
                status: 503,
                retry_after: None,
            },
            MediaError::Timeout,
            MediaError::Transport("t".into()),
            MediaError::TooManyRedirects { max: 5 },
            MediaError::UnsupportedType {
                expected: "video",
                found: "text/html".into(),
            },
            MediaError::InsecureUrl { url: "http://x".into() },
            MediaError::PortNotAllowed { port: 8443 },
            MediaError::HashMissing,
            MediaError::Spool("s".into()),
        ];
        let permanent: std::collections::BTreeSet<ErrorCode> = samples
            .iter()
            .filter(|e| e.class() == ErrorClass::Permanent)
            .map(|e| e.code())
            .collect();
        let listed: std::collections::BTreeSet<ErrorCode> = MediaError::PERMANENT_CODES.iter().copied().collect();
        assert_eq!(listed.len(), MediaError::PERMANENT_CODES.len(), "a code listed twice");
        assert_eq!(permanent, listed);
    }

    #[tokio::test]
    async fn bad_urls_refused_without_network() {
        let f = MediaFetcher::new(MediaFetchConfig::new(vec!["a.example".into()], false));
        for (u, code) in [
            ("ftp://a.example/x", "media_bad_url"),
            ("file:///etc/passwd", "media_bad_url"),
            ("not a url", "media_bad_url"),
            ("https://user:pw@a.example/x", "media_bad_url"),
            ("https://b.example/x", "media_host_not_allowed"),
            ("http://a.example/x", "media_insecure_url"),
            ("https://a.example:8443/x", "media_port_not_allowed"),
        ] {
            let e = f.fetch(u, None, MediaKind::Any).await.unwrap_err();
            assert_eq!(e.code().as_str(), code, "{u}");
            assert_eq!(e.class(), ErrorClass::Permanent);
        }
    }
}
