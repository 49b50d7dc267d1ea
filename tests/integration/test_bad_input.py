"""Each bad input gets one clear exception naming the problem and the fix."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import largest_difference

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
    from hooked_clip.errors import UnsafeCheckpointError

    path = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torch.jit.script(_WithSetstate()), str(path))
    capfd.readouterr()

    def no_jit(*args, **kwargs):
        raise AssertionError("torch.jit.load was called: a checkpoint's code would run")

    monkeypatch.setattr(torch.jit, "load", no_jit)
    with pytest.raises(UnsafeCheckpointError, match=r"ViT-B-32.pt' is a TorchScript archive.*run the code.*"
                                                     r"weights as tensors only.*safetensors"):
        HookedCLIP.from_open_clip("ViT-B-32", pretrained=str(path))
    assert "CODE FROM THE CHECKPOINT RAN" not in capfd.readouterr().out


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_empty_and_truncated_checkpoints_name_the_file(tmp_path, suffix):
    from safetensors.torch import save_file

    from hooked_clip.errors import UnreadableFileError

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
    from hooked_clip.errors import UnreadableFileError

    path = tmp_path / "objects.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)
    with pytest.raises(UnreadableFileError, match=r"objects.pt' cannot be read as a torch.save state dict.*state_dict\(\)"):
        HookedCLIP.from_open_clip("ViT-B-32", pretrained=str(path))


# --------------------------------------------------------------------------- the CLI's error policy (issue 14)
def _cli(argv, capsys):
    """Run the console script; returns (exit status, stderr)."""
    from hooked_clip.analyses.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    return exit_.value.code, capsys.readouterr().err


@pytest.mark.parametrize("chunk", ["0", "-5"])
def test_cli_refuses_a_non_positive_chunk_in_one_line(tmp_path, capsys, chunk):
    code, err = _cli(["valse-negation", "--chunk", chunk, "--out", str(tmp_path), "--no-progress"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"hooked-clip: error: chunk (--chunk) must be a positive integer, got {chunk}")
    assert not list(tmp_path.iterdir())  # refused before any work


def test_cli_refuses_clipseg_where_it_would_be_ignored(tmp_path, capsys):
    code, err = _cli(["valse-negation", "--clipseg", str(tmp_path), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "--clipseg measures subject sizes in the --images photos" in err


def test_cli_user_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    ckpt = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torch.jit.script(_WithSetstate()), str(ckpt))
    argv = ["valse-negation", "--model", f"open_clip:ViT-B-32:{ckpt}", "--out", str(tmp_path / "run")]
    code, err = _cli(argv, capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "ViT-B-32.pt' is a TorchScript archive" in err and "--debug" in err
    from hooked_clip.errors import UnsafeCheckpointError

    with pytest.raises(UnsafeCheckpointError):
        from hooked_clip.analyses.cli import main

        main(["--debug", *argv])
    code, err = _cli(["valse-negation", "--model", "open_clip:ViT-B-32", "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "open_clip:NAME:TAG" in err


def test_cli_bugs_keep_their_traceback(tmp_path, monkeypatch):
    from hooked_clip.analyses.cli import main
    from hooked_clip.analyses.valse_negation import cli as valse

    def bug(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(valse, "run", bug)
    with pytest.raises(ZeroDivisionError, match="a bug"):
        main(["valse-negation", "--out", str(tmp_path)])


# ------------------------------------------------------------------------------ the study's run dir (issue 14)
@pytest.fixture(scope="module")
def random_demo():
    from hooked_clip.models.tiny_negation import build
    from hooked_clip.models.tiny_negation.world import OBJECTS

    return build(OBJECTS, seed=7)


def _study_run(model, out, **settings):
    from hooked_clip.analyses.valse_negation.images import SceneImages
    from hooked_clip.analyses.valse_negation.study import Settings, run_items

    return run_items(model, out, model_id="random", images=SceneImages(), progress=False,
                     settings=Settings(**{"limit": 6, "chunk": 3, **settings}))


def test_study_run_reads_no_grad_tensors(random_demo, tmp_path, recwarn):
    """The default run warned 'Converting a tensor with requires_grad=True to a scalar' on every item."""
    _study_run(random_demo, tmp_path)
    assert not [w for w in recwarn if "requires_grad" in str(w.message)]


def test_truncated_record_is_measured_again(random_demo, tmp_path):
    full = _study_run(random_demo, tmp_path)
    victim = sorted((tmp_path / "items").glob("*.json"))[2]
    victim.write_text(victim.read_text()[:40])
    with pytest.warns(UserWarning, match=rf"{victim.name}' cannot be read as an item record.*Measuring item "
                                         rf"'{victim.stem}' again"):
        again = _study_run(random_demo, tmp_path)
    assert again.keys() == full.keys()
    assert all(largest_difference(again[k], full[k]) == 0 for k in full if k != victim.stem)
    assert largest_difference(json.loads(victim.read_text()), again[victim.stem]) == 0  # rewritten whole
    # measured in another batch (alone, not in a chunk of 3): equal up to float summation order
    assert largest_difference(again[victim.stem], full[victim.stem]) <= 1e-5


def test_damaged_run_dir_files_are_named(random_demo, tmp_path):
    from hooked_clip.errors import UnreadableFileError

    _study_run(random_demo, tmp_path)
    embeds = tmp_path / "image_embeds.safetensors"
    embeds.write_bytes(embeds.read_bytes()[:100])
    with pytest.raises(UnreadableFileError, match=r"image_embeds.safetensors' cannot be read.*Delete it and run again"):
        _study_run(random_demo, tmp_path)
    (tmp_path / "config.json").write_text('{"study_version": 1, "mod')
    with pytest.raises(UnreadableFileError, match=r"config.json' cannot be read as the run's settings.*Delete the run directory"):
        _study_run(random_demo, tmp_path)


def test_settings_refuse_non_positive_sizes():
    from hooked_clip.analyses.valse_negation.study import Settings

    for bad in (dict(chunk=0), dict(chunk=-5), dict(batch_size=0), dict(rome_samples=0), dict(limit=0), dict(chunk=2.5)):
        with pytest.raises(ValueError, match=rf"{next(iter(bad))} \(--.*\) must be a positive"):
            Settings(**bad)


def test_run_dir_files_keep_the_umask_mode(tmp_path):
    import os
    import stat

    from hooked_clip.analyses import run_dirs  # the one owner of run-directory writes

    mask = os.umask(0o022)
    os.umask(mask)
    assert run_dirs._UMASK == mask
    run_dirs.atomic_write(tmp_path / "report.md", "text")
    assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == 0o666 & ~mask  # mkstemp alone gives 0o600


def test_images_folder_relative_or_absolute_is_the_same_run(tiny_model, tmp_path, monkeypatch):
    from PIL import Image

    from hooked_clip.analyses.valse_negation.data import load_items
    from hooked_clip.analyses.valse_negation.images import FolderImages
    from hooked_clip.analyses.valse_negation.study import Settings, run_items, select_items

    folder = tmp_path / "images"
    folder.mkdir()
    items = select_items(load_items(), 2)
    for x in items:
        Image.new("RGB", (40, 50), (120, 30, 200)).save(folder / x.image_file)
    monkeypatch.chdir(tmp_path)
    kwargs = dict(model_id="t", settings=Settings(limit=2), progress=False)
    first = run_items(tiny_model, tmp_path / "run", images=FolderImages("images"), **kwargs)
    again = run_items(tiny_model, tmp_path / "run", images=FolderImages(folder.resolve()), **kwargs)
    assert all(largest_difference(again[k], first[k]) == 0 for k in first)  # accepted as the same run


def test_truncated_jpeg_is_named(tiny_model, tmp_path):
    from PIL import Image

    from hooked_clip.analyses.valse_negation.data import load_items
    from hooked_clip.analyses.valse_negation.images import FolderImages
    from hooked_clip.errors import UnreadableFileError

    items = load_items()[:2]
    gen = torch.Generator().manual_seed(0)
    for x in items:
        Image.fromarray((torch.rand(60, 60, 3, generator=gen) * 255).byte().numpy()).save(tmp_path / x.image_file)
    cut = tmp_path / items[1].image_file
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    with pytest.raises(UnreadableFileError, match=rf"{cut.name}' cannot be read as an image.*intact copy"):
        FolderImages(tmp_path).embed(tiny_model, items)


# ----------------------------------------------------------------------------------- text inputs (issue 14)
def test_empty_inputs(tiny_model):
    with pytest.raises(ValueError, match="empty list of texts"):
        tiny_model.encode_text([])
    for shape in [(2, 0), (0, 5)]:
        with pytest.raises(ValueError, match=rf"tokens of shape \({shape[0]}, {shape[1]}\) hold no text.*to_tokens"):
            tiny_model.encode_text(torch.zeros(shape, dtype=torch.long))


def test_argmax_row_without_eot_is_refused():
    """Argmax pooling on a row without EOT used to pool at SOT (the largest id left) without a word."""
    from conftest import hf_clip

    model = HookedCLIP.from_hf(hf_clip("tiny_argmax", with_vision=False), device="cpu")
    tokens = model.to_tokens(["There is a cat.", "no"])
    cut = tokens.clone()
    cut[1, 2] = 0  # row 1's EOT replaced by padding
    with pytest.raises(ValueError, match=r"rows \[1\] have no EOT token \(49407\), so pooling='argmax'.*pool_positions"):
        model.encode_text(cut)
    with torch.no_grad():  # an explicit pooling position is still accepted
        assert model.text(cut, pool_positions=torch.tensor([6, 1])).shape == (2, 32)


def test_to_str_tokens_takes_one_text(tiny_model):
    with pytest.raises(TypeError, match=r"takes one text, got a list of 2; for several use \[model.to_str_tokens\(t\)"):
        tiny_model.to_str_tokens(["a cat", "a dog"])
    assert tiny_model.to_str_tokens("a cat")[1:3] == ["a", "cat"]


def test_too_long_text_advice_works_where_it_is_given(tiny_model):
    """encode_text refuses truncate=...; the advice must name a call that accepts it."""
    long = ["word " * 80]
    with pytest.raises(ValueError, match=r"model.to_tokens\(texts, truncate=True\) and pass those tokens"):
        tiny_model.encode_text(long)
    tiny_model.encode_text(tiny_model.to_tokens(long, truncate=True))  # the advice, followed, works


@pytest.mark.parametrize("kwargs, message", [
    (dict(stop_at_layer=3), r"stop_at_layer=3 is out of range for a tower of 2 blocks; use -2..2"),
    (dict(stop_at_layer=-3), r"stop_at_layer=-3 is out of range"),
    (dict(start_at_layer=5), r"start_at_layer=5 is out of range"),
    (dict(start_at_layer=2, stop_at_layer=1), r"start_at_layer=2 comes after stop_at_layer=1"),
    (dict(stop_at_layer=1.0), r"stop_at_layer must be an int"),
])
def test_layer_range_is_checked(tiny_model, kwargs, message):
    tokens = tiny_model.to_tokens(["There is a cat."])
    resid = tiny_model.text(tokens, stop_at_layer=1)
    inp = resid if "start_at_layer" in kwargs else tokens
    with pytest.raises((ValueError, TypeError), match=message):
        tiny_model.text(inp, tokens=tokens, **kwargs) if "start_at_layer" in kwargs else tiny_model.text(inp, **kwargs)
    with torch.no_grad():  # TransformerLens's negative indices still work
        assert torch.equal(tiny_model.text(tokens, stop_at_layer=-1), resid)


def test_dtype_names_and_load_model_dtype():
    from conftest import hf_clip

    from hooked_clip import load_model

    ref = load_model("tiny-negation")
    half = load_model("tiny-negation", dtype="float16")  # load_model used to refuse dtype altogether
    assert half.cfg.dtype == torch.float16 and half.text.W_E.dtype == torch.float16
    with torch.no_grad():
        a, b = ref.encode_text(["There are no dogs."]), half.encode_text(["There are no dogs."])
    assert b.dtype == torch.float16 and (a - b.float()).abs().max() < 1e-2
    assert HookedCLIP.from_hf(hf_clip("tiny_eot"), device="cpu", dtype="torch.bfloat16").cfg.dtype == torch.bfloat16
    for bad in ("float17", torch.int8):
        with pytest.raises(ValueError, match=r"dtype must be a floating-point torch.dtype or one of \['bf16'"):
            load_model("tiny-negation", dtype=bad)
        with pytest.raises(ValueError, match="dtype must be a floating-point torch.dtype"):
            HookedCLIP.from_hf(hf_clip("tiny_eot"), device="cpu", dtype=bad)


# ------------------------------------------------------------------------------ analysis inputs (issue 14)
def test_tuned_lens_load_refuses_other_files(tmp_path):
    from safetensors.torch import save_file

    from hooked_clip.analyses.lens import TunedLens
    from hooked_clip.errors import UnreadableFileError

    other = tmp_path / "model.safetensors"
    save_file({"embed.W_E": torch.zeros(4, 4)}, str(other))
    with pytest.raises(UnreadableFileError, match=r"model.safetensors' is not a tuned lens.*TunedLens.save"):
        TunedLens.load(other)
    empty = tmp_path / "lens.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(UnreadableFileError, match=r"lens.safetensors' is empty"):
        TunedLens.load(empty)
    good = tmp_path / "good.safetensors"
    TunedLens(8, 2).save(good)
    assert len(TunedLens.load(good).translators) == 2


def test_attribution_metric_without_gradient(tiny_model):
    from hooked_clip.analyses.attribution import attribution_patch

    clean, corrupt = ["There are no cats."], ["There are some cats."]
    target = tiny_model.encode_text(clean).detach()

    def detached(embeds):
        return (embeds.detach() * target).sum(-1)

    for ig_steps in (0, 2):
        with pytest.raises(ValueError, match=r"metric's output has no gradient.*use activation_patch"):
            attribution_patch(tiny_model, clean, corrupt, detached, "resid_pre", "layer_pos", ig_steps=ig_steps)


def test_alignment_and_senders_validation():
    from hooked_clip.analyses.validation import check_alignment, check_senders

    with pytest.raises(TypeError, match=r"alignment must hold integer positions .* got dtype torch.float32"):
        check_alignment(torch.tensor([[0.0, 1.7]]), 1, 2, 3)
    with pytest.raises(ValueError, match=r"alignment must have shape \[batch, pos\] = \(1, 2\), got \(2,\)"):
        check_alignment(torch.tensor([0, 1]), 1, 2, 3)
    with pytest.raises(ValueError, match=r"alignment values must lie in -1..2"):
        check_alignment([[0, 3]], 1, 2, 3)
    assert check_alignment([[0, -1]], 1, 2, 3).dtype == torch.long
    with pytest.raises(ValueError, match="senders is empty, so there is nothing to patch"):
        check_senders([])
    with pytest.raises(TypeError, match="senders must be names"):
        check_senders([3])
    assert check_senders("L0H1") == ["L0H1"] and check_senders(None) is None


def test_demo_encode_image_of_one_image():
    from PIL import Image

    from hooked_clip import load_model

    demo = load_model("tiny-negation")
    with pytest.raises(ValueError, match=r"not a Image: it has no pixel tower"):
        demo.encode_image(Image.new("RGB", (8, 8)))
    with pytest.raises(ValueError, match=r"for one scene, wrap it in a list: \[\['dog', 'tree'\]\]"):
        demo.encode_image(["dog", "tree"])
    assert demo.encode_image([["dog", "tree"]]).shape == (1, demo.cfg.d_proj)


# ---------------------------------------------------------------------- checkpoint directories (issue 14)
def test_empty_or_damaged_checkpoint_dir_names_the_file(tmp_path):
    from conftest import hf_clip

    from hooked_clip.errors import UnreadableFileError

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty' is an empty directory.*save_pretrained"):
        HookedCLIP.from_pretrained(tmp_path / "empty")
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"loose' has no config.json \(it holds: model.safetensors\)"):
        HookedCLIP.from_pretrained(tmp_path / "loose")
    ckpt = tmp_path / "ckpt"
    hf_clip("tiny_eot").save_pretrained(ckpt)
    config, weights = ckpt / "config.json", ckpt / "model.safetensors"
    good_config, good_weights = config.read_text(), weights.read_bytes()
    config.write_text(good_config[:50])
    with pytest.raises(UnreadableFileError, match=r"config.json' cannot be read as a model configuration"):
        HookedCLIP.from_pretrained(ckpt)
    config.write_text(good_config)
    for cut, message in [(0, "is empty"), (1000, "cannot be read as a safetensors"),
                         (len(good_weights) * 9 // 10, "cannot be read as a safetensors")]:
        weights.write_bytes(good_weights[:cut])
        with pytest.raises(UnreadableFileError, match=rf"model.safetensors' {message}"):
            HookedCLIP.from_pretrained(ckpt)


def test_hardening_probes_of_this_round(tmp_path):
    """encode_text(truncate=True) works; fractional indices are refused, not truncated; a config saying bfloat16
    beside fp32 weights loads the file's own values; a tuned lens fits on a half-precision model."""
    import torch
    from conftest import hf_clip

    from hooked_clip import HookedCLIP, load_model
    from hooked_clip.analyses.lens import TunedLens
    from hooked_clip.analyses.metrics import cosine_to_target
    from hooked_clip.analyses.patching import activation_patch

    model = load_model("tiny-negation", device="cpu")
    long_text = "there is a dog " * 40
    with pytest.raises(ValueError, match="truncate=True"):
        model.encode_text([long_text])
    cut = model.encode_text([long_text], truncate=True)
    assert torch.allclose(cut, model.encode_text(model.to_tokens([long_text], truncate=True)))
    metric = cosine_to_target(torch.randn(1, model.cfg.d_proj))
    for kw in ({"positions": [2.9]}, {"layers": [0.9]}):
        with pytest.raises(ValueError, match="must be whole indices"):
            activation_patch(model, ["there is no dog."], ["there is a dog."], metric, progress=False, **kw)
    hf = hf_clip("tiny_eot")
    hf.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16", "torch_dtype": "bfloat16"}))
    loaded = HookedCLIP.from_pretrained(tmp_path / "ckpt", device="cpu")
    assert loaded.cfg.dtype == torch.float32
    assert torch.equal(loaded.text.W_E, hf.text_model.embeddings.token_embedding.weight)  # not rounded through bf16
    edited = load_model("tiny-negation", device="cpu")
    edited.cfg.n_layers = 1
    with pytest.raises(ValueError, match="4 blocks but cfg.n_layers = 1: the config was changed"):
        activation_patch(edited, ["there is no dog."], ["there is a dog."], metric, progress=False)
    half = load_model("tiny-negation", device="cpu", dtype="float16")
    lens = TunedLens.fit(half, ["there is no dog.", "there is a cat."], steps=2)
    assert lens.translators[0].weight.dtype == torch.float32


