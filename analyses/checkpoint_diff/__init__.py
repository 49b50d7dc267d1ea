"""The checkpoint-diff study: where does a fine-tune fix negation? ``hooked-clip checkpoint-diff --base A
--tuned B`` patches the tuned checkpoint's states into the base (and the reverse) on the negated sentences of
VALSE existence (or any file in its format), per hidden state × token role and per head, beside the weight
diff (:mod:`hooked_clip.analyses.weight_diff`), and writes report.md, results.json and figures named by both
models. ``measure.py`` measures, ``report.py`` writes, ``cli.py`` is the subcommand."""
