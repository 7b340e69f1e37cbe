"""Translator: text in, text out, on the compiled model.

    tr = Translator.from_pretrained(path, tp_degree=2, batch_size=16)
    tr.translate(["Hello world", "How are you?"], src_lang="eng_Latn", tgt_lang="fra_Latn", num_beams=4)

Throughput by design: inputs are sorted by length so that a batch shares an encoder bucket, batches are filled to
the compiled size, and the caller's order is restored. Target languages may differ per row. Empty strings give empty
translations; a line too long for the largest encoder bucket is an error naming it, unless `split_long=True` splits
long inputs on sentence boundaries. Nothing is truncated silently.
"""

from __future__ import annotations

import difflib
import queue
import re
import threading
from typing import Iterable, Iterator, Sequence

import numpy as np

from nllb_neuronx.model import NLLBForSampling

_NLLB_CODE = re.compile(r"^[a-z]{3}_[A-Z][a-z]{3}$")
_M2M_CODE = re.compile(r"^__[a-z]{2,3}__$")
# A sentence ends at . ! ? (and the Arabic, Urdu, Devanagari and Ethiopic marks) followed by whitespace, or at the
# full-width and Burmese/Khmer marks, which are written without a space after them.
_SENTENCE_END = re.compile(r"(?<=[.!?…؟۔।॥።])\s+|(?<=[。！？｡။។])\s*")
# Scripts written without spaces between words or sentences: a split line's translations are rejoined with nothing
# between them when the target is in one of these (NLLB codes end in the script; M2M100 codes name the language).
_UNSPACED_SCRIPTS = {"Hans", "Hant", "Jpan", "Thai", "Laoo", "Khmr", "Mymr", "Tibt"}
_UNSPACED_M2M = {"zh", "ja", "th", "lo", "km", "my"}


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


