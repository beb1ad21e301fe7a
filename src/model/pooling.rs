//! sentence-transformers' `Pooling` and `Normalize` modules, reproduced operation for
//! operation (same order of modes, same epsilons) so vectors match to the last float.

use serde::Deserialize;

/// One pooling mode of `1_Pooling/config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolingMode {
    Cls,
    Max,
    Mean,
    #[serde(alias = "mean_sqrt_len_tokens")]
    MeanSqrtLen,
    #[serde(rename = "weightedmean")]
    WeightedMean,
    #[serde(rename = "lasttoken")]
    LastToken,
}

impl PoolingMode {
    /// A mode as sentence-transformers 5 names it in `pooling_mode`.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "cls" => Self::Cls,
            "max" => Self::Max,
            "mean" => Self::Mean,
            "mean_sqrt_len_tokens" => Self::MeanSqrtLen,
            "weightedmean" => Self::WeightedMean,
            "lasttoken" => Self::LastToken,
            _ => return None,
        })
    }

    /// The name sentence-transformers 5 gives the mode.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cls => "cls",
            Self::Max => "max",
            Self::Mean => "mean",
            Self::MeanSqrtLen => "mean_sqrt_len_tokens",
            Self::WeightedMean => "weightedmean",
            Self::LastToken => "lasttoken",
        }
    }

    /// Whether sentence-transformers gives a zero vector for a sequence without tokens (an
    /// all-padding row). CLS and max have nothing to give: a row of padding or an error.
    pub fn pools_nothing_to_zero(self) -> bool {
        !matches!(self, Self::Cls | Self::Max)
    }

    /// The order in which sentence-transformers concatenates the modes it has enabled.
    const ORDER: [PoolingMode; 6] = [
        Self::Cls,
        Self::Max,
        Self::Mean,
        Self::MeanSqrtLen,
        Self::WeightedMean,
        Self::LastToken,
    ];
}

/// The enabled modes, in sentence-transformers' concatenation order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pooling {
    modes: Vec<PoolingMode>,
}

impl Pooling {
    pub fn new(enabled: impl Fn(PoolingMode) -> bool) -> Option<Self> {
        let modes: Vec<_> = PoolingMode::ORDER
            .into_iter()
            .filter(|m| enabled(*m))
            .collect();
        (!modes.is_empty()).then_some(Self { modes })
    }

    /// Modes concatenated in the order given (sentence-transformers 5's `pooling_mode` list).
    pub fn ordered(modes: Vec<PoolingMode>) -> Option<Self> {
        (!modes.is_empty()).then_some(Self { modes })
    }

    pub fn single(mode: PoolingMode) -> Self {
        Self { modes: vec![mode] }
    }

    /// The modes' names, joined by `+` when there are several.
    pub fn name(&self) -> String {
        let names: Vec<&str> = self.modes().iter().map(|m| m.name()).collect();
        names.join("+")
    }

    pub fn modes(&self) -> &[PoolingMode] {
        &self.modes
    }

    /// Whether a sequence of no tokens pools to zeros (else it cannot be embedded).
    pub fn pools_empty(&self) -> bool {
        self.modes.iter().all(|m| m.pools_nothing_to_zero())
    }

    /// Pools one sequence. `tokens` holds `seq_len × hidden` values of which the first
    /// `len` rows are real tokens (right padding); rows before `from` are a prompt that
    /// takes no part in averaging (`include_prompt = false`). A sequence of no tokens pools
    /// to zeros, as an all-padding row does in sentence-transformers (see `pools_empty`).
    pub fn pool(&self, tokens: &[f32], hidden: usize, len: usize, from: usize, out: &mut Vec<f32>) {
        if len == 0 {
            out.resize(out.len() + hidden * self.modes.len(), 0.0);
            return;
        }
        let row = |i: usize| &tokens[i * hidden..(i + 1) * hidden];
        let counted = from.min(len.saturating_sub(1))..len;
        for mode in &self.modes {
            match mode {
                PoolingMode::Cls => out.extend_from_slice(row(0)),
                PoolingMode::LastToken => out.extend_from_slice(row(len - 1)),
                PoolingMode::Max => {
                    let start = out.len();
                    out.extend_from_slice(row(counted.start));
                    for i in counted.clone().skip(1) {
                        for (m, v) in out[start..].iter_mut().zip(row(i)) {
                            *m = m.max(*v);
                        }
                    }
                }
                PoolingMode::Mean | PoolingMode::MeanSqrtLen | PoolingMode::WeightedMean => {
                    let start = out.len();
                    out.resize(start + hidden, 0.0);
                    let mut weight_sum = 0.0f32;
                    for i in counted.clone() {
                        // Weighted mean weighs position i (from 1) by i, as sentence-transformers does.
                        let w = if *mode == PoolingMode::WeightedMean {
                            (i + 1) as f32
                        } else {
                            1.0
                        };
                        weight_sum += w;
                        for (s, v) in out[start..].iter_mut().zip(row(i)) {
                            *s += w * v;
                        }
                    }
                    let divisor = match mode {
                        PoolingMode::MeanSqrtLen => weight_sum.max(1e-9).sqrt(),
                        _ => weight_sum.max(1e-9),
                    };
                    out[start..].iter_mut().for_each(|s| *s /= divisor);
                }
            }
        }
    }
}

