"""The localisation atlas: where the changed tokens of minimal pairs reach the read-out, per phenomenon and model
(``hooked-clip localize``).

Modules: ``pairs_file`` (the documented JSON-lines pairs format and the shipped datasets, loaded by name),
``align`` (token-level alignment of pairs of unequal length), ``trace`` (the generalised CTE map and head scores),
``study`` (a model over pairs, chunked and resumable), ``report`` (the atlas report and figures), ``cli`` and
``build_data`` (rebuilds ``datasets/`` from the upstream repositories).
"""
