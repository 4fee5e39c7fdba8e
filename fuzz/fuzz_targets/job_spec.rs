//! Job-spec validation (`hodei_domain::JobSpec::new`) on arbitrary input, with the default
//! limits and with tiny ones that put every boundary within the fuzzer's reach.
//!
//! Properties: it never panics; whatever it accepts respects every limit; a refusal always has
//! a message for the person who submitted the spec.
#![no_main]

use std::{collections::BTreeMap, time::Duration};

use arbitrary::Arbitrary;
use hodei_domain::{JobSpec, JobSpecLimits, Resources};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    command: String,
    env: BTreeMap<String, String>,
    timeout_seconds: Option<i64>,
    cpu_millis: u32,
    memory_bytes: u64,
    max_attempts: Option<u32>,
    tiny_limits: bool,
}

fn tiny() -> JobSpecLimits {
    JobSpecLimits {
        default_timeout: Duration::from_secs(5),
        max_timeout: Duration::from_secs(60),
        default_max_attempts: 2,
        max_attempts: 3,
        max_command_bytes: 16,
        max_env_vars: 3,
        max_env_value_bytes: 8,
        max_env_total_bytes: 24,
    }
}

fuzz_target!(|input: Input| {
    let limits = if input.tiny_limits {
        tiny()
    } else {
        JobSpecLimits::default()
    };
    let resources = Resources {
        cpu_millis: input.cpu_millis,
        memory_bytes: input.memory_bytes,
    };
    match JobSpec::new(
        input.command.clone(),
        input.env.clone(),
        input.timeout_seconds,
        resources,
        input.max_attempts,
        &limits,
    ) {
        Ok(spec) => {
            assert_eq!(spec.command, input.command);
            assert!(!spec.command.trim().is_empty());
            assert!(spec.command.len() <= limits.max_command_bytes);
            assert!(!spec.command.contains('\0'));
            assert!(spec.env.len() <= limits.max_env_vars);
            let mut total = 0;
            for (name, value) in &spec.env {
                let mut chars = name.chars();
                assert!(
                    chars
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                );
                assert!(chars.all(|c| c.is_ascii_alphanumeric() || c == '_'));
                assert!(value.len() <= limits.max_env_value_bytes);
                assert!(!value.contains('\0'));
                total += name.len() + value.len();
            }
            assert!(total <= limits.max_env_total_bytes);
            assert!(spec.timeout > Duration::ZERO && spec.timeout <= limits.max_timeout);
            match input.timeout_seconds {
                Some(secs) => assert_eq!(spec.timeout.as_secs(), secs as u64),
                None => assert_eq!(spec.timeout, limits.default_timeout),
            }
            assert!(spec.max_attempts >= 1 && spec.max_attempts <= limits.max_attempts);
            assert_eq!(spec.resources, resources);
        }
        Err(error) => assert!(!error.to_string().is_empty()),
    }
});
