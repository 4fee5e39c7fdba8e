//! Jobs' secret values: read only to hand a job to its worker. The statements that end a job
//! delete them in the same statement (`jobs.rs`).

use std::collections::BTreeMap;

use hodei_domain::{JobId, JobSecrets};

use crate::{Store, StoreError};

impl Store {
    /// The secrets of `job` (empty once it has ended).
    pub async fn job_secrets(&self, job: JobId) -> Result<JobSecrets, StoreError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT name, value FROM job_secrets WHERE job_id = $1")
                .bind(job.as_uuid())
                .fetch_all(&self.pool)
                .await?;
        Ok(JobSecrets::from_stored(
            rows.into_iter().collect::<BTreeMap<_, _>>(),
        ))
    }
}
