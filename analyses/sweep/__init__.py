"""Sweeps: many checkpoints × datasets × analyses, in-process or on a Ray cluster, keyed by checkpoint fingerprint.

Modules: ``manifest`` (the TOML manifest, checked field by field), ``analyses`` (what a unit can run, by name),
``run`` (the plan: fingerprints, duplicates, the QuickGELU trap; units run in-process, skipped when done,
resumed from their records), ``ray_backend`` (``--backend ray``: one Ray task per unit), ``report`` (the
cross-model report) and ``cli`` (``hooked-clip sweep``).
"""
