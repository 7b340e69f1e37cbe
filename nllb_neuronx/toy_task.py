"""A synthetic translation task, a model trained on it, and its exact embedding into a bigger shape.

Random weights never emit EOS; a model trained on this task stops by itself, so tests and benchmarks can compare
engines on outputs of real, varied lengths. The task: a seeded dictionary maps each source "word" to one to three
target words; a sentence translates word by word. Each sentence leans towards short or long translations, so the
target/source length ratio varies from line to line (not only for short lines). The text is tokenized by a BPE
trained here, wrapped as a real `NllbTokenizer` (NLLB's language codes, `eng_Latn` -> `fra_Latn` for this task).

`embed_model` copies a trained model into a config with more layers, a wider FFN and a larger vocabulary without
changing its output (pre-LN layers whose attention output projections and fc2 are zero are the identity; extra FFN
units with zero weights add nothing; extra vocabulary rows are copies of the pad row, which is never a target), so a
narrow model trained in minutes costs what the real shape costs. See ../shared/BENCH-MODEL.md for the measurements.

torch, transformers and tokenizers are imported inside the functions that need them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TASK_VERSION = 1  # part of every cache key: bump when the data or training code changes what a config produces
SRC_LANG, TGT_LANG = "eng_Latn", "fra_Latn"
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3, as in NLLB


@dataclass(frozen=True)
class ToyTask:
    """The dictionary and the sentences. Every field changes the data; all of them are seeded."""

    seed: int = 0
    source_words: int = 60
    bpe_vocab_size: int = 400
    lean: float = 1.5  # how strongly a sentence favours words with short or long translations
    # No word twice in a sentence: the decoder then finds its place in the source by content alone, which a one-layer
    # model learns for long lines too (with repeats it jumps back to an earlier occurrence and loops). Needs
    # source_words above the longest sentence's word count.
    distinct_words: bool = False
    max_fertility: int = 3  # target words per source word: 1..max_fertility

    def __post_init__(self):
        if self.source_words < 4 or self.bpe_vocab_size < 64 or self.lean < 0 or self.max_fertility < 1:
            raise ValueError(f"ToyTask needs at least 4 source words, a BPE vocabulary of at least 64, "
                             f"lean >= 0 and max_fertility >= 1, got {self}")

    def dictionary(self) -> dict[str, tuple[str, ...]]:
        """Source word -> one to three target words, no target word shared between two source words (so the last
        target word says which source word the decoder is at: a small model learns the alignment quickly)."""
        return _dictionary(self)

    def _make_dictionary(self) -> dict[str, tuple[str, ...]]:
        rng = np.random.default_rng([self.seed, 1])
        sources = _words(rng, self.source_words, "bdgklmnprstv", "aeiou")
        sizes = rng.integers(1, self.max_fertility + 1, len(sources))
        targets = iter(_words(rng, int(sizes.sum()), "cfhjqwxz", "aeiouy"))
        return {s: tuple(next(targets) for _ in range(k)) for s, k in zip(sources, sizes)}

    def sentence(self, rng: np.random.Generator, source_tokens: int, token_counts: dict[str, int]) -> tuple[str, str]:
        """One (source, reference) pair whose tokenized source (language code and EOS included) has about
        `source_tokens` tokens, never more (at least one word)."""
        table = self.dictionary()
        words = list(table)
        expansion = np.array([len(table[w]) for w in words], np.float64)
        lean = rng.uniform(-1.0, 1.0) * self.lean
        weights = np.exp(lean * (expansion - 2.0))
        weights /= weights.sum()
        chosen, budget = [], source_tokens - 2
        order = iter(rng.choice(len(words), len(words), replace=False, p=weights)) if self.distinct_words else None
        while True:
            index = next(order, None) if order is not None else int(rng.choice(len(words), p=weights))
            if index is None:
                break
            word = words[int(index)]
            if chosen and token_counts[word] > budget:
                break
            chosen.append(word)
            budget -= token_counts[word]
            if budget <= 0:
                break
        return " ".join(chosen), " ".join(t for w in chosen for t in table[w])

    def tokenizer(self):
        """The task's BPE as an `NllbTokenizer` (src eng_Latn, tgt fra_Latn); deterministic for a task."""
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers
        from transformers import NllbTokenizer

        table = self.dictionary()
        rng = np.random.default_rng([self.seed, 2])
        words = list(table)
        text = []
        for _ in range(400):
            chosen = [words[i] for i in rng.integers(0, len(words), int(rng.integers(2, 12)))]
            text += [" ".join(chosen), " ".join(t for w in chosen for t in table[w])]
        bpe = Tokenizer(models.BPE(unk_token="<unk>"))
        bpe.pre_tokenizer = pre_tokenizers.Metaspace()
        bpe.train_from_iterator(text, trainers.BpeTrainer(vocab_size=self.bpe_vocab_size,
                                                          special_tokens=SPECIAL_TOKENS, show_progress=False))
        merges = [tuple(m) for m in json.loads(bpe.to_str())["model"]["merges"]]
        return NllbTokenizer(vocab=bpe.get_vocab(), merges=merges, src_lang=SRC_LANG, tgt_lang=TGT_LANG)


