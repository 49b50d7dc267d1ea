"""The setting several benchmarks share: a random ViT-B/32-sized text tower (seed 0) as a HookedCLIP with CLIP's
logit scale, the first ``n_pairs`` aligned VALSE existence pairs, and a similarity metric against random image
embeddings (random weights: the numbers are about speed and agreement, not about trained CLIP)."""

from __future__ import annotations

import math

import torch

from hooked_clip import CLIPTextConfig, HookedCLIP, HookedCLIPText
from hooked_clip.analyses.metrics import similarity_metric
from hooked_clip.analyses.valse_negation.data import aligned_pairs, load_items


def random_negation_setup(n_pairs: int, device: str = "cpu", threads=None):
    """(model, negated sentences, affirmative sentences, metric); ``threads``: torch CPU threads (None: torch's)."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = HookedCLIP(HookedCLIPText(CLIPTextConfig(seed=0, device=device)), logit_scale=math.log(100.0))
    pairs = aligned_pairs(load_items())[:n_pairs]
    neg, aff = [p.negated for p in pairs], [p.affirmative for p in pairs]
    metric = similarity_metric(model, torch.randn(len(pairs), model.cfg.d_proj, device=device))
    return model, neg, aff, metric
