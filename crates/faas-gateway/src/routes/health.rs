use axum::Json;
use axum::extract::State;
use faas_api::Health;

use crate::AppState;

/// No auth: load balancers and scripts poll it.
#[utoipa::path(
    get,
    path = "/health",
    operation_id = "health",
    tag = "system",
    responses((status = 200, description = "The server is up", body = faas_api::Health)),
    security(())
)]
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
