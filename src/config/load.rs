//! Reading the file, applying the command line, and validating the result.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use super::{Config, ConfigError, ModelConfig, Overrides, model_from_spec};
use crate::model::ModelSource;

impl Config {
    /// Reads `path` (or starts from the defaults), applies the overrides and validates.
    pub fn load(path: Option<&Path>, overrides: Overrides) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        config.apply(overrides)?;
        config.validate()?;
        let defaults = config.model_defaults();
        for model in &mut config.models {
            model.inherit(&defaults);
        }
        Ok(config)
    }

    fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let parse_error = |message: String| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        };
        let document = toml::Deserializer::parse(&text).map_err(|e| parse_error(e.to_string()))?;
        // The key that does not parse leads the message, e.g. `models[0].source: ...`.
        let mut config: Config = serde_path_to_error::deserialize(document).map_err(|e| {
            let key = e.path().to_string();
            parse_error(format!("`{key}`: {}", e.into_inner()))
        })?;
        // Paths in a config file mean what they say from where the file lives, not from
        // wherever the server happens to be started.
        let base = path.parent().unwrap_or(Path::new("."));
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        config.models_dirs.iter_mut().for_each(rebase);
        config.runtime.library.as_mut().map(rebase);
        config.server.api_key_file.as_mut().map(rebase);
        config.server.data_dir.as_mut().map(rebase);
        for model in &mut config.models {
            if let ModelSource::Dir(dir) = &mut model.source
                && matches!(
                    dir.components().next(),
                    Some(Component::CurDir | Component::ParentDir)
                )
            {
                *dir = base.join(&*dir);
            }
        }
        Ok(config)
    }

    fn apply(&mut self, o: Overrides) -> Result<(), ConfigError> {
        let Overrides {
            server,
            models,
            cache,
            batcher,
            runtime,
        } = o;
        set(&mut self.server.host, server.host);
        set(&mut self.server.port, server.port);
        self.server.port_file = server.port_file.or(self.server.port_file.take());
        set(&mut self.server.max_body_bytes, server.max_body_bytes);
        self.server.api_keys.extend(server.api_keys);
        self.server.api_key_file = server.api_key_file.or(self.server.api_key_file.take());
        set(&mut self.server.max_connections, server.max_connections);
        set(
            &mut self.server.max_connections_per_ip,
            server.max_connections_per_ip,
        );
        set(&mut self.server.drain_delay, server.drain_delay);
        self.server.default_model = server.default_model.or(self.server.default_model.take());
        self.server.data_dir = server.data_dir.or(self.server.data_dir.take());
        self.server.replica_name = server.replica_name.or(self.server.replica_name.take());
        self.runtime.library = runtime.ort_library.or(self.runtime.library.take());
        self.runtime.intra_threads = runtime.intra_threads.or(self.runtime.intra_threads);
        set(&mut self.runtime.device, runtime.device);
        set(&mut self.runtime.spinning, runtime.spinning);
        set(&mut self.cache.max_loaded_models, cache.max_loaded_models);
        self.cache.allow_hub_downloads |= cache.allow_hub_downloads;
        let b = &mut self.batcher;
        b.max_batch_size = batcher.max_batch_size.or(b.max_batch_size);
        b.max_batch_tokens = batcher.max_batch_tokens.or(b.max_batch_tokens);
        b.max_queued_inputs = batcher.max_queued_inputs.or(b.max_queued_inputs);
        if let Some(file) = self.server.api_key_file.take() {
            let text = std::fs::read_to_string(&file).map_err(|e| {
                ConfigError::invalid(
                    "server.api_key_file",
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            self.server.api_keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from),
            );
        }
        self.models_dirs.extend(models.models_dirs);
        for spec in &models.models {
            self.models.push(model_from_spec("--model", spec)?);
        }
        for spec in &models.pins {
            self.pin(spec)?;
        }
        Ok(())
    }

    /// `--pin`: the configured model of that name (or alias), else a new one from the spec;
    /// preloaded either way, and never evicted.
    fn pin(&mut self, spec: &str) -> Result<(), ConfigError> {
        let named = |m: &ModelConfig| {
            m.effective_name() == spec.trim() || m.aliases.iter().any(|a| a == spec.trim())
        };
        let index = match self.models.iter().position(named) {
            Some(index) => index,
            None => {
                let model = model_from_spec("--pin", spec)?;
                let same = |m: &ModelConfig| m.effective_name() == model.effective_name();
                self.models.iter().position(same).unwrap_or_else(|| {
                    self.models.push(model);
                    self.models.len() - 1
                })
            }
        };
        let model = &mut self.models[index];
        model.pin = true;
        model.preload = true;
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.server.host.trim().is_empty() {
            return Err(ConfigError::invalid("server.host", "must not be empty"));
        }
        if self.server.max_body_bytes == 0 {
            return Err(ConfigError::invalid(
                "server.max_body_bytes",
                "must be at least 1",
            ));
        }
        if let Some(name) = &self.server.replica_name
            && !crate::batch::ids::valid_replica_name(name)
        {
            return Err(ConfigError::invalid(
                "server.replica_name",
                format!(
                    "`{name}` is not a DNS label: 1 to 63 lowercase letters, digits and `-`, \
                     starting and ending with a letter or digit"
                ),
            ));
        }
        let batches = &self.batches;
        for (key, value) in [
            (
                "batches.max_requests_per_batch",
                batches.max_requests_per_batch,
            ),
            ("batches.lines_in_flight", batches.lines_in_flight),
            ("batches.max_active_batches", batches.max_active_batches),
            (
                "batches.max_file_bytes",
                batches.max_file_bytes.min(1) as usize,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        if self.server.max_connections == 0 {
            return Err(ConfigError::invalid(
                "server.max_connections",
                "must be at least 1",
            ));
        }
        for (key, timeout) in [
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            ("server.keep_alive_timeout", self.server.keep_alive_timeout),
            ("server.body_timeout", self.server.body_timeout),
        ] {
            if timeout.is_zero() {
                return Err(ConfigError::invalid(key, "must be longer than 0s"));
            }
        }
        if self.runtime.intra_threads == Some(0) {
            return Err(ConfigError::invalid(
                "runtime.intra_threads",
                "must be at least 1 (leave it unset to use every core)",
            ));
        }
        if self.server.api_keys.iter().any(|k| k.trim().is_empty()) {
            return Err(ConfigError::invalid(
                "server.api_keys",
                "an API key must not be empty",
            ));
        }
        let positive = [
            (
                "server.max_inputs_per_request",
                Some(self.server.max_inputs_per_request),
            ),
            (
                "server.max_tokens_per_request",
                Some(self.server.max_tokens_per_request),
            ),
            (
                "cache.max_loaded_models",
                Some(self.cache.max_loaded_models),
            ),
            ("batcher.max_batch_size", self.batcher.max_batch_size),
            ("batcher.max_batch_tokens", self.batcher.max_batch_tokens),
            ("batcher.max_queued_inputs", self.batcher.max_queued_inputs),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .chain(self.models.iter().enumerate().flat_map(|(i, m)| {
            [
                (format!("models[{i}].max_batch_size"), m.max_batch_size),
                (format!("models[{i}].max_batch_tokens"), m.max_batch_tokens),
                (
                    format!("models[{i}].max_queued_inputs"),
                    m.max_queued_inputs,
                ),
            ]
        }));
        for (key, value) in positive {
            if value == Some(0) {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        if self.server.body_buffer_budget < self.server.max_body_bytes as u64 {
            return Err(ConfigError::invalid(
                "server.body_buffer_budget",
                format!(
                    "must hold at least one body of server.max_body_bytes ({} bytes)",
                    self.server.max_body_bytes
                ),
            ));
        }
        let pinned = self.models.iter().filter(|m| m.pin).count();
        if pinned > self.cache.max_loaded_models {
            return Err(ConfigError::invalid(
                "cache.max_loaded_models",
                format!(
                    "{pinned} models are pinned but at most {} may be loaded",
                    self.cache.max_loaded_models
                ),
            ));
        }
        let mut owners: HashMap<String, String> = HashMap::new();
        for (i, model) in self.models.iter().enumerate() {
            let key = format!("models[{i}]");
            if model.source == ModelSource::default() {
                return Err(ConfigError::invalid(
                    format!("{key}.source"),
                    "is required: a local directory or a Hub id `org/name`",
                ));
            }
            if model.max_seq_length == Some(0) {
                return Err(ConfigError::invalid(
                    format!("{key}.max_seq_length"),
                    "must be at least 1",
                ));
            }
            let names = std::iter::once((format!("{key}.name"), model.effective_name())).chain(
                model
                    .aliases
                    .iter()
                    .enumerate()
                    .map(|(j, a)| (format!("{key}.aliases[{j}]"), a.clone())),
            );
            for (name_key, name) in names {
                if name.trim().is_empty() {
                    return Err(ConfigError::invalid(name_key, "must not be empty"));
                }
                if let Some(owner) = owners.insert(name.clone(), name_key.clone()) {
                    return Err(ConfigError::invalid(
                        name_key,
                        format!("`{name}` is already used by `{owner}`"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A flag given on the command line replaces the file's value.
fn set<T>(target: &mut T, flag: Option<T>) {
    if let Some(value) = flag {
        *target = value;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("embedserve.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path), Overrides::default())
    }

    /// The config files shipped in `config/`, and the TOML blocks of the README and the docs.
    fn shipped_configs() -> Vec<(String, String)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut found: Vec<(String, String)> = std::fs::read_dir(root.join("config"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
            .map(|e| {
                let text = std::fs::read_to_string(e.path()).unwrap();
                (e.path().display().to_string(), text)
            })
            .collect();
        let mut pages = vec![root.join("README.md")];
        pages.extend(
            std::fs::read_dir(root.join("docs/src"))
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .filter(|path| path.extension().is_some_and(|x| x == "md")),
        );
        for page in pages {
            let text = std::fs::read_to_string(&page).unwrap();
            for (i, block) in text.split("```toml\n").skip(1).enumerate() {
                let block = block.split("```").next().unwrap_or_default();
                found.push((
                    format!("{} TOML block {i}", page.display()),
                    block.to_string(),
                ));
            }
        }
        found
    }

    #[test]
    fn every_shipped_config_loads_with_its_examples() {
        let shipped = shipped_configs();
        assert!(
            shipped
                .iter()
                .any(|(name, _)| name.ends_with("embedserve.toml"))
        );
        for (name, text) in shipped {
            parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            // A commented-out [[models]] example, uncommented, must load too.
            if let Some(at) = text.find("# [[models]]") {
                let example: String = text[at..]
                    .lines()
                    .filter(|l| l.starts_with("# ") && !l.starts_with("# # "))
                    .map(|l| format!("{}\n", &l[2..]))
                    .collect();
                let with_example = format!("{}{example}", &text[..at]);
                let config = parse(&with_example).unwrap_or_else(|e| panic!("{name} example: {e}"));
                assert_eq!(config.models.len(), 1, "{name}");
            }
        }
    }

    #[test]
    fn batch_limits_left_unset_follow_the_device_and_set_ones_hold_on_every_device() {
        let config = parse(
            "[batcher]\nmax_batch_tokens = 16384\n\
             [[models]]\nname = \"a\"\nsource = \"a/b\"\nmax_batch_size = 32\n\
             [[models]]\nname = \"c\"\nsource = \"c/d\"\n",
        )
        .unwrap();
        // Explicit values equal to the CPU defaults stay on a GPU.
        let a = config.models[0].batch_limits(true);
        assert_eq!((a.max_batch_size, a.max_batch_tokens), (32, 16_384));
        let c = &config.models[1];
        assert_eq!(c.batch_limits(true).max_batch_size, 128);
        assert_eq!(c.batch_limits(false).max_batch_size, 32);
        let found = config.model_defaults();
        assert_eq!(found.batch_limits(true).max_queued_inputs, 4096);
        assert_eq!(found.batch_limits(true).max_batch_tokens, 16_384);
    }

    #[test]
    fn a_cache_of_no_models_is_refused() {
        let err = parse("[cache]\nmax_loaded_models = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cache.max_loaded_models"), "{err}");
    }

    #[test]
    fn a_replica_name_that_is_no_dns_label_is_refused() {
        let err = parse("[server]\nreplica_name = \"Replica_1\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.replica_name"), "{err}");
        assert!(parse("[server]\nreplica_name = \"embedserve-0\"\n").is_ok());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("[server]\nhots = \"x\"\n").unwrap_err().to_string();
        assert!(err.contains("hots"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = parse("[server]\nport = \"eighty\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("port"), "{err}");
    }

    #[test]
    fn duplicate_names_are_rejected_with_both_keys() {
        let err = parse(
            "[[models]]\nsource = \"a/b\"\n[[models]]\nsource = \"c/d\"\naliases = [\"a/b\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("models[1].aliases[0]"), "{err}");
        assert!(err.contains("models[0].name"), "{err}");
    }

    #[test]
    fn sizes_and_durations_are_read_from_the_file() {
        let config =
            parse("[cache]\nidle_timeout = \"10m\"\nmax_model_memory = \"512MiB\"\n").unwrap();
        assert_eq!(config.cache.idle_timeout, Some(Duration::from_secs(600)));
        assert_eq!(config.cache.max_model_memory, Some(512 << 20));
        let err = parse("[cache]\nidle_timeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("idle_timeout") && err.contains("soon"),
            "{err}"
        );
    }

    #[test]
    fn more_pins_than_room_is_rejected() {
        let err = parse("[cache]\nmax_loaded_models = 1\n[[models]]\nsource = \"a/b\"\npin = true\n[[models]]\nsource = \"c/d\"\npin = true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cache.max_loaded_models"), "{err}");
    }

    #[test]
    fn unknown_pooling_mode_is_rejected() {
        let err = parse("[[models]]\nsource = \"a/b\"\npooling = \"median\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("median"), "{err}");
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let config = parse("models_dirs = [\"models\"]\n").unwrap();
        assert!(config.models_dirs[0].is_absolute());
        assert!(config.models_dirs[0].ends_with("models"));
    }

    #[test]
    fn overrides_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[server]\nport = 1234\nhost = \"0.0.0.0\"\n").unwrap();
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            overrides: Overrides,
        }
        let args = [
            "embedserve",
            "--port",
            "0",
            "--model",
            "mini=org/model@v2",
            "--max-batch-size",
            "8",
        ];
        let overrides = <Cli as clap::Parser>::try_parse_from(args)
            .unwrap()
            .overrides;
        let config = Config::load(Some(&path), overrides).unwrap();
        assert_eq!(config.server.port, 0);
        assert_eq!(config.batcher.max_batch_size, Some(8));
        assert_eq!(config.server.host, "0.0.0.0");
        assert_eq!(config.models[0].effective_name(), "mini");
        assert_eq!(config.models[0].source.to_string(), "org/model@v2");
        assert!(config.models[0].preload);
    }

    #[test]
    fn pin_names_a_configured_model_or_adds_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[[models]]\nname = \"small\"\nsource = \"org/small\"\naliases = [\"s\"]\n",
        )
        .unwrap();
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            overrides: Overrides,
        }
        let pins = |args: &[&str]| {
            let args = ["embedserve"].iter().chain(args);
            let overrides = <Cli as clap::Parser>::try_parse_from(args)
                .unwrap()
                .overrides;
            Config::load(Some(&path), overrides).map(|c| {
                c.models
                    .iter()
                    .map(|m| (m.effective_name(), m.pin && m.preload))
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(pins(&["--pin", "s"]).unwrap(), [("small".into(), true)]);
        assert_eq!(
            pins(&["--pin", "org/big", "--model", "org/big"]).unwrap(),
            [("small".into(), false), ("org/big".into(), true)]
        );
        let error = pins(&["--pin", "a="]).unwrap_err().to_string();
        assert!(error.contains("--pin"), "{error}");
    }

    #[test]
    fn spec_names_default_to_the_hub_id_or_folder() {
        assert_eq!(
            model_from_spec("--model", "org/name@rev")
                .unwrap()
                .effective_name(),
            "org/name"
        );
        assert_eq!(
            model_from_spec("--model", "./models/my-model/")
                .unwrap()
                .effective_name(),
            "my-model"
        );
        assert!(model_from_spec("--model", "name=").is_err());
    }
}
