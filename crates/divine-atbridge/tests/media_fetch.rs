//! Safe media fetch against local axum servers on 127.0.0.1: allow-list (also on redirect hops), loopback switch,
//! size caps (declared and streamed), hash check, timeout, status classification and type checks.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use divine_atbridge::media::{MediaError, MediaFetchConfig, MediaFetcher, MediaKind};
use divine_bridge_db::ErrorCode;
use divine_bridge_db::{Classified, ErrorClass};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn mp4_bytes() -> Vec<u8> {
    let mut v = b"\0\0\0\x18ftypisom\0\0\x02\0isomiso2".to_vec();
    v.extend((0..4000u32).map(|i| (i % 251) as u8));
    v
}

const VTT: &str = "WEBVTT\n\n00:00.000 --> 00:01.000\nhello\n";

#[derive(Clone)]
struct Srv {
    hits: Arc<AtomicUsize>,
    other_port: Arc<AtomicUsize>,
}

async fn video() -> Response {
    ([(header::CONTENT_TYPE, "video/mp4")], mp4_bytes()).into_response()
}

async fn big_declared() -> Response {
    ([(header::CONTENT_TYPE, "video/mp4")], vec![0u8; 5000]).into_response()
}

async fn big_chunked() -> Response {
    let chunks = (0..10).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![0u8; 500])));
    let stream = futures::stream::iter(chunks);
    Response::builder()
        .header(header::CONTENT_TYPE, "video/mp4")
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn slow() -> Response {
    tokio::time::sleep(Duration::from_secs(10)).await;
    video().await
}

async fn redirect_out(State(s): State<Srv>) -> Response {
    let port = s.other_port.load(Ordering::SeqCst);
    (
        StatusCode::FOUND,
        [(header::LOCATION, format!("http://127.0.0.1:{port}/video.mp4"))],
    )
        .into_response()
}

async fn redirect_in() -> Response {
    (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, "/video.mp4")]).into_response()
}

async fn redirect_loop() -> Response {
    (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, "/loop")]).into_response()
}

async fn status(code: u16) -> Response {
    let mut h = HeaderMap::new();
    h.insert(header::RETRY_AFTER, "7".parse().unwrap());
    (StatusCode::from_u16(code).unwrap(), h, "nope").into_response()
}

async fn spawn() -> (u16, Srv) {
    let srv = Srv {
        hits: Arc::new(AtomicUsize::new(0)),
        other_port: Arc::new(AtomicUsize::new(0)),
    };
    let counter = srv.hits.clone();
    let app = Router::new()
        .route("/video.mp4", get(video))
        .route(
            "/captions.vtt",
            get(|| async { ([(header::CONTENT_TYPE, "text/vtt")], VTT) }),
        )
        .route("/big-declared", get(big_declared))
        .route("/big-chunked", get(big_chunked))
        .route("/slow", get(slow))
        .route("/redirect-out", get(redirect_out))
        .route("/redirect-in", get(redirect_in))
        .route("/loop", get(redirect_loop))
        .route(
            "/fake.mp4",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "video/mp4")],
                    "<html><body>not a video</body></html>",
                )
            }),
        )
        .route(
            "/fake.png",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "image/png")],
                    "<html><body>not an image</body></html>",
                )
            }),
        )
        .route("/404", get(|| status(404)))
        .route("/503", get(|| status(503)))
        .route("/429", get(|| status(429)))
        .layer(axum::middleware::from_fn(move |req, next: axum::middleware::Next| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                next.run(req).await
            }
        }))
        .with_state(srv.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, srv)
}

fn fetcher(allowed: &[&str], allow_loopback: bool) -> MediaFetcher {
    let _ = rustls::crypto::ring::default_provider().install_default();
    MediaFetcher::new(MediaFetchConfig {
        allowed_hosts: allowed.iter().map(|s| s.to_string()).collect(),
        allow_loopback,
        max_bytes: 4500,
        // Generous for a loaded 2-core CI machine; the slow endpoint (10 s) is still well past it.
        timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(1),
        max_redirects: 3,
        // Most tests fetch without an `x`; `video_hash_required_by_default` covers the production setting.
        require_video_hash: false,
    })
}

