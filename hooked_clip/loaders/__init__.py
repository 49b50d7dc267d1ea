"""Loaders: read a checkpoint into configs + state dicts + preprocessing (:mod:`~hooked_clip.loaders.checkpoint`),
one module per source (:mod:`~hooked_clip.loaders.transformers`, :mod:`~hooked_clip.loaders.open_clip`; the
shipped models live in :mod:`hooked_clip.models`), the readers of each tower (``hf_text``, ``hf_vision``,
``open_clip_text``, ``open_clip_vision``), the strict conversion machinery (:mod:`~hooked_clip.loaders.convert`),
safe file reading (:mod:`~hooked_clip.loaders.files`), the hub (:mod:`~hooked_clip.loaders.hub`), and the ONE
family table (:mod:`~hooked_clip.loaders.families`). Loaders never import a tower class:
:class:`~hooked_clip.HookedCLIP` builds the towers from what they return."""
