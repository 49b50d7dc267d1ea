"""The replication of Quantmeyer, Mosteiro & Gatt (2024) on VALSE existence (data shipped in ``data/``)."""

from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
EXISTENCE_JSON = DATA_DIR / "existence.json"
