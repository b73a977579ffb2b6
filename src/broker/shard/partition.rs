//! Partitions of a sharded manager kind: the hash that routes a key to its
//! partition, the key a message names, and the record of a kind's
//! partition count on the broker.
//!
//! ```text
//! key bytes --FNV-1a 64--> h --h mod N--> partition p --> custody.<kind>.<p>
//! ```

use std::borrow::Cow;

use super::super::error::BrokerError;
use super::super::names;

/// The most partitions a sharded kind may have.
pub const MAX_PARTITIONS: u32 = 4096;

/// The 64-bit FNV-1a hash of `bytes` (Fowler, Noll and Vo; offset basis
/// `0xcbf29ce484222325`, prime `0x100000001b3`), the hash that routes keys
/// to partitions.
///
/// It is defined byte by byte with wrapping 64-bit arithmetic, so it gives
/// the same value on every platform, Rust release and process, unlike
/// `std`'s `DefaultHasher`, whose algorithm may change and which Rust seeds
/// per process for `HashMap`s.
///
/// # Examples
///
/// ```
/// use custody::broker::fnv1a_64;
///
/// // The published test vectors of FNV-1a 64.
/// assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
/// assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
/// assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
/// ```
pub const fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// The partition of `key` among `partitions`: [`fnv1a_64`] of the key's
/// bytes modulo the partition count. One key always lands in one
/// partition, in every process, for as long as the count stays the same.
///
/// # Panics
///
/// If `partitions` is zero.
///
/// # Examples
///
/// ```
/// use custody::broker::partition_of;
///
/// let p = partition_of(b"account-17", 8);
/// assert!(p < 8);
/// assert_eq!(p, partition_of(b"account-17", 8)); // stable
/// ```
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a sharded kind has at least one partition");
    (fnv1a_64(key) % u64::from(partitions)) as u32
}

/// A message that names the key it is routed by: every message with the
/// same key lands in the same partition, and keeps its order there.
///
/// # Examples
///
/// ```
/// use std::borrow::Cow;
/// use custody::broker::PartitionKey;
///
/// enum Account {
///     Deposit { account: String, cents: i64 },
/// }
///
/// impl PartitionKey for Account {
///     fn partition_key(&self) -> Cow<'_, [u8]> {
///         match self {
///             Account::Deposit { account, .. } => Cow::Borrowed(account.as_bytes()),
///         }
///     }
/// }
/// ```
pub trait PartitionKey {
    /// The bytes this message is routed by.
    fn partition_key(&self) -> Cow<'_, [u8]>;
}

/// The manager name of partition `p` of kind `kind`, which is also what its
/// queue is named after: `custody.<kind>.<p>`.
pub(crate) fn partition_name(kind: &str, p: u32) -> String {
    format!("{kind}.{p}")
}

/// Checks a kind's name and partition count.
pub(crate) fn check(kind: &str, partitions: u32) -> Result<(), BrokerError> {
    // The longest partition name must still make valid queue names.
    names::check_name(&partition_name(kind, MAX_PARTITIONS))
        .map_err(|_| BrokerError::InvalidName(kind.to_owned()))?;
    if partitions == 0 || partitions > MAX_PARTITIONS {
        return Err(BrokerError::InvalidPartitions {
            kind: kind.to_owned(),
            partitions,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_64_matches_the_published_test_vectors() {
        // From the reference implementation's test suite (Landon Curt Noll).
        assert_eq!(fnv1a_64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a_64(b"b"), 0xaf63df4c8601f1a5);
        assert_eq!(fnv1a_64(b"foobar"), 0x85944171f73967e8);
        assert_eq!(fnv1a_64(b"chongo was here!\n"), 0x46810940eff5f915);
    }

    #[test]
    fn keys_spread_over_every_partition_and_stay_where_they_land() {
        let mut counts = [0u32; 16];
        for i in 0..16_000u32 {
            let key = format!("account-{i}");
            let p = partition_of(key.as_bytes(), 16);
            assert_eq!(p, partition_of(key.as_bytes(), 16));
            counts[p as usize] += 1;
        }
        // 1,000 expected in each; FNV-1a spreads these keys within 15%.
        for (p, n) in counts.iter().enumerate() {
            assert!((850..=1150).contains(n), "partition {p} got {n} of 16,000");
        }
    }

    #[test]
    fn one_partition_takes_every_key() {
        assert_eq!(partition_of(b"anything", 1), 0);
        assert_eq!(partition_of(b"", 1), 0);
    }

    #[test]
    fn counts_outside_one_to_the_maximum_are_refused() {
        assert!(matches!(
            check("accounts", 0),
            Err(BrokerError::InvalidPartitions { partitions: 0, .. })
        ));
        assert!(matches!(
            check("accounts", MAX_PARTITIONS + 1),
            Err(BrokerError::InvalidPartitions { .. })
        ));
        assert!(check("accounts", MAX_PARTITIONS).is_ok());
        assert!(matches!(
            check(&"x".repeat(names::MAX_NAME), 4),
            Err(BrokerError::InvalidName(_))
        ));
    }
}
