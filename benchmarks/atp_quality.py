"""How well attribution patching estimates exact activation patching, on both towers (not a timing).

For five towers -- the text tower of ``tiny-negation``, the text tower of ``tiny-negation-pixels`` (the same
weights; only the image embeddings the metric reads differ), the image tower of ``tiny-negation-pixels``, a
random transformers CLIP text tower and a random ViT -- it compares AtP, AtP* (q/k) and integrated gradients
(8/16/32 steps) against exact activation patching of the same sweep, for head outputs (``z``, queries ``q`` and
keys ``k``, per layer x head) and the residual stream (``resid_pre``, per layer x position), in both
directions. Per (tower, activation, direction, estimator) it prints:

- r: Pearson correlation of estimated and exact effects over every (index, example) entry;
- top-k: overlap of the k largest |effects| per example (k = 3 for heads, 5 for positions), mean over examples;
- size: median |estimate - base| / |exact - base| over the entries whose exact |effect| is at least 10% of
  the sweep's largest (1 = right size; 0.04 = 27x too small); "effect" = patched metric - base metric.

Then a diagnosis of the text side of ``tiny-negation-pixels`` (``z`` per head), where AtP does worst: how peaked
the attention is and AtP on ``pattern`` against AtP on ``z``; integrated gradients up to 64 steps and the metric
along their path; AtP against exact patching with the LayerNorm scales, the attention patterns and/or the MLP
gates frozen at the base run (plain hooks written here, checked against the library where nothing is frozen);
the exact effect of patching alpha x (z_source - z_base) into the largest heads for alpha in 0..1 (is it
linear in alpha?); and, on every tower, how large the residual change of one head's patch is where the final
LayerNorm reads it, and how much of it points along the residual.

Run: ``OMP_NUM_THREADS=2 python benchmarks/atp_quality.py --threads 2`` (offline; a few minutes on 2 CPU cores;
``--skip-table`` runs the diagnosis alone). The numbers are about these toy and random towers only.
Findings: docs/attribution-quality.md.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

from hooked_clip import CLIPVisionConfig, HookedCLIP, HookedCLIPVision, load_model
from hooked_clip.analyses.attribution import attribution_patch
from hooked_clip.analyses.metrics import cosine_to_target, similarity_metric
from hooked_clip.analyses.pairs import RunPair
from hooked_clip.analyses.patching import activation_patch
from hooked_clip.models.tiny_negation.render import preprocess, render_images
from hooked_clip.similarity import logit_parameters

# the demo pairs of tests/integration/test_circuits.py and tutorial 3, plus two short ones; scenes hold the subject
NEG = ["There are no dogs in the park.", "There is no cat on the bed.", "There are no cars parked.",
       "There are no birds in the sky.", "There is no horse in the field.", "There are no cups on the table.",
       "There are no cats.", "There is no dog."]
AFF = ["There are some dogs in the park.", "There is a cat on the bed.", "There are some cars parked.",
       "There are some birds in the sky.", "There is a horse in the field.", "There are some cups on the table.",
       "There are some cats.", "There is a dog."]
SCENES = [["dog", "tree"], ["cat", "bed"], ["car", "sign"], ["bird", "cloud"], ["horse", "fence"], ["cup", "plate"],
          ["cat", "sofa"], ["dog", "lamp"]]
# image pairs: a scene with the subject (corrupt, the run patched by default) and without it (clean);
# metric S("There is a <subject>.", image)
SUBJECTS = ["dog", "cat", "kite", "horse", "cup", "bird"]
WITH = [["dog", "tree", "car"], ["cat", "bus"], ["kite", "boat", "bird", "man"], ["horse", "fence"],
        ["cup", "plate", "table"], ["bird", "cloud"]]
WITHOUT = [[o for o in s if o != x] for s, x in zip(WITH, SUBJECTS)]

ESTIMATORS = {"AtP": dict(atp_star=False), "AtP*": dict(atp_star=True), "IG8": dict(atp_star=False, ig_steps=8),
              "IG16": dict(atp_star=False, ig_steps=16), "IG32": dict(atp_star=False, ig_steps=32)}
SWEEPS = [("z", "layer_head"), ("q", "layer_head"), ("k", "layer_head"), ("resid_pre", "layer_pos")]
DIRECTIONS = ("denoise", "noise")
BIG = 0.1  # entries whose exact |effect| >= BIG x the sweep's largest enter the size ratio and the sign count


@dataclass
class Setup:
    name: str
    model: object  # what activation_patch / attribution_patch take
    tower: Optional[str]
    clean: object
    corrupt: object
    metric: Callable


# ----------------------------------------------------------------------------------------------- towers
def random_hf_clip(seed: int = 0) -> HookedCLIP:
    """A random transformers CLIPModel with tiny-negation's text shape (4 layers, 4 heads of 32), every
    parameter random as in tests/conftest.py (weights and biases N(0, 0.02), LayerNorm weights 1 + N(0, 0.1))."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig as HFVisionConfig

    text = CLIPTextConfig(hidden_size=128, intermediate_size=512, num_attention_heads=4, num_hidden_layers=4,
                          hidden_act="quick_gelu", projection_dim=128, eos_token_id=2)
    vision = HFVisionConfig(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_hidden_layers=2,
                            image_size=32, patch_size=8, projection_dim=128)
    torch.manual_seed(seed)
    hf = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=128))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "logit_scale" in name:
                continue
            noise = torch.randn(p.shape, generator=gen)
            is_ln = any(s in name for s in ("layer_norm", "pre_layrnorm", "post_layernorm", "final_layer_norm"))
            p.copy_(1 + 0.1 * noise if is_ln and name.endswith("weight") else 0.02 * noise)
        hf.logit_scale.fill_(4.2)
    return HookedCLIP.from_hf(hf.eval(), device="cpu")


