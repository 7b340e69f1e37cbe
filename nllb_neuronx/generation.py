"""HuggingFaceGenerationModelAdapter: HF `generate()` drives the compiled programs, unmodified.

    neuron = NLLBForSampling.from_pretrained(path, batch_size=8, tp_degree=2).to_neuron()
    model = HuggingFaceGenerationModelAdapter(hf_config, neuron)
    model.generate(input_ids=..., attention_mask=..., forced_bos_token_id=fra_id, num_beams=4, max_new_tokens=64)

`get_encoder()` runs the encoder program; `forward` feeds the decoder only the tokens its device cache has not seen
and returns the logits of the last one; beam search reorders the device state through `_reorder_cache` (a gather
program), so HF never holds or copies a cache. Every `generate()` starts from a fresh encode, so calls are independent.
"""

from __future__ import annotations

import numpy as np

from nllb_neuronx.extras import require_torch

torch = require_torch("HuggingFaceGenerationModelAdapter (HF generate(): beam search, logits processors)")

from transformers import GenerationConfig, GenerationMixin, M2M100Config, PreTrainedModel  # noqa: E402
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput  # noqa: E402

from nllb_neuronx.model import NLLBForSampling  # noqa: E402


class _DeviceEncoder(torch.nn.Module):
    """What `get_encoder()` returns: runs the encoder program and hands HF the encoder states."""

    main_input_name = "input_ids"

    def __init__(self, neuron: NLLBForSampling):
        super().__init__()
        self.neuron = neuron

    def forward(self, input_ids=None, attention_mask=None, **kwargs) -> BaseModelOutput:
        if input_ids is None:
            raise ValueError("the compiled encoder takes input_ids (inputs_embeds are not supported)")
        rows = input_ids.shape[0]
        if rows > self.neuron.batch_size:
            raise ValueError(f"{rows} rows exceed the compiled batch_size {self.neuron.batch_size}; compile with a "
                             "larger batch_size")
        self.neuron.encode(input_ids, attention_mask)
        states = self.neuron.encoder_hidden_states()[:, : input_ids.shape[1]]
        return BaseModelOutput(last_hidden_state=torch.from_numpy(np.ascontiguousarray(states)))


class HuggingFaceGenerationModelAdapter(PreTrainedModel, GenerationMixin):
    config_class = M2M100Config
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _supports_sdpa = True  # attention runs in our programs; accept configs that name any torch implementation
    _supports_flash_attn = True
    _is_stateful = True  # the decoder state lives on the device: no assisted generation, no cache copies

    def __init__(self, config, neuron: NLLBForSampling):
        super().__init__(config)
        self.neuron = neuron
        self.encoder = _DeviceEncoder(neuron)
        path = getattr(neuron.checkpoint, "path", None)
        if path is not None and (path / "generation_config.json").exists():
            self.generation_config = GenerationConfig.from_pretrained(path)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def generate(self, *args, **kwargs):
        """HF generate(), holding the model's lock for the whole call: its encode, decode steps and reorders share
        the device state, so concurrent callers are served one whole call at a time."""
        with self.neuron.exclusive():
            return super().generate(*args, **kwargs)

    def get_encoder(self, *args, **kwargs):
        return self.encoder

    def prepare_inputs_for_generation(self, input_ids, encoder_outputs=None, attention_mask=None, **kwargs):
        return {"decoder_input_ids": input_ids, "encoder_outputs": encoder_outputs, "attention_mask": attention_mask}

    def forward(self, decoder_input_ids=None, encoder_outputs=None, attention_mask=None, **kwargs) -> Seq2SeqLMOutput:
        if decoder_input_ids is None:
            raise ValueError("decoder_input_ids are required: the adapter runs cached decoding for generate()")
        neuron = self.neuron
        rows = decoder_input_ids.shape[0]
        source_rows = neuron.source_rows
        if rows != source_rows:  # generate() expanded rows into beams or return sequences: repeat_interleave order
            if rows % source_rows or neuron.position:
                raise ValueError(f"decoder batch of {rows} rows does not match the {source_rows} encoded rows")
            neuron.reorder(np.repeat(np.arange(source_rows), rows // source_rows))
        new = decoder_input_ids[:, neuron.position:]
        if new.shape[1] == 0:
            raise ValueError("forward() got no tokens beyond those already in the device cache")
        logits = neuron.decode_step(new.numpy())                                    # [rows, V]
        return Seq2SeqLMOutput(logits=torch.from_numpy(logits)[:, None, :])

    def _reorder_cache(self, past_key_values, beam_idx):
        self.neuron.reorder(beam_idx.numpy())
        return past_key_values
