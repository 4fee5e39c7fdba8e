//! Secrets handed to workers: the one-time registration token (`HODEI_TOKEN`) and the session
//! credential returned by `Register`. Both are 256-bit random values, shown as 64 hex digits,
//! and stored only as SHA-256 hashes; they are distinct types so one is never taken for the
//! other.

use std::fmt;

use sha2::{Digest, Sha256};

const TOKEN_BYTES: usize = 32;

/// A string that cannot be a token (wrong length or not hex).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed token: expected {} hexadecimal characters, got {len} characters", TOKEN_BYTES * 2)]
pub struct MalformedToken {
    len: usize,
}

/// Defines a secret type: 256 random bits shown as 64 hex digits, stored only as a
/// [`SecretHash`]. `Debug` never prints it, and there is no `Display`: use `expose`.
macro_rules! secret {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            /// A fresh random value from the operating system's CSPRNG.
            ///
            /// # Panics
            /// If the operating system cannot provide randomness, which leaves no safe way to
            /// continue.
            pub fn generate() -> Self {
                let mut bytes = [0u8; TOKEN_BYTES];
                getrandom::fill(&mut bytes).expect("the OS random number generator failed");
                Self(hex::encode(bytes))
            }

            /// Accepts exactly 64 hex digits (any case).
            pub fn parse(s: &str) -> Result<Self, MalformedToken> {
                let len = s.chars().count();
                if len != TOKEN_BYTES * 2 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(MalformedToken { len });
                }
                Ok(Self(s.to_ascii_lowercase()))
            }

            /// The secret itself, for handing to its holder. Never log it.
            pub fn expose(&self) -> &str {
                &self.0
            }

            /// What is stored at rest.
            pub fn hash(&self) -> SecretHash {
                SecretHash(Sha256::digest(self.0.as_bytes()).into())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }
    };
}

secret! {
    /// The registration token a provider hands a new worker (`HODEI_TOKEN`): bound to one
    /// worker id, valid once, until the provisioning deadline.
    OneTimeToken
}

secret! {
    /// What `Register` gives a worker in exchange for its one-time token: it authenticates the
    /// worker's `Connect` stream for as long as the worker lives. Not one-time: a worker holds it
    /// for its whole life.
    SessionCredential
}

/// SHA-256 of a token. A token has 256 bits of entropy, so an unsalted fast hash is enough:
/// nobody can brute-force the preimage, and lookups stay a single index probe.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecretHash([u8; 32]);

impl SecretHash {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretHash({}…)", hex::encode(&self.0[..4]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_64_hex_digits_and_distinct() {
        let a = OneTimeToken::generate();
        let b = OneTimeToken::generate();
        assert_eq!(a.expose().len(), 64);
        assert!(OneTimeToken::parse(a.expose()).is_ok());
        assert_ne!(a, b);
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let token = OneTimeToken::generate();
        assert!(!format!("{token:?}").contains(token.expose()));
        assert!(!format!("{:?}", token.hash()).contains(token.expose()));
        let session = SessionCredential::generate();
        assert_eq!(format!("{session:?}"), "SessionCredential(<redacted>)");
    }

    #[test]
    fn malformed_tokens_are_refused() {
        assert!(OneTimeToken::parse("").is_err());
        assert!(OneTimeToken::parse("abc").is_err());
        assert!(OneTimeToken::parse(&"g".repeat(64)).is_err());
        assert!(OneTimeToken::parse(&"é".repeat(32)).is_err());
        let err = OneTimeToken::parse("xyz").unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed token: expected 64 hexadecimal characters, got 3 characters"
        );
    }

    #[test]
    fn parsing_is_case_insensitive_and_hashes_agree() {
        let token = OneTimeToken::generate();
        let upper = OneTimeToken::parse(&token.expose().to_ascii_uppercase()).unwrap();
        assert_eq!(upper.hash(), token.hash());
    }
}
