"""The localisation atlas: token alignment against hand-aligned SugarCrepe pairs, the generalised CTE map and head
scores against plain loops and the paper's Δ, the pairs file format and the shipped datasets."""

from __future__ import annotations

import gzip
import json
from functools import lru_cache

import pytest
import torch
from conftest import hf_clip

from hooked_clip import HookedCLIP
from hooked_clip.analyses.causal_tracing import hidden_state_hook
from hooked_clip.analyses.heads import negator_head_scores
from hooked_clip.analyses.localize.align import align_tokens, alignment_tensor
from hooked_clip.analyses.localize.pairs_file import (MinimalPair, PairsFormatError, dataset_names, load_dataset,
                                                      parse_pairs, read_pairs)
from hooked_clip.analyses.localize.trace import ROLES, localize
from hooked_clip.tokenizers.clip_bpe import CLIPTokenizer

# ------------------------------------------------------------------------------ alignment, hand-aligned
# SugarCrepe pairs (shipped ids), written out by hand on CLIP's BPE: each foil token's caption counterpart ("=" the
# same token, "~" a substitution), or "+" for a token the foil inserts. S/E are the start/end tokens.
HAND = {
    "add-obj/0": ("S a= cat= and= a+ dog= napping= together= under+ a+ blanket+ on= the= couch= .= E"),
    "add-obj/1": ("S two+ boys+ and+ three= girls= are+ walking= down= the= sidewalk= under= a= sun= umbrella= .= E"),
    "add-att/0": ("S a= drawing= of= a= tattooed+ young= woman= with= many= facial= pierc= ings= .= E"),
    "add-att/1": ("S two= striped+ -+ and+ -+ spotted+ ze= bras= are= battling= each= other= on= hind= legs= .= E"),
    "replace-rel/1": ("S a= picture= of= an= animal= is= behind~ a= pole= and= next= to= it= is= a= yellow= taxi= .= E"),
    "replace-att/0": ("S a= white~ toilet= and= sink= combination= in= a= small= room= .= E"),
    "swap-obj/1": ("S two~ men~ on= a= motorcycle= are~ waving= at= a~ man~ .= E"),
    "swap-att/0": ("S white~ bathroom= with= two= blue~ towels= hanging= by= the= shower= .= E"),
}
# Pairs whose alignment is not unique (several minimal scripts): the tokens every minimal script keeps equal.
ANCHORS = {
    "replace-rel/0": "S a= white= with= red= striped= bus= is stuck in the= slow= lane= on= a= freeway= surrounded= by= "
                     "several= other= cars= .= E",
    "swap-obj/0": "S a= cat= sits= on= the plant ,= and= swat= s= at= its hind legs .= E",
}


@lru_cache(maxsize=None)
def _sugarcrepe() -> dict:
    return {p.id: p for p in load_dataset("sugarcrepe").pairs}


def _pairs(ids):
    return [_sugarcrepe()[i] for i in ids]


def _hand_map(spec: str) -> tuple[list[int], list[str]]:
    """Foil position -> caption position, and each foil token's mark, from a hand-written spec."""
    marks = ["=" if t in ("S", "E") else t[-1] if t[-1] in "=~+" else "?" for t in spec.split()]
    out, c = [], 0
    for m in marks:
        out.append(-1 if m == "+" else c)
        c += m != "+"
    return out, marks


@pytest.mark.parametrize("pid", sorted(HAND))
def test_alignment_matches_hand_aligned_sugarcrepe(pid):
    tok = CLIPTokenizer()
    (pair,) = _pairs([pid])
    foil, caption = tok.encode(pair.foil), tok.encode(pair.caption)
    expected, marks = _hand_map(HAND[pid])
    assert len(expected) == len(foil)
    a = align_tokens(foil, caption)
    assert a.foil_to_caption() == expected
    assert a.changed_foil() == [p for p, m in enumerate(marks) if m in "~+"]
    assert sorted(a.counts().items()) == sorted({"equal": marks.count("="), "substitute": marks.count("~"),
                                                 "insert": marks.count("+"), "delete": len(caption) - len(expected)
                                                 + marks.count("+")}.items())


