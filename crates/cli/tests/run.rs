//! `hodei run` against a fake server over real gRPC: output on the right descriptors as it is
//! produced, the job's exit code, quoting, detaching, Ctrl-C and broken streams.

mod support;

use std::{process::Stdio, time::Duration};

use hodei_proto::v1 as pb;
use support::{CuttableProxy, DEADLINE, FakeServer, Faults, Step, exits, finish, wait};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn given_a_job_that_succeeds_when_run_then_its_stdout_is_printed_and_exit_is_zero() {
    let fake = FakeServer::start(vec![Step::Out(b"hello"), exits(0)]).await;

    let outcome = finish(fake.hodei(&["run", "--", "echo hello"])).await;

    assert_eq!(outcome.code, Some(0), "stderr: {}", outcome.stderr);
    assert_eq!(outcome.stdout(), "hello\n");
    assert_eq!(outcome.stderr, "");
}

#[tokio::test]
async fn given_interleaved_output_when_run_then_each_line_goes_to_its_descriptor_in_order_and_the_exit_code_is_the_jobs()
 {
    let program = vec![
        Step::Out(b"out 1"),
        Step::Err(b"err 2"),
        Step::Out(b"out 3"),
        Step::Err(b"err 4"),
        exits(3),
    ];
    let fake = FakeServer::start(program).await;

    // Separate pipes: each stream on its own descriptor.
    let outcome = finish(fake.hodei(&["run", "--", "./script.sh"])).await;
    assert_eq!(outcome.code, Some(3), "stderr: {}", outcome.stderr);
    assert_eq!(outcome.stdout(), "out 1\nout 3\n");
    assert_eq!(outcome.stderr, "err 2\nerr 4\n");

    // One open file behind both descriptors (as `2>&1` does): the interleaving is kept.
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let shared = file.reopen().expect("reopen");
    let mut command = fake.hodei(&["run", "--", "./script.sh"]);
    command
        .stdout(Stdio::from(shared.try_clone().expect("dup")))
        .stderr(Stdio::from(shared));
    let status = tokio::time::timeout(DEADLINE, command.status())
        .await
        .expect("in time")
        .expect("status");
    assert_eq!(status.code(), Some(3));
    let combined = std::fs::read_to_string(file.path()).expect("read");
    assert_eq!(combined, "out 1\nerr 2\nout 3\nerr 4\n");
}

#[tokio::test]
async fn given_a_job_that_times_out_when_run_then_the_reason_is_printed_and_exit_is_124() {
    let fake = FakeServer::start(vec![
        Step::Out(b"started"),
        Step::Finish {
            state: pb::JobState::TimedOut,
            exit_code: None,
            reason: "timed out after 1s",
        },
    ])
    .await;

    let outcome = finish(fake.hodei(&["run", "--timeout", "1", "--", "sleep 10"])).await;

    assert_eq!(outcome.code, Some(124));
    assert_eq!(outcome.stdout(), "started\n");
    assert_eq!(
        outcome.stderr,
        "hodei: job job-1 timed out: timed out after 1s\n"
    );
}

#[tokio::test]
async fn given_a_job_that_fails_without_exit_code_when_run_then_the_reason_is_printed_and_exit_is_1()
 {
    let fake = FakeServer::start(vec![Step::Finish {
        state: pb::JobState::Failed,
        exit_code: None,
        reason: "worker failed: image pull failed",
    }])
    .await;

    let outcome = finish(fake.hodei(&["run", "--", "true"])).await;

    assert_eq!(outcome.code, Some(1));
    assert_eq!(
        outcome.stderr,
        "hodei: job job-1 failed: worker failed: image pull failed\n"
    );
}

#[tokio::test]
async fn given_several_words_when_run_then_they_are_shell_quoted_and_one_word_is_sent_verbatim() {
    let fake = FakeServer::start(vec![exits(0)]).await;

    let outcome = finish(fake.hodei(&["run", "--", "printf", "%s\\n", "a b"])).await;
    assert_eq!(outcome.code, Some(0), "stderr: {}", outcome.stderr);
    let outcome = finish(fake.hodei(&["run", "--", "echo $HOME | wc -c"])).await;
    assert_eq!(outcome.code, Some(0), "stderr: {}", outcome.stderr);
    let outcome = finish(fake.hodei(&["run", "--", "echo", "it's", "$HOME", ""])).await;
    assert_eq!(outcome.code, Some(0), "stderr: {}", outcome.stderr);

    let commands: Vec<String> = fake
        .queued_specs()
        .into_iter()
        .map(|spec| spec.command)
        .collect();
    assert_eq!(
        commands,
        [
            "printf '%s\\n' 'a b'",
            "echo $HOME | wc -c",
            "echo 'it'\\''s' '$HOME' ''"
        ]
    );
}