fn expect_err(
    r: Result<divine_atbridge::media::FetchedMedia, MediaError>,
    code: &str,
    class: ErrorClass,
) -> MediaError {
    let e = r.expect_err("fetch must fail");
    assert_eq!(e.code().as_str(), code, "{e}");
    assert_eq!(e.class(), class, "{e}");
    e
}

#[tokio::test]
async fn allowed_host_with_loopback_fetches_and_hashes() {
    let (port, srv) = spawn().await;
    let f = fetcher(&["localhost"], true);
    let want = hex::encode(Sha256::digest(mp4_bytes()));
    // The event's x may be upper-case.
    let got = f
        .fetch(
            &format!("http://localhost:{port}/video.mp4"),
            Some(&want.to_uppercase()),
            MediaKind::Video,
        )
        .await
        .unwrap();
    assert_eq!(got.sha256, want);
    assert_eq!(got.bytes, mp4_bytes());
    assert_eq!(got.mime, "video/mp4");
    assert_eq!(got.declared_mime.as_deref(), Some("video/mp4"));
    assert_eq!(srv.hits.load(Ordering::SeqCst), 1);

    // IP-literal hosts work when listed exactly.
    let f = fetcher(&["127.0.0.1"], true);
    let got = f
        .fetch(&format!("http://127.0.0.1:{port}/video.mp4"), None, MediaKind::Video)
        .await
        .unwrap();
    assert_eq!(got.sha256, want);

    // A relative redirect on an allowed host is followed.
    let f = fetcher(&["localhost"], true);
    let got = f
        .fetch(
            &format!("http://localhost:{port}/redirect-in"),
            Some(&want),
            MediaKind::Video,
        )
        .await
        .unwrap();
    assert_eq!(got.final_url, format!("http://localhost:{port}/video.mp4"));
}

#[tokio::test]
async fn loopback_refused_without_the_switch() {
    let (port, srv) = spawn().await;
    let f = fetcher(&["localhost", "127.0.0.1"], false);
    // Without the switch plain http (and a port other than 443/80) is refused before DNS...
    for url in [
        format!("http://localhost:{port}/video.mp4"),
        format!("http://127.0.0.1:{port}/video.mp4"),
    ] {
        expect_err(
            f.fetch(&url, None, MediaKind::Video).await,
            "media_insecure_url",
            ErrorClass::Permanent,
        );
    }
    // ...and an https URL on 443 that resolves to loopback is refused for its address.
    for url in ["https://localhost/video.mp4", "https://127.0.0.1/video.mp4"] {
        let e = expect_err(
            f.fetch(url, None, MediaKind::Video).await,
            "media_address_forbidden",
            ErrorClass::Permanent,
        );
        assert!(matches!(e, MediaError::AddressForbidden { .. }));
    }
    assert_eq!(srv.hits.load(Ordering::SeqCst), 0, "refused before connecting");
}

