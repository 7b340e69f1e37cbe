"""Every program of a model's shape as files: what a Neuron user hands to `neuronx-cc compile --framework XLA` by
hand, and what goes into a bug report. No device is needed and no weight is read: programs are built from the shape.

    nllb-neuronx export-hlo --model DIR --out DIR [--tp 8 --batch-size 8 --amp bf16 ...]

writes, per program, `<program>.hlo.pb` (the HloModuleProto bytes the runtimes compile) and `<program>.hlo.txt`
(XLA's own HLO text of those bytes), and `manifest.json`: each program's parameters in order (name, per-rank shape,
dtype, kind: "weight" (a checkpoint tensor, sharded per rank as `sharding.py` says, or the positions table),
"input" (fed per call) or "rank" (s32, each rank's own number)), its outputs, which output updates which parameter in
place (input/output aliasing), and what `hlo.targets.neuron.check` found.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import hlo
from hlo.runtime import xla_hlo_text
from hlo.targets import neuron

from nllb_neuronx import quantize, sharding
from nllb_neuronx.device_weights import POSITIONS  # the sinusoidal positions table, uploaded with the weights
from nllb_neuronx.program_key import ProgramKey

MANIFEST = "manifest.json"
FORMAT = 1


@dataclass
class Export:
    """What `export_hlo` wrote: the program names, in order, and each program's violations (empty when clean)."""

    directory: Path
    programs: list[str] = field(default_factory=list)
    violations: dict[str, list[neuron.Violation]] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not any(self.violations.values())

    def report(self) -> str:
        return "\n".join(f"{name}: {v}" for name, found in self.violations.items() for v in found)


def export_hlo(model, directory, select: Callable[[ProgramKey], bool] | None = None) -> Export:
    """Build every program of `model`'s shape (`model.program_builders()`), or those whose key `select` accepts,
    check each for Neuron, and write the files into `directory` (created if missing; files of the same names are
    replaced)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    specs, quantization = sharding.all_weights(model.config), model.compile_config.quantization
    weights = {spec.name for spec in specs} | {POSITIONS} | \
        {quantize.scale_name(spec.name) for spec in specs if quantize.is_quantized(spec, quantization)}  # int8 scales
    tp = model.compile_config.tp_degree
    result, entries = Export(directory), []
    for key, build in model.program_builders().items():
        if select is not None and not select(key):
            continue
        module = build()
        if module.name in result.violations:
            raise ValueError(f"two programs are named {module.name!r}; program names must be unique")
        found = neuron.check(module, num_replicas=tp)
        (directory / f"{module.name}.hlo.pb").write_bytes(module.serialize())
        (directory / f"{module.name}.hlo.txt").write_text(xla_hlo_text(module))
        result.programs.append(module.name)
        result.violations[module.name] = found
        entries.append(_program_entry(module, {"kind": key.kind, **asdict(key)}, weights, found))
    c = model.compile_config
    manifest = {
        "format": FORMAT,
        "model": asdict(model.config),
        "compile": {"batch_size": c.batch_size, "tp_degree": tp, "n_positions": list(c.n_positions),
                    "encoder_buckets": list(c.encoder_buckets), "amp": c.amp, "max_top_k": c.max_top_k,
                    "quantization": asdict(c.quantization) if c.quantization is not None else None},
        "notes": "Shapes are per rank: compile each program for tp_degree replicas (num_replicas / --tp), feed rank r "
                 f"its own shard of each weight and the s32 number r as {hlo.RANK_PARAM!r}.",
        "neuron_check": "clean" if result.clean else "violations",
        "programs": entries,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return result


def _program_entry(module: hlo.Module, key: dict, weights: set[str], found: list) -> dict:
    updated_by = {param: out for out, param in module.aliases}
    params = [{"index": i, "name": name, "shape": list(shape.dims), "dtype": shape.dtype.name,
               "kind": "rank" if name == hlo.RANK_PARAM else "weight" if name in weights else "input",
               "updated_by_output": updated_by.get(name)}
              for i, (name, shape) in enumerate(module.params)]
    aliases = dict(module.aliases)
    outputs = [{"index": i, "name": name, "shape": list(shape.dims), "dtype": shape.dtype.name,
                "aliases_parameter": aliases.get(name)}
               for i, (name, shape) in enumerate(module.outputs)]
    return {"name": module.name, "key": key, "hlo_pb": f"{module.name}.hlo.pb", "hlo_txt": f"{module.name}.hlo.txt",
            "fingerprint": module.fingerprint(), "parameters": params, "outputs": outputs,
            "violations": [str(v) for v in found]}
