//! Turning engine errors into [`ProviderError`]s that say what failed and what to do.

use std::time::Duration;

use bollard::errors::Error as DockerError;
use hodei_domain::WorkerFailure;

use super::PROVIDER;
use crate::ProviderError;

/// Why a missing worker image is not pulled, and how to get one.
pub const IMAGE_NOT_PRESENT: &str =
    "image not present on the Docker engine; build it with scripts/build-worker-image.sh";

/// The HTTP status of an error the engine answered with.
pub(super) fn status_of(error: &DockerError) -> Option<u16> {
    match error {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

pub(super) fn is_not_found(error: &DockerError) -> bool {
    status_of(error) == Some(404)
}

/// The engine's own message, without bollard's "Docker responded with status code" prefix.
pub(super) fn message_of(error: &DockerError) -> String {
    match error {
        DockerError::DockerResponseServerError { message, .. } => message.trim().to_string(),
        other => other.to_string(),
    }
}

/// The engine cannot be used at all.
pub(super) fn unreachable(host: &str, detail: impl std::fmt::Display) -> ProviderError {
    ProviderError::Unavailable {
        provider: PROVIDER,
        detail: format!("Docker engine not reachable at {host}: {detail}; is dockerd running?"),
    }
}

/// A failed request: `what` says which (e.g. "removing container hodei-worker-…").
pub(super) fn request_failed(what: &str, error: DockerError, timeout: Duration) -> ProviderError {
    match error {
        DockerError::RequestTimeoutError => ProviderError::Timeout {
            provider: PROVIDER,
            what: what.to_string(),
            after: timeout,
        },
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } if status_code < 500 => ProviderError::Rejected {
            provider: PROVIDER,
            detail: format!("{what}: {} (HTTP {status_code})", message.trim()),
        },
        other => ProviderError::Unavailable {
            provider: PROVIDER,
            detail: format!("{what}: {other}"),
        },
    }
}

/// Creating a container fails fast, without pulling, when the image is missing or malformed;
/// both are classified worker failures.
pub(super) fn create_failed(
    image: &str,
    container: &str,
    error: DockerError,
    timeout: Duration,
) -> ProviderError {
    let message = message_of(&error);
    match status_of(&error) {
        Some(404) if message.contains("No such image") => {
            // Permanent: the provider never pulls, so retrying cannot make it appear.
            ProviderError::WorkerFailed(WorkerFailure::ImageNotFound {
                image: image.to_string(),
                detail: IMAGE_NOT_PRESENT.to_string(),
            })
        }
        Some(400) if message.contains("invalid reference format") => {
            ProviderError::WorkerFailed(WorkerFailure::InvalidImage {
                image: image.to_string(),
                detail: message,
            })
        }
        Some(409) => ProviderError::Rejected {
            provider: PROVIDER,
            detail: format!(
                "container {container} already exists (a worker id is used once): {message}"
            ),
        },
        _ => request_failed(&format!("creating container {container}"), error, timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(status_code: u16, message: &str) -> DockerError {
        DockerError::DockerResponseServerError {
            status_code,
            message: message.into(),
        }
    }

    const T: Duration = Duration::from_secs(30);

    #[test]
    fn a_missing_image_is_a_permanent_image_failure_that_says_how_to_build_it() {
        let err = create_failed(
            "hodei-worker:x",
            "c",
            engine(404, "No such image: hodei-worker:x"),
            T,
        );
        let ProviderError::WorkerFailed(failure @ WorkerFailure::ImageNotFound { image, detail }) =
            &err
        else {
            panic!("{err:?}")
        };
        assert!(failure.is_permanent());
        assert_eq!(image, "hodei-worker:x");
        assert!(detail.contains("scripts/build-worker-image.sh"), "{detail}");
    }

    #[test]
    fn a_malformed_image_reference_is_an_invalid_image_failure() {
        let err = create_failed(
            "Bad//Ref",
            "c",
            engine(
                400,
                "invalid reference format: repository name must be lowercase",
            ),
            T,
        );
        assert!(
            matches!(
                err,
                ProviderError::WorkerFailed(WorkerFailure::InvalidImage { .. })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn a_name_conflict_is_rejected_with_the_container_name() {
        let err = create_failed("i", "hodei-worker-1", engine(409, "Conflict."), T);
        assert!(
            err.to_string().contains("hodei-worker-1 already exists"),
            "{err}"
        );
    }

    #[test]
    fn client_errors_are_rejections_server_errors_and_transport_failures_unavailability() {
        assert!(matches!(
            request_failed("x", engine(400, "bad"), T),
            ProviderError::Rejected { .. }
        ));
        assert!(matches!(
            request_failed("x", engine(500, "boom"), T),
            ProviderError::Unavailable { .. }
        ));
        assert!(matches!(
            request_failed("x", DockerError::RequestTimeoutError, T),
            ProviderError::Timeout { after, .. } if after == T
        ));
    }

    #[test]
    fn an_unreachable_engine_names_the_address_and_the_likely_cause() {
        let err = unreachable("unix:///var/run/docker.sock", "connection refused");
        assert_eq!(
            err.to_string(),
            "docker provider unavailable: Docker engine not reachable at \
             unix:///var/run/docker.sock: connection refused; is dockerd running?"
        );
    }
}
