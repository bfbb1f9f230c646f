//! The OpenAPI document's frame: title, security schemes, tags, and the WebSocket entry (its
//! frames are described in `docs/PROTOCOL.md`). Each REST operation is described where its
//! handler is written, with `#[utoipa::path]`.

use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::{
        self,
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Kisse backend",
        description = "Blind gateway for the Kisse end-to-end-encrypted messenger. REST under `/api` \
            (JSON, snake_case keys; errors are `{\"error\": {\"code\", \"message\"}}`, except 401 which has \
            an empty body and `WWW-Authenticate: Bearer`). Real-time traffic goes over the WebSocket \
            `/ws`, whose frames are described in docs/PROTOCOL.md.",
    ),
    paths(websocket),
    // Named in query parameters only, which utoipa does not collect.
    components(schemas(super::paging::Limit)),
    modifiers(&Security),
    tags(
        (name = "auth", description = "Accounts and tokens"),
        (name = "conversations", description = "One-to-one conversations and their message metadata"),
        (name = "messages", description = "Read state and encrypted content blobs"),
        (name = "users", description = "Finding people"),
        (name = "calls", description = "Call signalling records"),
        (name = "presence", description = "Online status"),
        (name = "settings", description = "What the caller shows others"),
        (name = "keys", description = "Signal prekey directory (public keys only)"),
        (name = "push", description = "Wake-ups for devices without a socket (contentless pushes)"),
        (name = "stories", description = "24-hour stories"),
        (name = "channels", description = "Channels and their message metadata"),
        (name = "websocket", description = "Real-time frames (docs/PROTOCOL.md)"),
        (name = "operations", description = "Health, readiness and metrics"),
        (name = "admin", description = "The operator's API: on only when ADMIN_TOKEN is set (404 otherwise), called with that token"),
    )
)]
pub struct ApiDoc;

/// The body of every error answer but 401 (which has none). Documentation only: the body is
/// written by `Error::into_response`; schemathesis (scripts/api-contract-check.sh) checks that
/// the two agree.
#[derive(ToSchema)]
#[schema(example = json!({"error": {"code": "invalid_input", "message": "email is not valid"}}))]
#[allow(dead_code)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// Stable machine-readable name (`invalid_input`, `not_found`, `rate_limited`, ...).
    code: String,
    /// Human-readable; never parse it.
    message: String,
}

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("The token from /api/auth/register or /api/auth/login"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "metrics_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("METRICS_TOKEN, when the server sets one"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "ADMIN_TOKEN (the admin API exists only when it is set)",
                    ))
                    .build(),
            ),
        );
    }
}

/// Documentation only: the route itself is `ws::upgrade`, registered next to the documented ones.
#[utoipa::path(
    get,
    path = "/ws",
    tag = "websocket",
    summary = "Open the real-time WebSocket",
    description = "Upgrade to a WebSocket. The token comes as `?token=<jwt>` (what the app does) or \
        `Authorization: Bearer`; `device_id` (or `deviceId`, 1..=127, default 1) names the device. \
        Frames are JSON `{\"type\", \"payload\"}`; each one, with its payload schema, is in the \
        AsyncAPI document `/api/asyncapi.json` (rules and close codes: docs/PROTOCOL.md).",
    params(
        ("token" = Option<String>, Query, description = "the JWT, when not sent as a bearer header"),
        ("device_id" = Option<i64>, Query, description = "1..=127, default 1"),
    ),
    security((), ("bearer" = [])),
    responses(
        (status = 101, description = "Switching protocols: the socket is open"),
        (status = 400, description = "Not a WebSocket upgrade request, or a bad device_id", body = ErrorBody),
        (status = 401, description = "Missing or bad token (empty body)"),
    )
)]
#[allow(dead_code)]
fn websocket() {}
