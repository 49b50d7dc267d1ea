"""The support table: every open_clip model name and every CLIP-family transformers class, exact or refused.

For each ``open_clip.list_models()`` name the real model class (``CLIP`` / ``CustomTextCLIP``) is built from
the name's own config with ``pretrained=None`` at reduced depth (``--layers``, default 2) — same widths,
activation, norm eps, pooling, causal mask, projection, pad/EOS ids — with a tiny ViT in place of the image
tower (the text tower does not depend on it) and, for vocabularies over 65,536 ids (XLM-V, mT5), the
embedding cut to 65,536 rows (ids above it are not drawn). Every parameter is randomised (LayerNorm
weights and biases included), then ``HookedCLIP.from_open_clip`` loads it and the max |ours - open_clip|
is measured on every block's output and on ``encode_text``, over random ids laid out as the tokenizer
lays them out (EOS/EOT placed, padding after it). transformers classes are built from tiny configs and
compared with their own ``get_text_features`` / text-model output the same way.

    python benchmarks/support.py                 # all names, writes docs/models/support.md (18 min measured
                                                 # on 2 CPU cores shared with other jobs)
    python benchmarks/support.py --layers 0      # full depth (slow: builds every tower at full size)
    python benchmarks/support.py --names ViT-B-16-SigLIP2 MobileCLIP-S1 --out -   # a few, printed

The test suite (tests/integration/test_support.py) runs one name per text-tower architecture at reduced width.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
from torch import nn  # noqa: E402

from hooked_clip import HookedCLIP  # noqa: E402
from hooked_clip.errors import CheckpointMismatchError  # noqa: E402
from hooked_clip.loaders.families import find_family, refused_classes, supported_classes  # noqa: E402
from hooked_clip.parity import capture_block_outputs, parity_errors  # noqa: E402

HF_CLASSES = supported_classes("transformers")
REFUSED_HF_CLASSES = refused_classes("transformers")

ATOL = 1e-5
MAX_VOCAB = 65536
TINY_VISION = dict(image_size=32, layers=1, width=32, patch_size=16, head_width=32)
ROOT = Path(__file__).resolve().parents[1]
_ARCH_FIELDS_IGNORED = ("width", "heads", "layers", "context_length", "vocab_size", "mlp_ratio",
                        "hf_tokenizer_name", "tokenizer_kwargs")


@dataclass
class Row:
    name: str
    source: str  # "open_clip" | "transformers"
    family: str
    status: str  # "exact" | "refused" | "MISMATCH" | "error"
    max_error: Optional[float] = None
    tokenizer: str = ""
    note: str = ""


def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Every float parameter random: weights and biases ~ N(0, 0.02), LayerNorm weights ~ 1 + N(0, 0.1)."""
    gen = torch.Generator().manual_seed(seed)
    norms = {n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "logit_scale" in name or "logit_bias" in name:
                continue
            noise = torch.randn(p.shape, generator=gen)
            is_ln_weight = name.rsplit(".", 1)[0] in norms and name.endswith("weight")
            p.copy_(1 + 0.1 * noise if is_ln_weight else 0.02 * noise)
    return model.eval()


# ------------------------------------------------------------------------------------------ open_clip
def shipped_open_clip_names() -> list[str]:
    """``open_clip.list_models()`` as installed (names registered at run time with ``add_model_config``,
    e.g. by tests, left out)."""
    import open_clip

    shipped = {p.stem for p in (Path(open_clip.__file__).parent / "model_configs").glob("*.json")}
    return [n for n in open_clip.list_models() if n in shipped]


def open_clip_architecture(name: str) -> str:
    """A key shared by names whose text towers differ only in size (and tokenizer files)."""
    import open_clip

    cfg = open_clip.get_model_config(name)
    text = {k: v for k, v in cfg["text_cfg"].items() if k not in _ARCH_FIELDS_IGNORED}
    text["quick_gelu"] = bool(cfg.get("quick_gelu", False))
    text["custom_text"] = bool(cfg.get("custom_text", False))
    text["coca"] = "multimodal_cfg" in cfg
    return json.dumps(text, sort_keys=True)


def _tokenizer_note(name: str, text_cfg: dict) -> str:
    hf = text_cfg.get("hf_tokenizer_name")
    return f"HF `{hf}`" if hf else "CLIP BPE"


# The transformers configs open_clip's hf_model_name towers download by name (AutoConfig.from_pretrained),
# transcribed from their hub config.json so the sweep builds the same modules offline (HFTextEncoder takes a
# config object; tests/integration/test_post_ln.py checks the converter on tiny ones).
HF_TEXT_CONFIGS = {
    "roberta-base": ("RobertaConfig", dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12,
                                           num_attention_heads=12, intermediate_size=3072)),
    "xlm-roberta-base": ("XLMRobertaConfig", dict(vocab_size=250002, hidden_size=768, num_hidden_layers=12,
                                                  num_attention_heads=12, intermediate_size=3072)),
    "xlm-roberta-large": ("XLMRobertaConfig", dict(vocab_size=250002, hidden_size=1024, num_hidden_layers=24,
                                                   num_attention_heads=16, intermediate_size=4096)),
}
_ROBERTA_COMMON = dict(max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
                       eos_token_id=2, layer_norm_eps=1e-5, hidden_act="gelu")


