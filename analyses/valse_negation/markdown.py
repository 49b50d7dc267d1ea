"""The run directory's ``report.md``: every number the paper's tables give beside this run's own, in the
paper's precision, with what is not like for like said first. The paper's numbers come from ``paper.py``;
the replication section against a per-item reference file from ``reference.py``."""

from __future__ import annotations

from typing import Optional

from hooked_clip.analyses.valse_negation import paper
from hooked_clip.analyses.valse_negation.aggregate import LOCATIONS
from hooked_clip.analyses.valse_negation.formatting import fmt, header, json_safe, pct, segs
from hooked_clip.analyses.valse_negation.layout import ABSENT, POOLED_ROW, ROWS, is_absent
from hooked_clip.analyses.valse_negation.markdown_tracing import cte_section, heads_section
from hooked_clip.analyses.valse_negation.reference import section as replication_section
from hooked_clip.analyses.valse_negation.segments import RULE, THRESHOLD

HOW_TO_READ = ("Numbers: ours beside the paper's (OpenAI CLIP ViT-B/32 on Visual7W photos, the authors' released results). "
               "CTE, Δ, d, r and other fractions with two decimals; accuracies in percent with one decimal, as the paper "
               "gives them; three decimals only where the paper gives three (layer means of Δ, cosines, subject-size "
               "quartiles). Where a number cannot be compared like for like, the caveats below say why.")
GROUP_LABELS = {"all": "either", "caption": "caption", "foil": "foil"}
KIND_LABELS = {"original": "original VALSE sentences", "aligned": "aligned (rephrased) pairs"}
RELATION_LABELS = {  # human labels of the confound keys (results.json and confounds.csv keep the keys)
    "similarity_vs_d_caption": "caption–foil similarity vs d, negation in caption",
    "similarity_vs_d_caption_without_no_people": "caption–foil similarity vs d, negation in caption, without the "
                                                 "\"There are no people.\" items",
    "similarity_vs_d_foil": "caption–foil similarity vs d, negation in foil",
    "similarity_vs_d_all": "caption–foil similarity vs d, all",
    "length_vs_d_caption": "token length vs d, negation in caption",
    "length_vs_d_caption_without_no_people": "token length vs d, negation in caption, without the \"There are no "
                                             "people.\" items",
    "length_vs_d_foil": "token length vs d, negation in foil",
    "subject_size_vs_d_foil": "subject size (soft area) vs d, negation in foil",
    "subject_size_binary_vs_d_foil": "subject size (binary area, > 0.25) vs d, negation in foil",
}
D_STAT_LABELS = {"min": "d, minimum", "max": "d, maximum", "sd": "d, standard deviation (sample)",
                 "mean_correct": "mean d, correct segment", "mean_ambiguous": "mean d, ambiguous segment",
                 "mean_incorrect": "mean d, incorrect segment", "caption_logit_min": "S(caption), minimum",
                 "caption_logit_max": "S(caption), maximum"}


def report_markdown(results: dict, model_id: str, images_note: str, figures: list[str], html: Optional[str],
                    records: Optional[dict] = None) -> str:
    """The whole ``report.md``: ``figures`` and ``html`` are the run directory's figure and attention-view files."""
    results = json_safe(results)
    lines = [f"# VALSE existence negation study — {model_id}", "",
             f"Images: {images_note or 'none (text-only parts)'}. Indexing: {results['indexing']}.", "", HOW_TO_READ, ""]
    if model_id.startswith("tiny-negation"):
        lines += [f"> This run uses the shipped toy model `{model_id}` with synthesized scenes. Its findings are about "
                  "that toy model, not about OpenAI's CLIP; the paper's columns are OpenAI's ViT-B/32 on photos.", ""]
    lines += _tower_note(results) + _layout_note(results) + caveats(results) + _items_section(results)
    if "replication" in results:
        lines += replication_section(results["replication"], results.get("replication_reference"))
    if "scores" in results:
        lines += _scores_section(results, records)
    if "cte" in results:
        lines += cte_section(results)
    if "heads" in results:
        lines += heads_section(results)
    lines += _confounds_section(results) + _ablation_section()
    if figures or html:
        lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures]
        if html:
            lines.append(f"\nAttention view (offline HTML): [{html}]({html})")
    lines += ["", "Files: `results.json` (every number with its n), CSV tables, `items.csv` (per item)."]
    return "\n".join(lines) + "\n"


def _tower_note(results: dict) -> list[str]:
    """The text tower's family, pooling and padding, where the run recorded them."""
    t = results.get("text_tower")
    if not t:
        return []
    return [f"Text tower: family `{t['family']}`, {t['blocks']}, {t['attention']} attention; pooled {t['pooling']}; "
            f"texts {t['padding']}.", ""]