#[tokio::test]
async fn given_options_when_run_then_the_spec_carries_env_timeout_resources_and_attempts() {
    let fake = FakeServer::start(vec![exits(0)]).await;

    let outcome = finish(fake.hodei(&[
        "run",
        "--env",
        "A=1",
        "-e",
        "B=x=y",
        "--timeout",
        "5m",
        "--cpu",
        "250",
        "--memory",
        "512Mi",
        "--max-attempts",
        "2",
        "--",
        "env",
    ]))
    .await;

    assert_eq!(outcome.code, Some(0), "stderr: {}", outcome.stderr);
    let spec = fake.queued_specs().pop().expect("a queued job");
    assert_eq!(spec.command, "env");
    assert_eq!(
        support::sorted(&spec.env),
        [("A".into(), "1".into()), ("B".into(), "x=y".into())].into()
    );
    assert_eq!(spec.timeout_seconds, Some(300));
    assert_eq!(
        spec.resources,
        Some(pb::Resources {
            cpu_millis: 250,
            memory_bytes: 512 * 1024 * 1024
        })
    );
    assert_eq!(spec.max_attempts, Some(2));
}

#[tokio::test]
async fn given_a_bad_memory_size_when_run_then_it_is_a_usage_error_and_nothing_is_queued() {
    let fake = FakeServer::start(vec![exits(0)]).await;

    let outcome = finish(fake.hodei(&["run", "--memory", "512m", "--", "true"])).await;

    assert_eq!(outcome.code, Some(2));
    assert!(outcome.stderr.contains("512Mi"), "{}", outcome.stderr);
    assert!(fake.queued_specs().is_empty());
}

#[tokio::test]
async fn given_a_memory_limit_without_a_unit_or_below_what_a_worker_runs_in_when_run_then_it_is_refused_before_calling_the_server()
 {
    let fake = FakeServer::start(vec![exits(0)]).await;

    // `--memory 512` once queued a 512-byte limit that no Pod could start in.
    let bare = finish(fake.hodei(&["run", "--memory", "512", "--", "true"])).await;
    assert_eq!(bare.code, Some(2), "stderr: {}", bare.stderr);
    assert!(bare.stderr.contains("--memory"), "{}", bare.stderr);
    assert!(bare.stderr.contains("no unit"), "{}", bare.stderr);

    let tiny = finish(fake.hodei(&["run", "--memory", "1Ki", "--", "true"])).await;
    assert_eq!(tiny.code, Some(2), "stderr: {}", tiny.stderr);
    assert!(tiny.stderr.contains("at least 16Mi"), "{}", tiny.stderr);

    let cpu = finish(fake.hodei(&["run", "--cpu", "1", "--", "true"])).await;
    assert_eq!(cpu.code, Some(2), "stderr: {}", cpu.stderr);
    assert!(cpu.stderr.contains("at least 100"), "{}", cpu.stderr);

    assert!(fake.queued_specs().is_empty());
}

#[tokio::test]
async fn given_a_timeout_too_long_to_represent_when_run_then_one_sentence_names_the_flag_and_nothing_is_queued()
 {
    let fake = FakeServer::start(vec![exits(0)]).await;

    let outcome =
        finish(fake.hodei(&["run", "--timeout", "99999999999999999h", "--", "true"])).await;

    assert_eq!(outcome.code, Some(2), "stderr: {}", outcome.stderr);
    let stderr = outcome.stderr.trim_end();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("--timeout"), "{stderr}");
    assert!(stderr.contains("99999999999999999h"), "{stderr}");
    assert!(stderr.contains("too long"), "{stderr}");
    assert!(fake.queued_specs().is_empty());
}

#[tokio::test]
async fn given_detach_when_run_then_the_job_id_is_printed_and_no_logs_are_followed() {
    let fake = FakeServer::start(vec![Step::WaitForRelease, exits(0)]).await;

    let outcome = finish(fake.hodei(&["run", "--detach", "--", "sleep 100"])).await;

    assert_eq!(outcome.code, Some(0), "stderr: {}", outcome.stderr);
    assert_eq!(outcome.stdout(), "job-1\n");
    assert!(fake.job("job-1").is_some());
    assert!(fake.subscriptions().is_empty());
}

