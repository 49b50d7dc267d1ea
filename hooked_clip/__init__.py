"""hooked_clip: a mechanistic-interpretability toolkit for CLIP-family models in the style of TransformerLens.

The tree is the architecture: ``text/`` and ``vision/`` (each tower's config and hooked transformer),
``components/`` (the pieces both towers are built from), ``tower.py`` (the shared base and the ``Tower``
contract), ``names.py`` (every hook name and label), ``tokenizers/``, ``loaders/`` (one module per source and
the ONE family table), ``models/`` (shipped models), ``model.py`` (``HookedCLIP``), and ``analyses/``
(installed as ``hooked_clip.analyses``) on top."""

from hooked_clip.lazy import defer_transformer_lens_init

defer_transformer_lens_init()  # before anything imports transformer_lens: its __init__ costs transformers, pandas


from hooked_clip.errors import (CheckpointMismatchError, HookReturnError, TokenizerUnavailableError,
                                UnknownHookError, UnreadableFileError, UnsafeCheckpointError,
                                UnsupportedImageTower, UnsupportedModelError, WeightsUnavailableError)
from hooked_clip.fingerprint import Fingerprint, fingerprint
from hooked_clip.model import HookedCLIP
from hooked_clip.models.registry import load_model
from hooked_clip.text.config import CLIPTextConfig
from hooked_clip.text.tower import HookedCLIPText
from hooked_clip.tokenizers.base import TextTokenizer
from hooked_clip.tokenizers.clip_bpe import CLIPTokenizer
from hooked_clip.tokenizers.hf import HFTextTokenizer
from hooked_clip.vision.config import CLIPVisionConfig
from hooked_clip.vision.tower import HookedCLIPVision

__all__ = ["CLIPTextConfig", "CLIPTokenizer", "CLIPVisionConfig", "CheckpointMismatchError", "Fingerprint", "HFTextTokenizer",
           "HookReturnError", "HookedCLIP", "HookedCLIPText", "HookedCLIPVision", "TextTokenizer",
           "TokenizerUnavailableError", "UnknownHookError", "UnreadableFileError", "UnsafeCheckpointError",
           "UnsupportedImageTower", "UnsupportedModelError", "WeightsUnavailableError", "fingerprint", "load_model"]
__version__ = "0.1.0"
