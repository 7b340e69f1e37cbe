"""README.md's examples "Translate token ids" and "Custom decode loops" run as written, read from the README itself
(only the checkpoint path is replaced by a tiny local one), so a README example that breaks fails here."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tests.conftest import source_batch

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example(heading: str) -> str:
    """The first ```python block after the line `heading`."""
    text = README.read_text()
    start = text.index(f"\n{heading}\n")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def test_translate_token_ids_and_custom_decode_loop_examples_run(tiny_checkpoint):
    path, hf = tiny_checkpoint
    input_ids, attention_mask = source_batch(hf.config.vocab_size, lengths=(9, 5, 12))
    names = {"input_ids": input_ids, "attention_mask": attention_mask, "fra_id": 5, "np": np}
    translate = readme_example("## Translate token ids")
    assert '"path/to/nllb-200-distilled-600M"' in translate
    exec(translate.replace('"path/to/nllb-200-distilled-600M"', repr(path)), names)
    model, sampled = names["model"], names["ids"]
    assert sampled.shape[0] == 3 and (sampled[:, :2] == [2, 5]).all()      # decoder start, then the language

    exec(readme_example("### Custom decode loops"), names)
    assert model.position == 0 and model.source_rows == 3                   # reset(): the source stays encoded
    never = hf.config.vocab_size + 1                                         # no EOS: all 8 steps are compared
    greedy = model.sample(input_ids, attention_mask, max_new_tokens=9, forced_bos_token_id=5, eos_token_id=never)
    np.testing.assert_array_equal(np.stack(names["tokens"], axis=1), greedy[:, 2:10])
