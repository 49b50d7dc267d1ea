"""The strict conversion machinery every loader shares: a :class:`Reader` that takes keys out of a source state
dict (a key not consumed is "unexpected", a key needed and absent is "missing", and either is an error that
lists them: a checkpoint of another architecture never loads half-way), the block converter both towers and
all sources use, the activation names of the sources, and :func:`load_converted`.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

from torch import Tensor, nn

from hooked_clip.config import TowerConfig
from hooked_clip.errors import CheckpointMismatchError, UnsupportedModelError

# transformers' activation names -> ours (text and image towers alike)
HF_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh"}
# the block key names of each source (transformers' CLIP-style towers, open_clip's resblocks)
HF_BLOCK_NAMES = {"packed_qkv": False, "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
                  "v_proj": "self_attn.v_proj", "out_proj": "self_attn.out_proj", "ln1": "layer_norm1",
                  "ln2": "layer_norm2", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
OPEN_CLIP_BLOCK_NAMES = {"packed_qkv": True, "in_proj_weight": "attn.in_proj_weight",
                         "in_proj_bias": "attn.in_proj_bias", "out_proj": "attn.out_proj", "ln1": "ln_1",
                         "ln2": "ln_2", "fc1": "mlp.c_fc", "fc2": "mlp.c_proj"}


def _list(keys: Iterable[str], n: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def mismatch_summary(missing: Sequence[str] = (), unexpected: Sequence[str] = (),
                     wrong_shapes: Sequence[str] = ()) -> str:
    """The one wording of a checkpoint/model key mismatch ("missing keys (n): ...; unexpected keys ...;
    shape mismatches ..."); empty when everything matches. Every strict loader builds its error from it."""
    parts = [f"missing keys ({len(missing)}): {_list(missing)}"] if missing else []
    parts += [f"unexpected keys ({len(unexpected)}): {_list(unexpected)}"] if unexpected else []
    parts += [f"shape mismatches ({len(wrong_shapes)}): {'; '.join(list(wrong_shapes)[:6])}"] if wrong_shapes else []
    return "; ".join(parts)


class Reader:
    """Takes keys out of a state dict and remembers which were missing; leftovers are unexpected."""

    def __init__(self, state_dict: dict[str, Tensor], source: str, what: str = "CLIP text tower"):
        self.rest = dict(state_dict)
        self.missing: list[str] = []
        self.source = source
        self.what = what

    def take(self, key: str) -> Optional[Tensor]:
        if key not in self.rest:
            self.missing.append(key)
            return None
        return self.rest.pop(key)

    def take_all(self, names: dict[str, str]) -> dict[str, Optional[Tensor]]:
        """{our key: the source's tensor} for a map of our keys to source keys (missing ones remembered)."""
        return {ours: self.take(theirs) for ours, theirs in names.items()}

    def finish(self, ignore: Callable[[str], bool] = lambda k: False) -> None:
        summary = mismatch_summary(self.missing, [k for k in self.rest if not ignore(k)])
        if summary:
            raise CheckpointMismatchError(
                f"The {self.source} checkpoint does not match a {self.what} of this configuration; " + summary
                + ". Check that the checkpoint and the model name/config are the same architecture."
            )


def qkv_weight(weight: Tensor, cfg: TowerConfig) -> Tensor:
    """nn.Linear weight [head*d_head, d_model] -> [head, d_model, d_head]."""
    return weight.T.reshape(cfg.d_model, cfg.n_heads, cfg.d_head).permute(1, 0, 2)


def convert_blocks(read: Reader, cfg: TowerConfig, prefix: str, names: dict[str, str]) -> dict:
    """Shared by both sources: they differ only in key names and in how q/k/v are packed."""
    out = {}
    for layer in range(cfg.n_layers):
        p, b = f"{prefix}{layer}.", f"blocks.{layer}."
        if names["packed_qkv"]:
            w, bias = read.take(p + names["in_proj_weight"]), read.take(p + names["in_proj_bias"])
            qkv_w = w.chunk(3, dim=0) if w is not None else (None,) * 3
            qkv_b = bias.chunk(3, dim=0) if bias is not None else (None,) * 3
        else:
            qkv_w = [read.take(p + names[f"{x}_proj"] + ".weight") for x in "qkv"]
            qkv_b = [read.take(p + names[f"{x}_proj"] + ".bias") for x in "qkv"]
        for x, w, bias in zip("QKV", qkv_w, qkv_b):
            if w is not None:
                out[b + f"attn.W_{x}"] = qkv_weight(w, cfg)
            if bias is not None:
                out[b + f"attn.b_{x}"] = bias.reshape(cfg.n_heads, cfg.d_head)
        w, bias = read.take(p + names["out_proj"] + ".weight"), read.take(p + names["out_proj"] + ".bias")
        if w is not None:
            out[b + "attn.W_O"] = w.T.reshape(cfg.n_heads, cfg.d_head, cfg.d_model)
        out[b + "attn.b_O"] = bias
        for ours, theirs in (("ln1", names["ln1"]), ("ln2", names["ln2"])):
            out[b + f"{ours}.w"] = read.take(p + theirs + ".weight")
            out[b + f"{ours}.b"] = read.take(p + theirs + ".bias")
        for ours, theirs in (("in", names["fc1"]), ("out", names["fc2"])):
            w = read.take(p + theirs + ".weight")
            out[b + f"mlp.W_{ours}"] = w.T if w is not None else None
            out[b + f"mlp.b_{ours}"] = read.take(p + theirs + ".bias")
    return out


def read_vit_keys(read: Reader, cfg, keys: dict[str, str], block_prefix: str, block_names: dict[str, str]) -> dict:
    """A ViT's embeddings, blocks and LayerNorms in our names, whichever the source (``keys``: our key -> the
    source's), reading only the optional pieces the config has (patch bias, class token, ``ln_pre``)."""
    wanted = ["embed.W_patch", "pos_embed.W_pos", "ln_post.w", "ln_post.b"]
    wanted += ["embed.b_patch"] * cfg.patch_bias + ["W_cls"] * cfg.class_token + ["ln_pre.w", "ln_pre.b"] * cfg.ln_pre
    out = read.take_all({k: keys[k] for k in wanted})
    out.update(convert_blocks(read, cfg, block_prefix, block_names))
    return out


def load_converted(model: nn.Module, converted: dict[str, Tensor]) -> None:
    """Copy a converted state dict into ``model``; any shape difference is an error naming the parameter."""
    own = model.state_dict()
    wrong = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in converted.items() if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if wrong:
        raise CheckpointMismatchError(
            "The checkpoint has the wrong architecture for this config: " + "; ".join(wrong[:8])
            + (f" ... and {len(wrong) - 8} more" if len(wrong) > 8 else "")
        )
    missing = sorted(set(own) - set(converted))
    if missing:
        raise CheckpointMismatchError(f"converted checkpoint lacks parameters: {_list(missing)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in converted.items()}, strict=True)


def open_clip_activation(act_layer: nn.Module, error: type = UnsupportedModelError) -> str:
    """Our ``act_fn`` of an open_clip block's activation module (QuickGELU, GELU, tanh-GELU); ``error`` for
    anything else."""
    from open_clip.transformer import QuickGELU

    if isinstance(act_layer, QuickGELU):
        return "quick_gelu"
    if isinstance(act_layer, nn.GELU) and act_layer.approximate in ("none", "tanh"):
        return "gelu" if act_layer.approximate == "none" else "gelu_tanh"
    raise error(f"activation {act_layer!r} is not supported; use quick_gelu or (tanh-)GELU.")
