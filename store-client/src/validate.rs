//! Per-key checks made before a batch reaches the master: a key that fails one gets its own
//! error and the rest of the batch goes on.

use std::collections::HashMap;

/// Longest key accepted (the master refuses longer ones too).
pub const MAX_KEY_LEN: usize = 4096;

/// Why a key was refused before any RPC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyProblem {
    /// Empty or over-long key.
    BadKey(String),
    /// The same key appeared earlier in this batch.
    Duplicate {
        /// Index of the first occurrence.
        first: usize,
    },
}

/// Checks key syntax, and (when `unique`) that no key repeats in the batch: the first
/// occurrence proceeds, later ones get [`KeyProblem::Duplicate`].
pub fn check_keys<K: AsRef<str>>(keys: &[K], unique: bool) -> Vec<Option<KeyProblem>> {
    let mut seen: HashMap<&str, usize> =
        HashMap::with_capacity(if unique { keys.len() } else { 0 });
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            let k = k.as_ref();
            if k.is_empty() {
                return Some(KeyProblem::BadKey("empty key".into()));
            }
            if k.len() > MAX_KEY_LEN {
                return Some(KeyProblem::BadKey(format!(
                    "key of {} bytes exceeds {MAX_KEY_LEN}",
                    k.len()
                )));
            }
            if unique {
                if let Some(&first) = seen.get(k) {
                    return Some(KeyProblem::Duplicate { first });
                }
                seen.insert(k, i);
            }
            None
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_long_and_repeated_keys_are_flagged_individually() {
        let long = "x".repeat(MAX_KEY_LEN + 1);
        let keys = ["a", "", "b", "a", long.as_str(), "a"];
        let r = check_keys(&keys, true);
        assert_eq!(r[0], None);
        assert!(matches!(r[1], Some(KeyProblem::BadKey(_))));
        assert_eq!(r[2], None);
        assert_eq!(r[3], Some(KeyProblem::Duplicate { first: 0 }));
        assert!(matches!(r[4], Some(KeyProblem::BadKey(_))));
        assert_eq!(r[5], Some(KeyProblem::Duplicate { first: 0 }));
        assert_eq!(check_keys(&keys, false)[3], None);
    }
}
