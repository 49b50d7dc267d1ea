"""The replication of Quantmeyer, Mosteiro & Gatt (2024) on VALSE existence (data shipped in ``data/``).

Names: "paper" means the paper's published numbers (``paper.py``, the "paper" columns of the report and the
model comparison); "reference" means only a per-item file in the authors' format that a run is compared with
item by item (``--reference FILE``, ``reference.py``, the report's replication section). Never the other way
round.

Modules: ``data`` (items, aligned pairs, subject prompts), ``layout`` (token rows), ``images`` (image
sources), ``study`` (per-item measurements of a run directory), ``segments`` (the segment rule, one place),
``aggregate`` (the paper's tables), ``report`` (a run directory's outputs: ``tables``, ``figures``,
``attention_html``, ``markdown`` with ``markdown_tracing``; numbers by ``formatting``), ``paper``,
``reference``, ``comparison`` (several models) and ``cli`` (``hooked-clip valse-negation``).
"""

from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
EXISTENCE_JSON = DATA_DIR / "existence.json"
