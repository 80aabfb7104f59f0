"""A local simulated OpenAI-compatible inference server (vLLM look-alike) for dev, tests, bench.

It is not a model: answers are synthetic. What it does model is what the job service must
cope with: a GPU that runs at most ``capacity`` requests at once and queues the rest,
latency that grows with output length (or audio length), vLLM's response shapes, refusals and
metrics, and injected failures. Every response carries ``x-simulated: true``.
"""

from service.simulator.config import SimulatorConfig
from service.simulator.server import run_simulator, serve_simulator

__all__ = ["SimulatorConfig", "run_simulator", "serve_simulator"]
