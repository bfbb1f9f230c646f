//! `/api/calls`: start a call, the caller's history, the live call.

use axum::{extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};

use super::{
    docs::ErrorBody,
    extract::{Json, Query},
    paging::{Limit, PageQuery},
};
use crate::{
    AppState,
    auth::AuthUser,
    domain::{calls, turn},
    error::Result,
    model::{Call, CallId, CallType, UserId, display_name},
    store::CallRecord,
};

/// A call as the app reads it: the stored fields plus its duration.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CallView {
    #[serde(flatten)]
    call: Call,
    /// When it started ringing.
    started_at: chrono::DateTime<chrono::Utc>,
    duration_seconds: Option<i64>,
}

impl From<Call> for CallView {
    fn from(call: Call) -> Self {
        Self {
            started_at: call.created_at,
            duration_seconds: call.duration_seconds(),
            call,
        }
    }
}

/// A call in the caller's history: with both names and its direction for the caller.
#[derive(Serialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    #[serde(flatten)]
    call: CallView,
    caller_name: String,
    recipient_name: String,
    /// `incoming` or `outgoing`, for the caller of the endpoint.
    #[serde(rename = "type")]
    #[schema(value_type = String, pattern = "^(incoming|outgoing)$")]
    direction: &'static str,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct StartCall {
    recipient_id: UserId,
    call_type: CallType,
}

#[utoipa::path(
    post,
    path = "/calls",
    tag = "calls",
    summary = "Start a call",
    request_body = StartCall,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "the call (it rings the recipient)", body = CallView),
        (status = 400, description = "invalid input (e.g. calling oneself)", body = ErrorBody),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 404, description = "no such recipient", body = ErrorBody),
        (status = 409, description = "either party is already in a call", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 429, description = "too many writes (Retry-After)", body = ErrorBody),
    )
)]
pub async fn start(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Json(body): Json<StartCall>,
) -> Result<(StatusCode, axum::Json<CallView>)> {
    let call = calls::start(&state, user, body.recipient_id, body.call_type).await?;
    Ok((StatusCode::CREATED, axum::Json(call.into())))
}

#[utoipa::path(
    get,
    path = "/calls/history",
    tag = "calls",
    summary = "The caller's call history",
    params(("limit" = Option<Limit>, Query, description = "page size, default 50; any integer is accepted and clamped to 1..=200"), ("before" = Option<Uuid>, Query, description = "id of the last call already seen (newest first)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "calls, newest first, with caller_name, recipient_name and type (incoming/outgoing)", body = Vec<HistoryEntry>),
        (status = 400, description = "a `limit` that is not an integer, or a `before` that is not a UUID", body = ErrorBody),
        (status = 401, description = "missing or bad token (empty body)"),
    )
)]
pub async fn history(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(page): Query<PageQuery<CallId>>,
) -> Result<axum::Json<Vec<HistoryEntry>>> {
    let records = calls::history(&state, user, page.before, page.limit).await?;
    let entries = records
        .into_iter()
        .map(|r: CallRecord| HistoryEntry {
            direction: if r.call.caller_id == user {
                "outgoing"
            } else {
                "incoming"
            },
            caller_name: display_name(r.caller_username, r.caller_name),
            recipient_name: display_name(r.recipient_username, r.recipient_name),
            call: r.call.into(),
        })
        .collect();
    Ok(axum::Json(entries))
}

#[utoipa::path(
    get,
    path = "/calls/active",
    tag = "calls",
    summary = "The caller's live call",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the call", body = CallView),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 404, description = "no live call", body = ErrorBody),
    )
)]
pub async fn active(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<axum::Json<CallView>> {
    Ok(axum::Json(calls::active(&state, user).await?.into()))
}

#[utoipa::path(
    get,
    path = "/calls/turn",
    tag = "calls",
    summary = "TURN credentials for a call",
    description = "Credentials for the TURN server shared with this one (the TURN REST API \
        convention of coturn's `use-auth-secret`): hand `urls`, `username` and `credential` to \
        WebRTC as an ICE server. Fetch fresh ones before each call; they expire after `ttl` seconds.",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "credentials valid until `expires_at`", body = turn::TurnCredentials),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 404, description = "`turn_unavailable`: the server has no TURN settings", body = ErrorBody),
        (status = 429, description = "too many credentials asked for (Retry-After)", body = ErrorBody),
    )
)]
pub async fn turn(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<axum::Json<turn::TurnCredentials>> {
    Ok(axum::Json(turn::credentials(&state, user)?))
}
