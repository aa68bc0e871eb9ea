"""DoRA LoRAs (a learned magnitude, ``<module>.dora_scale``, beside each pair): read, reported as ComfyUI
loads them, and refused by name wherever the weights would be rewritten.

The files are written key by key with the spellings DoRA trainers use (LyCORIS/sd-scripts ``lora_unet_``
stems with a ``[1, in]`` magnitude, ComfyUI-layout stems with ``[out, 1]``), not by our writer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from circle_rotate.cli.main import main
from circle_rotate.kernel import wan_arch
from circle_rotate.kernel.errors import UserError
from circle_rotate.selfcheck.synthetic.lora import random_lora_modules
from circle_rotate.selfcheck.synthetic.tiny_wan import write_tiny_wan
from circle_rotate.tools.lora.combine import combine_loras
from circle_rotate.tools.lora.convert import convert_lora
from circle_rotate.tools.lora.files import read_lora_index
from circle_rotate.tools.lora.inspect import inspect_file
from circle_rotate.tools.lora.resize import resize_lora
from circle_rotate.tools.merge.run import merge_loras
from comfy_lora_rules import comfy_key_map, comfy_load

CFG = wan_arch.tiny_config()
MODULES = ("blocks.0.self_attn.q", "blocks.0.ffn.0", "blocks.1.cross_attn.o")


def dora_lora(path: Path, layout: str, *, orphan: bool = False) -> Path:
    """Pairs with alpha and a magnitude per module; ``orphan`` adds a magnitude for a module with no pair."""
    tensors = {}
    for name, mod in random_lora_modules(CFG, rank=4, alpha=4.0, modules=MODULES, dtype=torch.float32).items():
        if layout == "musubi":
            stem, down, up = "lora_unet_" + name.replace(".", "_"), ".lora_down.weight", ".lora_up.weight"
            magnitude = torch.rand(1, mod.down.shape[1]) + 0.5  # LyCORIS: one per input column
        else:
            stem, down, up = "diffusion_model." + name, ".lora_A.weight", ".lora_B.weight"
            magnitude = torch.rand(mod.up.shape[0], 1) + 0.5  # one per output row
        tensors.update({stem + down: mod.down, stem + up: mod.up, stem + ".alpha": torch.tensor(4.0),
                        stem + ".dora_scale": magnitude})
    if orphan:
        tensors[("lora_unet_blocks_1_self_attn_k" if layout == "musubi" else "diffusion_model.blocks.1.self_attn.k")
                + ".dora_scale"] = torch.ones(1, CFG.dim)
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize("layout", ["musubi", "comfy"])
def test_a_dora_lora_is_read_and_reported_as_comfyui_loads_it(tmp_path, layout):
    path = dora_lora(tmp_path / "dora.safetensors", layout)
    index = read_lora_index(path)
    assert sorted(index.dora) == sorted(MODULES) and set(index.modules) == set(MODULES)
    assert index.unknown_keys == ()
    report = inspect_file(path)
    assert report.dora == 3 and report.comfyui_loads_all_keys and report.unknown_keys == []
    # what ComfyUI's loader consumes, by its own key rules: every tensor of the file
    keys = set(index.header.keys())
    assert comfy_load(keys, comfy_key_map(wan_arch.dit_shapes(CFG)))[0] == keys


def test_a_magnitude_with_no_pair_is_still_a_doras_and_comfyui_consumes_it(tmp_path):
    # load_lora reads "{x}.dora_scale" for every key it maps, pair or not, so no "lora key not loaded"
    path = dora_lora(tmp_path / "dora.safetensors", "comfy", orphan=True)
    index = read_lora_index(path)
    assert index.unknown_keys == () and sorted(index.dora) == sorted([*MODULES, "blocks.1.self_attn.k"])
    keys = set(index.header.keys())
    assert comfy_load(keys, comfy_key_map(wan_arch.dit_shapes(CFG)))[0] == keys
    assert inspect_file(path).comfyui_loads_all_keys


@pytest.mark.parametrize("layout", ["musubi", "comfy"])
def test_every_command_that_rewrites_weights_refuses_a_dora_lora_by_name(tmp_path, layout):
    lora = dora_lora(tmp_path / "dora.safetensors", layout)
    base = write_tiny_wan(tmp_path / "base.safetensors", config=CFG, expert="high")
    out = tmp_path / "out.safetensors"
    runs = {
        "merge": lambda: merge_loras(base, [(lora, 1.0)], out),
        "convert": lambda: convert_lora(lora, out, to="comfy" if layout == "musubi" else "musubi"),
        "combine": lambda: combine_loras([(lora, 1.0), (lora, 0.5)], out),
        "resize": lambda: resize_lora(lora, out, rank=2),
    }
    for name, run in runs.items():
        with pytest.raises(UserError, match="DoRA") as err:
            run()
        assert "dora_scale" in str(err.value) and "LoraLoaderModelOnly" in str(err.value), name
        assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["base.safetensors", "dora.safetensors"]


def test_the_cli_says_so_in_one_line_with_exit_2(tmp_path, capsys):
    lora = dora_lora(tmp_path / "dora.safetensors", "musubi")
    base = write_tiny_wan(tmp_path / "base.safetensors", config=CFG, expert="low")
    assert main(["merge", str(base), "--lora", str(lora), "-o", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dora.safetensors" in err and "DoRA" in err
    assert main(["inspect", str(lora)]) == 0
    assert "a magnitude (dora_scale) on 3 modules" in capsys.readouterr().out
