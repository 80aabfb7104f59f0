-- Named queries of `ai-service dev` (service/dev.py), on its own embedded database.

-- name: end_leases_of_dead_runs
-- At start-up, before any worker of this run exists: jobs still running under a worker id of
-- this machine (WORKER_ID, then "/" and a per-process suffix) were held by a run that died
-- (kill -9, a crash, a power cut). Their leases end now, so the reaper hands them on at once
-- (the attempt counted, as for any dead worker) rather than after WORKER_LEASE_TIMEOUT.
-- (A worker started by hand on this machine against the embedded database, still running
-- across the restart of `dev`, loses its leases too: its next renewal stops those jobs.)
UPDATE ai_jobs SET lease_expires_at = now(), updated_at = now()
WHERE status = 'running' AND starts_with(worker_id, %(worker_id_base)s || '/')
  AND lease_expires_at > now();