#[tokio::test]
async fn given_a_running_job_when_it_prints_a_line_then_the_line_appears_before_the_job_ends() {
    let fake = FakeServer::start(vec![
        Step::Out(b"first"),
        Step::WaitForRelease,
        Step::Out(b"second"),
        exits(0),
    ])
    .await;
    let mut child = fake.hodei(&["run", "--", "slow"]).spawn().expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));

    let mut line = String::new();
    tokio::time::timeout(DEADLINE, stdout.read_line(&mut line))
        .await
        .expect("the first line arrives while the job is still running")
        .expect("read");
    assert_eq!(line, "first\n");
    assert_eq!(
        fake.job("job-1").map(|job| job.state),
        Some(pb::JobState::Running as i32)
    );

    fake.release();
    line.clear();
    stdout.read_line(&mut line).await.expect("read");
    assert_eq!(line, "second\n");
    let outcome = wait(child).await;
    assert_eq!(outcome.code, Some(0), "stderr: {}", outcome.stderr);
}

#[tokio::test]
async fn given_non_utf8_output_when_run_then_the_bytes_pass_through_unchanged() {
    let fake = FakeServer::start(vec![Step::Out(b"caf\xe9 \xff\xfe"), exits(0)]).await;

    let outcome = finish(fake.hodei(&["run", "--", "cat latin1.txt"])).await;

    assert_eq!(outcome.code, Some(0));
    assert_eq!(outcome.stdout, b"caf\xe9 \xff\xfe\n");
}

#[tokio::test]
async fn given_json_output_when_run_then_each_line_is_an_object_and_the_last_is_the_job() {
    let fake = FakeServer::start(vec![Step::Out(b"plain"), Step::Err(b"\xffraw"), exits(3)]).await;

    let outcome = finish(fake.hodei(&["--output", "json", "run", "--", "x"])).await;

    assert_eq!(outcome.code, Some(3), "stderr: {}", outcome.stderr);
    let objects: Vec<serde_json::Value> = outcome
        .stdout()
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect();
    assert_eq!(objects.len(), 3);
    assert_eq!(objects[0]["sequence"], 1);
    assert_eq!(objects[0]["stream"], "stdout");
    assert_eq!(objects[0]["data"], "plain");
    assert!(objects[0].get("data_base64").is_none());
    assert_eq!(objects[1]["stream"], "stderr");
    assert_eq!(objects[1]["data"], "\u{fffd}raw");
    assert_eq!(objects[1]["data_base64"], "/3Jhdw==");
    assert_eq!(objects[2]["id"], "job-1");
    assert_eq!(objects[2]["state"], "failed");
    assert_eq!(objects[2]["exit_code"], 3);
}

#[tokio::test]
async fn given_a_stream_that_breaks_mid_run_when_run_then_it_resumes_without_duplicate_or_gap() {
    let fake = FakeServer::start(vec![
        Step::Out(b"1"),
        Step::Out(b"2"),
        Step::Out(b"3"),
        Step::Sleep(Duration::from_millis(100)),
        Step::Out(b"4"),
        Step::Err(b"5"),
        exits(0),
    ])
    .await;
    fake.set_faults(Faults {
        break_first_stream_after: Some(2),
        resend_overlap: 1,
        ..Faults::default()
    });

    let outcome = finish(fake.hodei(&["run", "--", "count"])).await;

    assert_eq!(outcome.code, Some(0), "stderr: {}", outcome.stderr);
    assert_eq!(outcome.stdout(), "1\n2\n3\n4\n");
    assert_eq!(outcome.stderr, "5\n");
    let from: Vec<u64> = fake
        .subscriptions()
        .iter()
        .map(|s| s.from_sequence)
        .collect();
    assert_eq!(
        from,
        [1, 3],
        "resubscribed from the line after the last one printed"
    );
}

#[tokio::test]
async fn given_a_stream_that_ends_before_the_job_when_run_then_it_resubscribes_from_the_next_line()
{
    let fake = FakeServer::start(vec![
        Step::Out(b"1"),
        Step::Out(b"2"),
        Step::Sleep(Duration::from_millis(100)),
        Step::Out(b"3"),
        exits(0),
    ])
    .await;
    fake.set_faults(Faults {
        break_first_stream_after: Some(1),
        end_cleanly: true,
        ..Faults::default()
    });

    let outcome = finish(fake.hodei(&["run", "--", "count"])).await;

    assert_eq!(outcome.code, Some(0), "stderr: {}", outcome.stderr);
    assert_eq!(outcome.stdout(), "1\n2\n3\n");
    let from: Vec<u64> = fake
        .subscriptions()
        .iter()
        .map(|s| s.from_sequence)
        .collect();
    assert_eq!(from, [1, 2]);
}

