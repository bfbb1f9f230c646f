//! `/api/attachments`: encrypted attachments over tus 1.0 (https://tus.io/protocols/resumable-upload),
//! core protocol plus the creation, expiration and termination extensions, so that existing tus
//! clients upload unchanged; and the download of a finished one, with byte ranges. The rules are
//! `domain::attachments`; this file reads and writes the protocol's headers.
//!
//! Not in the OpenAPI document: tus is specified by its headers, which the document's
//! generated request checks cannot express; README and docs/PROTOCOL.md describe the routes.

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, options},
};
use chrono::{DateTime, Utc};

use super::{
    extract::Path,
    range::{self, Slice},
};
use crate::{
    AppState,
    auth::AuthUser,
    domain::attachments::{self, Progress},
    error::{Error, Result},
};

const TUS_VERSION: &str = "1.0.0";
const TUS_EXTENSIONS: &str = "creation,expiration,termination";
/// What a PATCH body must be declared as.
const PATCH_TYPE: &str = "application/offset+octet-stream";

const TUS_RESUMABLE: HeaderName = HeaderName::from_static("tus-resumable");
const UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");
const UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
const UPLOAD_METADATA: HeaderName = HeaderName::from_static("upload-metadata");
const UPLOAD_EXPIRES: HeaderName = HeaderName::from_static("upload-expires");
const UPLOAD_DEFER_LENGTH: HeaderName = HeaderName::from_static("upload-defer-length");

/// The tus headers a browser client sends, and those it must be able to read (CORS).
pub const REQUEST_HEADERS: [&str; 5] = [
    "tus-resumable",
    "upload-length",
    "upload-offset",
    "upload-metadata",
    "upload-defer-length",
];
pub const RESPONSE_HEADERS: [&str; 8] = [
    "tus-resumable",
    "tus-version",
    "tus-extension",
    "tus-max-size",
    "upload-length",
    "upload-offset",
    "upload-metadata",
    "upload-expires",
];

/// The routes, with the tus version check around them (`api::router` mounts them).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/attachments", options(discover).post(create))
        .route(
            "/api/attachments/{id}",
            get(download)
                .head(status)
                .patch(append)
                .delete(terminate)
                .options(discover),
        )
        .layer(middleware::from_fn(tus_version))
}

/// tus: every request but OPTIONS (and our plain GET download) names the protocol version, and
/// every response but OPTIONS's names the server's.
async fn tus_version(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let tus_request = [Method::POST, Method::PATCH, Method::HEAD, Method::DELETE].contains(&method);
    let supported = request
        .headers()
        .get(TUS_RESUMABLE)
        .is_some_and(|v| v == TUS_VERSION);
    let mut response = if tus_request && !supported {
        let mut refused = Error::Protocol {
            status: StatusCode::PRECONDITION_FAILED,
            code: "tus_version_unsupported",
            message: "send Tus-Resumable: 1.0.0",
        }
        .into_response();
        (refused.headers_mut()).insert("tus-version", HeaderValue::from_static(TUS_VERSION));
        refused
    } else {
        next.run(request).await
    };
    if method != Method::OPTIONS {
        (response.headers_mut()).insert(TUS_RESUMABLE, HeaderValue::from_static(TUS_VERSION));
    }
    response
}

/// `OPTIONS`: what this server speaks (no authentication: nothing about anyone).
async fn discover(State(state): State<AppState>) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    headers.insert("tus-extension", HeaderValue::from_static(TUS_EXTENSIONS));
    headers.insert("tus-max-size", state.config.attachment_max_bytes.into());
    response
}

/// The non-negative integer of header `name`; `None` when absent.
fn number(headers: &HeaderMap, name: &HeaderName) -> Result<Option<u64>> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::invalid(format!(
            "{name} must be a non-negative integer"
        )));
    }
    text.parse()
        .map(Some)
        .map_err(|_| Error::invalid(format!("{name} is too large")))
}

/// An HTTP date (RFC 9110 IMF-fixdate), as `Upload-Expires` carries it.
fn http_date(at: DateTime<Utc>) -> HeaderValue {
    let text = at.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""))
}