/// `torch.nn.functional.normalize(v, p=2, dim=-1)`: divides by `max(‖v‖, 1e-12)`.
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

#[cfg(test)]
mod tests {
    use super::*;

    // Three token rows of hidden size 2, the third being padding.
    const TOKENS: [f32; 6] = [1.0, 4.0, 3.0, -2.0, 100.0, 100.0];

    fn pooled(mode: PoolingMode, from: usize) -> Vec<f32> {
        let mut out = Vec::new();
        Pooling::single(mode).pool(&TOKENS, 2, 2, from, &mut out);
        out
    }

    #[test]
    fn each_mode_ignores_padding() {
        assert_eq!(pooled(PoolingMode::Cls, 0), [1.0, 4.0]);
        assert_eq!(pooled(PoolingMode::LastToken, 0), [3.0, -2.0]);
        assert_eq!(pooled(PoolingMode::Max, 0), [3.0, 4.0]);
        assert_eq!(pooled(PoolingMode::Mean, 0), [2.0, 1.0]);
        let s = 2f32.sqrt();
        assert_eq!(pooled(PoolingMode::MeanSqrtLen, 0), [4.0 / s, 2.0 / s]);
        assert_eq!(
            pooled(PoolingMode::WeightedMean, 0),
            [(1.0 + 6.0) / 3.0, (4.0 - 4.0) / 3.0]
        );
    }

    #[test]
    fn excluded_prompt_rows_are_not_averaged() {
        assert_eq!(pooled(PoolingMode::Mean, 1), [3.0, -2.0]);
        // CLS still reads position 0, as in sentence-transformers.
        assert_eq!(pooled(PoolingMode::Cls, 1), [1.0, 4.0]);
    }

    #[test]
    fn modes_concatenate_in_sentence_transformers_order() {
        let pooling = Pooling::new(|m| matches!(m, PoolingMode::Mean | PoolingMode::Cls)).unwrap();
        assert_eq!(pooling.modes(), [PoolingMode::Cls, PoolingMode::Mean]);
        let mut out = Vec::new();
        pooling.pool(&TOKENS, 2, 2, 0, &mut out);
        assert_eq!(out, [1.0, 4.0, 2.0, 1.0]);
        assert!(Pooling::new(|_| false).is_none());
        let given = Pooling::ordered(vec![PoolingMode::Mean, PoolingMode::Cls]).unwrap();
        let mut out = Vec::new();
        given.pool(&TOKENS, 2, 2, 0, &mut out);
        assert_eq!(out, [2.0, 1.0, 1.0, 4.0]);
    }

    #[test]
    fn no_tokens_pool_to_zeros_where_sentence_transformers_gives_zeros() {
        let mut out = Vec::new();
        Pooling::single(PoolingMode::WeightedMean).pool(&[], 2, 0, 0, &mut out);
        assert_eq!(out, [0.0, 0.0]);
        assert!(Pooling::single(PoolingMode::Mean).pools_empty());
        assert!(Pooling::single(PoolingMode::LastToken).pools_empty());
        assert!(!Pooling::single(PoolingMode::Cls).pools_empty());
        assert!(
            !Pooling::ordered(vec![PoolingMode::Mean, PoolingMode::Max])
                .unwrap()
                .pools_empty()
        );
    }

    #[test]
    fn normalize_matches_torch() {
        let mut v = [3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, [0.6, 0.8]);
        let mut zero = [0.0, 0.0];
        l2_normalize(&mut zero);
        assert_eq!(zero, [0.0, 0.0]);
    }
}
