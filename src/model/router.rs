//! Asymmetric models: sentence-transformers 5's `Router` module sends a query and a document
//! through different modules (`Router.for_query_document`, inference-free SPLADE). Each route
//! loads as a model of its own; the modules after the Router follow every route. A request
//! picks its route with `input_type`, as `encode_query` / `encode_document` do; none takes
//! the default route, as plain `encode()` does.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use serde::Deserialize;

use super::st_config::{ModuleEntry, read_json, read_modules};
use super::{LoadError, Model};

/// What a text is to an asymmetric model: the task of `encode_query` or `encode_document`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputType {
    Query,
    Document,
    /// Cohere's tasks: the model's prompt of that name, if it has one, on the default route.
    Classification,
    Clustering,
}

impl InputType {
    /// The route and prompt name sentence-transformers gives the task.
    pub fn key(self) -> &'static str {
        match self {
            Self::Query => "query",
            Self::Document => "document",
            Self::Classification => "classification",
            Self::Clustering => "clustering",
        }
    }
}

impl FromStr for InputType {
    type Err = String;

    /// Also as Cohere spells them (`search_query`, `search_document`), and `passage`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "query" | "search_query" => Ok(Self::Query),
            "document" | "search_document" | "passage" => Ok(Self::Document),
            "classification" => Ok(Self::Classification),
            "clustering" => Ok(Self::Clustering),
            other => Err(format!(
                "`{other}` is not an input type: query (or search_query), document (or \
                 search_document, passage), classification or clustering"
            )),
        }
    }
}

impl fmt::Display for InputType {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.key())
    }
}

impl<'de> Deserialize<'de> for InputType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for InputType {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        String::schema()
    }
}

impl utoipa::ToSchema for InputType {}

/// A Router folder's routes, as `router_config.json` and `modules.json` give them.
#[derive(Debug)]
pub struct RouterConfig {
    /// Each route's modules, then the modules after the Router.
    pub routes: BTreeMap<String, Vec<ModuleEntry>>,
    pub default_route: String,
}

#[derive(Deserialize)]
struct RouterFile {
    types: BTreeMap<String, String>,
    structure: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    parameters: RouterParameters,
}

#[derive(Deserialize, Default)]
struct RouterParameters {
    default_route: Option<String>,
}

impl RouterConfig {
    /// `None` unless the folder's first module is a Router.
    pub fn read(dir: &Path) -> Result<Option<Self>, LoadError> {
        let modules = read_modules(dir)?;
        let Some((first, after)) = modules.split_first() else {
            return Ok(None);
        };
        if first.class_name() != "Router" {
            return Ok(None);
        }
        let path = dir.join(&first.path).join("router_config.json");
        let file: RouterFile = read_json(&dir.join(&first.path), "router_config.json")?
            .ok_or_else(|| LoadError::file(&path, "missing"))?;
        let mut routes = BTreeMap::new();
        for (route, folders) in file.structure {
            let mut modules = Vec::with_capacity(folders.len() + after.len());
            for folder in folders {
                let kind = file.types.get(&folder).cloned().ok_or_else(|| {
                    LoadError::file(&path, format!("route `{route}`: `{folder}` has no type"))
                })?;
                modules.push(ModuleEntry { path: folder, kind });
            }
            if modules.is_empty() {
                return Err(LoadError::file(
                    &path,
                    format!("route `{route}` has no modules"),
                ));
            }
            modules.extend(after.iter().cloned());
            routes.insert(route, modules);
        }
        let default_route = file
            .parameters
            .default_route
            .or_else(|| routes.keys().next().cloned())
            .ok_or_else(|| LoadError::file(&path, "no routes"))?;
        if !routes.contains_key(&default_route) {
            return Err(LoadError::file(
                &path,
                format!("default_route `{default_route}` is not a route"),
            ));
        }
        Ok(Some(Self {
            routes,
            default_route,
        }))
    }

    /// Whether any route is a sparse encoder (for `Task::of_dir`, without loading).
    pub fn is_sparse(&self) -> bool {
        self.routes.values().flatten().any(ModuleEntry::is_sparse)
    }
}

/// The routes of a Router model other than its default one, which is the model itself.
#[derive(Default)]
pub struct Routes {
    pub by_type: BTreeMap<String, Arc<Model>>,
}

impl Model {
    /// What a request's texts are: as it says, else as the model's entry says.
    pub fn input_type(&self, asked: Option<InputType>) -> Option<InputType> {
        asked.or(self.input_type)
    }

    /// The model that encodes texts of `input_type`: this one, or another route's.
    pub fn route(self: &Arc<Self>, input_type: Option<InputType>) -> Arc<Model> {
        self.other_route(input_type)
            .cloned()
            .unwrap_or_else(|| self.clone())
    }

    /// `route` for a borrowed model (the load probe and the `embed` subcommand).
    pub fn route_ref(&self, input_type: Option<InputType>) -> &Model {
        self.other_route(input_type).map_or(self, |route| route)
    }

    fn other_route(&self, input_type: Option<InputType>) -> Option<&Arc<Model>> {
        input_type.and_then(|t| self.routes.by_type.get(t.key()))
    }
}
