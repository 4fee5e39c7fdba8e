//! Which RPC needs what: one table for every method the server serves. A method without a row
//! is refused, so a new RPC is closed until someone decides who may call it (and a unit test
//! fails until then).

use hodei_domain::Scope;

/// What a call to one method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Anyone: health checks and reflection.
    Open,
    /// A worker agent: authenticated by its one-time token, then its session credential, in
    /// the agent service itself. Never an API principal.
    Agent,
    /// An API principal holding at least one of these scopes. Calls about one job also check,
    /// in the service, that the job is the principal's own (or that it has `jobs:admin`).
    AnyOf(&'static [Scope]),
}

const READ_JOBS: &[Scope] = &[Scope::JobsRead, Scope::JobsSubmit, Scope::JobsAdmin];
const CANCEL_JOBS: &[Scope] = &[Scope::JobsSubmit, Scope::JobsAdmin];

/// Services whose every method is open.
const OPEN_SERVICES: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Every method of the `hodei.v1` services, and what calling it needs.
pub const RULES: &[(&str, Rule)] = &[
    (
        "/hodei.v1.JobService/QueueJob",
        Rule::AnyOf(&[Scope::JobsSubmit]),
    ),
    ("/hodei.v1.JobService/GetJob", Rule::AnyOf(READ_JOBS)),
    ("/hodei.v1.JobService/ListJobs", Rule::AnyOf(READ_JOBS)),
    ("/hodei.v1.JobService/CancelJob", Rule::AnyOf(CANCEL_JOBS)),
    (
        "/hodei.v1.LogStreamService/SubscribeLogs",
        Rule::AnyOf(READ_JOBS),
    ),
    ("/hodei.v1.LogStreamService/GetLogs", Rule::AnyOf(READ_JOBS)),
    (
        "/hodei.v1.WorkerQueryService/ListWorkers",
        Rule::AnyOf(&[Scope::WorkersRead]),
    ),
    (
        "/hodei.v1.TokenService/CreateToken",
        Rule::AnyOf(&[Scope::TokensAdmin]),
    ),
    (
        "/hodei.v1.TokenService/ListTokens",
        Rule::AnyOf(&[Scope::TokensAdmin]),
    ),
    (
        "/hodei.v1.TokenService/RevokeToken",
        Rule::AnyOf(&[Scope::TokensAdmin]),
    ),
    ("/hodei.v1.WorkerAgentService/Register", Rule::Agent),
    ("/hodei.v1.WorkerAgentService/Connect", Rule::Agent),
];

/// The rule for a request path (`/package.Service/Method`); `None`: refuse it.
pub fn rule_for(path: &str) -> Option<Rule> {
    if OPEN_SERVICES.iter().any(|prefix| path.starts_with(prefix)) {
        return Some(Rule::Open);
    }
    RULES
        .iter()
        .find(|(method, _)| *method == path)
        .map(|(_, rule)| *rule)
}

#[cfg(test)]
mod tests {
    use hodei_proto::v1::FILE_DESCRIPTOR_SET;
    use prost::Message;

    use super::*;

    /// `/hodei.v1.Service/Method` for every method the API defines.
    fn api_methods() -> Vec<String> {
        let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)
            .expect("the embedded descriptor set decodes");
        set.file
            .iter()
            .filter(|file| file.package() == "hodei.v1")
            .flat_map(|file| {
                file.service.iter().flat_map(move |service| {
                    service.method.iter().map(move |method| {
                        format!("/{}.{}/{}", file.package(), service.name(), method.name())
                    })
                })
            })
            .collect()
    }

    #[test]
    fn every_method_of_the_api_has_exactly_one_rule() {
        let methods = api_methods();
        assert!(methods.len() >= 12, "{methods:?}");
        for method in &methods {
            let rows = RULES.iter().filter(|(m, _)| m == method).count();
            assert_eq!(rows, 1, "{method} has {rows} rules in access::rules::RULES");
        }
        for (method, _) in RULES {
            assert!(
                methods.iter().any(|m| m == method),
                "{method} is not in the API"
            );
        }
    }

    #[test]
    fn unknown_paths_are_refused_and_health_is_open() {
        assert_eq!(rule_for("/hodei.v1.JobService/DropAllJobs"), None);
        assert_eq!(rule_for("/grpc.health.v1.Health/Check"), Some(Rule::Open));
        assert_eq!(
            rule_for("/hodei.v1.JobService/QueueJob"),
            Some(Rule::AnyOf(&[Scope::JobsSubmit]))
        );
    }
}
