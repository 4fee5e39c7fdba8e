//! Labels on every resource a provider creates.

/// `app.kubernetes.io/managed-by=hodei` marks resources that Hodei owns.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "hodei";
/// `app.kubernetes.io/name=hodei-worker`.
pub const NAME: &str = "app.kubernetes.io/name";
pub const NAME_VALUE: &str = "hodei-worker";
/// The worker id the resource runs.
pub const WORKER_ID: &str = "hodei.io/worker-id";
/// The server deployment that created it. The reaper only touches its own instance's resources,
/// so several servers (or test runs) can share a namespace or a Docker engine.
pub const INSTANCE: &str = "hodei.io/instance";

/// Label selector for all workers of one instance.
pub fn instance_selector(instance: &str) -> String {
    format!("{MANAGED_BY}={MANAGED_BY_VALUE},{INSTANCE}={instance}")
}

/// Whether `value` is a valid Kubernetes label value (also what we require of instance names):
/// at most 63 characters, alphanumerics and `-_.`, starting and ending alphanumeric.
pub fn is_valid_label_value(value: &str) -> bool {
    value.len() <= 63
        && (value.is_empty()
            || (value.starts_with(|c: char| c.is_ascii_alphanumeric())
                && value.ends_with(|c: char| c.is_ascii_alphanumeric())
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_names_manager_and_instance() {
        assert_eq!(
            instance_selector("ci-1"),
            "app.kubernetes.io/managed-by=hodei,hodei.io/instance=ci-1"
        );
    }

    #[test]
    fn label_values_follow_kubernetes_rules() {
        assert!(is_valid_label_value("hodei-e2e.1_x"));
        assert!(!is_valid_label_value("-x"));
        assert!(!is_valid_label_value("a/b"));
        assert!(!is_valid_label_value(&"a".repeat(64)));
    }
}
