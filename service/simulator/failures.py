"""Injected failures: a seeded random rate, or a marker in the request for one exact case.

Why both: benchmarks and soak tests want "3% of requests get a 503" reproducibly (the seed
fixes the pass/fail sequence in arrival order), while an end-to-end test wants *this* job to
fail in *this* way, which a marker in its text does without reconfiguring the server:
``[simulate:503]`` always fails, ``[simulate:503x2]`` fails the first two times the same
request is seen and then succeeds. Kinds: 429, 503, 400, timeout, invalid_json, and ``abort``
(chat only: vLLM's answer when its engine drops a running request — HTTP 200, half the text,
``finish_reason: "abort"``).
"""

from __future__ import annotations

import hashlib
import random
import re

from service.simulator.config import SimulatorConfig

MARKER = re.compile(r"\[simulate:(429|503|400|timeout|invalid_json|abort)(?:x(\d+))?\]")


class FailurePlan:
    def __init__(self, config: SimulatorConfig) -> None:
        self._rate = config.fail_rate
        self._kinds = config.fail_kinds
        self._rng = random.Random(config.seed)
        self._seen: dict[str, int] = {}

    def decide(self, text: str) -> str | None:
        """The failure to inject for a request whose text is ``text``, or ``None``."""
        m = MARKER.search(text)
        if m is not None:
            kind, times = m.group(1), m.group(2)
            if times is None:
                return kind
            key = hashlib.sha256(text.encode()).hexdigest()
            seen = self._seen.get(key, 0)
            self._seen[key] = seen + 1
            return kind if seen < int(times) else None
        if self._rate > 0 and self._rng.random() < self._rate:
            return self._rng.choice(self._kinds)
        return None
