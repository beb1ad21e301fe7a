//! sentence-transformers' `Dense` module (`N_Dense/`): `activation(x · Wᵀ + b)`, applied to a
//! whole batch of pooled vectors in one matrix multiply.

use std::path::Path;

use serde::Deserialize;

use super::LoadError;
use super::st_config::read_json;
use super::weights::WeightsFile;

/// The activations sentence-transformers models ship with (`torch.nn` classes), in Dense
/// modules and as cross-encoders' score activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Tanh,
    Relu,
    /// `torch.nn.GELU()`, the exact (erf) form.
    Gelu,
    Sigmoid,
    Silu,
}

impl Activation {
    /// Reads a `torch.nn` class path as the config names it (`torch.nn.modules.activation.Tanh`).
    pub(super) fn parse(path: &str) -> Option<Self> {
        if !path.starts_with("torch.") {
            // sentence-transformers would need trust_remote_code to import anything else.
            return None;
        }
        Some(match path.rsplit('.').next()? {
            "Identity" => Self::Identity,
            "Tanh" => Self::Tanh,
            "ReLU" => Self::Relu,
            "GELU" => Self::Gelu,
            "Sigmoid" => Self::Sigmoid,
            "SiLU" => Self::Silu,
            _ => return None,
        })
    }

    pub(super) fn apply(self, values: &mut [f32]) {
        let f: fn(f32) -> f32 = match self {
            Self::Identity => return,
            Self::Tanh => f32::tanh,
            Self::Relu => |x| x.max(0.0),
            Self::Gelu => |x| {
                let x = f64::from(x);
                (0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))) as f32
            },
            Self::Sigmoid => |x| 1.0 / (1.0 + (-x).exp()),
            Self::Silu => |x| x / (1.0 + (-x).exp()),
        };
        values.iter_mut().for_each(|v| *v = f(*v));
    }
}

#[derive(Deserialize)]
struct DenseConfig {
    in_features: usize,
    out_features: usize,
    #[serde(default = "default_true")]
    bias: bool,
    /// sentence-transformers' default when the config names none.
    #[serde(default = "default_activation")]
    activation_function: String,
    #[serde(default = "sentence_embedding")]
    module_input_name: String,
    module_output_name: Option<String>,
}

fn default_true() -> bool {
    true
}

fn default_activation() -> String {
    "torch.nn.modules.activation.Tanh".into()
}

fn sentence_embedding() -> String {
    "sentence_embedding".into()
}

#[derive(Debug)]
pub struct Dense {
    in_features: usize,
    out_features: usize,
    /// `[out_features, in_features]`, row-major, as `torch.nn.Linear` stores it.
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    activation: Activation,
}