def random_vit(seed: int = 0) -> HookedCLIPVision:
    """tests/integration/test_image_circuits.py's random ViT (32x32 pixels, patches of 8, 3 blocks of 2 heads),
    LayerNorm weights 1 + N(0, 0.2) and biases N(0, 0.1)."""
    cfg = CLIPVisionConfig.for_image(32, 8, d_model=32, n_heads=2, d_head=16, n_layers=3, d_mlp=64, d_proj=16,
                                     seed=seed, init_range=0.2, device="cpu")
    tower = HookedCLIPVision(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in tower.named_parameters():
            if name.endswith(".w"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".b") or name.split(".")[-1].startswith("b_"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return tower.eval()


def setups() -> list[Setup]:
    torch.manual_seed(0)
    toy = load_model("tiny-negation", device="cpu")
    pix = load_model("tiny-negation-pixels", device="cpu")
    rnd = random_hf_clip()
    vit = random_vit()
    with torch.no_grad():
        toy_img = toy.encode_image(SCENES)
        pix_img = pix.encode_image(render_images(SCENES))
        pix_txt = pix.encode_text([f"There is a {x}." for x in SUBJECTS])
        rnd_img = rnd.encode_image(preprocess(render_images(SCENES)))
    with_px, without_px = preprocess(render_images(WITH)), preprocess(render_images(WITHOUT))
    target = torch.randn(len(WITH), vit.cfg.d_proj, generator=torch.Generator().manual_seed(5))
    return [
        Setup("tiny-negation, text", toy, "text", NEG, AFF, similarity_metric(toy, toy_img)),
        Setup("tiny-negation-pixels, text", pix, "text", NEG, AFF, similarity_metric(pix, pix_img)),
        Setup("tiny-negation-pixels, image", pix, "vision", without_px, with_px, similarity_metric(pix, pix_txt)),
        Setup("random CLIP text tower", rnd, "text", NEG, AFF, similarity_metric(rnd, rnd_img)),
        Setup("random ViT", vit, None, without_px, with_px, cosine_to_target(target)),
    ]


# ---------------------------------------------------------------------------------------------- scores
def base_of(res, direction: str) -> torch.Tensor:
    return res.corrupt if direction == "denoise" else res.clean


def scores(est: torch.Tensor, exact: torch.Tensor, k: int) -> dict:
    """est / exact: effects [*index, batch] (NaN where a patch has no counterpart)."""
    x, y = est.flatten(0, -2), exact.flatten(0, -2)  # [entries, batch]
    ok = ~(torch.isnan(x) | torch.isnan(y))
    r = float(torch.corrcoef(torch.stack([x[ok], y[ok]]))[0, 1])
    overlap = []
    for b in range(y.shape[1]):
        keep = ok[:, b]
        xs, ys = x[keep, b].abs(), y[keep, b].abs()
        kk = min(k, len(ys))
        overlap.append(len(set(xs.topk(kk).indices.tolist()) & set(ys.topk(kk).indices.tolist())) / kk)
    big = ok & (y.abs() >= BIG * y[ok].abs().max())
    return dict(r=r, topk=sum(overlap) / len(overlap), size=float((x[big].abs() / y[big].abs()).median()),
                sign=float((torch.sign(x[big]) == torch.sign(y[big])).float().mean()), n_big=int(big.sum()))


_EXACT: dict = {}


def exact_patch(st: Setup, act: str, index: str, direction: str):
    """activation_patch of the sweep, computed once per (tower, act, index, direction)."""
    key = (st.name, act, index, direction)
    if key not in _EXACT:
        _EXACT[key] = activation_patch(st.model, st.clean, st.corrupt, st.metric, act, index=index,
                                       direction=direction, tower=st.tower, progress=False)
    return _EXACT[key]


def compare(st: Setup, act: str, index: str, direction: str, **opts) -> dict:
    """scores of attribution_patch(**opts) against exact patching of the same sweep."""
    exact = exact_patch(st, act, index, direction)
    est = attribution_patch(st.model, st.clean, st.corrupt, st.metric, act, index=index, direction=direction,
                            tower=st.tower, **opts)
    return scores(est.values - base_of(est, direction), exact.values - base_of(exact, direction),
                  3 if index == "layer_head" else 5)


def cell(s: Optional[dict]) -> str:
    return "" if s is None else f"{s['r']:+.2f} · {s['topk']:.2f} · {s['size']:.2f}"


def quality_table(all_setups: list[Setup]) -> list[str]:
    lines = ["| tower | act (index) | direction | " + " | ".join(ESTIMATORS) + " |",
             "|---|---|---|" + "---|" * len(ESTIMATORS)]
    for st in all_setups:
        for (act, index), direction in itertools.product(SWEEPS, DIRECTIONS):
            row = [None if name == "AtP*" and act not in ("q", "k") else compare(st, act, index, direction, **opts)
                   for name, opts in ESTIMATORS.items()]
            lines.append(f"| {st.name} | {act} ({index}) | {direction} | " + " | ".join(cell(s) for s in row) + " |")
    return lines


# -------------------------------------------------------------------------------------- the diagnosis
class Frozen:
    """Exact head patching and AtP of ``z`` on a text tower, written here with plain hooks (every head's patch
    as its own block of rows of one forward), optionally with parts of the network frozen at the base run:

    - ``LN``: every LayerNorm scale (ln1, ln2 of each block, ln_final) and the text embedding's norm |t| in the
      cosine; or parts of them: ``block LN`` (ln1, ln2), ``ln_final``, ``norm(t)``, ``L{l} ln{i}``;
    - ``pattern``: every attention pattern;
    - ``MLP``: every MLP gate, i.e. the activation is applied as pre * (act(pre_base) / pre_base).

    With all three frozen the metric is linear in any head's z, so AtP must equal exact patching there (checked)."""

    def __init__(self, model: HookedCLIP, clean, corrupt, image_embeds: torch.Tensor, direction: str):
        self.text = model.text
        pair = RunPair.build(self.text, clean, corrupt, direction)
        self.base, self.source = pair.base, pair.source
        scale, _ = logit_parameters(model)
        self.scale = float(scale)
        self.image = torch.nn.functional.normalize(image_embeds.detach(), dim=-1)
        self.L, self.H = self.text.cfg.n_layers, self.text.cfg.n_heads
        with torch.no_grad():
            t, self.base_cache = self.text.run_with_cache(self.base, return_type="embed")
            self.base_norm = t.norm(dim=-1)
            _, src = self.text.run_with_cache(self.source, return_type="embed",
                                              names_filter=lambda n: n.endswith("hook_z"))
        self.z = {l: self.base_cache[f"blocks.{l}.attn.hook_z"] for l in range(self.L)}
        self.z_src = {l: src[f"blocks.{l}.attn.hook_z"] for l in range(self.L)}
        self.gate = {}  # act(pre) / pre at the base run; 0.5 (the slope of GELU-like activations at 0) where pre ~ 0
        for l in range(self.L):
            pre, post = self.base_cache[f"blocks.{l}.mlp.hook_pre"], self.base_cache[f"blocks.{l}.mlp.hook_post"]
            small = pre.abs() < 1e-6
            ratio = post / torch.where(small, torch.ones_like(pre), pre)
            self.gate[l] = torch.where(small, torch.full_like(pre, 0.5), ratio)

    def metric(self, t: torch.Tensor, frozen: tuple, rep: int = 1) -> torch.Tensor:
        t = t.view(rep, -1, t.shape[-1])
        norm = self.base_norm if ("LN" in frozen or "norm(t)" in frozen) else t.norm(dim=-1)
        return (self.scale * (t * self.image).sum(-1) / norm).flatten()

    def freeze_hooks(self, frozen: tuple, rep: int = 1) -> list:
        def const(name):
            value = self.base_cache[name]
            return lambda act, hook: value.repeat(rep, *[1] * (value.ndim - 1))

        hooks = []
        if "LN" in frozen or "block LN" in frozen:
            hooks += [(n, const(n)) for n in (f"blocks.{l}.ln{i}.hook_scale" for l in range(self.L) for i in (1, 2))]
        if "LN" in frozen or "ln_final" in frozen:
            hooks.append(("ln_final.hook_scale", const("ln_final.hook_scale")))
        for l in range(self.L):
            for i in (1, 2):
                if f"L{l} ln{i}" in frozen:
                    hooks.append((f"blocks.{l}.ln{i}.hook_scale", const(f"blocks.{l}.ln{i}.hook_scale")))
        if "pattern" in frozen:
            hooks += [(n, const(n)) for n in (f"blocks.{l}.attn.hook_pattern" for l in range(self.L))]
        if "MLP" in frozen:
            store = {}
            for l in range(self.L):
                gate = self.gate[l].repeat(rep, 1, 1)

                def keep(act, hook, l=l):
                    store[l] = act
                    return act

                hooks += [(f"blocks.{l}.mlp.hook_pre", keep),
                          (f"blocks.{l}.mlp.hook_post", lambda act, hook, l=l, g=gate: store[l] * g)]
        return hooks

    def patched(self, specs: list[tuple[int, int, float]], frozen: tuple = (), extra: list = ()) -> torch.Tensor:
        """The metric with head (l, h)'s z set to base + alpha (source - base), one (l, h, alpha) per block of
        rows of a single forward: [spec, batch]. ``extra``: more forward hooks (e.g. to record)."""
        rep, B = len(specs), self.base.shape[0]
        hooks = []
        for l in sorted({sp[0] for sp in specs}):
            def patch(z, hook, l=l):
                z = z.clone()
                for j, (ll, h, a) in enumerate(specs):
                    if ll == l:
                        rows = slice(j * B, (j + 1) * B)
                        z[rows, :, h] = self.z[l][:, :, h] + a * (self.z_src[l][:, :, h] - self.z[l][:, :, h])
                return z

            hooks.append((f"blocks.{l}.attn.hook_z", patch))
        with torch.no_grad():
            t = self.text.run_with_hooks(self.base.repeat(rep, 1), return_type="embed",
                                         fwd_hooks=self.freeze_hooks(frozen, rep) + hooks + list(extra))
        return self.metric(t, frozen, rep).view(rep, B)

    def interpolate(self, l: int, h: int, alphas: list[float], frozen: tuple = ()) -> torch.Tensor:
        """Effect of patching alpha x (z_source - z_base) into head (l, h): [alpha, batch]."""
        f = self.patched([(l, h, float(a)) for a in alphas], frozen)
        return f - f[0] if alphas[0] == 0 else f

    def final_scale(self, l: int, h: int, alphas: list[float]) -> torch.Tensor:
        """ln_final's scale at the pooling position with alpha x (z_source - z_base) patched into head (l, h),
        nothing frozen: [alpha, batch]."""
        rec = {}

        def keep(x, hook):
            rec["scale"] = x
            return x

        self.patched([(l, h, float(a)) for a in alphas], extra=[("ln_final.hook_scale", keep)])
        scale = rec["scale"].view(len(alphas), self.base.shape[0], -1)
        pool = self.text.pool_positions(self.base)
        return scale[:, torch.arange(self.base.shape[0]), pool] if scale.shape[-1] > 1 else scale[..., 0]

    def exact(self, frozen: tuple = ()) -> torch.Tensor:
        """Effect of patching each head's z: [layer, head, batch]."""
        specs = [(0, 0, 0.0)] + [(l, h, 1.0) for l in range(self.L) for h in range(self.H)]
        f = self.patched(specs, frozen)
        return (f[1:] - f[0]).view(self.L, self.H, -1)

    def atp(self, frozen: tuple = ()) -> torch.Tensor:
        """(z_source - z_base) . d metric / d z at the base run, per head: [layer, head, batch]."""
        acts = {}

        def keep(z, hook):
            z.retain_grad()
            acts[hook.name] = z
            return z

        leaf = (self.text.input_embed_hook, lambda e, hook: e.detach().requires_grad_(True))  # a graph whatever
        with torch.enable_grad():  # the parameters' requires_grad
            hooks = [leaf] + self.freeze_hooks(frozen) + [(f"blocks.{l}.attn.hook_z", keep) for l in range(self.L)]
            t = self.text.run_with_hooks(self.base, return_type="embed", fwd_hooks=hooks)
            self.metric(t, frozen).sum().backward()
        return torch.stack([((self.z_src[l] - self.z[l]) * acts[f"blocks.{l}.attn.hook_z"].grad).sum((1, 3)).T
                            for l in range(self.L)])


def embedding_path(model: HookedCLIP, metric, n: int = 21) -> tuple[torch.Tensor, torch.Tensor]:
    """The metric with the token embeddings interpolated from the affirmative run (alpha = 0) to the negated
    one (alpha = 1), the path integrated gradients average over: (alphas, [alpha, batch])."""
    pair = RunPair.build(model.text, NEG, AFF, "denoise")
    name = model.text.input_embed_hook
    with torch.no_grad():
        _, base = model.text.run_with_cache(pair.base, names_filter=[name])
        _, src = model.text.run_with_cache(pair.source, names_filter=[name])
        alphas = torch.linspace(0, 1, n)
        a = alphas.repeat_interleave(pair.base.shape[0])[:, None, None]
        e = base[name].repeat(n, 1, 1) * (1 - a) + src[name].repeat(n, 1, 1) * a
        t = model.text.run_with_hooks(pair.base.repeat(n, 1), return_type="normalized",
                                      fwd_hooks=[(name, lambda x, hook: e)])
    return alphas, metric(t.view(n, -1, t.shape[-1]))


def saturation(model: HookedCLIP, texts: list[str]) -> list[str]:
    """Mean largest attention weight per query row (real tokens only), per layer, and the share of rows whose
    largest weight is above 0.9; for the pooling (EOT) row alone too."""
    tokens = model.text.as_tokens(texts)
    pool = model.text.pool_positions(tokens)
    with torch.no_grad():
        _, cache = model.text.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    out = []
    for l in range(model.text.cfg.n_layers):
        p = cache[f"blocks.{l}.attn.hook_pattern"]  # [b, head, q, k]
        top = p.max(-1).values  # [b, head, q]
        rows = torch.arange(p.shape[2])[None, :] <= pool[:, None]  # [b, q]: real query rows
        vals = top.permute(0, 2, 1)[rows]  # [rows, head]
        eot = top[torch.arange(p.shape[0]), :, pool]  # [b, head]
        out.append(f"layer {l}: mean max weight {vals.mean():.2f} (rows > 0.9: {(vals > 0.9).float().mean():.0%}); "
                   f"EOT row {eot.mean():.2f} ({(eot > 0.9).float().mean():.0%})")
    return out


def tower_of(st: Setup):
    return st.model if st.tower is None else getattr(st.model, st.tower)


def residual_change(st: Setup, direction: str, l: int, h: int) -> tuple[float, float]:
    """Patch head (l, h)'s z fully; at the residual the final LayerNorm reads (last block's output, at the
    pooling position: EOT for text, the class token for the ViT) return the mean over examples of
    cos(change, base residual) and |change| / |base residual|."""
    tower = tower_of(st)
    pair = RunPair.build(tower, st.clean, st.corrupt, direction)
    pool = tower.pool_positions(pair.base) if st.tower == "text" else None
    if pool is None:
        pool = torch.zeros(pair.base.shape[0], dtype=torch.long)  # the class token
    z_name, out = f"blocks.{l}.attn.hook_z", f"blocks.{tower.cfg.n_layers - 1}.hook_resid_post"
    rows = torch.arange(pair.base.shape[0])
    with torch.no_grad():
        _, src = tower.run_with_cache(pair.source, names_filter=[z_name])
        _, base = tower.run_with_cache(pair.base, names_filter=[out])
        rec = {}

        def patch(z, hook):
            z = z.clone()
            z[:, :, h] = src[z_name][:, :, h]
            return z

        def keep(x, hook):
            rec["x"] = x
            return x

        tower.run_with_hooks(pair.base, fwd_hooks=[(z_name, patch), (out, keep)])
    x = base[out][rows, pool]
    d = rec["x"][rows, pool] - x
    cos = torch.nn.functional.cosine_similarity(d, x, dim=-1)
    return float(cos.mean()), float((d.norm(dim=-1) / x.norm(dim=-1)).mean())


def radial_table(all_setups: list[Setup]) -> list[str]:
    lines = ["", "The residual change one head's patch makes where the final LayerNorm reads it (the 2 heads with the "
             "largest mean |exact effect|; mean over examples):",
             "| tower | direction | head | cos(change, residual) | abs(change) / abs(residual) |",
             "|---|---|---|---|---|"]
    for st in all_setups:
        for direction in DIRECTIONS:
            ex = exact_patch(st, "z", "layer_head", direction)
            y = (ex.values - base_of(ex, direction)).abs().mean(-1)
            for i in y.flatten().topk(2).indices.tolist():
                l, h = divmod(i, y.shape[1])
                cos, rel = residual_change(st, direction, l, h)
                lines.append(f"| {st.name} | {direction} | L{l}H{h} | {cos:+.2f} | {rel:.2f} |")
    return lines


def diagnosis(st: Setup) -> list[str]:
    pix, metric = st.model, st.metric
    img = pix.encode_image(render_images(SCENES)).detach()
    lines = ["", "## Diagnosis: tiny-negation-pixels, text tower, z per head", ""]
    lines.append("Attention saturation on the affirmative runs (the base of denoise) and the negated runs (noise):")
    for label, texts in (("affirmative", AFF), ("negated", NEG)):
        lines += [f"  {label}: {s}" for s in saturation(pix, texts)]
    lines += ["", "AtP on the attention pattern vs on z, against exact patching of the same "
              "(r · top-3 · size · sign):"]
    for direction in DIRECTIONS:
        parts = [f"{act}: {cell(sc)} · {sc['sign']:.2f}" for act in ("z", "pattern")
                 for sc in [compare(st, act, "layer_head", direction)]]
        lines.append(f"  {direction:7s} " + "   ".join(parts))

    lines += ["", "Integrated gradients with more steps (z per head; r · top-3 · size):"]
    for direction in DIRECTIONS:
        parts = [f"IG{k}: {cell(compare(st, 'z', 'layer_head', direction, ig_steps=k))}" for k in (8, 16, 32, 64)]
        ig = {k: attribution_patch(pix, NEG, AFF, metric, "z", index="layer_head", direction=direction,
                                   ig_steps=k).values for k in (8, 64)}
        spread = float((ig[8] - ig[64]).abs().max())
        lines.append(f"  {direction:7s} " + "   ".join(parts) + f"   max |IG8 - IG64| {spread:.1f} logits")
    lines += ["", "S along integrated gradients' path (token embeddings from the affirmative run, alpha = 0, to the "
              "negated run, alpha = 1), mean over the 8 pairs:"]
    alphas, path = embedding_path(pix, metric)
    lines.append("  " + " ".join(f"{a:.2f}:{v:.1f}" for a, v in zip(alphas.tolist(), path.mean(-1).tolist())))
    lines += ["", "AtP vs exact patching with parts of the network frozen at the base run (plain hooks, written here):",
              "| frozen | direction | r | top-3 | size | sign | exact: sum over heads / (clean - corrupt) |",
              "|---|---|---|---|---|---|---|"]
    combos = [(), ("LN",), ("block LN",), ("ln_final", "norm(t)"), ("pattern",), ("MLP",), ("LN", "pattern"),
              ("LN", "MLP"), ("pattern", "MLP"), ("LN", "pattern", "MLP")]
    curves, per_pair, scales = {}, [], []
    for direction in DIRECTIONS:
        fz = Frozen(pix, NEG, AFF, img, direction)
        lib_exact = exact_patch(st, "z", "layer_head", direction)
        lib_atp = attribution_patch(pix, NEG, AFF, metric, "z", index="layer_head", direction=direction)
        base = base_of(lib_exact, direction)
        ex0, at0 = fz.exact(), fz.atp()
        check = max(float((ex0 - (lib_exact.values - base)).abs().max()),
                    float((at0 - (lib_atp.values - base)).abs().max()))
        assert check < 1e-3, f"the plain-hook loop disagrees with the library by {check}"
        gap = (lib_exact.clean - lib_exact.corrupt) * (1 if direction == "denoise" else -1)
        top = ex0.abs().mean(-1).flatten().topk(2).indices.tolist()
        l, h = divmod(top[0], fz.H)
        def two_largest(effects):
            mean = effects.mean(-1).flatten()
            return ", ".join(f"L{i // fz.H}H{i % fz.H} {mean[i]:+.2f}" for i in mean.abs().topk(2).indices.tolist())

        per_pair.append(f"  {direction:7s} two largest |mean over pairs|: exact {two_largest(ex0)}; "
                        f"AtP {two_largest(at0)}")
        per_pair.append(f"  {direction:7s} L{l}H{h}: exact " + " ".join(f"{v:+.2f}" for v in ex0[l, h].tolist())
                        + "\n  " + " " * 8 + "        AtP " + " ".join(f"{v:+.2f}" for v in at0[l, h].tolist()))
        for frozen in combos:
            ex, at = fz.exact(frozen), fz.atp(frozen)
            s = scores(at, ex, 3)
            lines.append(f"| {' + '.join(frozen) or 'nothing'} | {direction} | {s['r']:+.2f} | {s['topk']:.2f} | "
                         f"{s['size']:.2f} | {s['sign']:.2f} | {float(ex.sum((0, 1)).mean() / gap.mean()):.2f} |")
        alphas = [i / 10 for i in range(11)]
        l, h = divmod(top[0], fz.H)
        scale = fz.final_scale(l, h, alphas).mean(-1)
        scales.append(f"  {direction:7s} L{l}H{h}: " + " ".join(f"{v:.2f}" for v in scale.tolist()))
        for l, h in ((i // fz.H, i % fz.H) for i in top):
            for frozen in ((), ("LN",), ("pattern",), ("MLP",)):
                f = fz.interpolate(l, h, alphas, frozen)  # [alpha, batch]
                slope = fz.atp(frozen)[l, h]  # AtP's estimate of f(1) - f(0): the slope at alpha = 0
                curves[direction, (l, h), frozen] = (f, slope)
    fz = Frozen(pix, NEG, AFF, img, "denoise")
    one = [f"L{l} ln{i} {scores(fz.atp((f'L{l} ln{i}',)), fz.exact((f'L{l} ln{i}',)), 3)['r']:+.2f}"
           for l in range(fz.L) for i in (1, 2)]
    lines += ["", "One block LayerNorm scale frozen at a time (denoise; r): " + ", ".join(one)]
    lines += ["", "The largest head, per pair (effect on S in logits; exact patching, then AtP's estimate):"] + per_pair
    lines += ["", "Exact effect of patching alpha x (z_source - z_base) into the largest heads, mean over the 8 pairs",
              "(logits; AtP = the tangent at alpha = 0, i.e. AtP's estimate at alpha = 1):"]
    lines.append("| head | direction | frozen | " + " | ".join(f"{i / 10:.1f}" for i in range(11)) + " | AtP |")
    lines.append("|---|---|---|" + "---|" * 12)
    for (direction, (l, h), frozen), (f, slope) in curves.items():
        lines.append(f"| L{l}H{h} | {direction} | {' + '.join(frozen) or 'nothing'} | "
                     + " | ".join(f"{v:+.2f}" for v in f.mean(-1).tolist()) + f" | {slope.mean():+.2f} |")
    lines += ["", "ln_final's scale at the pooling position along the same patch of the largest head, "
              "alpha = 0, 0.1, .., 1 (mean over pairs; nothing frozen):"] + scales
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-table", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(True)
    all_setups = setups()
    load = " ".join(open("/proc/loadavg").read().split()[:3])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average at start {load}")
    start = time.perf_counter()
    if not args.skip_table:
        print("cells: Pearson r · top-k overlap (k = 3 heads, 5 positions) · size = median |est| / |exact| "
              f"over entries with |exact| >= {BIG} x the largest")
        print("\n".join(quality_table(all_setups)))
        print(f"(table: {time.perf_counter() - start:.0f} s)", file=sys.stderr)
    print("\n".join(diagnosis(all_setups[1])))
    print("\n".join(radial_table(all_setups)))
    print(f"(all: {time.perf_counter() - start:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
