"""NLLBForSampling against HF transformers' M2M100ForConditionalGeneration, in f32: states, logits, greedy ids."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

from nllb_neuronx import NLLBForSampling
from tests.conftest import TOLERANCE, hf_generate, source_batch

BUCKETS = dict(n_positions=[8, 24], encoder_buckets=[8, 16])


def load(path, tp=1, batch_size=3, **kwargs):
    return NLLBForSampling.from_pretrained(path, batch_size=batch_size, tp_degree=tp, **{**BUCKETS, **kwargs}).to_neuron()


@pytest.mark.parametrize("tp", [1, 2])
def test_encoder_and_step_logits_match_hf(tiny_model, tp):
    path, hf = tiny_model
    ids, mask = source_batch(hf.config.vocab_size)
    model = load(path, tp)
    model.encode(ids, mask)
    with torch.no_grad():
        ref = hf.model.encoder(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
    ours = model.encoder_hidden_states()[:, : ids.shape[1]]
    keep = mask.astype(bool)
    assert np.abs(ours[keep] - ref.numpy()[keep]).max() < TOLERANCE["encoder"]

    targets = np.array([[2, 7, 11, 13, 17]] * ids.shape[0])
    with torch.no_grad():
        ref_logits = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                        decoder_input_ids=torch.tensor(targets)).logits.numpy()
    # one token at a time through the cache, then again as one prefix call
    for t in range(targets.shape[1]):
        logits = model.decode_step(targets[:, t])
        assert logits.shape == (ids.shape[0], hf.config.vocab_size)
        assert np.abs(logits - ref_logits[:, t]).max() < TOLERANCE["logits"], f"step {t}"
    model.reset()
    logits = model.decode_step(targets[:, :3])
    assert np.abs(logits - ref_logits[:, 2]).max() < TOLERANCE["logits"]


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_greedy_is_token_exact_with_hf(tiny_model, tp):
    path, hf = tiny_model
    ids, mask = source_batch(hf.config.vocab_size)
    forced = 5
    ref = hf_generate(hf, ids, mask, max_new_tokens=20, num_beams=1, do_sample=False, forced_bos_token_id=forced)
    ours = load(path, tp).sample(ids, mask, max_new_tokens=20, forced_bos_token_id=forced)
    np.testing.assert_array_equal(ours, ref)


def test_greedy_without_forced_token_and_eos_stops(tiny_checkpoint):
    path, hf = tiny_checkpoint
    ids, mask = source_batch(hf.config.vocab_size, lengths=(6, 3))
    ref = hf_generate(hf, ids, mask, max_new_tokens=16, num_beams=1, do_sample=False)
    model = load(path, batch_size=2)
    np.testing.assert_array_equal(model.sample(ids, mask, max_new_tokens=16), ref)
    # tokens the model is made to end on: row 0's first token ends row 0 at once, the others run on as HF's do; with
    # every row's first token in the EOS list, every row stops at once
    first = ref[:, 1]
    assert first[0] != first[1]
    out = model.sample(ids, mask, max_new_tokens=16, eos_token_id=int(first[0]))
    np.testing.assert_array_equal(out, hf_generate(hf, ids, mask, max_new_tokens=16, eos_token_id=int(first[0])))
    assert (out[0, 2:] == hf.config.pad_token_id).all() and (out[1, 2:] != hf.config.pad_token_id).any()
    out = model.sample(ids, mask, max_new_tokens=16, eos_token_id=first.tolist())
    np.testing.assert_array_equal(out, ref[:, :2])


def test_batches_are_padded_split_and_reassembled(tiny_checkpoint):
    path, hf = tiny_checkpoint
    ids, mask = source_batch(hf.config.vocab_size, lengths=(4, 9, 6, 12, 3), seed=3)
    ref = hf_generate(hf, ids, mask, max_new_tokens=10, num_beams=1, do_sample=False, forced_bos_token_id=9)
    model = load(path, batch_size=2)  # 5 rows: chunks of 2, 2 and a padded 1
    np.testing.assert_array_equal(model.sample(ids, mask, max_new_tokens=10, forced_bos_token_id=9), ref)


def test_buckets_short_source_and_long_generation(tiny_checkpoint):
    path, hf = tiny_checkpoint
    ids, mask = source_batch(hf.config.vocab_size, lengths=(5, 3))
    model = load(path, batch_size=2)
    model.encode(ids, mask)
    assert model.source_length == 8  # the smallest bucket that holds 5 tokens
    ids16, mask16 = source_batch(hf.config.vocab_size, lengths=(14, 3))
    model.encode(ids16, mask16)
    assert model.source_length == 16
    # 22 new tokens cross from the 8-position decoder bucket into the 24-position one, keeping the cache. An EOS id
    # outside the vocabulary is never produced, so both run the full length.
    never = hf.config.vocab_size + 1
    ref = hf_generate(hf, ids16, mask16, max_new_tokens=22, num_beams=1, do_sample=False, eos_token_id=never)
    out = model.sample(ids16, mask16, max_new_tokens=22, eos_token_id=never)
    assert out.shape == (2, 23)
    np.testing.assert_array_equal(out, ref)
    assert {k.target_len for k in model.compiled_programs if k.kind == "decoder"} == {8, 24}
    resizes = [(k.side, k.from_len, k.to_len) for k in model.compiled_programs if k.kind == "resize"]
    assert model.cache_length == 24
    if model.programs.build_shapes.reads_stored_caches:   # XLA CPU: the caches grew with the position, contents kept
        assert resizes == [("target", 8, 24)]
        model.reset()
        assert model.cache_length == 8                     # and start small again
    else:
        assert resizes == []


@pytest.mark.parametrize("amp", ["bf16", "f16"])
def test_half_precision_agrees_with_f32(tiny_checkpoint, amp):
    """Generated tokens only (the decoder start and forced columns are given, not chosen), all the same length (EOS
    cannot stop them). Measured on XLA CPU (8 rows x 20 tokens, tiny config): bf16 and f16 both agree 100% with f32;
    f16 logits within 3e-3 of f32, bf16 within 2.4e-2; a sample() call 10.3 ms in f16, 91.9 ms in bf16, 8.8 ms in f32
    (XLA CPU has fast f16 dots, slow bf16 ones)."""
    path, hf = tiny_checkpoint
    ids, mask = source_batch(hf.config.vocab_size)
    never = hf.config.vocab_size + 1
    f32 = load(path).sample(ids, mask, max_new_tokens=12, forced_bos_token_id=5, eos_token_id=never)
    half = load(path, amp=amp).sample(ids, mask, max_new_tokens=12, forced_bos_token_id=5, eos_token_id=never)
    assert f32.shape == half.shape == (len(ids), 13)
    agreement = float((f32[:, 2:] == half[:, 2:]).mean())
    print(f"{amp} vs f32 greedy agreement over generated tokens: {agreement:.1%}")
    assert agreement >= 0.75


@pytest.mark.parametrize("amp", ["bf16", "f16"])
def test_half_precision_logits_come_back_in_f32(tiny_checkpoint, amp):
    """The LM head accumulates in f32 whatever the amp type: half-precision logits would tie often and lose the
    ranking."""
    path, hf = tiny_checkpoint
    ids, mask = source_batch(hf.config.vocab_size)
    model = load(path, amp=amp)
    model.encode(ids, mask)
    logits = model.decode_step(np.full(len(ids), hf.config.decoder_start_token_id))
    assert logits.dtype == np.float32 and logits.shape == (len(ids), hf.config.vocab_size)
    half = ml_dtypes.bfloat16 if amp == "bf16" else np.float16
    assert (logits != logits.astype(half).astype(np.float32)).any()   # values a half-precision result could not hold
    model.encode(ids, mask)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 decoder_input_ids=torch.full((len(ids), 1), hf.config.decoder_start_token_id)).logits[:, 0].numpy()
    assert np.abs(model.decode_step(np.full(len(ids), hf.config.decoder_start_token_id)) - ref).max() < 0.1


def test_generation_config_gives_the_defaults_hf_uses(tiny_checkpoint, tmp_path):
    """max_length, an EOS list, forced_bos_token_id, decoder_start_token_id and pad_token_id from
    generation_config.json, as HF generate() reads them; explicit arguments win."""
    import json
    import shutil

    from transformers import M2M100ForConditionalGeneration

    path, hf = tiny_checkpoint
    ids, mask = source_batch(hf.config.vocab_size)
    plain = hf_generate(hf, ids, mask, max_new_tokens=8, forced_bos_token_id=5, decoder_start_token_id=3)
    stop = int(plain[0, 4])           # a token row 0 produces mid-way: with it in the EOS list, row 0 ends there
    copy = tmp_path / "checkpoint"
    shutil.copytree(path, copy)
    (copy / "generation_config.json").write_text(json.dumps(dict(
        bos_token_id=0, pad_token_id=0, decoder_start_token_id=3, eos_token_id=[2, stop], forced_bos_token_id=5,
        max_length=9)))
    hf_copy = M2M100ForConditionalGeneration.from_pretrained(copy).eval()
    ref = hf_generate(hf_copy, ids, mask)
    assert ref.shape[1] <= 9 and (ref[0, 5:] == 0).all() and not np.array_equal(ref, plain)
    model = load(str(copy))
    np.testing.assert_array_equal(model.sample(ids, mask), ref)
    explicit = dict(max_new_tokens=4, eos_token_id=2, forced_bos_token_id=6, decoder_start_token_id=2)
    np.testing.assert_array_equal(model.sample(ids, mask, **explicit), hf_generate(hf_copy, ids, mask, **explicit))