@pytest.mark.parametrize("pid", sorted(ANCHORS))
def test_alignment_keeps_the_anchors_of_ambiguous_pairs(pid):
    tok = CLIPTokenizer()
    (pair,) = _pairs([pid])
    foil, caption = tok.encode(pair.foil), tok.encode(pair.caption)
    spec = ANCHORS[pid].split()
    assert len(spec) == len(foil)
    anchored = [p for p, t in enumerate(spec) if t in ("S", "E") or t.endswith("=")]
    a = align_tokens(foil, caption)
    mapped = a.foil_to_caption()
    equal = {p for op in a.ops if op.kind == "equal" for p in range(op.foil_start, op.foil_end)}
    assert equal == set(anchored)
    assert all(foil[p] == caption[mapped[p]] for p in anchored)
    assert [mapped[p] for p in anchored] == sorted(mapped[p] for p in anchored)  # order kept


def test_alignment_edge_cases():
    assert align_tokens([1, 2, 3], [1, 2, 3]).kind == "substitution" and align_tokens([1, 2, 3], [1, 2, 3]).changed_foil() == []
    a = align_tokens([1, 9, 3], [1, 3])
    assert a.foil_to_caption() == [0, -1, 1] and a.kind == "insertion"
    d = align_tokens([1, 3], [1, 7, 8, 3])
    assert d.foil_to_caption() == [0, 3] and d.changed_caption() == [1, 2] and d.kind == "deletion"
    t = alignment_tensor([a, d], 4)
    assert t.tolist() == [[0, -1, 1, -1], [0, 3, -1, -1]]


# ------------------------------------------------------------------------------ the CTE map and head scores
@pytest.fixture(scope="module")
def model():
    return HookedCLIP.from_hf(hf_clip("tiny_eot"), device="cpu")


@pytest.fixture(scope="module")
def one_layer():
    return HookedCLIP.from_hf(hf_clip("one_layer"), device="cpu")


# an insertion, insertions + substitutions, a swap (substitutions, an insertion and a deletion); one substitution
UNEQUAL = {False: ["add-obj/0", "replace-rel/0", "swap-obj/0"], True: ["add-att/1", "replace-att/0"]}


def _roles_by_hand(pid: str, n: int) -> list[str]:
    """Each foil position's role, from the hand-written specs (the pooled position is the EOT, the last)."""
    spec = (HAND.get(pid) or ANCHORS[pid]).split()
    changed = [not (t in ("S", "E") or t.endswith("=")) for t in spec]
    first, last = changed.index(True), len(changed) - changed[::-1].index(True)
    out = []
    for p, c in enumerate(changed):
        if p == n - 1:
            out.append("pooled")
        elif c:
            out.append("changed")
        else:
            out.append("before" if p < first else "after" if p >= last else "between")
    return out