impl Dense {
    /// Reads `dir/config.json` and `dir/model.safetensors`.
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let config_path = dir.join("config.json");
        let config: DenseConfig = read_json(dir, "config.json")?
            .ok_or_else(|| LoadError::file(&config_path, "missing"))?;
        let output = config
            .module_output_name
            .as_deref()
            .unwrap_or(&config.module_input_name);
        if config.module_input_name != "sentence_embedding" || output != "sentence_embedding" {
            return Err(LoadError::file(
                &config_path,
                format!(
                    "maps `{}` to `{output}`; only a Dense layer on the pooled `sentence_embedding` \
                     is supported",
                    config.module_input_name
                ),
            ));
        }
        let activation = Activation::parse(&config.activation_function).ok_or_else(|| {
            LoadError::file(
                &config_path,
                format!(
                    "activation_function `{}` is not supported (supported: torch.nn Identity, Tanh, \
                     ReLU, GELU, Sigmoid, SiLU)",
                    config.activation_function
                ),
            )
        })?;
        let weights = WeightsFile::open(dir)?;
        let (weight, shape) = weights.tensor(&["linear.weight"])?;
        if shape != [config.out_features, config.in_features] {
            return Err(LoadError::file(
                dir.join("model.safetensors"),
                format!(
                    "linear.weight has shape {shape:?}; config.json says [{}, {}]",
                    config.out_features, config.in_features
                ),
            ));
        }
        let bias = if config.bias {
            let (bias, shape) = weights.tensor(&["linear.bias"])?;
            if shape != [config.out_features] {
                return Err(LoadError::file(
                    dir.join("model.safetensors"),
                    format!(
                        "linear.bias has shape {shape:?}; expected [{}]",
                        config.out_features
                    ),
                ));
            }
            Some(bias)
        } else {
            None
        };
        Ok(Self {
            in_features: config.in_features,
            out_features: config.out_features,
            weight,
            bias,
            activation,
        })
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// `rows × in_features` values in, `rows × out_features` out.
    pub fn forward(&self, input: &[f32], rows: usize) -> Vec<f32> {
        let (k, n) = (self.in_features, self.out_features);
        assert_eq!(
            input.len(),
            rows * k,
            "Dense input is not rows × in_features"
        );
        let mut out = match &self.bias {
            Some(bias) => bias.repeat(rows),
            None => vec![0.0; rows * n],
        };
        // SAFETY: the pointers cover `rows × k` (input, row-major), `n × k` (weight, read
        // transposed through its strides) and `rows × n` (out, row-major) values, as asserted
        // and allocated above; `out` does not alias the inputs.
        unsafe {
            matrixmultiply::sgemm(
                rows,
                k,
                n,
                1.0,
                input.as_ptr(),
                k as isize,
                1,
                self.weight.as_ptr(),
                1,
                k as isize,
                1.0,
                out.as_mut_ptr(),
                n as isize,
                1,
            );
        }
        self.activation.apply(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::tests::write_f32;

    fn dense_dir(config: &str, tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        write_f32(dir.path(), tensors);
        dir
    }

    #[test]
    fn activations_match_torch() {
        let cases = [
            ("Identity", [-1.0, 0.5], [-1.0, 0.5]),
            ("Tanh", [-1.0, 0.5], [-0.761_594_2, 0.462_117_16]),
            ("ReLU", [-1.0, 0.5], [0.0, 0.5]),
            // torch.nn.GELU()(torch.tensor([-1.0, 0.5]))
            ("GELU", [-1.0, 0.5], [-0.158_655_26, 0.345_731_14]),
            ("Sigmoid", [-1.0, 0.5], [0.268_941_43, 0.622_459_3]),
            ("SiLU", [-1.0, 0.5], [-0.268_941_43, 0.311_229_65]),
        ];
        for (name, input, want) in cases {
            let activation =
                Activation::parse(&format!("torch.nn.modules.activation.{name}")).unwrap();
            let mut values = input;
            activation.apply(&mut values);
            for (got, want) in values.iter().zip(want) {
                assert!((got - want).abs() < 1e-6, "{name}: {values:?} != {want:?}");
            }
        }
        assert_eq!(Activation::parse("my_package.Swish"), None);
        assert_eq!(Activation::parse("torch.nn.Softmax"), None);
    }

    #[test]
    fn multiplies_a_batch_like_torch_linear() {
        let config = r#"{"in_features": 3, "out_features": 2, "bias": true,
            "activation_function": "torch.nn.modules.linear.Identity"}"#;
        let weight = vec![1.0, 2.0, 3.0, -1.0, 0.0, 0.5];
        let dir = dense_dir(
            config,
            &[
                ("linear.weight", vec![2, 3], weight),
                ("linear.bias", vec![2], vec![0.5, -0.5]),
            ],
        );
        let dense = Dense::load(dir.path()).unwrap();
        let out = dense.forward(&[1.0, 1.0, 1.0, 2.0, 0.0, -2.0], 2);
        // Row 1: [1+2+3+0.5, -1+0+0.5-0.5]; row 2: [2-6+0.5, -2-1-0.5].
        assert_eq!(out, [6.5, -1.0, -3.5, -3.5]);
    }

    #[test]
    fn defaults_to_tanh_with_bias_as_sentence_transformers_does() {
        let dir = dense_dir(
            r#"{"in_features": 1, "out_features": 1}"#,
            &[
                ("linear.weight", vec![1, 1], vec![1.0]),
                ("linear.bias", vec![1], vec![0.0]),
            ],
        );
        let dense = Dense::load(dir.path()).unwrap();
        assert_eq!(dense.forward(&[0.5], 1), [0.5f32.tanh()]);
    }

    #[test]
    fn refuses_what_it_cannot_reproduce() {
        let weights = [("linear.weight", vec![1, 1], vec![1.0])];
        let refused = [
            (
                r#"{"in_features": 1, "out_features": 1, "bias": false,
                "activation_function": "custom.Swish"}"#,
                "custom.Swish",
            ),
            (
                r#"{"in_features": 1, "out_features": 1, "bias": false,
                "activation_function": "torch.nn.modules.linear.Identity",
                "module_input_name": "token_embeddings"}"#,
                "token_embeddings",
            ),
            (
                r#"{"in_features": 2, "out_features": 1, "bias": false,
                "activation_function": "torch.nn.modules.linear.Identity"}"#,
                "shape",
            ),
            (
                r#"{"in_features": 1, "out_features": 1, "bias": true,
                "activation_function": "torch.nn.modules.linear.Identity"}"#,
                "linear.bias",
            ),
        ];
        for (config, needle) in refused {
            let dir = dense_dir(config, &weights);
            let err = Dense::load(dir.path()).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
