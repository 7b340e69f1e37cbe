"""nllb_neuronx.ray on a local Ray cluster with a fake `neuron_cores` resource: row alignment, per-row targets,
`translate --ray` equal to the plain CLI, and an actor killed mid-job. One cluster for the module (Ray starts in
about 10 s); the programs are compiled once here and the actors load them from disk."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from nllb_neuronx.ray import TranslateBatch, translate_dataset, translate_files  # noqa: E402
from nllb_neuronx.translator import Translator  # noqa: E402

SHAPE = dict(batch_size=4, n_positions=[16], encoder_buckets=[32])  # few programs to compile
MAX_NEW = 8
TEXTS = ["Hello world.", "", "How are you?", "The cat sat on the mat.", "Bonjour le monde.", "", "Wie geht es dir?",
         "Translation at scale is fun!", "Machines translate many languages every day.", "Hello.", "", "Fun cat?"]
TARGETS = ["fra_Latn", "deu_Latn", "spa_Latn", "fra_Latn", "deu_Latn", "spa_Latn"] * 2


@pytest.fixture(scope="module")
def model_kwargs(nllb_checkpoint, tmp_path_factory):
    """Every program compiled once into a store that the actors load (they compile nothing)."""
    store = str(tmp_path_factory.mktemp("ray_programs"))
    translator = Translator.from_pretrained(nllb_checkpoint[0], compiled_dir=store, **SHAPE)
    translator.model.save(store)
    return dict(SHAPE, compiled_dir=store)


@pytest.fixture(scope="module")
def translator(nllb_checkpoint, model_kwargs):
    return Translator.from_pretrained(nllb_checkpoint[0], **model_kwargs)


@pytest.fixture(scope="module")
def cluster():
    """A local cluster, 2 CPUs and 2 fake NeuronCores; yields its address for other drivers (the CLI)."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=2, resources={"neuron_cores": 2}, include_dashboard=False, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def test_translate_dataset_keeps_rows_and_per_row_targets(cluster, nllb_checkpoint, model_kwargs, translator):
    long_line = "Hello world. " * 20
    rows = [{"text": t, "tgt_lang": g} for t, g in zip(TEXTS, TARGETS)]
    rows[3]["tgt_lang"] = None                                   # the default target
    rows += [{"text": long_line, "tgt_lang": "fra_Latn"}, {"text": "Hi.", "tgt_lang": "fra_Latm"}]
    ds = ray.data.from_items(rows, override_num_blocks=4)    # no id column: translate_dataset numbers the rows
    out = translate_dataset(ds, nllb_checkpoint[0], "eng_Latn", "deu_Latn", tgt_lang_column="tgt_lang", replicas=2,
                            batch_size=3, model_kwargs=model_kwargs, translate_kwargs=dict(max_new_tokens=MAX_NEW))
    got = out.take_all()
    assert [r["id"] for r in got] == list(range(len(rows)))
    assert [r["text"] for r in got] == [r["text"] for r in rows]
    targets = [r["tgt_lang"] or "deu_Latn" for r in rows[: len(TEXTS)]]
    expected = translator.translate(TEXTS, "eng_Latn", targets, max_new_tokens=MAX_NEW)
    assert [r["translation"] for r in got[: len(TEXTS)]] == expected
    assert [r["error"] for r in got[: len(TEXTS)]] == [""] * len(TEXTS)
    assert [r["translation"] for r in got if not r["text"]] == ["", "", ""]   # empty rows stay empty rows
    too_long, unknown = got[-2:]
    assert too_long["translation"] == "" and "more than the largest encoder bucket (32)" in too_long["error"]
    assert unknown["translation"] == "" and "unknown language code 'fra_Latm'" in unknown["error"]


def _cli(args, address=None):
    env = dict(os.environ, PYTHONPATH=os.getcwd(), RAY_AUTH_MODE="disabled")
    return subprocess.run([sys.executable, "-m", "nllb_neuronx.cli", "translate", *args], capture_output=True,
                          env=env, timeout=300)


