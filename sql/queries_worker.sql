-- Named queries used only by the worker runtime (service/worker via JobRepository).

-- name: next_due_in
-- Seconds until the earliest pending job of a profile is due, measured on the database's clock
-- (a worker whose clock is skewed neither spins nor oversleeps); NULL when nothing is pending.
-- Jobs of the task types left to external workers do not count: it would claim in a loop.
SELECT extract(epoch FROM min(run_after) - now())::float8 AS seconds
FROM ai_jobs WHERE status = 'pending' AND model_profile = %(model_profile)s
  AND NOT task_type = ANY(%(skip_types)b::text[]);
