"""Human-readable HLO text of a built `Module`, in XLA's own notation, for debugging and tests."""

from __future__ import annotations

import numpy as np

from hlo.builder import Computation, Module, Value
from hlo.types import Shape, TupleShape


def _shape(shape) -> str:
    if isinstance(shape, TupleShape):
        return "(" + ", ".join(_shape(s) for s in shape.elements) + ")"
    layout = "{" + ",".join(map(str, range(shape.rank - 1, -1, -1))) + "}" if shape.rank > 1 else ""
    return f"{shape.dtype.name}[{','.join(map(str, shape.dims))}]{layout}"


def _braces(values) -> str:
    return "{" + ",".join(map(str, values)) + "}"


def _literal(array: np.ndarray, shape: Shape) -> str:
    flat = array.reshape(-1)
    if flat.size > 8:
        return f"{{...{flat.size} values}}"
    text = ", ".join(str(v).lower() if shape.dtype.name == "pred" else str(v) for v in flat.tolist())
    return text if shape.rank == 0 else "{" + text + "}"


def _attributes(v: Value) -> list[str]:
    a, out = v.attrs, []
    if v.opcode == "dot":
        for key in ("lhs_batch_dimensions", "lhs_contracting_dimensions", "rhs_batch_dimensions",
                    "rhs_contracting_dimensions"):
            if a[key]:
                out.append(f"{key.replace('_dimensions', '_dims')}={_braces(a[key])}")
    elif v.opcode == "slice":
        out.append("slice={" + ", ".join(f"[{s}:{e}:{st}]" if st != 1 else f"[{s}:{e}]"
                                          for s, e, st in a["slice"]) + "}")
    elif v.opcode == "pad":
        out.append("padding=" + "x".join(f"{lo}_{hi}" + (f"_{i}" if i else "") for lo, hi, i in a["padding"]))
    elif v.opcode == "gather":
        out += [f"offset_dims={_braces(a['offset_dims'])}",
                f"collapsed_slice_dims={_braces(a['collapsed_slice_dims'])}",
                f"start_index_map={_braces(a['start_index_map'])}", f"index_vector_dim={a['index_vector_dim']}",
                f"slice_sizes={_braces(a['slice_sizes'])}"]
    elif v.opcode == "iota":
        out.append(f"iota_dimension={a['dimensions'][0]}")
    elif "dimensions" in a:
        out.append(f"dimensions={_braces(a['dimensions'])}")
    if "dynamic_slice_sizes" in a:
        out.append(f"dynamic_slice_sizes={_braces(a['dynamic_slice_sizes'])}")
    if "comparison_direction" in a:
        out.append(f"direction={a['comparison_direction']}")
    if "tuple_index" in a:
        out.append(f"index={a['tuple_index']}")
    if a.get("is_stable"):
        out.append("is_stable=true")
    if "custom_call_target" in a:
        out.append(f'custom_call_target="{a["custom_call_target"]}"')
        if a["backend_config"]:
            out.append(f'backend_config="{a["backend_config"]}"')
    if "replica_groups" in a:
        out.append("replica_groups={" + ",".join(_braces(g) for g in a["replica_groups"]) + "}")
    if v.called:
        out.append(f"to_apply={v.called[0].name}")
    return out


def instruction_text(v: Value, root: bool = False) -> str:
    if v.opcode == "parameter":
        args = str(v.attrs["parameter_number"])
    elif v.opcode == "constant":
        args = _literal(v.attrs["literal"], v.shape)
    else:
        args = ", ".join(f"{_shape(o.shape)} {o.name}" for o in v.operands)
    attrs = "".join(", " + a for a in _attributes(v))
    return f"  {'ROOT ' if root else ''}{v.name} = {_shape(v.shape)} {v.opcode}({args}){attrs}"


def computation_text(comp: Computation, entry: bool = False) -> str:
    params = ", ".join(f"{p.name}: {_shape(p.shape)}" for p in comp.parameters)
    lines = [f"{'ENTRY ' if entry else ''}{comp.name} ({params}) -> {_shape(comp.root.shape)} {{"]
    lines += [instruction_text(v, v is comp.root) for v in comp.instructions]
    return "\n".join(lines + ["}"])


def module_to_text(module: Module) -> str:
    header = f"HloModule {module.name}"
    if module.aliases:
        outputs, params = module.output_names, module.params.names
        entries = ", ".join(f"{{{outputs.index(o)}}}: ({params.index(p)}, {{}}, must-alias)" for o, p in module.aliases)
        header += f", input_output_alias={{ {entries} }}"
    body = [computation_text(c, c is module.entry) for c in module.computations]
    return "\n\n".join([header] + body) + "\n"
