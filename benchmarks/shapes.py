"""Benchmark shapes: random-weight checkpoints at the real NLLB-200 configs (made once, cached on disk), the bytes a
decode step must read (the bandwidth floor), and the CTranslate2 conversion of a checkpoint with CT2's own converter.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from nllb_neuronx.toy_task import ToyTask

NLLB_COMMON = dict(vocab_size=256206, max_position_embeddings=1024, scale_embedding=True, pad_token_id=1,
                   bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, activation_function="relu",
                   dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)

SHAPES = {
    "tiny": dict(vocab_size=1000, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=256,
                 scale_embedding=True, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                 dropout=0.0, attention_dropout=0.0, activation_dropout=0.0),
    "nllb-200-distilled-600M": dict(NLLB_COMMON, d_model=1024, encoder_layers=12, decoder_layers=12,
                                    encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096,
                                    decoder_ffn_dim=4096),
    "nllb-200-1.3B": dict(NLLB_COMMON, d_model=1024, encoder_layers=24, decoder_layers=24, encoder_attention_heads=16,
                          decoder_attention_heads=16, encoder_ffn_dim=8192, decoder_ffn_dim=8192),
    "nllb-200-3.3B": dict(NLLB_COMMON, d_model=2048, encoder_layers=24, decoder_layers=24, encoder_attention_heads=16,
                          decoder_attention_heads=16, encoder_ffn_dim=8192, decoder_ffn_dim=8192),
}

DEFAULT_CACHE_ROOT = Path(os.environ.get("NLLB_NEURONX_BENCH_CACHE", Path.home() / ".cache" / "nllb_neuronx" / "bench"))

# bytes per weight element for each precision an engine may run in
BYTES_PER_WEIGHT = {"f32": 4, "float32": 4, "bf16": 2, "f16": 2, "int8": 1}


def checkpoint_dir(shape: str, cache_root: Path) -> Path:
    return Path(cache_root) / shape


def add_checkpoint_args(parser, default_shape: str = "nllb-200-distilled-600M") -> None:
    """--shape and --model, as the single-model scripts (profile_step, decode_step, slot_costs) take them."""
    parser.add_argument("--shape", choices=sorted(SHAPES), default=default_shape,
                        help="use the random weights generate.py caches for this shape (run it once first)")
    parser.add_argument("--model", default=None, help="a checkpoint directory instead of --shape's random weights")


def checkpoint_of(args) -> tuple[str, dict]:
    """(the checkpoint to load, what a record says about it): the --model directory, or --shape's cached random
    weights (`DEFAULT_CACHE_ROOT`, as generate.py writes them)."""
    if args.model:
        return args.model, {"model": str(args.model)}
    return str(checkpoint_dir(args.shape, DEFAULT_CACHE_ROOT)), {"shape": args.shape}


def checkpoint_ready(path: Path) -> bool:
    return (path / "config.json").exists() and any(path.glob("*.safetensors")) and (path / ".complete").exists()


def make_checkpoint(shape: str, cache_root: Path, seed: int = 0) -> dict:
    """Random weights at `shape`'s config, written into the cache (reused when present) one layer at a time, so making
    the 3.3B shape (13.4 GB in f32) holds one layer in memory, not the model plus safetensors' serialized copy of it
    (save_pretrained's peak). The weights are distributed as M2M100's own init makes them: N(0, init_std) for
    projections and embeddings (the padding row zero), zero biases, unit layer-norm scales."""
    path = checkpoint_dir(shape, cache_root)
    if checkpoint_ready(path):
        return {"path": str(path), "created": False, "seconds": 0.0}
    start = time.perf_counter()
    path.mkdir(parents=True, exist_ok=True)
    write_random_checkpoint(SHAPES[shape], path, seed)
    (path / ".complete").write_text(json.dumps({"shape": shape, "seed": seed}))
    return {"path": str(path), "created": True, "seconds": time.perf_counter() - start}


def write_random_checkpoint(shape_config: dict, path: Path, seed: int = 0) -> None:
    """config.json, generation_config.json and sharded safetensors (one shard per layer, an index naming them), as
    save_pretrained lays them out. Tensor names and shapes come from HF's model built on the meta device (no memory);
    tied copies of the shared embedding are left out, as save_pretrained leaves them out."""
    import numpy as np
    import torch
    from safetensors.numpy import save_file
    from transformers import GenerationConfig, M2M100Config, M2M100ForConditionalGeneration

    config = M2M100Config(**shape_config)
    with torch.device("meta"):
        names = {k: tuple(v.shape) for k, v in M2M100ForConditionalGeneration(config).state_dict().items()
                 if not k.endswith(("embed_tokens.weight", "lm_head.weight"))}
    groups: dict[str, list[str]] = {}
    for name in names:   # one shard per encoder/decoder layer, one for the embedding and final norms
        layer = ".".join(name.split(".")[:4]) if ".layers." in name else "rest"
        groups.setdefault(layer, []).append(name)
    rng = np.random.default_rng(seed)
    weight_map, total = {}, 0
    for i, (group, members) in enumerate(groups.items(), 1):
        file = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name in members:
            shape = names[name]
            if name.endswith(".bias"):
                tensors[name] = np.zeros(shape, np.float32)
            elif "layer_norm" in name:
                tensors[name] = np.ones(shape, np.float32)
            else:
                tensors[name] = rng.standard_normal(shape, dtype=np.float32)
                tensors[name] *= np.float32(config.init_std)     # in place: the embedding alone is 2.1 GB at 3.3B
                if name.endswith("shared.weight") and config.pad_token_id is not None:
                    tensors[name][config.pad_token_id] = 0.0
            weight_map[name] = file
            total += tensors[name].nbytes
        save_file(tensors, str(path / file), metadata={"format": "pt"})
        del tensors
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    config.save_pretrained(path)
    GenerationConfig.from_model_config(config).save_pretrained(path)


def read_config(path) -> dict:
    return json.loads((Path(path) / "config.json").read_text())


def decode_step_weights(config: dict) -> int:
    """Weight elements one decode step reads: every decoder layer except the cross-attention K/V projections (the
    encoder side, computed once per source), the final layer norm, and the LM head (the shared [V, H] embedding).
    The few embedding rows looked up and the KV caches are not counted."""
    h, f, v, layers = config["d_model"], config["decoder_ffn_dim"], config["vocab_size"], config["decoder_layers"]
    self_attn = 4 * h * h + 4 * h
    cross_q_out = 2 * h * h + 2 * h
    ffn = 2 * h * f + f + h
    norms = 3 * 2 * h
    return layers * (self_attn + cross_q_out + ffn + norms) + 2 * h + v * h


def floor_ms(config: dict, precision: str, bandwidth_gbs: float) -> tuple[float, int]:
    """(milliseconds, bytes): the time to read the decode step's weights once at the measured bandwidth."""
    nbytes = decode_step_weights(config) * BYTES_PER_WEIGHT[precision]
    return nbytes / (bandwidth_gbs * 1e9) * 1e3, nbytes


# ------------------------------------------------------------------------------------------------- CTranslate2
class SyntheticTokenizer:
    """What CT2's M2M100 converter asks of a tokenizer, for checkpoints that have none (random weights): token i is
    `<s>`, `<pad>`, `</s>`, `<unk>` for 0..3, else `tok{i}`, so token strings map one to one onto the model's ids."""

    bos_token, pad_token, eos_token, unk_token = "<s>", "<pad>", "</s>", "<unk>"
    unk_token_id = 3
    special_tokens_map: dict = {}
    num_madeup_words = 0

    def __init__(self, vocab_size: int):
        self.tokens = ["<s>", "<pad>", "</s>", "<unk>"] + [f"tok{i}" for i in range(4, vocab_size)]

    def get_vocab(self) -> dict:
        return {t: i for i, t in enumerate(self.tokens)}

    def convert_ids_to_tokens(self, i):
        return [self.tokens[j] for j in i] if isinstance(i, (list, tuple)) else self.tokens[i]


def ct2_dir(checkpoint: Path, quantization: str, cache_root: Path) -> Path:
    checkpoint = Path(checkpoint).resolve()
    stamp = f"{checkpoint}|{(checkpoint / 'config.json').stat().st_mtime_ns}"
    digest = hashlib.sha1(stamp.encode()).hexdigest()[:10]
    return Path(cache_root) / "ct2" / f"{checkpoint.name}-{digest}-{quantization}"


def convert_ct2_all(checkpoint: Path, quantizations: list[str], cache_root: Path) -> dict:
    """Each conversion, or {"error": ...} where it failed (that engine is then skipped, the others still run)."""
    out = {}
    for q in quantizations:
        try:
            out[q] = convert_ct2(checkpoint, q, cache_root)
        except Exception as e:
            out[q] = {"error": f"{type(e).__name__}: {e}"[:300]}
    return out


def convert_ct2(checkpoint: Path, quantization: str, cache_root: Path) -> dict:
    """Convert with CT2's own TransformersConverter (weights as CT2 reads them); the tokenizer is the checkpoint's
    when it has one, else the synthetic one above. Cached next to the random checkpoints. Checkpoints above
    HALF_LOAD_ABOVE_BYTES are read in float16 for every conversion but float32 (CT2's int8 weights are then
    quantized from float16-rounded values)."""
    out = ct2_dir(checkpoint, quantization, cache_root)
    if (out / "model.bin").exists():
        return {"path": str(out), "created": False, "seconds": 0.0}
    from ctranslate2.converters import TransformersConverter

    vocab_size = read_config(checkpoint)["vocab_size"]

    class Converter(TransformersConverter):
        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            try:
                tokenizer = tokenizer_class.from_pretrained(model_name_or_path, **kwargs)
                if len(tokenizer.get_vocab()) >= vocab_size - 300:  # a real NLLB tokenizer
                    return tokenizer
            except Exception:
                pass
            return SyntheticTokenizer(vocab_size)

    # A reduced-precision conversion of a big checkpoint loads the torch model in float16, to keep its peak low on a
    # machine whose 24 GB others share (CT2's float32 conversion of the 3.3B shape peaked at about 12.3 GB RSS).
    half = quantization != "float32" and checkpoint_bytes(checkpoint) > HALF_LOAD_ABOVE_BYTES
    start = time.perf_counter()
    Converter(str(checkpoint), load_as_float16=half, low_cpu_mem_usage=True).convert(
        str(out), quantization=quantization, force=True)
    return {"path": str(out), "created": True, "seconds": time.perf_counter() - start, "loaded_as_float16": half}


HALF_LOAD_ABOVE_BYTES = 8 * 10**9


def checkpoint_bytes(checkpoint: Path) -> int:
    """Bytes of a checkpoint's safetensors files."""
    return sum(f.stat().st_size for f in Path(checkpoint).glob("*.safetensors"))


def ct2_vocabulary(model_dir) -> list[str]:
    model_dir = Path(model_dir)
    for name in ("shared_vocabulary.json", "target_vocabulary.json"):
        if (model_dir / name).exists():
            return json.loads((model_dir / name).read_text())
    for name in ("shared_vocabulary.txt", "target_vocabulary.txt"):
        if (model_dir / name).exists():
            return (model_dir / name).read_text(encoding="utf-8").split("\n")[:-1]
    raise FileNotFoundError(f"no vocabulary file in {model_dir}")


# ------------------------------------------------------------------------------ trained models that stop by EOS
# A model trained on nllb_neuronx.toy_task at the shape's d_model and heads (narrow FFN, few layers), then embedded
# exactly into the shape's layers, FFN and vocabulary (see ../shared/BENCH-MODEL.md and RESULTS.md "Corpus").
TOY_TRAINING = {
    "tiny": {},     # TrainConfig's defaults: the model of the tests' `trained_model` fixture
    # 200 source words, none twice in a sentence: with the 60-word task (repeats allowed) the 1+1-layer model looped
    # on long lines (stopped on 57 % of held-out lines; 33 % of 30-60-token ones, none above 60).
    "nllb-200-distilled-600M": dict(d_model=1024, heads=16, ffn_dim=512, encoder_layers=1, decoder_layers=1,
                                    steps=1000, batch_size=32, lr=4e-4, max_tokens=120, median_tokens=20,
                                    max_positions=1024, threads=1,
                                    task=ToyTask(source_words=200, bpe_vocab_size=400, distinct_words=True,
                                                 max_fertility=2)),
}
TOY_TRAINING["nllb-200-1.3B"] = TOY_TRAINING["nllb-200-distilled-600M"]   # same d_model and heads


def toy_train_config(shape: str):
    from nllb_neuronx.toy_task import TrainConfig

    if shape not in TOY_TRAINING:
        raise ValueError(f"no trained toy model for shape {shape!r}; choose from {', '.join(TOY_TRAINING)}")
    return TrainConfig(**TOY_TRAINING[shape])


def toy_checkpoint_dir(shape: str, cache_root: Path) -> Path:
    return Path(cache_root) / f"toy-{shape}-{toy_train_config(shape).key()}"


def make_toy_checkpoint(shape: str, cache_root: Path, log=None) -> dict:
    """The trained toy model embedded into `shape` (made once, cached; an interrupted training resumes)."""
    from nllb_neuronx import toy_task

    path = toy_checkpoint_dir(shape, cache_root)
    if checkpoint_ready(path):
        return {"path": str(path), "created": False, "seconds": 0.0}
    start = time.perf_counter()
    small = toy_task.trained_checkpoint(Path(cache_root) / "toy-train", toy_train_config(shape), log=log,
                                        save_every=25)
    target = SHAPES[shape]
    toy_task.embed_model(small, path, target["encoder_layers"], target["decoder_layers"], target["encoder_ffn_dim"],
                         target["vocab_size"], target["max_position_embeddings"])
    (path / ".complete").write_text(json.dumps({"shape": shape, "trained": str(small)}))
    return {"path": str(path), "created": True, "seconds": time.perf_counter() - start}
