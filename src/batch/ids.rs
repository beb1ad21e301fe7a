//! Ids of files and batches: `file-` or `batch_`, 32 hex digits of a UUIDv7 (milliseconds
//! since the epoch first, so ids sort by creation), then `-REPLICA` on a server with a
//! `server.replica_name`. The order lets a router merge the lists of many replicas into one;
//! the name lets it send every call about a file or batch to the replica that holds it.

pub const FILE: &str = "file-";
pub const BATCH: &str = "batch_";
const HEX_DIGITS: usize = 32;

pub fn new_id(prefix: &str, replica: Option<&str>) -> String {
    let key = uuid::Uuid::now_v7().simple();
    match replica {
        Some(replica) => format!("{prefix}{key}-{replica}"),
        None => format!("{prefix}{key}"),
    }
}

/// The replica an id names, if it names one.
pub fn replica_of(id: &str) -> Option<&str> {
    let rest = id.strip_prefix(FILE).or_else(|| id.strip_prefix(BATCH))?;
    let (key, replica) = rest.split_at_checked(HEX_DIGITS)?;
    if !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    replica.strip_prefix('-').filter(|r| !r.is_empty())
}

/// Whether `name` may be a replica's name: a DNS label (what a Kubernetes pod's name is),
/// so that it reads back from any id unambiguously.
pub fn valid_replica_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_replica_and_sort_by_creation() {
        let first = new_id(BATCH, Some("embedserve-2"));
        let second = new_id(BATCH, Some("embedserve-10"));
        assert_eq!(replica_of(&first), Some("embedserve-2"));
        assert_eq!(replica_of(&second), Some("embedserve-10"));
        assert!(first < second, "{first} then {second}");
        let file = new_id(FILE, None);
        assert_eq!(file.len(), FILE.len() + HEX_DIGITS);
        assert_eq!(replica_of(&file), None);
    }

    #[test]
    fn only_well_formed_ids_name_a_replica() {
        for id in [
            "batch_abc-embedserve-0",
            "file-0123456789abcdef0123456789abcdeg-x",
            "file-0123456789abcdef0123456789abcdef-",
            "other-0123456789abcdef0123456789abcdef-x",
            "file-0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(replica_of(id), None, "{id}");
        }
    }

    #[test]
    fn replica_names_are_dns_labels() {
        for good in ["embedserve-0", "a", "replica-12"] {
            assert!(valid_replica_name(good), "{good}");
        }
        for bad in ["", "-a", "a-", "Embedserve", "a.b", "a_b", &"a".repeat(64)] {
            assert!(!valid_replica_name(bad), "{bad}");
        }
    }
}
