"""GPU readings through NVML (``nvidia-ml-py``). Without an NVIDIA driver the library is not
found and we say so: a CPU-only host is a normal answer, not a failure.

A reading a board does not support (power on some boards, utilisation under MIG) is None for
that field alone: one NOT_SUPPORTED must not hide every GPU of the host."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _or_none(read: Callable[[], Any], error: type[Exception]) -> Any:
    try:
        return read()
    except error:
        return None


def _device(pynvml: Any, i: int) -> dict[str, Any]:
    h = pynvml.nvmlDeviceGetHandleByIndex(i)
    err = pynvml.NVMLError
    name = _or_none(lambda: pynvml.nvmlDeviceGetName(h), err)
    mem = _or_none(lambda: pynvml.nvmlDeviceGetMemoryInfo(h), err)
    util = _or_none(lambda: pynvml.nvmlDeviceGetUtilizationRates(h), err)
    temp = _or_none(lambda: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU), err)
    power = _or_none(lambda: pynvml.nvmlDeviceGetPowerUsage(h), err)
    return {
        "index": i,
        "name": name.decode() if isinstance(name, bytes) else (str(name) if name else None),
        "utilization_pct": int(util.gpu) if util is not None else None,
        "memory_used_bytes": int(mem.used) if mem is not None else None,
        "memory_total_bytes": int(mem.total) if mem is not None else None,
        "temperature_c": int(temp) if temp is not None else None,
        "power_w": round(power / 1000.0, 1) if power is not None else None,
    }


def read_gpus() -> dict[str, Any]:
    try:
        import pynvml
    except ImportError:
        return {"available": False, "reason": "nvidia-ml-py is not installed", "devices": []}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return {"available": False, "reason": f"NVML unavailable: {exc}", "devices": []}
    try:
        count = pynvml.nvmlDeviceGetCount()
        return {"available": True, "devices": [_device(pynvml, i) for i in range(count)]}
    except pynvml.NVMLError as exc:  # the count or a handle: nothing per device to show
        return {"available": False, "reason": f"NVML error: {exc}", "devices": []}
    finally:
        pynvml.nvmlShutdown()
