"""The pieces of the hooked CLIP text tower, one module per component (TransformerLens style)."""

from hooked_clip.components.attention import Attention, KeyValuePrefix
from hooked_clip.components.block import TransformerBlock
from hooked_clip.components.embed import Embed, PosEmbed
from hooked_clip.components.layer_norm import LayerNorm
from hooked_clip.components.mlp import MLP

__all__ = ["Attention", "KeyValuePrefix", "Embed", "LayerNorm", "MLP", "PosEmbed", "TransformerBlock"]
