"""benchmarks/corpus.py end to end on the tiny shape from an empty cache (but for the trained small model, taken
from the session's `trained_model` fixture, which has the tiny shape's training settings): the model is embedded and
converted, every engine translates the corpus text in and text out, and the records say what they should (no timing
thresholds). CTranslate2 engines join when ctranslate2 is installed, the continuous-batching engine when
nllb_neuronx.engine exists."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HAVE_CT2 = importlib.util.find_spec("ctranslate2") is not None
HAVE_ENGINE = (ROOT / "nllb_neuronx" / "engine.py").exists()   # this tree's package, not an installed one
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
FIELDS = ("engine", "lines", "batch_size", "lines_per_s", "tokens_per_s", "slot_occupancy", "latency_p50_s",
          "latency_p90_s", "identical_to_hf", "compared_to_hf", "stopped_on_eos")


def test_tiny_corpus_from_an_empty_cache(trained_model, tmp_path):
    trained = Path(trained_model[0])
    shutil.copytree(trained, tmp_path / "cache" / "toy-train" / trained.name)
    engines = ["hf", "nllb_neuronx-lockstep"] + (["nllb_neuronx", "nllb_neuronx-int8"] if HAVE_ENGINE else []) + \
        (["ct2-float32", "ct2-int8"] if HAVE_CT2 else [])
    out, lines = tmp_path / "records.json", 24
    extra = ["--plot", str(tmp_path / "plot.png")] if HAVE_MPL else []
    cmd = [sys.executable, str(ROOT / "benchmarks" / "corpus.py"), "--shape", "tiny", "--engines", ",".join(engines),
           "--lines", str(lines), "--batch-sizes", "4", "--threads", "1", "--median-tokens", "16",
           "--max-new-tokens", "100", "--cache-root", str(tmp_path / "cache"),
           "--json", str(out), *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = json.loads(out.read_text())

    assert [r["engine"] for r in records] == engines
    by_engine = {r["engine"]: r for r in records}
    for r in records:
        assert r["status"] == "ok", (r["engine"], r.get("note"))
        assert all(f in r for f in FIELDS), [f for f in FIELDS if f not in r]
        assert r["lines"] == lines and r["batch_size"] == 4 and r["thread_count"] == 1
        # the tiny model stops by itself on most lines (held-out test: >= 90 % unbatched; its longest lines are hard)
        assert r["stopped_on_eos"] >= 0.75 * lines, (r["engine"], r["stopped_on_eos"])
        for f in ("lines_per_s", "tokens_per_s", "latency_p50_s", "latency_p90_s"):
            assert r[f] > 0, (r["engine"], f)
        assert r["tokens_per_s"] > r["lines_per_s"]
    assert by_engine["hf"]["identical_to_hf"] is None and by_engine["hf"]["note"] is None   # every line, no subset
    lockstep = by_engine["nllb_neuronx-lockstep"]
    assert lockstep["identical_to_hf"] == lockstep["compared_to_hf"] == lines, lockstep["differs_from_hf"]
    assert 0 < lockstep["slot_occupancy"] < 1           # rows of different lengths share a batch
    assert 0 < lockstep["encoder_seconds"] < lockstep["wall_s"]
    if HAVE_ENGINE:
        engine = by_engine["nllb_neuronx"]
        assert engine["identical_to_hf"] == lines and 0 < engine["slot_occupancy"] <= 1
        int8 = by_engine["nllb_neuronx-int8"]      # against the f32 engine: free running, and teacher forced
        assert int8["compared_to_f32"] == lines and 0 < int8["token_agreement_f32"] <= 1
        assert int8["decisions_compared_f32"] == engine["generated_tokens"]     # every f32 token after the forced one
        assert int8["decision_agreement_f32"] >= 0.9
    if HAVE_CT2:
        assert by_engine["ct2-float32"]["compared_to_hf"] == lines
        assert by_engine["ct2-float32"]["identical_to_hf"] >= 0.9 * lines
    assert "| engine | batch |" in proc.stdout
    if HAVE_MPL:
        assert (tmp_path / "plot.png").stat().st_size > 0
    assert any((tmp_path / "cache").glob("toy-tiny-*/.complete"))


def test_rejects_lines_longer_than_the_model_was_trained_on():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "corpus.py"), "--shape", "tiny",
                           "--max-tokens", "500"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and "trained on lines up to" in proc.stderr
