//! The HTTP surface: routes, per-request logging, and the layers every request goes through.

mod admin;
mod asyncapi;
mod attachments;
mod auth;
mod blocks;
mod calls;
mod channels;
mod client_ip;
mod conversations;
mod docs;
mod extract;
mod health;
mod keys;
mod limits;
mod messages;
mod paging;
mod presence;
mod push;
mod range;
mod settings;
mod stories;
mod users;

use std::time::{Duration, Instant};

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request},
    http::{HeaderName, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use tower_http::{
    catch_panic::CatchPanicLayer,
    cors::{AllowOrigin, CorsLayer},
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    sensitive_headers::SetSensitiveRequestHeadersLayer,
    timeout::TimeoutLayer,
};
use utoipa::OpenApi as _;
use utoipa_axum::{
    router::{OpenApiRouter, UtoipaMethodRouterExt},
    routes,
};
use utoipa_swagger_ui::SwaggerUi;

use tracing::Instrument as _;

use crate::{AppState, error::Error, ws};

/// Longest a REST request may take; WebSocket sessions live on after their upgrade response.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The whole HTTP surface: REST under `/api`, `/ws`, operations endpoints, and the API docs
/// (`/api/openapi.json`, browsable at `/api/docs/`).
pub fn router(state: AppState) -> Router {
    let (routes, openapi) = routes(&state).split_for_parts();
    let router = routes
        .route("/ws", get(ws::upgrade))
        .route("/api/asyncapi.json", get(asyncapi::serve))
        .merge(SwaggerUi::new("/api/docs").url("/api/openapi.json", openapi))
        .fallback(|| async { Error::NotFound("route") })
        // 405 with the usual error body; axum adds `Allow` (RFC 9110).
        .method_not_allowed_fallback(|| async {
            crate::metrics::error("method_not_allowed");
            let body = serde_json::json!({
                "error": { "code": "method_not_allowed", "message": "method not allowed" }
            });
            (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body))
        })
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            limits::per_user,
        ))
        .layer(middleware::from_fn(log_request))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        // Attachment uploads stream for as long as the client sends (100 MiB over a slow link
        // takes minutes): added after the request timeout, they are bounded by silence
        // instead (`domain::attachments`), with the same per-user budget and request log.
        .merge(
            attachments::routes()
                .route_layer(middleware::from_fn_with_state(
                    state.clone(),
                    limits::per_user,
                ))
                .layer(middleware::from_fn(log_request)),
        )
        .layer(CatchPanicLayer::custom(|_| {
            Error::Internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
        ]))
        // Every request gets an `x-request-id`: the client's when it is a plain token (it goes
        // into the logs as is), a new UUID otherwise; the response carries it back.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(middleware::from_fn(drop_unusable_request_id));
    let router = match cors(&state.config.cors_allowed_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router.with_state(state)
}

/// The OpenAPI document of every route (what `/api/openapi.json` serves).
pub fn openapi(state: &AppState) -> utoipa::openapi::OpenApi {
    routes(state).split_for_parts().1
}

