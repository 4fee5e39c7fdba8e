//! A fresh PostgreSQL database per test.
//!
//! Sources, in order:
//! 1. `HODEI_TEST_DATABASE_URL`: a server someone else runs; each test creates (and drops) its
//!    own database on it.
//! 2. A private server from the machine's binaries (`HODEI_PG_BIN`, `pg_config --bindir`,
//!    `/usr/lib/postgresql/*/bin`, or `PATH`). `initdb` runs once per machine into a cached
//!    template directory; each test copies it (~0.1 s instead of ~1 s) and starts `postgres` on
//!    a Unix socket in its own temporary directory, so tests never race for ports. The server
//!    dies with the test: `PR_SET_PDEATHSIG` kills it even if the test process is killed.
//! 3. A testcontainers PostgreSQL, when Docker can provide the `postgres` image.
//!
//! As root, PostgreSQL refuses to run; the private server then runs as the `postgres` user (or
//! `nobody`).

use std::{
    fs,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use nix::unistd::{User, geteuid};
use sqlx::{Connection, PgConnection};

use crate::{
    process::{Signal, die_with_parent, send_signal},
    wait::{Probe, wait_for},
};

/// The user and group a private server runs as, when the tests run as root.
type RunAs = Option<(u32, u32)>;

const DATABASE: &str = "hodei_test";

/// One test's database; dropped (or its server stopped) when this value is dropped.
pub struct TestDatabase {
    url: String,
    backend: Backend,
}

enum Backend {
    External {
        admin_url: String,
        name: String,
    },
    Private(PrivatePostgres),
    /// Held only to keep the container alive; dropping it removes the container.
    Container {
        _container: Box<testcontainers::ContainerAsync<testcontainers::GenericImage>>,
    },
}

impl TestDatabase {
    pub async fn create() -> anyhow::Result<Self> {
        if let Ok(admin_url) = std::env::var("HODEI_TEST_DATABASE_URL") {
            return Self::on_external_server(admin_url).await;
        }
        match find_postgres_bindir() {
            Some(bindir) => {
                let server = PrivatePostgres::start(&bindir).await?;
                Ok(Self {
                    url: server.url(),
                    backend: Backend::Private(server),
                })
            }
            None => Self::in_container().await.context(
                "no PostgreSQL for the tests: set HODEI_TEST_DATABASE_URL to a server, install \
                 PostgreSQL (Debian: apt-get install postgresql; Nix: nix develop), or run a \
                 Docker engine that can pull the postgres image",
            ),
        }
    }

    /// A URL for this test's database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops the server and starts it again on the same data, for tests of reconnection.
    /// Only for the private server.
    pub async fn restart(&mut self, down_for: Duration) -> anyhow::Result<()> {
        match &mut self.backend {
            Backend::Private(server) => server.restart(down_for).await,
            _ => bail!("restart needs the private PostgreSQL (unset HODEI_TEST_DATABASE_URL)"),
        }
    }

    async fn on_external_server(admin_url: String) -> anyhow::Result<Self> {
        let name = format!("hodei_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url).await.with_context(|| {
            format!(
                "cannot connect to HODEI_TEST_DATABASE_URL ({})",
                redact(&admin_url)
            )
        })?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .context("CREATE DATABASE on HODEI_TEST_DATABASE_URL")?;
        let url = replace_database(&admin_url, &name)?;
        Ok(Self {
            url,
            backend: Backend::External { admin_url, name },
        })
    }

    async fn in_container() -> anyhow::Result<Self> {
        use testcontainers::{GenericImage, ImageExt, core::WaitFor, runners::AsyncRunner};
        let container = GenericImage::new("postgres", "16-alpine")
            .with_wait_for(WaitFor::message_on_stderr(
                "database system is ready to accept connections",
            ))
            .with_env_var("POSTGRES_PASSWORD", "hodei")
            .with_env_var("POSTGRES_DB", DATABASE)
            .start()
            .await
            .context("starting a PostgreSQL container")?;
        let host = container.get_host().await?;
        let port = container.get_host_port_ipv4(5432).await?;
        // The image logs "ready" once during initialisation too; wait until it really accepts.
        let url = format!("postgres://postgres:hodei@{host}:{port}/{DATABASE}");
        wait_until_accepting(&url, || "(container)".into()).await?;
        Ok(Self {
            url,
            backend: Backend::Container {
                _container: Box::new(container),
            },
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Backend::External { admin_url, name } = &self.backend {
            // Drop is synchronous; use a short-lived runtime on a helper thread.
            let admin_url = admin_url.clone();
            let name = name.clone();
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async {
                    let mut admin = PgConnection::connect(&admin_url).await?;
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await?;
                    anyhow::Ok(())
                })
            })
            .join();
        }
    }
}

