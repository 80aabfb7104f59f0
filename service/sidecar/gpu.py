"""GPU readings through NVML (``nvidia-ml-py``). Without an NVIDIA driver the library is not
found and we say so: a CPU-only host is a normal answer, not a failure."""

from __future__ import annotations

from typing import Any


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
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            util = pynvml.nvmlDeviceGetUtilizationRates(h)
            name = pynvml.nvmlDeviceGetName(h)
            devices.append(
                {
                    "index": i,
                    "name": name.decode() if isinstance(name, bytes) else str(name),
                    "utilization_pct": int(util.gpu),
                    "memory_used_bytes": int(mem.used),
                    "memory_total_bytes": int(mem.total),
                    "temperature_c": int(
                        pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)
                    ),
                    "power_w": round(pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0, 1),
                }
            )
        return {"available": True, "devices": devices}
    except pynvml.NVMLError as exc:
        return {"available": False, "reason": f"NVML error: {exc}", "devices": []}
    finally:
        pynvml.nvmlShutdown()
