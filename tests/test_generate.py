"""``circle-rotate generate``: musubi's prompt syntax, its parser, the expert hand-over, named outputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from circle_rotate.kernel.errors import UserError
from circle_rotate.musubi.generate import GenerateRequest, Models, build_command, generate, high_noise_steps, read_prompts
from model_files import sparse_expert


def _lora(path: Path, *, fmt: str = "musubi", seed: int = 0, diffs=None) -> Path:
    """A small LoRA over two tiny-Wan modules in layout ``fmt`` (generate checks names, not shapes)."""
    from circle_rotate.kernel.wan_arch import tiny_config
    from circle_rotate.selfcheck.synthetic.lora import random_lora_modules
    from circle_rotate.tools.lora.files import write_lora

    modules = random_lora_modules(tiny_config(), rank=4, seed=seed, modules=["blocks.0.self_attn.q", "blocks.0.ffn.0"])
    return write_lora(path, modules, fmt=fmt, diffs=diffs)


@pytest.fixture
def files(musubi, tmp_path):
    from PIL import Image

    first, last = tmp_path / "car_first.png", tmp_path / "car_last.png"
    for p in (first, last):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(p)
    lora = {}
    for seed, expert in enumerate(("low", "high")):  # whole LoRAs: the CLI reads their layout (musubi's, here)
        lora[expert] = _lora(tmp_path / f"circle_rotate_{expert[0]}.safetensors", seed=seed)
    vae = tmp_path / "Wan2.1_VAE.pth"
    vae.write_bytes(b"\0")
    t5 = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    t5.write_bytes(b"\0")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"# orbit prompts\na silver sedan, camera orbits left --i {first} --ei {last}\n\n"
                       f"a red mug on a table, camera orbits right --i {last} --d 7\n", encoding="utf-8")
    return {"first": first, "last": last, "lora": lora, "vae": vae, "t5": t5, "prompts": prompts, "tmp": tmp_path}


def _request(files, dits, **kw) -> GenerateRequest:
    models = Models(dits["low"], dits["high"], files["vae"], files["t5"])
    return GenerateRequest(prompts=files["prompts"], out_dir=files["tmp"] / "videos", models=models,
                           lora_low=files["lora"]["low"], lora_high=files["lora"]["high"], **kw)


@pytest.fixture
def dits(real_size_experts):
    return real_size_experts


def test_prompt_file_through_musubis_line_parser(files):
    lines = read_prompts(files["prompts"], base_seed=42)
    assert [p.name for p in lines] == ["000_car_first", "001_car_last"]
    assert [p.seed for p in lines] == [42, 7]
    assert lines[0].text.endswith("--d 42") and lines[0].end_image == files["last"] and lines[1].end_image is None


@pytest.mark.parametrize("body,match", [("a car orbiting\n", "needs a first frame"),
                                        ("a car --i /nope/first.png\n", "image not found"),
                                        ("a --i {img} --d 3\nb --i {img} --d 3\n", "seed 3 is also used on line 1"),
                                        ("a car --i {img} --d notanint\n", "musubi cannot read this line"),
                                        ("a car --i {img} --w 100 --h 100\n", "100x100 is not in multiples of 16"),
                                        ("a car --i {img} --f 80\n", "80 frames is not 4n")])
def test_bad_prompt_lines_name_the_line(files, body, match):
    bad = files["tmp"] / "bad.txt"
    bad.write_text(body.format(img=files["first"]))
    with pytest.raises(UserError, match=match) as err:
        read_prompts(bad, base_seed=0)
    assert f"{bad}:" in str(err.value)


def test_command_passes_musubis_parser_with_each_lora_on_its_expert(files, dits):
    from circle_rotate.musubi.args import check_command

    accel = {e: files["tmp"] / f"lightx2v_{e}.safetensors" for e in ("low", "high")}
    plain = check_command(build_command(_request(files, dits), files["prompts"]))
    assert plain.lora_weight == [str(files["lora"]["low"])] and plain.lora_weight_high_noise == [str(files["lora"]["high"])]
    assert (plain.video_length, plain.flow_shift, plain.video_size, plain.fps) == (81, 8.0, [720, 1280], 16)
    assert plain.infer_steps is None and plain.sample_solver == "unipc"  # musubi's own defaults then
    fast = check_command(build_command(_request(files, dits, accel_lora_low=accel["low"], accel_lora_high=accel["high"]),
                                       files["prompts"]))
    assert fast.lora_weight == [str(accel["low"]), str(files["lora"]["low"])] and fast.lora_multiplier == [1.0, 1.0]
    assert (fast.infer_steps, fast.guidance_scale, fast.sample_solver) == (4, 1.6, "vanilla")


EXPERT_FLAGS = {"--lazy_loading", "--offload_inactive_dit"}


def test_experts_load_lazily_unless_both_are_kept_loaded(files, dits):
    from circle_rotate.musubi.args import check_command

    default = build_command(_request(files, dits), files["prompts"])
    assert EXPERT_FLAGS & set(default.args) == {"--lazy_loading"}
    ns = check_command(default)
    assert ns.lazy_loading and not ns.offload_inactive_dit
    swapped = check_command(build_command(_request(files, dits, blocks_to_swap=20), files["prompts"]))
    assert swapped.lazy_loading and swapped.blocks_to_swap == 20  # what musubi's docs/wan.md gives with block swap
    both = build_command(_request(files, dits, keep_both_loaded=True), files["prompts"])
    assert not EXPERT_FLAGS & set(both.args)
    ns = check_command(both)
    assert not ns.lazy_loading and not ns.offload_inactive_dit


class _Places:
    """Where musubi last meant each expert's weights to be, and the place of each forward pass.

    On this CPU musubi's device is ``torch.device("cpu")``, so the two kinds of move are told apart
    by their argument, as wan_generate_video.py writes them: an offload is ``.to("cpu")`` (a str),
    a move to the sampling device ``.to(device)`` / ``move_to_device_except_swap_blocks(device)``
    (a ``torch.device``)."""

    def __init__(self):
        import weakref

        self.place = weakref.WeakKeyDictionary()
        self.expert = weakref.WeakKeyDictionary()
        self.forwards = []  # (expert, place) per forward pass

    def moved(self, model, device):
        if isinstance(device, str) and device == "cpu":
            self.place[model] = "offloaded"
        elif isinstance(device, torch.device):
            self.place[model] = "on the device"

    def runs(self):
        """The forward passes with repeats collapsed: [(expert, place), ...]."""
        return [f for i, f in enumerate(self.forwards) if i == 0 or f != self.forwards[i - 1]]


@pytest.mark.slow
@pytest.mark.parametrize("memory", [{}, {"keep_both_loaded": True}], ids=["default", "keep_both_loaded"])
def test_no_expert_runs_offloaded_in_musubis_batch_mode(tiny_musubi_models, tiny_loras, tmp_path, monkeypatch, memory):
    """musubi's real wan_generate_video.main() on tiny models on this CPU, with the arguments build_command gives
    and two prompt lines: no forward pass may run on an expert whose last move was an offload to CPU. On a GPU
    that is CPU weights fed CUDA inputs, a crash (--offload_inactive_dit in musubi 0.3.4: the low expert at the
    first switch without block swap, the high expert from the second video with it)."""
    import sys
    import types

    from PIL import Image

    import musubi_tuner.wan_generate_video as G
    from circle_rotate.selfcheck import tiny_task
    from musubi_tuner.wan.modules.model import WanModel

    m = tiny_musubi_models
    tiny_task.register()
    first = tmp_path / "first.png"
    Image.new("RGB", (32, 32), (90, 120, 150)).save(first)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"a car, camera orbits --i {first} --d 1\na cup, camera orbits --i {first} --d 2\n")
    request = GenerateRequest(prompts=prompts, out_dir=tmp_path / "videos",
                              models=Models(m.dit_low, m.dit_high, m.vae, m.t5), lora_low=tiny_loras["low"],
                              lora_high=tiny_loras["high"], frames=5, size=(32, 32), steps=4, **memory)
    args = list(build_command(request, prompts).args)
    # the tiny task on this CPU, latents instead of videos (no decode); everything else as generate runs it
    args[args.index("--task") + 1] = tiny_task.TINY_TASK
    args[args.index("--output_type") + 1] = "latent"
    args += ["--device", "cpu"]
    assert high_noise_steps("unipc", 4, 8.0) == 2  # so each video switches experts after step 2

    places = _Places()
    to, move = WanModel.to, WanModel.move_to_device_except_swap_blocks

    def tracked_to(self, *a, **k):
        places.moved(self, a[0] if a else k.get("device"))
        return to(self, *a, **k)

    def tracked_move(self, device):
        places.moved(self, device)
        return move(self, device)

    load = G.load_dit_model

    def traced_load(args, dit_path, *a, **k):
        model = load(args, dit_path, *a, **k)
        places.expert[model] = "high" if Path(dit_path) == m.dit_high else "low"

        def before_forward(module, inputs, kwargs):
            places.forwards.append((places.expert[module], places.place.get(module, "never moved")))
            # bf16 inputs (the tiny T5's, the VAE's) meet fp32 tiny experts, which CUDA autocast mixes and
            # CPU autocast does not: one dtype here, never a device change
            f = lambda v: (v.float() if torch.is_tensor(v) and v.is_floating_point()  # noqa: E731
                           else [f(x) for x in v] if isinstance(v, list) else v)
            return tuple(f(x) for x in inputs), {key: f(v) for key, v in kwargs.items()}

        model.register_forward_pre_hook(before_forward, with_kwargs=True)
        return model

    monkeypatch.setattr(WanModel, "to", tracked_to)
    monkeypatch.setattr(WanModel, "move_to_device_except_swap_blocks", tracked_move)
    monkeypatch.setattr(G, "load_dit_model", traced_load)
    # torchvision is a stand-in on a CPU-only torch: its to_tensor (PIL RGB -> float CHW in [0, 1])
    monkeypatch.setattr(G, "TF", types.SimpleNamespace(to_tensor=lambda img: torch.from_numpy(
        np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()))
    monkeypatch.setitem(G.SUPPORTED_SIZES, tiny_task.TINY_TASK, G.SUPPORTED_SIZES["i2v-A14B"])
    for key, value in tiny_task.TINY_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(m.tokenizer_root)  # musubi finds the tokenizer relative to the working directory
    monkeypatch.setattr(sys, "argv", ["wan_generate_video.py", *args])
    G.main()

    runs = places.runs()
    assert [expert for expert, _ in runs] == ["high", "low", "high", "low"], runs  # both videos, both experts
    assert all(place == "on the device" for _, place in runs), runs
    assert len(list((request.out_dir / ".musubi-output").glob("*.safetensors"))) == 2


def test_the_paper_hands_over_after_two_of_four_steps(musubi):
    assert high_noise_steps("vanilla", 4, 8.0) == 2
    assert 0 < high_noise_steps("unipc", 40, 8.0) < 40


def test_dry_run_checks_the_models(files, dits, tmp_path):
    record = generate(_request(files, dits), dry_run=True, echo=lambda s: None)
    assert [v["name"] for v in record["videos"]] == ["000_car_first.mp4", "001_car_last.mp4"]
    swapped = _request(files, {"low": dits["high"], "high": dits["low"]})
    with pytest.raises(UserError, match="swapped"):
        generate(swapped, dry_run=True, echo=lambda s: None)


def test_prefixed_expert_with_a_lora_is_refused(files, dits, tmp_path):
    from circle_rotate.kernel.wan_arch import COMFY_PREFIX

    prefixed = tmp_path / "comfy" / "wan2.2_i2v_low_noise_14B_fp16.safetensors"
    prefixed.parent.mkdir()
    sparse_expert(prefixed, prefix=COMFY_PREFIX)
    with pytest.raises(UserError, match="silently skip the LoRA"):
        generate(_request(files, {**dits, "low": prefixed}), dry_run=True, echo=lambda s: None)


def test_videos_are_renamed_by_prompt_for_eval_pairing(files, dits, monkeypatch):
    import circle_rotate.musubi.generate as gen
    from circle_rotate.kernel.video_io import probe_video, write_video
    from circle_rotate.musubi.processes import ChainResult

    def fake_musubi(chains, env=None):  # what wan_generate_video.py leaves: <time>_<seed>.mp4 per prompt line
        (command,) = chains["generate"]
        args = list(command.args)
        save = Path(args[args.index("--save_path") + 1])
        for line in Path(args[args.index("--from_file") + 1]).read_text().splitlines():
            seed = line.rsplit("--d ", 1)[1].split()[0]
            write_video(save / f"20260101-000000_{seed}.mp4", [np.full((32, 32, 3), 90, np.uint8)] * 5, fps=16)
        return [ChainResult("generate", (0,))]

    monkeypatch.setattr(gen, "run_chains", fake_musubi)
    request = _request(files, dits)
    generate(request, dry_run=False, echo=lambda s: None)
    videos = sorted(p.name for p in request.out_dir.glob("*.mp4"))
    assert videos == ["000_car_first.mp4", "001_car_last.mp4"]
    assert probe_video(request.out_dir / videos[0]).frame_count == 5
    record = json.loads((request.out_dir / "generate.json").read_text())
    assert record["settings"]["high_noise_steps"] > 0 and record["differences_from_paper"]
    with pytest.raises(UserError, match="already exist"):
        generate(request, dry_run=True, echo=lambda s: None)


def _cli_args(files, dits):
    return ["generate", str(files["prompts"]), "-o", str(files["tmp"] / "videos"),
            "--dit-low", str(dits["low"]), "--dit-high", str(dits["high"]), "--vae", str(files["vae"]),
            "--t5", str(files["t5"]), "--lora-low", str(files["lora"]["low"]), "--lora-high", str(files["lora"]["high"])]


def test_cli_dry_run(files, dits, capsys):
    from circle_rotate.cli.main import main

    code = main([*_cli_args(files, dits), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "wan_generate_video.py" in out and "2 videos, 81 frames at 1280x720, shift 8" in out
    assert "differs from the paper" in out and not (files["tmp"] / "videos").exists()


@pytest.mark.parametrize("extra, flags", [([], {"--lazy_loading"}), (["--keep-both-loaded"], set())])
def test_cli_keep_both_loaded_reaches_the_command_and_record(files, dits, capsys, extra, flags):
    from circle_rotate.cli.main import main

    assert main([*_cli_args(files, dits), *extra, "--dry-run", "--json"]) == 0
    out = capsys.readouterr()
    record = json.loads(out.out)
    assert EXPERT_FLAGS & set(record["command"]) == flags
    assert ("--lazy_loading" in out.err) == bool(flags)  # the printed command line


@pytest.mark.parametrize("change, says", [(dict(size=(500, 1000)), "1000x500 is not in multiples of 16"),
                                          (dict(frames=80), "80 frames is not 4n+1"), (dict(steps=0), "--steps 0"),
                                          (dict(blocks_to_swap=40), "--blocks-to-swap 40"), (dict(gpu="-1"), "--gpus -1")])
def test_settings_musubi_would_refuse_or_drop_are_refused_first(files, dits, change, says):
    with pytest.raises(UserError, match=re.escape(says)):
        generate(_request(files, dits, **change), dry_run=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_generate_and_cache_refuse_in_one_line_not_musubis_traceback(files, dits, capsys):
    from circle_rotate.cli.main import main

    code = main(["generate", str(files["prompts"]), "-o", str(files["tmp"] / "videos"), "--dit-low", str(dits["low"]),
                 "--dit-high", str(dits["high"]), "--vae", str(files["vae"]), "--t5", str(files["t5"])])
    assert code == 2
    assert capsys.readouterr().err.strip().endswith("`circle-rotate smoke` runs the whole chain on tiny models)")
    assert not (files["tmp"] / "videos").exists()


def _musubi_changes(base: Path, lora: Path) -> int:
    """How many weights of ``base`` musubi-tuner's own inference LoRA merge (the one wan_generate_video.py's
    load_dit_model runs for --lora_weight) changes with ``lora`` at strength 1."""
    from safetensors.torch import load_file

    from musubi_tuner.utils.lora_utils import load_safetensors_with_lora_and_fp8

    before = load_file(str(base))
    after = load_safetensors_with_lora_and_fp8(str(base), [load_file(str(lora))], [1.0], False, torch.device("cpu"))
    return sum(not torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("fmt", ["comfy", "diffusers"])
def test_cli_refuses_a_lora_layout_musubi_would_silently_skip(files, dits, tiny_wan_dir, capsys, fmt):
    """musubi's --lora_weight finds a LoRA only under its lora_unet_* names: a ComfyUI- or Diffusers-layout
    LoRA (what `convert --format comfy` writes for ComfyUI users) applies not at all, with only a log line.
    The dry run refuses it in one line naming the file and the convert that fixes it; the fix works."""
    from circle_rotate.cli.main import main

    other = _lora(files["tmp"] / f"circle_rotate_l_{fmt}.safetensors", fmt=fmt)
    base = tiny_wan_dir / "wan2.2_i2v_low_noise_14B_fp32.safetensors"
    assert _musubi_changes(base, files["lora"]["low"]) == 2 and _musubi_changes(base, other) == 0  # the defect
    capsys.readouterr()  # musubi's progress bars
    args = _cli_args(files, dits)
    args[args.index("--lora-low") + 1] = str(other)
    assert main([*args, "--dry-run"]) == 2
    captured = capsys.readouterr()
    fixed = other.with_name(f"{other.stem}_musubi.safetensors")
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and f"{other}: a {fmt}-layout LoRA" in err
    assert "would silently apply none of its modules" in err
    assert f"fix: circle-rotate convert {other} -o {fixed} --format musubi" in err
    assert "wan_generate_video.py" not in captured.out and not (files["tmp"] / "videos").exists()

    assert main(["-q", "convert", str(other), "-o", str(fixed), "--format", "musubi"]) == 0
    assert _musubi_changes(base, fixed) == 2
    args[args.index("--lora-low") + 1] = str(fixed)
    assert main([*args, "--dry-run"]) == 0, capsys.readouterr()


def test_dry_run_warns_of_differences_musubi_skips(files, dits, capsys):
    """Whole-tensor differences (.diff/.diff_b, as the lightx2v LoRAs carry) beside musubi-named pairs: musubi
    applies the pairs and skips the differences, so the dry run goes on and says so, as inspect words it."""
    from circle_rotate.cli.main import main
    from circle_rotate.kernel.wan_arch import dit_shapes, tiny_config
    from circle_rotate.tools.lora.files import write_lora

    shapes = dit_shapes(tiny_config())
    diffs = {p: torch.full(tuple(shapes[p]), 0.01) for p in ("blocks.0.norm3.weight", "blocks.0.ffn.0.bias")}
    accel = _lora(files["tmp"] / "lightx2v_4step_low.safetensors", diffs=diffs)
    assert main([*_cli_args(files, dits), "--accel-lora-low", str(accel), "--accel-lora-high", str(accel),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"warning: {accel}: 2 whole-tensor difference(s)" in out and "--lora_weight skips them" in out
    assert "wan_generate_video.py" in out

    only = files["tmp"] / "only_diffs.safetensors"
    write_lora(only, {}, fmt="musubi", diffs=diffs)
    assert main([*_cli_args(files, dits), "--accel-lora-low", str(only), "--accel-lora-high", str(accel),
                 "--dry-run"]) == 2
    assert "holds only whole-tensor differences" in capsys.readouterr().err


def _lokr(path: Path, split_w1) -> Path:
    """A musubi-named LyCORIS LoKr over two tiny-Wan modules, ``w2`` low-rank; the modules in ``split_w1`` store
    ``w1`` decomposed (``lokr_w1_a @ lokr_w1_b``, as LyCORIS may), the others whole (as musubi-tuner does)."""
    from safetensors.torch import save_file

    from circle_rotate.kernel.wan_arch import dit_shapes, musubi_lora_name, tiny_config

    shapes, g, tensors = dit_shapes(tiny_config()), torch.Generator().manual_seed(5), {}
    for m in ("blocks.0.self_attn.q", "blocks.0.ffn.0"):
        out_f, in_f = shapes[m + ".weight"]
        stem = musubi_lora_name(m)
        if m in split_w1:
            tensors[stem + ".lokr_w1_a"], tensors[stem + ".lokr_w1_b"] = torch.randn(4, 2, generator=g), \
                torch.randn(2, 4, generator=g)
        else:
            tensors[stem + ".lokr_w1"] = torch.randn(4, 4, generator=g)
        tensors[stem + ".lokr_w2_a"] = torch.randn(out_f // 4, 2, generator=g) * 0.1
        tensors[stem + ".lokr_w2_b"] = torch.randn(2, in_f // 4, generator=g) * 0.1
        tensors[stem + ".alpha"] = torch.tensor(2.0)
    save_file(tensors, str(path))
    return path


def test_cli_refuses_a_lokr_whose_w1_musubi_cannot_find(files, dits, tiny_wan_dir, capsys):
    """musubi-tuner's LoKr merge (networks/lokr.py merge_weights_to_tensor) looks for a whole lokr_w1 and leaves
    the weight as it is otherwise: a LyCORIS LoKr with w1 decomposed, in musubi's own names, applies none of it.
    convert only renames, so the fix named is merge, which applies it; a LoKr with w1 whole still passes."""
    from circle_rotate.cli.main import main
    from circle_rotate.tools.lora.musubi_load import musubi_lora_problems

    base = tiny_wan_dir / "wan2.2_i2v_low_noise_14B_fp32.safetensors"
    whole = _lokr(files["tmp"] / "lokr_whole.safetensors", ())
    split = _lokr(files["tmp"] / "lokr_split.safetensors", ("blocks.0.self_attn.q", "blocks.0.ffn.0"))
    half = _lokr(files["tmp"] / "lokr_half.safetensors", ("blocks.0.ffn.0",))
    assert [_musubi_changes(base, p) for p in (whole, split, half)] == [2, 0, 1]  # the defect
    capsys.readouterr()  # musubi's progress bars
    assert musubi_lora_problems(whole) == []
    (severity, message, fix), = musubi_lora_problems(half)
    assert severity == "error" and "would silently apply 1 of its 2 modules" in message
    assert "'lora_unet_blocks_0_ffn_0.lokr_w1_a'" in message and fix.startswith("merge it into the expert instead")

    args = _cli_args(files, dits)
    args[args.index("--lora-low") + 1] = str(split)
    assert main([*args, "--dry-run"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and f"{split}: 2 LoKr module(s) store w1 decomposed" in err
    assert "would silently apply none of its modules" in err
    assert f"fix: merge it into the expert instead (circle-rotate merge EXPERT --lora {split} -o" in err
    assert "wan_generate_video.py" not in captured.out

    merged = files["tmp"] / "merged_low.safetensors"  # the fix: merge applies every module
    assert main(["-q", "merge", str(base), "--lora", str(split), "-o", str(merged)]) == 0
    from safetensors.torch import load_file

    before, after = load_file(str(base)), load_file(str(merged))
    assert sum(not torch.equal(after[k], before[k]) for k in before) == 2


def test_cli_refuses_a_dora_lora_musubi_would_apply_without_its_magnitude(files, dits, tiny_wan_dir, capsys):
    """A DoRA in musubi's names: musubi's hook adds the pairs as a plain LoRA and never reads dora_scale (the
    result is the same as without it), which merge and convert refuse to do for DoRA; generate refuses it too."""
    from safetensors.torch import load_file, save_file

    from circle_rotate.cli.main import main

    base = tiny_wan_dir / "wan2.2_i2v_low_noise_14B_fp32.safetensors"
    plain = files["lora"]["low"]
    tensors = load_file(str(plain))
    for key in [k for k in tensors if k.endswith(".lora_down.weight")]:
        tensors[key.replace(".lora_down.weight", ".dora_scale")] = torch.full((1, tensors[key].shape[1]), 3.0)
    dora = files["tmp"] / "dora_l.safetensors"
    save_file(tensors, str(dora))

    from musubi_tuner.utils.lora_utils import load_safetensors_with_lora_and_fp8

    def applied(path):
        return load_safetensors_with_lora_and_fp8(str(base), [load_file(str(path))], [1.0], False, torch.device("cpu"))
    with_dora, without = applied(dora), applied(plain)
    assert all(torch.equal(with_dora[k], without[k]) for k in without)  # the magnitude is never applied
    capsys.readouterr()

    args = _cli_args(files, dits)
    args[args.index("--lora-low") + 1] = str(dora)
    assert main([*args, "--dry-run"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and f"{dora}: a DoRA LoRA: 2 module(s) carry a learned magnitude" in err
    assert "musubi-tuner's --lora_weight never applies" in err and "LoraLoaderModelOnly" in err
    assert "wan_generate_video.py" not in captured.out
