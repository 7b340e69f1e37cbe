"""CI check that greedy translation needs neither torch nor a particular jax: `make` builds a tiny random NLLB
checkpoint with a tokenizer and HF's own translations (run with a Python that has torch), `check` runs
`nllb-neuronx translate` on it (run in an environment from `pip install .`, where torch must be absent) and compares.

    python .ci/translate_check.py make DIR          # writes DIR/checkpoint, DIR/input.txt, DIR/expected.txt
    VENV/bin/python .ci/translate_check.py check DIR
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TEXTS = ["Hello world.", "", "How are you?", "The cat sat on the mat.", "Bonjour le monde.", "Wie geht es dir?"]
SHAPE = ["--batch-size", "4", "--n-positions", "16,32", "--encoder-buckets", "16,32"]
MAX_NEW_TOKENS = 32  # the largest n_positions bucket, asked of both (the CLI defaults to generation_config's)


def make(root: Path) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import M2M100Config, M2M100ForConditionalGeneration, NllbTokenizer

    corpus = ["Hello world.", "How are you?", "The cat sat on the mat.", "Translation at scale is fun!",
              "Bonjour le monde.", "Wie geht es dir?", "Machines translate many languages every day."] * 10
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=150,
                                                        special_tokens=["<s>", "<pad>", "</s>", "<unk>"]))
    merges = [tuple(m) for m in json.loads(bpe.to_str())["model"]["merges"]]
    tokenizer = NllbTokenizer(vocab=bpe.get_vocab(), merges=merges)
    torch.manual_seed(0)
    config = M2M100Config(vocab_size=len(tokenizer), d_model=32, encoder_layers=2, decoder_layers=2,
                          encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                          decoder_ffn_dim=64, max_position_embeddings=128, init_std=0.2, dropout=0.0,
                          attention_dropout=0.0)
    model = M2M100ForConditionalGeneration(config).eval()
    checkpoint = root / "checkpoint"
    model.save_pretrained(checkpoint)   # safetensors
    tokenizer.save_pretrained(checkpoint)
    tokenizer.src_lang = "eng_Latn"
    expected = []
    for text in TEXTS:
        if not text:
            expected.append("")
            continue
        with torch.no_grad():
            out = model.generate(**tokenizer([text], return_tensors="pt"), max_new_tokens=MAX_NEW_TOKENS,
                                 forced_bos_token_id=tokenizer.convert_tokens_to_ids("fra_Latn"))
        expected.append(tokenizer.batch_decode(out, skip_special_tokens=True)[0])
    (root / "input.txt").write_text("".join(t + "\n" for t in TEXTS))
    (root / "expected.txt").write_text("".join(t + "\n" for t in expected))


def check(root: Path) -> None:
    import importlib.util

    import jax

    if importlib.util.find_spec("torch") is not None:
        sys.exit("torch is installed in this environment: `pip install .` must not bring it")
    command = [sys.executable, "-m", "nllb_neuronx.cli", "translate", "--model", str(root / "checkpoint"),
               "--src", "eng_Latn", "--tgt", "fra_Latn", "--backend", "xla-cpu", *SHAPE,
               "--max-new-tokens", str(MAX_NEW_TOKENS)]
    done = subprocess.run(command, input=(root / "input.txt").read_bytes(), capture_output=True)
    if done.returncode != 0:
        sys.exit(f"nllb-neuronx translate failed (exit {done.returncode}):\n{done.stderr.decode()}")
    got, want = done.stdout.decode(), (root / "expected.txt").read_text()
    if got != want:
        sys.exit(f"translations differ from HF's:\n--- got\n{got}--- HF\n{want}")
    print(f"translate on jax {jax.__version__} without torch: {len(TEXTS)} lines equal HF's")


if __name__ == "__main__":
    {"make": make, "check": check}[sys.argv[1]](Path(sys.argv[2]))
