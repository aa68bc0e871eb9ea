"""The shell recipes: the published flags exactly, musubi's own parsers accept every command."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from circle_rotate.kernel.errors import UserError
from circle_rotate.musubi.recipe_reader import (CACHE_RECIPE, TRAIN_RECIPES, diff_options, edit_options, option_values,
                                         parse_printed, read_recipe, recipe_path, recipe_variables, split_options,
                                         train_command)

ROOT = Path(__file__).resolve().parents[1]
SEED_README = ROOT.parent / "shared" / "seed" / "circle-rotate-readme.md"

# The low-noise "Training" block of the study's README (Jklaity/Circle-Rotate), verbatim, as of
# 769b73c ("Update training commands with full parameters", 2026-02-05; unchanged at 32282c3).
PUBLISHED = r"""
CUDA_VISIBLE_DEVICES=0 accelerate launch --num_processes 1 \
    src/musubi_tuner/wan_train_network.py \
    --task i2v-A14B \
    --dit models/wan2.2_i2v_low_noise_14B_fp16.safetensors \
    --dataset_config datasets/circle/circle.toml \
    --vae models/Wan2.1_VAE.pth \
    --sdpa --fp8_base \
    --optimizer_type adamw8bit \
    --learning_rate 2e-4 \
    --gradient_checkpointing \
    --gradient_checkpointing_cpu_offload \
    --max_data_loader_n_workers 1 \
    --persistent_data_loader_workers \
    --network_module networks.lora_wan \
    --network_dim 32 \
    --timestep_sampling shift \
    --discrete_flow_shift 8.0 \
    --max_train_epochs 100 \
    --save_every_n_epochs 1 \
    --seed 42 \
    --output_dir ./outputs/low \
    --output_name circle_rotate_l \
    --mixed_precision fp16 \
    --blocks_to_swap 30 \
    --vae_cache_cpu \
    --t5 models/models_t5_umt5-xxl-enc-bf16.pth \
    --sample_prompts prompts.txt \
    --sample_every_n_epochs 1 \
    --sample_at_first
