"""The similarity lens (the logit lens for CLIP) and a tuned lens.

The lens reads the residual stream at the pooling position after each layer l (l = 0: embeddings
output; l = n_layers: the real output), passes it through ``ln_final`` and ``text_projection`` as if the
remaining blocks were skipped, and compares the result with image (or text) embeddings. ``ln="frozen"``
divides by the ``ln_final`` scale of the full run (linear in the residual, so it composes with direct
attribution); ``ln="recompute"`` normalises each partial residual by its own scale (the usual logit lens).
The last row equals the model's text embedding in both modes.

A :class:`TunedLens` (Belrose et al. 2023) adds one learned affine map per layer before the lens:
h -> h + A_l h + b_l (zero-initialised, so an untrained tuned lens is the plain lens). Objective,
documented and fixed: over a user's sentences, minimise the mean over layers of 1 - cos(lens_l(h_l),
text embedding), i.e. make each layer's read-out point where the model's final embedding points.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from hooked_clip.analyses.pairs import Tokens
from hooked_clip.names import act_name
from hooked_clip.tower import get_tower
from hooked_clip.text.readout import accumulated_resid, apply_ln_to_stack, ln_final_scale, to_embedding_space
from hooked_clip.errors import UnreadableFileError
from hooked_clip.loaders.files import read_safetensors

LnMode = Literal["frozen", "recompute"]


def _resid_names(n_layers: int) -> list[str]:
    return [act_name("resid_pre", l) for l in range(n_layers)] + [act_name("resid_post", n_layers - 1), "ln_final.hook_scale"]


def layer_residuals(model, texts: Tokens) -> tuple[Float[Tensor, "n_layers_plus_1 batch d_model"], Float[Tensor, "batch 1"]]:  # noqa: E501
    """The residual at the pooling position after the embeddings and each block, and ln_final's scale there."""
    text = get_tower(model, "text")
    tokens = text.as_tokens(texts)
    _, cache = text.run_with_cache(tokens, names_filter=_resid_names(text.cfg.n_layers))
    pool = text.pool_positions(tokens)
    return accumulated_resid(text, cache, pool)[0], ln_final_scale(cache, pool)


@torch.no_grad()
def lens_embeddings(model, inputs, *, ln: LnMode = "frozen", tuned: Optional["TunedLens"] = None,
                    tower: Optional[Literal["text", "vision"]] = None) -> Float[Tensor, "n_layers_plus_1 batch d_proj"]:
    """Each layer's read-out in the embedding space (unnormalised, bias included): row l is what the embedding
    would be if the blocks after l were skipped. With ``tuned``, the tuned lens (ln recomputed).

    ``tower="vision"`` (``inputs`` are then images): the residual after each layer goes through the image
    tower's own read-out (``ln_post``, its pooling — class token, average or SigLIP's attention head — and
    projection), i.e. ``ln="recompute"``; ``ln="frozen"`` and tuned lenses are the text tower's (its read-out
    is linear in the residual at one position)."""
    lensed = get_tower(model, tower)
    if lensed.name == "vision":
        if ln != "recompute" or tuned is not None:
            raise ValueError("the image-tower lens recomputes ln_post through the tower's own read-out: pass "
                             "ln='recompute' and no tuned lens.")
        return _read_out_lens(lensed, inputs)
    text = lensed
    if text.W_proj is None:
        raise ValueError("the similarity lens needs a text projection into the joint embedding space; this model "
                         "has none (cfg.d_proj is None).")
    with torch.no_grad():
        resid, scale = layer_residuals(text, inputs)
    if tuned is not None:
        resid, ln = tuned.translate(resid), "recompute"
    return to_embedding_space(text, apply_ln_to_stack(text, resid, scale, mode=ln), with_bias=True)


def _read_out_lens(tower, inputs) -> Tensor:
    """The residual entering each block and the last block's output, each read out by ``tower.read_out``."""
    x = tower.as_input(inputs)
    names = _resid_names(tower.cfg.n_layers)[:-1]
    _, cache = tower.run_with_cache(x, names_filter=names)
    pool, key_mask = tower.pool_positions(x), tower.key_mask(x)
    return torch.stack([tower.read_out(cache[n], pool, "embed", key_mask) for n in names])


