"""genvl's decoding engine for VisionEncoderDecoder captioners."""

from .search import GenerationResult, generate
from .settings import GenerationSettings

__all__ = ["GenerationResult", "GenerationSettings", "generate"]