def _family(text_cfg: dict) -> str:
    hf = text_cfg.get("hf_tokenizer_name", "") or ""
    if text_cfg.get("embed_cls"):
        return "coca"
    if text_cfg.get("hf_model_name"):
        return "hf-text (post-LN)"
    if "SigLIP2" in hf:
        return "siglip2"
    if "SigLIP" in hf:
        return "siglip"
    if "bert" in hf:
        return "clipa"
    if "xlm-v" in hf or "mt5" in hf:
        return "worldwide"
    return "clip-bidirectional" if text_cfg.get("no_causal_mask") else "clip"


def _tokens(cfg, n: int = 4, seed: int = 0) -> torch.Tensor:
    """Random ids laid out as the model's tokenizer lays them out: a row of text ids, its EOS/EOT (the
    largest id for argmax pooling), then padding (to the context length)."""
    gen = torch.Generator().manual_seed(seed)
    vocab, ctx = cfg.d_vocab, cfg.max_text_tokens
    top = vocab - 1 if cfg.pooling == "argmax" else vocab
    tokens = torch.randint(3, max(top, 4), (n, ctx), generator=gen)
    eot = vocab - 1 if cfg.pooling == "argmax" else cfg.eot_token_id
    tokens[tokens == eot] = 3
    for i, end in enumerate(torch.linspace(2, ctx - 1, n).long().tolist()):
        if cfg.pooling in ("argmax", "eot"):
            tokens[i, end] = eot
        tokens[i, end + 1:] = cfg.pad_token_id
    return tokens