#[tokio::test]
async fn host_not_on_allow_list_refused_before_any_connection() {
    let (port, srv) = spawn().await;
    let f = fetcher(&["media.divine.video", "*.divine.video"], true);
    expect_err(
        f.fetch(&format!("http://127.0.0.1:{port}/video.mp4"), None, MediaKind::Video)
            .await,
        "media_host_not_allowed",
        ErrorClass::Permanent,
    );
    expect_err(
        f.fetch(&format!("http://localhost:{port}/video.mp4"), None, MediaKind::Video)
            .await,
        "media_host_not_allowed",
        ErrorClass::Permanent,
    );
    assert_eq!(srv.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn redirect_to_non_allowed_host_refused() {
    let (port_a, srv_a) = spawn().await;
    let (port_b, srv_b) = spawn().await;
    srv_a.other_port.store(port_b as usize, Ordering::SeqCst);
    // Only "localhost" is allowed; the redirect points at 127.0.0.1 (same machine, different host name).
    let f = fetcher(&["localhost"], true);
    expect_err(
        f.fetch(
            &format!("http://localhost:{port_a}/redirect-out"),
            None,
            MediaKind::Video,
        )
        .await,
        "media_host_not_allowed",
        ErrorClass::Permanent,
    );
    assert_eq!(srv_a.hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        srv_b.hits.load(Ordering::SeqCst),
        0,
        "the redirect target is never contacted"
    );
}

#[tokio::test]
async fn redirect_loop_stops_at_the_limit() {
    let (port, srv) = spawn().await;
    let f = fetcher(&["localhost"], true);
    expect_err(
        f.fetch(&format!("http://localhost:{port}/loop"), None, MediaKind::Any)
            .await,
        "media_too_many_redirects",
        ErrorClass::Permanent,
    );
    assert_eq!(srv.hits.load(Ordering::SeqCst), 4, "first request + 3 redirects");
}

#[tokio::test]
async fn oversize_refused_by_content_length_and_by_stream() {
    let (port, _srv) = spawn().await;
    let f = fetcher(&["localhost"], true);
    let e = expect_err(
        f.fetch(&format!("http://localhost:{port}/big-declared"), None, MediaKind::Video)
            .await,
        "media_too_large",
        ErrorClass::Permanent,
    );
    assert_eq!(e, MediaError::TooLarge { limit: 4500 });

    // Chunked body without Content-Length: the server really sends no length.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let raw = plain
        .get(format!("http://127.0.0.1:{port}/big-chunked"))
        .send()
        .await
        .unwrap();
    assert!(raw.content_length().is_none());
    assert_eq!(
        raw.headers()
            .get(header::TRANSFER_ENCODING)
            .and_then(|v| v.to_str().ok()),
        Some("chunked")
    );
    expect_err(
        f.fetch(&format!("http://localhost:{port}/big-chunked"), None, MediaKind::Video)
            .await,
        "media_too_large",
        ErrorClass::Permanent,
    );
    // Per-kind caps are min(lexicon cap, max_bytes): with max_bytes = 100 even an avatar fetch refuses 4 KB.
    let mut cfg = f.config().clone();
    cfg.max_bytes = 100;
    let small = MediaFetcher::new(cfg);
    expect_err(
        small
            .fetch(&format!("http://localhost:{port}/video.mp4"), None, MediaKind::Avatar)
            .await,
        "media_too_large",
        ErrorClass::Permanent,
    );
}

#[tokio::test]
async fn hash_mismatch_is_permanent() {
    let (port, _srv) = spawn().await;
    let f = fetcher(&["localhost"], true);
    let e = expect_err(
        f.fetch(
            &format!("http://localhost:{port}/video.mp4"),
            Some(&"0".repeat(64)),
            MediaKind::Video,
        )
        .await,
        "hash_mismatch",
        ErrorClass::Permanent,
    );
    match e {
        MediaError::HashMismatch { expected, actual } => {
            assert_eq!(expected, "0".repeat(64));
            assert_eq!(actual, hex::encode(Sha256::digest(mp4_bytes())));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn slow_server_times_out() {
    let (port, _srv) = spawn().await;
    let f = fetcher(&["localhost"], true);
    let start = Instant::now();
    expect_err(
        f.fetch(&format!("http://localhost:{port}/slow"), None, MediaKind::Video)
            .await,
        "media_timeout",
        ErrorClass::Transient,
    );
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "gave up at the deadline ({:?})",
        start.elapsed()
    );
}

#[tokio::test]
async fn http_status_classification() {
    let (port, _srv) = spawn().await;
    let f = fetcher(&["localhost"], true);
    expect_err(
        f.fetch(&format!("http://localhost:{port}/404"), None, MediaKind::Video)
            .await,
        "media_http_status",
        ErrorClass::Permanent,
    );
    let e = expect_err(
        f.fetch(&format!("http://localhost:{port}/503"), None, MediaKind::Video)
            .await,
        "media_http_status",
        ErrorClass::Transient,
    );
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    expect_err(
        f.fetch(&format!("http://localhost:{port}/429"), None, MediaKind::Video)
            .await,
        "media_http_status",
        ErrorClass::Transient,
    );
}

#[tokio::test]
async fn connection_refused_is_transient() {
    // Bind then drop to get a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let f = fetcher(&["localhost"], true);
    expect_err(
        f.fetch(&format!("http://localhost:{port}/x"), None, MediaKind::Any)
            .await,
        "media_transport",
        ErrorClass::Transient,
    );
}

#[tokio::test]
async fn sniffed_type_must_suit_the_kind() {
    let (port, _srv) = spawn().await;
    let f = fetcher(&["localhost"], true);
    let e = expect_err(
        f.fetch(&format!("http://localhost:{port}/video.mp4"), None, MediaKind::Avatar)
            .await,
        "media_unsupported_type",
        ErrorClass::Permanent,
    );
    assert!(matches!(e, MediaError::UnsupportedType { ref found, .. } if found == "video/mp4"));
    expect_err(
        f.fetch(&format!("http://localhost:{port}/captions.vtt"), None, MediaKind::Video)
            .await,
        "media_unsupported_type",
        ErrorClass::Permanent,
    );
    let c = f
        .fetch(
            &format!("http://localhost:{port}/captions.vtt"),
            None,
            MediaKind::Caption,
        )
        .await
        .unwrap();
    assert_eq!(c.mime, "text/vtt");
    assert_eq!(c.bytes, VTT.as_bytes());
}

#[tokio::test]
async fn fetch_any_falls_back_and_prefers_transient_errors() {
    let (port, srv) = spawn().await;
    let f = fetcher(&["localhost"], true);
    let want = hex::encode(Sha256::digest(mp4_bytes()));
    let urls = vec![
        format!("http://media.not-allowed.example:{port}/video.mp4"),
        format!("http://localhost:{port}/404"),
        format!("http://localhost:{port}/video.mp4"),
    ];
    let got = f.fetch_any(&urls, Some(&want), MediaKind::Video).await.unwrap();
    assert_eq!(got.sha256, want);
    assert_eq!(
        srv.hits.load(Ordering::SeqCst),
        2,
        "404 then the video; the disallowed host is never contacted"
    );

    // All fail: a transient failure wins so the job retries.
    let urls = vec![
        format!("http://localhost:{port}/404"),
        format!("http://localhost:{port}/503"),
    ];
    let e = f.fetch_any(&urls, None, MediaKind::Video).await.unwrap_err();
    assert_eq!(
        (e.code(), e.class()),
        (ErrorCode::MediaHttpStatus, ErrorClass::Transient)
    );
    // Only permanent failures: the primary URL's error.
    let urls = vec![
        format!("http://evil.example:{port}/x"),
        format!("http://localhost:{port}/404"),
    ];
    let e = f.fetch_any(&urls, None, MediaKind::Video).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::MediaHostNotAllowed);
    assert_eq!(
        f.fetch_any(&[], None, MediaKind::Video).await.unwrap_err().code(),
        ErrorCode::MediaBadUrl
    );
}

/// A video fetch streams into the spool (hashed while written) and leaves no file behind on any failure: hash
/// mismatch, a body over the cap, a wrong type, a deadline hit mid-body (the future is dropped) and a failed URL
/// before a working fallback.
#[tokio::test]
async fn spooled_fetch_hashes_on_disk_and_leaves_no_file_on_any_failure() {
    use divine_atbridge::spool::{MediaBudget, Spool};
    let (port, _srv) = spawn().await;
    let f = fetcher(&["localhost"], true);
    let root = tempfile::tempdir().unwrap();
    let spool = Spool::open(root.path(), MediaBudget::new(1 << 20)).unwrap();
    let url = |p: &str| format!("http://localhost:{port}{p}");

    let ok = f
        .fetch_to_spool(&url("/video.mp4"), None, MediaKind::Video, &spool)
        .await
        .unwrap();
    assert_eq!(ok.mime, "video/mp4");
    assert_eq!(ok.sha256, hex::encode(Sha256::digest(mp4_bytes())));
    assert_eq!(ok.file.size(), mp4_bytes().len() as u64);
    assert_eq!(std::fs::read(ok.file.path()).unwrap(), mp4_bytes());
    assert!(ok.file.path().starts_with(spool.dir()));
    assert_eq!(spool.file_count(), 1);
    drop(ok);
    assert_eq!(spool.file_count(), 0, "dropping the result removes the file");

    let cases = [
        ("/video.mp4", Some("0".repeat(64)), MediaKind::Video, "hash_mismatch"),
        ("/big-chunked", None, MediaKind::Video, "media_too_large"),
        ("/captions.vtt", None, MediaKind::Video, "media_unsupported_type"),
        ("/slow", None, MediaKind::Video, "media_timeout"),
        ("/404", None, MediaKind::Video, "media_http_status"),
    ];
    for (path, sha, kind, code) in cases {
        let e = f
            .fetch_to_spool(&url(path), sha.as_deref(), kind, &spool)
            .await
            .expect_err(path);
        assert_eq!(e.code().as_str(), code, "{path}: {e}");
        assert_eq!(spool.file_count(), 0, "{path} left a spool file");
    }

    let urls = vec![url("/404"), url("/big-chunked"), url("/video.mp4")];
    let got = f
        .fetch_any_to_spool(&urls, None, MediaKind::Video, &spool)
        .await
        .unwrap();
    assert!(got.final_url.ends_with("/video.mp4"));
    assert_eq!(spool.file_count(), 1, "only the successful fallback's file remains");
}

/// Issue 12 §3 rule 1: outside `MEDIA_ALLOW_LOOPBACK` mode only https on 443/80, on the first URL and on every
/// redirect hop; nothing is connected to.
#[tokio::test]
async fn https_on_443_or_80_only_outside_loopback_mode() {
    let (port, srv) = spawn().await;
    let f = fetcher(&["media.divine.video"], false);
    for (url, code) in [
        ("http://media.divine.video/v.mp4", "media_insecure_url"),
        ("https://media.divine.video:8443/v.mp4", "media_port_not_allowed"),
        ("https://media.divine.video:22/v.mp4", "media_port_not_allowed"),
    ] {
        expect_err(f.fetch(url, None, MediaKind::Any).await, code, ErrorClass::Permanent);
    }
    // Loopback mode (local stack): plain http on any port is fine.
    let local = fetcher(&["localhost"], true);
    local
        .fetch(&format!("http://localhost:{port}/video.mp4"), None, MediaKind::Video)
        .await
        .unwrap();
    assert_eq!(srv.hits.load(Ordering::SeqCst), 1);
}

/// Issue 12 §3 rule 3: with the production setting a video without `x` is refused before any connection.
#[tokio::test]
async fn video_hash_required_by_default() {
    let (port, srv) = spawn().await;
    assert!(MediaFetchConfig::default().require_video_hash);
    let f = MediaFetcher::new(MediaFetchConfig {
        timeout: Duration::from_secs(3),
        ..MediaFetchConfig::new(vec!["localhost".into()], true)
    });
    let url = format!("http://localhost:{port}/video.mp4");
    expect_err(
        f.fetch(&url, None, MediaKind::Video).await,
        "media_hash_missing",
        ErrorClass::Permanent,
    );
    assert_eq!(srv.hits.load(Ordering::SeqCst), 0);
    let want = hex::encode(Sha256::digest(mp4_bytes()));
    f.fetch(&url, Some(&want), MediaKind::Video).await.unwrap();
    // Captions and images carry no hash in NIP-71: not required.
    f.fetch(
        &format!("http://localhost:{port}/captions.vtt"),
        None,
        MediaKind::Caption,
    )
    .await
    .unwrap();
}

/// Issue 12 §3 rule 4: the declared type is not trusted; HTML served as video/mp4 or image/png is refused.
#[tokio::test]
async fn declared_type_is_not_trusted_without_matching_magic_bytes() {
    let (port, _srv) = spawn().await;
    let f = fetcher(&["localhost"], true);
    for (path, kind) in [("fake.mp4", MediaKind::Video), ("fake.png", MediaKind::Avatar)] {
        let e = expect_err(
            f.fetch(&format!("http://localhost:{port}/{path}"), None, kind).await,
            "media_unsupported_type",
            ErrorClass::Permanent,
        );
        assert!(e.to_string().contains("unrecognised"), "{e}");
    }
}

/// Issue 12 §3 rule 2: a primary URL plus at most 3 fallbacks, all under ONE deadline.
#[tokio::test]
async fn fallbacks_are_capped_and_share_one_deadline() {
    let (port, srv) = spawn().await;
    let f = fetcher(&["localhost"], true);
    let mut urls: Vec<String> = (0..5).map(|_| format!("http://localhost:{port}/404")).collect();
    urls.push(format!("http://localhost:{port}/video.mp4"));
    let e = f.fetch_any(&urls, None, MediaKind::Video).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::MediaHttpStatus);
    assert_eq!(
        srv.hits.load(Ordering::SeqCst),
        4,
        "primary + 3 fallbacks, the rest ignored"
    );

    // Four slow URLs (10 s each) against a 3 s deadline: one deadline for the walk, not 3 s per URL.
    let urls: Vec<String> = (0..4).map(|_| format!("http://localhost:{port}/slow")).collect();
    let started = Instant::now();
    let e = f.fetch_any(&urls, None, MediaKind::Video).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::MediaTimeout);
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
}

/// Fetches from one place reuse one pinned client and its kept-alive connection (issue 11 §5: no client build, TCP
/// connect or TLS handshake per video), while a host pinned to other addresses gets a client of its own.
#[tokio::test]
async fn fetches_from_one_place_reuse_the_pinned_client_and_its_connection() {
    use axum::extract::ConnectInfo;
    use std::net::SocketAddr;
    let peers: Arc<std::sync::Mutex<Vec<SocketAddr>>> = Arc::default();
    let seen = peers.clone();
    let app = Router::new().route(
        "/video.mp4",
        get(move |ConnectInfo(peer): ConnectInfo<SocketAddr>| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(peer);
                video().await
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .await
            .unwrap()
    });
    let f = fetcher(&["127.0.0.1", "localhost"], true);
    for _ in 0..3 {
        f.fetch(&format!("http://127.0.0.1:{port}/video.mp4"), None, MediaKind::Video)
            .await
            .unwrap();
    }
    let ports: std::collections::HashSet<u16> = peers.lock().unwrap().iter().map(|p| p.port()).collect();
    assert_eq!(peers.lock().unwrap().len(), 3);
    assert_eq!(
        ports.len(),
        1,
        "three fetches, one connection: {:?}",
        peers.lock().unwrap()
    );
    assert_eq!(f.cached_clients(), 1);
    // A domain is pinned to its vetted addresses: a client of its own (kept for the next fetch from there).
    for _ in 0..2 {
        f.fetch(&format!("http://localhost:{port}/video.mp4"), None, MediaKind::Video)
            .await
            .unwrap();
    }
    assert_eq!(f.cached_clients(), 2);
    // Clones share the cache.
    let g = f.clone();
    g.fetch(&format!("http://127.0.0.1:{port}/video.mp4"), None, MediaKind::Video)
        .await
        .unwrap();
    assert_eq!(g.cached_clients(), 2);
}