def _layout_note(results: dict) -> list[str]:
    """A paragraph on the rows where this model's tokenizer lays the pairs out otherwise than CLIP's BPE."""
    rows = (results.get("zoom") or {}).get("rows") or next(
        (m["rows"] for segs_ in results.get("cte", {}).values() for m in segs_.values()), ROWS)
    if list(rows) == ROWS:
        return []
    absent = [f"`{r[: -len(ABSENT)]}`" for r in rows if is_absent(r)]
    lines = ["Rows laid out from this model's tokenizer (each pair's positions: the negator where the two sentences "
             "differ, the pooled position from the tower's pooling rule)."]
    if absent:
        lines.append(f"Absent rows (the tokenizer has no such token, shown as –): {', '.join(absent)}.")
    if POOLED_ROW in rows:
        lines.append(f"{POOLED_ROW} is the position the tower reads: the last padded position of a tower that reads its "
                     "padding (the padding between [EOT] and it is not shown in the rows, but the heads' Δ, the max over "
                     "the query positions after the negator up to the pooled one, includes it), or the first token of a "
                     "CLS-pooled tower (the [SOT] row's position, shown again under this name).")
    return [" ".join(lines), ""]


def caveats(results: dict) -> list[str]:
    """Where this run cannot be compared with the paper like for like, said in the report (from the model's
    own facts: logit scale, depth, heads, the subject-size measure; and the run's: ``--limit``, the pixel route)."""
    out = []
    scale = results.get("logit_scale")
    if scale is not None and abs(scale - paper.LOGIT_SCALE) > 0.5:
        out.append(f"- **Segments are not CLIP's.** This model's logit scale is {scale:.2f}, so the segment thresholds "
                   f"d = ±{THRESHOLD:g} logit are ±{THRESHOLD / scale:.3f} cosine; for the paper's ViT-B/32 (logit "
                   "scale 100) they are ±0.01 cosine. Segment counts, the score statistics in logits, and every table "
                   "restricted to a segment (the CTE's correct / incorrect subsets) therefore select by another rule "
                   "than the paper's; compare accuracies (d > 0) and the shapes of the tables, not segment counts.")
    n_layers, n_heads = results.get("n_layers"), results.get("n_heads")
    if n_layers is not None and (n_layers, n_heads) != (paper.N_LAYERS, paper.N_HEADS):
        out.append(f"- **Layers are not the paper's.** This model has {n_layers} blocks × {n_heads} heads (hidden-state "
                   f"layers 0–{n_layers}); the paper's has 12 × 8. The paper's negator collapse between layers 3 and 4 "
                   f"happens a third of the way up; this model's layer {n_layers} is its last, where the [EOT] row is 1 "
                   "and every other row 0 by construction. Compare by relative depth, not by column number.")
        out.append("- **Head labels are positions in this model.** A label such as L3H1 (Layer 4 Head 2) is block 3, "
                   "head 1 (0-indexed; the paper's block 4, head 2) of this model" + (", its last block" if n_layers == 4
                                                                                   else "") + "; this model's L3H1 is "
                   "not CLIP's L3H1, so the paper's heads are compared by role (which layer moves the negation to later "
                   "positions), not by label.")
    elif n_layers is not None:
        out.append("- Layers and head labels have the paper's numbering; they name the paper's heads only if this "
                   "model is the paper's checkpoint (openai/clip-vit-base-patch32).")
    limit = results.get("limit")
    if limit is not None:
        out.append(f"- **Only part of the data ran** (`--limit {limit}`): every count, accuracy, mean and r here is over "
                   "this run's items, not the paper's full set; compare shapes and rates, not counts.")
    route = results.get("preprocessing")
    if route and route.startswith("open_clip"):
        out.append(f"- **Pixels are not the authors'.** This run's images went through {route}; the authors used "
                   "transformers' `CLIPProcessor` (transformers 4, PIL). The two resample differently, and on 640×427 "
                   "and 427×640 photos open_clip's centre crop falls one pixel off `CLIPProcessor`'s (it rounds the "
                   "offset, CLIPProcessor floors it); load the checkpoint from transformers for the authors' pixels.")
    elif route and route.startswith("transformers") and "PIL" not in route:
        out.append(f"- **Pixels may differ from the authors'.** This run's images went through {route}.")
    measure = results.get("subject_size_measure")
    if measure:
        out.append(f"- **Subject size is not a CLIPSeg area.** Here it is {measure}; the paper's is CLIPSeg's soft "
                   "area of the subject in the photo (mean sigmoid over the map). Its r, quartiles and the "
                   "accuracy-above-threshold table are an analogue, not the same measurement.")
    return (["## Like for like? What differs from the paper's setting", ""] + out + [""]) if out else []


