"""A checkpoint's fingerprint: what a model IS, whatever its file format or the name it was loaded by.

``fingerprint(model)`` hashes every weight of both towers under hooked_clip's own parameter names (so the
same weights read from a safetensors file, a transformers directory or an open_clip model give the same
hash), each upcast to float32 (so a float16 file and its float32 load agree; a lossy cast such as bfloat16
changes the weights and the hash), plus what changes the computation without being a weight: each tower's
activation, the text pooling and the logit scale and bias. Runs, comparisons and sweeps are keyed by it,
never by the spelling of a path.

Decisions, written down:
- The tokenizer is not part of it (a fingerprint says which weights run, not which strings reach them);
  runs record the tokenizer separately.
- An image tower hooked_clip does not reimplement (ResNet, timm) is hashed under its reference module's
  parameter names, so such a tower loaded through two different sources can hash differently.
- Weight processing (``fold_ln`` & co.) rewrites the weights: a model loaded with it carries the fingerprint
  of the weights as loaded, taken before processing (``HookedCLIP.from_checkpoint``), so a folded and an
  unfolded load of one checkpoint are recognised as one model.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Optional

import torch
from torch import Tensor, nn

#: hex digits of the weights hash that name a run directory (48 bits: collisions need ~16M checkpoints)
SHORT = 12


@dataclass(frozen=True)
class Fingerprint:
    """``weights``: sha256 over every tensor (name, shape, float32 bytes) in name order; the rest is what
    changes the computation beside the weights. ``str(fp)`` / ``fp.short`` name run directories."""

    weights: str
    text_act_fn: str
    text_pooling: str
    vision_act_fn: Optional[str]
    logit_scale: Optional[float]
    logit_bias: Optional[float]

    @property
    def digest(self) -> str:
        """One sha256 over all fields: equal exactly when two models compute the same function the same way."""
        return hashlib.sha256(repr(sorted(asdict(self).items())).encode()).hexdigest()

    @property
    def short(self) -> str:
        return f"fp-{self.digest[:SHORT]}"

    def __str__(self) -> str:
        return self.short

    def as_dict(self) -> dict:
        """The fields and the digest, as run configs record them (``Fingerprint.from_dict`` reads it back)."""
        return {**asdict(self), "digest": self.digest}

    @classmethod
    def from_dict(cls, record: Mapping) -> "Fingerprint":
        fields = {k: record[k] for k in cls.__dataclass_fields__}
        fp = cls(**fields)
        if "digest" in record and record["digest"] != fp.digest:
            raise ValueError(f"fingerprint record is inconsistent: its digest {record['digest'][:SHORT]} is not the "
                             f"digest of its fields ({fp.digest[:SHORT]}); the record was edited or corrupted.")
        return fp


def hash_tensors(named: Iterable[tuple[str, Tensor]]) -> str:
    """sha256 over (name, shape, float32 bytes) of each tensor, in name order. Independent of device, dtype
    widths that cast exactly to float32, memory layout and the order the tensors come in."""
    h = hashlib.sha256()
    for name, tensor in sorted(named, key=lambda item: item[0]):
        t = tensor.detach().to(device="cpu", dtype=torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _tensors(prefix: str, module: Optional[nn.Module]) -> list[tuple[str, Tensor]]:
    if module is None:
        return []
    return [(f"{prefix}.{name}", t) for name, t in module.state_dict().items()]


def compute_fingerprint(model) -> Fingerprint:
    """The fingerprint of ``model``'s current weights (a :class:`~hooked_clip.HookedCLIP`)."""
    text, vision = model.text, model.vision
    reference = getattr(vision, "encoder", None)  # a ReferenceVisionTower wraps the module it runs
    hooked_vision = None if vision is None or reference is not None else vision.cfg
    weights = hash_tensors(_tensors("text", text) + _tensors("vision", reference if reference is not None else vision))
    scale, bias = model.logit_scale, model.logit_bias
    return Fingerprint(
        weights=weights,
        text_act_fn=text.cfg.act_fn,
        text_pooling=text.cfg.pooling,
        vision_act_fn=None if hooked_vision is None else hooked_vision.act_fn,
        logit_scale=None if scale is None else float(scale.detach()),
        logit_bias=None if bias is None else float(bias.detach()),
    )


def fingerprint(model) -> Fingerprint:
    """The model's fingerprint: taken at load before any weight processing where the model was processed
    (``model._fingerprint``), else computed from its current weights (so a model edited in place gets a new
    one)."""
    stored = getattr(model, "_fingerprint", None)
    return stored if stored is not None else compute_fingerprint(model)
