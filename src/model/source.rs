//! Where a model's files come from: a local folder, a models directory that mirrors the Hub
//! (`DIR/org/name`), the hf-hub cache, or a download with hf-hub. Only the files the model's
//! modules need are fetched (its configs, then the graph, Dense weights or static table that
//! `modules.json` calls for), never a repository's other weights.

use std::fmt;
use std::path::{Path, PathBuf};

use hf_hub::api::tokio::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use super::LoadError;
use super::router::RouterConfig;
use super::st_config::{ModuleEntry, read_modules};

/// Where a Hub-layout folder keeps its graph, in the order they are looked for.
pub const DEFAULT_ONNX_FILES: [&str; 2] = ["onnx/model.onnx", "model.onnx"];

/// Files read from a model folder besides the ONNX graph and the pooling configs.
const METADATA_FILES: [&str; 8] = [
    "modules.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "README.md",
];

/// Where a model comes from. Read from the config file (or `--model`) once, when the
/// configuration is loaded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum ModelSource {
    Dir(PathBuf),
    Hub {
        repo: String,
        revision: Option<String>,
    },
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dir(dir) => write!(f, "{}", dir.display()),
            Self::Hub {
                repo,
                revision: None,
            } => write!(f, "{repo}"),
            Self::Hub {
                repo,
                revision: Some(rev),
            } => write!(f, "{repo}@{rev}"),
        }
    }
}

impl TryFrom<String> for ModelSource {
    type Error = String;

    fn try_from(source: String) -> Result<Self, String> {
        Self::parse(&source)
    }
}

/// No source: the config's validation says it is required.
impl Default for ModelSource {
    fn default() -> Self {
        Self::Dir(PathBuf::new())
    }
}

impl ModelSource {
    /// An existing folder (or anything that reads as a path) is a folder; `org/name[@rev]`
    /// is a Hub id.
    pub fn parse(source: &str) -> Result<Self, String> {
        let source = source.trim();
        let path = Path::new(source);
        if path.is_dir() || source.starts_with(['.', '/', '~']) {
            return Ok(Self::Dir(path.to_path_buf()));
        }
        let (repo, revision) = match source.split_once('@') {
            Some((repo, rev)) if !rev.is_empty() => (repo, Some(rev.to_string())),
            Some(_) => return Err(format!("`{source}` has an empty revision after `@`")),
            None => (source, None),
        };
        if let Some(revision) = revision.as_deref().filter(|r| !is_revision(r)) {
            return Err(format!(
                "`{revision}` is not a revision: a branch, tag or commit of letters, digits, \
                 `.`, `_`, `-` and `/`, with no `..` and no empty or hidden part"
            ));
        }
        if is_hub_id(repo) {
            Ok(Self::Hub {
                repo: repo.to_string(),
                revision,
            })
        } else {
            Err(format!(
                "`{source}` is neither an existing directory nor a Hub id `org/name[@revision]`"
            ))
        }
    }
}

