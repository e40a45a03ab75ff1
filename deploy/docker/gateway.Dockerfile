# divine-handle-gateway image: the HTTP gateway (`divine-handle-gateway`: account-link API, /.well-known/atproto-did, /metrics /health /ready on :3000).
#
# Build from the repository root (the context needs Cargo.toml, Cargo.lock, crates/ and migrations/, which the
# binary embeds; .dockerignore keeps target/, .localnet/ and .git out of the context):
#
#   docker build -f deploy/docker/gateway.Dockerfile -t divine-handle-gateway:$(git rev-parse --short HEAD) .
#
# Multi-stage: the builder compiles one release binary against libpq; the runtime stage is debian:bookworm-slim
# with libpq5 + ca-certificates only, running as the unprivileged user 10001 (the Kubernetes manifests pin the same
# uid and mount the root filesystem read-only). Migrations run inside the binary at startup under a Postgres
# advisory lock, so the image needs no migration tool.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpq-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY crates ./crates
COPY migrations ./migrations
# --locked: the image is built from exactly the reviewed Cargo.lock.
# One production binary only: the dev tools (crate divine-dev-tools: dev-relay, nostr-tool, queue-crash-worker,
# bench) and their nostr-relay-builder are never compiled here (scripts/test.d/21-crate-deps.sh checks both).
RUN cargo build --release --locked -p divine-handle-gateway --bin divine-handle-gateway \
    && install -m 0755 target/release/divine-handle-gateway /usr/local/bin/divine-handle-gateway

FROM ${RUNTIME_IMAGE} AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpq5 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 divine \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin divine
COPY --from=builder /usr/local/bin/divine-handle-gateway /usr/local/bin/divine-handle-gateway
USER 10001:10001
ENV LOG_FORMAT=json RUST_LOG=info
EXPOSE 3000
ENTRYPOINT ["/usr/local/bin/divine-handle-gateway"]
