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
use axum::routing::{any, get};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

pub(crate) use access::SshEndpoint;

/// The API's routes and their OpenAPI description, from the same annotations: a route
/// cannot exist undocumented, nor a documented one be missing.
pub(crate) fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, api) = OpenApiRouter::with_openapi(crate::openapi::base())
        .routes(routes!(health::health))
        .routes(routes!(execute::execute))
        .routes(routes!(stream::websocket, stream::sse))
        .routes(routes!(pools::prewarm))
        .routes(routes!(pools::list))
        .routes(routes!(contexts::create, contexts::list))
        .routes(routes!(contexts::get, contexts::delete))
        .routes(routes!(instances::create, instances::list))
        .routes(routes!(instances::get, instances::delete))
        .routes(routes!(instances::stop))
        .routes(routes!(instances::start))
        .routes(routes!(instances::exec))
        .routes(routes!(stream::instance_websocket, stream::instance_sse))
        .routes(routes!(instances::read_file, instances::write_file, instances::delete_path))
        .routes(routes!(instances::list_dir))
        .routes(routes!(instances::create_context, instances::contexts))
        .routes(routes!(instances::delete_context))
        .routes(routes!(instances::read_archive, instances::write_archive))
        .routes(routes!(terminal::terminal))
        .routes(routes!(access::issue_ssh, access::revoke_ssh))
        .routes(routes!(access::revoke_ssh_key))
        .routes(routes!(access::expose_port, access::public_ports))
        .routes(routes!(access::close_port))
        .routes(routes!(instances::processes))
        .routes(routes!(instances::process))
        .routes(routes!(instances::wait_process))
        .routes(routes!(instances::kill_process))
        .routes(routes!(instances::stream_process))
        .routes(routes!(snapshots::create, snapshots::list))
        .routes(routes!(snapshots::get, snapshots::delete))
        .routes(routes!(snapshots::restore))
        .routes(routes!(snapshots::tree))
        .routes(routes!(snapshots::branch))
        .routes(routes!(snapshots::merge))
        .routes(routes!(execute::get_execution))
        .routes(routes!(keys::create, keys::list))
        .routes(routes!(keys::revoke))
        .routes(routes!(usage::report))
        .routes(routes!(usage::current))
        .routes(routes!(usage::records))
        .routes(routes!(usage::quotas))
        .routes(routes!(usage::tenant_quotas, usage::set_tenant_quotas))
        .split_for_parts();
    // Not in the document: proxied ports forward any method and body to the instance's own
    // server (README), and /metrics is Prometheus text for scrapers.
    let router = router
        .route("/p/{token}", any(ports::public_root))
        .route("/p/{token}/", any(ports::public_root))
        .route("/p/{token}/{*rest}", any(ports::public_proxy))
        .route("/api/v1/instances/{id}/ports/{port}", any(ports::proxy_root))
        .route("/api/v1/instances/{id}/ports/{port}/", any(ports::proxy_root))
        .route("/api/v1/instances/{id}/ports/{port}/{*rest}", any(ports::proxy))
        .route("/metrics", get(crate::limits::render))
        .route("/api/v1/openapi.json", get(crate::openapi::serve));
    (router, crate::openapi::finish(api))
}
