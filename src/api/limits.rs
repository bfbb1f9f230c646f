//! Per-user budgets for the REST API: writes, and lookups of other users. Each signed-in user
//! has their own buckets, so one client flooding the API slows down only itself.
//!
//! The defaults leave room for the real app: it opens a conversation (`POST /conversations`)
//! with every contact at each start, marks each message read with a request of its own, and
//! searches users as the user types (limits 10, 50 and 1000).

use axum::{
    extract::{MatchedPath, Request, State},
    http::Method,
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{
    AppState,
    auth::{self, Authenticated},
    rate_limit::RateLimiter,
};

/// Routes that find other users (account enumeration, and a large page each).
const LOOKUPS: [&str; 2] = ["/api/users/search", "/api/users/find-by-email"];
/// Writes made before there is a user: limited per client address instead (`auth.rs`).
const PUBLIC_WRITES: [&str; 3] = ["/api/auth/register", "/api/auth/login", "/api/auth/refresh"];
/// The admin API's routes, called with the operator's token.
const ADMIN: &str = "/api/admin/";

/// Takes one token from the caller's bucket for this route, if the route has one: 429 with
/// `Retry-After` when it is empty. The caller is authenticated here once; the handler's
/// `AuthUser` reuses it. A request without a valid token goes on, to be refused by its handler.
pub async fn per_user(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let Some(limiter) = route.and_then(|r| budget(&state, request.method(), &r)) else {
        return next.run(request).await;
    };
    let (mut parts, body) = request.into_parts();
    if let Some(claims) = match auth::bearer_token(&parts) {
        Some(token) => auth::authenticate(&state, token).await.ok(),
        None => None,
    } {
        if let Err(e) = limiter.take(claims.user_id) {
            return e.into_response();
        }
        parts.extensions.insert(Authenticated(claims));
    }
    next.run(Request::from_parts(parts, body)).await
}

fn budget<'a>(state: &'a AppState, method: &Method, route: &str) -> Option<&'a RateLimiter> {
    let reads = [Method::GET, Method::HEAD, Method::OPTIONS];
    if LOOKUPS.contains(&route) {
        Some(&state.lookups)
    } else if reads.contains(method)
        || PUBLIC_WRITES.contains(&route)
        // Not a user's: `admin.rs` limits it per client address.
        || route.starts_with(ADMIN)
    {
        None
    } else {
        route.starts_with("/api/").then_some(&state.writes)
    }
}
