"""The paper's numbers: Quantmeyer, Mosteiro & Gatt (2024) on OpenAI CLIP ViT-B/32 (``openai/clip-vit-base-patch32``,
logit scale 100, 12 blocks x 8 heads) with Visual7W photos, from the authors' released results (the
project's PAPER.md, sections named below). The one owner of these numbers: the report and the model
comparison print them beside a run's own, never mixed with them. They are "paper" throughout the study;
"reference" is only the per-item file of ``--reference`` (``reference.py``).

Layers: hidden-state layers 0..12 (0 = embeddings output); the tables' attention layers and heads 1-indexed as the
paper prints them; single heads as 0-indexed (block, head) pairs, printed by ``formatting.head_name`` as
"L3H1 (Layer 4 Head 2)" (the paper's L4-H2).
"""

from __future__ import annotations

from hooked_clip.analyses.valse_negation.formatting import head_name

MODEL = "openai/clip-vit-base-patch32 (Quantmeyer et al. 2024, authors' released results)"
LOGIT_SCALE = 100.0
N_LAYERS, N_HEADS = 12, 8

# §3.2-3.3: items
COUNTS = {"valid": 505, "valid_caption": 256, "valid_foil": 249, "aligned": 490, "aligned_caption": 250,
          "aligned_foil": 240, "dropped": 15, "dropped_caption": 6, "dropped_foil": 9, "aligned_t7": 140,
          "tokens_min": 7, "tokens_max": 16}

# §3.4: (n, accuracy d > 0, (correct, ambiguous, incorrect)) per sentence kind and negation location
SCORES = {
    ("original", "all"): (505, 0.691, (159, 318, 28)),
    ("original", "caption"): (256, 0.676, (73, 174, 9)),
    ("original", "foil"): (249, 0.707, (86, 144, 19)),
    ("aligned", "all"): (490, 0.686, (153, 295, 42)),
    ("aligned", "caption"): (250, 0.668, (72, 150, 28)),
    ("aligned", "foil"): (240, 0.704, (81, 145, 14)),
}
VALSE_EXISTENCE_ACCURACY = 0.669  # VALSE's own CLIP pairwise accuracy on existence (MM-SHAP Table 2)
D_STATS = {"min": -3.04, "max": 6.58, "sd": 1.17, "mean_correct": 1.82, "mean_ambiguous": 0.14,
           "mean_incorrect": -1.6, "caption_logit_min": 14.6, "caption_logit_max": 32.1}  # aligned set
EXAMPLES = {  # §3.4 fixtures: aligned d (and the original sentences' d where given)
    "existence_visual7w_1": {"d": -3.037, "segment": "incorrect", "similarity": 0.9338, "d_original": -2.072},
    "existence_visual7w_2359483": {"d": -1.291, "segment": "incorrect"},
    "existence_visual7w_1159467": {"d": 0.987, "segment": "ambiguous"},
}

# §4.5: mean CTE, rows from the negator on (the first three rows are exactly 0), layers 0..12
CTE = {
    ("caption", "correct"): {
        "n": 72,
        "rows": {"a/some/no": [1.00, .71, .62, .48, .04, .03, .04, .04, .02, .02, .00, .00, .00],
                 "subj 1st": [.00, .13, .30, .44, .60, .55, .40, .38, .30, .17, .14, .07, .00],
                 "subj further": [.00, .00, .07, .10, .19, .17, .17, .13, .13, .08, .07, .04, .00],
                 ".": [.00, .01, .05, .03, .35, .46, .45, .43, .41, .30, .25, .14, .00],
                 "[EOT]": [.00, .00, .00, -.02, .13, .23, .31, .36, .43, .68, .77, .93, 1.00]},
        "std": [.40, .28, .23, .21, .20, .19, .15, .15, .16, .23, .28, .35, .40],
        "mean_std": 0.249,
        "column_sums": [1.00, .85, 1.04, 1.03, 1.31, 1.45, 1.36, 1.35, 1.30, 1.24, 1.23, 1.18, 1.00],
    },
    ("foil", "correct"): {
        "n": 81,
        "rows": {"a/some/no": [1.00, .90, .86, .69, .18, .12, .10, .09, .06, .05, .01, .01, .00],
                 "subj 1st": [.00, .03, .09, .15, .17, .09, .09, .07, .03, .01, .02, .02, .00],
                 "subj further": [.00, .01, .04, .06, .11, .08, .09, .06, .04, .02, .02, .01, .00],
                 ".": [.00, .01, .03, .07, .36, .30, .29, .26, .19, .13, .09, .05, .00],
                 "[EOT]": [.00, .00, .01, .01, .19, .25, .29, .33, .45, .59, .68, .79, 1.00]},
        "std": [.40, .36, .33, .25, .09, .09, .10, .11, .16, .22, .26, .31, .40],
        "mean_std": 0.236,
        "column_sums": [1.00, .95, 1.02, .99, 1.01, .85, .86, .81, .77, .79, .82, .88, 1.00],
    },
    ("foil", "incorrect"): {
        "n": 14,
        "rows": {"a/some/no": [1.00, .95, .68, .49, .11, .05, .02, .02, .02, .02, .02, .01, .00],
                 "subj 1st": [.00, .01, .18, .25, .29, .27, .26, .24, .23, .12, .12, .04, .00],
                 "subj further": [.00, .01, .06, .07, .15, .12, .10, .09, .08, .05, .04, .02, .00],
                 ".": [.00, -.00, .06, .11, .33, .35, .32, .29, .26, .20, .17, .13, .00],
                 "[EOT]": [.00, -.01, -.00, .10, .30, .37, .48, .55, .58, .76, .77, .87, 1.00]},
        "std": None,
        "mean_std": 0.249,
        "column_sums": None,
    },
}

