//! A PostgreSQL on this machine that Pods reach: the servers' suite runs `hodei-server` in the
//! cluster, and the testkit's private PostgreSQL listens on a Unix socket only.
//!
//! It listens on one address — the gateway of the `kind` Docker network, which is this machine
//! as Pods see it — on a free port, with a random password (scram-sha-256), and dies with the
//! test (`die_with_parent`) or when dropped. As root it runs as `postgres` (or `nobody`), as the
//! testkit's does.

use std::{
    net::{IpAddr, TcpListener},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use hodei_testkit::{Probe, process::die_with_parent, wait_for};
use nix::unistd::{User, geteuid};
use sqlx::{Connection, PgConnection};

const DATABASE: &str = "hodei";
const USER: &str = "postgres";

pub struct HostPostgres {
    dir: tempfile::TempDir,
    child: Child,
    url: String,
}

impl HostPostgres {
    /// Starts a server listening on `address` only, with an empty database `hodei`.
    pub async fn start(address: IpAddr) -> anyhow::Result<Self> {
        let bindir = postgres_bindir().context(
            "no PostgreSQL binaries (initdb, postgres): set HODEI_PG_BIN or install PostgreSQL \
             (Debian: apt-get install postgresql)",
        )?;
        let run_as = unprivileged_user()?;
        let dir = tempfile::Builder::new().prefix("hodei-k8s-pg-").tempdir()?;
        chown(dir.path(), run_as)?;
        let password = uuid::Uuid::new_v4().simple().to_string();
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, format!("{password}\n"))?;
        std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600))?;
        chown(&password_file, run_as)?;

        let data = dir.path().join("data");
        let output = as_user(Command::new(bindir.join("initdb")), run_as)
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "-E", "UTF8", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", password_file.display()))
            .output()
            .context("running initdb")?;
        if !output.status.success() {
            bail!(
                "initdb failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        // initdb admits TCP clients from loopback only; the Pods come from the cluster's
        // network, through the gateway. Only with the password.
        let hba = data.join("pg_hba.conf");
        let mut rules = std::fs::read_to_string(&hba)?;
        rules.push_str("host all all 0.0.0.0/0 scram-sha-256\n");
        std::fs::write(&hba, rules)?;

        let port = free_port(address)?;
        let log_path = dir.path().join("postgres.log");
        let log = std::fs::File::create(&log_path)?;
        chown(&log_path, run_as)?;
        let mut command = as_user(Command::new(bindir.join("postgres")), run_as);
        command
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(dir.path())
            .args(["-c", &format!("listen_addresses={address}")])
            .args(["-c", &format!("port={port}")])
            // Durability is pointless for a throw-away database; three servers' pools are not.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=300"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = die_with_parent(&mut command)
            .spawn()
            .context("starting postgres")?;

        let host = match address {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        let server = Self {
            url: format!("postgres://{USER}:{password}@{host}:{port}/{DATABASE}?sslmode=disable"),
            dir,
            child,
        };
        let admin_url = server.url.replace(&format!("/{DATABASE}?"), "/postgres?");
        let log_path = server.log_path();
        let mut admin = wait_for(
            &format!("PostgreSQL to accept connections on {host}:{port}"),
            Duration::from_secs(30),
            || {
                let (url, log_path) = (admin_url.clone(), log_path.clone());
                async move {
                    Ok(match PgConnection::connect(&url).await {
                        Ok(connection) => Probe::Ready(connection),
                        Err(e) => Probe::Pending(format!("{e}; log: {}", log_tail(&log_path))),
                    })
                }
            },
        )
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {DATABASE}")))
            .execute(&mut admin)
            .await?;
        Ok(server)
    }

    /// The database's URL, valid on this machine and in the cluster's Pods alike; holds the
    /// password.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }
}

impl Drop for HostPostgres {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on at `address` (free when this returns; PostgreSQL takes it next).
fn free_port(address: IpAddr) -> anyhow::Result<u16> {
    let listener = TcpListener::bind((address, 0)).with_context(|| {
        format!(
            "cannot listen on {address}: is it an address of this machine? (HODEI_E2E_SERVER_HOST \
             must be the 'kind' network's gateway, not a name)"
        )
    })?;
    Ok(listener.local_addr()?.port())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// `HODEI_PG_BIN`, `pg_config --bindir`, Debian's newest `/usr/lib/postgresql/*/bin`, or `PATH`:
/// the testkit's order.
fn postgres_bindir() -> Option<PathBuf> {
    let has_binaries = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("HODEI_PG_BIN").map(PathBuf::from) {
        return has_binaries(&dir).then_some(dir);
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if output.status.success() && has_binaries(&dir) {
            return Some(dir);
        }
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_binaries(dir))
        .collect();
    debian.sort();
    if let Some((_, dir)) = debian.pop() {
        return Some(dir);
    }
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|dir| has_binaries(dir))
}

type RunAs = Option<(u32, u32)>;

/// As root, PostgreSQL refuses to run: the user it runs as instead.
fn unprivileged_user() -> anyhow::Result<RunAs> {
    if !geteuid().is_root() {
        return Ok(None);
    }
    for name in ["postgres", "nobody"] {
        if let Some(user) =
            User::from_name(name).with_context(|| format!("looking up the user {name}"))?
        {
            return Ok(Some((user.uid.as_raw(), user.gid.as_raw())));
        }
    }
    bail!("running as root, and neither a `postgres` nor a `nobody` user exists to run PostgreSQL")
}

fn as_user(mut command: Command, run_as: RunAs) -> Command {
    if let Some((uid, gid)) = run_as {
        command.uid(uid).gid(gid);
    }
    command
}

fn chown(path: &Path, run_as: RunAs) -> anyhow::Result<()> {
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}