def open_clip_row(name: str, layers: int = 2, width: Optional[int] = None, seed: int = 0) -> Row:
    """Build ``name``'s text tower (reduced depth; ``width`` also reduces width/heads for quick CI runs),
    load it, and measure parity."""
    import open_clip
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = copy.deepcopy(open_clip.get_model_config(name))
    text_cfg = cfg["text_cfg"]
    tok = _tokenizer_note(name, text_cfg)
    hf = text_cfg.get("hf_model_name")
    if hf and hf not in HF_TEXT_CONFIGS:  # the loader refuses these by name, before anything is built or fetched
        try:
            HookedCLIP.from_open_clip(name, device="cpu")
        except CheckpointMismatchError as err:
            return Row(name, "open_clip", "hf-text", "refused", tokenizer=tok, note=str(err))
        return Row(name, "open_clip", "hf-text", "LOADED-BUT-REFUSED", tokenizer=tok, note="expected a refusal")
    notes = []
    if layers:
        text_cfg["layers"] = min(layers, text_cfg.get("layers", 12))
        notes.append(f"{text_cfg['layers']} blocks")
    if width:
        text_cfg["width"], text_cfg["heads"] = width, max(2, width // 64)
        cfg["embed_dim"] = min(cfg["embed_dim"], width)
    if text_cfg.get("vocab_size", 49408) > MAX_VOCAB:
        text_cfg["vocab_size"] = MAX_VOCAB
        notes.append(f"vocab cut to {MAX_VOCAB}")
    cls = CustomTextCLIP if cfg.pop("custom_text", False) or text_cfg.get("hf_model_name") else CLIP
    if "multimodal_cfg" in cfg:  # CoCa: its text decoder reduced too (it is not part of the text tower)
        from open_clip.coca_model import CoCa

        cls = CoCa
        cfg["multimodal_cfg"].update(layers=1, width=text_cfg.get("width", 512), heads=text_cfg.get("heads", 8))
    cfg["vision_cfg"] = TINY_VISION
    torch.manual_seed(seed)
    if text_cfg.get("hf_model_name"):
        oc = _open_clip_hf_text_model(cfg, text_cfg, layers, width, notes)
    else:
        oc = cls(**cfg)
    oc = randomize_(oc, seed)
    try:
        model = HookedCLIP.from_open_clip(oc, device="cpu")
    except CheckpointMismatchError as err:
        return Row(name, "open_clip", _family(text_cfg), "refused", tokenizer=tok, note=str(err)[:160])
    tokens = _tokens(model.cfg, seed=seed)
    if text_cfg.get("hf_model_name"):
        resblocks = oc.text.transformer.encoder.layer
    else:
        resblocks = (oc if cls is CLIP else oc.text).transformer.resblocks
    ref, blocks = capture_block_outputs(resblocks, lambda: oc.encode_text(tokens, normalize=False))
    err = parity_errors(model.text, tokens, ref, blocks)
    worst = max(err.values())
    return Row(name, "open_clip", _family(text_cfg), "exact" if worst <= ATOL else "MISMATCH", worst, tok, ", ".join(notes))


def _open_clip_hf_text_model(cfg: dict, text_cfg: dict, layers: int, width: Optional[int], notes: list):
    """open_clip's CustomTextCLIP with its HFTextEncoder built from :data:`HF_TEXT_CONFIGS` (offline), at the
    reduced depth/width/vocabulary the other rows use; pooler and projection as the name's config says."""
    import transformers
    from open_clip.hf_model import HFTextEncoder
    from open_clip.model import CustomTextCLIP

    cls_name, sizes = HF_TEXT_CONFIGS[text_cfg["hf_model_name"]]
    sizes = {**_ROBERTA_COMMON, **sizes}
    if layers:  # open_clip_row's reduction has written text_cfg["layers"] and its note
        sizes["num_hidden_layers"] = min(text_cfg["layers"], sizes["num_hidden_layers"])
    if width:
        sizes.update(hidden_size=width, num_attention_heads=max(2, width // 64), intermediate_size=4 * width)
    if sizes["vocab_size"] > MAX_VOCAB:
        sizes["vocab_size"] = MAX_VOCAB
        notes.append(f"vocab cut to {MAX_VOCAB}")
    hf_cfg = getattr(transformers, cls_name)(**sizes)
    oc = CustomTextCLIP(embed_dim=cfg["embed_dim"], vision_cfg=TINY_VISION,
                        text_cfg=dict(width=32, heads=2, layers=1, vocab_size=8, context_length=4))
    oc.text = HFTextEncoder(text_cfg["hf_model_name"], output_dim=cfg["embed_dim"], config=hf_cfg,
                            pooler_type=text_cfg.get("hf_pooler_type", "mean_pooler"),
                            proj_type=text_cfg.get("hf_proj_type", "mlp"))
    notes.append("config transcribed from the hub")
    return oc


# --------------------------------------------------------------------------------------- transformers
def hf_row(class_name: str, seed: int = 0) -> Row:
    """Build a tiny random transformers model of ``class_name``, load it, measure parity (or record the
    documented refusal)."""
    import transformers

    family = getattr(find_family("transformers", class_name), "name", None) or class_name.replace("TextModel", "").replace("Model", "").lower()
    cls = getattr(transformers, class_name)
    ccls = cls.config_class
    small = dict(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_hidden_layers=2,
                 vocab_size=1000, max_position_embeddings=24, eos_token_id=2, bos_token_id=0, pad_token_id=1)
    torch.manual_seed(seed)
    subs = getattr(ccls, "sub_configs", {})
    if "text_config" in subs:  # every sub-config tiny (FLAVA has image, multimodal and codebook ones too)
        vision = dict(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_hidden_layers=1,
                      image_size=32, patch_size=16)
        hf = cls(ccls(**{k: sub(**(small if k == "text_config" else vision)).to_dict() for k, sub in subs.items()}))
    else:
        hf = cls(ccls(**small))
    hf = randomize_(hf, seed)
    try:  # a refused row is loaded too: the table shows the loader's own message, never a copy of it
        model = HookedCLIP.from_hf(hf, device="cpu")
    except (TypeError, CheckpointMismatchError) as err:
        return Row(class_name, "transformers", family, "refused", note=str(err))
    if class_name in REFUSED_HF_CLASSES:
        return Row(class_name, "transformers", family, "LOADED-BUT-REFUSED", note="the table says refused")
    tokens = _tokens(model.cfg, seed=seed)
    layers = [m for n, m in hf.named_modules() if n.endswith(("encoder.layer", "encoder.layers"))
              and n.startswith(("text_model", "encoder", "roberta"))]  # the text tower's blocks (not X-CLIP's video ones)
    kw = dict(input_ids=tokens)
    if model.cfg.mask_padding:  # BERT-style towers run with the attention mask their tokenizers return
        kw["attention_mask"] = (tokens != model.cfg.pad_token_id).long()

    def run():
        out = hf.get_text_features(**kw) if hasattr(hf, "get_text_features") else hf(**kw)
        if not isinstance(out, torch.Tensor):
            out = out.text_embeds if getattr(out, "text_embeds", None) is not None else out.pooler_output
        return out[:, 0] if out.ndim == 3 else out  # FlavaModel projects every token: its embedding is the CLS row

    ref, blocks = capture_block_outputs(layers[0], run)
    worst = max(parity_errors(model.text, tokens, ref, blocks).values())
    tok = "CLIP BPE / saved beside the checkpoint" if model.cfg.pooling not in ("last", "first") else "saved beside the checkpoint"
    return Row(class_name, "transformers", family, "exact" if worst <= ATOL else "MISMATCH", worst, tok, "tiny config")


# ------------------------------------------------------------------------------------------- table
def write_table(rows: list[Row], seconds: float, layers: int) -> str:
    import open_clip
    import transformers

    def count(src, status):
        return sum(r.source == src and r.status == status for r in rows)

    lines = [
        "# Supported models",
        "",
        "Generated by `python benchmarks/support.py` (do not edit by hand). Every open_clip model name and every",
        "CLIP-family transformers class: **exact** = per-block residual outputs and text embeddings within 1e-5",
        "(fp32) of the reference on random weights (LayerNorms randomised too); **refused** = loading was tried",
        "and raised; the note is the loader's own message. Nothing loads partly or silently wrong.",
        "",
        f"open_clip {open_clip.__version__}: {count('open_clip', 'exact')} exact, {count('open_clip', 'refused')} refused, "
        f"{count('open_clip', 'MISMATCH') + count('open_clip', 'error')} failing, of {sum(r.source == 'open_clip' for r in rows)} names "
        f"({'full depth' if not layers else f'{layers} blocks per tower'}). "
        f"transformers {transformers.__version__}: {count('transformers', 'exact')} classes exact, "
        f"{count('transformers', 'refused')} refused. Run time {seconds:.0f} s.",
        "",
        "Tokenizers: CLIP BPE is bundled with open_clip (offline). An HF tokenizer (SigLIP SentencePiece, BERT for",
        "CLIPA, XLM-V / mT5 for the worldwide towers, RoBERTa / XLM-R for the hf-text towers) is read from the local",
        "HF cache or from `tokenizer=DIR`; without its files the model runs on token ids and `to_tokens` says which",
        "files to supply.",
        "",
        "Towers that mask their padding — the ChineseCLIP, AltCLIP, ALIGN and FLAVA classes, open_clip's `hf-text",
        "(post-LN)` and CoCa rows — are compared on padded batches with the reference given its tokenizer's attention",
        "mask (CoCa: open_clip's own mask). open_clip",
        "builds an hf-text tower from the transformers config of its `hf_model_name`, which needs a download; the",
        "sweep builds the same modules offline from the configs transcribed in `benchmarks/support.py`",
        "(`HF_TEXT_CONFIGS`).",
        "",
        "| name | source | family | status | max error | tokenizer | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        err = "" if r.max_error is None else f"{r.max_error:.1e}"
        lines.append(f"| {r.name} | {r.source} | {r.family} | {r.status} | {err} | {r.tokenizer} | {r.note} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import open_clip

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=2, help="blocks per tower (0 = full depth)")
    p.add_argument("--names", nargs="*", help="only these open_clip names / transformers classes")
    p.add_argument("--out", default=str(ROOT / "docs" / "models" / "support.md"), help="'-' prints the table")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    rows = []
    oc_names = [n for n in shipped_open_clip_names() if not args.names or n in args.names]
    hf_names = [n for n in (*HF_CLASSES, *REFUSED_HF_CLASSES) if not args.names or n in args.names]
    for name in oc_names:
        try:
            rows.append(open_clip_row(name, layers=args.layers))
        except Exception as err:  # a crash is a finding: recorded, never hidden
            rows.append(Row(name, "open_clip", "?", "error", note=f"{type(err).__name__}: {str(err)[:120]}"))
        print(f"{rows[-1].name:40s} {rows[-1].status:8s} {rows[-1].max_error}", file=sys.stderr, flush=True)
    for name in hf_names:
        try:
            rows.append(hf_row(name))
        except Exception as err:
            rows.append(Row(name, "transformers", "?", "error", note=f"{type(err).__name__}: {str(err)[:120]}"))
        print(f"{rows[-1].name:40s} {rows[-1].status:8s} {rows[-1].max_error}", file=sys.stderr, flush=True)
    table = write_table(rows, time.perf_counter() - start, args.layers)
    if args.out == "-":
        print(table)
    else:
        Path(args.out).write_text(table)
        print(f"wrote {args.out}", file=sys.stderr)
    return 1 if any(r.status in ("MISMATCH", "error") for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
