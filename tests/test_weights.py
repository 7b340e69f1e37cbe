"""Reading checkpoints and the positions table: what the model uploads before any program runs."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from transformers.models.m2m_100.modeling_m2m_100 import M2M100SinusoidalPositionalEmbedding

from nllb_neuronx.device_weights import sinusoidal_positions
from nllb_neuronx.weights import Checkpoint


# HF computes each angle (position x frequency) in float32 and torch's sin/cos differ by host (AVX2 or AVX-512 paths):
# on an AVX-512 host, 1.5e-5 at 258 rows and 1.1e-4 at 1,100, about float32's spacing near the largest angle (258 and
# 1,100 rad: 3.1e-5 and 1.2e-4); ours rounds exp, sin and cos of exact angles once. The tolerance is twice that spacing.
@pytest.mark.parametrize("rows, dim, atol", [(50, 16, 1e-5), (258, 1024, 6e-5), (1100, 1024, 2.4e-4), (40, 17, 1e-5)])
def test_positions_table_matches_hf(rows, dim, atol):
    want = M2M100SinusoidalPositionalEmbedding.get_embedding(rows, dim, 1).float().numpy()
    got = sinusoidal_positions(rows, dim, 1)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)
    assert not got[1].any()                                       # the pad row is zero


def test_bf16_checkpoint_reads_as_float32(tiny_checkpoint, tmp_path):
    _, hf = tiny_checkpoint
    bf16 = copy.deepcopy(hf).to(torch.bfloat16)                   # the session's reference model stays f32
    bf16.save_pretrained(tmp_path)
    got = Checkpoint(tmp_path).get("decoder.layers.0.fc1.weight")
    want = bf16.model.decoder.layers[0].fc1.weight.detach().float().numpy()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_greedy_decoding_needs_neither_torch_nor_transformers(tiny_checkpoint):
    """Loading a safetensors checkpoint and decoding keep torch and transformers out of the process: their imports
    alone are about 330 MB of resident memory."""
    path, _ = tiny_checkpoint
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from nllb_neuronx import NLLBForSampling
        model = NLLBForSampling.from_pretrained({path!r}, batch_size=2, n_positions=[8], encoder_buckets=[8])
        out = model.to_neuron().sample(np.array([[5, 6, 2], [7, 2, 1]]), max_new_tokens=3)
        assert out.shape[0] == 2, out.shape
        print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