@functools.lru_cache(maxsize=8)
def _dictionary(task: ToyTask) -> dict[str, tuple[str, ...]]:
    return task._make_dictionary()


def _words(rng, n: int, consonants: str, vowels: str) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        word = "".join(rng.choice(list(consonants)) + rng.choice(list(vowels)) for _ in range(rng.integers(1, 4)))
        if word not in out:
            out.append(word)
    return out


def token_counts(task: ToyTask, tokenizer) -> dict[str, int]:
    """Tokens per source word (the BPE splits on spaces, so a sentence's count is the sum plus 2)."""
    return {w: len(tokenizer.tokenize(w)) for w in task.dictionary()}


def corpus(task: ToyTask, tokenizer, lines: int, min_tokens: int = 3, max_tokens: int = 120, median_tokens: int = 25,
           seed: int = 0) -> list[tuple[str, str]]:
    """`lines` (source text, reference) pairs with source lengths (tokens, language code and EOS included) spread
    like real translation: log-normal around `median_tokens`, clipped to [min_tokens, max_tokens], and the first and
    last lines at the two extremes so every corpus spans its whole range."""
    if not 3 <= min_tokens <= median_tokens <= max_tokens or lines < 1:
        raise ValueError(f"corpus needs 3 <= min_tokens <= median_tokens <= max_tokens and lines >= 1, got "
                         f"min {min_tokens}, median {median_tokens}, max {max_tokens}, lines {lines}")
    rng = np.random.default_rng([task.seed, 3, seed])
    lengths = np.clip(np.rint(median_tokens * np.exp(rng.normal(0.0, 0.6, lines))), min_tokens, max_tokens)
    lengths[0] = min_tokens
    if lines > 1:
        lengths[-1] = max_tokens
    counts = token_counts(task, tokenizer)
    return [task.sentence(rng, int(n), counts) for n in lengths]


