//! A job's secrets: environment whose values are never shown. Validated like the environment,
//! plus what masking needs (a value long enough to be replaced in output without destroying it).

use std::{collections::BTreeMap, fmt};

use crate::job::{JobSpecLimits, is_valid_env_name};

/// Shortest secret value accepted: masking a shorter one would replace ordinary text in the
/// job's output (GitLab asks for 8 for masked variables; 4 keeps short API keys usable).
pub const MIN_SECRET_BYTES: usize = 4;
/// Most secrets one job may carry.
pub const MAX_SECRETS: usize = 64;

/// Why a job's secrets were refused. Never contains a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("secret name {0:?} is invalid: use letters, digits and '_', not starting with a digit")]
    InvalidName(String),
    #[error("{0} is given both as an environment variable and as a secret; give it once")]
    AlsoInEnv(String),
    #[error(
        "secret {name} is {len} bytes; at least {MIN_SECRET_BYTES} are needed so that masking it in output does not hide ordinary text"
    )]
    TooShort { name: String, len: usize },
    #[error("secret {name} is {len} bytes; the limit per value is {max} bytes")]
    TooLarge {
        name: String,
        len: usize,
        max: usize,
    },
    #[error("secret {name} has a NUL byte or a newline in its value")]
    InvalidValue { name: String },
    #[error("{count} secrets given; the limit is {MAX_SECRETS}")]
    TooMany { count: usize },
}

/// Names and values of a job's secrets. `Debug` shows the names only.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct JobSecrets(BTreeMap<String, String>);

impl JobSecrets {
    /// Validates submitted secrets against the job's environment and the limits.
    pub fn new(
        secrets: BTreeMap<String, String>,
        env: &BTreeMap<String, String>,
        limits: &JobSpecLimits,
    ) -> Result<Self, SecretError> {
        if secrets.len() > MAX_SECRETS {
            return Err(SecretError::TooMany {
                count: secrets.len(),
            });
        }
        for (name, value) in &secrets {
            if !is_valid_env_name(name) {
                return Err(SecretError::InvalidName(name.chars().take(64).collect()));
            }
            if env.contains_key(name) {
                return Err(SecretError::AlsoInEnv(name.clone()));
            }
            if value.len() < MIN_SECRET_BYTES {
                return Err(SecretError::TooShort {
                    name: name.clone(),
                    len: value.len(),
                });
            }
            if value.len() > limits.max_env_value_bytes {
                return Err(SecretError::TooLarge {
                    name: name.clone(),
                    len: value.len(),
                    max: limits.max_env_value_bytes,
                });
            }
            // Output is masked line by line: a value spanning lines could never be found.
            if value.contains(['\0', '\n']) {
                return Err(SecretError::InvalidValue { name: name.clone() });
            }
        }
        Ok(Self(secrets))
    }

    /// Secrets as stored, trusted (no validation).
    pub fn from_stored(secrets: BTreeMap<String, String>) -> Self {
        Self(secrets)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Names and values, for the worker's assignment and for storage. Never log them.
    pub fn expose(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

impl fmt::Debug for JobSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn secrets_are_checked_without_ever_showing_a_value() {
        let limits = JobSpecLimits::default();
        let env = secrets(&[("PATH_EXTRA", "/opt")]);
        let ok = JobSecrets::new(secrets(&[("DB_PASSWORD", "hunter22")]), &env, &limits).unwrap();
        assert_eq!(format!("{ok:?}"), r#"{"DB_PASSWORD"}"#);
        let errors = [
            JobSecrets::new(secrets(&[("1X", "hunter22")]), &env, &limits),
            JobSecrets::new(secrets(&[("PATH_EXTRA", "hunter22")]), &env, &limits),
            JobSecrets::new(secrets(&[("PIN", "123")]), &env, &limits),
            JobSecrets::new(secrets(&[("KEY", "two\nlines")]), &env, &limits),
        ];
        for err in errors {
            let message = err.unwrap_err().to_string();
            for value in ["hunter22", "123", "two"] {
                assert!(!message.contains(value), "{message}");
            }
        }
    }
}
