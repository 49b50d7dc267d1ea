"""Rebuild the shipped datasets (``datasets/*.jsonl.gz``) from the upstream repositories.

Each upstream repository is read from a local git clone at the commit recorded in ``PROVENANCE.md``; nothing is
downloaded here. Usage::

    python -m hooked_clip.analyses.localize.build_data --valse DIR --sugarcrepe DIR --aro DIR

(``DIR``: a clone of Heidelberg-NLP/VALSE, RAIVNLab/sugar-crepe, mertyg/vision-language-models-are-bows; a bare
repository works too). Every record is one pair in the documented pairs format (``pairs_file.py``): ``id``,
``caption``, ``foil``, ``image`` (the upstream file name; images are not shipped) and ``phenomenon``.

- VALSE: every piece, only the items its annotators validated (``mturk["caption"] >= 2``, the filter of the
  VALSE paper and of the negation study); ids are ``PIECE/KEY`` (VALSE reuses keys across pieces).
- SugarCrepe: every refined subset (``data/*.json``), ``caption`` vs ``negative_caption``.
- ARO / NegCLIP: the validation hard negatives of NegCLIP (``temp_data/valid_neg_clip.tsv``): each COCO
  caption against each of its word-order-swapped negatives.
"""

from __future__ import annotations

import argparse
import ast
import csv
import gzip
import io
import json
import subprocess
from pathlib import Path

OUT = Path(__file__).parent / "datasets"
VALSE_PIECES = ("actant-swap", "action-replacement", "coreference-hard", "coreference-standard",
                "counting-adversarial", "counting-hard", "counting-small-quant", "existence", "foil-it",
                "plurals", "relations")
SUGARCREPE_SUBSETS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
SOURCES = {"valse": "Heidelberg-NLP/VALSE", "sugarcrepe": "RAIVNLab/sugar-crepe",
           "aro": "mertyg/vision-language-models-are-bows"}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def _show(repo: Path, path: str) -> str:
    return _git(repo, "show", f"HEAD:{path}")


def valse(repo: Path) -> dict[str, tuple[list[dict], int]]:
    out = {}
    for piece in VALSE_PIECES:
        data = json.loads(_show(repo, f"data/{piece}.json"))
        rows = [{"id": f"{piece}/{key}", "caption": x["caption"], "foil": x["foil"], "image": x["image_file"], "phenomenon": piece}
                for key, x in data.items() if x["mturk"]["caption"] >= 2]
        out[f"valse:{piece}"] = (rows, len(data))
    return out


def sugarcrepe(repo: Path) -> dict[str, tuple[list[dict], int]]:
    out = {}
    for subset in SUGARCREPE_SUBSETS:
        data = json.loads(_show(repo, f"data/{subset}.json"))
        name = subset.replace("_", "-")
        rows = [{"id": f"{name}/{key}", "caption": x["caption"], "foil": x["negative_caption"], "image": x["filename"],
                 "phenomenon": name} for key, x in data.items()]
        out[f"sugarcrepe:{name}"] = (rows, len(data))
    return out


def aro(repo: Path) -> dict[str, tuple[list[dict], int]]:
    reader = csv.DictReader(io.StringIO(_show(repo, "temp_data/valid_neg_clip.tsv")), delimiter="\t")
    rows, n = [], 0
    for row in reader:
        n += 1
        for k, neg in enumerate(ast.literal_eval(row["neg_caption"])):
            rows.append({"id": f"negclip/{row['']}/{k}", "caption": row["title"], "foil": neg,
                         "image": Path(row["filepath"]).name, "phenomenon": "negclip"})
    return {"aro:negclip": (rows, n)}


def write(datasets: dict[str, tuple[list[dict], int]], commits: dict[str, str]) -> None:
    OUT.mkdir(exist_ok=True)
    lines = ["# Provenance of the shipped datasets", "",
             "Text only (images are named by their upstream file name, never shipped). Rebuilt by "
             "`python -m hooked_clip.analyses.localize.build_data` (see its docstring). All three sources are MIT "
             "licensed; their licence texts are beside this file (`LICENSE-*`).", "",
             "| dataset | repository | commit | file | upstream items | shipped pairs |", "|---|---|---|---|---|---|"]
    for name, (rows, n) in sorted(datasets.items()):
        source = name.split(":")[0]
        file = {"valse": f"data/{name.split(':')[1]}.json", "aro": "temp_data/valid_neg_clip.tsv",
                "sugarcrepe": f"data/{name.split(':')[1].replace('-', '_')}.json"}[source]
        fname = name.replace(":", "__") + ".jsonl.gz"
        payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
        with open(OUT / fname, "wb") as fh:  # mtime 0: the same bytes on every rebuild
            with gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0, compresslevel=9) as gz:
                gz.write(payload)
        lines.append(f"| `{name}` | {SOURCES[source]} | `{commits[source]}` | `{file}` | {n} | {len(rows)} |")
    lines += ["", "VALSE: only items with `mturk.caption >= 2` (validated by the annotators). ARO/NegCLIP: each "
              "caption once per negative (two per caption). SugarCrepe: every refined pair."]
    (OUT / "PROVENANCE.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for source in SOURCES:
        p.add_argument(f"--{source}", type=Path, required=True, help=f"a git clone of {SOURCES[source]}")
    args = p.parse_args()
    datasets, commits = {}, {}
    for source, build in (("valse", valse), ("sugarcrepe", sugarcrepe), ("aro", aro)):
        repo = getattr(args, source)
        commits[source] = _git(repo, "rev-parse", "HEAD").strip()
        datasets.update(build(repo))
        (OUT / f"LICENSE-{source}").parent.mkdir(exist_ok=True)
        (OUT / f"LICENSE-{source}").write_text(_show(repo, "LICENSE"))
    write(datasets, commits)


if __name__ == "__main__":
    main()
