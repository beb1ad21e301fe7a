//! SPLADE pooling, sentence-transformers' `SpladePooling`: a masked-language-model head's
//! logits (one per vocabulary token at every position) become one weight per vocabulary
//! token, `log(1 + relu(logit))` taken at the position where it is largest (or summed over
//! positions). Padded positions never count: their logits are not zero.

use std::path::Path;

use serde::Deserialize;

use super::LoadError;
use super::st_config::read_json;

/// How the positions' weights combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Max,
    Sum,
}

/// The weight of one logit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `log(1 + relu(x))`.
    Relu,
    /// `log(1 + log(1 + relu(x)))`.
    Log1pRelu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpladePooling {
    pub strategy: Strategy,
    pub activation: Activation,
}

#[derive(Deserialize)]
struct SpladeFile {
    #[serde(default = "max")]
    pooling_strategy: String,
    #[serde(default = "relu")]
    activation_function: String,
}

fn max() -> String {
    "max".to_string()
}

fn relu() -> String {
    "relu".to_string()
}

impl SpladePooling {
    /// The module's `config.json` in `folder`.
    pub fn read(folder: &Path) -> Result<Self, LoadError> {
        let file = folder.join("config.json");
        let config: SpladeFile =
            read_json(folder, "config.json")?.ok_or_else(|| LoadError::file(&file, "missing"))?;
        let strategy = match config.pooling_strategy.as_str() {
            "max" => Strategy::Max,
            "sum" => Strategy::Sum,
            other => {
                return Err(LoadError::file(
                    &file,
                    format!("pooling_strategy `{other}` is not supported (supported: max, sum)"),
                ));
            }
        };
        let activation = match config.activation_function.as_str() {
            "relu" => Activation::Relu,
            "log1p_relu" => Activation::Log1pRelu,
            other => {
                return Err(LoadError::file(
                    &file,
                    format!(
                        "activation_function `{other}` is not supported (supported: relu, \
                         log1p_relu)"
                    ),
                ));
            }
        };
        Ok(Self {
            strategy,
            activation,
        })
    }

    fn weigh(&self, logit: f32) -> f32 {
        let weight = logit.max(0.0).ln_1p();
        match self.activation {
            Activation::Relu => weight,
            Activation::Log1pRelu => weight.ln_1p(),
        }
    }

    /// Appends one sequence's weights (`vocabulary` of them) to `out`, from its row of
    /// logits (`positions` × `vocabulary`, padded positions after the first `length`).
    pub fn pool(&self, logits: &[f32], vocabulary: usize, length: usize, out: &mut Vec<f32>) {
        let start = out.len();
        let positions = logits.chunks_exact(vocabulary.max(1)).take(length);
        match self.strategy {
            // The weight grows with the logit, so the largest logit gives the largest weight.
            Strategy::Max => {
                out.resize(start + vocabulary, f32::NEG_INFINITY);
                for position in positions {
                    for (best, &logit) in out[start..].iter_mut().zip(position) {
                        *best = best.max(logit);
                    }
                }
                for value in &mut out[start..] {
                    *value = if value.is_finite() {
                        self.weigh(*value)
                    } else {
                        0.0
                    };
                }
            }
            Strategy::Sum => {
                out.resize(start + vocabulary, 0.0);
                for position in positions {
                    for (sum, &logit) in out[start..].iter_mut().zip(position) {
                        *sum += self.weigh(logit);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_the_unpadded_positions_only() {
        let max = SpladePooling {
            strategy: Strategy::Max,
            activation: Activation::Relu,
        };
        // Two positions of a 3-token vocabulary, then a padded one with large logits.
        let logits = [1.0, -2.0, 0.5, 3.0, -1.0, 0.0, 9.0, 9.0, 9.0];
        let mut out = Vec::new();
        max.pool(&logits, 3, 2, &mut out);
        let expected = [3.0f32.ln_1p(), 0.0, 0.5f32.ln_1p()];
        assert_eq!(out, expected);
        let sum = SpladePooling {
            strategy: Strategy::Sum,
            activation: Activation::Log1pRelu,
        };
        let mut out = Vec::new();
        sum.pool(&logits, 3, 2, &mut out);
        let twice = |x: f32| x.max(0.0).ln_1p().ln_1p();
        let expected = [twice(1.0) + twice(3.0), 0.0, twice(0.5) + twice(0.0)];
        for (got, want) in out.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6);
        }
    }
}
