-- 0005: a running job taken back to pending tells the worker running it, at once.
--
-- Why: a manual retry (POST /api/v1/jobs/{id}/retry or /jobs/retry, which the seed service
-- allows on running jobs) or a reap puts a running job back to pending while its holder may
-- still be running it. The holder learned that only at its next lease renewal (lease/3: five
-- minutes with the default lease), and meanwhile another worker claimed the job: two handlers
-- ran the same job at once. Now the holder hears it on the cancel channel, as it does a
-- cancellation, and stops the run (its result would be refused anyway).
--
-- The payload names the run, not only the job: '<job id> <started_at in µs since the epoch>'.
-- The holder may have claimed the job again by the time the notification arrives, and that
-- new run (a later started_at) must not be stopped. A cancellation's payload stays the bare
-- job id: a cancelled job is never claimed again.
--
-- Cost: one NOTIFY per job moved from running to pending (retries, reaps, shutdown releases,
-- retryable failures); nothing on claims and completions (the WHEN clause is checked first).

CREATE FUNCTION ai_jobs_notify_taken_back() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(
        'ai_jobs_cancelled',
        NEW.id::text || ' '
            || coalesce((extract(epoch FROM OLD.started_at) * 1000000)::bigint, 0)::text
    );
    RETURN NULL;
END;
$$;

CREATE TRIGGER ai_jobs_notify_taken_back
    AFTER UPDATE OF status ON ai_jobs
    FOR EACH ROW
    WHEN (OLD.status = 'running' AND NEW.status = 'pending')
    EXECUTE FUNCTION ai_jobs_notify_taken_back();
