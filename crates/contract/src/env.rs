//! The environment every worker agent is started with. Providers set these; the worker reads
//! them (`hodei-worker --help` documents the rest of its settings).

/// The one-time registration token.
pub const TOKEN: &str = "HODEI_TOKEN";
/// A file holding the one-time registration token, instead of [`TOKEN`]: the worker reads it
/// and then removes it (if it is a regular file), so the token is neither in the worker's
/// environment nor in its container's configuration. `/proc/self/fd/0`, `/dev/stdin`,
/// `/dev/fd/0` or `-` mean the worker's standard input (the local provider writes the token
/// there).
pub const TOKEN_FILE: &str = "HODEI_TOKEN_FILE";
/// The gRPC address of the server, e.g. `http://10.0.0.1:50051`.
pub const SERVER: &str = "HODEI_SERVER";
/// The id the token is bound to.
pub const WORKER_ID: &str = "HODEI_WORKER_ID";
/// How long a worker that cannot reach any server keeps its job running before it kills the
/// job's process group and exits 1 (the contract's duration grammar, e.g. `5m`; default 5 min).
pub const RECONNECT_GRACE: &str = "HODEI_RECONNECT_GRACE";
/// Bytes of output a worker keeps until the server acknowledges them as stored (default 4 MiB,
/// at least 2 MiB); when it is full the job waits on its pipes, nothing is dropped.
pub const RESUME_BUFFER_BYTES: &str = "HODEI_RESUME_BUFFER_BYTES";
/// PEM of the CA that signed the server's certificate (TLS only).
pub const TLS_CA_PEM: &str = "HODEI_TLS_CA_PEM";

/// The variables a job must not inherit from its worker: the token (and where it was) is a
/// secret, and the CA is the worker's trust store, none of the job's business.
pub const NOT_FOR_JOBS: [&str; 3] = [TOKEN, TOKEN_FILE, TLS_CA_PEM];
