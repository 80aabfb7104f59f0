"""The simulated GPU server of one model: a bounded batch, a queue, and latency.

Why a semaphore: vLLM runs up to ``max_num_seqs`` sequences in a batch and queues the rest;
a job service that wants to keep the GPU busy must keep at least that many requests in flight
without flooding it. ``capacity`` requests hold a slot at once; the others wait, and show up
in ``vllm:num_requests_waiting`` exactly as they would on the real server.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio

from service.simulator.metrics import LATENCY_BUCKETS, TTFT_BUCKETS, Exposition, Histogram


@dataclass
class Gpu:
    model: str
    capacity: int
    kv_cache_tokens: int
    running: int = 0
    waiting: int = 0
    kv_tokens_in_use: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: dict[str, int] = field(default_factory=dict)
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    queue: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))

    def __post_init__(self) -> None:
        self._slots = anyio.Semaphore(self.capacity)
        self._changed = anyio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_until(self, check: Callable[[Gpu], bool]) -> None:
        """Wait until ``check(self)`` holds, re-checking on every queue/batch change."""
        while not check(self):
            await self._changed.wait()

    @asynccontextmanager
    async def slot(self, kv_tokens: int) -> AsyncIterator[float]:
        """Wait for a batch slot; yields the arrival time (``time.monotonic()``)."""
        arrived = time.monotonic()
        self.waiting += 1
        self._notify()
        try:
            await self._slots.acquire()
        except BaseException:  # aborted while queued (the client left): out of the queue
            self.waiting -= 1
            self._notify()
            raise
        self.waiting -= 1
        self.queue.observe(time.monotonic() - arrived)
        self.running += 1
        self.kv_tokens_in_use += kv_tokens
        self._notify()
        try:
            yield arrived
        finally:
            self.running -= 1
            self.kv_tokens_in_use -= kv_tokens
            self._slots.release()
            self._notify()

    async def generate(
        self, *, arrived: float, first_token_s: float, rest_s: float, prompt: int, output: int
    ) -> None:
        """Spend the model's time: prefill (time to first token), then decoding."""
        await anyio.sleep(first_token_s)
        self.ttft.observe(time.monotonic() - arrived)
        await anyio.sleep(rest_s)
        self.e2e.observe(time.monotonic() - arrived)
        self.prompt_tokens += prompt
        self.generation_tokens += output

    def finish(self, reason: str) -> None:
        self.finished[reason] = self.finished.get(reason, 0) + 1

    def expose(self, out: Exposition) -> None:
        labels = {"engine": "0", "model_name": self.model}
        out.gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                  labels, self.running)  # fmt: skip
        out.gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                  labels, self.waiting)  # fmt: skip
        usage = min(1.0, self.kv_tokens_in_use / max(1, self.kv_cache_tokens))
        out.gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                  labels, usage)  # fmt: skip
        out.counter("vllm:prompt_tokens_total", "Number of prefill tokens processed.",
                    labels, self.prompt_tokens)  # fmt: skip
        out.counter("vllm:generation_tokens_total", "Number of generation tokens processed.",
                    labels, self.generation_tokens)  # fmt: skip
        for reason in sorted(self.finished):
            out.counter("vllm:request_success_total", "Count of successfully processed requests.",
                        {**labels, "finished_reason": reason}, self.finished[reason])  # fmt: skip
        out.histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in "
                      "seconds.", labels, self.ttft)  # fmt: skip
        out.histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in "
                      "seconds.", labels, self.e2e)  # fmt: skip
        out.histogram("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING "
                      "phase for request.", labels, self.queue)  # fmt: skip
