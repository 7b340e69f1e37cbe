"""Compiled artifacts: every program of a model's shape, stored with a manifest, reloaded without compiling.

    model.save("artifacts/")                                       # compiles whatever is missing, writes the store
    NLLBForSampling.from_pretrained(path, ..., compiled_dir="artifacts/").to_neuron()   # compiles nothing

The store is `manifest.json` plus `programs/` (the runtime's store, `Runtime.use_store`: serialized PJRT executables on
XLA, or the HLO of a program PJRT cannot serialize, compiled on load; NEFFs on Neuron), keyed by
`Runtime.artifact_key` (the hash of each program's HLO and compile setting). Weights stay outside: the same artifacts
serve every checkpoint of the same shape. Files are written to a temporary name and renamed, so two processes
compiling into one directory leave a valid store.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

MANIFEST = "manifest.json"
PROGRAMS = "programs"
FORMAT = 1


def manifest(model) -> dict:
    """What the artifacts were compiled for: must equal the loading model's, field for field. The versions are the
    runtime's (jax/jaxlib on XLA, neuronx-cc on the ahead-of-time Neuron route, which imports no jax)."""
    from nllb_neuronx import __version__

    c = model.compile_config
    return {
        "format": FORMAT,
        "model": asdict(model.config),
        "compile": {"batch_size": c.batch_size, "tp_degree": c.tp_degree, "n_positions": list(c.n_positions),
                    "encoder_buckets": list(c.encoder_buckets), "amp": c.amp,
                    "quantization": asdict(c.quantization) if c.quantization is not None else None},
        "backend": model.runtime.backend if model.runtime is not None else c.backend,
        "versions": {"nllb_neuronx": __version__, **(model.runtime.versions() if model.runtime is not None else {})},
    }


def programs_dir(root: str | os.PathLike) -> str:
    return str(Path(root) / PROGRAMS)


def write_manifest(root: str | os.PathLike, data: dict, programs: dict[str, str]) -> None:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".manifest.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump({**data, "programs": programs}, f, indent=2, sort_keys=True)
    os.replace(tmp, root / MANIFEST)


def write_manifest_if_missing(root: str | os.PathLike, data: dict) -> None:
    """A new store gets its manifest at once, so a later model with other settings is told, not mixed in."""
    if not (Path(root) / MANIFEST).exists():
        write_manifest(root, data, {})


def check_manifest(root: str | os.PathLike, expected: dict) -> None:
    """A clear error if the artifacts in `root` were compiled for something else, naming every difference."""
    path = Path(root) / MANIFEST
    if not path.exists():
        return  # an empty store: it fills as programs compile
    stored = json.loads(path.read_text())
    differences = []
    for section, want in expected.items():
        have = stored.get(section)
        if isinstance(want, dict) and isinstance(have, dict):
            differences += [f"{section}.{k}: artifacts {have.get(k)!r}, this model {v!r}"
                            for k, v in want.items() if have.get(k) != v]
        elif have != want:
            differences.append(f"{section}: artifacts {have!r}, this model {want!r}")
    if differences:
        raise ValueError(f"compiled artifacts in {root} do not match this model: " + "; ".join(differences)
                         + ". Compile new artifacts (nllb-neuronx compile) or load with matching settings.")
