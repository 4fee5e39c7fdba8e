//! Several `hodei-server` processes of one instance on one database (issue 14): a server's
//! death, a rolling restart, a follower on another server, `max_workers` across servers and the
//! elected maintenance. Real processes, real PostgreSQL, local workers over loopback gRPC.

use std::{
    collections::{HashMap, HashSet},
    ffi::OsString,
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use anyhow::Context;
use hodei_proto::v1 as pb;
use hodei_testkit::{
    Probe, TestDatabase,
    jobs::spec,
    process::processes_with_env,
    server_process::{ServerCommand, ServerProcess},
    wait_for,
};

/// How long a graceful shutdown may take (shutdown grace 5 s, kill grace 1 s).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// `n` servers of one instance on one database.
struct Fleet {
    servers: Vec<ServerProcess>,
    /// The `--metrics-listen` port of each server, when asked for.
    metrics_ports: Vec<Option<u16>>,
    instance: String,
    db: sqlx::PgPool,
    _dir: tempfile::TempDir,
}

impl Fleet {
    /// Starts `n` servers; `extra` replaces the harness's value of a flag it names.
    async fn start(database_url: &str, n: usize, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(database_url, n, extra, false).await
    }

    async fn start_with(
        database_url: &str,
        n: usize,
        extra: &[&str],
        metrics: bool,
    ) -> anyhow::Result<Self> {
        hodei_testkit::init_tracing();
        // HODEI_TEST_KEEP_LOGS=1 keeps the servers' logs (the directory is printed).
        let dir = tempfile::Builder::new()
            .prefix("hodei-fleet-")
            .disable_cleanup(std::env::var_os("HODEI_TEST_KEEP_LOGS").is_some())
            .tempdir()?;
        eprintln!("server logs in {}", dir.path().display());
        let instance = format!("fleet-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let worker = hodei_testkit::worker_binary()?;
        let worker = worker.display().to_string();
        let defaults = [
            ("--database-url", database_url),
            ("--instance", &instance),
            ("--provider", "local"),
            ("--worker-binary", &worker),
            ("--max-workers", "8"),
            ("--max-jobs-per-worker", "1"),
            ("--heartbeat-interval", "500ms"),
            ("--heartbeat-timeout", "3s"),
            ("--provisioning-timeout", "60s"),
            ("--orphan-sweep-interval", "1s"),
            ("--kill-grace", "1s"),
            ("--shutdown-grace", "5s"),
            ("--idle-timeout", "10s"),
            ("--server-lease", "3s"),
            ("--reconnect-grace", "60s"),
        ];
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(database_url)
            .await?;
        let mut servers = Vec::new();
        let mut metrics_ports = Vec::new();
        for i in 0..n {
            let mut args: Vec<OsString> = defaults
                .iter()
                .filter(|(flag, _)| !extra.contains(flag))
                .flat_map(|(flag, value)| [OsString::from(flag), OsString::from(value)])
                .collect();
            args.extend(extra.iter().map(OsString::from));
            let port = if metrics {
                let port = free_port()?;
                args.push("--metrics-listen".into());
                args.push(format!("127.0.0.1:{port}").into());
                Some(port)
            } else {
                None
            };
            metrics_ports.push(port);
            servers.push(
                ServerProcess::start(ServerCommand {
                    binary: env!("CARGO_BIN_EXE_hodei-server").into(),
                    args,
                    log_filter: "info".into(),
                    log: dir.path().join(format!("server-{i}.log")),
                })
                .await?,
            );
        }
        Ok(Self {
            servers,
            metrics_ports,
            instance,
            db,
            _dir: dir,
        })
    }

    /// The tail of every server's log, for failure messages.
    fn log_tails(&self) -> String {
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| format!("--- server {i} ({}) ---\n{}", s.url(), s.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn queue_on(&self, server: usize, command: &str) -> anyhow::Result<String> {
        let job = self.servers[server]
            .jobs()
            .await?
            .queue_job(pb::QueueJobRequest {
                spec: Some(spec(command)),
            })
            .await?
            .into_inner();
        Ok(job.id)
    }

    /// `(state, attempts)` of each job, from the database.
    async fn states(&self, ids: &[String]) -> anyhow::Result<HashMap<String, (String, i32)>> {
        let rows: Vec<(String, String, i32)> =
            sqlx::query_as("SELECT id::text, state, attempts FROM jobs WHERE id::text = ANY($1)")
                .bind(ids)
                .fetch_all(&self.db)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(id, state, attempts)| (id, (state, attempts)))
            .collect())
    }

    /// Why the jobs among `ids` that needed more than one attempt ended their first ones.
    async fn repeated_attempts(&self, ids: &[String]) -> anyhow::Result<Vec<String>> {
        let rows: Vec<(String, i32, String, String, String)> = sqlx::query_as(
            "SELECT job_id::text, attempt, outcome, reason, worker_id::text FROM job_attempts \
             WHERE job_id::text = ANY($1) AND job_id IN \
               (SELECT id FROM jobs WHERE attempts > 1) ORDER BY job_id, attempt",
        )
        .bind(ids)
        .fetch_all(&self.db)
        .await?;
        let mut found = Vec::new();
        for (job, attempt, outcome, reason, worker) in rows {
            found.push(format!(
                "{job} #{attempt} on {worker}: {outcome} ({reason})"
            ));
            if attempt == 1 {
                found.extend(self.log_lines_mentioning(&worker));
            }
        }
        Ok(found)
    }

    /// Every server's log lines that mention `needle`.
    fn log_lines_mentioning(&self, needle: &str) -> Vec<String> {
        (0..self.servers.len())
            .flat_map(|i| {
                let log = self._dir.path().join(format!("server-{i}.log"));
                std::fs::read_to_string(log)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains(needle))
                    .map(|l| format!("[server {i}] {l}"))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Waits until every job in `ids` is in a final state; returns their states.
    async fn wait_all_final(
        &self,
        ids: &[String],
        timeout: Duration,
    ) -> anyhow::Result<HashMap<String, (String, i32)>> {
        wait_for(&format!("{} jobs to end", ids.len()), timeout, || async {
            let states = self.states(ids).await?;
            let open: Vec<_> = states
                .iter()
                .filter(|(_, (state, _))| {
                    !matches!(state.as_str(), "succeeded" | "failed" | "cancelled")
                })
                .collect();
            Ok(if open.is_empty() && states.len() == ids.len() {
                Probe::Ready(states.clone())
            } else {
                Probe::Pending(format!(
                    "{} not final yet, e.g. {:?}",
                    open.len(),
                    open.iter().take(3).collect::<Vec<_>>()
                ))
            })
        })
        .await
        .with_context(|| self.log_tails())
    }

    /// Waits until every job in `ids` has started (running, or already ended: on a loaded
    /// machine the first may end before the last starts).
    async fn wait_started(&self, ids: &[String], timeout: Duration) -> anyhow::Result<()> {
        wait_for(&format!("{} jobs to start", ids.len()), timeout, || async {
            let states = self.states(ids).await?;
            let started = states
                .values()
                .filter(|(s, _)| !matches!(s.as_str(), "queued" | "assigned"))
                .count();
            Ok(if started == ids.len() {
                Probe::Ready(())
            } else {
                Probe::Pending(format!("{started} of {} started", ids.len()))
            })
        })
        .await
        .with_context(|| self.log_tails())
    }

    /// The index of the server whose address a worker row's `server_id` names.
    async fn server_of_address(&self, address: &str) -> anyhow::Result<usize> {
        self.servers
            .iter()
            .position(|s| s.url() == address)
            .with_context(|| format!("no server of this fleet has the address {address}"))
    }

    /// The server holding the most connected workers, and how many it holds.
    async fn holder_of_most_workers(&self) -> anyhow::Result<(usize, i64)> {
        let (address, count): (String, i64) = sqlx::query_as(
            "SELECT s.worker_address, count(*) FROM workers w JOIN servers s ON s.id = w.server_id \
             WHERE w.instance = $1 AND w.state IN ('idle', 'busy') \
             GROUP BY s.worker_address ORDER BY count(*) DESC LIMIT 1",
        )
        .bind(&self.instance)
        .fetch_one(&self.db)
        .await?;
        Ok((self.server_of_address(&address).await?, count))
    }

    /// The server whose stream holds the worker running `job`.
    async fn holder_of_job(&self, job: &str) -> anyhow::Result<usize> {
        let (address,): (String,) = sqlx::query_as(
            "SELECT s.worker_address FROM jobs j JOIN workers w ON w.id = j.worker_id \
             JOIN servers s ON s.id = w.server_id WHERE j.id = $1::uuid",
        )
        .bind(job)
        .fetch_one(&self.db)
        .await?;
        self.server_of_address(&address).await
    }

    /// `hodei_<name>` as the server's `/metrics` says now.
    fn metric(&self, server: usize, name: &str) -> anyhow::Result<f64> {
        let port = self.metrics_ports[server].context("metrics were not asked for")?;
        let text = http_get(port, "/metrics")?;
        let wanted = format!("hodei_{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&wanted))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no {wanted}in the metrics of server {server}"))
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The body of a plain `GET http://127.0.0.1:<port><path>`.
fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no end of headers in the response")?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    Ok(body.to_string())
}

/// Each job's stored output is `line-1..=line-n`, once each, in order.
async fn assert_numbered_output(db: &sqlx::PgPool, ids: &[String], n: i64) -> anyhow::Result<()> {
    let rows: Vec<(String, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT job_id::text, sequence, data FROM job_logs WHERE job_id::text = ANY($1) \
         ORDER BY job_id, sequence",
    )
    .bind(ids)
    .fetch_all(db)
    .await?;
    let mut by_job: HashMap<String, Vec<(i64, String)>> = HashMap::new();
    for (job, sequence, data) in rows {
        by_job
            .entry(job)
            .or_default()
            .push((sequence, String::from_utf8_lossy(&data).into_owned()));
    }
    let expected: Vec<(i64, String)> = (1..=n).map(|i| (i, format!("line-{i}"))).collect();
    let wrong: Vec<String> = ids
        .iter()
        .filter(|id| by_job.get(*id) != Some(&expected))
        .map(|id| {
            let got = by_job.get(id).map_or(&[][..], Vec::as_slice);
            format!(
                "{id}: {} lines, first differences {:?}",
                got.len(),
                got.iter()
                    .zip(expected.iter())
                    .filter(|(a, b)| a != b)
                    .take(3)
                    .collect::<Vec<_>>()
            )
        })
        .collect();
    anyhow::ensure!(
        wrong.is_empty(),
        "output not line-1..line-{n} once each in order: {wrong:?}"
    );
    Ok(())
}

fn numbered(lines: u32, every: &str) -> String {
    format!("i=1; while [ $i -le {lines} ]; do echo line-$i; i=$((i+1)); sleep {every}; done")
}

/// 3 servers, 50 jobs printing a numbered line every 100 ms for 20 s; the server holding most
/// of their workers is SIGKILLed at about second 5: its workers re-connect to the others and
/// resume. Every job succeeds in its first attempt with its whole output, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_survives_its_server_being_killed() -> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    let mut fleet = Fleet::start(db.url(), 3, &["--max-workers", "60"]).await?;
    let command = numbered(200, "0.1");
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(fleet.queue_on(i % 3, &command).await?);
    }
    fleet.wait_started(&ids, Duration::from_secs(240)).await?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (victim, held) = fleet.holder_of_most_workers().await?;
    eprintln!(
        "killing server {victim}, which holds {held} workers, {:.1}s after all 50 started",
        started.elapsed().as_secs_f64()
    );
    fleet.servers[victim].kill()?;

    let states = fleet.wait_all_final(&ids, Duration::from_secs(300)).await?;
    let wrong: Vec<_> = states
        .iter()
        .filter(|(_, (state, attempts))| state != "succeeded" || *attempts != 1)
        .collect();
    anyhow::ensure!(
        wrong.is_empty(),
        "jobs that did not succeed in one attempt: {wrong:?}\nattempts: {:#?}\n{}",
        fleet.repeated_attempts(&ids).await?,
        fleet.log_tails()
    );
    assert_numbered_output(&fleet.db, &ids, 200).await?;
    // Its workers moved: every worker that ran a job attached a second session or more.
    let (moved,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM jobs j JOIN workers w ON w.id = j.worker_id \
         WHERE j.id::text = ANY($1) AND w.session_epoch >= 2",
    )
    .bind(&ids)
    .fetch_one(&fleet.db)
    .await?;
    anyhow::ensure!(
        moved >= held,
        "only {moved} workers re-attached; the killed server held {held}"
    );
    Ok(())
}

/// Under a steady load of 1,000 short jobs and 20 long ones, the 3 servers are restarted one
/// by one (SIGTERM, then a new process): every job ends exactly once, and no long job starts
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_server_loses_no_job() -> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    let mut fleet = Fleet::start(
        db.url(),
        3,
        &[
            "--max-workers",
            "30",
            "--max-jobs-per-worker",
            "1000",
            "--idle-timeout",
            "60s",
        ],
    )
    .await?;
    let long = numbered(300, "0.1");
    let mut long_ids = Vec::new();
    for i in 0..20 {
        long_ids.push(fleet.queue_on(i % 3, &long).await?);
    }
    fleet
        .wait_started(&long_ids, Duration::from_secs(240))
        .await?;

    // The steady load: 1,000 short jobs queued at ~100/s on whichever server is up.
    let urls: Vec<String> = fleet.servers.iter().map(|s| s.url()).collect();
    let token = fleet.servers[0].token().to_string();
    let producer = tokio::spawn(async move {
        let mut ids = Vec::new();
        let mut next = 0usize;
        for i in 0..1000 {
            let mut tries = 0;
            loop {
                let url = &urls[next % urls.len()];
                next += 1;
                match queue_at(url, &token, &format!("echo short-{i}")).await {
                    Ok(id) => {
                        ids.push(id);
                        break;
                    }
                    Err(e) if tries < 30 => {
                        tries += 1;
                        tracing::debug!(error = %e, "queue refused; trying the next server");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => return Err(e.context(format!("queueing short job {i}"))),
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        anyhow::Ok(ids)
    });

    for i in 0..3 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let status = fleet.servers[i].stop(SHUTDOWN_TIMEOUT).await?;
        anyhow::ensure!(
            status.success(),
            "server {i} exited with {status}\n{}",
            fleet.log_tails()
        );
        fleet.servers[i].restart().await?;
        eprintln!("server {i} restarted");
    }
    let short_ids = producer.await??;

    let mut all = long_ids.clone();
    all.extend(short_ids.iter().cloned());
    let states = fleet.wait_all_final(&all, Duration::from_secs(300)).await?;
    let wrong: Vec<_> = states
        .iter()
        .filter(|(_, (state, attempts))| state != "succeeded" || *attempts != 1)
        .take(10)
        .collect();
    anyhow::ensure!(
        wrong.is_empty(),
        "jobs that did not succeed exactly once: {wrong:?}\nattempts: {:#?}\n{}",
        fleet.repeated_attempts(&all).await?,
        fleet.log_tails()
    );
    assert_numbered_output(&fleet.db, &long_ids, 300).await?;
    // Exactly once: each short job's output is its one line.
    let (lines, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT job_id) FROM job_logs WHERE job_id::text = ANY($1)",
    )
    .bind(&short_ids)
    .fetch_one(&fleet.db)
    .await?;
    anyhow::ensure!(
        lines == 1000 && distinct == 1000,
        "short jobs' output: {lines} lines from {distinct} jobs (1,000 each expected)"
    );
    Ok(())
}

async fn queue_at(url: &str, token: &str, command: &str) -> anyhow::Result<String> {
    let channel = tonic::transport::Channel::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let bearer = hodei_testkit::auth::Bearer::new(token)?;
    let mut jobs = pb::job_service_client::JobServiceClient::with_interceptor(channel, bearer);
    let job = jobs
        .queue_job(pb::QueueJobRequest {
            spec: Some(spec(command)),
        })
        .await?
        .into_inner();
    Ok(job.id)
}

/// A client following a job through one server sees the lines its worker sends to another, as
/// they are stored: the job prints its second line only after the follower got the first, and
/// keeps running until the follower got the second, so nothing but live delivery passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_on_one_server_sees_live_lines_of_a_job_on_another() -> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    let fleet = Fleet::start(db.url(), 2, &[]).await?;
    let gate = tempfile::tempdir()?;
    let (go, end) = (gate.path().join("go"), gate.path().join("end"));
    let command = format!(
        "echo first; while [ ! -e '{go}' ]; do sleep 0.05; done; echo second; \
         while [ ! -e '{end}' ]; do sleep 0.05; done; echo third",
        go = go.display(),
        end = end.display()
    );
    let id = fleet.queue_on(0, &command).await?;
    fleet
        .wait_started(std::slice::from_ref(&id), Duration::from_secs(120))
        .await?;
    let holder = fleet.holder_of_job(&id).await?;
    let follower = 1 - holder;
    eprintln!("job on server {holder}; following it through server {follower}");
    let mut stream = fleet.servers[follower]
        .logs()
        .await?
        .subscribe_logs(pb::SubscribeLogsRequest {
            job_id: id.clone(),
            follow: true,
            from_sequence: 0,
        })
        .await?
        .into_inner();
    let mut next_line = async |what: &str| -> anyhow::Result<String> {
        let line = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .with_context(|| format!("no line {what} within 30 s\n{}", fleet.log_tails()))??
            .with_context(|| format!("the stream ended before {what}"))?;
        Ok(String::from_utf8_lossy(&line.data).into_owned())
    };
    assert_eq!(next_line("first").await?, "first");
    std::fs::write(&go, b"")?;
    assert_eq!(next_line("second").await?, "second");
    let (state,): (String,) = sqlx::query_as("SELECT state FROM jobs WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&fleet.db)
        .await?;
    assert_eq!(state, "running", "the second line came while the job ran");
    std::fs::write(&end, b"")?;
    assert_eq!(next_line("third").await?, "third");
    let ended = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .context("the follow did not end within 30 s of the job's end")??;
    assert!(ended.is_none(), "no line after the last: {ended:?}");
    Ok(())
}

/// `max_workers` 4 for the instance, three servers dispatching 24 jobs at once: never more than
/// 4 workers alive, in the database or as processes, sampled every 25 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_workers_holds_across_servers() -> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    let fleet = Fleet::start(db.url(), 3, &["--max-workers", "4"]).await?;
    let mut ids = Vec::new();
    for i in 0..24 {
        ids.push(fleet.queue_on(i % 3, "sleep 0.5").await?);
    }
    let (mut most_rows, mut most_processes) = (0i64, 0usize);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (alive,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM workers WHERE instance = $1 \
             AND state IN ('provisioning', 'idle', 'busy', 'terminating')",
        )
        .bind(&fleet.instance)
        .fetch_one(&fleet.db)
        .await?;
        let processes = worker_processes(&fleet.instance);
        most_rows = most_rows.max(alive);
        most_processes = most_processes.max(processes);
        anyhow::ensure!(
            alive <= 4 && processes <= 4,
            "{alive} workers alive in the database, {processes} worker processes; the limit is 4"
        );
        let states = fleet.states(&ids).await?;
        if states.values().all(|(s, _)| s == "succeeded") {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "24 jobs not done within 180 s: {states:?}\n{}",
            fleet.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(most_rows, 4, "the fleet used its 4 workers at some point");
    let (servers,): (i64,) =
        sqlx::query_as("SELECT count(DISTINCT server_id) FROM workers WHERE instance = $1")
            .bind(&fleet.instance)
            .fetch_one(&fleet.db)
            .await?;
    eprintln!("most rows {most_rows}, most processes {most_processes}, servers seen {servers}");
    Ok(())
}

/// Local worker processes of `instance` (their executable is `hodei-worker`).
fn worker_processes(instance: &str) -> usize {
    processes_with_env("HODEI_INSTANCE", instance)
        .into_iter()
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe.file_name().is_some_and(|n| n == "hodei-worker"))
        })
        .count()
}

