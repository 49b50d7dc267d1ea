"""Each bad input gets one clear exception naming the problem and the fix."""

from __future__ import annotations

import pytest
import torch

from hooked_clip import CLIPTextConfig, HookedCLIP, HookedCLIPText


def test_wrong_token_dtype_and_shape(tiny_model):
    tokens = tiny_model.to_tokens(["There is a cat."])
    with pytest.raises(TypeError, match=r"integer ids, got dtype torch.float32.*to_tokens.*start_at_layer"):
        tiny_model.encode_text(tokens.float())
    with pytest.raises(ValueError, match=r"\[batch, pos\], got \(7,\); add a batch dimension"):
        tiny_model.encode_text(tokens[0])
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 49408\)"):
        tiny_model.encode_text(tokens + 49408)
    with pytest.raises(TypeError, match="tensor of ids or text"):
        tiny_model.text(None)


def test_over_context_length(tiny_model):
    with pytest.raises(ValueError, match="over the context length of 77.*truncate=True"):
        tiny_model.encode_text(["word " * 80])
    with pytest.raises(ValueError, match="80 positions, over the context length 77"):
        tiny_model.encode_text(torch.ones(1, 80, dtype=torch.long))


def test_start_at_layer_inputs(tiny_model):
    tokens = tiny_model.to_tokens(["There is a cat."])
    resid = tiny_model.text(tokens, stop_at_layer=1)
    with pytest.raises(ValueError, match=r"\[batch, pos, d_model=64\], got \(1, 7, 32\)"):
        tiny_model.text(resid[..., :32], start_at_layer=1, tokens=tokens)
    with pytest.raises(ValueError, match="pass tokens=... or pool_positions="):
        tiny_model.text(resid, start_at_layer=1)
    with pytest.raises(TypeError, match="float residual stream"):
        tiny_model.text(tokens, start_at_layer=1, tokens=tokens)
    with pytest.raises(ValueError, match=r"pool_positions must lie in \[0, 7\)"):
        tiny_model.text(resid, start_at_layer=1, pool_positions=torch.tensor([9]))


def test_eot_pooling_without_eot(tiny_model):
    tokens = tiny_model.to_tokens(["There is a cat."])[:, :-1]
    with pytest.raises(ValueError, match=r"rows \[0\] have no EOT token"):
        tiny_model.encode_text(tokens)


def test_bad_config_and_return_type(tiny_model):
    with pytest.raises(ValueError, match="act_fn='relu' is not supported"):
        CLIPTextConfig(act_fn="relu")
    with pytest.raises(ValueError, match="pooling='cls' is not supported"):
        CLIPTextConfig(pooling="cls")
    with pytest.raises(ValueError, match="n_heads \\* d_head must equal d_model"):
        CLIPTextConfig(d_model=64, n_heads=3, d_head=20)
    with pytest.raises(ValueError, match="return_type must be one of"):
        tiny_model.text(tiny_model.to_tokens("a"), return_type="logits")


def test_bad_image_and_similarity_input(tiny_model):
    with pytest.raises(ValueError, match=r"float \[batch, channels, height, width\]"):
        tiny_model.encode_image(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="must be 64x64"):
        tiny_model.encode_image(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="empty list of images"):
        tiny_model.encode_image([])
    t = tiny_model.encode_text(["a cat"])
    with pytest.raises(ValueError, match="text_embeds have width 32 but image_embeds 16"):
        tiny_model.similarity(t, torch.zeros(1, 16))
    with pytest.raises(ValueError, match=r"image_embeds must be a \[n, d_proj\] tensor"):
        tiny_model.similarity(t, torch.zeros(32))


def test_trimming_only_where_exact():
    assert CLIPTextConfig(pooling="argmax").trims
    assert not CLIPTextConfig(pooling="last").trims
    assert not CLIPTextConfig(causal=False).trims
    assert not CLIPTextConfig(trim_after_pool=False).trims


def test_non_causal_and_last_pooling_are_not_trimmed():
    """Without a causal mask later positions change earlier ones, so nothing may be dropped."""
    for cfg in (CLIPTextConfig(d_model=32, n_heads=2, d_head=16, n_layers=1, d_mlp=64, causal=False, seed=0, device="cpu"),
                CLIPTextConfig(d_model=32, n_heads=2, d_head=16, n_layers=1, d_mlp=64, pooling="last", seed=0, device="cpu")):
        model = HookedCLIPText(cfg)
        tokens = model.to_tokens(["a cat", "there are no dogs in the picture"])
        _, cache = model.run_with_cache(tokens)
        assert cache["resid_pre", 0].shape[1] == tokens.shape[1]


# ------------------------------------------------------------------------------ checkpoint files (issue 14)
class _WithSetstate(torch.nn.Module):
    """A TorchScript module whose __setstate__ runs on load: the code a checkpoint can smuggle in."""

    def __init__(self):
        super().__init__()
        self.register_buffer("weight", torch.ones(2))

    def forward(self, x):
        return x * self.weight

    @torch.jit.export
    def __getstate__(self):
        return (self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]):
        print("CODE FROM THE CHECKPOINT RAN")
        self.weight = state[0]
        self.training = state[1]


def test_torchscript_checkpoint_is_refused_without_running_it(tmp_path, monkeypatch, capfd):
    from hooked_clip.files import UnsafeCheckpointError

    path = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torch.jit.script(_WithSetstate()), str(path))
    capfd.readouterr()

    def no_jit(*args, **kwargs):
        raise AssertionError("torch.jit.load was called: a checkpoint's code would run")

    monkeypatch.setattr(torch.jit, "load", no_jit)
    with pytest.raises(UnsafeCheckpointError, match=r"ViT-B-32.pt' is a TorchScript archive.*run the code.*"
                                                     r"torch.save\(torch.jit.load\(.*state_dict\(\)"):
        HookedCLIP.from_open_clip("ViT-B-32", pretrained=str(path))
    assert "CODE FROM THE CHECKPOINT RAN" not in capfd.readouterr().out


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_empty_and_truncated_checkpoints_name_the_file(tmp_path, suffix):
    from safetensors.torch import save_file

    from hooked_clip.files import UnreadableFileError

    good = tmp_path / f"good{suffix}"
    sd = {"a": torch.randn(64, 64), "b": torch.randn(64)}
    torch.save(sd, good) if suffix == ".pt" else save_file(sd, str(good))
    empty, cut = tmp_path / f"empty{suffix}", tmp_path / f"cut{suffix}"
    empty.write_bytes(b"")
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UnreadableFileError, match=rf"empty{suffix}' is empty \(0 bytes\)"):
        HookedCLIP.from_open_clip("ViT-B-32", pretrained=str(empty))
    with pytest.raises(UnreadableFileError, match=rf"cut{suffix}' cannot be read as a .*truncated"):
        HookedCLIP.from_open_clip("ViT-B-32", pretrained=str(cut))


def test_pickle_with_objects_is_not_unpickled(tmp_path):
    from hooked_clip.files import UnreadableFileError

    path = tmp_path / "objects.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)
    with pytest.raises(UnreadableFileError, match=r"objects.pt' cannot be read as a torch.save state dict.*state_dict\(\)"):
        HookedCLIP.from_open_clip("ViT-B-32", pretrained=str(path))
