-- 0004: the database refuses rows the service cannot read back.
--
-- Why: the API validates what it writes, but a row written around it (an operator's UPDATE,
-- a script, a restore) could hold what no reader can load. Measured before this migration: a
-- pending job whose run_after an UPDATE set to '-infinity' made every claim that picked it
-- fail while loading the rows, after the UPDATE had marked the whole batch running; the other
-- jobs of the batch then waited for their leases to expire and lost an attempt, again on
-- every retry. Listings that met the row failed too. An input nested ~1,000 levels deep did
-- the same (the reader's decoder hits Python's recursion limit).
--
-- What is refused from now on:
--   * a time outside 0001-01-02 .. 9999-12-30 UTC in any timestamp column (±infinity,
--     or an edge instant that a server TimeZone renders as year 0 or 10000, neither of which
--     a Python datetime holds; the API refuses the same run_after values);
--   * an input that is not a JSON object or that nests deeper than 128 levels (the API
--     refuses more than 64; readers fail near 1,000), a trace_context that is not an object
--     of strings. Checked by a trigger that fires only on INSERT and on an UPDATE that sets
--     those columns: a CHECK constraint would detoast a large input on every status change.
--
-- Existing rows are repaired first, so the constraint can be validated: times are clamped
-- into the range (a '-infinity' run_after still means "due now", 'infinity' still "never");
-- a non-object input is kept whole under {"value": ...}, a too deep one as its JSON text
-- under {"value_text": ...}, and if such a job had not finished it fails as invalid_input;
-- a malformed trace_context is dropped (the job runs untraced). Each repair and the
-- constraint's validation read ai_jobs once, under this migration's transaction: 0.75 s in
-- all on 1,000,000 rows with small inputs (2 cores, 2026-11-30); the repairs read every
-- input, so it grows with their stored size. Claims and inserts wait only while the
-- constraint is validated (its exclusive lock is held from there to the commit): 0.1 s per
-- million rows with the table cached. A table so large that this matters would validate in a
-- migration of its own (NOT VALID here, VALIDATE CONSTRAINT later, under a weaker lock).

-- Helpers for the one-off repair only (temporary: gone with the migration's session).
CREATE FUNCTION pg_temp.readable(t timestamptz) RETURNS boolean
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT t BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 23:59:59.999999+00' $$;

CREATE FUNCTION pg_temp.clamped(t timestamptz) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT CASE
        WHEN t < '0001-01-02 00:00:00+00' THEN '0001-01-02 00:00:00+00'::timestamptz
        WHEN t > '9999-12-30 23:59:59.999999+00' THEN '9999-12-30 23:59:59.999999+00'::timestamptz
        ELSE t
    END $$;

UPDATE ai_jobs SET
    run_after = pg_temp.clamped(run_after),
    created_at = pg_temp.clamped(created_at),
    updated_at = pg_temp.clamped(updated_at),
    started_at = pg_temp.clamped(started_at),
    finished_at = pg_temp.clamped(finished_at),
    lease_expires_at = pg_temp.clamped(lease_expires_at)
WHERE NOT (
    pg_temp.readable(run_after) AND pg_temp.readable(created_at)
    AND pg_temp.readable(updated_at) AND pg_temp.readable(started_at)
    AND pg_temp.readable(finished_at) AND pg_temp.readable(lease_expires_at)
);

UPDATE ai_jobs SET
    status = 'failed',
    error_category = 'invalid_input',
    error_message = 'input was not a JSON object or nested deeper than 128 levels (written '
                    'around the API); it is kept under input.value or input.value_text',
    lease_expires_at = NULL,
    finished_at = now(),
    updated_at = now()
WHERE status IN ('pending', 'running') AND (
    jsonb_typeof(input) <> 'object' OR jsonb_path_exists(input, 'strict $.**{129 to last}')
);

UPDATE ai_jobs SET input = jsonb_build_object('value_text', input::text)
WHERE jsonb_path_exists(input, 'strict $.**{129 to last}');

UPDATE ai_jobs SET input = jsonb_build_object('value', input)
WHERE jsonb_typeof(input) <> 'object';

UPDATE ai_jobs SET trace_context = NULL
WHERE trace_context IS NOT NULL AND (
    jsonb_typeof(trace_context) <> 'object'
    OR jsonb_path_exists(trace_context, 'strict $.* ? (@.type() != "string")', '{}', true)
);

-- The bounds written out, not a function: PostgreSQL inlines a SQL function in a CHECK by
-- parsing its body again for every statement that checks the constraint. Measured on
-- 2026-11-30 against the same schema without the constraint: with the function, a one-job
-- claim took ~30 µs more server time in a loop and idle pickup 47-82 µs more at the median
-- (interleaved A/B); written out, 4-6 µs in the loop and no difference in pickup.
ALTER TABLE ai_jobs ADD CONSTRAINT ai_jobs_times_readable CHECK (
    run_after BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 23:59:59.999999+00'
    AND created_at BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 23:59:59.999999+00'
    AND updated_at BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 23:59:59.999999+00'
    AND started_at BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 23:59:59.999999+00'
    AND finished_at BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 23:59:59.999999+00'
    AND lease_expires_at BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 23:59:59.999999+00'
);

CREATE FUNCTION ai_jobs_refuse_unreadable_json() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF jsonb_typeof(NEW.input) <> 'object' THEN
        RAISE EXCEPTION 'ai_jobs.input must be a JSON object, not %', jsonb_typeof(NEW.input)
            USING ERRCODE = 'check_violation', COLUMN = 'input', TABLE = 'ai_jobs';
    END IF;
    IF jsonb_path_exists(NEW.input, 'strict $.**{129 to last}') THEN
        RAISE EXCEPTION 'ai_jobs.input must not nest deeper than 128 levels'
            USING ERRCODE = 'check_violation', COLUMN = 'input', TABLE = 'ai_jobs';
    END IF;
    RAISE EXCEPTION 'ai_jobs.trace_context must be a JSON object of strings'
        USING ERRCODE = 'check_violation', COLUMN = 'trace_context', TABLE = 'ai_jobs';
END
$$;

-- The WHEN clause runs without entering PL/pgSQL: a valid row costs two jsonb_typeof calls,
-- one walk over the input's nodes (`$.**{129 to last}` finds an item 129 levels down: ~7 ns
-- a node, and on INSERT the input is not yet compressed) and, for a trace_context, one small
-- jsonpath (strict: lax mode would unwrap ["x"] to a string; silent: strict mode raises on
-- what is not an object, which the first test catches).
CREATE TRIGGER ai_jobs_refuse_unreadable_json
    BEFORE INSERT OR UPDATE OF input, trace_context ON ai_jobs
    FOR EACH ROW
    WHEN (
        jsonb_typeof(NEW.input) <> 'object'
        OR jsonb_path_exists(NEW.input, 'strict $.**{129 to last}')
        OR jsonb_typeof(NEW.trace_context) <> 'object'
        OR jsonb_path_exists(NEW.trace_context, 'strict $.* ? (@.type() != "string")', '{}', true)
    )
    EXECUTE FUNCTION ai_jobs_refuse_unreadable_json();
