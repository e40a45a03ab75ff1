//! A small HTTP fault proxy for end-to-end tests: listens on 127.0.0.1, forwards every request to one upstream (the
//! reference PDS) and, per request, may instead answer 500, answer 429 with `Retry-After: 0`, or stall (hold the
//! request for a while or until [`FaultProxy::release_stalls`], then pass it on or drop the connection).
//!
//! Which fault a request gets: first any faults queued with [`FaultProxy::script`] (one per request, in order), else
//! the current [`FaultPolicy`] — `Pass`, one fixed fault for every request, or a random fault with probability `p`
//! drawn from a seeded RNG (so a schedule can be replayed). Everything it does is counted ([`FaultCounts`]).
//!
//! A "drop" forwards the request first and then breaks the response (the body stream errors before any byte of the
//! response is written, so the client sees a failed request): the write may have landed on the PDS while its caller
//! learns nothing — the ambiguous outcome retries must survive. Owns only its listener and counters; it must not
//! interpret XRPC (it never parses bodies) nor touch the database.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// What a stalled request does once its hold ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterStall {
    /// Forward it and return the upstream response.
    Pass,
    /// Forward it, then break the response: the client gets no answer although the upstream may have acted.
    Drop,
}

/// The fate of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward unchanged.
    Pass,
    /// Answer `500` with an XRPC error body, without forwarding.
    ServerError,
    /// Answer `429` with `Retry-After: 0`, without forwarding.
    RateLimited,
    /// Hold for `hold` (or until [`FaultProxy::release_stalls`]), then `then`.
    Stall { hold: Duration, then: AfterStall },
}

/// How requests without a scripted fault are treated.
#[derive(Clone, Copy, Debug)]
pub enum FaultPolicy {
    /// Every request passes.
    Pass,
    /// Every request gets this fault.
    Always(Fault),
    /// With probability `p` a random fault (500, 429, or a stall of up to `max_stall` that passes or drops, evenly
    /// likely), else pass.
    Random { p: f64, max_stall: Duration },
}

/// What the proxy did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Requests received.
    pub requests: u64,
    /// Requests forwarded to the upstream (passes, and stalls after their hold).
    pub forwarded: u64,
    pub server_errors: u64,
    pub rate_limited: u64,
    pub stalled: u64,
    /// Stalled requests whose response was broken after forwarding.
    pub dropped: u64,
    /// Forwarding failed (upstream unreachable): answered 502.
    pub upstream_errors: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    forwarded: AtomicU64,
    server_errors: AtomicU64,
    rate_limited: AtomicU64,
    stalled: AtomicU64,
    dropped: AtomicU64,
    upstream_errors: AtomicU64,
}

struct Inner {
    upstream: String,
    http: reqwest::Client,
    policy: Mutex<FaultPolicy>,
    script: Mutex<VecDeque<Fault>>,
    rng: Mutex<StdRng>,
    counters: Counters,
    /// Bumped by `release_stalls`; stalled requests wait for a change.
    release: watch::Sender<u64>,
}

/// A running fault proxy; stops with the test's runtime.
#[derive(Clone)]
pub struct FaultProxy {
    /// `http://127.0.0.1:<port>`: give this to the client instead of the upstream URL.
    pub url: String,
    inner: Arc<Inner>,
}

/// Request headers not forwarded (hop-by-hop, or recomputed by the client).
const HOP_HEADERS: [&str; 6] = [
    "host",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "upgrade",
];

impl FaultProxy {
    /// Starts a proxy to `upstream` (no trailing slash) whose random faults come from `seed`. Starts in `Pass`.
    pub async fn start(upstream: &str, seed: u64) -> FaultProxy {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let inner = Arc::new(Inner {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("proxy client"),
            policy: Mutex::new(FaultPolicy::Pass),
            script: Mutex::default(),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            counters: Counters::default(),
            release: watch::channel(0).0,
        });
        let app = axum::Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        FaultProxy {
            url: format!("http://{addr}"),
            inner,
        }
    }

    /// Sets the policy for requests without a scripted fault.
    pub fn set_policy(&self, policy: FaultPolicy) {
        *self.inner.policy.lock().unwrap() = policy;
    }

    /// Queues faults for the next requests, one each, before the policy applies again.
    pub fn script(&self, faults: &[Fault]) {
        self.inner.script.lock().unwrap().extend(faults.iter().copied());
    }

