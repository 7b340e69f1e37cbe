"""Tiny random M2M100 checkpoints made locally (no hub), and the HF reference model for each."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hlo.runtime import reserve_cpu_devices

# The tests make runtimes of tp 1 to 16 in one process: every virtual CPU device they need, before jax starts.
reserve_cpu_devices(16)

# Tolerances for parity with HF transformers in f32, in one table.
TOLERANCE = {"encoder": 1e-4, "logits": 1e-4}

TINY_CONFIGS = {
    # name: M2M100Config overrides
    "tiny": dict(vocab_size=128, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64),
    # heads not a power of two (3: padded with empty heads at tp 2, 4, 8), vocab not a multiple of tp, odd ffn
    "odd": dict(vocab_size=101, d_model=24, encoder_layers=1, decoder_layers=3, encoder_attention_heads=3,
                decoder_attention_heads=3, encoder_ffn_dim=50, decoder_ffn_dim=37),
}


def make_checkpoint(path, seed: int = 0, **overrides):
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    torch.manual_seed(seed)
    config = M2M100Config(max_position_embeddings=128, init_std=0.2, dropout=0.0, attention_dropout=0.0,
                          **overrides)
    model = M2M100ForConditionalGeneration(config).eval()
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="session", params=sorted(TINY_CONFIGS))
def tiny_model(request, tmp_path_factory):
    """(checkpoint directory, HF reference model) for each tiny config."""
    path = tmp_path_factory.mktemp(request.param)
    return str(path), make_checkpoint(path, **TINY_CONFIGS[request.param])


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    return str(path), make_checkpoint(path, **TINY_CONFIGS["tiny"])


def source_batch(vocab_size: int, lengths=(9, 5, 12), seed: int = 1, pad: int = 1, eos: int = 2):
    """Rows of different lengths, right-padded, each ending in EOS, as NLLB tokenizers produce."""
    rng = np.random.default_rng(seed)
    width = max(lengths)
    ids = np.full((len(lengths), width), pad, np.int64)
    for r, n in enumerate(lengths):
        ids[r, : n - 1] = rng.integers(4, vocab_size, n - 1)
        ids[r, n - 1] = eos
    return ids, (ids != pad).astype(np.int64)


def hf_generate(model, ids, mask, **kwargs) -> np.ndarray:
    with torch.no_grad():
        return model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), **kwargs).numpy()


@pytest.fixture(scope="session")
def nllb_checkpoint(tmp_path_factory):
    """A tiny random NLLB checkpoint with a real NllbTokenizer (BPE trained here, language codes added by it)."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import NllbTokenizer

    corpus = ["Hello world.", "How are you?", "The cat sat on the mat.", "Translation at scale is fun!",
              "Bonjour le monde.", "Wie geht es dir?", "Machines translate many languages every day."] * 10
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=150, special_tokens=["<s>", "<pad>", "</s>",
                                                                                          "<unk>"]))
    merges = [tuple(m) for m in json.loads(bpe.to_str())["model"]["merges"]]
    tokenizer = NllbTokenizer(vocab=bpe.get_vocab(), merges=merges)
    path = tmp_path_factory.mktemp("nllb_tok")
    overrides = dict(TINY_CONFIGS["tiny"], vocab_size=len(tokenizer))
    model = make_checkpoint(path, **overrides)
    tokenizer.save_pretrained(path)
    return str(path), model, tokenizer


@pytest.fixture(scope="session")
def trained_model(request, tmp_path_factory):
    """(checkpoint directory, HF model, tokenizer) of a tiny model trained on nllb_neuronx.toy_task (eng_Latn ->
    fra_Latn): its greedy outputs stop on EOS by themselves. Trained once and kept in pytest's cache directory under
    a hash of the training settings, so later sessions reuse it (a temp dir when the cache plugin is off)."""
    from nllb_neuronx import toy_task

    cache = getattr(request.config, "cache", None)
    root = cache.mkdir("toy_models") if cache is not None else tmp_path_factory.mktemp("toy_models")
    path = toy_task.trained_checkpoint(root, toy_task.TrainConfig(), log=None)
    model, tokenizer = toy_task.load_trained(path)
    return str(path), model, tokenizer
