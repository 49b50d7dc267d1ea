"""The pieces of the hooked CLIP towers, one module per component (TransformerLens style)."""

from hooked_clip.components.attention import Attention, KeyValuePrefix
from hooked_clip.components.attention_pool import AttentionPool
from hooked_clip.components.block import TransformerBlock
from hooked_clip.components.embed import Embed, PosEmbed
from hooked_clip.components.layer_norm import LayerNorm
from hooked_clip.components.mlp import MLP
from hooked_clip.components.patch_embed import PatchEmbed
from hooked_clip.components.post_ln_block import PostLNBlock
from hooked_clip.components.token_type_embed import TokenTypeEmbed

__all__ = ["Attention", "AttentionPool", "Embed", "KeyValuePrefix", "LayerNorm", "MLP", "PatchEmbed", "PosEmbed",
           "PostLNBlock", "TokenTypeEmbed", "TransformerBlock"]