# §5.2: mean max attention difference Δ, [head 1..8][layer 1..12], all segments (caption n = 250, foil n = 240)
HEAD_DELTA = {
    "caption": [[.06, .11, .02, -.00, .07, .02, .03, .01, .01, .02, .00, .05],
                [.03, .09, .02, .39, .08, -.00, .00, .02, .00, .13, .00, .02],
                [.09, .03, .07, .24, -.01, .02, .01, .00, .01, .01, .01, .02],
                [.12, .08, .03, -.00, .00, -.00, .00, .00, .01, .01, .00, .04],
                [.05, .06, .04, .00, .05, -.01, .01, .04, .00, .00, .02, .08],
                [.10, .06, .20, .01, .00, .02, .03, .00, .01, .01, .00, .03],
                [.06, .02, .00, .12, .00, -.01, .01, .00, .00, .01, .00, .06],
                [.04, .11, .04, .01, .02, .02, .01, .00, .02, .01, .01, .04]],
    "foil": [[.07, .14, .02, .01, .05, .02, .02, .02, .01, .03, .00, .06],
             [.06, .08, .02, .38, .10, -.00, .00, .03, .00, .16, .00, .04],
             [.07, .04, .08, .23, -.00, .03, .01, .00, .01, .02, .02, .04],
             [.10, .08, .06, -.00, .00, -.00, .00, .00, .01, .01, .00, .05],
             [.07, .02, .03, .01, .05, .00, .01, .06, .00, .00, .02, .10],
             [.10, .09, .23, .02, .01, .05, .04, .00, .01, .01, .00, .04],
             [.05, .01, .01, .07, .01, -.00, .01, .00, .00, .01, .00, .08],
             [.04, .08, .03, .02, .02, .03, .02, .00, .05, .02, .01, .05]],
}
HEAD_N = {"caption": 250, "foil": 240}
LAYER_MEAN = {"caption": [.070, .069, .053, .096, .025, .008, .013, .010, .008, .026, .006, .042],
              "foil": [.069, .069, .060, .092, .030, .016, .014, .014, .012, .032, .008, .058]}
# (block, head) 0-indexed -> (caption, foil): the paper's L4-H2, L4-H3, L3-H6, L10-H2, L4-H7, L2-H1
TOP_HEADS = {(3, 1): (0.39, 0.38), (3, 2): (0.24, 0.23), (2, 5): (0.20, 0.23), (9, 1): (0.13, 0.16),
             (3, 6): (0.12, 0.07), (1, 0): (0.11, 0.14)}

# §5.3: layer 4, mean attention difference to "no" per head and query row (caption, foil); "subj further" = max
ZOOM = {
    "H2": {"a/some/no": (-.04, -.01), "subj 1st": (.25, .08), "subj further": (.14, .15), ".": (.35, .34), "[EOT]": (.12, .15)},
    "H3": {"a/some/no": (.05, .06), "subj 1st": (.23, .19), "subj further": (.03, .09), ".": (.04, .07), "[EOT]": (-.01, -.00)},
    "H7": {"a/some/no": (.04, .04), "subj 1st": (.09, .01), "subj further": (.02, .01), ".": (.02, .01), "[EOT]": (-.02, -.03)},
}
ZOOM_OTHERS = {"a/some/no": .02, "subj 1st": .01, "subj further": .02, ".": .02, "[EOT]": .01}  # |value| at most
ZOOM_OTHERS_NOTE = "H1 and H4 reach −0.03 to −0.05 at \".\" and [EOT]"

# §5.4: per-head Pearson r of Δ with d
HEAD_CORR_NOTE = (f"all |r| ≤ 0.30; negation in caption: largest |r| 0.18, {head_name(3, 1)} −0.11, {head_name(3, 2)} "
                  f"0.16; negation in foil: {head_name(10, 5)} 0.30, {head_name(10, 6)} 0.23, {head_name(3, 1)} 0.07, "
                  f"{head_name(3, 2)} −0.07")

# §6.1-6.2: confounds (n, Pearson r with d)
CONFOUNDS = {
    "similarity_vs_d_caption": (250, 0.03),
    "similarity_vs_d_caption_without_no_people": (206, -0.20),
    "similarity_vs_d_foil": (240, -0.22),
    "similarity_vs_d_all": (490, -0.05),
    "length_vs_d_caption": (250, 0.11),
    "length_vs_d_caption_without_no_people": (206, 0.04),
    "length_vs_d_foil": (240, -0.19),
    "subject_size_vs_d_foil": (236, 0.32),
    "subject_size_binary_vs_d_foil": (236, 0.28),
}
SIMILARITY = {"min": 0.914, "max": 0.990, "mean_caption": 0.951, "mean_foil": 0.961}
SUBJECTS = (236, 240)  # foil-negated pairs with a subject, of all foil-negated pairs
SUBJECT_SIZE_QUARTILES = (0.0, 0.034, 0.086, 0.189, 0.617)  # min, Q1, median, Q3, max of the soft area
ACCURACY_ABOVE_SIZE = {0.0: (236, 0.703), 0.05: (157, 0.771), 0.1: (102, 0.853), 0.15: (82, 0.854),
                       0.2: (52, 0.885), 0.3: (29, 0.828), 0.35: (21, 0.905)}

# §7: mean-image ablation of the image tower (thesis), mean drop in d over 12 layers, correct segment
ABLATION = {"MLP": (0.60, 0.86), "MHA": (0.38, 0.39)}  # (negation in foil, negation in caption)
ABLATION_LAYER1 = {"MLP": (1.24, 1.49), "MHA": (1.04, 1.24)}  # range of the layer-1 effects
