"""Does neuronx-cc take this module? A check of a built `hlo.Module` against what AWS documents for the Neuron
compiler, so that every backend gets HLO a NeuronCore can run and the CPU tests test that same HLO.

Each rule comes from the Neuron SDK documentation (aws-neuron/aws-neuron-sdk: the compiler's supported-operator table
and error codes, the data-types page) or from what transformers-neuronx and NxD(I) emit:

- `replica-id`: no `replica-id`/`partition-id` (transformers-neuronx marks ReplicaId unsupported; it and NxD give each
  rank its number as a per-rank parameter: `hlo.rank()`).
- `variadic-reduce`: a reduce of one array only ("Reduce: only Min/Max/Add/Mul"; the Neuron JAX docs list variadic
  reductions as unsupported).
- `sort-size`: no sort of more than 16,384 elements along its dimension (Neuron rewrites sort+slice into TopK, which
  rejects k > 16,384: NCC_EVRF014, aws-neuron-sdk#1339).
- `64-bit`: no s64/u64/f64 anywhere (NeuronCore-v2 has no 64-bit types; int64 is downcast, and planned to be an error).
- `control-flow`: no while or conditional (each step is one program run from the host, as transformers-neuronx does).
- `integer-dot`: no dot of integers (no integer datapath: NCC_EVRF035).
- `collective-groups`: every collective names its replica groups, explicitly and non-empty (transformers-neuronx always
  writes `[list(range(tp))]`); collective-permute its source-target pairs.
- `custom-call`: custom-call targets only from the list neuronx-cc recognizes (NCC_EHCA005).

Only what the documentation states is checked: a clean report is no promise that neuronx-cc compiles the module.
"""

from __future__ import annotations

from dataclasses import dataclass

from hlo.builder import Module, Value
from hlo.types import Shape, TupleShape

SORT_LIMIT = 16384  # largest sort dimension (the TopK k limit, NCC_EVRF014)
SIXTY_FOUR_BIT = frozenset({"s64", "u64", "f64"})
COLLECTIVES = frozenset({"all-reduce", "all-reduce-start", "all-gather", "all-gather-start", "reduce-scatter",
                         "all-to-all", "collective-permute", "collective-permute-start"})
# The custom-call targets neuronx-cc recognizes (aws-neuron-sdk, compiler/error-codes/EHCA005.rst).
CUSTOM_CALL_TARGETS = frozenset({
    "AwsNeuronErf", "AwsNeuronGelu", "AwsNeuronGeluApprxTanh", "AwsNeuronGeluBackward", "AwsNeuronSilu",
    "AwsNeuronSiluBackward", "AwsNeuronRmsNorm", "AwsNeuronSoftmax", "AwsNeuronSoftmaxBackward",
    "AwsNeuronCollectiveMatmul", "AwsNeuronIntMatmult", "AwsNeuronArgMax", "AwsNeuronArgMin", "AwsNeuronTopK",
    "AwsNeuronDropoutMaskV1", "AwsNeuronCustomNativeKernel", "AwsNeuronCustomOp", "AwsNeuronDevicePrint",
    "ResizeNearest", "ResizeBilinear", "ResizeNearestGrad", "AwsNeuronLNCShardingConstraint",
    "AwsNeuronTransferWithStaticRing", "AwsNeuronModuleMarkerStart-Forward", "AwsNeuronModuleMarkerStart-Backward",
    "AwsNeuronModuleMarkerEnd-Forward", "AwsNeuronModuleMarkerEnd-Backward", "NeuronBoundaryMarker-Start",
    "NeuronBoundaryMarker-End",
})
RULES = ("replica-id", "variadic-reduce", "sort-size", "64-bit", "control-flow", "integer-dot", "collective-groups",
         "custom-call")


@dataclass(frozen=True)
class Violation:
    """One instruction that breaks one rule."""

    rule: str            # one of RULES
    computation: str
    instruction: str
    opcode: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.computation} / {self.instruction} ({self.opcode}): {self.detail}"


def check(module: Module, num_replicas: int | None = None) -> list[Violation]:
    """Every violation in `module`, its called computations included, in instruction order. With `num_replicas`,
    replica ids in collectives must also lie in [0, num_replicas)."""
    found = []
    for comp in module.computations:
        for v in comp.instructions:
            found += [Violation(rule, comp.name, v.name, v.opcode, detail)
                      for rule, detail in _instruction_violations(v, num_replicas)]
    return found


def report(violations: list[Violation]) -> str:
    """The violations one per line, each with the rule it breaks."""
    return "\n".join(str(v) for v in violations)


def _instruction_violations(v: Value, num_replicas: int | None):
    op, attrs = v.opcode, v.attrs
    wide = sorted(_dtypes(v.shape) & SIXTY_FOUR_BIT)
    if wide:
        yield "64-bit", f"result {v.shape} has {', '.join(wide)}: NeuronCore-v2 has no 64-bit types"
    if op in ("replica-id", "partition-id"):
        yield "replica-id", "neuronx-cc does not take it; feed the rank as a parameter (hlo.rank())"
    elif op == "reduce" and (isinstance(v.shape, TupleShape) or len(v.operands) > 2):
        yield "variadic-reduce", f"reduces {len(v.operands) // 2} arrays at once; reduce one array at a time"
    elif op == "sort":
        size = v.operands[0].dims[attrs["dimensions"][0]]
        if size > SORT_LIMIT:
            yield "sort-size", f"sorts {size} elements along its dimension, more than {SORT_LIMIT}: sort in tiles"
    elif op in ("while", "conditional"):
        yield "control-flow", f"{op} is not supported; unroll it or run each step from the host"
    elif op == "dot" and any(not o.dtype.is_float for o in v.operands):
        kinds = ", ".join(str(o.dtype) for o in v.operands)
        yield "integer-dot", f"dot of {kinds}: no integer datapath; convert the operands to a float type"
    elif op in COLLECTIVES:
        problem = _groups_problem(op, attrs, num_replicas)
        if problem:
            yield "collective-groups", problem
    elif op == "custom-call" and attrs.get("custom_call_target") not in CUSTOM_CALL_TARGETS:
        yield "custom-call", f"target {attrs.get('custom_call_target')!r} is not one neuronx-cc recognizes"


def _dtypes(shape) -> set[str]:
    if isinstance(shape, TupleShape):
        return set().union(*(_dtypes(s) for s in shape.elements)) if shape.elements else set()
    return {shape.dtype.name} if isinstance(shape, Shape) else set()


def _groups_problem(op: str, attrs: dict, num_replicas: int | None) -> str | None:
    if op.startswith("collective-permute"):
        pairs = attrs.get("source_target_pairs") or []
        if not pairs:
            return "no source_target_pairs: name them explicitly"
        ids = [i for pair in pairs for i in pair]
    else:
        groups = attrs.get("replica_groups") or []
        if not groups or any(not g for g in groups):
            return f"replica_groups {groups or '{}'} left to the compiler: name them, e.g. [[0, ..., tp-1]]"
        ids = [i for g in groups for i in g]
    if num_replicas is not None and any(not 0 <= i < num_replicas for i in ids):
        return f"replica ids {sorted(set(ids))} outside [0, {num_replicas})"
    return None