class Translator:
    def __init__(self, tokenizer, model: NLLBForSampling):
        self.tokenizer, self.model = tokenizer, model
        self.languages = LanguageCodes(tokenizer)
        self._adapter = None

    @classmethod
    def from_pretrained(cls, path, tokenizer=None, **model_kwargs) -> "Translator":
        """Model and tokenizer from one checkpoint directory; `model_kwargs` go to `NLLBForSampling.from_pretrained`
        (batch_size, tp_degree, n_positions, encoder_buckets, amp, backend, compiled_dir)."""
        from transformers import AutoTokenizer

        model = NLLBForSampling.from_pretrained(path, **model_kwargs)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(model.checkpoint.path))
        return cls(tokenizer, model.to_neuron())

    # ------------------------------------------------------------------------------------------------ languages
    def language_codes(self) -> list[str]:
        return list(self.languages.codes)

    def language_id(self, code: str) -> int:
        """The token id of a language code ("fra_Latn" for NLLB, "fr" for M2M100); a clear error if unknown."""
        return self.languages.id(code)

    # -------------------------------------------------------------------------------------------- translation
    def translate(self, texts: Sequence[str], src_lang: str, tgt_lang: str | Sequence[str], num_beams: int = 1,
                  max_new_tokens: int | None = None, split_long: bool = False, **generate_kwargs) -> list[str]:
        """Translate `texts` from `src_lang` to `tgt_lang` (one code, or one per text). Extra keyword arguments
        (length_penalty, no_repeat_ngram_size, do_sample, ...) go to HF generate(). Safe for concurrent callers:
        calls are served one whole call at a time (they share the model's device state and the tokenizer)."""
        with self.model.exclusive():
            return self._translate(texts, src_lang, tgt_lang, num_beams, max_new_tokens, split_long, generate_kwargs)

    def _translate(self, texts, src_lang, tgt_lang, num_beams, max_new_tokens, split_long, generate_kwargs):
        texts = list(texts)
        targets = [tgt_lang] * len(texts) if isinstance(tgt_lang, str) else list(tgt_lang)
        if len(targets) != len(texts):
            raise ValueError(f"tgt_lang has {len(targets)} codes for {len(texts)} texts")
        self.language_id(src_lang)
        target_ids = {code: self.language_id(code) for code in set(targets)}
        rows_per_batch = self.model.batch_size // num_beams
        if rows_per_batch < 1:
            raise ValueError(f"num_beams={num_beams} exceeds the compiled batch_size {self.model.batch_size}; "
                             f"compile with batch_size >= {num_beams}")
        pieces = self._pieces(texts, src_lang, split_long)                          # (text index, token ids)
        order = sorted(range(len(pieces)), key=lambda i: -len(pieces[i][1]))
        results: list[str] = [""] * len(pieces)
        for start in range(0, len(order), rows_per_batch):
            batch = order[start: start + rows_per_batch]
            ids = [pieces[i][1] for i in batch]
            forced = [target_ids[targets[pieces[i][0]]] for i in batch]
            for i, text in zip(batch, self._generate(ids, forced, num_beams, max_new_tokens, generate_kwargs)):
                results[i] = text
        joined: list[list[str]] = [[] for _ in texts]
        for (index, _), text in zip(pieces, results):
            joined[index].append(text)
        return [sentence_separator(target).join(parts) for parts, target in zip(joined, targets)]

    def translate_stream(self, items: Iterable[str | tuple[str, str]], src_lang: str, tgt_lang: str | None = None,
                         block_size: int | None = None, **translate_kwargs) -> Iterator[str]:
        """Translations of `items`, in input order, as each block is done: a block is what has arrived while the
        previous one was translated (at least one item, at most `block_size`, default 4 batches), so a source that
        stays open (a pipe) gets each translation without waiting for the end. An item is a text (to `tgt_lang`) or
        a (text, target language) pair. `items` is read in a thread of its own; an exception it raises comes out
        here after the translations of the items before it. `translate_kwargs` go to `translate()`."""
        rows = max(1, self.model.batch_size // translate_kwargs.get("num_beams", 1))
        block_size = block_size or 4 * rows
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        done = 0
        for block, error in _arrived_blocks(items, block_size):
            if block:
                texts = [i if isinstance(i, str) else i[0] for i in block]
                targets = [tgt_lang if isinstance(i, str) else i[1] for i in block]
                if any(t is None for t in targets):
                    raise ValueError("an item without a target language, and no tgt_lang to default to")
                try:
                    yield from self.translate(texts, src_lang, targets, **translate_kwargs)
                except TextError as e:  # its index in the whole stream, not in the block
                    raise TextError(done + e.index, e.detail) from None
                done += len(block)
            if error is not None:
                raise error

    def _pieces(self, texts, src_lang, split_long) -> list[tuple[int, list[int]]]:
        """Token ids of each non-empty text (or of its sentences, when split); a clear error for a line too long."""
        self.tokenizer.src_lang = src_lang
        limit = self.model.compile_config.encoder_buckets[-1]
        pieces = []
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TextError(index, f"is {type(text).__name__}, not str")
            if not text.strip():
                continue
            ids = self._encode(text)
            if len(ids) <= limit:
                pieces.append((index, ids))
                continue
            if not split_long:
                raise TextError(
                    index, f"has {len(ids)} tokens, more than the largest encoder bucket ({limit}); pass "
                    "split_long=True (CLI: --split-long) to split long inputs on sentence boundaries, or compile "
                    "with a larger encoder bucket")
            for sentence in split_sentences(text):
                ids = self._encode(sentence)
                if len(ids) > limit:
                    raise TextError(index, f"has a sentence of {len(ids)} tokens, more than the largest encoder "
                                           f"bucket ({limit}), even after splitting on sentence boundaries")
                pieces.append((index, ids))
        return pieces

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def _generate(self, ids: list[list[int]], forced: list[int], num_beams: int, max_new_tokens, kwargs) -> list[str]:
        pad = self.model.config.pad_token_id
        batch = np.full((len(ids), max(len(x) for x in ids)), pad, np.int64)
        for r, row in enumerate(ids):
            batch[r, : len(row)] = row
        mask = (batch != pad).astype(np.int64)
        max_new = max_new_tokens or self.model.compile_config.max_target_length
        if num_beams == 1 and not kwargs:
            out = self.model.sample(batch, mask, max_new_tokens=max_new, forced_bos_token_id=forced)
        else:
            out = self._hf_generate(batch, mask, forced, num_beams, max_new, kwargs)
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)

    def _hf_generate(self, batch, mask, forced, num_beams, max_new, kwargs) -> np.ndarray:
        from nllb_neuronx.extras import require_torch
        torch = require_torch("beam search and generate() options in Translator")

        from nllb_neuronx.generation import HuggingFaceGenerationModelAdapter
        from transformers import AutoConfig

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