def test_cli_ray_equals_plain_cli_over_a_directory(cluster, nllb_checkpoint, model_kwargs, translator, tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    (inputs / "sub").mkdir(parents=True)
    (inputs / "a.txt").write_text("\n".join(TEXTS) + "\n")
    (inputs / "sub" / "b.txt").write_text("\n\nHow are you?\n")
    common = ["--model", nllb_checkpoint[0], "--src", "eng_Latn", "--tgt", "fra_Latn", "--batch-size", "4",
              "--n-positions", "16", "--encoder-buckets", "32", "--compiled-dir", model_kwargs["compiled_dir"],
              "--max-new-tokens", str(MAX_NEW)]
    plain = _cli(common + ["-i", str(inputs / "a.txt")])
    assert plain.returncode == 0, plain.stderr.decode()[-2000:]
    on_ray = _cli(common + ["-i", str(inputs), "-o", str(outputs), "--ray", "--replicas", "2",
                            "--ray-address", cluster])
    assert on_ray.returncode == 0, on_ray.stderr.decode()[-2000:]
    assert (outputs / "a.txt").read_bytes() == plain.stdout                   # byte for byte, empty lines kept
    assert (outputs / "sub" / "b.txt").read_text() == "\n\n" + translator.translate(
        ["How are you?"], "eng_Latn", "fra_Latn", max_new_tokens=MAX_NEW)[0] + "\n"
    bad = _cli(common + ["-i", str(inputs), "--ray", "--ray-address", cluster])
    assert bad.returncode == 2 and b"is a directory: give an output directory with -o DIR" in bad.stderr


def test_jsonl_rows_with_their_own_targets_then_a_line_too_long(cluster, nllb_checkpoint, model_kwargs, translator, tmp_path):
    rows = [{"text": "Hello world.", "tgt_lang": "deu_Latn", "n": 1}, {"text": "How are you?"}, None,
            {"text": "", "tgt_lang": "spa_Latn"}, {"text": "Fun cat?", "tgt_lang": "spa_Latn"}]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    too_long = {"text": "Hello world. " * 20}                        # last: the lines before it are written
    src.write_text("".join((json.dumps(r) if r else "") + "\n" for r in rows + [too_long]))
    with pytest.raises(ValueError, match=r"in.jsonl: line 6 has \d+ tokens, more than the largest encoder bucket"):
        translate_files(str(src), str(dst), nllb_checkpoint[0], "eng_Latn", "fra_Latn", input_format="jsonl",
                        model_kwargs=model_kwargs, translate_kwargs=dict(max_new_tokens=MAX_NEW))
    texts = [r["text"] if r else "" for r in rows]
    expected = translator.translate(texts, "eng_Latn", [(r or {}).get("tgt_lang", "fra_Latn") for r in rows],
                                    max_new_tokens=MAX_NEW)
    lines = dst.read_text().split("\n")[:-1]
    assert len(lines) == len(rows) and lines[2] == ""
    assert [json.loads(line) for line in lines if line] == [
        {**r, "translation": t} for r, t in zip(rows, expected) if r]
    src.write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    with pytest.raises(ValueError, match=r'in.jsonl: line 2 must be a JSON object with a string "text"'):
        translate_files(str(src), str(dst), nllb_checkpoint[0], "eng_Latn", "fra_Latn", input_format="jsonl")


def test_an_actor_killed_mid_job_is_restarted_and_no_line_is_lost(cluster, nllb_checkpoint, model_kwargs,
                                                                  translator, tmp_path):
    record = str(tmp_path / "batches")

    class RecordingTranslateBatch(TranslateBatch):  # defined here: Ray ships it to the actors by value
        def __call__(self, batch):
            out = super().__call__(batch)
            with open(record, "a") as f:
                f.write(f"{os.getpid()} {os.environ.get('NEURON_RT_VISIBLE_CORES')}\n")
            time.sleep(0.3)  # long enough that the kill below lands while batches remain
            return out

    killed = []

    def kill_the_first_actor_after_its_first_batch():
        deadline = time.time() + 120
        while not killed and time.time() < deadline:
            if os.path.exists(record) and open(record).read().strip():
                pid = int(open(record).read().split()[0])
                os.kill(pid, signal.SIGKILL)
                killed.append((pid, len(open(record).read().splitlines())))
            time.sleep(0.02)

    killer = threading.Thread(target=kill_the_first_actor_after_its_first_batch, daemon=True)
    killer.start()
    ds = ray.data.from_items([{"text": t} for t in TEXTS], override_num_blocks=6)
    out = translate_dataset(ds, nllb_checkpoint[0], "eng_Latn", "fra_Latn", replicas=1, batch_size=2,
                            model_kwargs=model_kwargs, translate_kwargs=dict(max_new_tokens=MAX_NEW),
                            actor_class=RecordingTranslateBatch)
    got = out.take_all()
    killer.join(timeout=5)
    assert killed, "no actor recorded a batch"
    assert [r["id"] for r in got] == list(range(len(TEXTS)))                 # every line exactly once, in order
    assert [r["translation"] for r in got] == translator.translate(TEXTS, "eng_Latn", "fra_Latn",
                                                                   max_new_tokens=MAX_NEW)
    pid, batches_before_kill = killed[0]
    after = [line.split() for line in open(record).read().splitlines()[batches_before_kill:]]
    assert after and all(int(p) != pid for p, _ in after)                    # a new actor finished the job
    assert all(cores in ("0", "1") for _, cores in after)  # Ray gave the actor one (fake) NeuronCore
