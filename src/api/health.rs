//! Operations endpoints: `/health` (the process is up), `/ready` (its dependencies answer) and
//! `/metrics` (Prometheus text format).

use std::time::Duration;

use axum::{
    extract::State,
    http::{StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{AppState, auth, error::Error};

/// Longest a readiness probe waits for one dependency.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "ok", "version": "0.1.0", "uptime_seconds": 42, "sockets": 3, "redis": {"status": "disabled"}}))]
pub struct Health {
    /// Always `ok`.
    #[schema(value_type = String)]
    status: &'static str,
    #[schema(value_type = String)]
    version: &'static str,
    uptime_seconds: u64,
    /// Open WebSockets on this node.
    sockets: u64,
    redis: RedisHealth,
}

/// Cluster fan-out: `disabled` on a single node (no other field), `down` while Redis is
/// unreachable (this node then serves its own users only).
#[derive(Serialize, ToSchema)]
pub struct RedisHealth {
    /// `disabled`, `ok` or `down`.
    #[schema(value_type = String)]
    status: &'static str,
    /// The counters below: only when the node has a broker.
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    published: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dropped: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    received: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outages: Option<u64>,
}

/// Liveness: answers 200 as long as the process serves requests; touches no dependency.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses((status = 200, description = "The process is up", body = Health))
)]
pub async fn health(State(state): State<AppState>) -> axum::Json<Health> {
    let redis = match state.hub.broker() {
        Some(broker) => {
            let s = broker.status();
            RedisHealth {
                status: s.status,
                node: Some(s.node),
                published: Some(s.published),
                dropped: Some(s.dropped),
                received: Some(s.received),
                outages: Some(s.outages),
            }
        }
        None => RedisHealth {
            status: "disabled",
            node: None,
            published: None,
            dropped: None,
            received: None,
            outages: None,
        },
    };
    axum::Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.started.elapsed().as_secs(),
        sockets: state.hub.socket_count() as u64,
        redis,
    })
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ok`, `degraded` (Redis down) or `unavailable` (the database does not answer: 503).
    #[schema(value_type = String)]
    status: &'static str,
    components: Components,
}

#[derive(Serialize, ToSchema)]
pub struct Components {
    database: DatabaseStatus,
    /// Only when REDIS_URL is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    redis: Option<ComponentStatus>,
}

#[derive(Serialize, ToSchema)]
pub struct DatabaseStatus {
    /// `ok` or `down`.
    #[schema(value_type = String)]
    status: &'static str,
    /// `sqlite` or `postgres`.
    #[schema(value_type = String)]
    engine: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct ComponentStatus {
    /// `ok` or `down`.
    #[schema(value_type = String)]
    status: &'static str,
}

/// Readiness: 200 when the database answers, 503 otherwise. Redis (when `REDIS_URL` is set) is
/// reported, and makes the answer `degraded`, but never 503: without it a node still serves its
/// own users, and taking every node out of the balancer at once would serve nobody.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    responses(
        (status = 200, description = "Every dependency answers", body = Readiness,
            example = json!({"status": "ok", "components": {"database": {"status": "ok", "engine": "postgres"}, "redis": {"status": "ok"}}})),
        (status = 503, description = "A dependency does not answer", body = Readiness,
            example = json!({"status": "unavailable", "components": {"database": {"status": "down", "engine": "postgres"}}})),
    )
)]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, axum::Json<Readiness>) {
    let database = matches!(
        tokio::time::timeout(PROBE_TIMEOUT, state.store.ping()).await,
        Ok(Ok(()))
    );
    let mut components = Components {
        database: DatabaseStatus {
            status: up(database),
            engine: state.store.engine().name(),
        },
        redis: None,
    };
    let mut redis_ok = true;
    if let Some(redis) = &state.redis {
        redis_ok = matches!(
            tokio::time::timeout(PROBE_TIMEOUT, ping_redis(redis)).await,
            Ok(Ok(()))
        );
        components.redis = Some(ComponentStatus {
            status: up(redis_ok),
        });
    }
    let (status, word) = match (database, redis_ok) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        (true, false) => (StatusCode::OK, "degraded"),
        (true, true) => (StatusCode::OK, "ok"),
    };
    (
        status,
        axum::Json(Readiness {
            status: word,
            components,
        }),
    )
}

fn up(ok: bool) -> &'static str {
    if ok { "ok" } else { "down" }
}

async fn ping_redis(client: &redis::Client) -> redis::RedisResult<()> {
    let mut connection = client.get_multiplexed_async_connection().await?;
    redis::cmd("PING")
        .query_async::<String>(&mut connection)
        .await
        .map(drop)
}

/// Prometheus text format. With `METRICS_TOKEN` set, requires `Authorization: Bearer <token>`
/// (401 with an empty body otherwise).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    security((), ("metrics_token" = [])),
    responses(
        (status = 200, description = "Prometheus text exposition format", content_type = "text/plain; version=0.0.4", body = String),
        (status = 401, description = "METRICS_TOKEN is set and the bearer token is missing or wrong"),
    )
)]
pub async fn metrics(State(state): State<AppState>, parts: Parts) -> Response {
    if let Some(expected) = &state.config.metrics_token
        && !auth::bearer_is(&parts, expected.expose())
    {
        return Error::Unauthorized.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render_metrics(&state),
    )
        .into_response()
}

/// Sets the gauges read from live state (metrics takes plain numbers), then renders.
fn render_metrics(state: &AppState) -> String {
    crate::metrics::connections(state.hub.socket_count(), state.hub.user_count());
    for pool in state.store.pool_stats() {
        crate::metrics::db_pool(pool.name, pool.size, pool.idle, pool.max);
    }
    crate::metrics::render()
}
