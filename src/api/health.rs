//! `/health`: the process is up (always 200), with the state of what it depends on.

use axum::extract::State;
use serde_json::{Value, json};

use crate::AppState;

pub async fn health(State(state): State<AppState>) -> axum::Json<Value> {
    let database = if state.store.ping().await.is_ok() {
        "ok"
    } else {
        "down"
    };
    axum::Json(json!({
        "status": "ok",
        "database": { "engine": state.store.engine().name(), "status": database },
        "sockets": state.hub.socket_count(),
        // Cluster fan-out: `disabled` on a single node, `down` while Redis is unreachable (this
        // node then serves its own users only).
        "redis": match state.hub.broker() {
            Some(broker) => json!(broker.status()),
            None => json!({ "status": "disabled" }),
        },
    }))
}
