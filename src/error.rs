//! One error type for the whole server: it becomes an HTTP response (401 with an empty body,
//! everything else `{"error": {"code", "message"}}`) or a WebSocket `error` frame.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;
use std::{fmt, sync::Arc};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input the client can fix; `code` is a stable machine-readable name.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("authentication required")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(&'static str),
    /// A 403 with its own stable code, for refusals a client tells apart.
    #[error("{message}")]
    Refused {
        code: &'static str,
        message: &'static str,
    },
    /// Also used for "exists but is not yours", so that the answer reveals nothing.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A 404 with its own stable code: something this server is not set up to offer.
    #[error("{message}")]
    Unavailable {
        code: &'static str,
        message: &'static str,
    },
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: &'static str,
    },
    #[error("payload too large")]
    PayloadTooLarge,
    /// A status of its own that a protocol prescribes (tus: 412, 415; byte ranges: 416).
    #[error("{message}")]
    Protocol {
        status: StatusCode,
        code: &'static str,
        message: &'static str,
    },
    /// A per-user storage quota is used up: 413, which the app already treats as a refused
    /// upload (a 5xx it might retry), with its own code; the request may succeed once some of
    /// what the user stored is gone.
    #[error("{0}")]
    QuotaExceeded(&'static str),
    /// Envelopes that do not match the recipient's devices: some missing or extra (409
    /// `mismatched_devices`), or some addressed to a registration the device replaced (410
    /// `stale_devices`). The lists tell the sender what to fix.
    #[error("{}", .0.explain())]
    Devices(DeviceMismatch),
    /// Answered with `Retry-After: <retry_after>` (seconds).
    #[error("too many requests: retry in {retry_after} s")]
    TooManyRequests { retry_after: u64 },
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl Error {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid {
            code: "invalid_input",
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::Refused { .. } => StatusCode::FORBIDDEN,
            Self::NotFound(_) | Self::Unavailable { .. } => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Protocol { status, .. } => *status,
            Self::QuotaExceeded(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Devices(d) if d.is_stale() => StatusCode::GONE,
            Self::Devices(_) => StatusCode::CONFLICT,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable machine-readable code, shared by HTTP bodies and WebSocket `error` frames.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid { code, .. }
            | Self::Conflict { code, .. }
            | Self::Unavailable { code, .. }
            | Self::Protocol { code, .. }
            | Self::Refused { code, .. } => code,
            Self::Unauthorized => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::PayloadTooLarge => "payload_too_large",
            Self::QuotaExceeded(_) => "quota_exceeded",
            Self::Devices(d) if d.is_stale() => "stale_devices",
            Self::Devices(_) => "mismatched_devices",
            Self::TooManyRequests { .. } => "rate_limited",
            Self::Internal(_) => "internal",
        }
    }

    /// Logs server-side failures once, where they are turned into a client answer (HTTP
    /// response or WebSocket `error` frame), and counts every error by code. The line is the
    /// whole chain, what failed first and why last ("sending message …: group commit failed:
    /// FOREIGN KEY constraint failed"): the client only ever sees "internal error".
    pub fn log_if_internal(&self) {
        crate::metrics::error(self.code());
        if let Self::Internal(e) = self {
            tracing::error!("{e:#}");
        }
    }

    /// Says what failed, for the log, when this is a server-side failure; the client's answer
    /// stays the same.
    pub fn context(self, what: impl fmt::Display + Send + Sync + 'static) -> Self {
        match self {
            Self::Internal(e) => Self::Internal(e.context(what)),
            other => other,
        }
    }

    /// Makes copies of one failure for several callers (every job of a group commit that the
    /// database refused). An internal error keeps its whole chain in every copy, the typed
    /// errors along it included (`chain`, `downcast_ref`): copying its text lost them.
    pub fn shared(self) -> impl Fn() -> Self {
        let shared = match self {
            Self::Internal(e) => Ok(Shared(Arc::new(e))),
            answer => Err(answer),
        };
        move || match &shared {
            Ok(e) => Self::Internal(anyhow::Error::new(e.clone())),
            Err(answer) => answer.copy_answer(),
        }
    }

    /// A copy of an error that is only an answer (every kind but `Internal`).
    fn copy_answer(&self) -> Self {
        match self {
            Self::Invalid { code, message } => Self::Invalid {
                code,
                message: message.clone(),
            },
            Self::Unauthorized => Self::Unauthorized,
            Self::Forbidden(why) => Self::Forbidden(why),
            Self::Refused { code, message } => Self::Refused { code, message },
            Self::NotFound(what) => Self::NotFound(what),
            Self::Unavailable { code, message } => Self::Unavailable { code, message },
            Self::Conflict { code, message } => Self::Conflict { code, message },
            Self::PayloadTooLarge => Self::PayloadTooLarge,
            Self::Protocol {
                status,
                code,
                message,
            } => Self::Protocol {
                status: *status,
                code,
                message,
            },
            Self::QuotaExceeded(why) => Self::QuotaExceeded(why),
            Self::Devices(d) => Self::Devices(d.clone()),
            Self::TooManyRequests { retry_after } => Self::TooManyRequests {
                retry_after: *retry_after,
            },
            Self::Internal(e) => Self::Internal(anyhow::anyhow!("{e:#}")),
        }
    }
}

/// How a message's envelopes differ from the recipient's devices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceMismatch {
    /// Devices of the recipient the message has no envelope for.
    pub missing_devices: Vec<i64>,
    /// Envelopes for devices the recipient does not have.
    pub extra_devices: Vec<i64>,
    /// Envelopes for a registration id the device no longer has.
    pub stale_devices: Vec<i64>,
}

