-- 0007: when a job's latest failure happened, for the errors of the last hour in GET /stats.
--
-- Why: stats_errors took the failure's time from updated_at, which every claim, heartbeat,
-- cancel and release changes too. A job whose earlier attempt failed hours ago counted as an
-- error of the last hour again for as long as its retry ran and renewed its lease.
--
-- failed_at is set where a failure is recorded (fail_job, reap_expired) and cleared with the
-- error (complete, retry). Failures recorded before this migration have none: they count in
-- an error's total, not in its last hour (at most an hour's worth, once). The partial index
-- holds only rows that failed; the query for the last hour reads its newest range.
ALTER TABLE ai_jobs ADD COLUMN failed_at timestamptz;

CREATE INDEX ai_jobs_failed_at_idx ON ai_jobs (failed_at, error_category)
    WHERE failed_at IS NOT NULL;
