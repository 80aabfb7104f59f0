-- Named queries, loaded once by service/db/queries.py. A block starts with `-- name: NAME`.
-- Fragments whose name starts with `_` are spliced into other queries where `{{ _name }}`
-- appears (in parentheses; a `_..._columns` list as it is); this is done once at load time,
-- never with values. Parameters are %(name)s;
-- arrays are %(name)b, bound in binary: as text, psycopg quotes and backslash-escapes every
-- element of an array literal (a regex substitution per jsonb input, 3.5-7 µs each).

-- name: _job_columns
-- The columns a Job is read from, named rather than `*`: psycopg prepares a statement run
-- often, and a prepared `*` fails with "cached plan must not change result type" on every
-- pooled connection once a migration adds a column (a rolling upgrade: old pods keep running)
-- until the connection is replaced. A test holds this list to the Job struct's fields.
id, owner_service, owner_ref, task_type, model_profile, status, priority, attempts,
max_attempts, input, result, error_category, error_message, worker_id, lease_expires_at,
run_after, idempotency_key, trace_context, created_at, started_at, finished_at, updated_at

-- name: _job_filter
-- The filter shared by list, retry-by-filter and cancel-by-filter. A NULL parameter means
-- "no filter"; the planner folds those away because these queries run with custom plans.
    (%(ids)b::uuid[] IS NULL OR id = ANY(%(ids)b::uuid[]))
AND (%(status)b::text[] IS NULL OR status = ANY(%(status)b::text[]))
AND (%(owner_service)s::text IS NULL OR owner_service = %(owner_service)s::text)
AND (%(owner_ref)s::text IS NULL OR owner_ref = %(owner_ref)s::text)
AND (%(task_type)b::text[] IS NULL OR task_type = ANY(%(task_type)b::text[]))
AND (%(model_profile)b::text[] IS NULL OR model_profile = ANY(%(model_profile)b::text[]))
AND (%(error_category)b::text[] IS NULL OR error_category = ANY(%(error_category)b::text[]))
AND (%(created_after)s::timestamptz IS NULL OR created_at >= %(created_after)s::timestamptz)
AND (%(created_before)s::timestamptz IS NULL OR created_at < %(created_before)s::timestamptz)

-- name: create_job
-- One job. An idempotency-key conflict returns nothing; the caller then reads the existing job.
-- run_after is never before now (greatest() skips a NULL): a past one would jump the queue
-- (claims take the earliest run_after first) and make the oldest pending age read years.
INSERT INTO ai_jobs (id, owner_service, owner_ref, task_type, model_profile, priority,
                     max_attempts, input, run_after, idempotency_key, trace_context)
VALUES (%(id)s, %(owner_service)s, %(owner_ref)s, %(task_type)s, %(model_profile)s,
        %(priority)s, %(max_attempts)s, %(input)s, greatest(%(run_after)s::timestamptz, now()),
        %(idempotency_key)s, %(trace_context)s)