def _items_section(results: dict) -> list[str]:
    c, p = results["counts"], paper.COUNTS

    def split(d, key):
        return f"{d.get(key)} ({d.get(key + '_caption')} / {d.get(key + '_foil')})"
    ours_dropped = {"dropped": c["valid"] - c["aligned"],
                    **{f"dropped_{loc}": c.get(f"valid_{loc}", 0) - c.get(f"aligned_{loc}", 0) for loc in LOCATIONS}}
    lines = ["## Items", ""] + header("", ["this run", "paper"])
    lines += [f"| valid (negation in caption / in foil) | {split(c, 'valid')} | {split(p, 'valid')} |",
              f"| aligned pairs (caption / foil) | {split(c, 'aligned')} | {split(p, 'aligned')} |",
              f"| dropped by the alignment (caption / foil) | {split(ours_dropped, 'dropped')} | {split(p, 'dropped')} |"]
    if "lengths" in results:
        n = results["lengths"]
        lines += [f"| aligned pairs without a further subject token (7 tokens with CLIP's tokenizer) | {n['no_further']} | "
                  f"{p['aligned_t7']} |",
                  f"| token length of the aligned sentences | {n['tokens_min']}–{n['tokens_max']} | "
                  f"{p['tokens_min']}–{p['tokens_max']} |"]
    return lines + [""] + dropped_lines(results.get("dropped"))


def dropped_lines(dropped) -> list[str]:
    """Every item left out (validity filter, alignment), named with its reason (also in ``dropped.csv``)."""
    if not dropped:
        return ["Dropped items: none.", ""] if dropped is not None else []
    lines = [f"Dropped items ({len(dropped)}; also in `dropped.csv`):", "", "| item | stage | reason |", "|---|---|---|"]
    return lines + [f"| `{d['id']}` | {d['stage']} | {d['reason'].replace('|', '/')} |" for d in dropped] + [""]


def _scores_section(results: dict, records: Optional[dict]) -> list[str]:
    lines = ["## Scores", "", f"Accuracy = share of items with d = S(caption) − S(foil) > 0; segments: {RULE}.", ""]
    lines += header("sentences", ["negation in", "n", "accuracy", "correct / ambiguous / incorrect",
                                  "paper: n", "paper: accuracy", "paper: correct / ambiguous / incorrect"])
    for kind in ("original", "aligned"):
        for g, t in results["scores"][kind].items():
            pn, pacc, pseg = paper.SCORES[(kind, g)]
            lines.append(f"| {KIND_LABELS[kind]} | {GROUP_LABELS[g]} | {t['n']} | {pct(t['accuracy'])} | "
                         f"{segs(t['segments'])} | {pn} | {pct(pacc)} | {segs(pseg)} |")
    lines += ["", f"VALSE's own CLIP pairwise accuracy on the existence piece: {pct(paper.VALSE_EXISTENCE_ACCURACY)} "
              "(the paper's sets above are its own computation).", ""]
    if "d_stats" in results:
        d = results["d_stats"]
        lines += ["Score statistics of the aligned pairs (logits: they scale with the model's logit scale):", ""]
        lines += header("statistic", ["this run", "paper"])
        lines += [f"| {label} | {fmt(d.get(k))} | {fmt(paper.D_STATS[k])} |" for k, label in D_STAT_LABELS.items()] + [""]
    return lines + _examples(records)


def _examples(records: Optional[dict]) -> list[str]:
    """The paper's example items beside this run's d and segment."""
    def scored(k):
        return records[k]["aligned"] if records and k in records and "d" in records[k].get("aligned", {}) else None
    lines = ["The paper's example items (its section on the classification score; the authors' released per-item values; d in logits):", ""]
    lines += header("item", ["aligned caption / foil", "d (this run)", "segment (this run)", "paper d", "paper segment"])
    for k, v in paper.EXAMPLES.items():
        a = scored(k)
        sentences = f"{a['caption']} / {a['foil']}" if a else "not in this run"
        lines.append(f"| {k} | {sentences} | {fmt(a['d']) if a else '–'} | {a['segment'] if a else '–'} | "
                     f"{fmt(v['d'])} | {v['segment']} |")
    first = "existence_visual7w_1"
    ex, ours = paper.EXAMPLES[first], scored(first)
    return lines + ["", f"Also for {first} the paper gives d = {fmt(ex['d_original'])} on the original sentences "
                    f"and a caption–foil cosine of {ex['similarity']:.4f}"
                    + (f" (this run: d = {fmt(records[first].get('d'))} on the original sentences, cosine "
                       f"{ours['similarity']:.4f})" if ours else "")
                    + ".", ""]


