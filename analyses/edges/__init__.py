"""Edge-level circuits of either tower on any metric of the similarity: the edge graph (:mod:`.graph`),
EAP / EAP-IG scores (:mod:`.scores`), exact edge patching (:mod:`.patch`), circuits and their faithfulness
(:mod:`.circuit`), drawings (:mod:`.draw`) and text-token x image-patch interactions (:mod:`.interactions`)."""

from hooked_clip.analyses.edges.circuit import FaithfulnessCurve, faithfulness_curve, run_circuit
from hooked_clip.analyses.edges.draw import circuit_graph, draw_circuit
from hooked_clip.analyses.edges.graph import EdgeGraph
from hooked_clip.analyses.edges.interactions import Interactions, token_patch_interactions
from hooked_clip.analyses.edges.patch import edge_patch
from hooked_clip.analyses.edges.scores import EdgeScores, edge_attribution

__all__ = ["EdgeGraph", "EdgeScores", "FaithfulnessCurve", "Interactions", "circuit_graph", "draw_circuit",
           "edge_attribution", "edge_patch", "faithfulness_curve", "run_circuit", "token_patch_interactions"]
