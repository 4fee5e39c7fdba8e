//! The command line and environment a local worker starts with, and how its token reaches it.
//!
//! The worker starts with a **cleared environment**: a job inherits its worker's environment,
//! and the server's holds its database URL and whatever else it was started with. The worker
//! gets only:
//! - of the server's own variables, those in [`INHERITED_FROM_SERVER`] (what a shell and the
//!   usual tools need), and `RUST_LOG` unless [`LocalProviderConfig::worker_log_filter`] sets
//!   it;
//! - the spec's `extra_env` (e.g. `HODEI_TLS_CA_PEM`);
//! - `HODEI_SERVER`, `HODEI_WORKER_ID`, and the label variables `HODEI_MANAGED_BY` and
//!   `HODEI_INSTANCE`, which a caller cannot override;
//! - `HODEI_TOKEN_FILE=/proc/self/fd/0`: the token is written to the worker's standard input, a
//!   pipe, and never appears in an environment, so neither `/proc/<worker>/environ` nor a job's
//!   environment can show it.
//!
//! The labels are also on the command line (`--label=NAME=VALUE`), because the worker makes
//! itself non-dumpable, and then only root can read its `/proc/<pid>/environ`; its
//! `/proc/<pid>/cmdline` stays readable by the server's user.
//!
//! [`LocalProviderConfig::worker_log_filter`]: super::LocalProviderConfig::worker_log_filter

use std::{collections::BTreeMap, ffi::OsString};

use hodei_contract::env;

use crate::{WorkerSpec, labels::MANAGED_BY_VALUE};

/// Environment variables standing in for labels.
pub(super) const ENV_MANAGED_BY: &str = "HODEI_MANAGED_BY";
pub(super) const ENV_INSTANCE: &str = "HODEI_INSTANCE";
/// The flag carrying a label on the worker's command line.
pub(super) const LABEL_FLAG: &str = "--label=";
/// Where the worker reads its token: its standard input, which the provider writes it to.
pub const TOKEN_FILE: &str = "/proc/self/fd/0";
const LOG_FILTER: &str = "RUST_LOG";

/// The server's variables a local worker, and so its jobs, inherit: the search path, home,
/// user, locale, time zone and temporary directory. Nothing else of the server's reaches a job.
pub const INHERITED_FROM_SERVER: [&str; 8] = [
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR",
];

/// The worker's whole environment. `server_var` reads one of the server's variables.
pub(super) fn environment(
    spec: &WorkerSpec,
    log_filter: Option<&str>,
    server_var: impl Fn(&str) -> Option<OsString>,
) -> BTreeMap<String, OsString> {
    let mut vars: BTreeMap<String, OsString> = INHERITED_FROM_SERVER
        .iter()
        .filter_map(|name| Some((name.to_string(), server_var(name)?)))
        .collect();
    let log_filter = log_filter
        .map(OsString::from)
        .or_else(|| server_var(LOG_FILTER));
    if let Some(filter) = log_filter {
        vars.insert(LOG_FILTER.into(), filter);
    }
    vars.extend(
        spec.extra_env
            .iter()
            .map(|(name, value)| (name.clone(), value.into())),
    );
    // A token variable would compete with the file; the worker refuses both together.
    vars.remove(env::TOKEN);
    for (name, value) in labels(spec).into_iter().chain([
        (env::SERVER, spec.server_address.clone()),
        (env::TOKEN_FILE, TOKEN_FILE.to_string()),
    ]) {
        vars.insert(name.to_string(), value.into());
    }
    vars
}

/// The labels as command-line arguments.
pub(super) fn label_args(spec: &WorkerSpec) -> Vec<String> {
    labels(spec)
        .into_iter()
        .map(|(name, value)| format!("{LABEL_FLAG}{name}={value}"))
        .collect()
}

fn labels(spec: &WorkerSpec) -> [(&'static str, String); 3] {
    [
        (ENV_MANAGED_BY, MANAGED_BY_VALUE.to_string()),
        (ENV_INSTANCE, spec.instance.clone()),
        (env::WORKER_ID, spec.worker_id.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use hodei_domain::{OneTimeToken, Resources, WorkerId};

    use super::*;

    fn spec() -> WorkerSpec {
        WorkerSpec {
            worker_id: WorkerId::new(),
            token: OneTimeToken::generate(),
            server_address: "http://127.0.0.1:1".into(),
            instance: "ci-3".into(),
            resources: Resources::default(),
            lifetime: None,
            extra_env: BTreeMap::from([
                (env::TLS_CA_PEM.to_string(), "pem".to_string()),
                (env::TOKEN.to_string(), "smuggled".to_string()),
                (env::SERVER.to_string(), "http://elsewhere:1".to_string()),
            ]),
        }
    }

    fn server_environment() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            ("PATH", "/usr/bin:/bin"),
            ("HOME", "/home/hodei"),
            ("HODEI_DATABASE_URL", "postgres://u:pw@h/db"),
            ("SOME_SECRET", "s3cr3t"),
            ("AWS_SECRET_ACCESS_KEY", "k"),
            ("RUST_LOG", "info"),
        ])
    }

    fn names(vars: &BTreeMap<String, OsString>) -> Vec<&str> {
        vars.keys().map(String::as_str).collect()
    }

    #[test]
    fn the_worker_gets_only_the_allowed_server_variables_and_its_own() {
        let spec = spec();
        let server = server_environment();
        let vars = environment(&spec, None, |name| server.get(name).map(OsString::from));

        assert_eq!(
            names(&vars),
            vec![
                "HODEI_INSTANCE",
                "HODEI_MANAGED_BY",
                "HODEI_SERVER",
                "HODEI_TLS_CA_PEM",
                "HODEI_TOKEN_FILE",
                "HODEI_WORKER_ID",
                "HOME",
                "PATH",
                "RUST_LOG",
            ]
        );
        assert_eq!(
            vars["HODEI_SERVER"], "http://127.0.0.1:1",
            "extra_env overrode it"
        );
        assert_eq!(vars["HODEI_TOKEN_FILE"], "/proc/self/fd/0");
        assert_eq!(vars["HODEI_WORKER_ID"], spec.worker_id.to_string().as_str());
        assert_eq!(vars["HODEI_INSTANCE"], "ci-3");
        assert_eq!(vars["RUST_LOG"], "info");
        let values: Vec<_> = vars.values().collect();
        assert!(
            !values.contains(&&OsString::from(spec.token.expose())),
            "the token is in the environment"
        );
    }

    #[test]
    fn a_configured_log_filter_wins_over_the_servers() {
        let server = server_environment();
        let vars = environment(&spec(), Some("debug"), |name| {
            server.get(name).map(OsString::from)
        });
        assert_eq!(vars["RUST_LOG"], "debug");
    }

    #[test]
    fn the_labels_are_on_the_command_line_too() {
        let spec = spec();
        assert_eq!(
            label_args(&spec),
            vec![
                "--label=HODEI_MANAGED_BY=hodei".to_string(),
                "--label=HODEI_INSTANCE=ci-3".to_string(),
                format!("--label=HODEI_WORKER_ID={}", spec.worker_id),
            ]
        );
    }
}