@torch.no_grad()
@pytest.mark.parametrize("with_images", [False, True])
def test_cte_map_equals_a_plain_loop(one_layer, with_images):
    """One forward per (pair, state, foil position): the caption's state at the counterpart position written into
    the foil run by a hook; text-only metric cos(., caption embedding) or the model's image similarity."""
    model = one_layer
    pairs = _pairs(UNEQUAL[with_images])
    images = torch.randn(len(pairs), model.cfg.d_proj, generator=torch.Generator().manual_seed(3))
    result = localize(model, pairs, images if with_images else None, chunk=3, progress=False)
    assert result.ids == UNEQUAL[with_images] and result.dropped == []
    tok = CLIPTokenizer()
    for i, pair in enumerate(pairs):
        foil_t, cap_t = model.to_tokens(pair.foil), model.to_tokens(pair.caption)
        n_f = int(model.text.pool_positions(foil_t)[0]) + 1
        mapping = align_tokens(tok.encode(pair.foil), tok.encode(pair.caption)).foil_to_caption()
        _, cache = model.text.run_with_cache(cap_t)
        cap_e = model.encode_text(cap_t)[0]
        if with_images:
            img = torch.nn.functional.normalize(images[i], dim=0)
            m = lambda e: float(model.logit_scale.exp() * torch.nn.functional.normalize(e, dim=0) @ img)  # noqa: E731
        else:
            m = lambda e: float(torch.nn.functional.cosine_similarity(e, cap_e, dim=0))  # noqa: E731
        m_f, m_c = m(model.encode_text(foil_t)[0]), m(cap_e)
        roles = _roles_by_hand(pair.id, n_f)
        for l in range(model.cfg.n_layers + 1):
            sums: dict[str, list[float]] = {}
            for p in range(n_f):
                if mapping[p] < 0:
                    continue

                def hook(x, hook, p=p):
                    x = x.clone()
                    x[:, p] = cache[hook.name][:, mapping[p]]
                    return x
                out = model.text.run_with_hooks(foil_t, return_type="normalized", fwd_hooks=[(hidden_state_hook(l), hook)])
                sums.setdefault(roles[p], []).append((m(out[0]) - m_f) / (m_c - m_f))
            for r, name in enumerate(ROLES):
                got = float(result.cte[i, l, r])
                if name not in sums:
                    assert got != got, (pair.id, l, name)  # NaN: no position of that role
                else:
                    want = sum(sums[name]) / len(sums[name])
                    # fp32 noise of the metric, divided by the caption-foil gap (small for the text-only cosine)
                    assert abs(got - want) <= 2e-5 / min(1.0, abs(m_c - m_f)), (pair.id, l, name, got, want)


@torch.no_grad()
def test_head_score_is_the_papers_delta_for_one_substitution(model):
    pairs = [MinimalPair("n1", "There are some cats in the picture.", "There are no cats in the picture."),
             MinimalPair("n2", "There is a dog.", "There is no dog."),
             *_pairs(["replace-att/0", "replace-rel/1"])]
    result = localize(model, pairs, chunk=2, progress=False)
    positions = [3, 3, 2, 7]  # the substituted token (after the start token)
    delta = negator_head_scores(model, [p.foil for p in pairs], [p.caption for p in pairs], positions).delta
    torch.testing.assert_close(result.heads, delta.float(), atol=1e-5, rtol=0)


def test_unalignable_and_too_long_pairs_are_named(model):
    pairs = [MinimalPair("ok", "A cat on a mat.", "A dog on a mat."),
             MinimalPair("long", "A cat.", "A cat " + "and a cat " * 40 + "."),
             MinimalPair("disjoint", "Zebras.", "Red buses"),
             MinimalPair("same-tokens", "A cat.", "a cat.")]
    result = localize(model, pairs, progress=False)
    assert result.ids == ["ok"]
    reasons = dict(result.dropped)
    assert set(reasons) == {"long", "disjoint", "same-tokens"}
    assert "context" in reasons["long"] and "no token" in reasons["disjoint"] and "same tokens" in reasons["same-tokens"]


