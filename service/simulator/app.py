"""The simulator's HTTP surface: vLLM's OpenAI-compatible routes, ``/health`` and ``/metrics``.

Response bodies, status codes and refusal messages follow vLLM (errors as
``{"error": {"message", "type", "param", "code"}}``; Voxtral refuses ``verbose_json``; uploads
over 25 MiB get "Maximum file size exceeded"). A request whose client disconnects gives its
batch slot back at once, as vLLM aborts such requests.
"""

from __future__ import annotations

import collections
import hmac
import itertools
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.exceptions import HTTPException

from service.simulator import content
from service.simulator.config import SimulatorConfig
from service.simulator.failures import FailurePlan
from service.simulator.gpu import Gpu
from service.simulator.metrics import Exposition

_ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    413: "BadRequestError",
    429: "RateLimitError",
    503: "ServiceUnavailableError",
    504: "TimeoutError",
}
AsgiCallable = Callable[..., Awaitable[Any]]
AsgiApp = Callable[[dict[str, Any], AsgiCallable, AsgiCallable], Awaitable[None]]
_ROLES = {"system", "user", "assistant", "tool", "developer"}
_RESPONSE_FORMATS = {"json", "text", "verbose_json"}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response[Any]:
    body = {
        "error": {
            "message": message,
            "type": _ERROR_TYPES.get(status, "InternalServerError"),
            "param": None,
            "code": status,
        }
    }
    return Response(body, status_code=status, headers=headers, media_type="application/json")


