//! `Json` and `Query` extractors whose rejections are our JSON 400 errors, not axum's text;
//! and the client's address.

use std::net::{IpAddr, SocketAddr};

use axum::{
    body::Bytes,
    extract::{ConnectInfo, FromRequest, FromRequestParts, Request},
    http::{StatusCode, header, request::Parts},
};
use serde::de::DeserializeOwned;

use crate::{AppState, error::Error};

/// The client's address: the peer of the connection, or, when the peer is a trusted proxy,
/// the client it forwards for (see `client_ip`). None when served without connect info.
pub struct ClientIp(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        Ok(Self(peer.map(|peer| {
            super::client_ip::resolve(
                peer,
                &parts.headers,
                &state.config.trusted_proxies,
                state.config.trusted_proxy_header,
            )
        })))
    }
}

/// A JSON object request body (`Content-Type: application/json`). Other JSON values are
/// refused: serde would otherwise read an array as a struct, field by field.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let invalid = |message: String| Error::Invalid {
            code: "invalid_json",
            message,
        };
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("application/json") || t.contains("+json"));
        let body = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Error::PayloadTooLarge
            } else {
                invalid(rejection.body_text())
            }
        })?;
        if !json_type {
            return Err(invalid("expected Content-Type: application/json".into()));
        }
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(invalid("the body must be a JSON object".into()));
        }
        match serde_json::from_slice(&body) {
            Ok(value) => Ok(Self(value)),
            // JSON has one number type: `79.0` is the integer 79 (JSON Schema says so too), while
            // serde refuses it for an integer field. Tried again with such numbers made
            // integers, only when the plain reading failed: the usual body is read once.
            Err(e) => integral_floats_as_integers(&body)
                .and_then(|value| T::deserialize(value).ok())
                .map(Self)
                .ok_or_else(|| invalid(e.to_string())),
        }
    }
}

/// `body` parsed, with every number that is a float of integral value (within `i64`) made an
/// integer; `None` when there is no such number (nothing would change) or it is not JSON.
fn integral_floats_as_integers(body: &[u8]) -> Option<serde_json::Value> {
    fn walk(value: &mut serde_json::Value, changed: &mut bool) {
        match value {
            serde_json::Value::Number(n) => {
                if let Some(f) = n.as_f64().filter(|_| n.is_f64())
                    && f.fract() == 0.0
                    && f.abs() < 9.0e15
                {
                    *value = serde_json::Value::from(f as i64);
                    *changed = true;
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| walk(v, changed)),
            serde_json::Value::Object(fields) => fields.values_mut().for_each(|v| walk(v, changed)),
            _ => {}
        }
    }
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut changed = false;
    walk(&mut value, &mut changed);
    changed.then_some(value)
}

/// Query-string parameters.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(Error::Invalid {
                code: "invalid_query",
                message: rejection.body_text(),
            }),
        }
    }
}

/// A path parameter that must parse (e.g. as a UUID); a bad one is a 404, like a missing one.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(_) => Err(Error::NotFound("resource")),
        }
    }
}
