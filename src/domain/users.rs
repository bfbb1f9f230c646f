//! Finding other users, as the directory policy (`USER_DIRECTORY`) allows.

use crate::{
    AppState,
    config::DirectoryPolicy,
    error::{Error, Result},
    model::{User, UserId},
    store::UserSearch,
};

pub const DEFAULT_SEARCH_LIMIT: i64 = 50;
pub const MAX_SEARCH_LIMIT: i64 = 1000;
const MAX_QUERY_LEN: usize = 100;
/// Under `search`, the shortest query (trimmed, in characters): shorter ones would page
/// through the directory a letter at a time.
pub const MIN_SEARCH_QUERY: usize = 3;
/// Under `search`, the most users one query returns (there is no next page).
pub const MAX_SEARCH_RESULTS: i64 = 20;

/// Users matching `query` (all users when empty, under `open` and `contacts`), caller and the
/// users the caller blocks excluded, by username; `after` is the last username of the
/// previous page. Another user's email is `""` unless the caller sees them as a contact or
/// typed that email whole.
pub async fn search(
    state: &AppState,
    caller: UserId,
    query: Option<&str>,
    after: Option<&str>,
    limit: Option<i64>,
) -> Result<Vec<User>> {
    let query = query.unwrap_or("");
    // Counted as sent, as the documented `maxLength` counts it.
    if query.chars().count() > MAX_QUERY_LEN {
        return Err(Error::invalid(format!(
            "q must be at most {MAX_QUERY_LEN} characters"
        )));
    }
    let query = query.trim();
    // An empty `after` is the first page, as before.
    let after = after.filter(|a| !a.is_empty());
    let policy = state.config.user_directory;
    let max_limit = match policy {
        DirectoryPolicy::Open | DirectoryPolicy::Contacts => MAX_SEARCH_LIMIT,
        DirectoryPolicy::Search => {
            if query.chars().count() < MIN_SEARCH_QUERY {
                return Err(Error::Invalid {
                    code: "query_too_short",
                    message: format!(
                        "q must be at least {MIN_SEARCH_QUERY} characters (or find a user by their exact email)"
                    ),
                });
            }
            // Refused rather than ignored: a client paging on would be given the same first
            // page again, forever.
            if after.is_some() {
                return Err(Error::Invalid {
                    code: "paging_unavailable",
                    message: format!(
                        "search results are not paged: at most {MAX_SEARCH_RESULTS}, narrow the query"
                    ),
                });
            }
            MAX_SEARCH_RESULTS
        }
    };
    let limit = limit.unwrap_or(DEFAULT_SEARCH_LIMIT).clamp(1, max_limit);
    state
        .store
        .users()
        .search_users(&UserSearch {
            caller,
            query,
            // Under `search` an email is found only through find-by-email.
            match_email: policy != DirectoryPolicy::Search,
            contacts_only: policy == DirectoryPolicy::Contacts,
            consent: state.config.contacts_by_consent,
            after,
            limit,
        })
        .await
}

/// The user registered with exactly this email (any case), under every directory policy: the
/// way to reach someone whose address one knows. The email is in the answer (the caller typed
/// it). Looking oneself up is an error. A user the caller blocks is not found, as in search
/// (only the caller's own blocks: a user who blocks the caller is found, or it would tell).
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
    if super::blocks::blocks(state, caller, user.id).await? {
        return Err(Error::NotFound("user"));
    }
    Ok(user)
}