impl DeviceMismatch {
    pub fn is_stale(&self) -> bool {
        self.missing_devices.is_empty()
            && self.extra_devices.is_empty()
            && !self.stale_devices.is_empty()
    }

    fn explain(&self) -> &'static str {
        if self.is_stale() {
            "some devices have a new registration: fetch their keys again"
        } else {
            "the envelopes do not match the recipient's devices"
        }
    }

    /// The lists that apply, under both key styles (as in every frame).
    pub fn describe(&self, into: &mut serde_json::Value) {
        let lists: [(&str, &str, &Vec<i64>); 2] = if self.is_stale() {
            [
                ("stale_devices", "staleDevices", &self.stale_devices),
                ("", "", &Vec::new()),
            ]
        } else {
            [
                ("missing_devices", "missingDevices", &self.missing_devices),
                ("extra_devices", "extraDevices", &self.extra_devices),
            ]
        };
        for (snake, camel, list) in lists.into_iter().filter(|(k, ..)| !k.is_empty()) {
            into[snake] = json!(list);
            into[camel] = json!(list);
        }
    }
}

/// One internal error shared by several callers: it displays as the original's outermost
/// message, and its sources are the original's.
#[derive(Clone, Debug)]
struct Shared(Arc<anyhow::Error>);

impl fmt::Display for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self.0, f)
    }
}

impl std::error::Error for Shared {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(e.into())
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Self::Internal(e.into())
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        self.log_if_internal();
        let status = self.status();
        if status == StatusCode::UNAUTHORIZED {
            // The app treats any JSON body of /auth/me as a user, so 401 stays empty (RFC 6750).
            let mut response = status.into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
        let mut body = json!({ "error": { "code": self.code(), "message": self.to_string() } });
        if let Self::Devices(devices) = &self {
            devices.describe(&mut body["error"]);
        }
        let mut response = (status, Json(body)).into_response();
        if let Self::TooManyRequests { retry_after } = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every job of a group the database refused gets the whole cause, typed: the log says
    /// why, and the store can still tell a refused row from an outage.
    #[test]
    fn shared_copies_keep_the_whole_chain() {
        let failed = Error::from(sqlx::Error::PoolTimedOut).context("group commit failed");
        let copy = failed.shared();
        for copy in [copy(), copy()] {
            let Error::Internal(e) = &copy else {
                panic!("{copy:?} is not internal");
            };
            assert_eq!(
                format!("{e:#}"),
                "group commit failed: pool timed out while waiting for an open connection"
            );
            let cause = e.chain().find_map(|c| c.downcast_ref::<sqlx::Error>());
            assert!(matches!(cause, Some(sqlx::Error::PoolTimedOut)));
            assert_eq!(copy.to_string(), "internal error", "what the client sees");
        }
        let refused = Error::NotFound("user").shared();
        assert_eq!(refused().to_string(), "user not found");
    }
}
