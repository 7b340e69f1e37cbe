"""nllb_neuronx: Meta's NLLB-200 / M2M100 as tensor-parallel, KV-cached HLO programs (Neuron, XLA CPU/GPU)."""

from nllb_neuronx.config import CompileConfig, ModelConfig
from nllb_neuronx.model import NLLBForSampling

__all__ = ["CompileConfig", "ModelConfig", "NLLBForSampling"]
__version__ = "0.1.0"
