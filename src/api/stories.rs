//! `/api/stories`: post, list, mark viewed.

use axum::{extract::State, http::StatusCode};

use super::{
    docs::ErrorBody,
    extract::{Json, Path, Query},
    paging::{Limit, PageQuery},
};
use crate::{
    AppState,
    auth::AuthUser,
    domain::stories::{self, NewStoryRequest},
    error::Result,
    model::{Story, StoryId},
};

#[utoipa::path(
    post,
    path = "/stories",
    tag = "stories",
    summary = "Post a story (expires after 24 h)",
    request_body = NewStoryRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "the story", body = Story),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 429, description = "too many writes (Retry-After)", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Json(body): Json<NewStoryRequest>,
) -> Result<(StatusCode, axum::Json<Story>)> {
    let story = stories::create(&state, user, body).await?;
    Ok((StatusCode::CREATED, axum::Json(story)))
}

#[utoipa::path(
    get,
    path = "/stories",
    tag = "stories",
    summary = "Unexpired stories of the caller and their contacts",
    params(("limit" = Option<Limit>, Query, description = "page size, default 50; any integer is accepted and clamped to 1..=200"), ("before" = Option<Uuid>, Query, description = "id of the last story already seen (newest first)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "stories, newest first", body = Vec<Story>),
        (status = 400, description = "a `limit` that is not an integer, or a `before` that is not a UUID", body = ErrorBody),
        (status = 401, description = "missing or bad token (empty body)"),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(page): Query<PageQuery<StoryId>>,
) -> Result<axum::Json<Vec<Story>>> {
    let stories = stories::list(&state, user, page.before, page.limit).await?;
    Ok(axum::Json(stories))
}

#[utoipa::path(
    post,
    path = "/stories/{id}/view",
    tag = "stories",
    summary = "Mark a story viewed",
    params(("id" = Uuid, Path, description = "story id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the story", body = Story),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 404, description = "not found, or not visible to the caller", body = ErrorBody),
        (status = 429, description = "too many writes (Retry-After)", body = ErrorBody),
    )
)]
pub async fn view(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<StoryId>,
) -> Result<axum::Json<Story>> {
    Ok(axum::Json(stories::view(&state, user, id).await?))
}
