//! The WebSocket door: authenticate before the upgrade, then hand the socket to a session.

mod limits;
pub mod protocol;
mod session;
mod writer;

use axum::{
    extract::{
        RawQuery, State,
        ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection},
    },
    http::{HeaderMap, header::SEC_WEBSOCKET_PROTOCOL, request::Parts},
    response::Response,
};

use futures_util::StreamExt as _;
use tower_http::request_id::RequestId;

use self::writer::StartFrom;
use crate::{
    AppState, auth,
    domain::{delivery, devices},
    error::Error,
};

/// The subprotocol a client names before its token: `Sec-WebSocket-Protocol: bearer, <jwt>`.
const BEARER_PROTOCOL: &str = "bearer";
/// Each socket's read buffer, allocated when it opens (idle, a socket's largest allocation after
/// its two tasks): a frame up to this size (the app's are a few hundred bytes) comes in one
/// read, a larger one grows the buffer for as long as it needs to, a read more. 1 KiB cost
/// every socket half a KiB more (docs/PERFORMANCE.md, issue 25, twelfth round).
const READ_BUFFER: usize = 512;

/// `GET /ws?token=<jwt>[&device_id=<n>][&since=<cursor>]`, or the token in
/// `Authorization: Bearer <jwt>`, or in `Sec-WebSocket-Protocol: bearer, <jwt>` (answered with
/// the `bearer` subprotocol), which keep it out of URLs. A missing or bad token is refused with
/// an empty 401 before the upgrade; a user with `MAX_SOCKETS_PER_USER` sockets open gets 429.
/// `device_id` (or `deviceId`, default 1) names the device, for the frames about its keys and
/// its envelopes; a device-bound session's socket is its device (naming another is a 400).
/// `since` is the `cursor` of the last message or read receipt this device got: it is sent
/// everything after it first; without it, everything no device of the user was sent yet.
pub async fn upgrade(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    parts: Parts,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Error> {
    let token = auth::bearer_token(&parts)
        .or_else(|| protocol_token(&parts.headers))
        .or_else(|| query.as_deref().and_then(token_param))
        .ok_or(Error::Unauthorized)?;
    // Taken before the check: a revocation between the check and the socket's tracking is
    // noticed (see `Hub::revocation_mark`).
    let revocations = state.hub.revocation_mark();
    let claims = auth::authenticate(&state, token).await?;
    // Taken now and held by the session; dropped (given back) if the upgrade fails.
    let slot = (state.hub)
        .reserve_socket(claims.user_id, state.config.max_sockets_per_user)
        .ok_or(Error::TooManyRequests { retry_after: 10 })?;
    let named = query
        .as_deref()
        .and_then(|q| param(q, "device_id").or_else(|| param(q, "deviceId")))
        .map(|raw| {
            raw.parse()
                .map_err(|_| Error::invalid("device_id must be a number"))
        })
        .transpose()?;
    let (device, device_named) = devices::socket_device(&claims, named)?;
    let start = match query.as_deref().and_then(|q| param(q, "since")) {
        // Read before the socket is attached: later events are live for it (see `StartFrom`).
        None => StartFrom::Undelivered {
            live_after: delivery::inbox_head(&state, claims.user_id).await?,
        },
        Some(raw) => StartFrom::Cursor(
            raw.parse()
                .map_err(|_| Error::invalid("since must be a cursor (an integer)"))?,
        ),
    };
    let upgrade = upgrade.map_err(|_| Error::invalid("expected a WebSocket upgrade request"))?;
    // Before the answer, so that a device listed right after its connect shows it.
    devices::seen(&state, claims.user_id, device).await;
    // A message with envelopes may be larger than other frames (checked once decoded).
    let max = (state.config.ws_max_frame_bytes).max(state.config.ws_max_envelope_frame_bytes);
    // Set by the request id layer (a client's only when usable: a short ASCII token).
    let request_id = (parts.extensions.get::<RequestId>())
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or_default()
        .into();
    let upgraded = Box::new(session::Upgraded {
        request_id,
        attached: session::Attached::new(&state, claims.user_id, device),
        state,
        claims,
        revocations,
        device,
        device_named,
        start,
        slot,
    });
    Ok(upgrade
        .protocols([BEARER_PROTOCOL])
        .max_message_size(max)
        .max_frame_size(max)
        // tungstenite's 128 KiB defaults would dominate the memory of an idle socket.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(16 * 1024)
        .on_upgrade(move |socket| {
            let (sink, stream) = socket.split();
            session::run(upgraded, sink, stream)
        }))
}

/// The entry after `bearer` in the `Sec-WebSocket-Protocol` list(s).
fn protocol_token(headers: &HeaderMap) -> Option<&str> {
    let mut entries = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    entries.find(|e| e.eq_ignore_ascii_case(BEARER_PROTOCOL))?;
    entries.next().filter(|t| !t.is_empty())
}

/// The `token` parameter of a query string (tokens are URL-safe, so no decoding is needed).
fn token_param(query: &str) -> Option<&str> {
    param(query, "token")
}

/// A non-empty parameter of a query string, undecoded (only URL-safe values are read).
fn param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::{param, protocol_token, token_param};
    use axum::http::{HeaderMap, HeaderValue, header::SEC_WEBSOCKET_PROTOCOL};

    #[test]
    fn token_is_read_after_the_bearer_subprotocol() {
        let mut headers = HeaderMap::new();
        assert_eq!(protocol_token(&headers), None);
        headers.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("bearer, abc.def"),
        );
        assert_eq!(protocol_token(&headers), Some("abc.def"));
        headers.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat, Bearer,x"),
        );
        assert_eq!(protocol_token(&headers), Some("x"));
        headers.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("abc.def, bearer"),
        );
        assert_eq!(protocol_token(&headers), None);
    }

    #[test]
    fn token_is_found_among_other_parameters() {
        assert_eq!(token_param("token=abc.def"), Some("abc.def"));
        assert_eq!(token_param("since=5&token=abc"), Some("abc"));
        assert_eq!(token_param("token="), None);
        assert_eq!(token_param("mytoken=abc"), None);
        assert_eq!(token_param("tokenx=abc"), None);
    }

    #[test]
    fn device_id_is_read_in_either_key_style() {
        assert_eq!(param("token=a&device_id=2", "device_id"), Some("2"));
        assert_eq!(param("deviceId=3&token=a", "deviceId"), Some("3"));
        assert_eq!(param("token=a", "device_id"), None);
    }
}