def test_a_record_without_its_fields_is_measured_again_and_a_file_out_is_refused(random_demo, tmp_path, capsys):
    full = _study_run(random_demo, tmp_path)
    victim = sorted((tmp_path / "items").glob("*.json"))[1]
    victim.write_text(json.dumps({"id": victim.stem}))  # valid JSON, but not a measured record
    with pytest.warns(UserWarning, match=rf"lacks the fields \['negation_in'.*Measuring item '{victim.stem}' again"):
        again = _study_run(random_demo, tmp_path)
    assert largest_difference(again[victim.stem], full[victim.stem]) <= 1e-5
    (tmp_path / "a_file").write_text("x")
    code, err = _cli(["valse-negation", "--model", "tiny-negation", "--limit", "2", "--out", str(tmp_path / "a_file"),
                      "--no-progress"], capsys)
    assert code == 2 and "is a file; a run writes a directory there" in err and "Traceback" not in err


def test_image_inputs_that_are_not_images_are_refused_naming_the_fix(tmp_path, tiny_model):
    """A real checkpoint's pipeline (transformers' CLIP image processor) would read a string as a path, URL or
    base64; a Path, None, a text, an empty image and raw 0..255 tensors are refused before it, naming the fix."""
    from pathlib import Path

    import torch
    from PIL import Image

    from hooked_clip.analyses.metrics import cosine_to_target
    from hooked_clip.analyses.patching import activation_patch

    model = tiny_model
    for bad in (Path(tmp_path / "x.png"), None, "a photo of a dog", [str(tmp_path / "x.png")]):
        with pytest.raises(TypeError, match="not an image: open files first"):
            model.encode_image(bad)
    with pytest.raises(ValueError, match="0x5 pixels"):
        model.encode_image(Image.new("RGB", (0, 5)))
    size = model.vision.cfg.image_size
    with pytest.raises(ValueError, match="raw 0..255 pixels"):
        model.encode_image(torch.rand(1, 3, size, size) * 255)
    metric = cosine_to_target(torch.randn(2, model.cfg.d_proj))
    with pytest.raises(TypeError, match="texts go to the text tower"):
        activation_patch(model, ["a dog", "a cat"], ["a car", "a tree"], metric, tower="vision", progress=False)
    images = [Image.new("RGB", (40, 40))] * 2
    with pytest.raises(TypeError, match="images go to the image tower"):
        activation_patch(model, images, images, metric, tower="text", progress=False)


