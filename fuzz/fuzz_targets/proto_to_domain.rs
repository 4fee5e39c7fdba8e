//! The proto → domain conversions of `hodei-contract` (what the server's gRPC edge, the worker
//! and the CLI use), fed with arbitrary bytes decoded as the messages clients, workers and the
//! server send.
//!
//! Properties: nothing panics; an accepted job spec or assignment survives domain → proto →
//! domain unchanged; ids and enum values either parse or are refused with a sentence (which the
//! server answers `INVALID_ARGUMENT`).
#![no_main]

use hodei_contract::{Assignment, convert};
use hodei_domain::JobSpecLimits;
use hodei_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let limits = JobSpecLimits::default();

    if let Ok(request) = pb::QueueJobRequest::decode(data) {
        if let Ok((spec, _secrets)) = convert::spec_from_proto(request.spec, &limits) {
            // What clients see of a stored spec has no secrets; the rest survives unchanged.
            let shown = convert::spec_to_proto(&spec);
            assert!(shown.secrets.is_empty(), "a spec shown to clients has no secret");
            let (again, no_secrets) = convert::spec_from_proto(Some(shown), &limits)
                .expect("a spec the server accepted is accepted again after a round trip");
            assert_eq!(again, spec);
            assert!(no_secrets.is_empty());
        }
    }

    if let Ok(request) = pb::ListJobsRequest::decode(data) {
        for state in request.states {
            match convert::job_state_from_proto(state) {
                Ok(parsed) => {
                    assert_eq!(i32::from(convert::job_state_to_proto(parsed)), state);
                }
                Err(refused) => assert!(!refused.to_string().is_empty()),
            }
        }
    }

    if let Ok(request) = pb::GetJobRequest::decode(data) {
        match convert::parse_job_id(&request.job_id) {
            Ok(id) => assert_eq!(
                convert::parse_job_id(&id.to_string()).ok(),
                Some(id),
                "a parsed id prints as itself"
            ),
            Err(refused) => assert!(!refused.to_string().is_empty()),
        }
    }

    if let Ok(message) = pb::ServerMessage::decode(data)
        && let Some(pb::server_message::Msg::Assign(assign)) = message.msg
        && let Ok(assignment) = Assignment::from_wire(assign)
    {
        assert_eq!(
            Assignment::from_wire(assignment.to_wire()).as_ref(),
            Ok(&assignment),
            "an accepted assignment survives the wire"
        );
    }

    if let Ok(message) = pb::WorkerMessage::decode(data) {
        match message.msg {
            Some(pb::worker_message::Msg::Logs(batch)) => {
                // Any first_sequence is representable: the server checks it against its own.
                let _ = batch.first_sequence.checked_add(batch.lines.len() as u64);
                for chunk in batch.lines {
                    let _ = convert::stream_from_proto(chunk.stream);
                    if let Some(at) = convert::datetime(chunk.emitted_at.as_ref()) {
                        let back = convert::timestamp(at);
                        assert_eq!(convert::datetime(Some(&back)), Some(at));
                    }
                }
            }
            Some(pb::worker_message::Msg::JobFinished(finished)) => {
                match convert::report_from_proto(&finished, None) {
                    convert::WorkerReport::Ended(outcome) => {
                        assert!(outcome.state().is_terminal());
                    }
                    // A platform stop is no result: the job runs again.
                    convert::WorkerReport::Interrupted { .. } => {
                        assert_eq!(finished.outcome, pb::JobOutcome::Interrupted as i32);
                    }
                }
            }
            Some(pb::worker_message::Msg::Resume(resume)) => {
                match convert::held_from_resume(&resume) {
                    Ok(None) => assert!(resume.job_id.is_empty()),
                    Ok(Some(held)) => {
                        assert_eq!(
                            convert::parse_job_id(&held.job_id.to_string()).ok(),
                            Some(held.job_id)
                        );
                        if let Some(finished) = &held.finished {
                            assert_eq!(finished.job_id, resume.job_id);
                            let _ = convert::report_from_proto(finished, None);
                        }
                    }
                    Err(refused) => assert!(!refused.to_string().is_empty()),
                }
            }
            _ => {}
        }
    }
});