/// `org/name` with safe characters only, so it can never climb out of a models directory.
pub fn is_hub_id(id: &str) -> bool {
    let mut parts = id.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// A git ref or commit as the Hub names them (`main`, `v1.0`, `refs/pr/1`, a hash). hf-hub
/// puts the revision in a cache path, so nothing that could climb out of it (`..`, an
/// absolute path, a hidden part) gets through.
fn is_revision(revision: &str) -> bool {
    revision.len() <= 255
        && revision.split('/').all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
        && !revision.contains("..")
}

/// Where to look for and fetch Hub models.
#[derive(Debug, Clone, Default)]
pub struct HubSettings {
    pub models_dirs: Vec<PathBuf>,
}

impl HubSettings {
    /// The folder holding `org/name` in a models directory, if one does.
    pub fn find_in_models_dirs(&self, repo: &str) -> Option<PathBuf> {
        if !is_hub_id(repo) {
            return None;
        }
        self.models_dirs
            .iter()
            .map(|dir| dir.join(repo))
            .find(|dir| looks_like_model(dir))
    }

    /// The local folder with every file the model needs, if there is one already (the folder
    /// itself, a mirror's copy, or a complete snapshot in the Hugging Face cache). Downloads
    /// nothing. `onnx_file` is the configured graph, if one is.
    pub fn local_dir(&self, source: &ModelSource, onnx_file: Option<&str>) -> Option<PathBuf> {
        let (repo, revision) = match source {
            ModelSource::Dir(dir) => return Some(dir.clone()),
            ModelSource::Hub { repo, revision } => (repo, revision),
        };
        // A mirror holds one snapshot; a pinned revision must come from the revision-aware cache.
        if revision.is_none()
            && let Some(dir) = self.find_in_models_dirs(repo)
        {
            return Some(dir);
        }
        cached_snapshot(&hub_repo(repo, revision.as_deref()), onnx_file)
    }

    /// A local folder with every file the model needs, downloading what is missing.
    /// `onnx_file` is the configured graph, if one is.
    pub async fn resolve(
        &self,
        source: &ModelSource,
        onnx_file: Option<&str>,
    ) -> Result<PathBuf, LoadError> {
        let (repo, revision) = match source {
            ModelSource::Dir(dir) => return Ok(dir.clone()),
            ModelSource::Hub { repo, revision } => (repo, revision),
        };
        if let Some(dir) = self.local_dir(source, onnx_file) {
            return Ok(dir);
        }
        let hub_repo = hub_repo(repo, revision.as_deref());
        if offline() {
            return Err(LoadError::Source(format!(
                "{source} is not in the models directories {:?} nor in the Hugging Face cache {}, \
                 and HF_HUB_OFFLINE is set",
                self.models_dirs,
                Cache::from_env().path().display()
            )));
        }
        download(&hub_repo, onnx_file, false).await
    }
}

/// Downloads the model's files into the hf-hub cache (a progress bar per file when
/// `progress`), returning the snapshot folder: first its configs, then what its modules need.
pub async fn download(
    repo: &Repo,
    onnx_file: Option<&str>,
    progress: bool,
) -> Result<PathBuf, LoadError> {
    let id = repo.url();
    let fail = |what: &str, e: &dyn fmt::Display| {
        LoadError::Source(without_credentials(&format!(
            "cannot {what} `{id}` from {}: {e}",
            std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into())
        )))
    };
    let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
    let mut builder = ApiBuilder::from_env().with_progress(progress);
    if token.is_some() {
        builder = builder.with_token(token);
    }
    let api = builder
        .build()
        .map_err(|e| fail("set up a download of", &e))?;
    let api_repo = api.repo(repo.clone());
    let info = api_repo
        .info()
        .await
        .map_err(|e| fail("list the files of", &e))?;
    let listed: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();

    let fetch = async |file: &str| -> Result<PathBuf, LoadError> {
        let path = api_repo
            .get(file)
            .await
            .map_err(|e| fail(&format!("download {file} of"), &e))?;
        // The snapshot folder: the path less the file's own components.
        Ok(snapshot_of(&path, file))
    };
    let mut snapshot = None;
    for file in listed.iter().filter(|f| is_config(f)) {
        snapshot = Some(fetch(file).await?);
    }
    let Some(dir) = snapshot else {
        return Err(LoadError::Source(format!(
            "`{id}` has neither modules.json nor tokenizer.json: not a sentence-transformers model"
        )));
    };
    let mut modules = read_modules(&dir)?;
    if modules.first().is_some_and(|m| m.class_name() == "Router") {
        // A Router's routes keep their modules in folders of their own, each transformer with
        // its configs and tokenizer beside its graph.
        let config = in_folder(&modules[0].path, "router_config.json");
        fetch(&config).await?;
        let router = RouterConfig::read(&dir)?
            .ok_or_else(|| LoadError::Source(format!("`{id}`: its Router has no routes")))?;
        let routes: Vec<ModuleEntry> = router.routes.into_values().flatten().collect();
        for module in &routes {
            for file in METADATA_FILES.map(|name| in_folder(&module.path, name)) {
                if listed.contains(&file.as_str()) {
                    fetch(&file).await?;
                }
            }
        }
        modules = routes;
    }
    for wanted in needed_files(&modules, onnx_file) {
        let file = wanted
            .alternatives
            .iter()
            .find(|f| listed.contains(&f.as_str()))
            .ok_or_else(|| {
                let mut message = format!(
                    "`{id}` has no {} ({})",
                    wanted.alternatives.join(" or "),
                    wanted.purpose
                );
                if wanted.purpose == GRAPH {
                    let graphs: Vec<_> = listed.iter().filter(|f| f.ends_with(".onnx")).collect();
                    message += &format!("; ONNX files in it: {graphs:?}");
                }
                LoadError::Source(message)
            })?;
        fetch(file).await?;
        if wanted.purpose == GRAPH {
            // Weights too big for one protobuf live beside it (`model.onnx_data`).
            for data in listed.iter().filter(|f| is_external_data(f, file)) {
                fetch(data).await?;
            }
        }
    }
    Ok(dir)
}

const GRAPH: &str = "the ONNX graph";

/// `text` with the user and password of every URL in it (`https://user:secret@host`, as a
/// mirror in HF_ENDPOINT may carry) replaced by `***`: errors reach clients.
fn without_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let authority_end = after
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace() || c == ')')
            .unwrap_or(after.len());
        match after[..authority_end].rfind('@') {
            Some(userinfo_end) => {
                out.push_str("***");
                rest = &after[userinfo_end..];
            }
            None => rest = after,
        }
    }
    out.push_str(rest);
    out
}

