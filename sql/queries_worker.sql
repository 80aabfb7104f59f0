-- Named queries used only by the worker runtime (service/worker via JobRepository).

-- name: next_due_in
-- Seconds until the earliest pending job of a profile is due, measured on the database's clock
-- (a worker whose clock is skewed neither spins nor oversleeps); NULL when nothing is pending.
-- Jobs of the task types left to external workers (skip_types) do not count: it would claim
-- in a loop. The idle worker runs this each time its queue runs dry, so it must not read the
-- pending jobs themselves: a plain min(run_after) walked every pending job of the profile
-- (~10 ms with 100,000 scheduled for later, or left to a consumer that is down). The earliest
-- job of each (task type, priority) group is the first entry of that group in
-- ai_jobs_claim_type_idx: a few probes per group, whatever is queued.
WITH RECURSIVE types(task_type) AS {{ _pending_types }},
groups(key, priority) AS {{ _type_groups }}
SELECT extract(epoch FROM min(h.run_after) - now())::float8 AS seconds
FROM groups AS g, LATERAL (
    SELECT run_after FROM ai_jobs
    WHERE status = 'pending' AND ARRAY[model_profile, task_type] = g.key
      AND priority = g.priority
    ORDER BY run_after, id
    LIMIT 1
) AS h
WHERE g.priority IS NOT NULL;

-- name: expire_lease
-- A job whose outcome this worker could not write (an error of unknown kind, repeated): its
-- lease ends now, so the reaper hands it on as if the worker had died (the attempt counted,
-- failed with lease_expired when none are left), instead of after the whole lease.
UPDATE ai_jobs SET lease_expires_at = now(), updated_at = now()
WHERE id = %(id)s AND status = 'running' AND worker_id = %(worker_id)s
  AND started_at = %(started_at)s;
