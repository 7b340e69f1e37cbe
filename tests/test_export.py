"""`nllb-neuronx export-hlo`: every program as HloModuleProto bytes XLA parses, XLA's HLO text, and a manifest of
each program's parameters; the Neuron check's violations make it exit 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from jax._src.lib import xla_client

import hlo
from nllb_neuronx import NLLBForSampling, ProgramKey, cli, sharding

ROOT = Path(__file__).resolve().parents[1]
SHAPE = ["--tp", "2", "--batch-size", "2", "--n-positions", "8", "--encoder-buckets", "8", "--max-top-k", "16"]


def export_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "nllb_neuronx.cli", "export-hlo", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600)


def test_export_writes_every_program_and_a_manifest(tiny_checkpoint, tmp_path):
    path, hf = tiny_checkpoint
    done = export_cli("--model", path, "--out", str(tmp_path), *SHAPE)
    assert done.returncode == 0, done.stderr
    assert "Neuron check: clean" in done.stdout
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["compile"]["tp_degree"] == 2 and manifest["compile"]["max_top_k"] == 16
    assert manifest["neuron_check"] == "clean"
    programs = {p["name"]: p for p in manifest["programs"]}
    assert set(programs) == {"nllb_encoder_b2_s8_tp2", "nllb_reorder_b2_s8_t8_tp2"} | {
        f"nllb_decoder_{head}_b2_p{p}_t8_s8_tp2" for head in ("logits", "greedy", "sample_k16") for p in (1, 2)} | {
        "nllb_decoder_beam_k4_b2_p1_t8_s8_tp2", "nllb_slot_encoder_b2_k1_s8_of8_tp2",
        "nllb_slot_encoder_b2_k2_s8_of8_tp2", "nllb_slot_copy_b2_of8_tp2", "nllb_slot_reorder_b2_t8_tp2"}
    assert programs["nllb_slot_encoder_b2_k2_s8_of8_tp2"]["key"] == {"kind": "slot_encoder", "source_len": 8, "rows": 2,
                                                                      "stored_len": 8, "quantized": False}
    weights = {s.name for s in sharding.all_weights(NLLBForSampling.from_pretrained(path).config)}
    for name, entry in programs.items():
        assert entry["violations"] == []
        data = (tmp_path / entry["hlo_pb"]).read_bytes()
        shape = xla_client.XlaComputation(data).program_shape()   # XLA parses the proto
        assert [str(s).split("{")[0] for s in shape.parameter_shapes()] == [
            f"{p['dtype']}[{','.join(map(str, p['shape']))}]" for p in entry["parameters"]]
        assert [p["index"] for p in entry["parameters"]] == list(range(len(entry["parameters"])))
        text = (tmp_path / entry["hlo_txt"]).read_text()
        assert text.startswith(f"HloModule {name}") and "ENTRY" in text
        kinds = {p["name"]: p["kind"] for p in entry["parameters"]}
        assert {n for n, k in kinds.items() if k == "weight"} <= weights | {"positions"}
        moves_only = "reorder" in name or "slot_copy" in name                 # no weights read: no rank input
        assert (kinds.get(hlo.RANK_PARAM) == "rank") == (not moves_only)
    decoder = programs["nllb_decoder_sample_k16_b2_p1_t8_s8_tp2"]
    inputs = [p["name"] for p in decoder["parameters"] if p["kind"] == "input"]
    assert inputs[:4] == ["input_ids", "start", "active", "encoder_attention_mask"] and "uniform" in inputs
    cache = next(p for p in decoder["parameters"] if p["name"] == "cache_k.0")
    assert cache["updated_by_output"] == "cache_k.0"
    assert "input_output_alias" in (tmp_path / decoder["hlo_txt"]).read_text()
    caches = [f"cache_{kv}.{i}" for kv in "kv" for i in range(hf.config.decoder_layers)]
    assert {o["name"]: o["aliases_parameter"] for o in decoder["outputs"]} == {
        **{name: name for name in caches}, "next_token": None}
    shared = next(p for p in decoder["parameters"] if p["name"] == "shared.weight")
    assert shared["kind"] == "weight" and shared["shape"] == [hf.config.vocab_size // 2, hf.config.d_model]


def test_export_bad_shape_exits_2(tiny_checkpoint, tmp_path):
    done = export_cli("--model", tiny_checkpoint[0], "--out", str(tmp_path), "--tp", "3")
    assert done.returncode == 2 and "tp_degree must be one of" in done.stderr


def test_violations_exit_1_and_are_listed(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """A program that breaks a rule (replica-id here) is still written, listed on stderr, and the exit code is 1."""
    builders = NLLBForSampling.program_builders

    @dataclass(frozen=True)
    class BadKey(ProgramKey):
        kind: ClassVar[str] = "bad"

    def with_a_bad_program(self):
        spec = hlo.ParamSpec(x=hlo.f32[2])
        bad = hlo.build("uses_replica_id", spec, lambda p: {"y": p.x + hlo.convert(hlo.replica_id(), hlo.f32)})
        return {**builders(self), BadKey(): lambda: bad}

    monkeypatch.setattr(NLLBForSampling, "program_builders", with_a_bad_program)
    code = cli.main(["export-hlo", "--model", tiny_checkpoint[0], "--out", str(tmp_path), "--tp", "1",
                     "--batch-size", "1", "--n-positions", "8", "--encoder-buckets", "8"])
    err = capsys.readouterr().err
    assert code == 1 and "uses_replica_id" in err and "[replica-id]" in err and err.count("\n[") == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["neuron_check"] == "violations"
    bad = next(p for p in manifest["programs"] if p["name"] == "uses_replica_id")
    assert len(bad["violations"]) == 1 and (tmp_path / "uses_replica_id.hlo.pb").exists()
    assert np.all([p["violations"] == [] for p in manifest["programs"] if p["name"] != "uses_replica_id"])
