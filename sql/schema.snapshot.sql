-- columns
ai_jobs.id uuid NOT NULL
ai_jobs.owner_service text NOT NULL
ai_jobs.owner_ref text
ai_jobs.task_type text NOT NULL
ai_jobs.model_profile text NOT NULL
ai_jobs.status text NOT NULL DEFAULT 'pending'::text
ai_jobs.priority integer NOT NULL DEFAULT 0
ai_jobs.attempts integer NOT NULL DEFAULT 0
ai_jobs.max_attempts integer NOT NULL DEFAULT 3
ai_jobs.input jsonb NOT NULL DEFAULT '{}'::jsonb
ai_jobs.result jsonb
ai_jobs.error_category text
ai_jobs.error_message text
ai_jobs.worker_id text
ai_jobs.lease_expires_at timestamp with time zone
ai_jobs.run_after timestamp with time zone NOT NULL DEFAULT now()
ai_jobs.idempotency_key text
ai_jobs.trace_context jsonb
ai_jobs.created_at timestamp with time zone NOT NULL DEFAULT now()
ai_jobs.started_at timestamp with time zone
ai_jobs.finished_at timestamp with time zone
ai_jobs.updated_at timestamp with time zone NOT NULL DEFAULT now()
ai_jobs.failed_at timestamp with time zone
ai_service_migrations.version integer NOT NULL
ai_service_migrations.name text NOT NULL
ai_service_migrations.checksum text NOT NULL
ai_service_migrations.applied_at timestamp with time zone NOT NULL DEFAULT now()
-- constraints
ai_jobs ai_jobs_attempts_check CHECK ((attempts >= 0))
ai_jobs ai_jobs_max_attempts_check CHECK ((max_attempts >= 1))
ai_jobs ai_jobs_model_profile_check CHECK ((model_profile ~ '^[A-Za-z0-9][A-Za-z0-9._:/-]{0,54}$'::text))
ai_jobs ai_jobs_owner_service_check CHECK ((owner_service <> ''::text))
ai_jobs ai_jobs_pkey PRIMARY KEY (id)
ai_jobs ai_jobs_running_has_owner CHECK (((status <> 'running'::text) OR ((worker_id IS NOT NULL) AND (lease_expires_at IS NOT NULL))))
ai_jobs ai_jobs_status_check CHECK ((status = ANY (ARRAY['pending'::text, 'running'::text, 'completed'::text, 'failed'::text, 'cancelled'::text])))
ai_jobs ai_jobs_task_type_check CHECK ((task_type <> ''::text))
ai_jobs ai_jobs_times_readable CHECK ((((run_after >= '0001-01-02 00:00:00+00'::timestamp with time zone) AND (run_after <= '9999-12-30 23:59:59.999999+00'::timestamp with time zone)) AND ((created_at >= '0001-01-02 00:00:00+00'::timestamp with time zone) AND (created_at <= '9999-12-30 23:59:59.999999+00'::timestamp with time zone)) AND ((updated_at >= '0001-01-02 00:00:00+00'::timestamp with time zone) AND (updated_at <= '9999-12-30 23:59:59.999999+00'::timestamp with time zone)) AND ((started_at >= '0001-01-02 00:00:00+00'::timestamp with time zone) AND (started_at <= '9999-12-30 23:59:59.999999+00'::timestamp with time zone)) AND ((finished_at >= '0001-01-02 00:00:00+00'::timestamp with time zone) AND (finished_at <= '9999-12-30 23:59:59.999999+00'::timestamp with time zone)) AND ((lease_expires_at >= '0001-01-02 00:00:00+00'::timestamp with time zone) AND (lease_expires_at <= '9999-12-30 23:59:59.999999+00'::timestamp with time zone))))
ai_service_migrations ai_service_migrations_pkey PRIMARY KEY (version)
-- indexes
CREATE INDEX ai_jobs_claim_idx ON public.ai_jobs USING btree (model_profile, priority DESC, run_after, id) WHERE (status = 'pending'::text)
CREATE INDEX ai_jobs_claim_type_idx ON public.ai_jobs USING btree ((ARRAY[model_profile, task_type]), priority DESC, run_after, id) WHERE (status = 'pending'::text)
CREATE INDEX ai_jobs_errors_idx ON public.ai_jobs USING btree (error_category, updated_at) WHERE (error_category IS NOT NULL)
CREATE INDEX ai_jobs_failed_at_idx ON public.ai_jobs USING btree (failed_at, error_category) WHERE (failed_at IS NOT NULL)
CREATE INDEX ai_jobs_finished_idx ON public.ai_jobs USING btree (finished_at) WHERE (finished_at IS NOT NULL)
CREATE UNIQUE INDEX ai_jobs_idempotency_idx ON public.ai_jobs USING btree (owner_service, idempotency_key) WHERE (idempotency_key IS NOT NULL)
CREATE INDEX ai_jobs_lease_idx ON public.ai_jobs USING btree (lease_expires_at) WHERE (status = 'running'::text)
CREATE INDEX ai_jobs_owner_idx ON public.ai_jobs USING btree (owner_service, owner_ref, id)
CREATE UNIQUE INDEX ai_jobs_pkey ON public.ai_jobs USING btree (id)
CREATE INDEX ai_jobs_status_idx ON public.ai_jobs USING btree (status, model_profile, task_type)
CREATE UNIQUE INDEX ai_service_migrations_pkey ON public.ai_service_migrations USING btree (version)
-- triggers
CREATE TRIGGER ai_jobs_notify_finished AFTER UPDATE OF status ON public.ai_jobs FOR EACH ROW WHEN (((new.status = ANY (ARRAY['completed'::text, 'failed'::text, 'cancelled'::text])) AND (old.status <> new.status))) EXECUTE FUNCTION ai_jobs_notify_finished()
CREATE TRIGGER ai_jobs_notify_inserted AFTER INSERT ON public.ai_jobs REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION ai_jobs_notify_inserted()
CREATE TRIGGER ai_jobs_notify_requeued AFTER UPDATE OF status ON public.ai_jobs FOR EACH ROW WHEN (((new.status = 'pending'::text) AND (old.status <> 'pending'::text))) EXECUTE FUNCTION ai_jobs_notify_requeued()
CREATE TRIGGER ai_jobs_notify_taken_back AFTER UPDATE OF status ON public.ai_jobs FOR EACH ROW WHEN (((old.status = 'running'::text) AND (new.status = 'pending'::text))) EXECUTE FUNCTION ai_jobs_notify_taken_back()
CREATE TRIGGER ai_jobs_refuse_unreadable_json BEFORE INSERT OR UPDATE OF input, trace_context ON public.ai_jobs FOR EACH ROW WHEN (((jsonb_typeof(new.input) <> 'object'::text) OR jsonb_path_exists(new.input, 'strict $.**{129 to last}'::jsonpath) OR (jsonb_typeof(new.trace_context) <> 'object'::text) OR jsonb_path_exists(new.trace_context, 'strict $.*?(@.type() != "string")'::jsonpath, '{}'::jsonb, true))) EXECUTE FUNCTION ai_jobs_refuse_unreadable_json()
-- storage parameters
ai_jobs autovacuum_analyze_scale_factor=0.02, autovacuum_vacuum_scale_factor=0.05, autovacuum_vacuum_insert_scale_factor=0.05
-- functions
CREATE OR REPLACE FUNCTION public.ai_jobs_notify_finished()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    PERFORM pg_notify('ai_jobs_finished', NEW.id::text);
    IF OLD.status = 'running' AND NEW.status = 'cancelled' THEN
        PERFORM pg_notify('ai_jobs_cancelled', NEW.id::text);
    END IF;
    RETURN NULL;
END;
$function$
CREATE OR REPLACE FUNCTION public.ai_jobs_notify_inserted()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
DECLARE
    profile text;
BEGIN
    FOR profile IN SELECT DISTINCT model_profile FROM inserted WHERE status = 'pending' LOOP
        PERFORM pg_notify('ai_jobs:' || profile, '');
    END LOOP;
    RETURN NULL;
END;
$function$
CREATE OR REPLACE FUNCTION public.ai_jobs_notify_requeued()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    PERFORM pg_notify('ai_jobs:' || NEW.model_profile, '');
    RETURN NULL;
END;
$function$
CREATE OR REPLACE FUNCTION public.ai_jobs_notify_taken_back()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    PERFORM pg_notify(
        'ai_jobs_cancelled',
        NEW.id::text || ' '
            || coalesce((extract(epoch FROM OLD.started_at) * 1000000)::bigint, 0)::text
    );
    RETURN NULL;
END;
$function$
CREATE OR REPLACE FUNCTION public.ai_jobs_refuse_unreadable_json()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
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
$function$
