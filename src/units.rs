//! Byte sizes in the config file: "512MiB", "2GiB", "1.5GB", or a plain integer of bytes,
//! read by bytesize. (Durations such as "30s" or "1h 30m" are humantime-serde's.)

use bytesize::ByteSize;
use serde::{Deserialize, Deserializer};

pub fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    ByteSize::deserialize(d).map(|size| size.as_u64())
}

pub fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    ByteSize::deserialize(d).map(|size| Some(size.as_u64()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[derive(Deserialize)]
    struct Sizes {
        #[serde(deserialize_with = "byte_size")]
        size: Option<u64>,
        #[serde(with = "humantime_serde")]
        wait: Duration,
    }

    fn read(text: &str) -> Result<Sizes, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn sizes_are_strings_with_units_or_integers() {
        let size = |text: &str| read(&format!("size = {text}\nwait = \"1s\"")).map(|s| s.size);
        assert_eq!(size("\"2GiB\"").unwrap(), Some(2 << 30));
        assert_eq!(size("\"1.5 GB\"").unwrap(), Some(1_500_000_000));
        assert_eq!(size("\"512MiB\"").unwrap(), Some(512 << 20));
        assert_eq!(size("4096").unwrap(), Some(4096));
        assert!(size("\"lots\"").is_err());
    }

    #[test]
    fn durations_are_humantime() {
        let wait = |text: &str| read(&format!("size = 1\nwait = {text}")).map(|s| s.wait);
        assert_eq!(wait("\"10m\"").unwrap(), Duration::from_secs(600));
        assert_eq!(wait("\"1h 30m\"").unwrap(), Duration::from_secs(5400));
        assert!(wait("\"soon\"").is_err());
    }
}
