"""The synthetic translation task: its tokenizer, its corpus, the trained model (stops on EOS by itself, outputs that
do not collapse), and the exact embedding into a bigger shape (same greedy and beam output as the small model)."""

from __future__ import annotations

import numpy as np
import pytest

from nllb_neuronx import toy_task


@pytest.fixture(scope="module")
def task_tokenizer():
    return toy_task.ToyTask().tokenizer()


def test_tokenizer_round_trips_with_language_codes(task_tokenizer):
    tok = task_tokenizer
    eng, fra = tok.convert_tokens_to_ids("eng_Latn"), tok.convert_tokens_to_ids("fra_Latn")
    assert tok.unk_token_id not in (eng, fra) and eng != fra
    for source, reference in toy_task.corpus(toy_task.ToyTask(), tok, 20, max_tokens=60):
        enc = tok(source, text_target=reference)
        assert enc["input_ids"][0] == eng and enc["input_ids"][-1] == tok.eos_token_id
        assert enc["labels"][0] == fra and enc["labels"][-1] == tok.eos_token_id
        assert tok.unk_token_id not in enc["input_ids"] + enc["labels"]
        assert tok.decode(enc["input_ids"], skip_special_tokens=True) == source
        assert tok.decode(enc["labels"], skip_special_tokens=True) == reference


def test_corpus_lengths_spread_and_ratio_varies(task_tokenizer):
    task = toy_task.ToyTask()
    lines = toy_task.corpus(task, task_tokenizer, 300)
    assert lines == toy_task.corpus(task, task_tokenizer, 300)                    # seeded
    src = np.array([len(task_tokenizer(s)["input_ids"]) for s, _ in lines])
    tgt = np.array([len(task_tokenizer(text_target=r)["input_ids"]) for _, r in lines])
    assert src.min() == 3 and src.max() == 120 and 15 <= np.median(src) <= 40
    ratio = tgt / src
    long = src >= 40                                       # not only short lines: the ratio varies line to line
    assert ratio[long].std() / ratio[long].mean() > 0.15
    assert len({r for _, r in lines}) > 250
    with pytest.raises(ValueError, match="min_tokens"):
        toy_task.corpus(task, task_tokenizer, 10, min_tokens=2)


def test_distinct_words_and_fertility():
    task = toy_task.ToyTask(source_words=40, bpe_vocab_size=200, distinct_words=True, max_fertility=2)
    assert {len(t) for t in task.dictionary().values()} == {1, 2}
    tokenizer = task.tokenizer()
    lines = toy_task.corpus(task, tokenizer, 40, max_tokens=60)
    for source, reference in lines:
        words = source.split()
        assert len(words) == len(set(words))                   # no word twice in a sentence
        assert reference.split() == [t for w in words for t in task.dictionary()[w]]
    longest = max(len(tokenizer(s)["input_ids"]) for s, _ in lines)
    assert longest > 30                                        # long lines still reachable without repeats
    with pytest.raises(ValueError, match="max_fertility"):
        toy_task.ToyTask(max_fertility=0)


def held_out(tokenizer, lines: int = 50):
    """Lines the training never drew (another seed), within the trained lengths."""
    config = toy_task.TrainConfig()
    return toy_task.corpus(config.task, tokenizer, lines, max_tokens=config.max_tokens,
                           median_tokens=config.median_tokens, seed=12345)


def test_trained_model_stops_on_eos_and_does_not_collapse(trained_model):
    _, model, tokenizer = trained_model
    lines = held_out(tokenizer)
    outputs = toy_task.translate_hf(model, tokenizer, [s for s, _ in lines], max_new_tokens=150)
    stopped = [o[-1] == tokenizer.eos_token_id for o in outputs]
    assert np.mean(stopped) >= 0.9, np.mean(stopped)
    generated = [o[1:-1] for o in outputs if len(o) >= 6]
    assert generated and np.mean([len(set(g)) > 1 for g in generated]) >= 0.9
    lengths = np.array([len(o) for o in outputs])
    sources = np.array([len(tokenizer(s)["input_ids"]) for s, _ in lines])
    # longer sources give longer translations: rank correlation (Spearman's, ties broken by order), which a line or
    # two that loops for a while (13 source tokens -> 97 on an AVX-512 host) does not swamp as it does Pearson's
    ranks = lambda x: np.argsort(np.argsort(x, kind="stable"), kind="stable")  # noqa: E731
    assert np.corrcoef(ranks(lengths), ranks(sources))[0, 1] > 0.5


def test_embedding_is_exact(trained_model, tmp_path):
    path, small, tokenizer = trained_model
    config = small.config
    toy_task.embed_model(path, tmp_path, config.encoder_layers + 2, config.decoder_layers + 1,
                         2 * config.encoder_ffn_dim, config.vocab_size + 37)
    big, big_tokenizer = toy_task.load_trained(tmp_path)
    assert (big.config.encoder_layers, big.config.decoder_layers) == (config.encoder_layers + 2,
                                                                      config.decoder_layers + 1)
    assert big.config.vocab_size == config.vocab_size + 37 and big_tokenizer.get_vocab() == tokenizer.get_vocab()
    texts = [s for s, _ in held_out(tokenizer, 8)]
    for beams in (1, 4):
        assert toy_task.translate_hf(big, tokenizer, texts, num_beams=beams, max_new_tokens=100) == \
            toy_task.translate_hf(small, tokenizer, texts, num_beams=beams, max_new_tokens=100)


def test_embedding_refuses_to_shrink(trained_model, tmp_path):
    path, small, _ = trained_model
    with pytest.raises(ValueError, match="only grows"):
        toy_task.embed_model(path, tmp_path, 0, small.config.decoder_layers, small.config.encoder_ffn_dim,
                             small.config.vocab_size)
