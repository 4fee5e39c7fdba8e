//! The worker's signs of life: `ready` once, then a heartbeat naming the running job at the
//! interval the server asked for.

use std::time::Duration;

use hodei_domain::JobId;
use hodei_proto::v1::{Heartbeat, Ready, WorkerMessage, worker_message::Msg};
use tokio::time::{Interval, MissedTickBehavior};

/// Used when the server sends 0 (no preference).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// A floor, so a misconfigured server cannot make the worker spin.
const MIN_INTERVAL: Duration = Duration::from_millis(50);

pub fn interval_from_ms(ms: u32) -> Duration {
    if ms == 0 {
        DEFAULT_INTERVAL
    } else {
        Duration::from_millis(u64::from(ms)).max(MIN_INTERVAL)
    }
}

/// Ticks every `period`, the first one a period from now (`ready` has just been sent). Late
/// ticks are not bunched up: after a stall the next heartbeat is one period later.
pub fn ticker(period: Duration) -> Interval {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

pub fn ready() -> WorkerMessage {
    WorkerMessage {
        msg: Some(Msg::Ready(Ready {})),
    }
}

pub fn beat(running_job_id: Option<JobId>) -> WorkerMessage {
    WorkerMessage {
        msg: Some(Msg::Heartbeat(Heartbeat {
            running_job_id: running_job_id.map(|id| id.to_string()).unwrap_or_default(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_means_the_default_and_tiny_values_are_raised_to_the_floor() {
        assert_eq!(interval_from_ms(0), DEFAULT_INTERVAL);
        assert_eq!(interval_from_ms(1), MIN_INTERVAL);
        assert_eq!(interval_from_ms(2500), Duration::from_millis(2500));
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_tick_comes_one_period_after_start() {
        let started = tokio::time::Instant::now();
        let mut ticker = ticker(Duration::from_secs(3));
        ticker.tick().await;
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }
}