/// Every documented route: each handler's `#[utoipa::path]` both registers it and describes it,
/// so the router and the document cannot drift apart.
fn routes(state: &AppState) -> OpenApiRouter<AppState> {
    // Room for the largest blob in base64 (4 characters per 3 bytes) plus the JSON around it.
    let content_body_limit = state.config.content_max_bytes.div_ceil(3) * 4 + 64 * 1024;
    let api = OpenApiRouter::new()
        .routes(routes!(auth::register))
        .routes(routes!(auth::login))
        .routes(routes!(auth::refresh))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::logout_all))
        .routes(routes!(auth::change_password))
        .routes(routes!(auth::me, auth::delete_me))
        .routes(routes!(conversations::list, conversations::open))
        .routes(routes!(conversations::messages))
        .routes(routes!(conversations::accept))
        .routes(routes!(messages::mark_read))
        .routes(
            routes!(messages::send_envelopes).layer(DefaultBodyLimit::max(
                state.config.ws_max_envelope_frame_bytes,
            )),
        )
        .routes(
            routes!(messages::put_content, messages::get_content)
                .layer(DefaultBodyLimit::max(content_body_limit)),
        )
        .routes(routes!(users::search))
        .routes(routes!(users::find_by_email))
        .routes(routes!(blocks::block_user, blocks::unblock_user))
        .routes(routes!(blocks::list_blocks))
        .routes(routes!(calls::start))
        .routes(routes!(calls::history))
        .routes(routes!(calls::active))
        .routes(routes!(calls::turn))
        .routes(routes!(presence::set))
        .routes(routes!(presence::get))
        .routes(routes!(settings::get_privacy, settings::set_privacy))
        .routes(routes!(keys::upload))
        .routes(routes!(keys::count))
        .routes(routes!(keys::fetch_user))
        .routes(routes!(keys::fetch_device))
        .routes(routes!(keys::devices))
        .routes(routes!(keys::delete_device))
        .routes(routes!(push::register_push, push::unregister_push))
        .routes(routes!(push::vapid_key))
        .routes(routes!(stories::list, stories::create))
        .routes(routes!(stories::view))
        .routes(routes!(channels::list, channels::create))
        .routes(routes!(channels::join))
        .routes(routes!(channels::leave))
        .routes(routes!(channels::add_member))
        .routes(routes!(channels::messages, channels::post));
    // Without ADMIN_TOKEN the admin API does not exist: not routed (404 as any unknown path)
    // and not in the document, which describes what this server serves.
    let api = if state.config.admin_token.is_some() {
        api.routes(routes!(admin::suspend, admin::unsuspend))
            .routes(routes!(admin::revoke_sessions))
            .routes(routes!(admin::delete_user))
            .routes(routes!(admin::stats))
    } else {
        api
    };
    OpenApiRouter::with_openapi(docs::ApiDoc::openapi())
        .nest("/api", api)
        .routes(routes!(health::health))
        .routes(routes!(health::ready))
        .routes(routes!(health::metrics))
}

/// CORS for the listed origins; `None` (no CORS headers at all) when the list is empty.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::DELETE,
                Method::OPTIONS,
                // tus uploads (attachments.rs).
                Method::PATCH,
                Method::HEAD,
            ])
            .allow_headers(
                [header::AUTHORIZATION, header::CONTENT_TYPE, header::RANGE]
                    .into_iter()
                    .chain(attachments::REQUEST_HEADERS.map(HeaderName::from_static))
                    .collect::<Vec<_>>(),
            )
            .expose_headers(
                [
                    header::RETRY_AFTER,
                    header::WWW_AUTHENTICATE,
                    HeaderName::from_static(REQUEST_ID),
                    header::LOCATION,
                    header::CONTENT_RANGE,
                ]
                .into_iter()
                .chain(attachments::RESPONSE_HEADERS.map(HeaderName::from_static))
                .collect::<Vec<_>>(),
            )
            .max_age(Duration::from_secs(3600)),
    )
}

/// The header naming a request in the logs, both ways.
const REQUEST_ID: &str = "x-request-id";
/// Longest request id kept from a client.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Removes a client's `x-request-id` that is not a plain token (1 to 128 letters, digits, `-`,
/// `_`, `.`, `:`), so that a new one is made: the id is written into log lines as is.
async fn drop_unusable_request_id(mut request: Request, next: Next) -> Response {
    let usable = |v: &HeaderValue| {
        let v = v.as_bytes();
        (1..=MAX_REQUEST_ID_LEN).contains(&v.len())
            && v.iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
    };
    let headers = request.headers_mut();
    let all_usable = headers.get_all(REQUEST_ID).iter().count() == 1
        && headers.get(REQUEST_ID).is_some_and(usable);
    if !all_usable {
        headers.remove(REQUEST_ID);
    }
    next.run(request).await
}

/// One line per request: its id, method, route template (never the raw URI, which may carry
/// `?token=`), status and latency. What the handler logs (an internal error's cause, and a
/// socket's whole session) is logged inside a span that names the request the same way.
async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "<unmatched>".to_owned(), |p| p.as_str().to_owned());
    // Set by `SetRequestIdLayer` (checked by `drop_unusable_request_id`): ASCII.
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let span = tracing::error_span!("request", %method, route, request_id);
    let response = next.run(request).instrument(span).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    crate::metrics::http_request(method.as_str(), &route, status, elapsed);
    tracing::info!(
        request_id,
        %method,
        route,
        status,
        latency_ms = elapsed.as_secs_f64() * 1e3,
        "request"
    );
    response
}
