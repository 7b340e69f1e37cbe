"""What installs without torch works without it; what needs torch says which extra brings it.

Each test runs a fresh Python whose import system cannot find torch (as after `pip install .`, which does not install
it), rather than uninstalling anything.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import hf_generate, source_batch

ROOT = Path(__file__).resolve().parents[1]

# Every finder on sys.meta_path answers "not found" for torch, so `import torch` raises ModuleNotFoundError and
# importlib.util.find_spec("torch") is None (what transformers checks): torch looks uninstalled.
NO_TORCH = textwrap.dedent("""\
    import sys

    class _NoTorch:
        def __init__(self, inner):
            self.inner = inner

        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                return None
            find = getattr(self.inner, "find_spec", None)
            return None if find is None else find(name, path, target)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    sys.meta_path[:] = [_NoTorch(finder) for finder in sys.meta_path]
""")


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", NO_TORCH + textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


def test_greedy_from_safetensors_needs_no_torch(tiny_checkpoint):
    path, hf = tiny_checkpoint
    ids, mask = source_batch(hf.config.vocab_size)
    done = run_without_torch(f"""
        import numpy as np
        from nllb_neuronx import NLLBForSampling
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("torch was importable")
        model = NLLBForSampling.from_pretrained({path!r}, batch_size=4, n_positions=[16], encoder_buckets=[16],
                                               backend="xla-cpu").to_neuron()
        ids = np.array({ids.tolist()}); mask = np.array({mask.tolist()})
        out = model.sample(ids, mask, max_new_tokens=8, forced_bos_token_id=5)
        print(out.tolist())
        assert "torch" not in sys.modules, "torch was imported"
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = hf_generate(hf, ids, mask, max_new_tokens=8, forced_bos_token_id=5, do_sample=False, num_beams=1)
    got = np.array(eval(done.stdout.strip().splitlines()[-1]))
    np.testing.assert_array_equal(got[:, : expected.shape[1]], expected)


def test_pytorch_model_bin_without_torch_names_the_extra(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    done = run_without_torch(f"""
        from nllb_neuronx.weights import Checkpoint
        from nllb_neuronx.extras import MissingExtraError
        try:
            Checkpoint({str(tmp_path)!r})
        except MissingExtraError as e:
            print(e)
        else:
            raise SystemExit("no error")
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pytorch_model.bin" in done.stdout and "pip install 'nllb_neuronx[hf]'" in done.stdout


def test_generate_adapter_without_torch_names_the_extra():
    done = run_without_torch("""
        import nllb_neuronx
        from nllb_neuronx.extras import MissingExtraError
        try:
            nllb_neuronx.HuggingFaceGenerationModelAdapter
        except MissingExtraError as e:
            print(e)
        else:
            raise SystemExit("no error")
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "HuggingFaceGenerationModelAdapter" in done.stdout and "pip install 'nllb_neuronx[hf]'" in done.stdout
