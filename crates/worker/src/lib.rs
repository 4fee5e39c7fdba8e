//! The Hodei worker agent.
//!
//! A provider starts `hodei-worker` with `HODEI_TOKEN` (or `HODEI_TOKEN_FILE`, [`token_file`]),
//! `HODEI_SERVER` and `HODEI_WORKER_ID`. The binary first makes itself non-dumpable ([`hardening`]), so
//! that the jobs it runs, as its own user, cannot read its memory or environment. The worker
//! registers ([`connection::register`]), opens its session
//! ([`connection::open_session`]) and serves it ([`session::Session`]): it runs each assigned
//! job with `/bin/sh -c` in a process group of its own ([`process`], [`job`]), streams the
//! job's output line by line while it runs ([`output`], [`batch`]), heartbeats
//! ([`heartbeat`]), and reports how the job ended. Output is kept in the job's [`journal`] until
//! the server says it is stored. When the stream breaks, the job keeps running and the worker
//! re-connects (`Resume`), re-sending what the server has not stored. It exits when the server
//! tells it to, when it gets SIGTERM/SIGINT, or — with exit code 1 — when no server can be
//! reached for `HODEI_RECONNECT_GRACE` (its job stopped first) or the server refuses it.
//!
//! Where to start reading: [`run`], then `session.rs`, then `job.rs`.

pub mod batch;
pub mod config;
pub mod connection;
pub mod error;
pub mod hardening;
pub mod heartbeat;
pub mod job;
pub mod journal;
pub mod output;
pub mod process;
pub mod servers;
pub mod session;
pub mod signals;
pub mod token_file;

use std::{future::Future, pin::pin, time::Instant};

pub use config::{Config, ConfigError};
pub use error::WorkerError;

use crate::{connection::ATTEMPT_TIMEOUT, session::Session};

/// Runs the worker to its end. `terminate` resolves, with the signal's name, when the worker's
/// platform asks it to stop (SIGTERM or SIGINT in the binary, see [`signals::termination`]).
/// `Ok` means a clean exit (status 0).
pub async fn run(
    config: Config,
    terminate: impl Future<Output = &'static str>,
) -> Result<(), WorkerError> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        "hodei-worker starting: {config}"
    );
    if let token_file::TokenSource::File {
        removal: token_file::Removal::Failed(_),
        ..
    } = &config.token_source
    {
        tracing::warn!(
            "the token file is still there; a job could read the token, which the server \
             refuses once this worker has registered"
        );
    }
    let mut terminate = pin!(terminate);
    let endpoint = connection::endpoint(&config)?;
    let deadline = Instant::now() + config.register_timeout;

    let (client, registration) = tokio::select! {
        registered = connection::register(&config, &endpoint, deadline) => registered?,
        _ = &mut terminate => {
            tracing::info!("termination signal received before registration; exiting");
            return Ok(());
        }
    };
    tracing::info!(
        heartbeat_interval_ms = registration.heartbeat_interval.as_millis() as u64,
        "registered"
    );

    // The registration is spent; the session gets at least one full attempt of its own.
    let deadline = deadline.max(Instant::now() + ATTEMPT_TIMEOUT);
    let streams = tokio::select! {
        opened = connection::open_session(&client, &config.server, &registration.session_credential, deadline) => opened?,
        _ = &mut terminate => {
            tracing::info!("termination signal received before the session opened; exiting");
            return Ok(());
        }
    };
    tracing::info!("session open; waiting for work");
    let reconnect_grace = match registration.reconnect_grace {
        // The server's lease assumes its own grace: the smaller one is kept.
        Some(server) => server.min(config.reconnect_grace),
        None => config.reconnect_grace,
    };
    let link = session::Link {
        servers: servers::Servers::new(&config),
        credential: registration.session_credential,
        reconnect_grace,
        journal_capacity: config.resume_buffer_bytes,
    };
    Session::new(streams, registration.heartbeat_interval, link)
        .run(terminate)
        .await
}
