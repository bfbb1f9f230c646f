//! Finding other users.

use crate::{
    AppState,
    error::{Error, Result},
    model::{User, UserId},
};

pub const DEFAULT_SEARCH_LIMIT: i64 = 50;
pub const MAX_SEARCH_LIMIT: i64 = 1000;
const MAX_QUERY_LEN: usize = 100;

/// Users matching `query` in username, name or email (all users when empty), caller excluded,
/// by username; `after` is the last username of the previous page.
pub async fn search(
    state: &AppState,
    caller: UserId,
    query: Option<&str>,
    after: Option<&str>,
    limit: Option<i64>,
) -> Result<Vec<User>> {
    let query = query.map(str::trim).unwrap_or("");
    if query.chars().count() > MAX_QUERY_LEN {
        return Err(Error::invalid(format!(
            "q must be at most {MAX_QUERY_LEN} characters"
        )));
    }
    let limit = limit
        .unwrap_or(DEFAULT_SEARCH_LIMIT)
        .clamp(1, MAX_SEARCH_LIMIT);
    state
        .store
        .users()
        .search_users(caller, query, after, limit)
        .await
}

/// The user registered with exactly this email (any case); looking oneself up is an error.
pub async fn find_by_email(state: &AppState, caller: UserId, email: &str) -> Result<User> {
    let user = state
        .store
        .users()
        .user_by_email(&email.trim().to_lowercase())
        .await?
        .ok_or(Error::NotFound("user"))?;
    if user.id == caller {
        return Err(Error::invalid("that is your own email"));
    }
    Ok(user)
}
