//! Tensors of a module's `model.safetensors` (Dense weights, static embedding tables), read
//! once at load and widened to f32, whatever float type they were saved in.

use std::path::Path;

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

use super::LoadError;

/// A module folder's safetensors file, read into memory.
pub struct WeightsFile {
    path: std::path::PathBuf,
    bytes: Vec<u8>,
}

impl WeightsFile {
    /// Reads `dir/model.safetensors`. A folder with only `pytorch_model.bin` (older Hub repos)
    /// is refused with the one-line conversion, since a pickle is code, not data.
    pub fn open(dir: &Path) -> Result<Self, LoadError> {
        let path = dir.join("model.safetensors");
        if !path.is_file() {
            let pickle = dir.join("pytorch_model.bin");
            let reason = if pickle.is_file() {
                format!(
                    "missing; the folder has only pytorch_model.bin, which embedserve does not \
                     unpickle. Convert it once with: python -c \"import torch, safetensors.torch as st; \
                     st.save_file(torch.load('{0}/pytorch_model.bin', map_location='cpu'), \
                     '{0}/model.safetensors')\"",
                    dir.display()
                )
            } else {
                "missing".to_string()
            };
            return Err(LoadError::file(path, reason));
        }
        let bytes = std::fs::read(&path).map_err(|e| LoadError::file(&path, e.to_string()))?;
        Ok(Self { path, bytes })
    }

    /// The first of `names` the file holds, as row-major f32 values and its shape.
    pub fn tensor(&self, names: &[&str]) -> Result<(Vec<f32>, Vec<usize>), LoadError> {
        let fail = |reason: String| LoadError::file(&self.path, reason);
        let file = SafeTensors::deserialize(&self.bytes)
            .map_err(|e| fail(format!("not a valid safetensors file: {e}")))?;
        let name = names
            .iter()
            .find(|n| file.names().contains(n))
            .ok_or_else(|| {
                fail(format!(
                    "has no tensor named {}; it holds {:?}",
                    names.join(" or "),
                    file.names()
                ))
            })?;
        let view = file.tensor(name).map_err(|e| fail(e.to_string()))?;
        let values = widen(view.dtype(), view.data()).ok_or_else(|| {
            fail(format!(
                "tensor `{name}` is {:?}; expected F32, F16 or BF16",
                view.dtype()
            ))
        })?;
        Ok((values, view.shape().to_vec()))
    }
}

/// Little-endian floats of `dtype` as f32 (vectorised for f16 where the CPU has F16C).
fn widen(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let halves = |bytes: &[u8]| -> Vec<u16> {
        bytes
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect()
    };
    match dtype {
        Dtype::F32 => Some(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        Dtype::F16 => {
            let bits = halves(bytes);
            let mut out = vec![0.0; bits.len()];
            bits.reinterpret_cast::<f16>()
                .convert_to_f32_slice(&mut out);
            Some(out)
        }
        Dtype::BF16 => {
            let bits = halves(bytes);
            let mut out = vec![0.0; bits.len()];
            bits.reinterpret_cast::<bf16>()
                .convert_to_f32_slice(&mut out);
            Some(out)
        }
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a safetensors file of f32 tensors (what a test fixture needs).
    pub fn write_f32(dir: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
        let bytes: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let views: Vec<(&str, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .zip(&bytes)
            .map(|((name, shape, _), data)| {
                (
                    *name,
                    safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data).unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    }

    #[test]
    fn widens_every_float_type() {
        let values = [1.5f32, -2.0, 0.25];
        let f32_bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(widen(Dtype::F32, &f32_bytes).unwrap(), values);
        let f16_bytes: Vec<u8> = values
            .iter()
            .flat_map(|x| f16::from_f32(*x).to_le_bytes())
            .collect();
        assert_eq!(widen(Dtype::F16, &f16_bytes).unwrap(), values);
        let bf16_bytes: Vec<u8> = values
            .iter()
            .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
            .collect();
        assert_eq!(widen(Dtype::BF16, &bf16_bytes).unwrap(), values);
        assert!(widen(Dtype::I64, &[0; 8]).is_none());
    }

    #[test]
    fn a_pickle_only_folder_is_refused_with_the_conversion() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pytorch_model.bin"), b"PK").unwrap();
        let err = WeightsFile::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("pytorch_model.bin"), "{err}");
        assert!(err.contains("st.save_file"), "{err}");
    }

    #[test]
    fn reads_a_named_tensor_or_names_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        write_f32(
            dir.path(),
            &[("embeddings", vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])],
        );
        let file = WeightsFile::open(dir.path()).unwrap();
        let (values, shape) = file.tensor(&["embedding.weight", "embeddings"]).unwrap();
        assert_eq!((values, shape), (vec![1.0, 2.0, 3.0, 4.0], vec![2, 2]));
        let err = file.tensor(&["linear.weight"]).err().unwrap().to_string();
        assert!(err.contains("embeddings"), "{err}");
    }
}
