//! Locating (and if needed building) the workspace binaries that tests start as processes.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::SystemTime,
};

use anyhow::{Context, bail};

/// The crates the worker is built from: a change in any of them makes a built worker stale.
const WORKER_SOURCES: [&str; 4] = [
    "crates/worker",
    "crates/contract",
    "crates/domain",
    "crates/proto",
];

/// The crates the CLI is built from.
const CLI_SOURCES: [&str; 4] = [
    "crates/cli",
    "crates/contract",
    "crates/domain",
    "crates/proto",
];

/// A binary of the workspace tests start as a process.
struct Binary {
    package: &'static str,
    name: &'static str,
    /// A variable that names the executable to use instead.
    override_var: &'static str,
    sources: &'static [&'static str],
}

/// The `hodei-worker` executable: `HODEI_WORKER_BINARY` if set, else the one in this test's
/// target directory, built with cargo first if it is missing or older than its sources.
pub fn worker_binary() -> anyhow::Result<PathBuf> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            locate(&Binary {
                package: "hodei-worker",
                name: "hodei-worker",
                override_var: "HODEI_WORKER_BINARY",
                sources: &WORKER_SOURCES,
            })
            .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The `hodei` CLI executable: `HODEI_CLI_BINARY` if set, else the one in this test's target
/// directory, built first if it is missing or stale.
pub fn cli_binary() -> anyhow::Result<PathBuf> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            locate(&Binary {
                package: "hodei-cli",
                name: "hodei",
                override_var: "HODEI_CLI_BINARY",
                sources: &CLI_SOURCES,
            })
            .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

fn locate(wanted: &Binary) -> anyhow::Result<PathBuf> {
    let (binary, crate_dirs) = (wanted.name, wanted.sources);
    if let Some(path) = std::env::var_os(wanted.override_var).map(PathBuf::from) {
        if !path.is_file() {
            bail!("{}={} does not exist", wanted.override_var, path.display());
        }
        return Ok(path);
    }
    // A test executable lives in <target>/<profile>/deps/.
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot find the target directory from the test executable")?;
    let candidate = profile_dir.join(binary);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let stale = crate_dirs
        .iter()
        .any(|dir| is_older_than_sources(&candidate, &workspace.join(dir)));
    if candidate.is_file() && !stale {
        return Ok(candidate);
    }

    let target_dir = profile_dir.parent().context("no target directory")?;
    let profile = profile_dir
        .file_name()
        .and_then(|p| p.to_str())
        .unwrap_or("debug");
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .current_dir(&workspace)
        .args([
            "build",
            "--quiet",
            "--package",
            wanted.package,
            "--bin",
            binary,
        ])
        .arg("--target-dir")
        .arg(target_dir);
    if profile != "debug" {
        cargo.args([
            "--profile",
            if profile == "release" {
                "release"
            } else {
                profile
            },
        ]);
    }
    let status = cargo
        .status()
        .with_context(|| format!("running cargo to build {binary}"))?;
    if !status.success() || !candidate.is_file() {
        bail!(
            "{binary} is not built and `cargo build -p {}` failed ({status}); build it or set {}",
            wanted.package,
            wanted.override_var
        );
    }
    Ok(candidate)
}

/// Whether any file under `dir/src` (or its Cargo.toml) is newer than `binary`.
fn is_older_than_sources(binary: &Path, dir: &Path) -> bool {
    let Ok(built) = binary.metadata().and_then(|m| m.modified()) else {
        return true;
    };
    newest_mtime(&dir.join("src"))
        .into_iter()
        .chain(
            dir.join("Cargo.toml")
                .metadata()
                .and_then(|m| m.modified())
                .ok(),
        )
        .any(|modified| modified > built)
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let modified = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(modified);
    }
    newest
}
