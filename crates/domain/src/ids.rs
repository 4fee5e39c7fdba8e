//! Identifiers. UUIDv7 so that ids sort by creation time in indexes and listings.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An id string that is not a UUID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid {kind} id {input:?}: expected a UUID such as 0192f0c4-8a51-7c3e-9f6e-2d8b1c7a5e40"
)]
pub struct IdParseError {
    kind: &'static str,
    input: String,
}

macro_rules! id_type {
    ($name:ident, $kind:literal) => {
        #[doc = concat!("Identifier of a ", $kind, ".")]
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s.trim())
                    .map(Self)
                    .map_err(|_| IdParseError {
                        kind: $kind,
                        input: s.chars().take(64).collect(),
                    })
            }
        }
    };
}

id_type!(JobId, "job");
id_type!(WorkerId, "worker");
id_type!(TokenId, "API token");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_strings() {
        let id = JobId::new();
        assert_eq!(id.to_string().parse::<JobId>().unwrap(), id);
    }

    #[test]
    fn a_malformed_id_names_the_kind_and_the_input() {
        let err = "nope".parse::<WorkerId>().unwrap_err();
        assert!(
            err.to_string().contains("invalid worker id \"nope\""),
            "{err}"
        );
    }

    #[test]
    fn ids_sort_by_creation() {
        let a = JobId::new();
        let b = JobId::new();
        assert!(a < b);
    }
}
