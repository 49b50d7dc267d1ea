"""Weight diffs on hand-built cases: identical checkpoints give 0 everywhere; a head whose value subspace is
turned by known angles gives those angles; relative changes against plain norms."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import hf_clip

from hooked_clip import HookedCLIP
from hooked_clip.analyses.weight_diff import SUBSPACES, principal_angles, weight_diff
from hooked_clip.errors import ArchitectureMismatchError


@pytest.fixture(scope="module")
def text():
    return HookedCLIP.from_hf(hf_clip("tiny_eot", seed=0), device="cpu").text


def test_identical_checkpoints_differ_by_nothing(text):
    diff = weight_diff(text, copy.deepcopy(text))
    assert diff.relative_change.abs().max() == 0 and diff.head_change.abs().max() == 0
    assert diff.angles.abs().max() <= 1e-5
    assert {"embed", "pos_embed", "L0_ln1", "L1_mlp", "L0_attn_bias", "ln_final", "W_proj"} <= set(diff.components)


def test_turned_value_subspace_gives_known_angles(text):
    base, tuned = copy.deepcopy(text), copy.deepcopy(text)
    d_model, d_head = text.cfg.d_model, text.cfg.d_head
    q, _ = torch.linalg.qr(torch.randn(d_model, d_model, generator=torch.Generator().manual_seed(0)))
    phi, psi = 0.3, 1.1
    turned = q[:, :d_head].clone()
    turned[:, 0] = math.cos(phi) * q[:, 0] + math.sin(phi) * q[:, d_head]
    turned[:, 1] = math.cos(psi) * q[:, 1] + math.sin(psi) * q[:, d_head + 1]
    with torch.no_grad():
        base.blocks[1].attn.W_V[0] = q[:, :d_head]
        tuned.blocks[1].attn.W_V[0] = turned
        tuned.blocks[0].ln1.w.mul_(1.1)
    diff = weight_diff(base, tuned)
    read = diff.angles[SUBSPACES.index("OV_read"), 1, 0]
    expected = torch.tensor([0.0] * (d_head - 2) + [phi, psi])
    assert (read - expected).abs().max() <= 1e-5
    assert diff.angles[SUBSPACES.index("OV_write"), 1, 0].max() <= 1e-4  # W_O untouched: the write side stays
    others = diff.angles.clone()
    others[SUBSPACES.index("OV_read"), 1, 0] = 0
    others[SUBSPACES.index("OV_write"), 1, 0] = 0
    assert others.abs().max() <= 1e-5
    # relative changes against plain matrix norms
    w_o = base.blocks[1].attn.W_O[0].detach()
    ref = ((turned - q[:, :d_head]) @ w_o).norm() / (q[:, :d_head] @ w_o).norm()
    assert abs(float(diff.head_change[1, 1, 0]) - float(ref)) <= 1e-5
    assert float(diff.head_change.flatten().topk(2).values[1]) == 0  # only that head's OV moved
    ln = torch.cat([base.blocks[0].ln1.w.detach(), base.blocks[0].ln1.b.detach()])
    ref_ln = 0.1 * base.blocks[0].ln1.w.detach().norm() / ln.norm()
    change = dict(zip(diff.components, diff.relative_change.tolist()))
    assert abs(change["L0_ln1"] - float(ref_ln)) <= 1e-6
    assert max(v for k, v in change.items() if k != "L0_ln1") == 0
    df = diff.to_dataframe()
    row = df[df.component == "L1H0 OV"].iloc[0]
    assert row.kind == "OV" and abs(row.max_angle_read - math.degrees(psi)) <= 1e-3
    assert diff.plot() is not None


def test_principal_angles_of_planes():
    e = torch.eye(3)
    q1 = e[:, :1]
    q2 = (math.cos(0.5) * e[:, 0] + math.sin(0.5) * e[:, 1])[:, None]
    assert abs(float(principal_angles(q1, q2)[0]) - 0.5) <= 1e-6
    assert float(principal_angles(q1, e[:, 2:3])[0]) == pytest.approx(math.pi / 2, abs=1e-6)


def test_refuses_other_architectures(text):
    other = HookedCLIP.from_hf(hf_clip("tiny_argmax", seed=0), device="cpu").text
    with pytest.raises(ArchitectureMismatchError, match="act_fn"):
        weight_diff(text, other)
