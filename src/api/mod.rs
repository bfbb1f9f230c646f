//! The HTTP surface: routes, per-request logging, and the layers every request goes through.

mod auth;
mod calls;
mod channels;
mod conversations;
mod extract;
mod health;
mod keys;
mod messages;
mod paging;
mod presence;
mod stories;
mod users;

use std::time::{Duration, Instant};

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request},
    http::header,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post, put},
};
use tower_http::{
    catch_panic::CatchPanicLayer, sensitive_headers::SetSensitiveRequestHeadersLayer,
    timeout::TimeoutLayer,
};

use crate::{AppState, error::Error, ws};

/// Longest a REST request may take; WebSocket sessions live on after their upgrade response.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub fn router(state: AppState) -> Router {
    // Room for the largest blob in base64 (4 characters per 3 bytes) plus the JSON around it.
    let content_body_limit = state.config.content_max_bytes.div_ceil(3) * 4 + 64 * 1024;
    let api = Router::new()
        .route("/auth/register", post(auth::register))
        .route("/auth/login", post(auth::login))
        .route("/auth/refresh", post(auth::refresh))
        .route("/auth/logout", post(auth::logout))
        .route("/auth/logout-all", post(auth::logout_all))
        .route("/auth/password", post(auth::change_password))
        .route("/auth/me", get(auth::me).delete(auth::delete_me))
        .route(
            "/conversations",
            get(conversations::list).post(conversations::open),
        )
        .route("/conversations/{id}/messages", get(conversations::messages))
        .route("/messages/{id}/read", post(messages::mark_read))
        .route(
            "/messages/{id}/content",
            post(messages::put_content)
                .get(messages::get_content)
                .layer(DefaultBodyLimit::max(content_body_limit)),
        )
        .route("/users/search", get(users::search))
        .route("/users/find-by-email", get(users::find_by_email))
        .route("/calls", post(calls::start))
        .route("/calls/history", get(calls::history))
        .route("/calls/active", get(calls::active))
        .route("/presence", post(presence::set))
        .route("/presence/{id}", get(presence::get))
        .route("/keys", put(keys::upload))
        .route("/keys/count", get(keys::count))
        .route("/keys/{user_id}", get(keys::fetch_user))
        .route("/keys/{user_id}/{device_id}", get(keys::fetch_device))
        .route("/devices", get(keys::devices))
        .route("/devices/{device_id}", delete(keys::delete_device))
        .route("/stories", get(stories::list).post(stories::create))
        .route("/stories/{id}/view", post(stories::view))
        .route("/channels", get(channels::list).post(channels::create))
        .route("/channels/{id}/join", post(channels::join))
        .route("/channels/{id}/leave", post(channels::leave))
        .route("/channels/{id}/members", post(channels::add_member))
        .route(
            "/channels/{id}/messages",
            get(channels::messages).post(channels::post),
        );
    Router::new()
        .nest("/api", api)
        .route("/ws", get(ws::upgrade))
        .route("/health", get(health::health))
        .fallback(|| async { Error::NotFound("route") })
        .method_not_allowed_fallback(|| async {
            Error::Invalid {
                code: "method_not_allowed",
                message: "method not allowed".into(),
            }
        })
        .layer(middleware::from_fn(log_request))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            Error::Internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
        ]))
        .with_state(state)
}

/// One line per request: method, route template (never the raw URI, which may carry
/// `?token=`), status and latency.
async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "<unmatched>".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    tracing::info!(
        %method,
        route,
        status = response.status().as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1e3,
        "request"
    );
    response
}