def test_run_identity_reference_and_config_probes(tmp_path, capsys):
    """One spelling per model directory; one model under two names refused before it runs twice; records without a
    config.json are never reused; a reference naming an item twice or holding impossible values is refused;
    a config transformers cannot build, a NaN layer_norm_eps and another checkpoint's tokenizer are refused."""
    import torch
    from conftest import hf_clip

    from hooked_clip import HookedCLIP
    from hooked_clip.analyses.valse_negation.reference import ReferenceFormatError, load_reference
    from hooked_clip.analyses.valse_negation.study import RunDirMismatchError, Settings, run_items
    from hooked_clip.analyses.valse_negation.images import SceneImages
    from hooked_clip import load_model
    from hooked_clip.errors import CheckpointMismatchError

    hf_clip("tiny_eot").save_pretrained(tmp_path / "D")
    (tmp_path / "other" / "D").parent.mkdir()
    hf_clip("tiny_argmax").save_pretrained(tmp_path / "other" / "D")
    code, err = _cli(["valse-negation", "--model", str(tmp_path / "D"), "--model", str(tmp_path / "D") + "/",
                      "--out", str(tmp_path / "cmp"), "--no-progress"], capsys)
    assert code == 2 and "lists a model twice" in err
    import shutil

    shutil.copytree(tmp_path / "D", tmp_path / "a b")  # one model under two names: refused before it runs twice
    code, err = _cli(["valse-negation", "--model", str(tmp_path / "D"), "--model", str(tmp_path / "a b"), "--limit", "1",
                      "--out", str(tmp_path / "cmp"), "--no-progress"], capsys)
    assert code == 2 and f"--model {tmp_path / 'D'} and --model {tmp_path / 'a b'} are one model" in err
    assert ["_D-fp-" in p.name for p in (tmp_path / "cmp").iterdir()] == [True]  # only the first ran
    # records left without their config.json
    demo = load_model("tiny-negation", device="cpu")
    run_items(demo, tmp_path / "run", model_id="tiny-negation", images=SceneImages(), settings=Settings(limit=2),
              progress=False)
    (tmp_path / "run" / "config.json").unlink()
    with pytest.raises(RunDirMismatchError, match="item records but no config.json"):
        run_items(demo, tmp_path / "run", model_id="tiny-negation", images=SceneImages(), settings=Settings(limit=2),
                  progress=False)
    # the reference file
    item = {"caption": "a", "foil": "b", "negation": "caption", "logit_caption": 2.0, "logit_foil": 1.0, "score": 1.0,
            "segment": "correct", "positions": 7, "similarity_caption_foil": 0.9, "subject": None,
            "subject_area": None, "subject_area_binary": None}
    path = tmp_path / "ref.json"
    path.write_text('{"x": ' + json.dumps(item) + ', "x": ' + json.dumps(item) + "}")
    with pytest.raises(ReferenceFormatError, match=r"\['x'\] appear twice"):
        load_reference(path)
    for field, value, words in (("positions", -3, "number of tokens"), ("similarity_caption_foil", 7.5, "not a cosine")):
        path.write_text(json.dumps({"x": {**item, field: value}}))
        with pytest.raises(ReferenceFormatError, match=words):
            load_reference(path)
    # configs and tokenizers
    for key, value, words in (("layer_norm_eps", float("nan"), "layer_norm_eps=nan"), ("hidden_act", "swishy", "swishy")):
        d = tmp_path / f"bad_{key}"
        hf_clip("tiny_eot").save_pretrained(d)
        cfg = json.loads((d / "config.json").read_text())
        cfg["text_config"][key] = value
        (d / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(CheckpointMismatchError, match=words):
            HookedCLIP.from_pretrained(d, device="cpu")
    from transformers import BertTokenizerFast  # noqa: F401  (a tokenizer of another vocabulary)
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    wrong = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0, "zebra": 1}, unk_token="[UNK]")),
                                    unk_token="[UNK]")
    wrong.save_pretrained(tmp_path / "D")
    with pytest.raises(CheckpointMismatchError, match="as unknown tokens only"):
        HookedCLIP.from_pretrained(tmp_path / "D", device="cpu")
    assert torch.is_tensor(demo.logit_scale)