"""
# The flags the README added in 769b73c to the command the study first published (../shared/seed):
# memory, data loading and preview samples, none of which changes what is learned.
ADDED_IN_769B73C = {"--gradient_checkpointing": [], "--gradient_checkpointing_cpu_offload": [],
                    "--max_data_loader_n_workers": ["1"], "--persistent_data_loader_workers": [],
                    "--blocks_to_swap": ["30"], "--vae_cache_cpu": [], "--t5": ["models/models_t5_umt5-xxl-enc-bf16.pth"],
                    "--sample_prompts": ["prompts.txt"], "--sample_every_n_epochs": ["1"], "--sample_at_first": []}
# The published command's paths, given to the recipe as its variables.
PUBLISHED_PATHS = {"DIT_LOW": "models/wan2.2_i2v_low_noise_14B_fp16.safetensors", "VAE": "models/Wan2.1_VAE.pth",
                   "DATASET_CONFIG": "datasets/circle/circle.toml", "MUSUBI_SCRIPTS": "src/musubi_tuner",
                   "ACCELERATE": "accelerate", "GPU": "0", "OUTPUT_DIR_LOW": "./outputs/low",
                   "T5": "models/models_t5_umt5-xxl-enc-bf16.pth", "SAMPLE_PROMPTS": "prompts.txt"}
MEMORY_KNOBS = {"GRADIENT_CHECKPOINTING": "1", "GRADIENT_CHECKPOINTING_CPU_OFFLOAD": "1", "BLOCKS_TO_SWAP": "20",
                "VAE_CACHE_CPU": "1", "SAVE_LAST_N_EPOCHS": "5"}
MEMORY_OFF = {"GRADIENT_CHECKPOINTING": "0", "GRADIENT_CHECKPOINTING_CPU_OFFLOAD": "0", "BLOCKS_TO_SWAP": "0",
              "VAE_CACHE_CPU": "0"}


def _published_tokens(text: str) -> list:
    return shlex.split(text.replace("\\\n", " "))


def _options(tokens: list) -> dict:
    at = next(i for i, t in enumerate(tokens) if t.endswith("wan_train_network.py"))
    return dict(split_options(tokens[at + 1:]))


def test_the_first_published_command_is_this_one_less_memory_loader_and_sample_flags():
    if not SEED_README.is_file():
        pytest.skip(f"{SEED_README} not present (the embedded copy is still checked by the other tests)")
    block = re.search(r"```bash\n# Train low-noise LoRA\n(.*?)```", SEED_README.read_text(encoding="utf-8"), re.S)
    assert block is not None
    first, now = _published_tokens(block.group(1)), _published_tokens(PUBLISHED)
    assert now[:now.index("src/musubi_tuner/wan_train_network.py")] == first[:first.index(
        "src/musubi_tuner/wan_train_network.py")]  # the same launch
    assert {k: v for k, v in _options(now).items() if k not in ADDED_IN_769B73C} == _options(first)
    assert {k: v for k, v in _options(now).items() if k in ADDED_IN_769B73C} == ADDED_IN_769B73C


def test_reproduce_low_is_the_published_command_token_for_token():
    (cmd,) = read_recipe("reproduce_low.sh", env=PUBLISHED_PATHS)
    assert cmd.shell().split(" ", 1)[0] == "CUDA_VISIBLE_DEVICES=0"
    assert shlex.split(cmd.shell()) == _published_tokens(PUBLISHED)


def test_reproduce_low_parses_like_the_published_command(musubi):
    from circle_rotate.musubi.args import check_command, parse_musubi_args

    published = _published_tokens(PUBLISHED)
    script_at = published.index("src/musubi_tuner/wan_train_network.py")
    theirs = parse_musubi_args("wan_train_network", published[script_at + 1:])
    ours = check_command(train_command("reproduce", "low", env=PUBLISHED_PATHS))
    assert vars(ours) == vars(theirs)
    assert ours.network_alpha == 1 and ours.network_dim == 32  # the implicit scale 1/32 the recipe states


def test_high_differs_from_low_only_in_expert_and_outputs():
    low, high = train_command("reproduce", "low"), train_command("reproduce", "high")
    diff = {d.option: (d.before, d.after) for d in diff_options(low.args, high.args)}
    assert set(diff) == {"--dit", "--output_dir", "--output_name"}
    assert "high_noise" in diff["--dit"][1][0] and diff["--output_name"][1] == ("circle_rotate_h",)
    assert option_values(low.args)["--output_name"] == ["circle_rotate_l"]


@pytest.mark.parametrize("expert,lo,hi", [("low", "0", "900"), ("high", "900", "1000")])
def test_recommended_is_reproduce_plus_the_documented_split(expert, lo, hi):
    rep, rec = train_command("reproduce", expert), train_command("recommended", expert)
    diff = {d.option: d.after for d in diff_options(rep.args, rec.args)}
    assert diff == {"--network_alpha": ("1",), "--min_timestep": (lo,), "--max_timestep": (hi,),
                    "--preserve_distribution_shape": (), "--output_dir": diff["--output_dir"]}


def test_boundary_is_written_once_and_converted(musubi):
    from musubi_tuner.wan.configs import WAN_CONFIGS

    assert recipe_variables(["BOUNDARY_T"])["BOUNDARY_T"] == str(round(WAN_CONFIGS["i2v-A14B"].boundary * 1000))
    low = train_command("recommended", "low", env={"BOUNDARY": "0.875"})
    high = train_command("recommended", "high", env={"BOUNDARY": "0.875"})
    assert option_values(low.args)["--max_timestep"] == ["875"] and option_values(high.args)["--min_timestep"] == ["875"]


def test_memory_knobs_add_only_memory_flags():
    plain = train_command("reproduce", "low", env=MEMORY_OFF)
    knobs = train_command("reproduce", "low", env=MEMORY_KNOBS)
    diff = {d.option: d.after for d in diff_options(plain.args, knobs.args)}
    assert diff == {"--gradient_checkpointing": (), "--gradient_checkpointing_cpu_offload": (),
                    "--blocks_to_swap": ("20",), "--vae_cache_cpu": (), "--save_last_n_epochs": ("5",)}


def test_the_published_memory_settings_are_the_default_and_sampling_waits_for_a_prompt_file():
    values = option_values(train_command("reproduce", "low").args)
    assert values["--blocks_to_swap"] == ["30"] and {"--gradient_checkpointing", "--vae_cache_cpu"} <= set(values)
    assert not {"--sample_prompts", "--t5", "--sample_at_first"} & set(values)  # the study's prompts.txt is unpublished


def test_recipes_run_under_sh_as_under_bash(tmp_path):
    import subprocess

    for shell in ("sh", "bash"):
        out = subprocess.run([shell, str(recipe_path("reproduce_low.sh"))], capture_output=True,
                             env={"PATH": "/usr/bin:/bin", "CIRCLE_ROTATE_PRINT": "1", "PYTHON": "false"})
        assert out.returncode == 0, (shell, out.stderr)
        (cmd,) = parse_printed(out.stdout.decode(), source=shell)
        assert option_values(cmd.args)["--seed"] == ["42"]


@pytest.mark.parametrize("recipe", sorted({f for r in TRAIN_RECIPES.values() for f in r.values()} | {CACHE_RECIPE}))
def test_every_recipe_command_passes_musubis_parser(musubi, recipe, tmp_path):
    from circle_rotate.musubi.args import check_command

    env = {**MEMORY_KNOBS, "SAMPLE_PROMPTS": str(tmp_path / "prompts.txt"), "FP8_T5": "1"}
    for env_set in ({}, env):
        commands = read_recipe(recipe, env=env_set)
        assert commands
        for cmd in commands:
            ns = check_command(cmd)  # musubi's parser for that script and accelerate's launcher parser
            assert ns is not None


def test_cache_recipe_is_i2v_and_resumable():
    latents, text = read_recipe(CACHE_RECIPE)
    assert latents.script == "wan_cache_latents" and text.script == "wan_cache_text_encoder_outputs"
    for cmd in (latents, text):
        assert {"--skip_existing", "--keep_cache"} <= set(option_values(cmd.args))
    assert "--i2v" in option_values(latents.args)


def test_musubi_rejects_an_unknown_flag_with_the_recipes_name(musubi):
    from circle_rotate.musubi.args import check_command

    cmd = train_command("reproduce", "low")
    with pytest.raises(UserError) as err:
        check_command(cmd.with_args([*cmd.args, "--learnig_rate", "1e-4"]))
    assert "reproduce_low.sh" in str(err.value) and "unrecognized arguments" in str(err.value)
    with pytest.raises(UserError, match="invalid choice"):
        check_command(cmd.with_args(edit_options(cmd.args, {"--mixed_precision": ["fp8"]})))


def test_recipes_have_the_comment_header():
    for name in sorted({f for r in TRAIN_RECIPES.values() for f in r.values()} | {CACHE_RECIPE}):
        lines = recipe_path(name).read_text(encoding="utf-8").splitlines()
        header = []
        for line in lines[1:]:
            if not line.startswith("#"):
                break
            header.append(line)
        text = "\n".join(header)
        assert name in header[0] and "Needs:" in text and "Run:" in text, name


def test_print_protocol_and_option_editing():
    out = "noise\0CIRCLE_ROTATE_COMMAND\0" + "\0".join(
        ["5", "env", "A=b c", "python", "/x/wan_cache_latents.py", "--i2v"]) + "\0"
    (cmd,) = parse_printed(out, source="r.sh")
    assert cmd.script == "wan_cache_latents" and cmd.env_dict == {"A": "b c"} and cmd.args == ("--i2v",)
    assert cmd.shell() == "A='b c' python /x/wan_cache_latents.py --i2v"
    args = ["--a", "1", "--b", "--c", "x", "y"]
    assert split_options(args) == [("--a", ["1"]), ("--b", []), ("--c", ["x", "y"])]
    assert edit_options(args, {"--a": None, "--c": ["z"], "--d": []}) == ["--b", "--c", "z", "--d"]


def test_a_recipe_that_fails_names_itself(tmp_path):
    bad = tmp_path / "bad.sh"
    bad.write_text("set -eu\necho $UNSET_VARIABLE_X\n")
    with pytest.raises(UserError, match="bad.sh"):
        read_recipe(str(bad))
    with pytest.raises(UserError, match="no recipe named"):
        read_recipe("nope.sh")