class Simulator:
    """Shared state of the routes: one simulated GPU per served model and the failure plan."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.gpus = {
            m: Gpu(m, config.capacity, config.kv_cache_tokens)
            for m in (*config.chat_models, *config.audio_models)
        }
        self.failures = FailurePlan(config)
        self._ids = itertools.count(1)
        # The W3C traceparent of the latest inference requests, as vLLM would see them: lets a
        # test check that a job's trace reached the GPU server.
        self.traceparents: collections.deque[str] = collections.deque(maxlen=256)
        # Set at shutdown so hanging requests end instead of holding the server open.
        self.stopping = anyio.Event()

    def saw(self, request: Request[Any, Any, Any]) -> None:
        if traceparent := request.headers.get("traceparent"):
            self.traceparents.append(traceparent)

    def next_id(self, prefix: str) -> str:
        return f"{prefix}-sim-{next(self._ids)}"

    def injected(self, kind: str) -> Response[Any] | None:
        """The immediate response of an injected 429/503/400 (``None`` for the others)."""
        retry = {"Retry-After": str(self.config.retry_after_s)}
        if kind == "429":
            return error(429, "Too many requests (simulated).", retry)
        if kind == "503":
            return error(503, "The server is overloaded (simulated).", retry)
        if kind == "400":
            return error(400, "Invalid request (simulated).")
        return None

    async def until_gone(self, request: Request[Any, Any, Any], work: Awaitable[None]) -> bool:
        """Run ``work``; stop early if the client disconnects or the server stops.

        Returns whether ``work`` finished.
        """
        finished = False
        async with anyio.create_task_group() as tg:

            async def watch_client() -> None:
                while (await request.receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()

            async def watch_stop() -> None:
                await self.stopping.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(watch_client)
            tg.start_soon(watch_stop)
            await work
            finished = True
            tg.cancel_scope.cancel()
        return finished

    async def hang(self, request: Request[Any, Any, Any], gpu: Gpu) -> Response[Any]:
        """An injected timeout: hold a slot until the client gives up (or ``hang_s``)."""
        await self.run_on(request, gpu, 0, lambda _: anyio.sleep(self.config.hang_s))
        gpu.finish("abort")
        return error(504, "The request timed out (simulated).")

    async def run_on(
        self,
        request: Request[Any, Any, Any],
        gpu: Gpu,
        kv_tokens: int,
        work: Callable[[float], Awaitable[None]],
    ) -> bool:
        """Wait for a slot of ``gpu``, then ``work(arrival time)``; both end when the client
        goes (as vLLM aborts a request waiting in its queue too, not only a running one).
        Returns whether the work finished."""

        async def in_slot() -> None:
            async with gpu.slot(kv_tokens) as arrived:
                await work(arrived)

        return await self.until_gone(request, in_slot())


def _text_of(messages: list[Any]) -> str:
    parts: list[str] = []
    for m in messages:
        c = m.get("content") if isinstance(m, dict) else None
        if isinstance(c, str):
            parts.append(c)
        elif isinstance(c, list):
            parts.extend(str(p.get("text", "")) for p in c if isinstance(p, dict))
    return "\n".join(parts)


def _check_chat(body: Any, sim: Simulator) -> Response[Any] | None:
    if not isinstance(body, dict):
        return error(400, "The request body must be a JSON object.")
    model = body.get("model")
    if model not in sim.config.chat_models:
        if model in sim.config.audio_models:
            return error(400, f"The model `{model}` does not support Chat Completions API.")
        return error(404, f"The model `{model}` does not exist.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return error(400, "messages: a non-empty list is required.")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or m["role"] not in _ROLES:
            return error(400, f"messages[{i}]: a message needs a valid role.")
    if body.get("stream"):
        return error(400, "stream=true is not simulated.")
    mt = body.get("max_tokens")
    if mt is not None and (not isinstance(mt, int) or isinstance(mt, bool) or mt < 1):
        return error(400, f"max_tokens must be at least 1, got {mt}.")
    rf = body.get("response_format")
    if rf is not None and (
        not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema")
    ):
        return error(400, "response_format.type must be text, json_object or json_schema.")
    if rf is not None and rf["type"] == "json_schema":
        spec = rf.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            return error(400, "response_format.json_schema.name: Field required")
    return None


def build_app(sim: Simulator) -> Litestar:
    cfg = sim.config

    @get("/health", sync_to_thread=False)
    def health() -> Response[bytes]:
        return Response(b"", media_type="text/plain")

    @get("/v1/models", sync_to_thread=False)
    def models() -> dict[str, Any]:
        created = int(time.time())
        return {
            "object": "list",
            "data": [
                {
                    "id": m,
                    "object": "model",
                    "created": created,
                    "owned_by": "vllm",
                    "root": m,
                    "parent": None,
                    "max_model_len": cfg.max_model_len,
                }
                for m in sim.gpus
            ],
        }

    @get("/metrics", sync_to_thread=False)
    def metrics() -> Response[str]:
        out = Exposition()
        for gpu in sim.gpus.values():
            gpu.expose(out)
        return Response(out.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @post("/v1/chat/completions", status_code=200)
    async def chat(request: Request[Any, Any, Any]) -> Response[Any]:
        sim.saw(request)
        try:
            body = msgspec.json.decode(await request.body())
        except msgspec.DecodeError as exc:
            return error(400, f"The request body is not valid JSON: {exc}")
        except RecursionError:  # (msgspec stops at the interpreter's recursion limit)
            return error(400, "The request body is not valid JSON: nested too deeply")
        refused = _check_chat(body, sim)
        if refused is not None:
            return refused
        gpu = sim.gpus[body["model"]]
        text = _text_of(body["messages"])
        prompt = content.estimate_tokens(text) + 4 * len(body["messages"])
        max_tokens: int | None = body.get("max_tokens")
        if prompt + (max_tokens or 0) > cfg.max_model_len:
            return error(
                400,
                f"This model's maximum context length is {cfg.max_model_len} tokens. However, "
                f"you requested {prompt + (max_tokens or 0)} tokens ({prompt} in the messages, "
                f"{max_tokens or 0} in the completion). Please reduce the length of the "
                "messages or completion.",
            )
        kind = sim.failures.decide(text)
        if kind == "timeout":
            return await sim.hang(request, gpu)
        if kind is not None and (quick := sim.injected(kind)) is not None:
            return quick
        rf = body.get("response_format") or {}
        if kind == "invalid_json":
            answer, full = "Sure! Here is the JSON you asked for: {", None
        elif rf.get("type") in ("json_object", "json_schema"):
            try:
                answer, full = content.json_answer(rf, text), None
            except content.SchemaError as exc:
                return error(400, f"response_format.json_schema: {exc}")
        else:
            answer, full = "", cfg.completion_tokens
        output = full if full is not None else content.estimate_tokens(answer)
        reason = "stop"
        # without max_tokens vLLM generates up to the context's end, no further
        limit = max_tokens if max_tokens is not None else cfg.max_model_len - prompt
        if limit < output:
            output, reason = limit, "length"
            answer = answer[: limit * 4]
        if kind == "abort":  # the engine dropped it (shutdown, sleep mode): 200, cut short
            output, reason = output // 2, "abort"
            answer = answer[: len(answer) // 2]
        if full is not None:
            answer = content.text_answer(output)
        done = await sim.run_on(
            request,
            gpu,
            prompt + output,
            lambda arrived: gpu.generate(
                arrived=arrived,
                first_token_s=cfg.latency_ms / 1000,
                rest_s=cfg.per_token_ms * output / 1000,
                prompt=prompt,
                output=output,
            ),
        )
        gpu.finish(reason if done else "abort")
        if not done:
            return error(503, "The request was aborted.")
        return Response(
            {
                "id": sim.next_id("chatcmpl"),
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer, "tool_calls": []},
                        "logprobs": None,
                        "finish_reason": reason,
                        "stop_reason": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "total_tokens": prompt + output,
                    "completion_tokens": output,
                },
            }
        )

    @post("/v1/audio/transcriptions", status_code=200)
    async def transcriptions(request: Request[Any, Any, Any]) -> Response[Any]:
        sim.saw(request)
        try:
            form = await request.form()
        except UnicodeDecodeError:
            return error(400, "The form is not valid: a field is not UTF-8.")
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            return error(400, "file: an audio file part is required.")
        model = form.get("model") or cfg.audio_models[0]
        if model not in cfg.audio_models:
            if model in cfg.chat_models:
                return error(400, f"The model `{model}` does not support Transcriptions API.")
            return error(404, f"The model `{model}` does not exist.")
        fmt = form.get("response_format") or "json"
        if fmt not in _RESPONSE_FORMATS:
            return error(400, "Currently only support response_format`text`, `json` or "
                         "`verbose_json`")  # fmt: skip
        voxtral = "voxtral" in str(model).lower()
        if fmt == "verbose_json" and voxtral:
            return error(400, f"Currently do not support verbose_json for {model}")
        data = await upload.read()
        await upload.close()
        if len(data) / 1024**2 > cfg.max_upload_bytes / 1024**2:
            return error(400, "Maximum file size exceeded")
        if not data:
            return error(400, "Invalid or empty audio file.")
        seconds = content.audio_seconds(data)
        language = form.get("language") or None
        gpu = sim.gpus[str(model)]
        kind = sim.failures.decide(f"{form.get('prompt') or ''}\n{upload.filename}")
        if kind == "timeout":
            return await sim.hang(request, gpu)
        if kind is not None and (quick := sim.injected(kind)) is not None:
            return quick
        text = content.transcript(data, seconds, language)
        output = content.estimate_tokens(text)
        done = await sim.run_on(
            request,
            gpu,
            output,
            lambda arrived: gpu.generate(
                arrived=arrived,
                first_token_s=cfg.latency_ms / 1000,
                rest_s=cfg.per_audio_second_ms * seconds / 1000,
                prompt=0,
                output=output,
            ),
        )
        gpu.finish("stop" if done else "abort")
        if not done:
            return error(503, "The request was aborted.")
        if fmt == "text":
            return Response(text, media_type="text/plain")
        if fmt == "verbose_json":
            segment = {"id": 0, "seek": 0, "start": 0.0, "end": seconds, "text": text,
                       "tokens": [], "temperature": 0.0}  # fmt: skip
            return Response({"text": text, "language": language, "duration": str(seconds),
                             "segments": [segment]})  # fmt: skip
        return Response(
            {"text": text, "usage": {"type": "duration", "seconds": math.ceil(seconds)}}
        )

    def on_http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
        return error(exc.status_code, str(exc.detail))

    return Litestar(
        route_handlers=[health, models, metrics, chat, transcriptions],
        exception_handlers={HTTPException: on_http_error},
        # Above vLLM's 25 MiB file check, so a slightly larger file gets vLLM's own 400.
        request_max_body_size=2 * cfg.max_upload_bytes + 1024 * 1024,
        openapi_config=None,
        logging_config=None,  # keep the process's log format (Litestar's would replace it)
        on_shutdown=[lambda: sim.stopping.set()],
    )


def with_simulated_header(app: Litestar, api_key: str | None = None) -> AsgiApp:
    """ASGI wrapper adding ``x-simulated: true`` to every response, errors included, and
    checking the bearer key on ``/v1/*`` the way ``vllm serve --api-key`` does."""
    expected = f"Bearer {api_key}".encode() if api_key else None

    async def wrapped(scope: dict[str, Any], receive: AsgiCallable, send: AsgiCallable) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)  # type: ignore[arg-type]
            return
        if expected is not None and scope["path"].startswith("/v1"):
            given = dict(scope["headers"]).get(b"authorization")
            if not given or not hmac.compare_digest(given, expected):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"x-simulated", b"true"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": b'{"error":"Unauthorized"}'})
                return

        async def send_marked(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"x-simulated", b"true")]
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, send_marked)  # type: ignore[arg-type]

    return wrapped


def create_app(config: SimulatorConfig) -> tuple[AsgiApp, Simulator]:
    sim = Simulator(config)
    return with_simulated_header(build_app(sim), config.api_key), sim