    /// Ends the hold of every request stalled now.
    pub fn release_stalls(&self) {
        self.inner.release.send_modify(|g| *g += 1);
    }

    /// Stops all faults: policy `Pass`, script cleared, current stalls released.
    pub fn calm(&self) {
        self.set_policy(FaultPolicy::Pass);
        self.inner.script.lock().unwrap().clear();
        self.release_stalls();
    }

    pub fn counts(&self) -> FaultCounts {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
        FaultCounts {
            requests: get(&c.requests),
            forwarded: get(&c.forwarded),
            server_errors: get(&c.server_errors),
            rate_limited: get(&c.rate_limited),
            stalled: get(&c.stalled),
            dropped: get(&c.dropped),
            upstream_errors: get(&c.upstream_errors),
        }
    }
}

impl Inner {
    fn next_fault(&self) -> Fault {
        if let Some(f) = self.script.lock().unwrap().pop_front() {
            return f;
        }
        let policy = *self.policy.lock().unwrap();
        match policy {
            FaultPolicy::Pass => Fault::Pass,
            FaultPolicy::Always(f) => f,
            FaultPolicy::Random { p, max_stall } => {
                let mut rng = self.rng.lock().unwrap();
                if !rng.gen_bool(p.clamp(0.0, 1.0)) {
                    return Fault::Pass;
                }
                match rng.gen_range(0..4) {
                    0 => Fault::ServerError,
                    1 => Fault::RateLimited,
                    n => Fault::Stall {
                        hold: Duration::from_millis(rng.gen_range(0..=max_stall.as_millis() as u64)),
                        then: if n == 2 { AfterStall::Pass } else { AfterStall::Drop },
                    },
                }
            }
        }
    }

    async fn forward(&self, parts: axum::http::request::Parts, body: Bytes) -> Result<Response, reqwest::Error> {
        let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut req = self
            .http
            .request(parts.method.clone(), format!("{}{path}", self.upstream));
        for (name, value) in &parts.headers {
            if !HOP_HEADERS.contains(&name.as_str()) {
                req = req.header(name, value);
            }
        }
        let resp = req.body(body).send().await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await?;
        self.counters.forwarded.fetch_add(1, Ordering::SeqCst);
        let mut out = Response::builder().status(status);
        for (name, value) in &headers {
            if !HOP_HEADERS.contains(&name.as_str()) {
                out = out.header(name, value);
            }
        }
        Ok(out.body(Body::from(bytes)).unwrap())
    }
}

async fn handle(State(inner): State<Arc<Inner>>, request: Request) -> Response {
    let c = &inner.counters;
    c.requests.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(b) => b,
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    let after = match inner.next_fault() {
        Fault::Pass => AfterStall::Pass,
        Fault::ServerError => {
            c.server_errors.fetch_add(1, Ordering::SeqCst);
            let body = serde_json::json!({"error": "InternalServerError", "message": "fault proxy: injected 500"});
            return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response();
        }
        Fault::RateLimited => {
            c.rate_limited.fetch_add(1, Ordering::SeqCst);
            let body = serde_json::json!({"error": "RateLimitExceeded", "message": "fault proxy: injected 429"});
            return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "0")], axum::Json(body)).into_response();
        }
        Fault::Stall { hold, then } => {
            c.stalled.fetch_add(1, Ordering::SeqCst);
            let mut release = inner.release.subscribe();
            tokio::select! {
                _ = tokio::time::sleep(hold) => {}
                _ = release.changed() => {}
            }
            then
        }
    };
    let resp = match inner.forward(parts, body).await {
        Ok(r) => r,
        Err(e) => {
            c.upstream_errors.fetch_add(1, Ordering::SeqCst);
            return (StatusCode::BAD_GATEWAY, format!("fault proxy: upstream: {e}")).into_response();
        }
    };
    match after {
        AfterStall::Pass => resp,
        AfterStall::Drop => {
            c.dropped.fetch_add(1, Ordering::SeqCst);
            // A body that fails before yielding anything: hyper aborts the connection instead of answering.
            let broken =
                futures::stream::once(async { Err::<Bytes, std::io::Error>(std::io::Error::other("dropped")) });
            Response::builder()
                .status(StatusCode::OK)
                .body(Body::from_stream(broken))
                .unwrap()
        }
    }
}
