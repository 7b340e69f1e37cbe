"""Translator: text in, text out, on the compiled model's slot engine.

    with Translator.from_pretrained(path, tp_degree=2, batch_size=16) as tr:
        tr.translate(["Hello world", "How are you?"], src_lang="eng_Latn", tgt_lang="fra_Latn", num_beams=4)
        for line in tr.translate_stream(open("input.txt"), "eng_Latn", "fra_Latn"): ...

Every line is a request to a `SlotEngine` the Translator owns (created on first use, closed by `close()`): the
engine keeps every batch row busy, lines of any length and target language share steps, and each line's result is
HF generate() on that line alone. Lines stream through with bounded read-ahead; results come back in input order as
soon as a prefix of lines is done. Greedy, beams (`num_beams`) and sampling (`do_sample`, `temperature`, `top_k`,
`top_p`, `seed`) run on the engine; other HF generate() options (length_penalty other than 1.0,
no_repeat_ngram_size, logits processors, ...) run through HF generate() on the HF adapter, in length-sorted lockstep
batches, one call at a time. Empty strings give empty translations; a line too long for the largest encoder bucket is
an error naming it, unless `split_long=True` splits long inputs on sentence boundaries. Nothing is truncated
silently.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import queue
import re
import threading
from typing import Iterable, Iterator, Sequence

import numpy as np

from nllb_neuronx.engine import READ_AHEAD_PER_SLOT, GenerationRequest, SlotEngine
from nllb_neuronx.model import NLLBForSampling
from nllb_neuronx.sampling import SamplingParams

_NLLB_CODE = re.compile(r"^[a-z]{3}_[A-Z][a-z]{3}$")
_M2M_CODE = re.compile(r"^__[a-z]{2,3}__$")
# A sentence ends at . ! ? (and the Arabic, Urdu, Devanagari and Ethiopic marks) followed by whitespace, or at the
# full-width and Burmese/Khmer marks, which are written without a space after them.
_SENTENCE_END = re.compile(r"(?<=[.!?…؟۔।॥።])\s+|(?<=[。！？｡။។])\s*")
# Scripts written without spaces between words or sentences: a split line's translations are rejoined with nothing
# between them when the target is in one of these (NLLB codes end in the script; M2M100 codes name the language).
_UNSPACED_SCRIPTS = {"Hans", "Hant", "Jpan", "Thai", "Laoo", "Khmr", "Mymr", "Tibt"}
_UNSPACED_M2M = {"zh", "ja", "th", "lo", "km", "my"}
# generate() options the engine runs: sampling's, and beam-search settings at the values its beam search implements
_SAMPLING_ARGS = ("temperature", "top_k", "top_p", "seed")
_ENGINE_NEUTRAL = {"length_penalty": 1.0, "early_stopping": False, "num_return_sequences": 1}
HF_DEFAULT_TOP_K = 50  # HF generate()'s top_k when sampling and nothing sets it


def split_sentences(text: str) -> list[str]:
    """`text` cut after each sentence end (see _SENTENCE_END), stripped, without empty pieces."""
    return [s for s in (p.strip() for p in _SENTENCE_END.split(text.strip())) if s]


def sentence_separator(tgt_lang: str) -> str:
    """What goes between the translations of one line's sentences: a space, or nothing for unspaced scripts."""
    code = tgt_lang.strip("_")
    unspaced = code.rsplit("_", 1)[-1] in _UNSPACED_SCRIPTS if "_" in code else code in _UNSPACED_M2M
    return "" if unspaced else " "