ON CONFLICT (owner_service, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING {{ _job_columns }};

-- name: create_jobs
-- A whole batch in one statement (so one trigger run and one NOTIFY per profile).
INSERT INTO ai_jobs (id, owner_service, owner_ref, task_type, model_profile, priority,
                     max_attempts, input, run_after, idempotency_key, trace_context)
SELECT u.id, u.owner_service, u.owner_ref, u.task_type, u.model_profile, u.priority,
       u.max_attempts, u.input, greatest(u.run_after, now()), u.idempotency_key, u.trace_context
FROM unnest(%(ids)b::uuid[], %(owner_services)b::text[], %(owner_refs)b::text[],
            %(task_types)b::text[], %(model_profiles)b::text[], %(priorities)b::int[],
            %(max_attempts)b::int[], %(inputs)b::jsonb[], %(run_afters)b::timestamptz[],
            %(idempotency_keys)b::text[], %(trace_contexts)b::jsonb[])
     AS u(id, owner_service, owner_ref, task_type, model_profile, priority, max_attempts,
          input, run_after, idempotency_key, trace_context)
ON CONFLICT (owner_service, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id;

-- name: get_job
SELECT {{ _job_columns }} FROM ai_jobs WHERE id = %(id)s;

-- name: get_jobs_by_idempotency_keys
SELECT {{ _job_columns }} FROM ai_jobs
WHERE owner_service = %(owner_service)s AND idempotency_key = ANY(%(keys)b::text[]);

-- name: list_jobs
-- Keyset pagination, newest first: ids are UUIDv7, so id order is creation order. A page
-- also ends before its inputs and results pass max_bytes (stored sizes; the first row always
-- comes): a page of 500 jobs of 10 MB audio would be gigabytes in the API's memory.
-- listed_rows: how many rows matched before that cut (more than returned: another page).
-- (The windows run over the limited rows only: at the same level they would see every match.)
SELECT {{ _job_columns }}, listed_rows FROM (
    SELECT *, sum(pg_column_size(input) + coalesce(pg_column_size(result), 0))
                  OVER (ORDER BY id DESC ROWS UNBOUNDED PRECEDING) AS page_bytes,
              pg_column_size(input) + coalesce(pg_column_size(result), 0) AS row_bytes,
              count(*) OVER () AS listed_rows
    FROM (
        SELECT * FROM ai_jobs
        WHERE {{ _job_filter }}
          AND (%(cursor)s::uuid IS NULL OR id < %(cursor)s::uuid)
        ORDER BY id DESC
        LIMIT %(limit)s
    ) AS limited
) AS page
WHERE page_bytes - row_bytes < %(max_bytes)s
ORDER BY id DESC;

-- name: _claim_set_columns
-- What every claim sets on the rows it takes (a SET list: spliced as it is, like a column list).
status = 'running',
    attempts = j.attempts + 1,
    worker_id = %(worker_id)s,
    lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
    started_at = now(),
    updated_at = now()

-- name: _within_budget
-- The ids of a claim's candidates(id, priority, run_after, size), in claim order, up to the
-- one whose input passes max_bytes as stored (the first always comes).
SELECT id FROM (
    SELECT id, size, sum(size) OVER (ORDER BY priority DESC, run_after, id
                                     ROWS UNBOUNDED PRECEDING) AS spent
    FROM candidates) AS r
WHERE spent - size < %(max_bytes)s

-- name: claim_jobs
-- Batch claim for one profile: due pending jobs by priority, SKIP LOCKED. Expired leases are
-- not taken here: the reaper returns them to pending (which NOTIFYs), so this statement, on
-- the path of every pickup, stays one index probe of the pending partial index.
WITH picked AS (
    SELECT id AS picked_id FROM ai_jobs
    WHERE status = 'pending' AND model_profile = %(model_profile)s AND run_after <= now()
    ORDER BY priority DESC, run_after, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE ai_jobs AS j
SET {{ _claim_set_columns }}
FROM picked
WHERE j.id = picked.picked_id
RETURNING {{ _job_columns }};

-- name: claim_jobs_within
-- claim_jobs for POST /jobs/claim, whose answer carries the jobs whole: it also stops before
-- their inputs pass max_bytes as stored (the first job always comes), as a page of list_jobs
-- does; twenty 8 MiB inputs took an API process from 157 to 594 MiB. Rows locked but not kept
-- are free again when the statement ends. The workers keep claim_jobs: they claim a few jobs
-- at a time, on the path every pickup is measured on. input_bytes: what the budget spent.
WITH candidates AS (
    SELECT id, priority, run_after, pg_column_size(input) AS size FROM ai_jobs
    WHERE status = 'pending' AND model_profile = %(model_profile)s AND run_after <= now()
    ORDER BY priority DESC, run_after, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), picked AS {{ _within_budget }}
UPDATE ai_jobs AS j
SET {{ _claim_set_columns }}
WHERE j.id = ANY(ARRAY(SELECT id FROM picked))
RETURNING {{ _job_columns }}, pg_column_size(j.input) AS input_bytes;

-- name: _pending_types
-- The body of a recursive CTE types(task_type): the task types with pending jobs in the
-- profile, one probe each (a loose index scan of ai_jobs_status_idx); the last row is NULL.
    (SELECT task_type FROM ai_jobs
     WHERE status = 'pending' AND model_profile = %(model_profile)s
     ORDER BY task_type LIMIT 1)
    UNION ALL
    SELECT (SELECT n.task_type FROM ai_jobs AS n
            WHERE n.status = 'pending' AND n.model_profile = %(model_profile)s
              AND n.task_type > t.task_type
            ORDER BY n.task_type LIMIT 1)
    FROM types AS t
    WHERE t.task_type IS NOT NULL

-- name: _type_groups
-- The body of a recursive CTE groups(key, priority) over types: for each wanted type
-- (only_types, NULL: any; never one of skip_types), its key in ai_jobs_claim_type_idx
-- (migration 0006) and its priorities with pending jobs, highest first, one probe each; each
-- key's last row has a NULL priority.
    SELECT k.key, (SELECT g.priority FROM ai_jobs AS g
                   WHERE g.status = 'pending' AND ARRAY[g.model_profile, g.task_type] = k.key
                   ORDER BY g.priority DESC LIMIT 1)
    FROM (SELECT ARRAY[%(model_profile)s::text, t.task_type] AS key FROM types AS t
          WHERE t.task_type IS NOT NULL
            AND (%(only_types)b::text[] IS NULL OR t.task_type = ANY(%(only_types)b::text[]))
            AND NOT t.task_type = ANY(%(skip_types)b::text[])) AS k
    UNION ALL
    SELECT g.key, (SELECT n.priority FROM ai_jobs AS n
                   WHERE n.status = 'pending' AND ARRAY[n.model_profile, n.task_type] = g.key
                     AND n.priority < g.priority
                   ORDER BY n.priority DESC LIMIT 1)
    FROM groups AS g
    WHERE g.priority IS NOT NULL

-- name: claim_jobs_of_types
-- claim_jobs restricted by task type: only_types, an external worker's types (NULL: any);
-- skip_types, the types a built-in worker leaves to external workers. Jobs of the other types
-- may fill the head of the profile's queue (an external consumer that is down), so instead of
-- stepping over them this reads the due head of each (task type, priority) group of the
-- wanted types through ai_jobs_claim_type_idx (migration 0006, which says why its key is an
-- expression) and keeps the best `limit` of those heads:
--   types, groups: the fragments above (also read by next_due_in);
--   heads: per group, its first `limit` due jobs by run_after, locked SKIP LOCKED; the scan
--     stops at the first job not yet due. Rows locked but not kept are free again when the
--     statement ends; a claim running meanwhile skips them and may come back short, which
--     callers treat as "look again shortly" (the worker's 10 ms retry while jobs are due,
--     the claim endpoint's own retries);
--   picked: the best `limit` of all heads, in the claim order. The UPDATE takes the ids as an
--     array: joined to the CTE, a generic plan (the limit unknown) hashed the whole table.
WITH RECURSIVE types(task_type) AS {{ _pending_types }},
groups(key, priority) AS {{ _type_groups }},
heads AS (
    SELECT h.id, h.priority, h.run_after
    FROM groups AS g, LATERAL (
        SELECT id, priority, run_after FROM ai_jobs
        WHERE status = 'pending' AND ARRAY[model_profile, task_type] = g.key
          AND priority = g.priority AND run_after <= now()
        ORDER BY run_after, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS h
    WHERE g.priority IS NOT NULL
), picked AS (
    SELECT id FROM heads ORDER BY priority DESC, run_after, id LIMIT %(limit)s
)
UPDATE ai_jobs AS j
SET {{ _claim_set_columns }}
WHERE j.id = ANY(ARRAY(SELECT id FROM picked))
RETURNING {{ _job_columns }};

-- name: claim_jobs_of_types_within
-- claim_jobs_of_types with claim_jobs_within's budget (an external worker's claim by type).
WITH RECURSIVE types(task_type) AS {{ _pending_types }},
groups(key, priority) AS {{ _type_groups }},
heads AS (
    SELECT h.id, h.priority, h.run_after, h.size
    FROM groups AS g, LATERAL (
        SELECT id, priority, run_after, pg_column_size(input) AS size FROM ai_jobs
        WHERE status = 'pending' AND ARRAY[model_profile, task_type] = g.key
          AND priority = g.priority AND run_after <= now()
        ORDER BY run_after, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS h
    WHERE g.priority IS NOT NULL
), candidates AS (
    SELECT * FROM heads ORDER BY priority DESC, run_after, id LIMIT %(limit)s
), picked AS {{ _within_budget }}
UPDATE ai_jobs AS j
SET {{ _claim_set_columns }}
WHERE j.id = ANY(ARRAY(SELECT id FROM picked))
RETURNING {{ _job_columns }}, pg_column_size(j.input) AS input_bytes;

-- name: heartbeat_jobs
-- Extend the leases of the jobs this worker still holds; the ids not returned were lost.
-- Without lease_seconds, by as long as the last grant (claim or heartbeat: the writes to a
-- running job's updated_at, each with its lease): an external worker that claimed for 30 s
-- keeps a 30 s lease, which a crash lets go of in 30 s, not in WORKER_LEASE_TIMEOUT. Where
-- that length cannot be told (under a second: a lease ended early, or an UPDATE by hand),
-- default_seconds: a lease too long is safe, one too short would have the job reaped.
UPDATE ai_jobs
SET lease_expires_at = now() + coalesce(
        make_interval(secs => %(lease_seconds)s),
        CASE WHEN lease_expires_at - updated_at >= interval '1 second'
             THEN lease_expires_at - updated_at END,
        make_interval(secs => %(default_seconds)s)),
    updated_at = now()
WHERE id = ANY(%(ids)b::uuid[]) AND status = 'running' AND worker_id = %(worker_id)s
  -- a lease ended early (expire_lease, dev's end of a dead run's) stays ended: a renewal
  -- already on its way must not give a job given up a whole lease back
  AND lease_expires_at > updated_at
  -- an external worker's run fence (the claimed job's started_at): see complete_job
  AND (%(started_at)s::timestamptz IS NULL OR started_at = %(started_at)s::timestamptz)
RETURNING id, extract(epoch FROM lease_expires_at - now())::float8 AS seconds_left;

-- name: complete_job
-- With started_at (the claimed job's, sent back by an external worker), only in that run: a
-- worker_id is often a host name, the same across runs, and a late result of an earlier run
-- of the job (retried, or reaped and claimed again by the same worker) must not complete the
-- newer one. Without it, as the seed's workers call it: the worker_id alone.
UPDATE ai_jobs
SET status = 'completed', result = %(result)s, finished_at = now(), updated_at = now(),
    lease_expires_at = NULL, error_category = NULL, error_message = NULL, failed_at = NULL
WHERE id = %(id)s AND status = 'running' AND worker_id = %(worker_id)s
  AND (%(started_at)s::timestamptz IS NULL OR started_at = %(started_at)s::timestamptz)
RETURNING {{ _job_columns }};

-- name: complete_jobs
-- Many completions in one statement and one commit (the worker batches them). A run is named
-- by its started_at: a result of an earlier run of a job this worker has claimed again (after
-- a retry or a reap) must not complete the newer run.
UPDATE ai_jobs AS j
SET status = 'completed', result = u.result, finished_at = now(), updated_at = now(),
    lease_expires_at = NULL, error_category = NULL, error_message = NULL, failed_at = NULL
FROM unnest(%(ids)b::uuid[], %(results)b::jsonb[], %(started)b::timestamptz[])
     AS u(id, result, started_at)
WHERE j.id = u.id AND j.status = 'running' AND j.worker_id = %(worker_id)s
  AND (u.started_at IS NULL OR j.started_at = u.started_at)
RETURNING j.id;

-- name: completed_runs
-- Which of these runs this worker has completed: a completion whose answer was lost (the
-- connection dropped around the COMMIT) may have been stored, and its retry then matches no
-- running job; this tells a result stored by the lost try from one the worker lost the job of.
SELECT j.id
FROM ai_jobs AS j
JOIN unnest(%(ids)b::uuid[], %(started)b::timestamptz[]) AS u(id, started_at) ON j.id = u.id
WHERE j.status = 'completed' AND j.worker_id = %(worker_id)s
  AND (u.started_at IS NULL OR j.started_at = u.started_at);

-- name: fail_job
-- Retryable failures with attempts left go back to pending after exponential backoff with
-- jitter (or the provider's Retry-After, when longer); everything else is final.
UPDATE ai_jobs
SET status = CASE WHEN %(retryable)s AND attempts < max_attempts
                  THEN 'pending' ELSE 'failed' END,
    run_after = CASE WHEN %(retryable)s AND attempts < max_attempts
                     THEN now() + make_interval(secs => greatest(
                              coalesce(%(retry_after)s::float8, 0),
                              least(%(backoff_max)s::float8,
                                    %(backoff_base)s::float8 * power(2, attempts - 1))
                              * (0.5 + random() * 0.5)))
                     ELSE run_after END,
    finished_at = CASE WHEN %(retryable)s AND attempts < max_attempts THEN NULL ELSE now() END,
    worker_id = CASE WHEN %(retryable)s AND attempts < max_attempts THEN NULL ELSE worker_id END,
    lease_expires_at = NULL,
    error_category = %(error_category)s,
    error_message = %(error_message)s,
    failed_at = now(),
    updated_at = now()
WHERE id = %(id)s AND status = 'running' AND worker_id = %(worker_id)s
  AND (%(started_at)s::timestamptz IS NULL OR started_at = %(started_at)s::timestamptz)
RETURNING {{ _job_columns }};

-- name: release_jobs
-- Graceful shutdown: hand unfinished jobs back without counting the attempt.
UPDATE ai_jobs
SET status = 'pending', attempts = greatest(attempts - 1, 0), worker_id = NULL,
    lease_expires_at = NULL, started_at = NULL, run_after = now(), updated_at = now()
WHERE id = ANY(%(ids)b::uuid[]) AND status = 'running' AND worker_id = %(worker_id)s
RETURNING id;

-- name: release_orphans
-- After a claim failed in flight: jobs of one profile this worker holds in the database but
-- not in memory (the claim committed, its reply was lost) go back as release_jobs does.
UPDATE ai_jobs
SET status = 'pending', attempts = greatest(attempts - 1, 0), worker_id = NULL,
    lease_expires_at = NULL, started_at = NULL, run_after = now(), updated_at = now()
WHERE status = 'running' AND worker_id = %(worker_id)s AND model_profile = %(model_profile)s
  AND NOT (id = ANY(%(known)b::uuid[]))
RETURNING id;

-- name: retry_job
-- Manual retry: a fresh attempt budget; a running job's holder loses its lease.
UPDATE ai_jobs
SET status = 'pending', attempts = 0, run_after = now(), worker_id = NULL,
    lease_expires_at = NULL, result = NULL, error_category = NULL, error_message = NULL,
    failed_at = NULL,
    started_at = NULL, finished_at = NULL, updated_at = now()
WHERE id = %(id)s AND status IN ('failed', 'running')
RETURNING {{ _job_columns }};

-- name: retry_jobs
UPDATE ai_jobs
SET status = 'pending', attempts = 0, run_after = now(), worker_id = NULL,
    lease_expires_at = NULL, result = NULL, error_category = NULL, error_message = NULL,
    failed_at = NULL,
    started_at = NULL, finished_at = NULL, updated_at = now()
WHERE status IN ('failed', 'running') AND {{ _job_filter }}
RETURNING id;

-- name: cancel_jobs
UPDATE ai_jobs
SET status = 'cancelled', lease_expires_at = NULL, finished_at = now(), updated_at = now()
WHERE status IN ('pending', 'running') AND {{ _job_filter }}
RETURNING id;

-- name: try_reaper_lock
-- Only one reaper at a time across all processes; released when the transaction ends.
SELECT pg_try_advisory_xact_lock(%(key)s) AS locked;

-- name: reap_expired
-- Expired leases go back to pending, or to failed when the attempts are used up. Either way
-- the error says how the attempt ended, as a failed attempt's does (a requeued job kept the
-- previous attempt's category, and a later invalid_output counted as "twice in a row").
WITH expired AS (
    SELECT id, worker_id AS lost_worker FROM ai_jobs
    WHERE status = 'running' AND lease_expires_at < now()
    ORDER BY lease_expires_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE ai_jobs AS j
SET status = CASE WHEN j.attempts >= j.max_attempts THEN 'failed' ELSE 'pending' END,
    error_category = 'lease_expired',
    failed_at = now(),
    error_message = 'lease expired on worker ' || j.worker_id || ' after attempt ' || j.attempts,
    finished_at = CASE WHEN j.attempts >= j.max_attempts THEN now() ELSE NULL END,
    worker_id = CASE WHEN j.attempts >= j.max_attempts THEN j.worker_id ELSE NULL END,
    lease_expires_at = NULL,
    -- due again now when requeued; a final failure keeps the due time of its last attempt
    -- (now() there made its queue wait, started_at - run_after, negative in the stats)
    run_after = CASE WHEN j.attempts >= j.max_attempts THEN j.run_after ELSE now() END,
    updated_at = now()
FROM expired
WHERE j.id = expired.id
RETURNING j.id, j.status, j.model_profile, j.task_type, expired.lost_worker;

-- name: next_lease_expiry
-- Seconds until the earliest lease of a running job expires (negative: already expired), on
-- the database's clock; NULL when nothing runs. One probe of ai_jobs_lease_idx: the reaper
-- asks after each turn, so a dead worker's jobs come back when their lease ends, not up to a
-- reaper interval later (external workers choose their own, possibly short, leases).
SELECT extract(epoch FROM min(lease_expires_at) - now())::float8 AS seconds
FROM ai_jobs WHERE status = 'running';

-- name: purge_finished
-- Retention: the oldest finished jobs past JOB_RETENTION, a batch at a time (by the partial
-- index on finished_at). Rows another statement holds are left for the next turn.
WITH old AS (
    SELECT id FROM ai_jobs
    WHERE finished_at < now() - make_interval(secs => %(older_than)s)
      AND status IN ('completed', 'failed', 'cancelled')
    ORDER BY finished_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM ai_jobs AS j USING old WHERE j.id = old.id;

-- name: effective_statement_timeout
-- The statement timeout sessions really have, in seconds (0: none): the one the pool SETs, or
-- the URL's options or PGOPTIONS, which win. The client abandons a statement unanswered a
-- margin past it (service/db/database.py, Session).
SELECT setting::float8 / 1000 AS seconds FROM pg_settings WHERE name = 'statement_timeout';
