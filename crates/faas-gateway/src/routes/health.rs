use axum::Json;
use axum::extract::State;
use faas_api::Health;

use crate::AppState;

/// No auth: load balancers and scripts poll it.
pub async fn health(State(state): State<AppState>) -> Json<Health> {
    let sandboxes = state.engine.sandboxes();
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        cgroup: sandboxes.cgroups().version().as_str().into(),
        running_sandboxes: sandboxes.running() as u64,
        launcher_restarts: sandboxes.launcher_restarts(),
    })
}
