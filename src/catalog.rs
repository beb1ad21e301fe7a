//! Which names a client may send as `model`, and what each one loads: configured models and
//! their aliases first, then every `org/name` found in a models directory.

use std::collections::HashMap;

use crate::config::Config;
use crate::model::source::{is_hub_id, looks_like_model};
use crate::model::{HubSettings, ModelSource, ModelSpec};

pub struct Catalog {
    /// Configured models in file order, each with its `preload` flag.
    configured: Vec<(ModelSpec, bool)>,
    /// Every configured name and alias, to its index in `configured`.
    names: HashMap<String, usize>,
    hub: HubSettings,
}

/// A servable model as `/v1/models` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub source: String,
}

impl Catalog {
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let mut configured = Vec::new();
        let mut names = HashMap::new();
        for (i, model) in config.models.iter().enumerate() {
            let source = ModelSource::parse(&model.source)
                .map_err(|e| format!("models[{i}].source: {e}"))?;
            let name = model.effective_name();
            let spec = ModelSpec {
                onnx_file: model.onnx_file.clone(),
                pooling: model.pooling,
                normalize: model.normalize,
                max_seq_length: model.max_seq_length,
                batching: model.batching,
                ..ModelSpec::new(name.clone(), source)
            };
            names.insert(name, i);
            for alias in &model.aliases {
                names.insert(alias.clone(), i);
            }
            configured.push((spec, model.preload));
        }
        Ok(Self {
            configured,
            names,
            hub: HubSettings {
                models_dirs: config.models_dirs.clone(),
            },
        })
    }

    pub fn hub(&self) -> &HubSettings {
        &self.hub
    }

    /// The spec that `name` loads; aliases resolve to their model's canonical name, so a
    /// model reached by two names is loaded once.
    pub fn lookup(&self, name: &str) -> Option<ModelSpec> {
        if let Some(&i) = self.names.get(name) {
            return Some(self.configured[i].0.clone());
        }
        self.hub
            .find_in_models_dirs(name)
            .map(|dir| ModelSpec::new(name, ModelSource::Dir(dir)))
    }

    /// Models to load before serving.
    pub fn preloads(&self) -> impl Iterator<Item = &ModelSpec> {
        self.configured
            .iter()
            .filter(|(_, preload)| *preload)
            .map(|(spec, _)| spec)
    }

    /// Every servable name: configured models, then the models directories' contents, sorted.
    pub fn entries(&self) -> Vec<Entry> {
        let mut entries: Vec<Entry> = self
            .configured
            .iter()
            .map(|(spec, _)| Entry {
                id: spec.name.clone(),
                source: spec.source.to_string(),
            })
            .collect();
        let mut found = Vec::new();
        for dir in &self.hub.models_dirs {
            let Ok(orgs) = std::fs::read_dir(dir) else {
                continue;
            };
            for org in orgs.flatten().filter(|e| e.path().is_dir()) {
                let Ok(models) = std::fs::read_dir(org.path()) else {
                    continue;
                };
                for model in models.flatten().filter(|e| looks_like_model(&e.path())) {
                    let id = format!(
                        "{}/{}",
                        org.file_name().to_string_lossy(),
                        model.file_name().to_string_lossy()
                    );
                    if is_hub_id(&id)
                        && !self.names.contains_key(&id)
                        && !found.iter().any(|e: &Entry| e.id == id)
                    {
                        found.push(Entry {
                            id,
                            source: model.path().display().to_string(),
                        });
                    }
                }
            }
        }
        found.sort_by(|a, b| a.id.cmp(&b.id));
        entries.extend(found);
        entries
    }
}
