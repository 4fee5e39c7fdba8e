//! The proto → domain conversions at the gRPC edge (`crates/server/src/convert.rs`), fed with
//! arbitrary bytes decoded as the messages clients and workers send.
//!
//! Properties: nothing panics; an accepted job spec survives domain → proto → domain
//! unchanged; ids and enum values either parse or are refused as `InvalidArgument`.
#![no_main]

use hodei_domain::JobSpecLimits;
use hodei_server::fuzzing;
use hodei_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let limits = JobSpecLimits::default();

    if let Ok(request) = pb::QueueJobRequest::decode(data) {
        if let Ok(spec) = fuzzing::spec_from_proto(request.spec, &limits) {
            let again = fuzzing::spec_from_proto(Some(fuzzing::spec_to_proto(&spec)), &limits)
                .expect("a spec the server accepted is accepted again after a round trip");
            assert_eq!(again, spec);
        }
    }

    if let Ok(request) = pb::ListJobsRequest::decode(data) {
        for state in request.states {
            match fuzzing::job_state_from_proto(state) {
                Ok(parsed) => {
                    assert_eq!(i32::from(fuzzing::job_state_to_proto(parsed)), state);
                }
                Err(status) => assert_eq!(status.code(), tonic_code_invalid_argument()),
            }
        }
    }

    if let Ok(request) = pb::GetJobRequest::decode(data) {
        match fuzzing::parse_job_id(&request.job_id) {
            Ok(id) => assert_eq!(
                fuzzing::parse_job_id(&id.to_string()).ok(),
                Some(id),
                "a parsed id prints as itself"
            ),
            Err(status) => assert_eq!(status.code(), tonic_code_invalid_argument()),
        }
    }

    if let Ok(message) = pb::WorkerMessage::decode(data)
        && let Some(pb::worker_message::Msg::Logs(batch)) = message.msg
    {
        for chunk in batch.lines {
            let _ = fuzzing::stream_from_proto(chunk.stream);
            if let Some(at) = fuzzing::datetime(chunk.emitted_at.as_ref()) {
                let back = fuzzing::timestamp(at);
                assert_eq!(fuzzing::datetime(Some(&back)), Some(at));
            }
        }
    }
});

fn tonic_code_invalid_argument() -> fuzzing::Code {
    fuzzing::Code::InvalidArgument
}
