//! `kubectl`, for what users type: `apply -k`, `delete -k`, `rollout restart`. Everything the
//! tests only read goes through kube-rs instead.

use std::process::Command;

use anyhow::{Context, bail};

/// The kubectl the Kind setup chose (`HODEI_KUBECTL_BIN`, within one minor of the node), else
/// the one on `PATH`; `KUBECONFIG` is inherited.
pub struct Kubectl {
    program: String,
}

impl Kubectl {
    pub fn from_env() -> Self {
        Self {
            program: std::env::var("HODEI_KUBECTL_BIN").unwrap_or_else(|_| "kubectl".into()),
        }
    }

    /// Runs `kubectl ARGS`, returning its standard output; fails with its standard error.
    /// Blocking: for the set-up and the clean-up, and calls that return at once.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new(&self.program)
            .args(args)
            .output()
            .with_context(|| format!("cannot run {} (set HODEI_KUBECTL_BIN)", self.program))?;
        if !output.status.success() {
            bail!(
                "kubectl {} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Like [`Kubectl::run`], for diagnostics: the output or the error, as text.
    pub fn show(&self, args: &[&str]) -> String {
        match self.run(args) {
            Ok(output) => output,
            Err(e) => format!("{e:#}"),
        }
    }
}
