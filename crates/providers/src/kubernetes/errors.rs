//! Turning kube-rs errors into [`ProviderError`]s that tell the person at the terminal what
//! failed and what to do about it.

use std::{fmt, time::Duration};

use crate::ProviderError;

use super::PROVIDER;

/// One API request, for error messages: `create pods hodei-worker-… in namespace hodei-e2e`.
#[derive(Debug, Clone)]
pub(super) struct Request<'a> {
    pub verb: &'static str,
    /// Plural resource name as RBAC spells it: `pods`, `secrets`.
    pub resource: &'static str,
    pub name: Option<&'a str>,
    /// None for requests outside any namespace (`GET /version`).
    pub namespace: Option<&'a str>,
}

impl fmt::Display for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if let Some(name) = self.name {
            write!(f, " {name}")?;
        }
        match self.namespace {
            Some(namespace) => write!(f, " in namespace {namespace}"),
            None => Ok(()),
        }
    }
}

/// Whether the API answered 404 Not Found.
pub(super) fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.is_not_found())
}

/// 409: for a delete with a precondition, the object by that name is not the one meant.
pub(super) fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.is_conflict())
}

pub(super) fn timed_out(request: &Request<'_>, after: Duration) -> ProviderError {
    ProviderError::Timeout {
        provider: PROVIDER,
        what: format!("the Kubernetes API to {request}"),
        after,
    }
}

/// `api` names the API in messages: "the Kubernetes API at https://…" when the URL is known.
pub(super) fn from_kube(err: kube::Error, request: &Request<'_>, api: &str) -> ProviderError {
    let rejected = |detail: String| ProviderError::Rejected {
        provider: PROVIDER,
        detail,
    };
    let kube::Error::Api(status) = &err else {
        return ProviderError::Unavailable {
            provider: PROVIDER,
            detail: format!("cannot reach {api} to {request}: {}", chain(&err)),
        };
    };
    let message = status.message.trim();
    let namespace = request.namespace.unwrap_or("(none)");
    if status.is_forbidden() {
        if message.contains("PodSecurity") {
            return rejected(format!(
                "the Pod Security admission of namespace {namespace} refused the worker Pod: \
                 {message}"
            ));
        }
        if message.contains("exceeded quota") {
            return rejected(format!(
                "the ResourceQuota of namespace {namespace} is exhausted: {message}"
            ));
        }
        return rejected(format!(
            "forbidden: cannot {} {} in namespace {namespace} ({message}); grant it to the \
             provider's identity, e.g. apply deploy/kubernetes/rbac-test.yaml (tests) or \
             deploy/kubernetes/server/rbac.yaml (in-cluster server)",
            request.verb, request.resource
        ));
    }
    if status.code == 401 || status.reason == "Unauthorized" {
        return rejected(format!(
            "unauthorized: {api} rejected the credentials while \
             trying to {request} ({message}); check KUBECONFIG or the service account token"
        ));
    }
    if status.is_not_found() && request.verb == "create" {
        return rejected(format!(
            "cannot {request}: namespace {namespace} not found ({message}); create it, e.g. \
             kubectl apply -f deploy/kubernetes/namespace-test.yaml"
        ));
    }
    if status.is_already_exists() || status.is_conflict() {
        return rejected(format!(
            "cannot {request}: it already exists ({message}); worker ids are single-use, so \
             this is a leftover of an earlier attempt: destroy that worker first"
        ));
    }
    if status.is_invalid() || status.code == 400 {
        return rejected(format!(
            "the API refused to {request} as invalid: {message}"
        ));
    }
    ProviderError::Unavailable {
        provider: PROVIDER,
        detail: format!(
            "{api} failed to {request}: HTTP {} {}: {message}",
            status.code, status.reason
        ),
    }
}

/// The error and its causes, `outer: inner: root`, since kube-rs' own message is often just
/// "client error (Connect)".
pub(super) fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    fn request() -> Request<'static> {
        Request {
            verb: "create",
            resource: "pods",
            name: Some("hodei-worker-1"),
            namespace: Some("hodei-e2e"),
        }
    }

    fn api(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(Status::failure(message, reason).with_code(code).boxed())
    }

    #[test]
    fn forbidden_names_the_verb_the_resource_and_the_manifest_to_apply() {
        let err = from_kube(
            api(
                403,
                "Forbidden",
                "pods is forbidden: User \"x\" cannot create",
            ),
            &request(),
            "the Kubernetes API at https://127.0.0.1:6443/",
        );
        let text = err.to_string();
        assert!(matches!(err, ProviderError::Rejected { .. }), "{err:?}");
        assert!(
            text.contains("forbidden: cannot create pods in namespace hodei-e2e"),
            "{text}"
        );
        assert!(text.contains("deploy/kubernetes/rbac-test.yaml"), "{text}");
    }

    #[test]
    fn a_pod_security_refusal_is_not_blamed_on_rbac() {
        let text = from_kube(
            api(
                403,
                "Forbidden",
                "violates PodSecurity \"restricted:latest\"",
            ),
            &request(),
            "the Kubernetes API",
        )
        .to_string();
        assert!(text.contains("Pod Security admission"), "{text}");
        assert!(!text.contains("rbac"), "{text}");
    }

    #[test]
    fn a_missing_namespace_on_create_says_how_to_create_it() {
        let text = from_kube(
            api(404, "NotFound", "namespaces \"hodei-e2e\" not found"),
            &request(),
            "the Kubernetes API",
        )
        .to_string();
        assert!(text.contains("namespace hodei-e2e not found"), "{text}");
        assert!(text.contains("namespace-test.yaml"), "{text}");
    }

    #[test]
    fn server_errors_are_unavailable_and_conflicts_rejected() {
        assert!(matches!(
            from_kube(
                api(503, "ServiceUnavailable", "etcd"),
                &request(),
                "the Kubernetes API"
            ),
            ProviderError::Unavailable { .. }
        ));
        assert!(matches!(
            from_kube(
                api(409, "AlreadyExists", "exists"),
                &request(),
                "the Kubernetes API"
            ),
            ProviderError::Rejected { .. }
        ));
    }
}