#[tokio::test]
async fn given_the_connection_drops_mid_run_when_run_then_it_reconnects_and_resumes() {
    let fake = FakeServer::start(vec![
        Step::Out(b"1"),
        Step::Out(b"2"),
        Step::WaitForRelease,
        Step::Out(b"3"),
        Step::Err(b"4"),
        exits(7),
    ])
    .await;
    let proxy = CuttableProxy::start(fake.addr).await;
    let mut child = support::hodei(&proxy.url, &["run", "--", "work"])
        .spawn()
        .expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut printed = String::new();
    while printed != "1\n2\n" {
        tokio::time::timeout(DEADLINE, stdout.read_line(&mut printed))
            .await
            .expect("in time")
            .expect("read");
    }

    proxy.cut();
    fake.release();

    let mut rest = String::new();
    tokio::time::timeout(
        DEADLINE,
        tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut rest),
    )
    .await
    .expect("in time")
    .expect("read");
    let outcome = wait(child).await;
    assert_eq!(outcome.code, Some(7), "stderr: {}", outcome.stderr);
    assert_eq!(rest, "3\n");
    assert_eq!(outcome.stderr, "4\n");
    let from: Vec<u64> = fake
        .subscriptions()
        .iter()
        .map(|s| s.from_sequence)
        .collect();
    assert_eq!(from, [1, 3]);
}

#[tokio::test]
async fn given_a_stream_that_keeps_breaking_when_run_then_it_gives_up_saying_how_to_resume() {
    let fake = FakeServer::start(vec![Step::Out(b"1"), Step::WaitForRelease, exits(0)]).await;
    fake.set_faults(Faults {
        break_first_stream_after: Some(1),
        refuse_resubscriptions: true,
        ..Faults::default()
    });

    let outcome = finish(fake.hodei(&["run", "--", "x"])).await;

    assert_eq!(outcome.code, Some(1));
    assert_eq!(outcome.stdout(), "1\n");
    assert!(
        outcome
            .stderr
            .starts_with("error: lost the log stream of job job-1: ")
            && outcome
                .stderr
                .contains("`hodei jobs logs -f --from 2 job-1`"),
        "{}",
        outcome.stderr
    );
    // One subscription, then five retries from the same place.
    let from: Vec<u64> = fake
        .subscriptions()
        .iter()
        .map(|s| s.from_sequence)
        .collect();
    assert_eq!(from, [1, 2, 2, 2, 2, 2]);
}

#[tokio::test]
async fn given_a_running_job_when_ctrl_c_is_pressed_then_it_is_cancelled_and_followed_to_the_end() {
    let fake = FakeServer::start(vec![
        Step::Out(b"working"),
        Step::WaitForCancel,
        Step::Err(b"cleaning up"),
        Step::Finish {
            state: pb::JobState::Cancelled,
            exit_code: Some(143),
            reason: "Ctrl-C in the hodei CLI",
        },
    ])
    .await;
    let mut child = fake
        .hodei(&["run", "--", "sleep 100"])
        .spawn()
        .expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    tokio::time::timeout(DEADLINE, stdout.read_line(&mut line))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(line, "working\n");

    interrupt(&child);

    let outcome = wait(child).await;
    assert_eq!(outcome.code, Some(130));
    assert_eq!(
        outcome.stderr,
        "hodei: cancelling job job-1; press Ctrl-C again to stop waiting\n\
         cleaning up\n\
         hodei: job job-1 was cancelled: Ctrl-C in the hodei CLI\n"
    );
    let cancels = fake.cancels();
    assert_eq!(cancels.len(), 1);
    assert_eq!(cancels[0].job_id, "job-1");
    assert_eq!(
        cancels[0].reason, "Ctrl-C in the hodei CLI",
        "the reason does not repeat \"cancelled\", which the job's state says"
    );
}

#[tokio::test]
async fn given_a_cancel_in_progress_when_ctrl_c_is_pressed_twice_then_it_exits_130_at_once() {
    // The job ignores the cancellation, as a stuck worker would.
    let fake = FakeServer::start(vec![Step::Out(b"working"), Step::WaitForRelease, exits(0)]).await;
    let mut child = fake
        .hodei(&["run", "--", "sleep 100"])
        .spawn()
        .expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    tokio::time::timeout(DEADLINE, stdout.read_line(&mut line))
        .await
        .expect("in time")
        .expect("read");

    interrupt(&child);
    line.clear();
    tokio::time::timeout(DEADLINE, stderr.read_line(&mut line))
        .await
        .expect("in time")
        .expect("read");
    assert!(line.contains("cancelling job job-1"), "{line}");
    interrupt(&child);

    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("exits at once")
        .expect("wait");
    assert_eq!(status.code(), Some(130));
    fake.release();
}

/// Sends SIGINT, as Ctrl-C in a terminal does.
fn interrupt(child: &tokio::process::Child) {
    let pid = child.id().expect("running");
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}
