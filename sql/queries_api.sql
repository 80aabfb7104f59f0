-- Named queries used only by the HTTP API (service/jobs/stats.py). Each must stay fast on a
-- table of millions of jobs: bench/stats_scale.py measures them on 1,000,000 rows.

-- name: stats_by_kind
-- Jobs by status x model_profile x task_type: a (parallel) index-only scan of ai_jobs_status_idx.
SELECT status, model_profile, task_type, count(*) AS count
FROM ai_jobs GROUP BY status, model_profile, task_type
ORDER BY status, model_profile, task_type;

-- name: stats_errors
-- Jobs whose latest failure is still their error, by category (index-only scan of
-- ai_jobs_errors_idx), and how many of those failures came in the last hour (the newest
-- range of ai_jobs_failed_at_idx: failed_at, not updated_at, which claims and heartbeats move).
WITH total AS (
    SELECT error_category, count(*) AS total
    FROM ai_jobs WHERE error_category IS NOT NULL GROUP BY error_category
), recent AS (
    SELECT error_category, count(*) AS last_hour
    FROM ai_jobs
    WHERE failed_at >= now() - interval '1 hour' AND error_category IS NOT NULL
    GROUP BY error_category
)
SELECT total.error_category, coalesce(recent.last_hour, 0) AS last_hour, total.total
FROM total LEFT JOIN recent USING (error_category)
ORDER BY total.error_category;

-- name: stats_pending
-- The queue per profile from the partial claim index. The age is how long the oldest *due*
-- job has waited since it became runnable (run_after); jobs scheduled later do not count.
SELECT model_profile,
       count(*) AS pending,
       count(*) FILTER (WHERE run_after <= now()) AS due,
       extract(epoch FROM now() - min(run_after) FILTER (WHERE run_after <= now()))::float8
           AS oldest_pending_age_seconds
FROM ai_jobs WHERE status = 'pending'
GROUP BY model_profile ORDER BY model_profile;

-- name: stats_recent
-- The last hour of finished jobs (ai_jobs_finished_idx range): throughput over 5 and 60
-- minutes, and queue wait (claim time - due time) and run time of the final attempt. The due
-- time is run_after but never before created_at: a run_after sent in the past (1970, a skewed
-- clock) would count the gap as waiting.
SELECT count(*) FILTER (WHERE status = 'completed' AND finished_at >= now() - interval '5 minutes')
           AS completed_5m,
       count(*) FILTER (WHERE status = 'completed') AS completed_60m,
       count(*) FILTER (WHERE started_at IS NOT NULL) AS jobs,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - greatest(run_after, created_at)))
           FILTER (WHERE started_at IS NOT NULL) AS wait_p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - greatest(run_after, created_at)))
           FILTER (WHERE started_at IS NOT NULL) AS wait_p95,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at))
           FILTER (WHERE started_at IS NOT NULL) AS run_p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at))
           FILTER (WHERE started_at IS NOT NULL) AS run_p95
FROM ai_jobs
WHERE finished_at >= now() - interval '60 minutes' AND status IN ('completed', 'failed');
