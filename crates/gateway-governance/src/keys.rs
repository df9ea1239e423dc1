//! Secrets: hashing, constant-time comparison and generation.
//!
//! Only the SHA-256 digest of a secret is kept, in memory and on disk. A presented secret is hashed
//! and looked up by digest; the match is then confirmed with a constant-time comparison
//! (`subtle`). Lookup timing can only reveal something about the digest, which does not help
//! recover a secret.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::GovernanceError;

/// SHA-256 of a secret.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Constant-time equality of two digests.
pub fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

/// A fresh secret: `vk-` and 32 hex digits (128 random bits from the OS).
pub fn generate_secret() -> Result<String, GovernanceError> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(|e| GovernanceError::Random(e.to_string()))?;
    Ok(format!("vk-{}", hex::encode(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_look_right_and_differ() {
        let a = generate_secret().unwrap_or_default();
        let b = generate_secret().unwrap_or_default();
        assert_eq!(a.len(), 35, "vk- plus 32 hex digits: {a}");
        assert!(a.starts_with("vk-") && a[3..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(digests_equal(&hash_secret(&a), &hash_secret(&a)));
        assert!(!digests_equal(&hash_secret(&a), &hash_secret(&b)));
    }
}
