//! Deadline-bounded polling.

use std::{fmt::Debug, future::Future, time::Duration};

use tokio::time::Instant;

/// One observation of a condition being waited for.
#[derive(Debug)]
pub enum Probe<T> {
    /// The condition holds; stop waiting.
    Ready(T),
    /// Not yet; the string says what was seen, and is reported if the deadline passes.
    Pending(String),
}

/// Polls `probe` every `interval` (starting at 10 ms, growing to 200 ms) until it is
/// [`Probe::Ready`] or `timeout` passes. On timeout the error names `what` and the last
/// observation, so a failing test explains itself.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Probe<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut interval = Duration::from_millis(10);
    loop {
        let last = match probe().await {
            Ok(Probe::Ready(value)) => return Ok(value),
            Ok(Probe::Pending(seen)) => seen,
            Err(e) => format!("probe failed: {e:#}"),
        };
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(Duration::from_millis(200));
    }
}

/// Shorthand for a probe from a value and a predicate.
pub fn probe_value<T: Debug>(value: T, done: impl FnOnce(&T) -> bool) -> Probe<T> {
    if done(&value) {
        Probe::Ready(value)
    } else {
        Probe::Pending(format!("{value:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_timeout_names_the_condition_and_the_last_observation() {
        let err = wait_for("the answer", Duration::from_millis(50), || async {
            Ok(Probe::<()>::Pending("41".into()))
        })
        .await
        .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("waiting for the answer"), "{message}");
        assert!(message.contains("last seen: 41"), "{message}");
    }

    #[tokio::test]
    async fn a_ready_probe_returns_its_value() {
        let mut n = 0;
        let value = wait_for("three polls", Duration::from_secs(5), || {
            n += 1;
            let n = n;
            async move { Ok(probe_value(n, |n| *n >= 3)) }
        })
        .await
        .unwrap();
        assert_eq!(value, 3);
    }
}
