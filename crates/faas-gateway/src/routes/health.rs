use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use faas_api::Health;

use crate::AppState;

/// No auth: load balancers and scripts poll it. 503 when the launcher is gone.
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let sandboxes = state.engine.sandboxes();
    let alive = sandboxes.launcher_alive();
    let health = Health {
        status: if alive { "ok" } else { "launcher_down" }.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        cgroup: sandboxes.cgroups().version().as_str().into(),
        running_sandboxes: sandboxes.running() as u64,
    };
    (
        if alive {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(health),
    )
}
