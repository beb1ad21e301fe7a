//! Every embedding model in ../shared/models, served over HTTP, reproduces the vectors that
//! sentence-transformers computed (reference.json): one input per request, and all inputs in
//! one request, where padding and batch-mates differ; as floats and as bits (`ubinary`,
//! `binary`). Fixtures are found on their own: every
//! `GROUP/NAME/reference.json` outside `rerank*`, with each ONNX file in the folder (fp32,
//! fp16, int8 variants) served as its own model, and static models without one.

use crate::common;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use common::{Server, cosine, models_root, reference, sorted_dirs};
use serde_json::{Value, json};

const FP32_MIN_COSINE: f64 = 0.99999;
const FP16_MIN_COSINE: f64 = 0.9999;
/// Dynamic int8 quantization: the bar of issue 2 for `model_qint8.onnx`.
const INT8_MIN_COSINE: f64 = 0.98;

/// One model to check: a fixture folder served with one of its graphs.
struct Fixture {
    /// `GROUP/NAME`, the folder and its reference.json.
    id: String,
    /// The served name: the id, plus the graph's stem for a variant (`zoo/bert-mean/model_fp16`).
    name: String,
    /// `None` for the folder's default graph, or a static model.
    onnx_file: Option<String>,
    min_cosine: f64,
}

/// Every embedding fixture and graph variant under `root`.
fn fixtures(root: &Path) -> Vec<Fixture> {
    let mut found = Vec::new();
    for group in sorted_dirs(root) {
        let group_name = group.file_name().unwrap().to_string_lossy().to_string();
        if group_name.starts_with("rerank") {
            continue;
        }
        for dir in sorted_dirs(&group) {
            if !dir.join("reference.json").is_file() {
                continue;
            }
            let id = format!(
                "{group_name}/{}",
                dir.file_name().unwrap().to_string_lossy()
            );
            let mut graphs: Vec<String> = ["", "onnx"]
                .iter()
                .flat_map(|sub| {
                    std::fs::read_dir(dir.join(sub))
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(move |e| (sub, e.file_name().to_string_lossy().to_string()))
                })
                .filter(|(_, f)| f.ends_with(".onnx"))
                .map(|(sub, f)| {
                    if sub.is_empty() {
                        f
                    } else {
                        format!("{sub}/{f}")
                    }
                })
                .collect();
            graphs.sort();
            let default = ["onnx/model.onnx", "model.onnx"]
                .into_iter()
                .find(|f| graphs.iter().any(|g| g == f));
            if graphs.is_empty() || default.is_some() {
                found.push(Fixture {
                    id: id.clone(),
                    name: id.clone(),
                    onnx_file: None,
                    min_cosine: FP32_MIN_COSINE,
                });
            }
            for graph in graphs.iter().filter(|g| Some(g.as_str()) != default) {
                let stem = Path::new(graph).file_stem().unwrap().to_string_lossy();
                let min_cosine = if stem.contains("fp16") || stem.ends_with("O4") {
                    FP16_MIN_COSINE
                } else if stem.contains("int8") {
                    INT8_MIN_COSINE
                } else {
                    FP32_MIN_COSINE
                };
                found.push(Fixture {
                    id: id.clone(),
                    name: format!("{id}/{stem}"),
                    onnx_file: Some(graph.clone()),
                    min_cosine,
                });
            }
        }
    }
    found
}

