//! Smaller vectors per request: a bit or a byte per dimension instead of a float, taken
//! after `dimensions` has shortened the vector. The bits are sentence-transformers'
//! `quantize_embeddings(..., precision="ubinary" | "binary")`, bit for bit.

use std::fmt;

/// What each dimension of an answered vector is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Precision {
    #[default]
    Float,
    /// One bit per dimension (`x > 0`), eight to a byte, the first dimension in the highest
    /// bit; each byte as a signed integer, `ubinary - 128`.
    Binary,
    /// The same bits, each byte unsigned.
    Ubinary,
}

impl Precision {
    /// The names Voyage's `output_dtype` and Cohere's `embedding_types` use.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "float" => Some(Self::Float),
            "binary" => Some(Self::Binary),
            "ubinary" => Some(Self::Ubinary),
            _ => None,
        }
    }

    /// Bytes per vector of `dimensions` values.
    pub fn bytes(self, dimensions: usize) -> usize {
        match self {
            Self::Float => dimensions * size_of::<f32>(),
            Self::Binary | Self::Ubinary => dimensions.div_ceil(8),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Float => "float",
            Self::Binary => "binary",
            Self::Ubinary => "ubinary",
        })
    }
}

/// `numpy.packbits(vector > 0)`: the last byte is padded with zero bits.
pub fn ubinary(vector: &[f32]) -> Vec<u8> {
    vector
        .chunks(8)
        .map(|bits| {
            bits.iter()
                .enumerate()
                .fold(0u8, |byte, (i, &x)| byte | (u8::from(x > 0.0) << (7 - i)))
        })
        .collect()
}

/// `ubinary`'s bytes less 128, as signed bytes: what sentence-transformers' `binary` gives.
pub fn binary(vector: &[f32]) -> Vec<i8> {
    ubinary(vector)
        .into_iter()
        .map(|byte| byte.wrapping_sub(128) as i8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_numpy_packbits_of_the_positive_values() {
        // Dimensions 0, 2 and 7 positive, then 8; zero is not positive; 10 values pad to 2 bytes.
        let vector = [0.5, -1.0, 2.0, 0.0, -0.1, -3.0, -0.2, 1e-9, 4.0, -4.0];
        assert_eq!(ubinary(&vector), [0b1010_0001, 0b1000_0000]);
        assert_eq!(binary(&vector), [33, 0], "each byte less 128");
        assert_eq!(binary(&[-1.0; 8]), [-128]);
        assert_eq!(binary(&[1.0; 8]), [127]);
    }

    #[test]
    fn bytes_per_vector() {
        assert_eq!(Precision::Float.bytes(384), 1536);
        assert_eq!(Precision::Ubinary.bytes(384), 48);
        assert_eq!(Precision::Binary.bytes(10), 2);
    }
}