# ------------------------------------------------------------------------------ pairs files and datasets
def test_pairs_file_format_and_named_drops(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"id": "a", "caption": "Two dogs.", "foil": "Three dogs.", "phenomenon": "counting"},
            {"id": "b", "caption": "A cat.", "foil": "A cat."},
            {"id": "c", "caption": "A cat.", "foil": "  ", "image": "c.jpg"},
            {"id": "d", "caption": "A red car.", "foil": "A car.", "image": "d.jpg"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    got = read_pairs(path)
    assert [p.id for p in got.pairs] == ["a", "d"]
    assert [p.phenomenon for p in got.pairs] == ["counting", "mine"] and got.pairs[1].image == "d.jpg"
    assert [i for i, _ in got.dropped] == ["b", "c"] and "nothing changed" in got.dropped[0][1]
    gz = tmp_path / "mine.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert [(p.id, p.caption, p.foil) for p in read_pairs(gz).pairs] == [(p.id, p.caption, p.foil) for p in got.pairs]
    for bad, words in [('{"id": "x", "caption": "A."}', "foil"), ("[1, 2]", "object"), ("{not json", "not JSON"),
                       ('{"id": "x", "caption": "A.", "foil": "B.", "colour": 1}', "unknown field"),
                       ('{"id": "x", "caption": "A.", "foil": "B."}\n{"id": "x", "caption": "C.", "foil": "D."}', "twice")]:
        with pytest.raises(PairsFormatError, match=words):
            parse_pairs(bad.splitlines(), "f.jsonl")
    with pytest.raises(FileNotFoundError, match="JSON-lines"):
        read_pairs(tmp_path / "missing.jsonl")


# Counts from the upstream files (VALSE: items with mturk caption >= 2, the 7,702 of 8,782; SugarCrepe 7,511).
VALSE_VALID = {"actant-swap": 949, "action-replacement": 648, "coreference-hard": 104, "coreference-standard": 708,
               "counting-adversarial": 691, "counting-hard": 868, "counting-small-quant": 900, "existence": 505,
               "foil-it": 943, "plurals": 851, "relations": 535}
SUGARCREPE = {"add-att": 692, "add-obj": 2062, "replace-att": 788, "replace-obj": 1652, "replace-rel": 1406,
              "swap-att": 666, "swap-obj": 245}


def test_shipped_datasets_load_by_name_with_their_counts():
    expected = {f"valse:{k}": v for k, v in VALSE_VALID.items()} | {f"sugarcrepe:{k}": v for k, v in SUGARCREPE.items()}
    names = dataset_names()
    assert set(names) == set(expected) | {"aro:negclip"}
    for name, n in expected.items():
        got = load_dataset(name)
        assert len(got) == n and got.dropped == [] and {p.phenomenon for p in got.pairs} == {name}
    assert sum(VALSE_VALID.values()) == 7702 and sum(SUGARCREPE.values()) == 7511
    assert len(load_dataset("valse")) == 7702
    aro = load_dataset("aro:negclip")
    assert len(aro) > 7000 and all(p.caption != p.foil for p in aro.pairs[:50])
    existence = {p.id: p for p in load_dataset("valse:existence").pairs}
    shipped = json.loads(open(__import__("conftest").VALSE).read())  # the study's copy of VALSE existence
    for key, x in shipped.items():
        if x["mturk"]["caption"] >= 2:
            assert (existence[f"existence/{key}"].caption, existence[f"existence/{key}"].foil, existence[f"existence/{key}"].image) == (x["caption"], x["foil"], x["image_file"])
    with pytest.raises(ValueError, match="Did you mean valse:counting-hard"):
        load_dataset("valse:countinghard")


def test_every_shipped_dataset_runs_on_the_demo_model():
    from hooked_clip import load_model

    pairs = load_dataset("valse").head(1) + load_dataset("sugarcrepe").head(1) + load_dataset("aro").head(1)
    result = localize(load_model("tiny-negation", device="cpu"), pairs, chunk=64, progress=False)
    assert result.dropped == [] and sorted(set(result.phenomena)) == dataset_names()
    assert result.cte.shape == (len(dataset_names()), 5, len(ROLES)) and result.metric.startswith("text-only")
    gap = result.d != 0  # the demo model scores some foils exactly as their captions (words it never learnt)
    pooled = result.cte[gap, -1, ROLES.index("pooled")]
    torch.testing.assert_close(pooled, torch.ones_like(pooled), atol=1e-4, rtol=0)  # the read-out's own state: CTE 1
