-- 0006: claims restricted by task type stay a few index probes, whatever else is queued.
--
-- Why: a built-in worker leaves the task types of WORKER_EXTERNAL_TASK_TYPES to external
-- workers, and an external worker claims only its own types (POST /api/v1/jobs/claim with
-- "task_type"). Through ai_jobs_claim_idx, which has no task_type, such a claim stepped over
-- every pending job of the other types queued ahead of its own, one heap row at a time: with
-- 100,000 of them ahead (an external consumer that is down) a one-job claim took ~33 ms
-- instead of ~0.5, and every claim of the profile paid it. With this index the claim reads the
-- due head of each (task type, priority) group of the wanted types (claim_jobs_of_types in
-- sql/queries.sql): 0.35-0.75 ms whatever waits ahead or waits to be due.
--
-- Why the key is an expression, ARRAY[model_profile, task_type]: a per-group lookup written
-- with model_profile = ... AND task_type = ... can also be served by ai_jobs_claim_idx (the
-- type as a filter), and the planner sometimes took it, walking the other types after all.
-- Keyed on the expression, only this index answers the lookup. Equality on the key and the
-- priority then lets the scan stop at the first job not yet due, on every PostgreSQL version
-- (a range on the type would not: 15-17 have no skip scan).
--
-- Cost: one more index entry per job created (pending rows only: a claim moves the row out of
-- this partial index, as out of ai_jobs_claim_idx). Claims without a task-type filter still
-- use ai_jobs_claim_idx, so the common path is unchanged.
CREATE INDEX ai_jobs_claim_type_idx
    ON ai_jobs ((ARRAY[model_profile, task_type]), priority DESC, run_after, id)
    WHERE status = 'pending';
