# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run in a slim Debian image as a non-root user.
#   docker build -t kisse-backend .
#   docker run -p 8080:8080 -e JWT_SECRET=... -e DATABASE_URL=postgres://... kisse-backend

FROM rust:1.94-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
# A workspace member: cargo reads its manifest even to build the server alone.
COPY bench ./bench
# Cache mounts keep the registry and compiled dependencies between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin kisse-backend \
    && cp target/release/kisse-backend /usr/local/bin/kisse-backend

FROM debian:bookworm-slim AS runtime
# TLS roots are compiled in (webpki-roots) and migrations are embedded: nothing else to install.
RUN groupadd --system --gid 10001 kisse \
    && useradd --system --uid 10001 --gid kisse --home-dir /data --shell /usr/sbin/nologin kisse \
    && mkdir -p /data/attachments && chown -R kisse:kisse /data
COPY --from=build /usr/local/bin/kisse-backend /usr/local/bin/kisse-backend
USER kisse:kisse
WORKDIR /data
ENV SERVER_ADDRESS=0.0.0.0:8080 \
    DATABASE_URL=sqlite:///data/kisse.db \
    RUST_LOG=info \
    LOG_FORMAT=json
EXPOSE 8080
VOLUME ["/data"]
# No curl in the image: bash's /dev/tcp is enough to ask /ready.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /ready HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
# SIGTERM (docker stop) drains: sockets are closed with 1001, pending writes finish.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/kisse-backend"]
CMD ["serve"]