def lens_similarity(model, inputs, others: Float[Tensor, "n_other d_proj"], *, ln: LnMode = "frozen",
                    tuned: Optional["TunedLens"] = None,
                    tower: Optional[Literal["text", "vision"]] = None) -> Float[Tensor, "n_layers_plus_1 n_input n_other"]:
    """Similarity (the model's own: logit_scale x cosine, + logit_bias) of each layer's read-out of ``inputs``
    (texts; images with ``tower="vision"``) with every embedding of the other tower."""
    return model.similarity(lens_embeddings(model, inputs, ln=ln, tuned=tuned, tower=tower), others)


def lens_difference(model, captions: Tokens, foils: Tokens, image_embeds: Float[Tensor, "pairs d_proj"], *,
                    ln: LnMode = "frozen", tuned: Optional["TunedLens"] = None) -> Float[Tensor, "n_layers_plus_1 pairs"]:
    """Per layer, d = S(caption, image) - S(foil, image) (logits) of each pair's read-outs."""
    if image_embeds.ndim != 2:
        raise ValueError(f"image_embeds must be [pairs, d_proj], got {tuple(image_embeds.shape)}.")
    c = lens_embeddings(model, captions, ln=ln, tuned=tuned)
    f = lens_embeddings(model, foils, ln=ln, tuned=tuned)
    if c.shape[1] != image_embeds.shape[0] or f.shape[1] != image_embeds.shape[0]:
        raise ValueError(f"{c.shape[1]} captions, {f.shape[1]} foils and {image_embeds.shape[0]} images: give one of "
                         "each per pair.")
    return model.paired_similarity(c, image_embeds) - model.paired_similarity(f, image_embeds)


def lens_ranking(model, texts: Tokens, image_embeds: Float[Tensor, "n_image d_proj"], targets: Int[Tensor, "n_text"], *,
                 ln: LnMode = "frozen", tuned: Optional["TunedLens"] = None) -> Int[Tensor, "n_layers_plus_1 n_text"]:
    """Per layer, the rank of each text's target image among ``image_embeds`` (0 = ranked first): zero-shot
    retrieval read out at every depth."""
    sims = lens_similarity(model, texts, image_embeds, ln=ln, tuned=tuned)
    targets = torch.as_tensor(targets, device=sims.device)
    if targets.shape != sims.shape[1:2] or int(targets.max()) >= sims.shape[2] or int(targets.min()) < 0:
        raise ValueError(f"targets must hold one image index in [0, {sims.shape[2]}) per text ({sims.shape[1]}).")
    target_sim = sims.gather(2, targets[None, :, None].expand(sims.shape[0], -1, 1))
    return (sims > target_sim).sum(-1)


