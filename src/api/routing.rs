//! Declaring a route once: the handler's `#[utoipa::path]` gives both the path it is served
//! at and its entry in the OpenAPI document, so each API module returns its own router and
//! `api::router` only merges them.

use std::sync::Arc;

use utoipa::openapi::{Components, OpenApi, path::Paths};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

use super::state::AppState;

/// A module's routes, with their OpenAPI paths.
pub type ApiRouter = OpenApiRouter<Arc<AppState>>;

/// The routes of `handlers` (from `utoipa_axum::routes!`, all at one documented path), served
/// and documented at that path and at each of `aliases`, which answer exactly as it does.
///
/// Model ids contain a slash, so a path's `{id}` takes the rest of the path: axum serves
/// `/v1/models/{id}` as `/v1/models/{*id}`, and `/admin/models/{id}/load` as
/// `/admin/models/{*id}`, where the handler reads the action from the id's end.
pub fn serve(handlers: UtoipaMethodRouter<Arc<AppState>>, aliases: &[&str]) -> ApiRouter {
    let (schemas, paths, method_router) = handlers;
    let mut documented = Paths::new();
    let mut router = axum::Router::new();
    for (path, item) in paths.paths {
        for at in std::iter::once(path.as_str()).chain(aliases.iter().copied()) {
            documented.paths.insert(at.to_string(), item.clone());
            router = router.route(&axum_path(at), method_router.clone());
        }
    }
    let mut components = Components::new();
    components.schemas.extend(schemas);
    let mut document = OpenApi::default();
    document.paths = documented;
    document.components = Some(components);
    OpenApiRouter::with_openapi(document).merge(router.into())
}

/// The path axum matches for an OpenAPI path (see `serve`).
pub fn axum_path(documented: &str) -> String {
    match documented.find("{id}") {
        Some(at) => format!("{}{{*id}}", &documented[..at]),
        None => documented.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_id_takes_the_rest_of_the_path() {
        assert_eq!(axum_path("/v1/embeddings"), "/v1/embeddings");
        assert_eq!(axum_path("/v1/models/{id}"), "/v1/models/{*id}");
        assert_eq!(axum_path("/admin/models/{id}/load"), "/admin/models/{*id}");
    }
}
