//! Which names a client may send as `model`, and what each one loads: configured models and
//! their aliases first, then every `org/name` found in a models directory, then (only when
//! allowed) any Hub id.

use std::collections::HashMap;
use std::time::Duration;

use crate::config::{Config, ModelConfig};
use crate::model::source::{is_hub_id, looks_like_model};
use crate::model::{HubSettings, ModelSource, ModelSpec};

pub struct Catalog {
    /// Configured models in file order.
    configured: Vec<ModelSpec>,
    /// Every configured name and alias, to its index in `configured`.
    names: HashMap<String, usize>,
    hub: HubSettings,
    allow_hub_downloads: bool,
    /// Settings for models that are not configured: the server-wide defaults.
    defaults: ModelConfig,
}

impl Catalog {
    pub fn from_config(config: &Config) -> Self {
        let mut configured = Vec::new();
        let mut names = HashMap::new();
        for (i, model) in config.models.iter().enumerate() {
            let name = model.effective_name();
            names.insert(name.clone(), i);
            for alias in &model.aliases {
                names.insert(alias.clone(), i);
            }
            configured.push(ModelSpec {
                name,
                config: model.clone(),
            });
        }
        Self {
            configured,
            names,
            hub: HubSettings {
                models_dirs: config.models_dirs.clone(),
            },
            allow_hub_downloads: config.cache.allow_hub_downloads,
            defaults: config.model_defaults(),
        }
    }

    /// A model that is not configured: the server-wide defaults apply.
    fn found(&self, name: &str, source: ModelSource) -> ModelSpec {
        ModelSpec {
            name: name.to_string(),
            config: ModelConfig {
                source,
                ..self.defaults.clone()
            },
        }
    }

    pub fn hub(&self) -> &HubSettings {
        &self.hub
    }

    /// The name a model is cached under: aliases map to their model's name, so a model
    /// reached by two names loads once. Touches no file.
    pub fn canonical<'a>(&'a self, name: &'a str) -> &'a str {
        match self.names.get(name) {
            Some(&i) => &self.configured[i].name,
            None => name,
        }
    }

    /// Whether `name` is a configured model or alias.
    pub fn is_configured(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// What `name` loads, if it is servable. May look at the models directories.
    pub fn lookup(&self, name: &str) -> Option<ModelSpec> {
        if let Some(&i) = self.names.get(name) {
            return Some(self.configured[i].clone());
        }
        if let Some(dir) = self.hub.find_in_models_dirs(name) {
            return Some(self.found(name, ModelSource::Dir(dir)));
        }
        match ModelSource::parse(name) {
            Ok(source @ ModelSource::Hub { .. }) if self.allow_hub_downloads => {
                Some(self.found(name, source))
            }
            _ => None,
        }
    }

    /// Idle timeouts set on configured models.
    pub fn configured_idle_timeouts(&self) -> impl Iterator<Item = Duration> + '_ {
        self.configured.iter().filter_map(|s| s.config.idle_timeout)
    }

    /// Models to load before serving.
    pub fn preloads(&self) -> impl Iterator<Item = &ModelSpec> {
        self.configured.iter().filter(|s| s.config.preload)
    }

    /// Every servable name that can be listed: configured models, then the models
    /// directories' contents, sorted. (Hub ids allowed on request are not enumerable.)
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.configured.iter().map(|s| s.name.clone()).collect();
        let mut found = Vec::new();
        for dir in &self.hub.models_dirs {
            let Ok(orgs) = std::fs::read_dir(dir) else {
                continue;
            };
            // A folder that is a model itself holds its parts (`onnx/`, a Router's routes),
            // not models.
            let orgs = orgs
                .flatten()
                .filter(|e| e.path().is_dir() && !looks_like_model(&e.path()));
            for org in orgs {
                let Ok(models) = std::fs::read_dir(org.path()) else {
                    continue;
                };
                for model in models.flatten().filter(|e| looks_like_model(&e.path())) {
                    let id = format!(
                        "{}/{}",
                        org.file_name().to_string_lossy(),
                        model.file_name().to_string_lossy()
                    );
                    if is_hub_id(&id) && !self.names.contains_key(&id) && !found.contains(&id) {
                        found.push(id);
                    }
                }
            }
        }
        found.sort();
        names.extend(found);
        names
    }
}
