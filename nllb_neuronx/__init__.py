"""nllb_neuronx: Meta's NLLB-200 / M2M100 as tensor-parallel, KV-cached HLO programs (Neuron, XLA CPU/GPU)."""

from nllb_neuronx.config import CompileConfig, ModelConfig, QuantizationConfig
from nllb_neuronx.model import NLLBForSampling
from nllb_neuronx.program_key import ProgramKey, Sampling


def __getattr__(name):  # these import transformers' generation and tokenizer stacks: load them only when asked for
    if name == "HuggingFaceGenerationModelAdapter":
        from nllb_neuronx.generation import HuggingFaceGenerationModelAdapter
        return HuggingFaceGenerationModelAdapter
    if name == "Translator":
        from nllb_neuronx.translator import Translator
        return Translator
    raise AttributeError(f"module 'nllb_neuronx' has no attribute {name!r}")


__all__ = ["CompileConfig", "HuggingFaceGenerationModelAdapter", "ModelConfig", "NLLBForSampling", "ProgramKey",
           "QuantizationConfig", "Sampling", "Translator"]
__version__ = "0.1.0"