/// A PostgreSQL server owned by one test.
struct PrivatePostgres {
    bindir: PathBuf,
    run_as: RunAs,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivatePostgres {
    async fn start(bindir: &Path) -> anyhow::Result<Self> {
        let run_as = unprivileged_user()?;
        let template = ensure_template(bindir, run_as).await?;
        let dir = tempfile::Builder::new().prefix("hodei-pg-").tempdir()?;
        chown(dir.path(), run_as)?;
        let data = dir.path().join("data");
        let status = as_user(Command::new("cp"), run_as)
            .arg("-a")
            .arg(&template)
            .arg(&data)
            .status()
            .context("copying the PostgreSQL template")?;
        if !status.success() {
            bail!(
                "copying the PostgreSQL template {} failed: {status}",
                template.display()
            );
        }
        let mut server = Self {
            bindir: bindir.to_path_buf(),
            run_as,
            dir,
            child: None,
        };
        server.spawn()?;
        server.wait_ready().await?;
        let mut conn = PgConnection::connect(&server.url_for("postgres")).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {DATABASE}")))
            .execute(&mut conn)
            .await?;
        Ok(server)
    }

    fn url_for(&self, database: &str) -> String {
        format!(
            "postgres://postgres@localhost/{database}?host={}",
            self.dir.path().display()
        )
    }

    fn url(&self) -> String {
        self.url_for(DATABASE)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut command = as_user(Command::new(self.bindir.join("postgres")), self.run_as);
        command
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses="])
            // Durability is pointless for a throw-away database; speed is not.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=300"])
            .args(["-c", "shared_buffers=64MB"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Die with the thread that started us, even if the test is killed.
        self.child = Some(
            die_with_parent(&mut command)
                .spawn()
                .context("starting postgres")?,
        );
        Ok(())
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let log = self.log_path();
        wait_until_accepting(&self.url_for("postgres"), move || log_tail(&log)).await
    }

    fn stop(&mut self, signal: Signal) {
        if let Some(mut child) = self.child.take() {
            let _ = send_signal(child.id(), signal);
            let _ = child.wait();
        }
    }

    async fn restart(&mut self, down_for: Duration) -> anyhow::Result<()> {
        self.stop(Signal::SIGINT); // fast shutdown: disconnects clients
        tokio::time::sleep(down_for).await;
        self.spawn()?;
        self.wait_ready().await
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop(Signal::SIGQUIT); // immediate shutdown: the data is thrown away
    }
}

async fn wait_until_accepting(url: &str, diagnostics: impl Fn() -> String) -> anyhow::Result<()> {
    wait_for(
        "PostgreSQL to accept connections",
        Duration::from_secs(60),
        || async {
            Ok(match PgConnection::connect(url).await {
                Ok(conn) => {
                    let _ = conn.close().await;
                    Probe::Ready(())
                }
                Err(e) => Probe::Pending(e.to_string()),
            })
        },
    )
    .await
    .with_context(|| format!("server log:\n{}", diagnostics()))
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The cached `initdb` output for these binaries, created once under a file lock.
async fn ensure_template(bindir: &Path, run_as: RunAs) -> anyhow::Result<PathBuf> {
    let bindir = bindir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let key = format!(
            "{:x}",
            bindir
                .to_string_lossy()
                .bytes()
                .fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b))
                    .wrapping_mul(0x100000001b3))
        );
        let euid = geteuid();
        let base = std::env::temp_dir().join(format!("hodei-pg-template-{euid}-{key}"));
        let template = base.join("data");
        let done = base.join("complete");
        fs::create_dir_all(&base)?;
        // Held until the template is complete; released when the file is closed.
        let lock = fs::File::create(base.join("lock"))?;
        lock.lock()?;
        if done.exists() {
            return Ok(template);
        }
        chown(&base, run_as)?;
        let _ = fs::remove_dir_all(&template);
        let output = as_user(Command::new(bindir.join("initdb")), run_as)
            .arg("-D")
            .arg(&template)
            .args(["--auth=trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .args(["--locale=C"])
            .output()
            .with_context(|| format!("running {}/initdb", bindir.display()))?;
        if !output.status.success() {
            bail!(
                "initdb failed ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        fs::write(&done, b"")?;
        Ok(template)
    })
    .await?
}

fn find_postgres_bindir() -> Option<PathBuf> {
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
    let mut debian: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("bin"))
        .filter(|dir| has_binaries(dir))
        .collect();
    debian.sort_by_key(|dir| {
        dir.parent()
            .and_then(|p| p.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
    });
    if let Some(dir) = debian.pop() {
        return Some(dir);
    }
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|dir| has_binaries(dir))
}

/// As root, the user PostgreSQL will run as. `User::from_name` reads the user database with
/// the re-entrant `getpwnam_r`: tests run in parallel threads, and `getpwnam`'s static buffer
/// would be shared between them.
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
        // std also drops root's supplementary groups when it switches the uid.
        command.uid(uid).gid(gid);
    }
    command
}

fn chown(path: &Path, run_as: RunAs) -> anyhow::Result<()> {
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", path.display()))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn replace_database(url: &str, database: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{}", &base[..path_start], database);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(out)
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(start), Some(at)) if at > start => format!("{}***{}", &url[..start + 3], &url[at..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_is_replaced_keeping_host_and_query() {
        assert_eq!(
            replace_database("postgres://u:p@h:5/postgres?sslmode=disable", "t1").unwrap(),
            "postgres://u:p@h:5/t1?sslmode=disable"
        );
        assert_eq!(
            replace_database("postgres://h", "t1").unwrap(),
            "postgres://h/t1"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://***@h/db");
    }

    #[tokio::test]
    async fn each_test_database_is_fresh_and_usable() {
        let db = TestDatabase::create().await.unwrap();
        let mut conn = PgConnection::connect(db.url()).await.unwrap();
        let (n,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert_eq!(n, 0);
    }
}
