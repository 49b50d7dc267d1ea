"""Shared fixtures: random-init reference models (HF transformers, open_clip) and our loaded copies.

No weights are downloaded: every model is built from a config with a fixed seed, and every parameter
(biases and LayerNorm weights included) is randomised so that no conversion can pass by accident.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import itertools
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from torch import nn

VALSE = Path(__file__).resolve().parents[1] / "analyses" / "valse_negation" / "data" / "existence.json"


def randomize_tower_(tower: nn.Module, seed: int, ln_std: float = 0.2, bias_std: float = 0.1) -> nn.Module:
    """A hooked tower's LayerNorm weights ~ 1 + N(0, ln_std) and biases ~ N(0, bias_std) (its own random init
    leaves them at 1 and 0, which hide bugs); its weights stay as its init drew them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in tower.named_parameters():
            if name.endswith(".w"):
                p.copy_(1 + ln_std * torch.randn(p.shape, generator=gen))
            elif name.endswith(".b") or name.split(".")[-1].startswith("b_"):
                p.copy_(bias_std * torch.randn(p.shape, generator=gen))
    return tower


def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Every float parameter random: weights ~ N(0, 0.02), biases ~ N(0, 0.02), LayerNorm weights ~ 1 + N(0, 0.1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "logit_scale" in name or "logit_bias" in name:
                continue
            noise = torch.randn(p.shape, generator=gen)
            is_ln = any(s in name for s in ("layer_norm", "layernorm", "ln_", "ln_final", "ln_pre", "ln_post", "pre_layrnorm", "post_layernorm"))
            if is_ln and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.02 * noise)
    return model.eval()


@dataclass(frozen=True)
class TextSpec:
    """One text-tower configuration of the parity suite."""

    name: str
    width: int
    heads: int
    layers: int
    act: str  # quick_gelu | gelu
    pooling: str  # argmax | eot
    proj: int = 32


SPECS = {
    "vitb32": TextSpec("vitb32", 512, 8, 12, "quick_gelu", "argmax", proj=512),
    "laion_gelu": TextSpec("laion_gelu", 256, 4, 3, "gelu", "eot", proj=128),
    "tiny_argmax": TextSpec("tiny_argmax", 64, 2, 2, "quick_gelu", "argmax"),
    "tiny_eot": TextSpec("tiny_eot", 64, 2, 2, "gelu", "eot"),
    "one_layer": TextSpec("one_layer", 64, 2, 1, "quick_gelu", "argmax"),
}

MIXED_TEXTS = [
    "There are no people in the picture.",
    "There is a cat.",
    "A man in a red jacket is riding a bicycle down a busy street next to a bus.",
    "no",
    "",
    "There are some elephants with tusks in the water, naïve café 123!",
]


@lru_cache(maxsize=None)
def hf_clip(spec_name: str, with_vision: bool = True, seed: int = 0):
    """A random transformers CLIPModel (small vision tower) or CLIPTextModelWithProjection."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig

    s = SPECS[spec_name]
    text_cfg = CLIPTextConfig(
        hidden_size=s.width, intermediate_size=4 * s.width, num_attention_heads=s.heads,
        num_hidden_layers=s.layers, hidden_act=s.act, projection_dim=s.proj,
        eos_token_id=2 if s.pooling == "argmax" else 49407,
    )
    torch.manual_seed(seed)
    if not with_vision:
        return randomize_(CLIPTextModelWithProjection(text_cfg), seed)
    vision_cfg = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_hidden_layers=2,
                                  image_size=64, patch_size=16, hidden_act=s.act, projection_dim=s.proj)
    cfg = CLIPConfig(text_config=text_cfg.to_dict(), vision_config=vision_cfg.to_dict(), projection_dim=s.proj)
    model = randomize_(CLIPModel(cfg), seed)
    with torch.no_grad():
        model.logit_scale.fill_(4.2)
    return model


def open_clip_text_cfg(spec_name: str) -> dict:
    s = SPECS[spec_name]
    return dict(context_length=77, vocab_size=49408, width=s.width, heads=s.heads, layers=s.layers,
                pool_type="argmax" if s.pooling == "argmax" else "eos",
                eos_id=49407)


@lru_cache(maxsize=None)
def open_clip_model(spec_name: str, seed: int = 1):
    """A random open_clip CLIP with the spec's text tower and a small vision tower."""
    from open_clip.model import CLIP

    s = SPECS[spec_name]
    torch.manual_seed(seed)
    model = CLIP(
        embed_dim=s.proj,
        vision_cfg=dict(image_size=64, layers=2, width=64, patch_size=16, head_width=32),
        text_cfg=open_clip_text_cfg(spec_name),
        quick_gelu=s.act == "quick_gelu",
    )
    model = randomize_(model, seed)
    with torch.no_grad():
        model.logit_scale.fill_(3.9)
    return model