def _confounds_section(results: dict) -> list[str]:
    conf = results["confounds"]
    lines = ["## Confounds (Pearson r with d)", ""] + header("relation", ["n", "r", "paper: n", "paper: r"])
    keys = [k for k, v in conf.items() if isinstance(v, dict) and "r" in v]
    for k in list(dict.fromkeys([*paper.CONFOUNDS, *keys])):  # the paper's order, then any other relation
        v = conf.get(k, {})
        pn, pr = paper.CONFOUNDS.get(k, ("", None))
        lines.append(f"| {RELATION_LABELS.get(k, k)} | {v.get('n', '–')} | {fmt(v.get('r'))} | {pn} | {fmt(pr) if pn else ''} |")
    lines.append("")
    lines += _similarity_and_subjects(conf) + _accuracy_above_size(conf)
    if "similarity_vs_d_caption" not in conf:
        lines += ["Image-dependent parts (scores, causal tracing, confounds with d) were skipped: no images were given.", ""]
    return lines


def _similarity_and_subjects(conf: dict) -> list[str]:
    lines = []
    sim, rng = conf.get("similarity_by_location", {}), conf.get("similarity_range")
    p = paper.SIMILARITY
    if sim and rng:
        lines += [f"Caption–foil cosine of the aligned pairs: mean {fmt(sim.get('caption'), 3)} (negation in caption) and "
                  f"{fmt(sim.get('foil'), 3)} (in foil), range {fmt(rng['min'], 3)} to {fmt(rng['max'], 3)}; paper: "
                  f"{fmt(p['mean_caption'], 3)} and {fmt(p['mean_foil'], 3)}, range {fmt(p['min'], 3)} to {fmt(p['max'], 3)}.", ""]
    if "subjects" in conf:
        sub = conf["subjects"]
        lines += [f"Subjects: {sub['with_subject']} of {sub['foil_pairs']} foil-negated pairs have a subject prompt "
                  f"(paper: {paper.SUBJECTS[0]} of {paper.SUBJECTS[1]}); without one: {sub['without_subject'] or 'none'}.", ""]
    quart = " / ".join(fmt(q, 3) for q in paper.SUBJECT_SIZE_QUARTILES)
    if "subject_size_quartiles" in conf:
        lines += [f"Subject size, min / Q1 / median / Q3 / max: this run {' / '.join(fmt(q, 3) for q in conf['subject_size_quartiles'])}; "
                  f"paper {quart}.", ""]
    else:
        lines += [f"Subject size was not measured in this run (paper's quartiles, min / Q1 / median / Q3 / max: {quart}); "
                  "pass --clipseg with --images.", ""]
    return lines


def _accuracy_above_size(conf: dict) -> list[str]:
    above = {a["threshold"]: a for a in conf.get("accuracy_above_size", [])}
    lines = ["Accuracy of the foil-negated items whose subject size exceeds t:", ""]
    lines += header("t", ["n (this run)", "accuracy (this run)", "paper: n", "paper: accuracy"])
    for t, (pn, pacc) in paper.ACCURACY_ABOVE_SIZE.items():
        a = above.get(t, {})
        lines.append(f"| {t:.2f} | {a.get('n', '–')} | {pct(a.get('accuracy'))} | {pn} | {pct(pacc)} |")
    return lines + [""]


def _ablation_section() -> list[str]:
    lines = ["## Image-tower ablation (the authors' thesis): not run by this study", "",
             "The authors' code also ablates the image tower's layers with a mean image (their `src/ablation` scripts; "
             "probably in the thesis only, not the paper). This study measures the text tower only, so there is no number of ours to set beside these; "
             "`hooked_clip.analyses.image_attribution.mean_image_ablation` provides the hooks for a ViT image tower.", ""]
    lines += header("component", ["paper: negation in foil", "paper: negation in caption", "paper: layer-1 effects"])
    lines += [f"| {k} | {fmt(f)} | {fmt(c)} | {fmt(paper.ABLATION_LAYER1[k][0])}–{fmt(paper.ABLATION_LAYER1[k][1])} |"
              for k, (f, c) in paper.ABLATION.items()]
    return lines + ["", "(Mean drop in d over the 12 layers, correct segment.)", ""]