/// A file a model needs: the first of `alternatives` that exists.
struct Needed {
    alternatives: Vec<String>,
    purpose: &'static str,
}

/// `file` in a module's `folder` of the repository.
fn in_folder(folder: &str, file: &str) -> String {
    match folder.trim_matches(['.', '/']) {
        "" => file.to_string(),
        folder => format!("{folder}/{file}"),
    }
}

/// The files the model's modules read besides the configs: the graph of a Transformer (the
/// configured one, else the Hub layout's), Dense weights, a static table and its tokenizer.
fn needed_files(modules: &[ModuleEntry], onnx_file: Option<&str>) -> Vec<Needed> {
    let graph = |folder: &str| Needed {
        alternatives: match onnx_file {
            Some(file) => vec![in_folder(folder, file)],
            None => DEFAULT_ONNX_FILES.map(|f| in_folder(folder, f)).to_vec(),
        },
        purpose: GRAPH,
    };
    if modules.is_empty() {
        return vec![graph("")];
    }
    let mut needed = Vec::new();
    for module in modules {
        let in_folder = |file: &str| in_folder(&module.path, file);
        if matches!(module.class_name(), "Pooling" | "Dense" | "SpladePooling") {
            // Numbered folders' configs come with the first fetch; this covers any folder name.
            needed.push(Needed {
                alternatives: vec![in_folder("config.json")],
                purpose: "the module's config",
            });
        }
        match module.class_name() {
            "Transformer" | "MLMTransformer" => needed.push(graph(&module.path)),
            "Dense" => needed.push(Needed {
                // A pickle only so that loading can say how to convert it.
                alternatives: vec![
                    in_folder("model.safetensors"),
                    in_folder("pytorch_model.bin"),
                ],
                purpose: "the Dense layer's weights",
            }),
            "StaticEmbedding" | "SparseStaticEmbedding" => {
                needed.push(Needed {
                    alternatives: vec![in_folder("model.safetensors")],
                    purpose: "the static embedding table",
                });
                needed.push(Needed {
                    alternatives: vec![in_folder("tokenizer.json")],
                    purpose: "the static embedding's tokenizer",
                });
            }
            _ => {}
        }
    }
    needed
}

/// The cached snapshot folder of `repo`, if it holds every file the model needs.
fn cached_snapshot(repo: &Repo, onnx_file: Option<&str>) -> Option<PathBuf> {
    let cache = Cache::from_env().repo(repo.clone());
    let (file, path) = ["modules.json", "tokenizer.json"]
        .into_iter()
        .find_map(|f| Some((f, cache.get(f)?)))?;
    let dir = snapshot_of(&path, file);
    let modules = match RouterConfig::read(&dir).ok()? {
        Some(router) => router.routes.into_values().flatten().collect(),
        None => read_modules(&dir).ok()?,
    };
    needed_files(&modules, onnx_file)
        .iter()
        .all(|n| n.alternatives.iter().any(|f| dir.join(f).is_file()))
        .then_some(dir)
}

/// The snapshot folder that holds `file` at `path`.
fn snapshot_of(path: &Path, file: &str) -> PathBuf {
    path.ancestors()
        .nth(file.split('/').count())
        .unwrap_or(path)
        .to_path_buf()
}

pub fn hub_repo(repo: &str, revision: Option<&str>) -> Repo {
    Repo::with_revision(
        repo.to_string(),
        RepoType::Model,
        revision.unwrap_or("main").to_string(),
    )
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes"))
}

/// The metadata files, and the configs of numbered module folders (`1_Pooling/config.json`).
fn is_config(file: &str) -> bool {
    if METADATA_FILES.contains(&file) {
        return true;
    }
    match file.split_once('/') {
        Some((folder, "config.json")) => folder
            .split_once('_')
            .is_some_and(|(n, _)| n.chars().all(|c| c.is_ascii_digit())),
        _ => false,
    }
}

/// Whether `file` holds external data of the graph `onnx_file` (`model.onnx_data`).
fn is_external_data(file: &str, onnx_file: &str) -> bool {
    file.strip_prefix(onnx_file)
        .is_some_and(|rest| rest.starts_with('_') || rest.starts_with('.'))
}

