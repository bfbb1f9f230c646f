//! `/api/stories`: post, list, mark viewed.

use axum::{extract::State, http::StatusCode};

use super::{
    extract::{Json, Path, Query},
    paging::PageQuery,
};
use crate::{
    AppState,
    auth::AuthUser,
    domain::stories::{self, NewStoryRequest},
    error::Result,
    model::{Story, StoryId},
};

pub async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Json(body): Json<NewStoryRequest>,
) -> Result<(StatusCode, axum::Json<Story>)> {
    let story = stories::create(&state, user, body).await?;
    Ok((StatusCode::CREATED, axum::Json(story)))
}

pub async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(page): Query<PageQuery<StoryId>>,
) -> Result<axum::Json<Vec<Story>>> {
    let stories = stories::list(&state, user, page.before, page.limit).await?;
    Ok(axum::Json(stories))
}

pub async fn view(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<StoryId>,
) -> Result<axum::Json<Story>> {
    Ok(axum::Json(stories::view(&state, user, id).await?))
}
