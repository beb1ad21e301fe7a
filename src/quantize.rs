//! Smaller vectors per request: a bit or a byte per dimension instead of a float, taken
//! after `dimensions` has shortened the vector. The bits are sentence-transformers'
//! `quantize_embeddings(..., precision="ubinary" | "binary")`, bit for bit; the bytes are its
//! `precision="int8" | "uint8"` with fixed `ranges`, so that a text's codes never depend on
//! what else its request holds.

use std::fmt;

/// What each dimension of an answered vector is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Precision {
    #[default]
    Float,
    /// One byte per dimension: where the value lies between its dimension's `Ranges`, in
    /// 256 steps, as -128 to 127.
    Int8,
    /// The same steps as 0 to 255.
    Uint8,
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
            "int8" => Some(Self::Int8),
            "uint8" => Some(Self::Uint8),
            "binary" => Some(Self::Binary),
            "ubinary" => Some(Self::Ubinary),
            _ => None,
        }
    }

    /// Bytes per vector of `dimensions` values.
    pub fn bytes(self, dimensions: usize) -> usize {
        match self {
            Self::Float => dimensions * size_of::<f32>(),
            Self::Int8 | Self::Uint8 => dimensions,
            Self::Binary | Self::Ubinary => dimensions.div_ceil(8),
        }
    }
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Self::Float => "float",
            Self::Int8 => "int8",
            Self::Uint8 => "uint8",
            Self::Binary => "binary",
            Self::Ubinary => "ubinary",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Each dimension's lowest and highest value over a calibration set: sentence-transformers'
/// `ranges`, whose 256 steps the byte codes count.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Ranges {
    pub min: Vec<f32>,
    pub max: Vec<f32>,
}

impl Ranges {
    /// The ranges of `vectors`, all of one width.
    pub fn of(vectors: impl IntoIterator<Item = impl AsRef<[f32]>>) -> Option<Self> {
        let mut vectors = vectors.into_iter();
        let first = vectors.next()?;
        let mut ranges = Self {
            min: first.as_ref().to_vec(),
            max: first.as_ref().to_vec(),
        };
        for vector in vectors {
            for (i, &x) in vector.as_ref().iter().enumerate() {
                ranges.min[i] = ranges.min[i].min(x);
                ranges.max[i] = ranges.max[i].max(x);
            }
        }
        Some(ranges)
    }

    pub fn width(&self) -> usize {
        self.min.len()
    }

    /// Each value's place in its dimension's 256 steps, `(x - min) / ((max - min) / 255)` in
    /// f32 as numpy computes it; a dimension that never varied is at its first step.
    fn steps<'a>(&'a self, vector: &'a [f32]) -> impl Iterator<Item = f32> + 'a {
        vector.iter().enumerate().map(|(i, &x)| {
            let step = (self.max[i] - self.min[i]) / 255.0;
            if step > 0.0 {
                (x - self.min[i]) / step
            } else {
                0.0
            }
        })
    }
}

/// sentence-transformers' `int8` codes with `ranges`: the steps less 128, truncated toward
/// zero; values outside the ranges saturate at -128 and 127 (numpy would wrap them around).
pub fn int8(vector: &[f32], ranges: &Ranges) -> Vec<i8> {
    ranges
        .steps(vector)
        .map(|step| (step - 128.0) as i8)
        .collect()
}

/// sentence-transformers' `uint8` codes: the steps truncated, saturating at 0 and 255.
pub fn uint8(vector: &[f32], ranges: &Ranges) -> Vec<u8> {
    ranges.steps(vector).map(|step| step as u8).collect()
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
    fn byte_codes_count_the_steps_of_each_dimensions_range() {
        let ranges = Ranges::of([&[-1.0, 0.0, 5.0][..], &[1.0, 2.0, 5.0]]).unwrap();
        assert_eq!(ranges.min, [-1.0, 0.0, 5.0]);
        assert_eq!(ranges.max, [1.0, 2.0, 5.0]);
        // Steps of 2/255 in f32, as numpy gives them: the top of a range is step 254.99998,
        // the middle 127.49999; both truncate.
        assert_eq!(uint8(&[-1.0, 2.0, 5.0], &ranges), [0, 254, 0]);
        assert_eq!(uint8(&[0.0, 1.0, 7.0], &ranges), [127, 127, 0]);
        assert_eq!(int8(&[-1.0, 2.0, 5.0], &ranges), [-128, 126, -128]);
        assert_eq!(int8(&[0.0, 1.0, 5.0], &ranges), [0, 0, -128]);
        // Outside the ranges: saturated.
        assert_eq!(int8(&[-3.0, 9.0, 5.0], &ranges), [-128, 127, -128]);
        assert_eq!(uint8(&[-3.0, 9.0, 5.0], &ranges), [0, 255, 0]);
    }

    #[test]
    fn bytes_per_vector() {
        assert_eq!(Precision::Float.bytes(384), 1536);
        assert_eq!(Precision::Ubinary.bytes(384), 48);
        assert_eq!(Precision::Binary.bytes(10), 2);
        assert_eq!(Precision::Int8.bytes(384), 384);
    }
}
