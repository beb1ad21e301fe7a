//! The modules after pooling (`Dense`, `Normalize`), applied in `modules.json` order to a
//! whole batch of pooled vectors at once.

use super::LoadError;
use super::dense::Dense;
use super::pooling::l2_normalize;
use super::st_config::HeadModule;

#[derive(Debug)]
enum Step {
    Dense(Dense),
    Normalize,
}

#[derive(Debug, Default)]
pub struct Head {
    steps: Vec<Step>,
}

impl Head {
    /// Loads every Dense layer's weights and checks that each one's width feeds the next.
    pub fn load(modules: &[HeadModule]) -> Result<Self, LoadError> {
        let mut steps = Vec::with_capacity(modules.len());
        let mut width: Option<usize> = None;
        for module in modules {
            match module {
                HeadModule::Normalize => steps.push(Step::Normalize),
                HeadModule::Dense(dir) => {
                    let dense = Dense::load(dir)?;
                    if let Some(width) = width
                        && width != dense.in_features()
                    {
                        return Err(LoadError::file(
                            dir.join("config.json"),
                            format!(
                                "in_features is {}, but the module before it gives {width} values",
                                dense.in_features()
                            ),
                        ));
                    }
                    width = Some(dense.out_features());
                    steps.push(Step::Dense(dense));
                }
            }
        }
        Ok(Self { steps })
    }

    pub fn has_dense(&self) -> bool {
        self.steps.iter().any(|s| matches!(s, Step::Dense(_)))
    }

    /// The width the first Dense layer takes, if there is one.
    pub fn input_width(&self) -> Option<usize> {
        self.dense().next().map(Dense::in_features)
    }

    /// The width the last Dense layer gives, if there is one.
    pub fn output_width(&self) -> Option<usize> {
        self.dense().last().map(Dense::out_features)
    }

    /// The same head less its Dense layers: for graphs that already contain them.
    pub fn without_dense(self) -> Self {
        Self {
            steps: self
                .steps
                .into_iter()
                .filter(|s| matches!(s, Step::Normalize))
                .collect(),
        }
    }

    fn dense(&self) -> impl Iterator<Item = &Dense> {
        self.steps.iter().filter_map(|s| match s {
            Step::Dense(dense) => Some(dense),
            Step::Normalize => None,
        })
    }

    /// Applies every step to `rows` vectors of `width` values (row-major), returning one
    /// vector per row.
    pub fn apply(
        &self,
        mut matrix: Vec<f32>,
        rows: usize,
        mut width: usize,
    ) -> Result<Vec<Vec<f32>>, String> {
        for step in &self.steps {
            match step {
                Step::Dense(dense) => {
                    if width != dense.in_features() {
                        return Err(format!(
                            "the Dense layer takes {} values, but pooling gives {width}",
                            dense.in_features()
                        ));
                    }
                    matrix = dense.forward(&matrix, rows);
                    width = dense.out_features();
                }
                Step::Normalize if width > 0 => {
                    matrix.chunks_exact_mut(width).for_each(l2_normalize);
                }
                Step::Normalize => {}
            }
        }
        Ok(matrix
            .chunks_exact(width.max(1))
            .map(<[f32]>::to_vec)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_each_row_of_a_batch() {
        let head = Head {
            steps: vec![Step::Normalize],
        };
        let out = head.apply(vec![3.0, 4.0, 0.0, 2.0], 2, 2).unwrap();
        assert_eq!(out, [vec![0.6, 0.8], vec![0.0, 1.0]]);
        assert_eq!(Head::default().output_width(), None);
    }

    #[test]
    fn chains_the_zoo_models_dense_layers() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/models/zoo-st5/gemma3-embeddinggemma");
        let head = Head::load(&[
            HeadModule::Dense(dir.join("2_Dense")),
            HeadModule::Dense(dir.join("3_Dense")),
            HeadModule::Normalize,
        ])
        .unwrap();
        assert_eq!(
            (head.input_width(), head.output_width()),
            (Some(32), Some(32))
        );
        let out = head.apply(vec![0.5; 64], 2, 32).unwrap();
        assert_eq!((out.len(), out[0].len(), out[1].len()), (2, 32, 32));
        assert!(head.apply(vec![0.5; 16], 1, 16).is_err());
        let err = Head::load(&[
            HeadModule::Dense(dir.join("2_Dense")),
            HeadModule::Dense(dir.join("2_Dense")),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("in_features is 32"), "{err}");
        assert!(!head.without_dense().has_dense());
    }
}
