"""hooked_clip: a mechanistic-interpretability toolkit for CLIP in the style of TransformerLens."""

from hooked_clip.clip import HookedCLIP
from hooked_clip.config import CLIPTextConfig
from hooked_clip.files import UnreadableFileError, UnsafeCheckpointError
from hooked_clip.hub import WeightsUnavailableError
from hooked_clip.loading import CheckpointMismatchError
from hooked_clip.registry import load_model
from hooked_clip.text import HookedCLIPText
from hooked_clip.hf_tokenizer import HFTextTokenizer
from hooked_clip.tokenizer import CLIPTokenizer, TextTokenizer, TokenizerUnavailableError
from hooked_clip.vision_config import CLIPVisionConfig
from hooked_clip.vision_tower import HookedCLIPVision

__all__ = ["CLIPTextConfig", "CLIPTokenizer", "CLIPVisionConfig", "CheckpointMismatchError", "HFTextTokenizer",
           "HookedCLIP", "HookedCLIPText", "HookedCLIPVision", "TextTokenizer", "TokenizerUnavailableError",
           "UnreadableFileError", "UnsafeCheckpointError", "WeightsUnavailableError", "load_model"]
__version__ = "0.1.0"