/// `POST` (creation): a new upload of `Upload-Length` bytes → 201 with its `Location`.
async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
) -> Result<Response> {
    if headers.contains_key(UPLOAD_DEFER_LENGTH) {
        return Err(Error::invalid(
            "Upload-Defer-Length is not supported: send Upload-Length",
        ));
    }
    let length = number(&headers, &UPLOAD_LENGTH)?
        .ok_or_else(|| Error::invalid("Upload-Length is required"))?;
    let metadata = match headers.get(UPLOAD_METADATA) {
        Some(v) => Some(
            (v.to_str()
                .map_err(|_| Error::invalid("Upload-Metadata must be ASCII")))?
            .to_owned(),
        ),
        None => None,
    };
    let created = attachments::create(&state, user, length, metadata).await?;
    let location = HeaderValue::try_from(format!("/api/attachments/{}", created.id))
        .map_err(|e| Error::Internal(e.into()))?;
    Ok((
        StatusCode::CREATED,
        [
            (header::LOCATION, location),
            (UPLOAD_EXPIRES, http_date(created.expires_at)),
        ],
    )
        .into_response())
}

/// The headers that say where an upload stands.
fn progress_headers(progress: &Progress) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(UPLOAD_OFFSET, progress.offset.into());
    headers.insert(UPLOAD_EXPIRES, http_date(progress.expires_at));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers
}

/// `HEAD`: where the caller's upload stands, to resume it.
async fn status(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<Response> {
    let progress = attachments::progress(&state, user, &id).await?;
    let mut headers = progress_headers(&progress);
    headers.insert(UPLOAD_LENGTH, progress.length.into());
    if let Some(Ok(value)) = progress.metadata.as_deref().map(HeaderValue::from_str) {
        headers.insert(UPLOAD_METADATA, value);
    }
    Ok((StatusCode::OK, headers).into_response())
}

/// `PATCH`: the body, streamed to storage, continues the upload at `Upload-Offset` → 204 with the
/// new offset.
async fn append(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    headers: HeaderMap,
    // The raw body: axum's `DefaultBodyLimit` (2 MB) applies to buffering extractors only, so
    // this one streams whatever the upload lacks, checked as it comes (`domain::attachments`).
    body: Body,
) -> Result<Response> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if !content_type.is_some_and(|t| t.eq_ignore_ascii_case(PATCH_TYPE)) {
        return Err(Error::Protocol {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "unsupported_media_type",
            message: "a PATCH body must be Content-Type: application/offset+octet-stream",
        });
    }
    let offset = number(&headers, &UPLOAD_OFFSET)?
        .ok_or_else(|| Error::invalid("Upload-Offset is required"))?;
    let declared = number(&headers, &header::CONTENT_LENGTH)?;
    let progress =
        attachments::append(&state, user, &id, offset, declared, body.into_data_stream()).await?;
    Ok((StatusCode::NO_CONTENT, progress_headers(&progress)).into_response())
}

/// `DELETE` (termination): the caller abandons (or deletes) their upload → 204.
async fn terminate(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    attachments::delete(&state, user, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET`: the finished attachment's bytes, to any signed-in user with its id (they are the
/// sender's ciphertext), whole or one `Range`, streamed from storage.
async fn download(
    State(state): State<AppState>,
    AuthUser(_): AuthUser,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let size = attachments::size(&state, &id).await?;
    let asked = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, length) = match range::slice(asked, size) {
        Slice::Whole => (StatusCode::OK, 0, size),
        Slice::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Slice::Unsatisfiable => {
            let mut refused = Error::Protocol {
                status: StatusCode::RANGE_NOT_SATISFIABLE,
                code: "range_not_satisfiable",
                message: "the range is outside the attachment",
            }
            .into_response();
            (refused.headers_mut()).insert(
                header::CONTENT_RANGE,
                HeaderValue::try_from(format!("bytes */{size}"))
                    .map_err(|e| Error::Internal(e.into()))?,
            );
            return Ok(refused);
        }
    };
    let range = (status == StatusCode::PARTIAL_CONTENT).then_some(start..start + length);
    let bytes = attachments::read(&state, &id, range).await?;
    let mut response = Response::new(Body::from_stream(bytes));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, length.into());
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
    if status == StatusCode::PARTIAL_CONTENT {
        let range = format!("bytes {start}-{}/{size}", start + length - 1);
        headers.insert(
            header::CONTENT_RANGE,
            HeaderValue::try_from(range).map_err(|e| Error::Internal(e.into()))?,
        );
    }
    Ok(response)
}
