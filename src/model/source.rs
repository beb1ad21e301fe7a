//! Where a model's files come from: a local folder, a models directory that mirrors the Hub
//! (`DIR/org/name`), the hf-hub cache, or a download with hf-hub. Only the files a
//! sentence-transformers ONNX model needs are fetched, never a repository's other weights.

use std::fmt;
use std::path::{Path, PathBuf};

use hf_hub::api::tokio::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use super::LoadError;

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

#[derive(Debug, Clone, PartialEq, Eq)]
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

    /// A local folder with every file the model needs, downloading what is missing.
    pub async fn resolve(
        &self,
        source: &ModelSource,
        onnx_file: &str,
    ) -> Result<PathBuf, LoadError> {
        let (repo, revision) = match source {
            ModelSource::Dir(dir) => return Ok(dir.clone()),
            ModelSource::Hub { repo, revision } => (repo, revision),
        };
        // A mirror holds one snapshot; a pinned revision must come from the revision-aware cache.
        if revision.is_none()
            && let Some(dir) = self.find_in_models_dirs(repo)
        {
            return Ok(dir);
        }
        let hub_repo = hub_repo(repo, revision.as_deref());
        if let Some(dir) = cached_snapshot(&hub_repo, onnx_file) {
            return Ok(dir);
        }
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
/// `progress`), returning the snapshot folder.
pub async fn download(repo: &Repo, onnx_file: &str, progress: bool) -> Result<PathBuf, LoadError> {
    let id = repo.url();
    let fail = |what: &str, e: &dyn fmt::Display| {
        LoadError::Source(format!(
            "cannot {what} `{id}` from {}: {e}",
            std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into())
        ))
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
    let files: Vec<&str> = info
        .siblings
        .iter()
        .map(|s| s.rfilename.as_str())
        .filter(|f| is_needed(f, onnx_file))
        .collect();
    if !files.contains(&onnx_file) {
        return Err(LoadError::Source(format!(
            "`{id}` has no `{onnx_file}`; ONNX files in it: {:?}",
            info.siblings
                .iter()
                .filter(|s| s.rfilename.ends_with(".onnx"))
                .map(|s| s.rfilename.as_str())
                .collect::<Vec<_>>()
        )));
    }
    let mut snapshot = None;
    for file in files {
        let path = api_repo
            .get(file)
            .await
            .map_err(|e| fail(&format!("download {file} of"), &e))?;
        if file == "tokenizer.json" {
            snapshot = path.parent().map(Path::to_path_buf);
        }
    }
    snapshot.ok_or_else(|| LoadError::Source(format!("`{id}` has no tokenizer.json")))
}

pub fn hub_repo(repo: &str, revision: Option<&str>) -> Repo {
    Repo::with_revision(
        repo.to_string(),
        RepoType::Model,
        revision.unwrap_or("main").to_string(),
    )
}

/// The cached snapshot folder of `repo`, if it holds the tokenizer and the ONNX file.
fn cached_snapshot(repo: &Repo, onnx_file: &str) -> Option<PathBuf> {
    let cache = Cache::from_env().repo(repo.clone());
    cache.get(onnx_file)?;
    cache.get("tokenizer.json")?.parent().map(Path::to_path_buf)
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes"))
}

/// The metadata files, the chosen graph with its external-data files, and the configs of
/// numbered module folders (`1_Pooling/config.json`).
fn is_needed(file: &str, onnx_file: &str) -> bool {
    if METADATA_FILES.contains(&file) || file == onnx_file {
        return true;
    }
    if let Some(rest) = file.strip_prefix(onnx_file) {
        return rest.starts_with('_') || rest.starts_with('.');
    }
    match file.split_once('/') {
        Some((folder, "config.json")) => folder
            .split_once('_')
            .is_some_and(|(n, _)| n.chars().all(|c| c.is_ascii_digit())),
        _ => false,
    }
}

/// A folder that holds a sentence-transformers or ONNX model.
pub fn looks_like_model(dir: &Path) -> bool {
    dir.join("modules.json").is_file()
        || dir.join("onnx/model.onnx").is_file()
        || dir.join("model.onnx").is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn hub_ids_cannot_escape() {
        assert!(is_hub_id("sentence-transformers/all-MiniLM-L6-v2"));
        assert!(!is_hub_id("../etc"));
        assert!(!is_hub_id("org/.."));
        assert!(!is_hub_id("a/b/c"));
        assert!(!is_hub_id("/abs"));
    }

    #[test]
    fn fetches_only_what_the_model_needs() {
        let onnx = "onnx/model.onnx";
        for needed in [
            "tokenizer.json",
            "1_Pooling/config.json",
            "onnx/model.onnx",
            "onnx/model.onnx_data",
        ] {
            assert!(is_needed(needed, onnx), "{needed}");
        }
        for skipped in [
            "pytorch_model.bin",
            "onnx/model_qint8.onnx",
            "model.safetensors",
            "2_Dense/model.safetensors",
        ] {
            assert!(!is_needed(skipped, onnx), "{skipped}");
        }
    }
}
