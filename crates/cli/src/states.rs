//! Job, worker and API token states between the wire (`hodei.v1` enums as `i32`) and the words people
//! read and type (`queued`, `timed_out`, ...), which are the domain's names. The mapping is the
//! contract's ([`hodei_contract::convert`]); what is the CLI's own is leniency: a value newer than
//! this client is shown as `unknown`, and states are typed in any case, with `-` or `_`.

use chrono::{DateTime, Utc};
use hodei_contract::convert;
use hodei_domain::{JobState, WorkerState};
use hodei_proto::v1 as pb;

use crate::output::time::instant;

/// The domain state of a wire value; `None` for `UNSPECIFIED` or a value newer than this client,
/// which the CLI shows rather than refuses (a newer server may know more states).
pub fn job_state(wire: i32) -> Option<JobState> {
    convert::job_state_from_proto(wire).ok()
}

pub fn job_state_to_wire(state: JobState) -> pb::JobState {
    convert::job_state_to_proto(state)
}

/// `queued`, `timed_out`, ... or `unknown` for a state this client does not know.
pub fn job_state_name(wire: i32) -> &'static str {
    job_state(wire).map_or("unknown", JobState::as_str)
}

/// `idle`, `lost`, ... or `unknown` for a state this client does not know.
pub fn worker_state_name(wire: i32) -> &'static str {
    convert::worker_state_from_proto(wire).map_or("unknown", WorkerState::as_str)
}

/// `revoked`, `expired` or `active`: whether a server accepts the token at `now` (as far as
/// this client's clock says).
pub fn token_state_name(token: &pb::ApiToken, now: DateTime<Utc>) -> &'static str {
    if token.revoked_at.is_some() {
        "revoked"
    } else if instant(token.expires_at.as_ref()).is_some_and(|at| at <= now) {
        "expired"
    } else {
        "active"
    }
}

/// For clap: `--state timed_out`; also accepts `timed-out` and any case.
pub fn parse_job_state(input: &str) -> Result<JobState, String> {
    let normalized = input.trim().to_ascii_lowercase().replace('-', "_");
    normalized.parse().map_err(|_| {
        let known: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown job state {input:?}; one of: {}", known.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_domain_state_survives_the_wire() {
        for state in JobState::ALL {
            assert_eq!(job_state(job_state_to_wire(state) as i32), Some(state));
        }
    }

    #[test]
    fn unknown_wire_values_have_a_name_instead_of_an_error() {
        assert_eq!(job_state_name(0), "unknown");
        assert_eq!(job_state_name(99), "unknown");
        assert_eq!(job_state_name(pb::JobState::TimedOut as i32), "timed_out");
        assert_eq!(worker_state_name(99), "unknown");
        assert_eq!(worker_state_name(pb::WorkerState::Lost as i32), "lost");
    }

    #[test]
    fn a_token_is_revoked_expired_or_active() {
        let now = Utc::now();
        let at = |seconds: i64| {
            Some(hodei_proto::Timestamp {
                seconds: now.timestamp() + seconds,
                nanos: 0,
            })
        };
        let token = |expires_at, revoked_at| pb::ApiToken {
            expires_at,
            revoked_at,
            ..Default::default()
        };
        assert_eq!(token_state_name(&token(None, None), now), "active");
        assert_eq!(token_state_name(&token(at(60), None), now), "active");
        assert_eq!(token_state_name(&token(at(-60), None), now), "expired");
        assert_eq!(token_state_name(&token(at(60), at(-1)), now), "revoked");
    }

    #[test]
    fn states_are_parsed_leniently_and_errors_list_the_choices() {
        assert_eq!(parse_job_state("Timed-Out"), Ok(JobState::TimedOut));
        let err = parse_job_state("done").unwrap_err();
        assert!(err.contains("queued") && err.contains("timed_out"), "{err}");
    }
}
