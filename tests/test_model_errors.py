"""Bad input gets a clear ValueError naming the problem and the fix."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from nllb_neuronx import CompileConfig, NLLBForSampling
from tests.conftest import source_batch


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return NLLBForSampling.from_pretrained(tiny_checkpoint[0], batch_size=2, n_positions=[8, 16],
                                           encoder_buckets=[8, 16]).to_neuron()


def test_source_longer_than_largest_encoder_bucket(model):
    ids, mask = source_batch(128, lengths=(20, 3))
    with pytest.raises(ValueError, match=r"longer than the largest encoder bucket 16.*encoder_buckets=\[8, 16, 32\]"):
        model.sample(ids, mask, max_new_tokens=4)


def test_max_new_tokens_beyond_largest_decoder_bucket(model):
    ids, mask = source_batch(128, lengths=(5, 3))
    with pytest.raises(ValueError, match=r"max_new_tokens=17 exceeds the largest decoder bucket 16"):
        model.sample(ids, mask, max_new_tokens=17)


def test_decode_step_past_the_cache(model):
    ids, mask = source_batch(128, lengths=(5, 3))
    model.encode(ids, mask)
    with pytest.raises(ValueError, match="exceeds the largest decoder bucket 16"):
        model.decode_step(np.full((2, 17), 5))


def test_bad_token_ids(model):
    ids, mask = source_batch(128, lengths=(5, 3))
    model.encode(ids, mask)
    with pytest.raises(ValueError, match=r"must lie in \[0, 128\)"):
        model.decode_step(np.array([5, 500]))
    with pytest.raises(ValueError, match=r"token_ids must be \[2\] or \[2, P\]"):
        model.decode_step(np.array([5, 6, 7]))
    with pytest.raises(ValueError, match="batch_size 2"):
        model.encode(*source_batch(128, lengths=(5, 3, 4)))


def test_decode_before_encode(tiny_checkpoint):
    m = NLLBForSampling.from_pretrained(tiny_checkpoint[0], n_positions=[8], encoder_buckets=[8])
    with pytest.raises(RuntimeError, match="to_neuron"):
        m.encode(np.array([[5, 2]]))
    m.to_neuron()
    with pytest.raises(RuntimeError, match="encode"):
        m.decode_step(np.array([2]))


def test_unsupported_model_type(tmp_path, tiny_checkpoint):
    config = json.loads(open(os.path.join(tiny_checkpoint[0], "config.json")).read())
    config["model_type"] = "nllb_moe"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model_type 'nllb_moe' is not supported yet"):
        NLLBForSampling.from_pretrained(str(tmp_path))


def test_incomplete_checkpoint_names_missing_tensors(tmp_path, tiny_checkpoint):
    from safetensors.numpy import load_file, save_file

    src = tiny_checkpoint[0]
    tensors = load_file(os.path.join(src, "model.safetensors"))
    del tensors["model.decoder.layers.1.fc2.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(open(os.path.join(src, "config.json")).read())
    with pytest.raises(ValueError, match=r"incomplete: missing decoder\.layers\.1\.fc2\.weight"):
        NLLBForSampling.from_pretrained(str(tmp_path))


def test_no_weights_at_all(tmp_path, tiny_checkpoint):
    (tmp_path / "config.json").write_text(open(os.path.join(tiny_checkpoint[0], "config.json")).read())
    with pytest.raises(FileNotFoundError, match="holds no weights"):
        NLLBForSampling.from_pretrained(str(tmp_path))


@pytest.mark.parametrize("kwargs, message", [
    (dict(tp_degree=3), "tp_degree must be one of"),
    (dict(amp="int4"), "amp must be one of"),
    (dict(batch_size=0), "batch_size must be a positive integer"),
    (dict(n_positions=()), "n_positions must be a non-empty list"),
    (dict(backend="tpu"), "backend must be one of"),
])
def test_compile_config_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CompileConfig(**kwargs)


def test_pytorch_bin_checkpoint_loads(tmp_path, tiny_checkpoint):
    import torch

    path, hf = tiny_checkpoint
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(open(os.path.join(path, "config.json")).read())
    ids, mask = source_batch(128, lengths=(5, 3))
    a = NLLBForSampling.from_pretrained(str(tmp_path), batch_size=2, n_positions=[8], encoder_buckets=[8]).to_neuron()
    b = NLLBForSampling.from_pretrained(path, batch_size=2, n_positions=[8], encoder_buckets=[8]).to_neuron()
    np.testing.assert_array_equal(a.sample(ids, mask, max_new_tokens=6), b.sample(ids, mask, max_new_tokens=6))


def test_forced_bos_token_id_count(model):
    ids, mask = source_batch(128, lengths=(5, 3))
    with pytest.raises(ValueError, match=r"forced_bos_token_id must be one id or one per row \(2\), got 3"):
        model.sample(ids, mask, max_new_tokens=4, forced_bos_token_id=[5, 6, 7])
    per_row = model.sample(ids, mask, max_new_tokens=4, forced_bos_token_id=[5, 6])
    assert per_row[:, 1].tolist() == [5, 6]


def test_nan_logits_are_a_clear_error(tmp_path, tiny_checkpoint):
    from safetensors.numpy import load_file, save_file

    src = tiny_checkpoint[0]
    tensors = load_file(os.path.join(src, "model.safetensors"))
    tensors["model.decoder.layer_norm.weight"][3] = np.nan       # one feature of the final norm: every logit NaN
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(open(os.path.join(src, "config.json")).read())
    model = NLLBForSampling.from_pretrained(str(tmp_path), batch_size=2, n_positions=[8], encoder_buckets=[8])
    ids, mask = source_batch(128, lengths=(5, 3))
    with pytest.raises(FloatingPointError, match=r"NaN logits at step 2 .* rows \[0, 1\].*check the checkpoint"):
        model.to_neuron().sample(ids, mask, max_new_tokens=4, forced_bos_token_id=5)