class LanguageCodes:
    """The language codes a tokenizer knows (NLLB "fra_Latn", M2M100 "__fr__"), read from its vocabulary once."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.codes = sorted(t for t in tokenizer.get_vocab() if _NLLB_CODE.match(t) or _M2M_CODE.match(t))
        self._known = set(self.codes)

    def id(self, code: str) -> int:
        """The token id of a language code ("fra_Latn" for NLLB, "fr" for M2M100); a clear error if unknown."""
        token = code if code in self._known else f"__{code}__" if f"__{code}__" in self._known else None
        if token is None:
            close = difflib.get_close_matches(code, self.codes, n=5, cutoff=0.5)
            hint = (f"; did you mean {', '.join(close)}?" if close else
                    f"; known codes include {', '.join(self.codes[:8])}")
            raise ValueError(f"unknown language code {code!r}{hint}")
        return int(self.tokenizer.convert_tokens_to_ids(token))


class TextError(ValueError):
    """A problem with one input text; `index` is its position in the list given to translate()."""

    def __init__(self, index: int, message: str):
        super().__init__(f"text {index} {message}")
        self.index, self.detail = index, message

    def shifted(self, offset: int) -> "TextError":
        """The same error for the text `offset` places further on (its index in a whole stream, not in a block)."""
        error = copy.copy(self)
        error.index = self.index + offset
        error.args = (f"text {error.index} {self.detail}",)
        return error


class TextTooLong(TextError):
    """A text with more tokens than the largest encoder bucket, and `split_long` off: a front end names its own way
    to turn splitting on (the message names the Python argument and the CLI flag)."""

    def __init__(self, index: int, tokens: int, limit: int):
        super().__init__(index, f"has {tokens} tokens, more than the largest encoder bucket ({limit}); pass "
                                "split_long=True (CLI: --split-long) to split long inputs on sentence boundaries, "
                                "or compile with a larger encoder bucket")
        self.tokens, self.limit = tokens, limit


class Translator:
    """Thread-safe: concurrent callers share the engine's batches (no call waits for another's whole call); the
    HF-adapter path serves one whole call at a time."""

    def __init__(self, tokenizer, model: NLLBForSampling):
        self.tokenizer, self.model = tokenizer, model
        self.languages = LanguageCodes(tokenizer)
        self._adapter = None
        self._engine: SlotEngine | None = None
        self._engine_lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()   # src_lang is tokenizer state; fast tokenizers are not re-entrant

    @classmethod
    def from_pretrained(cls, path, tokenizer=None, **model_kwargs) -> "Translator":
        """Model and tokenizer from one checkpoint directory; `model_kwargs` go to `NLLBForSampling.from_pretrained`
        (batch_size, tp_degree, n_positions, encoder_buckets, amp, backend, compiled_dir, quantization)."""
        from transformers import AutoTokenizer

        model = NLLBForSampling.from_pretrained(path, **model_kwargs)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(model.checkpoint.path))
        return cls(tokenizer, model.to_neuron())

    # ------------------------------------------------------------------------------------------------ engine
    def engine(self) -> SlotEngine:
        """The slot engine every engine-path call submits to (created on first use; the model must be on the
        device). It admits the longest queued line first: the input streams through a bounded read-ahead window,
        and a long line admitted last would run on alone."""
        with self._engine_lock:
            if self._engine is None:
                self._engine = SlotEngine(self.model, admission="longest_first")
            return self._engine

    def close(self) -> None:
        """Finish the requests in flight and stop the engine; a later call starts a new one."""
        with self._engine_lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.close(drain=True)

    def __enter__(self) -> "Translator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------ languages
    def language_codes(self) -> list[str]:
        return list(self.languages.codes)

    def language_id(self, code: str) -> int:
        """The token id of a language code ("fra_Latn" for NLLB, "fr" for M2M100); a clear error if unknown."""
        return self.languages.id(code)

    # --------------------------------------------------------------------------------------- text <-> requests
    def default_max_new_tokens(self) -> int:
        """The checkpoint's generation_config default (as HF generate() reads it), capped at the largest decoder
        bucket."""
        return min(self.model.generation_defaults.max_new_tokens, self.model.compile_config.max_target_length)

    def requests(self, texts: Sequence[str], src_lang: str, tgt_lang: str | Sequence[str], num_beams: int = 1,
                 max_new_tokens: int | None = None, sampling: SamplingParams | None = None,
                 split_long: bool = False) -> list[list[GenerationRequest]]:
        """Each text's engine requests: none for an empty text, one, or one per sentence with `split_long`. With a
        seeded `sampling`, each request gets a seed of its own derived from (seed, text index, sentence). Results
        come back to text with `decode()`, a text's sentences joined with `sentence_separator(tgt)`."""
        targets = [tgt_lang] * len(texts) if isinstance(tgt_lang, str) else list(tgt_lang)
        if len(targets) != len(texts):
            raise ValueError(f"tgt_lang has {len(targets)} codes for {len(texts)} texts")
        self.language_id(src_lang)
        return [self._line_requests(i, text, src_lang, tgt, num_beams, max_new_tokens, sampling, split_long)
                for i, (text, tgt) in enumerate(zip(texts, targets))]

    def decode(self, ids) -> str:
        """Generated ids (one row, as the engine returns them) to text, special tokens left out."""
        with self._tokenizer_lock:
            return self.tokenizer.decode(np.asarray(ids).tolist(), skip_special_tokens=True)

    def _line_requests(self, index, text, src_lang, tgt, num_beams, max_new_tokens, sampling, split_long):
        forced = self.language_id(tgt)
        max_new = max_new_tokens or self.default_max_new_tokens()
        requests = []
        for piece, ids in enumerate(self._text_ids(index, text, src_lang, split_long)):
            row = sampling
            if sampling is not None and sampling.seed is not None:
                seed = int(np.random.SeedSequence([sampling.seed, index, piece]).generate_state(1)[0])
                row = dataclasses.replace(sampling, seed=seed)
            requests.append(GenerationRequest(ids, forced, max_new, num_beams=num_beams, sampling=row))
        return requests

    def _text_ids(self, index: int, text, src_lang: str, split_long: bool) -> list[list[int]]:
        """Token ids of a text (or of its sentences, when split); none for an empty text; a clear error for a line
        too long."""
        if not isinstance(text, str):
            raise TextError(index, f"is {type(text).__name__}, not str")
        if not text.strip():
            return []
        limit = self.model.compile_config.encoder_buckets[-1]
        ids = self._encode(text, src_lang)
        if len(ids) <= limit:
            return [ids]
        if not split_long:
            raise TextTooLong(index, len(ids), limit)
        pieces = []
        for sentence in split_sentences(text):
            ids = self._encode(sentence, src_lang)
            if len(ids) > limit:
                raise TextError(index, f"has a sentence of {len(ids)} tokens, more than the largest encoder "
                                       f"bucket ({limit}), even after splitting on sentence boundaries")
            pieces.append(ids)
        return pieces

    def _encode(self, text: str, src_lang: str) -> list[int]:
        with self._tokenizer_lock:
            self.tokenizer.src_lang = src_lang
            return list(self.tokenizer(text)["input_ids"])

    # -------------------------------------------------------------------------------------------- translation
    def translate(self, texts: Sequence[str], src_lang: str, tgt_lang: str | Sequence[str], num_beams: int = 1,
                  max_new_tokens: int | None = None, split_long: bool = False, **generate_kwargs) -> list[str]:
        """Translate `texts` from `src_lang` to `tgt_lang` (one code, or one per text); every text is checked (and
        tokenized) before any is generated, so a bad one costs no device time. `max_new_tokens=None`: the
        checkpoint's generation_config default, capped at the largest decoder bucket. Sampling: `do_sample=True`
        with `temperature`, `top_k` (default 50, as HF), `top_p`, `seed`. Other keyword arguments
        (length_penalty other than 1.0, no_repeat_ngram_size, ...) go to HF generate() on the HF adapter."""
        texts = list(texts)
        targets = [tgt_lang] * len(texts) if isinstance(tgt_lang, str) else list(tgt_lang)
        if len(targets) != len(texts):
            raise ValueError(f"tgt_lang has {len(targets)} codes for {len(texts)} texts")
        sampling, on_engine = self._engine_plan(num_beams, generate_kwargs)
        if not on_engine:
            with self.model.exclusive():
                return self._translate_adapter(texts, src_lang, targets, num_beams, max_new_tokens, split_long,
                                               generate_kwargs)
        lines = self.requests(texts, src_lang, targets, num_beams, max_new_tokens, sampling, split_long)  # checked
        results = self.engine().generate([r for line in lines for r in line])   # before any is generated
        return [sentence_separator(tgt).join(self.decode(next(results)) for _ in line)
                for line, tgt in zip(lines, targets)]

    def translate_stream(self, items: Iterable[str | tuple[str, str]], src_lang: str, tgt_lang: str | None = None,
                         read_ahead: int | None = None, **translate_kwargs) -> Iterator[str]:
        """Translations of `items`, in input order, each as soon as it and every item before it are done. An item
        is a text (to `tgt_lang`) or a (text, target language) pair. `items` is read in a thread of its own, at most
        `read_ahead` items (default READ_AHEAD_PER_SLOT = 64 x batch_size: a long line at the head of the output must
        not leave the engine's other slots idle) ahead of the output, so a source that stays open (a pipe) gets
        each translation without waiting for the end, and memory stays bounded; an exception it raises comes out
        here after the translations of the items before it. `translate_kwargs` as for `translate()`."""
        num_beams = translate_kwargs.pop("num_beams", 1)
        max_new_tokens = translate_kwargs.pop("max_new_tokens", None)
        split_long = translate_kwargs.pop("split_long", False)
        if read_ahead is not None and read_ahead < 1:
            raise ValueError(f"read_ahead must be positive, got {read_ahead}")
        sampling, on_engine = self._engine_plan(num_beams, translate_kwargs)
        if on_engine:
            yield from self._stream(items, src_lang, tgt_lang, num_beams, max_new_tokens, sampling, split_long,
                                    read_ahead)
            return
        done, rows = 0, max(1, self.model.batch_size // num_beams)
        for block, error in _arrived_blocks(items, read_ahead or 4 * rows):      # the adapter: lockstep blocks
            if block:
                texts = [i if isinstance(i, str) else i[0] for i in block]
                targets = [tgt_lang if isinstance(i, str) else i[1] for i in block]
                if any(t is None for t in targets):
                    raise ValueError("an item without a target language, and no tgt_lang to default to")
                try:
                    yield from self.translate(texts, src_lang, targets, num_beams=num_beams,
                                              max_new_tokens=max_new_tokens, split_long=split_long,
                                              **translate_kwargs)
                except TextError as e:  # its index in the whole stream, not in the block
                    raise e.shifted(done) from None
                done += len(block)
            if error is not None:
                raise error

    def _engine_plan(self, num_beams, kwargs) -> tuple[SamplingParams | None, bool]:
        """(sampling, whether the engine runs these generate() options); options it does not implement go to the
        HF adapter, never silently ignored."""
        if not isinstance(num_beams, int) or num_beams < 1:
            raise ValueError(f"num_beams must be a positive integer, got {num_beams!r}")
        if num_beams > self.model.batch_size:
            raise ValueError(f"num_beams={num_beams} exceeds the compiled batch_size {self.model.batch_size}; "
                             f"compile with batch_size >= {num_beams}")
        defaults, config = self.model.generation_defaults, self.model.config
        if defaults.eos_token_ids != (config.eos_token_id,) or \
                defaults.decoder_start_token_id != config.decoder_start_token_id:
            return None, False      # generation_config.json stops or starts otherwise than the engine: HF's way
        rest = {k: v for k, v in kwargs.items() if not (k in _ENGINE_NEUTRAL and v == _ENGINE_NEUTRAL[k])}
        do_sample = bool(rest.pop("do_sample", False))
        chosen = {k: rest.pop(k) for k in _SAMPLING_ARGS if k in rest}
        if rest or (do_sample and num_beams > 1) or (chosen and not do_sample):
            return None, False
        if not do_sample:
            return None, True
        chosen.setdefault("top_k", HF_DEFAULT_TOP_K)
        sampling = SamplingParams(**chosen)
        sampling.check_top_k(self.model.compile_config.max_top_k)
        return sampling, True

    def _stream(self, items, src_lang, tgt_lang, num_beams, max_new_tokens, sampling, split_long,
                read_ahead) -> Iterator[str]:
        """Items to the engine from a reader thread, results back in order: at most `read_ahead` lines wait for
        their turn in the output."""
        self.language_id(src_lang)
        engine = self.engine()
        lines: queue.Queue = queue.Queue(maxsize=read_ahead or READ_AHEAD_PER_SLOT * self.model.batch_size)
        stop = threading.Event()

        def put(entry) -> bool:
            while not stop.is_set():
                try:
                    lines.put(entry, timeout=0.1)
                    return True
                except queue.Full:
                    pass
            return False

        def produce():
            try:
                for index, item in enumerate(items):
                    text, tgt = (item, tgt_lang) if isinstance(item, str) else item
                    if tgt is None:
                        raise ValueError("an item without a target language, and no tgt_lang to default to")
                    requests = self._line_requests(index, text, src_lang, tgt, num_beams, max_new_tokens, sampling,
                                                   split_long)
                    futures = [engine.submit(r) for r in requests]
                    if not put((futures, tgt)):
                        for future in futures:
                            future.cancel()
                        return
            except BaseException as e:  # handed to the consumer, after the lines before it
                put(_Failed(e))
            else:
                put(_END)

        threading.Thread(target=produce, name="translate-reader", daemon=True).start()
        try:
            while True:
                entry = lines.get()
                if entry is _END:
                    return
                if isinstance(entry, _Failed):
                    raise entry.error
                futures, tgt = entry
                yield sentence_separator(tgt).join(self.decode(f.result()) for f in futures)
        finally:
            stop.set()
            while True:       # the caller stopped early: what was submitted and not handed back is cancelled
                try:
                    entry = lines.get_nowait()
                except queue.Empty:
                    break
                if isinstance(entry, tuple):
                    for future in entry[0]:
                        future.cancel()

    # ------------------------------------------------------------------------------------ the HF adapter path
    def _translate_adapter(self, texts, src_lang, targets, num_beams, max_new_tokens, split_long, generate_kwargs):
        """HF generate() on the adapter for options the engine does not implement: length-sorted lockstep batches."""
        self.language_id(src_lang)
        target_ids = {code: self.language_id(code) for code in set(targets)}
        rows_per_batch = self.model.batch_size // num_beams
        pieces = [(index, ids) for index, text in enumerate(texts)
                  for ids in self._text_ids(index, text, src_lang, split_long)]
        order = sorted(range(len(pieces)), key=lambda i: -len(pieces[i][1]))
        results: list[str] = [""] * len(pieces)
        max_new = max_new_tokens or self.default_max_new_tokens()
        for start in range(0, len(order), rows_per_batch):
            batch = order[start: start + rows_per_batch]
            ids = [pieces[i][1] for i in batch]
            forced = [target_ids[targets[pieces[i][0]]] for i in batch]
            out = self._hf_generate(ids, forced, num_beams, max_new, generate_kwargs)
            with self._tokenizer_lock:
                texts_out = self.tokenizer.batch_decode(out, skip_special_tokens=True)
            for i, text in zip(batch, texts_out):
                results[i] = text
        joined: list[list[str]] = [[] for _ in texts]
        for (index, _), text in zip(pieces, results):
            joined[index].append(text)
        return [sentence_separator(target).join(parts) for parts, target in zip(joined, targets)]

    def _hf_generate(self, ids: list[list[int]], forced: list[int], num_beams: int, max_new, kwargs) -> np.ndarray:
        from nllb_neuronx.extras import require_torch
        torch = require_torch("generate() options beyond greedy, beams and sampling in Translator")

        from nllb_neuronx.generation import HuggingFaceGenerationModelAdapter
        from transformers import AutoConfig

        pad = self.model.config.pad_token_id
        batch = np.full((len(ids), max(len(x) for x in ids)), pad, np.int64)
        for r, row in enumerate(ids):
            batch[r, : len(row)] = row
        mask = (batch != pad).astype(np.int64)
        if self._adapter is None:
            config = AutoConfig.from_pretrained(str(self.model.checkpoint.path))
            self._adapter = HuggingFaceGenerationModelAdapter(config, self.model)
        args = dict(input_ids=torch.tensor(batch), attention_mask=torch.tensor(mask), num_beams=num_beams, **kwargs)
        if len(set(forced)) == 1:
            args["forced_bos_token_id"] = forced[0]
            args["max_new_tokens"] = max_new
        else:  # rows with different languages: each row's decoder prompt is [start, its language]
            start = self.model.config.decoder_start_token_id
            args["decoder_input_ids"] = torch.tensor([[start, f] for f in forced])
            args["max_new_tokens"] = max_new - 1
        with torch.no_grad():
            return self._adapter.generate(**args).numpy()


_END = object()


def _arrived_blocks(items: Iterable, block_size: int) -> Iterator[tuple[list, BaseException | None]]:
    """(block, error) pairs: the items that have arrived, up to `block_size` (waiting only for the first), read from
    `items` by a daemon thread; the last pair carries the exception that ended the reading, if any."""
    arrived: queue.Queue = queue.Queue(maxsize=4 * block_size)   # bounded: reading stays a few blocks ahead

    def read():
        try:
            for item in items:
                arrived.put(item)
        except BaseException as e:  # handed to the consumer, in order
            arrived.put(_Failed(e))
        else:
            arrived.put(_END)

    threading.Thread(target=read, name="translate_stream-reader", daemon=True).start()
    while True:
        block = [arrived.get()]
        while len(block) < block_size:
            try:
                block.append(arrived.get_nowait())
            except queue.Empty:
                break
        tail = block[-1]
        if tail is _END or isinstance(tail, _Failed):
            yield block[:-1], tail.error if isinstance(tail, _Failed) else None
            return
        yield block, None


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error