/// A folder that holds a sentence-transformers or ONNX model.
pub fn looks_like_model(dir: &Path) -> bool {
    dir.join("modules.json").is_file() || DEFAULT_ONNX_FILES.iter().any(|f| dir.join(f).is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_redacted() {
        assert_eq!(
            without_credentials(
                "cannot list `o/n` from https://me:s3cret@mirror.example/hf: error sending \
                 request for url (https://me:s3cret@mirror.example/api/models/o/n)"
            ),
            "cannot list `o/n` from https://***@mirror.example/hf: error sending request for \
             url (https://***@mirror.example/api/models/o/n)"
        );
        assert_eq!(
            without_credentials("http://token@host:8080 and https://plain.example/a@b"),
            "http://***@host:8080 and https://plain.example/a@b"
        );
        assert_eq!(without_credentials("no url here"), "no url here");
    }

    #[test]
    fn parses_sources() {
        assert_eq!(
            ModelSource::parse("org/name@v1").unwrap(),
            ModelSource::Hub {
                repo: "org/name".into(),
                revision: Some("v1".into())
            }
        );
        assert_eq!(
            ModelSource::parse("./models/x").unwrap(),
            ModelSource::Dir(PathBuf::from("./models/x"))
        );
        assert!(ModelSource::parse("justaname").is_err());
        assert!(ModelSource::parse("org/name@").is_err());
    }

    #[test]
    fn revisions_cannot_leave_the_cache() {
        for good in ["main", "v1.0", "refs/pr/1", "0123abcd", "release_2-x"] {
            assert!(
                ModelSource::parse(&format!("org/name@{good}")).is_ok(),
                "{good}"
            );
        }
        for bad in [
            "../../../../etc/hostname",
            "/etc/passwd",
            "refs//x",
            "main/",
            ".git",
            "a..b",
            "v1 beta",
            "x\\y",
        ] {
            let error = ModelSource::parse(&format!("org/name@{bad}")).unwrap_err();
            assert!(error.contains("is not a revision"), "{bad}: {error}");
        }
    }

    #[test]
    fn hub_ids_cannot_escape() {
        assert!(is_hub_id("sentence-transformers/all-MiniLM-L6-v2"));
        assert!(!is_hub_id("../etc"));
        assert!(!is_hub_id("org/.."));
        assert!(!is_hub_id("a/b/c"));
        assert!(!is_hub_id("/abs"));
    }

    fn modules(json: &str) -> Vec<ModuleEntry> {
        serde_json::from_str(json).unwrap()
    }

    fn first_choices(needed: &[Needed]) -> Vec<&str> {
        needed.iter().map(|n| n.alternatives[0].as_str()).collect()
    }

    #[test]
    fn fetches_only_what_the_modules_need() {
        assert!(is_config("tokenizer.json") && is_config("2_Dense/config.json"));
        assert!(!is_config("2_Dense/model.safetensors") && !is_config("model.safetensors"));
        assert!(is_external_data("onnx/model.onnx_data", "onnx/model.onnx"));
        assert!(!is_external_data(
            "onnx/model_qint8.onnx",
            "onnx/model.onnx"
        ));

        let labse = modules(
            r#"[{"path": "", "type": "sentence_transformers.models.Transformer"},
                {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"path": "2_Dense", "type": "sentence_transformers.base.modules.dense.Dense"},
                {"path": "3_Normalize", "type": "sentence_transformers.models.Normalize"}]"#,
        );
        let needed = needed_files(&labse, None);
        assert_eq!(
            first_choices(&needed),
            [
                "onnx/model.onnx",
                "1_Pooling/config.json",
                "2_Dense/config.json",
                "2_Dense/model.safetensors"
            ]
        );
        assert_eq!(needed[0].alternatives, ["onnx/model.onnx", "model.onnx"]);
        let chosen = needed_files(&labse, Some("onnx/model_O3.onnx"));
        assert_eq!(chosen[0].alternatives, ["onnx/model_O3.onnx"]);
        let unnumbered = modules(
            r#"[{"path": "", "type": "sentence_transformers.models.Transformer"},
                {"path": "pooling", "type": "sentence_transformers.models.Pooling"}]"#,
        );
        assert_eq!(
            first_choices(&needed_files(&unnumbered, None)),
            ["onnx/model.onnx", "pooling/config.json"]
        );

        // A static model has no graph; its table and tokenizer sit at the root or in its folder.
        for (path, prefix) in [
            ("", ""),
            (".", ""),
            ("0_StaticEmbedding", "0_StaticEmbedding/"),
        ] {
            let table = modules(&format!(
                r#"[{{"path": "{path}", "type": "sentence_transformers.models.StaticEmbedding"}}]"#
            ));
            assert_eq!(
                first_choices(&needed_files(&table, None)),
                [
                    format!("{prefix}model.safetensors"),
                    format!("{prefix}tokenizer.json")
                ]
            );
        }
        assert_eq!(first_choices(&needed_files(&[], None)), ["onnx/model.onnx"]);
    }
}
