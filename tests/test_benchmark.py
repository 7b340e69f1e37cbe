"""benchmarks/generate.py end to end on the tiny shape: the JSON records, their fields, positive figures (no timing
thresholds). CTranslate2 engines join when ctranslate2 is installed, the plot when matplotlib is."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "generate.py"
FIELDS = ("engine", "backend", "shape", "batch_size", "num_beams", "src_len", "new_tokens", "tp_degree", "amp",
          "encoder_ms", "ms_per_token_p50", "ms_per_token_p90", "tokens_per_s", "compile_s", "peak_rss_mb")
HAVE_CT2 = importlib.util.find_spec("ctranslate2") is not None
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    """The tiny random checkpoint and its CT2 conversions, made here with the script's own functions (this process
    has torch and transformers loaded already; the script would start a process to make them)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import shapes
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    root = tmp_path_factory.mktemp("bench-cache")
    checkpoint = shapes.make_checkpoint("tiny", root)["path"]
    assert shapes.checkpoint_ready(Path(checkpoint))
    if HAVE_CT2:
        made = shapes.convert_ct2_all(Path(checkpoint), ["float32", "int8"], root)
        assert all("error" not in m for m in made.values()), made
    return root


def run_bench(cache_root, tmp_path, *args) -> tuple[list[dict], str]:
    out = tmp_path / "tmp.json"
    cmd = [sys.executable, str(SCRIPT), "--repeats", "1", "--warmup", "0", "--json", str(out),
           "--cache-root", str(cache_root), "--bandwidth-mb", "128", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_tiny_end_to_end(cache_root, tmp_path):
    engines = ["nllb_neuronx", "hf"] + (["ct2-float32", "ct2-int8"] if HAVE_CT2 else [])
    extra = ["--plot", str(tmp_path / "plot.png")] if HAVE_MPL else []
    records, stdout = run_bench(cache_root, tmp_path, "--shape", "tiny", "--engines", ",".join(engines),
                                "--batch-sizes", "1,2", "--new-tokens", "4", *extra)

    assert [(r["engine"], r["batch_size"]) for r in records] == [(e, b) for b in (1, 2) for e in engines]
    for r in records:
        assert all(f in r for f in FIELDS), [f for f in FIELDS if f not in r]
        assert r["status"] == "ok", r.get("note")
        assert (r["shape"], r["num_beams"], r["src_len"], r["new_tokens"]) == ("tiny", 1, 32, 4)
        for f in ("encoder_ms", "ms_per_token_p50", "ms_per_token_p90", "tokens_per_s", "peak_rss_mb", "floor_ms",
                  "p50_over_floor", "mem_read_gbs", "load_s"):
            assert isinstance(r[f], (int, float)) and r[f] > 0, (r["engine"], f, r[f])
        assert r["decode_steps_timed"] == 4 - 2      # one run; the forced token and the prefix step are not timed
        assert r["first_step_ms"] > 0
        assert r["timing"] and len(r["output_ids"]) == 4
        if r["engine"] == "nllb_neuronx":
            assert r["backend"] == "xla-cpu" and r["tp_degree"] == 1 and r["amp"] == "f32"
            # encoder, prefix step and single-token step: compiled cold, then every one loaded again from the store
            assert r["programs_compiled"] == 3 and r["programs_loaded"] == 3
            assert r["compile_s"] > 0 and r["compile_cached_s"] > 0
            assert r["compile_cache_hit"] and r["sample_matches_loop"]
            assert r["matches_hf_row0"]          # greedy f32 is token-exact with HF
        else:
            assert r["compile_s"] is None
    assert "| engine |" in stdout and "ms/token p50" in stdout
    if HAVE_MPL:
        assert (tmp_path / "plot.png").stat().st_size > 0


def test_model_dir_and_beams(cache_root, tmp_path):
    """--model DIR instead of --shape, and beam search: nllb_neuronx runs it on the slot engine's device beam head
    (no encode-only call there, as in CT2's beams: no encoder_ms)."""
    records, _ = run_bench(cache_root, tmp_path, "--model", str(cache_root / "tiny"), "--engines", "nllb_neuronx,hf",
                           "--batch-sizes", "2", "--beams", "3", "--new-tokens", "5")
    assert [r["engine"] for r in records] == ["nllb_neuronx", "hf"]
    for r in records:
        assert all(f in r for f in FIELDS), [f for f in FIELDS if f not in r]
        assert r["status"] == "ok", r.get("note")
        assert (r["shape"], r["num_beams"], r["batch_size"]) == ("tiny", 3, 2)
        for f in ("ms_per_token_p50", "tokens_per_s", "peak_rss_mb") + (("encoder_ms",) if r["engine"] == "hf" else ()):
            assert r[f] > 0, (r["engine"], f, r[f])
        assert len(r["output_ids"]) == 5
    neuron = records[0]
    assert "device beam head" in neuron["timing"] and neuron["compile_cache_hit"]
    assert neuron["matches_hf_row0"]          # beam search in f32 is token-exact with HF's


@pytest.mark.skipif(not HAVE_CT2, reason="ctranslate2 is not installed")
def test_ct2_engine_from_an_empty_cache(tmp_path):
    """A fresh machine: no random checkpoint and no CT2 conversion yet; the harness makes both, then runs."""
    cache = tmp_path / "empty-cache"
    records, _ = run_bench(cache, tmp_path, "--shape", "tiny", "--engines", "ct2-int8", "--batch-sizes", "1",
                           "--new-tokens", "3", "--src-len", "8")
    assert [(r["engine"], r["status"]) for r in records] == [("ct2-int8", "ok")], records
    assert records[0]["convert_s"] > 0 and len(records[0]["output_ids"]) == 3


@pytest.mark.parametrize("argv", [["--engines", "nope"], ["--new-tokens", "2"]])
def test_bad_arguments(argv):
    proc = subprocess.run([sys.executable, str(SCRIPT), *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "error" in proc.stderr
