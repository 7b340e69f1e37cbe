"""benchmarks/neuron_projection.py on the tiny shape at tp 1 and 2: the bytes it reads out of the exported decode step
equal the decoder's weight sizes (split over tp where sharded), its KV bytes the caches', and its all-reduces the
three per layer plus the embedding lookup's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
try:
    import neuron_projection
    import shapes
finally:
    sys.path.remove(str(ROOT / "benchmarks"))

CACHE_LEN, SRC_LEN, BATCH = 16, 8, 2


@pytest.fixture(scope="module")
def projected(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("projection")
    out = tmp / "projection.json"
    assert neuron_projection.main(["--shapes", "tiny", "--tp", "1,2", "--amp", "f32", "--batch-size", str(BATCH),
                                   "--cache-len", str(CACHE_LEN), "--src-len", str(SRC_LEN),
                                   "--export-dir", str(tmp / "hlo"), "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    return {r["tp"]: r for r in rows}


def replicated_weights(c: dict) -> int:
    """Weight elements every rank holds whole: the row-parallel biases (self and cross out_proj, fc2) and the layer
    norms of each layer, and the final norm."""
    h = c["d_model"]
    return c["decoder_layers"] * (3 * h + 3 * 2 * h) + 2 * h


def test_weight_bytes_are_the_weights_split_over_tp(projected):
    c = shapes.SHAPES["tiny"]
    total = shapes.decode_step_weights(c)                 # every weight one decode step reads, LM head included
    position_rows = BATCH * 1 * c["d_model"]              # the positions table: only the rows looked up
    assert projected[1]["weight_read_bytes"] == 4 * (total + position_rows)
    sharded = total - replicated_weights(c)
    assert projected[2]["weight_read_bytes"] == 4 * (sharded // 2 + replicated_weights(c) + position_rows)
    # the positions table is a weight parameter, but the step reads only a few of its rows
    assert projected[1]["weight_param_bytes"] > projected[1]["weight_read_bytes"]


@pytest.mark.parametrize("tp", [1, 2])
def test_kv_bytes_are_the_caches(projected, tp):
    c = shapes.SHAPES["tiny"]
    per_position = c["decoder_layers"] * 2 * BATCH * c["d_model"] // tp * 4    # K and V of every layer, f32
    r = projected[tp]
    assert r["self_kv_read_bytes"] == per_position * CACHE_LEN
    assert r["cross_kv_read_bytes"] == per_position * SRC_LEN
    assert r["kv_written_bytes"] == per_position                       # one new position per step
    assert r["step_read_bytes"] == (r["weight_read_bytes"] + r["self_kv_read_bytes"] + r["cross_kv_read_bytes"]
                                    + r["other_input_read_bytes"])
    for device, gbs in neuron_projection.HBM_GBS_PER_CORE.items():
        assert r["projected_ms_per_step"][device] == pytest.approx(r["step_read_bytes"] / (gbs * 1e9) * 1e3)


def test_collectives(projected):
    c = shapes.SHAPES["tiny"]
    assert projected[1]["collective_counts"] == {}
    counts, operand_bytes = projected[2]["collective_counts"], projected[2]["collective_operand_bytes"]
    all_reduces = 3 * c["decoder_layers"] + 1     # self-attention, cross-attention, fc2; the vocab-split embedding
    assert counts["all-reduce"] == all_reduces
    assert operand_bytes["all-reduce"] == all_reduces * BATCH * c["d_model"] * 4
    assert counts.get("all-gather", 0) >= 1       # the greedy head's argmax over the vocab shards


def test_from_an_existing_export(projected, capsys):
    manifest = json.loads((Path(projected[2]["export"]) / "manifest.json").read_text())
    assert [p["key"]["kind"] for p in manifest["programs"]] == ["decoder"]     # only the step was exported
    again = neuron_projection.main(["--from", projected[2]["export"]])
    assert again == 0
    assert "| 2 |" in capsys.readouterr().out
