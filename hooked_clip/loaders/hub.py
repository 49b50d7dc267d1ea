"""Fail fast, and helpfully, when a checkpoint must come from the Hugging Face Hub but cannot.

Without this, ``from_pretrained(hub_id)`` on a machine with no network retries for ~46 s before failing
with an error that does not say how to supply the weights.
"""

from __future__ import annotations

from hooked_clip.errors import WeightsUnavailableError

import os
import socket
import threading
from urllib.parse import urlparse

_TRUE = {"1", "ON", "YES", "TRUE"}




def hub_offline_requested() -> bool:
    """Whether the user asked for offline mode (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(v, "").strip().upper() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """True when offline mode is off and a TCP connection to the Hub endpoint opens within ``timeout_s``
    (DNS lookup included)."""
    if hub_offline_requested():
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host, port = parsed.hostname or "huggingface.co", parsed.port or (443 if parsed.scheme != "http" else 80)
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(ok)


def unavailable(name: str, how_to_supply: str) -> WeightsUnavailableError:
    """The error for a checkpoint that is not cached locally while the Hub cannot be reached."""
    why = "offline mode is on (HF_HUB_OFFLINE)" if hub_offline_requested() else "the Hugging Face Hub is not reachable"
    return WeightsUnavailableError(
        f"Cannot load {name!r}: {why} and the weights are not in the local cache. {how_to_supply}"
    )
