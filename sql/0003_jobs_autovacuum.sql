-- Keep the planner's picture of ai_jobs current under bursts.
--
-- Why: with the stock scale factors (analyze after 10 % of the table changed, vacuum after 20 %)
-- a table holding a large history can take a burst of pending jobs far larger than the last
-- ANALYZE saw; the planner then estimates ~1 pending row, claims through the wrong index and
-- sorts the whole queue on every claim (30-60 ms per claim of 1,000 instead of ~5 ms through
-- ai_jobs_claim_idx, measured in bench/throughput.py). Claims and completions are updates, so
-- dead tuples also pile up faster than the stock vacuum threshold expects.
ALTER TABLE ai_jobs SET (
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_scale_factor = 0.05,
    autovacuum_vacuum_insert_scale_factor = 0.05
);