/// Checks every case of `fixture` alone and batched; returns the worst cosine, or what failed.
fn check(server: &Server, fixture: &Fixture) -> Result<f64, String> {
    let reference = reference(&fixture.id);
    let model = fixture.name.as_str();
    let mut worst = 1.0f64;
    let mut failures = String::new();
    // The bits sentence-transformers' `quantize_embeddings` makes of the floats answered for
    // the same inputs, exactly; and of the reference's, but where a value lies so near zero
    // that a vector within the cosine bar may have the other sign.
    let flip_room = (2.0 * (1.0 - fixture.min_cosine)).sqrt() as f32;
    let bits_failure = |case: &common::Case, floats: &[f32], bits: [&[f32]; 2]| {
        let ubinary = packbits(floats);
        let binary: Vec<f32> = ubinary.iter().map(|b| b - 128.0).collect();
        if bits != [&ubinary[..], &binary[..]] {
            return Some("ubinary/binary are not the floats' bits".to_string());
        }
        let norm = case.embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
        let flipped = (case.embedding.iter().zip(floats))
            .filter(|(r, g)| (**r > 0.0) != (**g > 0.0) && r.abs() > flip_room * norm)
            .count();
        (flipped > 0)
            .then(|| format!("{flipped} bits differ from the reference's beyond the cosine bar"))
    };
    let mut compare = |case: &common::Case, got: &[f32], bits: [&[f32]; 2], how: &str| {
        if let Some(why) = bits_failure(case, got, bits) {
            let _ = writeln!(failures, "  {how}: {why}");
        }
        let c = if got.len() == case.embedding.len() {
            cosine(got, &case.embedding)
        } else {
            f64::NAN
        };
        worst = worst.min(c);
        if c.is_nan() || c < fixture.min_cosine {
            let _ = writeln!(
                failures,
                "  {how}: cosine {c} < {} for {:?} (prompt {:?})",
                fixture.min_cosine,
                &case.input[..case.input.len().min(40)],
                case.prompt_name
            );
        }
    };
    let embed_as = |input: &Value, extra: &Value, format: &str| {
        let mut body = json!({"model": model, "input": input, "encoding_format": format});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (status, json) = server.post_json("/v1/embeddings", &body);
        if status != 200 {
            return Err(format!("  HTTP {status} for {format}: {json}\n"));
        }
        Ok(common::vectors(&json))
    };
    // Floats, ubinary and binary vectors for the same inputs.
    let embed = |input: Value, extra: Value| -> Result<[Vec<Vec<f32>>; 3], String> {
        Ok([
            embed_as(&input, &extra, "float")?,
            embed_as(&input, &extra, "ubinary")?,
            embed_as(&input, &extra, "binary")?,
        ])
    };
    let prompt = |name: &Option<String>| {
        name.as_ref()
            .map_or(json!({}), |p| json!({"prompt_name": p}))
    };

    for case in &reference.cases {
        let [floats, ubinary, binary] = embed(json!(case.input), prompt(&case.prompt_name))?;
        compare(case, &floats[0], [&ubinary[0], &binary[0]], "alone");
    }
    let mut groups: BTreeMap<Option<String>, Vec<&common::Case>> = BTreeMap::new();
    for case in &reference.cases {
        groups
            .entry(case.prompt_name.clone())
            .or_default()
            .push(case);
    }
    for (prompt_name, cases) in groups {
        let inputs: Vec<&str> = cases.iter().map(|c| c.input.as_str()).collect();
        let [floats, ubinary, binary] = embed(json!(inputs), prompt(&prompt_name))?;
        if [&floats, &ubinary, &binary].map(Vec::len) != [cases.len(); 3] {
            return Err(format!("  not {} vectors for {0} inputs\n", cases.len()));
        }
        for (i, case) in cases.iter().enumerate() {
            compare(case, &floats[i], [&ubinary[i], &binary[i]], "batched");
        }
    }
    if failures.is_empty() {
        Ok(worst)
    } else {
        Err(failures)
    }
}

/// `numpy.packbits(vector > 0)`, each byte as a float as `common::vectors` reads them.
fn packbits(vector: &[f32]) -> Vec<f32> {
    let mut bytes = vec![0u8; vector.len().div_ceil(8)];
    for (i, _) in vector.iter().enumerate().filter(|(_, x)| **x > 0.0) {
        bytes[i / 8] |= 0x80 >> (i % 8);
    }
    bytes.into_iter().map(f32::from).collect()
}

/// A config serving every fixture under its name, each variant with its own graph.
fn config_for(fixtures: &[Fixture]) -> String {
    let mut config = String::from("[cache]\nmax_loaded_models = 8\n");
    for fixture in fixtures {
        let dir = common::model_dir(&fixture.id);
        let _ = write!(
            config,
            "\n[[models]]\nname = {:?}\nsource = {:?}\n",
            fixture.name,
            dir.to_str().unwrap()
        );
        if let Some(file) = &fixture.onnx_file {
            let _ = writeln!(config, "onnx_file = {file:?}");
        }
    }
    config
}

#[test]
fn every_fixture_matches_its_reference() {
    let fixtures = fixtures(&models_root());
    for expected in [
        "sentence-transformers/all-MiniLM-L6-v2",
        "zoo/bert-mean/model_fp16",
        "zoo-model2vec/static-embedding",
    ] {
        assert!(
            fixtures.iter().any(|f| f.name == expected),
            "fixture {expected} not found"
        );
    }
    let (_dir, config) = common::config_file(&config_for(&fixtures));
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let mut report = String::new();
    let mut failed = Vec::new();
    for fixture in &fixtures {
        match check(&server, fixture) {
            Ok(worst) => {
                let _ = writeln!(report, "{:<48} worst cosine {worst:.9}", fixture.name);
            }
            Err(why) => {
                let _ = writeln!(report, "{:<48} FAILED\n{why}", fixture.name);
                failed.push(fixture.name.clone());
            }
        }
    }
    eprintln!("{report}");
    assert!(
        failed.is_empty(),
        "{} of {} fixtures fail: {failed:?}\n{report}",
        failed.len(),
        fixtures.len()
    );
}

#[test]
fn long_input_is_truncated_at_max_seq_length_and_counted() {
    let server = Server::start(&["--models-dir", &common::models_root_arg()]);
    let id = "sentence-transformers/all-MiniLM-L6-v2";
    let reference = reference(id);
    let long = reference
        .cases
        .iter()
        .max_by_key(|c| c.input.len())
        .unwrap();
    let (status, json) =
        server.post_json("/v1/embeddings", &json!({"model": id, "input": long.input}));
    assert_eq!(status, 200, "{json}");
    let max = reference.max_seq_length.unwrap();
    assert_eq!(json["usage"]["prompt_tokens"], max);
    assert_eq!(json["usage"]["total_tokens"], max);
    assert_eq!(json["model"], Value::from(id));
    assert_eq!(json["object"], "list");
}
