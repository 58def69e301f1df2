//! The OpenAPI 3.1 document: built from the handlers' `#[utoipa::path]` annotations and the
//! wire types' schemas (`faas-api`), served at `/api/v1/openapi.json` and checked in as
//! `openapi.json` at the repository's root (a test fails when the two differ, so an API
//! change is always deliberate: `UPDATE_OPENAPI=1 cargo test -p faas-gateway openapi`).

use std::sync::OnceLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "faas",
        description = "Run untrusted code in isolated sandboxes: ephemeral and cached runs, \
                       language contexts, persistent instances, snapshots and branches. \
                       Errors are `{\"error\": {\"code\", \"message\"}}` with the status \
                       that says what went wrong (see the `default` response).",
        license(name = "Apache-2.0")
    ),
    components(schemas(faas_api::ErrorBody, faas_api::StreamEvent, faas_api::StreamInput)),
    modifiers(&Security),
    security(("bearer" = []), ("api_key" = [])),
    tags(
        (name = "execute", description = "Runs in a fresh or warm sandbox, and their records"),
        (name = "streaming", description = "Output as it is produced: WebSocket and Server-Sent Events"),
        (name = "pools", description = "Warm pools for cached runs"),
        (name = "contexts", description = "Interpreters whose globals persist between runs"),
        (name = "instances", description = "Persistent sandboxes"),
        (name = "files", description = "Files of an instance"),
        (name = "processes", description = "Background processes of an instance"),
        (name = "access", description = "SSH and public ports of an instance"),
        (name = "snapshots", description = "Snapshots, restores, branches and merges"),
        (name = "keys", description = "API keys (admin)"),
        (name = "usage", description = "Usage, costs and quotas"),
        (name = "system", description = "Health, metrics, this document"),
    )
)]
struct ApiDoc;

/// Raw bytes in a request body (a file, a tar archive): a binary string, not JSON.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub(crate) struct Binary(#[allow(dead_code)] Vec<u8>);

struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut Document) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// The document's frame, before the routes add their paths.
pub(crate) fn base() -> Document {
    ApiDoc::openapi()
}

/// Adds what every operation shares: any status not listed is an error with the one error
/// body (the gateway maps every failure in one place, `error.rs`).
pub(crate) fn finish(mut api: Document) -> Document {
    let error = ResponseBuilder::new()
        .description(
            "An error: 400 malformed, 401 no or bad key, 403 forbidden or a quota, \
                      404 not found, 409 wrong state, 413 too large, 422 invalid value, 429 \
                      rate limit or quota, 500, 501 not available on this server, 502 nothing \
                      answers on a proxied port, 503 at capacity, 507 disk full",
        )
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
        )
        .build();
    for item in api.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
        ]
        .into_iter()
        .flatten()
        {
            operation.responses.responses.insert("default".into(), error.clone().into());
        }
    }
    api
}

/// The document as served and checked in: pretty JSON with a final newline.
pub(crate) fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let (_, api) = crate::routes::routes();
        api.to_pretty_json().expect("the OpenAPI document serialises") + "\n"
    })
}

/// `GET /api/v1/openapi.json` (no key needed).
pub(crate) async fn serve() -> Response {
    let mut response = document_json().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    #[test]
    fn openapi_json_is_checked_in_and_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi.json");
        let current = super::document_json();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(path, current).expect("write openapi.json");
        }
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == current,
            "openapi.json differs from the API: review the change, then run \
             UPDATE_OPENAPI=1 cargo test -p faas-gateway openapi"
        );
    }
}