/// The instance-wide maintenance (takeover, leases, orphan sweep) runs on one server at a time:
/// sampled for seconds, exactly one server says it leads and only its pass count grows; when it
/// is killed another takes over, and still only one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_runs_on_one_server_at_a_time() -> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    let mut fleet = Fleet::start_with(db.url(), 3, &[], true).await?;
    let alive: Vec<usize> = vec![0, 1, 2];
    let first = sample_leaders(&fleet, &alive, Duration::from_secs(5)).await?;
    eprintln!("server {first} leads");
    fleet.servers[first].kill()?;
    let alive: Vec<usize> = alive.into_iter().filter(|&i| i != first).collect();
    let second = sample_leaders(&fleet, &alive, Duration::from_secs(5)).await?;
    eprintln!("server {second} leads after server {first} was killed");
    assert_ne!(first, second);
    Ok(())
}

/// Samples `servers` every 100 ms for `span` (after waiting up to 10 s for a leader): never
/// two leaders, one at the end, and passes counted only by the leader. Returns the leader.
async fn sample_leaders(fleet: &Fleet, servers: &[usize], span: Duration) -> anyhow::Result<usize> {
    let leaders = |fleet: &Fleet| -> anyhow::Result<Vec<usize>> {
        let mut leaders = Vec::new();
        for &i in servers {
            if fleet.metric(i, "maintenance_leader")? == 1.0 {
                leaders.push(i);
            }
        }
        Ok(leaders)
    };
    let leader = wait_for(
        "a server to lead the maintenance",
        Duration::from_secs(10),
        || async {
            let now = leaders(fleet)?;
            anyhow::ensure!(now.len() <= 1, "two leaders at once: {now:?}");
            Ok(match now.as_slice() {
                [one] => Probe::Ready(*one),
                _ => Probe::Pending("no leader".into()),
            })
        },
    )
    .await?;
    let passes = |i: usize| fleet.metric(i, "maintenance_passes_total");
    let before: Vec<f64> = servers
        .iter()
        .map(|&i| passes(i))
        .collect::<Result<_, _>>()?;
    let end = Instant::now() + span;
    let mut seen = HashSet::new();
    while Instant::now() < end {
        let now = leaders(fleet)?;
        anyhow::ensure!(now.len() <= 1, "two leaders at once: {now:?}");
        seen.extend(now);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::ensure!(
        seen == HashSet::from([leader]),
        "leadership moved while every server lived: {seen:?}"
    );
    for (k, &i) in servers.iter().enumerate() {
        let grew = passes(i)? - before[k];
        if i == leader {
            anyhow::ensure!(
                grew >= 2.0,
                "the leader {i} ran only {grew} passes in {span:?}"
            );
        } else {
            anyhow::ensure!(grew == 0.0, "server {i}, not leading, ran {grew} passes");
        }
    }
    Ok(leader)
}
