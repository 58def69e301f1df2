//! Routes, one file per resource.

mod access;
mod contexts;
mod execute;
mod health;
mod instances;
mod keys;
mod pools;
mod ports;
mod snapshots;
mod stream;
mod terminal;
mod usage;

use axum::Router;
use axum::routing::{any, delete, get, post};

use crate::AppState;

pub(crate) use access::SshEndpoint;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health::health))
        .route("/api/v1/execute", post(execute::execute))
        .route("/api/v1/execute/stream", get(stream::websocket).post(stream::sse))
        .route("/api/v1/prewarm", post(pools::prewarm))
        .route("/api/v1/pools", get(pools::list))
        .route("/api/v1/contexts", post(contexts::create).get(contexts::list))
        .route("/api/v1/contexts/{id}", get(contexts::get).delete(contexts::delete))
        .route("/api/v1/instances", post(instances::create).get(instances::list))
        .route("/api/v1/instances/{id}", get(instances::get).delete(instances::delete))
        .route("/api/v1/instances/{id}/stop", post(instances::stop))
        .route("/api/v1/instances/{id}/start", post(instances::start))
        .route("/api/v1/instances/{id}/exec", post(instances::exec))
        .route(
            "/api/v1/instances/{id}/exec/stream",
            get(stream::instance_websocket).post(stream::instance_sse),
        )
        .route(
            "/api/v1/instances/{id}/files",
            get(instances::read_file).put(instances::write_file).delete(instances::delete_path),
        )
        .route("/api/v1/instances/{id}/files/list", get(instances::list_dir))
        .route(
            "/api/v1/instances/{id}/contexts",
            post(instances::create_context).get(instances::contexts),
        )
        .route("/api/v1/instances/{id}/contexts/{context_id}", delete(instances::delete_context))
        .route(
            "/api/v1/instances/{id}/files/archive",
            get(instances::read_archive).put(instances::write_archive),
        )
        .route("/api/v1/instances/{id}/terminal", get(terminal::terminal))
        .route("/api/v1/instances/{id}/ssh", get(access::issue_ssh).delete(access::revoke_ssh))
        .route("/api/v1/instances/{id}/ssh/keys/{key_id}", delete(access::revoke_ssh_key))
        .route(
            "/api/v1/instances/{id}/public-ports",
            post(access::expose_port).get(access::public_ports),
        )
        .route("/api/v1/instances/{id}/public-ports/{port}", delete(access::close_port))
        .route("/p/{token}", any(ports::public_root))
        .route("/p/{token}/", any(ports::public_root))
        .route("/p/{token}/{*rest}", any(ports::public_proxy))
        .route("/api/v1/instances/{id}/ports/{port}", any(ports::proxy_root))
        .route("/api/v1/instances/{id}/ports/{port}/", any(ports::proxy_root))
        .route("/api/v1/instances/{id}/ports/{port}/{*rest}", any(ports::proxy))
        .route("/api/v1/instances/{id}/processes", get(instances::processes))
        .route("/api/v1/instances/{id}/processes/{pid}", get(instances::process))
        .route("/api/v1/instances/{id}/processes/{pid}/wait", post(instances::wait_process))
        .route("/api/v1/instances/{id}/processes/{pid}/kill", post(instances::kill_process))
        .route("/api/v1/instances/{id}/processes/{pid}/stream", get(instances::stream_process))
        .route("/api/v1/snapshots", post(snapshots::create).get(snapshots::list))
        .route("/api/v1/snapshots/{id}", get(snapshots::get).delete(snapshots::delete))
        .route("/api/v1/snapshots/{id}/restore", post(snapshots::restore))
        .route("/api/v1/snapshots/{id}/tree", get(snapshots::tree))
        .route("/api/v1/branches", post(snapshots::branch))
        .route("/api/v1/branches/merge", post(snapshots::merge))
        .route("/api/v1/executions/{id}", get(execute::get_execution))
        .route("/api/v1/keys", post(keys::create).get(keys::list))
        .route("/api/v1/keys/{id}", delete(keys::revoke))
        .route("/api/v1/usage", get(usage::report))
        .route("/api/v1/usage/current", get(usage::current))
        .route("/api/v1/usage/records", get(usage::records))
        .route("/api/v1/quotas", get(usage::quotas))
        .route(
            "/api/v1/tenants/{tenant}/quotas",
            get(usage::tenant_quotas).put(usage::set_tenant_quotas),
        )
        .route("/metrics", get(crate::limits::render))
}
