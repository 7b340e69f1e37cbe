"""The machine the figures come from: CPU, cores, memory, measured memory bandwidth, and package versions."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

PACKAGES = ("nllb_neuronx", "jax", "jaxlib", "torch", "transformers", "ctranslate2", "numpy")


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    try:
        root = Path(__file__).resolve().parent.parent
        out["git_commit"] = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                                           capture_output=True, text=True, timeout=10).stdout.strip() or None
    except Exception:
        out["git_commit"] = None
    return out


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem_gib, "os": platform.platform()}


def measure_bandwidth(threads: int, megabytes: int = 1024, trials: int = 5) -> dict:
    """Best of `trials` over a `megabytes` float32 buffer split across `threads` threads (numpy releases the GIL in
    reductions and copies): read (max, a SIMD reduction that keeps up with memory) and copy bandwidth in GB/s (1e9
    bytes). The floor uses the read figure: a
    decode step reads its weights."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    n = megabytes * 2**20 // 4
    x = np.ones(n, dtype=np.float32)
    y = np.empty_like(x)
    bounds = np.linspace(0, n, threads + 1).astype(int)
    parts = list(zip(bounds[:-1], bounds[1:]))
    read, copy = 0.0, 0.0
    with ThreadPoolExecutor(threads) as pool:
        def timed(fn):
            t = time.perf_counter()
            list(pool.map(fn, parts))
            return time.perf_counter() - t

        timed(lambda p: np.copyto(y[p[0]:p[1]], x[p[0]:p[1]]))  # touch every page first
        for _ in range(trials):
            read = max(read, 4 * n / timed(lambda p: x[p[0]:p[1]].max()) / 1e9)
            copy = max(copy, 2 * 4 * n / timed(lambda p: np.copyto(y[p[0]:p[1]], x[p[0]:p[1]])) / 1e9)
    return {"read_gbs": read, "copy_gbs": copy, "buffer_mb": megabytes, "threads": threads,
            "method": f"numpy max (read) and copyto over a {megabytes} MiB float32 buffer in {threads} threads, "
                      f"best of {trials}"}
