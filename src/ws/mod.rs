//! The WebSocket door: authenticate before the upgrade, then hand the socket to a session.

mod protocol;
mod session;

use axum::{
    extract::{
        RawQuery, State,
        ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection},
    },
    http::request::Parts,
    response::Response,
};

use crate::{AppState, auth, error::Error};

/// `GET /ws?token=<jwt>` (or `Authorization: Bearer <jwt>`). A missing or bad token is refused
/// with an empty 401 before the upgrade.
pub async fn upgrade(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    parts: Parts,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Error> {
    let token = auth::bearer_token(&parts)
        .or_else(|| query.as_deref().and_then(token_param))
        .ok_or(Error::Unauthorized)?;
    let claims = auth::authenticate(&state, token).await?;
    let upgrade = upgrade.map_err(|_| Error::invalid("expected a WebSocket upgrade request"))?;
    let max = state.config.ws_max_frame_bytes;
    Ok(upgrade
        .max_message_size(max)
        .max_frame_size(max)
        // tungstenite's 128 KiB defaults would dominate the memory of an idle socket.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024)
        .on_upgrade(move |socket| session::run(state, socket, claims)))
}

/// The `token` parameter of a query string (tokens are URL-safe, so no decoding is needed).
fn token_param(query: &str) -> Option<&str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::token_param;

    #[test]
    fn token_is_found_among_other_parameters() {
        assert_eq!(token_param("token=abc.def"), Some("abc.def"));
        assert_eq!(token_param("since=5&token=abc"), Some("abc"));
        assert_eq!(token_param("token="), None);
        assert_eq!(token_param("mytoken=abc"), None);
    }
}