def pixels(size: int, n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def open_clip_vit(seed: int = 2, layers: int = 2, act: str = "gelu", **kw):
    from open_clip.transformer import QuickGELU, VisionTransformer

    torch.manual_seed(seed)
    act_layer = {"quick_gelu": QuickGELU, "gelu": torch.nn.GELU,
                 "gelu_tanh": lambda: torch.nn.GELU(approximate="tanh")}[act]
    return randomize_(VisionTransformer(image_size=48, patch_size=16, width=64, layers=layers, heads=4,
                                        mlp_ratio=3.0, output_dim=24, act_layer=act_layer, **kw), seed)


@lru_cache(maxsize=1)
def valse_sentences() -> tuple[str, ...]:
    data = json.loads(VALSE.read_text())
    out = []
    for item in data.values():
        out += [item["caption"], item["foil"], item["declarative_statement"], *item["declarative_statement_foils"]]
    # the paper's aligned affirmatives ("There are X" -> "There are some X")
    out += [s.replace("There are ", "There are some ", 1) for s in out if s.startswith("There are ") and " no " not in s]
    return tuple(dict.fromkeys(out))  # unique, in order


# ------------------------------------------------------------ tokenizer files made offline
def wordpiece(folder: Path):
    """BERT's WordPiece ([CLS] ... [SEP], [PAD] = 0) written as a checkpoint's files (vocab.txt and its
    tokenizer_config.json), then read back as transformers reads a checkpoint's tokenizer."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import AutoTokenizer

    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(list(valse_sentences()), vocab_size=1000, min_frequency=1)
    folder.mkdir(parents=True, exist_ok=True)
    wp.save_model(str(folder))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}))
    tok = AutoTokenizer.from_pretrained(folder)
    pieces = tok.convert_ids_to_tokens(tok("There are no cats.").input_ids)
    assert (pieces[0], pieces[-1]) == ("[CLS]", "[SEP]")
    return tok


def roberta_bpe(folder: Path):
    """RoBERTa's byte-level BPE with its special ids (<s>=0, <pad>=1, </s>=2, as XLM-R lays them out), written as a
    checkpoint's files (vocab.json, merges.txt, tokenizer_config.json)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoTokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(valse_sentences()), vocab_size=1000, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    folder.mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(folder))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "RobertaTokenizer"}))
    tok = AutoTokenizer.from_pretrained(folder)
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id) == (0, 1, 2)
    return tok



@pytest.fixture(scope="session")
def tiny_model():
    """Our model loaded from a tiny random HF CLIP (with an image tower), built once per session. Tests must
    not change its weights or config (use ``hooks()`` / ``options()``, or build their own)."""
    from hooked_clip import HookedCLIP

    return HookedCLIP.from_hf(hf_clip("tiny_eot"), device="cpu")


@pytest.fixture(scope="session")
def model(tiny_model):
    """The default model of a test module: :func:`tiny_model` (a module may define its own ``model``)."""
    return tiny_model


def largest_difference(a, b) -> float:
    """Largest difference between the numbers of two results (NaN equals NaN); everything else must be equal."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return max([largest_difference(a[k], b[k]) for k in a], default=0.0)
    if isinstance(a, list):
        assert len(a) == len(b)
        return max([largest_difference(x, y) for x, y in zip(a, b)], default=0.0)
    if isinstance(a, float):
        return 0.0 if a == b or (a != a and b != b) else abs(a - b)
    assert a == b
    return 0.0


# ------------------------------------------------------------------------------ the one loop reference
_PER_HEAD = ("z", "q", "k", "v", "pattern")  # written here: the reference shares no tables with the engine


def patch_loop(tower, clean, corrupt, metric, act: str, index: str, direction: str = "denoise", source_tower=None):
    """TransformerLens-style activation patching, one full forward per patch, the hook written here.

    Layers, positions and heads are enumerated from the tower and the inputs — ``tower.cfg.n_layers``,
    ``tower.cfg.n_heads`` and the positions the patched run actually computes (its cached residual) — never
    from a result under test. ``clean``/``corrupt`` are the tower's inputs (token ids or pixels); ``source_tower``:
    the tower (another checkpoint) the source run is recorded on, ``tower`` by default. Returns
    (values [layer, (pos), (head), batch], labels {axis: list}) so a test compares the labels too."""
    from transformer_lens.utilities import get_act_name

    source, target = (clean, corrupt) if direction == "denoise" else (corrupt, clean)
    with torch.no_grad():
        _, cache = (tower if source_tower is None else source_tower).run_with_cache(source)
        _, target_cache = tower.run_with_cache(target, names_filter=[get_act_name("resid_pre", 0)])
    labels = {"layer": list(range(tower.cfg.n_layers))}
    if "pos" in index.split("_"):
        labels["pos"] = list(range(target_cache[get_act_name("resid_pre", 0)].shape[1]))
    if "head" in index.split("_"):
        labels["head"] = list(range(tower.cfg.n_heads))
    axes = list(labels)
    values = torch.empty(*[len(labels[a]) for a in axes], target.shape[0])
    for idx in itertools.product(*[range(len(labels[a])) for a in axes]):
        where = {a: labels[a][i] for a, i in zip(axes, idx)}

        def hook(x, hook, where=where):
            x = x.clone()
            pos, head = where.get("pos", slice(None)), where.get("head", slice(None))
            sl = (slice(None), head, pos) if act == "pattern" else (slice(None), pos, head) if act in _PER_HEAD \
                else (slice(None), pos)
            x[sl] = cache[hook.name][sl]
            return x

        with torch.no_grad():
            out = tower.run_with_hooks(target, return_type="normalized",
                                       fwd_hooks=[(get_act_name(act, where["layer"]), hook)])
        values[idx] = metric(out)
    return values, labels


def assert_matches_loop(result, tower, clean, corrupt, metric, atol: float = 1e-5, source_tower=None):
    """The engine's result equals :func:`patch_loop` in labels (every layer, position and head, in order)
    and in values."""
    index = "_".join(result.axes)
    values, labels = patch_loop(tower, clean, corrupt, metric, result.act_name, index, result.direction, source_tower)
    assert {a: list(result.labels[a]) for a in result.axes} == labels
    assert (result.values - values).abs().max() <= atol


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one CPU thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): the demo
    models' small matrices gain nothing from more, and two threads on a busy machine can run 30x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