class TunedLens(nn.Module):
    """One affine translator per layer 0..n_layers-1 (the last row is the output and needs none)."""

    def __init__(self, d_model: int, n_layers: int):
        super().__init__()
        self.translators = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(n_layers))
        for t in self.translators:
            nn.init.zeros_(t.weight)
            nn.init.zeros_(t.bias)

    def translate(self, resid: Float[Tensor, "n_layers_plus_1 batch d_model"]) -> Float[Tensor, "n_layers_plus_1 batch d_model"]:
        if resid.shape[0] != len(self.translators) + 1:
            raise ValueError(f"expected {len(self.translators) + 1} layers of residuals, got {resid.shape[0]}.")
        # the lens keeps fp32 weights (trained with Adam); a half-precision model's residuals pass through them
        rows = [h + t(h.to(t.weight.dtype)).to(h.dtype) for h, t in zip(resid[:-1], self.translators)]
        return torch.stack(rows + [resid[-1]])

    @classmethod
    def fit(cls, model, sentences: Sequence[str], *, steps: int = 300, lr: float = 1e-3, seed: int = 0,
            batch_size: int = 256) -> "TunedLens":
        """Train on ``sentences`` (the objective is in the module docstring). The model is frozen."""
        text = get_tower(model, "text")
        if text.W_proj is None:
            raise ValueError("a tuned similarity lens needs a text projection (cfg.d_proj is None).")
        if len(sentences) == 0:
            raise ValueError("TunedLens.fit needs sentences to train on.")
        torch.manual_seed(seed)
        lens = cls(text.cfg.d_model, text.cfg.n_layers).to(text.W_proj.device)
        with torch.no_grad():
            resids = [layer_residuals(model, list(sentences[i:i + batch_size]))[0]
                      for i in range(0, len(sentences), batch_size)]
            resid = torch.cat(resids, dim=1)
            target = F.normalize(to_embedding_space(text, apply_ln_to_stack(text, resid[-1:], mode="recompute"),
                                                    with_bias=True)[0], dim=-1)
        frozen = [(p, p.requires_grad) for p in text.parameters()]
        for p, _ in frozen:  # the model is not trained and gets no .grad
            p.requires_grad_(False)
        try:
            with torch.enable_grad():  # works under a global torch.set_grad_enabled(False) too
                _fit_steps(lens, text, resid, target, steps, lr)
        finally:
            for p, flag in frozen:
                p.requires_grad_(flag)
        return lens.eval()

    def save(self, path: Union[str, Path]) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(path),
                  metadata={"n_layers": str(len(self.translators)), "d_model": str(self.translators[0].in_features)})

    @classmethod
    def load(cls, path: Union[str, Path], model=None) -> "TunedLens":
        """Load a saved lens; with ``model``, check it was made for that model's shape."""
        from safetensors import safe_open

        state = read_safetensors(path)  # a damaged or empty file: UnreadableFileError naming it
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        n = int(meta["n_layers"]) if meta.get("n_layers", "").isdigit() and meta.get("d_model", "").isdigit() else 0
        if not n or set(state) != {f"translators.{i}.{p}" for i in range(n) for p in ("weight", "bias")}:
            raise UnreadableFileError(
                f"{str(path)!r} is not a tuned lens (it lacks the d_model/n_layers metadata or the translators.* "
                "tensors that TunedLens.save writes); pass a file written by TunedLens.save, or fit one with "
                "TunedLens.fit."
            )
        lens = cls(int(meta["d_model"]), int(meta["n_layers"]))
        if model is not None:
            cfg = get_tower(model, "text").cfg
            if (cfg.d_model, cfg.n_layers) != (lens.translators[0].in_features, len(lens.translators)):
                raise ValueError(f"the tuned lens at {path} is for d_model={meta['d_model']}, n_layers={meta['n_layers']}; "
                                 f"the model has d_model={cfg.d_model}, n_layers={cfg.n_layers}.")
        lens.load_state_dict(state)
        return lens.eval()


def _fit_steps(lens: TunedLens, text, resid: Tensor, target: Tensor, steps: int, lr: float) -> None:
    opt = torch.optim.Adam(lens.parameters(), lr=lr)
    for _ in range(steps):
        emb = to_embedding_space(text, apply_ln_to_stack(text, lens.translate(resid)[:-1], mode="recompute"),
                                 with_bias=True)
        loss = (1 - (F.normalize(emb, dim=-1) * target).sum(-1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def lens_agreement(model, sentences: Tokens, *, ln: LnMode = "recompute",
                   tuned: Optional[TunedLens] = None) -> Float[Tensor, "n_layers_plus_1"]:
    """Mean cosine between each layer's read-out and the model's text embedding (1 at the last row)."""
    emb = F.normalize(lens_embeddings(model, sentences, ln=ln, tuned=tuned), dim=-1)
    return (emb * emb[-1]).sum(-1).mean(-1)


__all__ = ["TunedLens", "lens_agreement", "lens_difference", "lens_embeddings", "lens_ranking",
           "lens_similarity", "layer_residuals"]