# ------------------------------------------------------------------------------------------------------ training
@dataclass(frozen=True)
class TrainConfig:
    """The model and its training. d_model and head_dim must match the shape the model is embedded into later."""

    d_model: int = 64
    heads: int = 4
    ffn_dim: int = 128
    encoder_layers: int = 2
    decoder_layers: int = 2
    # The defaults are the tests' model: a smaller task than ToyTask()'s (30 words, a 200-token BPE) and short
    # sentences, so it learns in ~600 steps (30-45 s on this 2-core machine; held-out lines: all stop on EOS, about
    # half exact, output length correlating 0.7 with the source's). 1,200 steps of the 60-word task took minutes.
    steps: int = 600
    batch_size: int = 32
    lr: float = 3e-3
    max_tokens: int = 32     # longest training source (tokens); lengths spread as in `corpus`
    median_tokens: int = 10
    max_positions: int = 256
    threads: int = 1         # torch with 2 threads on 2 busy cores ran 17x slower than with 1 (measured)
    seed: int = 0
    task: ToyTask = ToyTask(source_words=30, bpe_vocab_size=200)

    def __post_init__(self):
        if self.d_model % self.heads or min(self.steps, self.batch_size, self.threads) < 1 or self.lr <= 0:
            raise ValueError(f"TrainConfig needs heads dividing d_model and positive steps, batch, threads, lr: {self}")

    def key(self) -> str:
        """A short hash of everything that decides the trained weights (for on-disk caches)."""
        blob = json.dumps({"version": TASK_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


def model_config(config: TrainConfig, vocab_size: int):
    from transformers import M2M100Config

    return M2M100Config(vocab_size=vocab_size, d_model=config.d_model, encoder_layers=config.encoder_layers,
                        decoder_layers=config.decoder_layers, encoder_attention_heads=config.heads,
                        decoder_attention_heads=config.heads, encoder_ffn_dim=config.ffn_dim,
                        decoder_ffn_dim=config.ffn_dim, max_position_embeddings=config.max_positions,
                        scale_embedding=True, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                        decoder_start_token_id=2, activation_function="relu", dropout=0.0, attention_dropout=0.0,
                        activation_dropout=0.0, encoder_layerdrop=0.0, decoder_layerdrop=0.0, tie_word_embeddings=True)


def generation_config(max_length: int = 200):
    from transformers import GenerationConfig

    return GenerationConfig(decoder_start_token_id=2, bos_token_id=0, eos_token_id=2, pad_token_id=1,
                            max_length=max_length, num_beams=1, do_sample=False)


def _batches(config: TrainConfig, tokenizer, skip: int = 0):
    """steps x batch_size training pairs, grouped by length (little padding), in a seeded random order."""
    import torch

    rng = np.random.default_rng([config.seed, 4])
    counts = token_counts(config.task, tokenizer)
    n = config.steps * config.batch_size
    lengths = np.clip(np.rint(config.median_tokens * np.exp(rng.normal(0.0, 0.6, n))), 3, config.max_tokens)
    pairs = sorted((config.task.sentence(rng, int(t), counts) for t in lengths), key=lambda p: len(p[1]))
    order = rng.permutation(config.steps)
    for step in order[skip:]:
        chunk = pairs[step * config.batch_size:(step + 1) * config.batch_size]
        enc = tokenizer([s for s, _ in chunk], text_target=[t for _, t in chunk], padding=True, return_tensors="pt")
        labels = enc["labels"].masked_fill(enc["labels"] == tokenizer.pad_token_id, -100)
        yield enc["input_ids"], enc["attention_mask"], labels.to(torch.long)


def train(out_dir, config: TrainConfig = TrainConfig(), log=print, save_every: int = 0) -> dict:
    """Train on the task and save checkpoint, tokenizer, generation_config and `toy_task.json` (settings and final
    loss) into `out_dir`. AdamW, OneCycle, gradient clipping at 1.0; seeded. With `save_every`, the training state
    goes to `out_dir/train_state.pt` every that many steps and a later call resumes from it (same result: the data
    order is seeded and training draws no random numbers)."""
    import torch
    from transformers import M2M100ForConditionalGeneration

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    tokenizer = config.task.tokenizer()
    model = M2M100ForConditionalGeneration(model_config(config, len(tokenizer))).train()
    with torch.no_grad():  # fairseq's embedding init: scaled by sqrt(d_model), tokens weigh as much as positions
        torch.nn.init.normal_(model.get_input_embeddings().weight, std=config.d_model ** -0.5)
        model.get_input_embeddings().weight[model.config.pad_token_id].zero_()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.steps,
                                                   pct_start=0.1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_file, done, losses, seconds = out / "train_state.pt", 0, [], 0.0
    if save_every and state_file.exists():
        state = torch.load(state_file, weights_only=False)
        if state["key"] == config.key():
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            done, losses, seconds = state["step"], state["losses"], state["seconds"]
            if log:
                log(f"resumed at step {done}")
    start = time.perf_counter() - seconds
    for step, (ids, mask, labels) in enumerate(_batches(config, tokenizer, skip=done), start=done):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if log and (step + 1) % max(1, config.steps // 10) == 0:
            log(f"step {step + 1}/{config.steps}: loss {np.mean(losses[-10:]):.3f} "
                f"({time.perf_counter() - start:.0f} s)")
        if save_every and (step + 1) % save_every == 0 and step + 1 < config.steps:
            torch.save({"key": config.key(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "step": step + 1, "losses": losses,
                        "seconds": time.perf_counter() - start}, state_file.with_suffix(".tmp"))
            state_file.with_suffix(".tmp").replace(state_file)
    seconds = time.perf_counter() - start
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    generation_config().save_pretrained(out)
    record = {"train_config": dataclasses.asdict(config), "key": config.key(), "final_loss": float(np.mean(
        losses[-10:])), "train_seconds": seconds, "torch_threads": config.threads}
    (out / "toy_task.json").write_text(json.dumps(record, indent=1))
    state_file.unlink(missing_ok=True)
    return record


def load_trained(directory):
    """(HF model in eval mode, tokenizer) of a directory written by `train` or `embed_model`."""
    from transformers import AutoTokenizer, M2M100ForConditionalGeneration

    return M2M100ForConditionalGeneration.from_pretrained(directory).eval(), AutoTokenizer.from_pretrained(directory)


def translate_hf(model, tokenizer, texts: list[str], num_beams: int = 1, max_new_tokens: int = 200) -> list[list[int]]:
    """HF generate() on each text alone (no padding), greedy or beam: the generated ids after the decoder start
    token, forced language token first, ending in EOS where the model stopped."""
    import torch

    forced = tokenizer.convert_tokens_to_ids(TGT_LANG)
    out = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            gen = model.generate(input_ids=ids, forced_bos_token_id=forced, num_beams=num_beams, do_sample=False,
                                 max_new_tokens=max_new_tokens)
            out.append(gen[0, 1:].tolist())
    return out


# ----------------------------------------------------------------------------------------------------- embedding
def embed_model(small_dir, out_dir, encoder_layers: int, decoder_layers: int, ffn_dim: int, vocab_size: int,
                max_position_embeddings: int | None = None, seed: int = 0) -> dict:
    """Copy the model in `small_dir` exactly into a bigger config (same d_model and heads): extra layers after the
    trained ones, with zero attention output projections and fc2 (weights and biases; their other weights random);
    FFN units past the trained ones zero; vocabulary rows past the trained ones copies of the pad row. Saves the
    checkpoint with the small model's tokenizer and generation_config."""
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    small = M2M100ForConditionalGeneration.from_pretrained(small_dir).eval()
    sc = small.config
    big_layers = {"encoder": encoder_layers, "decoder": decoder_layers}
    if encoder_layers < sc.encoder_layers or decoder_layers < sc.decoder_layers or vocab_size < sc.vocab_size or \
            ffn_dim < max(sc.encoder_ffn_dim, sc.decoder_ffn_dim):
        raise ValueError(f"embed_model only grows a model: layers {sc.encoder_layers}+{sc.decoder_layers}, ffn "
                         f"{sc.encoder_ffn_dim}, vocab {sc.vocab_size} cannot become {encoder_layers}+"
                         f"{decoder_layers}, ffn {ffn_dim}, vocab {vocab_size}")
    config = M2M100Config(**{**sc.to_dict(), "encoder_layers": encoder_layers, "decoder_layers": decoder_layers,
                             "encoder_ffn_dim": ffn_dim, "decoder_ffn_dim": ffn_dim, "vocab_size": vocab_size,
                             "max_position_embeddings": max_position_embeddings or sc.max_position_embeddings})
    torch.manual_seed(seed)
    big = M2M100ForConditionalGeneration(config).eval()
    trained = small.state_dict()
    pad = sc.pad_token_id
    with torch.no_grad():
        for name, param in big.state_dict().items():
            parts = name.split(".")
            if "layers" in parts:
                side, index = parts[parts.index("layers") - 1], int(parts[parts.index("layers") + 1])
                assert index < big_layers[side]
                if index >= getattr(sc, f"{side}_layers"):  # an extra layer: the identity
                    if parts[-2] in ("out_proj", "fc2"):
                        param.zero_()
                    continue
            source = trained.get(name)
            if source is None:
                continue
            if source.shape == param.shape:
                param.copy_(source)
            elif parts[-2] == "fc1":        # [ffn] or [ffn, d_model]: extra units zero
                param.zero_()
                param[: source.shape[0]] = source
            elif parts[-2] == "fc2" and parts[-1] == "weight":   # [d_model, ffn]
                param.zero_()
                param[:, : source.shape[1]] = source
            elif param.dim() == 2 and param.shape[1] == source.shape[1]:   # embeddings [vocab, d_model]
                param[:] = source[pad]
                param[: source.shape[0]] = source
            else:
                raise ValueError(f"embed_model: no rule for {name} {tuple(source.shape)} -> {tuple(param.shape)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    big.save_pretrained(out)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(small_dir).save_pretrained(out)
    generation_config().save_pretrained(out)
    record = {"embedded_from": str(small_dir), "encoder_layers": encoder_layers, "decoder_layers": decoder_layers,
              "ffn_dim": ffn_dim, "vocab_size": vocab_size}
    small_record = Path(small_dir) / "toy_task.json"
    if small_record.exists():
        record["small"] = json.loads(small_record.read_text())
    (out / "toy_task.json").write_text(json.dumps(record, indent=1))
    return record


def trained_checkpoint(cache_dir, config: TrainConfig = TrainConfig(), log=None, save_every: int = 0) -> Path:
    """The model `train(config)` makes, cached under `cache_dir/toy-<key>`: trained once, reused after. Training
    writes into a `.partial` directory renamed when complete, so concurrent sessions never read half a model; with
    `save_every`, an interrupted training resumes there."""
    path = Path(cache_dir) / f"toy-{config.key()}"
    if (path / ".complete").exists():
        return path
    partial = path.with_name(path.name + (".partial" if save_every else f".partial-{os.getpid()}"))
    train(partial, config, log=log, save_every=save_every)
    (partial / ".complete").write_text(config.key())
    try:
        partial.rename(path)
    except OSError:  # another process finished first: keep its copy
        if not (path / ".complete").exists():
            raise
        shutil.rmtree(partial, ignore_errors=True)
    return path
