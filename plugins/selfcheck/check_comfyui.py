"""Check our merged files and workflows with a real ComfyUI checkout (its own loader and validator).

    circle-rotate bench comfyui --comfyui /path/to/ComfyUI [--dir /tmp/x]

Needs a ComfyUI source tree importable with its requirements (run it with the Python of ComfyUI's
environment); runs on CPU. 0.3.64 was run; newer versions (with ``comfy/quant_ops.py``) are handled
as read from their source (:mod:`circle_rotate.selfcheck.comfy_fp8`). On small Wan2.2-shaped
experts (dim 256, 2 blocks, the real key names) it:

1. merges a LoRA into an fp32 expert (the unquantized truth), into it again as fp8_scaled, into an
   fp8_scaled expert (``--dtype same``) and into a ``model.diffusion_model.``-prefixed bf16
   Fun-InP expert as fp8_scaled;
2. loads each with ComfyUI's ``comfy.sd.load_diffusion_model_state_dict``, capturing its log:
   no ``unet missing`` / ``unexpected`` line may appear, and the model must be detected as
   ComfyUI's Wan (``in_dim`` 36) in scaled float8_e4m3fn (``scaled_fp8`` in 0.3.x; newer:
   ``quant_config`` with every Linear's ``comfy_quant`` format float8_e4m3fn);
3. runs ComfyUI's Wan forward on each and compares it with the unquantized merge: the error must
   stay within 1.25x that of the fp8_scaled expert without any LoRA (fp8's own error);
4. applies the same LoRA at load time with ComfyUI's own patcher to the fp8_scaled expert: every
   weight must lie within one fp8 step of the exact ``W + D`` with the LoRA applied once (any
   version), and on ComfyUI 0.3.x (no ``comfy.quant_ops``) match
   :func:`circle_rotate.tools.merge.fp8_rounding.comfy_loadtime_lora` bit for bit (newer
   versions recalculate the scale, which that reimplementation of 0.3.x does not model);
5. validates the API JSON of workflows written by ``circle-rotate workflow`` with ComfyUI's own
   ``execution.validate_prompt`` (stand-in model files are created for its file lists).

Prints one line per check and exits 1 if any fails.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import io
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, List, Optional

import torch

from circle_rotate.kernel import wan_arch
from circle_rotate.selfcheck.comfy_fp8 import fp8_detection, linear_formats, loadtime_fit
from circle_rotate.selfcheck.synthetic.lora import write_random_lora
from circle_rotate.selfcheck.synthetic.tiny_wan import write_tiny_wan
from circle_rotate.tools.merge.fp8_rounding import comfy_loadtime_lora
from circle_rotate.tools.merge.run import merge_loras

CFG = wan_arch.tiny_config(dim=256, num_heads=2, ffn_dim=512, num_layers=2)  # ComfyUI takes heads = dim / 128
WORKFLOWS = (["--high-lora", "circle_rotate_h.safetensors", "--low-lora", "circle_rotate_l.safetensors"],
             ["--variant", "fun-inp", "--lightx2v", "--cfg", "1.6", "--end-image", "end.png"])


class Comfy:
    """The parts of a ComfyUI checkout we call, imported from ``root`` on CPU with its log captured."""

    def __init__(self, root: Path):
        sys.path.insert(0, str(root))
        import comfy.options

        comfy.options.enable_args_parsing(False)
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
        self.log = io.StringIO()
        logging.getLogger().addHandler(logging.StreamHandler(self.log))
        logging.getLogger().setLevel(logging.INFO)
        import comfy.sd
        import comfy.utils

        self.sd, self.utils = comfy.sd, comfy.utils
        # newer ComfyUI (after 0.3.x) holds quantized weights as comfy.quant_ops.QuantizedTensor
        self.quantized = (importlib.import_module("comfy.quant_ops").QuantizedTensor
                          if importlib.util.find_spec("comfy.quant_ops") else None)

    def load(self, path: Path):
        """(model patcher, ComfyUI's missing/unexpected log lines)."""
        self.log.truncate(0)
        self.log.seek(0)
        model = self.sd.load_diffusion_model_state_dict(self.utils.load_torch_file(str(path)))
        return model, [line for line in self.log.getvalue().splitlines() if "missing" in line or "unexpected" in line]

    def weight(self, model, module: str) -> torch.Tensor:
        """The Linear ``module``'s weight as ComfyUI holds it, dequantized to fp32."""
        w = self.utils.get_attr(model, f"diffusion_model.{module}.weight")
        if self.quantized is not None and isinstance(w, self.quantized):
            return w.dequantize().float()
        scale = getattr(self.utils.get_attr(model, f"diffusion_model.{module}"), "scale_weight", None)
        return w.data.float() * (scale.float() if scale is not None else 1.0)


def _forward(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model.model.diffusion_model(*inputs).float()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def check(comfyui: Path, d: Path, run_cli: Callable[[List[str]], int]) -> List[str]:
    """Run every check; returns the failures (each also printed)."""
    comfy = Comfy(comfyui)
    failures: List[str] = []

    def report(ok: bool, text: str) -> None:
        print(("ok    " if ok else "FAIL  ") + text, flush=True)
        if not ok:
            failures.append(text)

    fp32 = write_tiny_wan(d / "wan2.2_i2v_high_noise_14B_fp32.safetensors", config=CFG, dtype="fp32", seed=1)
    fp8 = write_tiny_wan(d / "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors", config=CFG, dtype="fp8_scaled", seed=1)
    fun = write_tiny_wan(d / "wan2.2_fun_inpaint_high_noise_14B_bf16.safetensors", config=CFG, dtype="bf16", seed=1,
                         key_prefix=wan_arch.COMFY_PREFIX)
    lora = write_random_lora(d / "circle_rotate_h.safetensors", CFG, rank=8, alpha=8.0, seed=2, up_std=0.01,
                             dtype=torch.float32)
    truth = merge_loras(fp32, [(lora, 1.0)], d / "truth_fp32.safetensors", dtype="fp32", force=True).out
    outputs = {"fp32 -> fp8_scaled": merge_loras(fp32, [(lora, 1.0)], d / "a.safetensors", dtype="fp8_scaled", force=True).out,
               "fp8_scaled -> same": merge_loras(fp8, [(lora, 1.0)], d / "b.safetensors", force=True).out,
               "prefixed bf16 Fun-InP -> fp8_scaled": merge_loras(fun, [(lora, 1.0)], d / "c.safetensors",
                                                                 dtype="fp8_scaled", force=True).out}
    gen = torch.Generator().manual_seed(0)
    inputs = (torch.randn(1, 36, 3, 8, 8, generator=gen), torch.tensor([700.0]), torch.randn(1, 12, 4096, generator=gen))
    ref = _forward(comfy.load(truth)[0], inputs)
    floor = _rel(_forward(comfy.load(fp8)[0], inputs), _forward(comfy.load(fp32)[0], inputs))
    for name, path in outputs.items():
        model, lines = comfy.load(Path(path))
        config = model.model.model_config
        report(not lines, f"{name}: ComfyUI load logs {len(lines)} missing/unexpected lines {lines[:1]}")
        fp8_ok, fp8_words = fp8_detection(config, linear_formats(model.model.diffusion_model))
        report(config.unet_config.get("in_dim") == 36 and fp8_ok,
               f"{name}: detected as {type(config).__name__}, in_dim {config.unet_config.get('in_dim')}, {fp8_words}")
        err = _rel(_forward(model, inputs), ref)
        report(err <= 1.25 * floor, f"{name}: forward error vs the unquantized merge {err:.4f} "
                                    f"(fp8_scaled expert alone: {floor:.4f})")
    _check_loadtime_lora(comfy, fp8, lora, report)
    failures += _check_workflows(comfyui, d, report, run_cli)
    return failures


def _check_loadtime_lora(comfy: Comfy, fp8: Path, lora: Path, report) -> None:
    model, _ = comfy.load(fp8)
    patched, _ = comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file(str(lora)), 1.0, 0.0)
    with torch.no_grad():
        patched.patch_model(device_to=torch.device("cpu"))
    from safetensors.torch import load_file

    base, lw = load_file(str(fp8)), load_file(str(lora))
    same, layers = 0, []
    modules = wan_arch.lora_target_modules(CFG)
    for module in modules:
        stem = wan_arch.musubi_lora_name(module)
        down, up = lw[stem + ".lora_down.weight"].float(), lw[stem + ".lora_up.weight"].float()
        delta = (float(lw[stem + ".alpha"]) / down.shape[0]) * (up @ down)  # ComfyUI's order: (strength * alpha) * diff
        q, scale = base[module + ".weight"], base[module + ".scale_weight"]
        layers.append((comfy.weight(patched.model, module), q.float() * scale.float(), delta, scale))
        if comfy.quantized is None:  # 0.3.x: the fp8 bits ComfyUI stored, against our reimplementation
            ours = comfy_loadtime_lora(q, scale, delta, name=f"diffusion_model.{module}.weight")
            theirs = comfy.utils.get_attr(patched.model, f"diffusion_model.{module}.weight").data
            same += int(torch.equal(ours.view(torch.uint8), theirs.view(torch.uint8)))
    fit = loadtime_fit(layers)
    report(fit.ok, f"load-time LoRA: ComfyUI's weights within {fit.worst_step:.2f} fp8 step of W + D, LoRA "
                   f"applied x{fit.strength:.3f} on {fit.layers} layers")
    if comfy.quantized is None:
        report(same == len(modules), f"load-time LoRA: our reimplementation bit-identical to ComfyUI's on "
                                     f"{same}/{len(modules)} layers")
    else:
        print("skip  load-time LoRA bit identity: checked for ComfyUI 0.3.x only (this version recalculates "
              "the scale when it requantizes)", flush=True)


def _check_workflows(comfyui: Path, d: Path, report, run_cli: Callable[[List[str]], int]) -> List[str]:
    import folder_paths
    import nodes
    import execution
    from PIL import Image

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    folders = {"unet_name": "diffusion_models", "lora_name": "loras", "clip_name": "text_encoders", "vae_name": "vae"}
    for i, extra in enumerate(WORKFLOWS):
        out = d / f"workflow{i}.json"
        run_cli(["-q", "workflow", "--high", "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors", "--low",
              "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors", "--out", str(out), "--force", "--json", *extra])
        api = json.loads((d / f"workflow{i}_api.json").read_text())
        for node in api.values():  # ComfyUI checks file names against its folders: stand-ins
            for key, value in node["inputs"].items():
                if key in folders:
                    folder = d / "models" / folders[key]
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / value).touch()
                    folder_paths.add_model_folder_path(folders[key], str(folder))
                elif key == "image":
                    (d / "input").mkdir(exist_ok=True)
                    Image.new("RGB", (16, 16)).save(d / "input" / value)
                    folder_paths.set_input_directory(str(d / "input"))
        folder_paths.filename_list_cache.clear()
        ok, error, _, node_errors = asyncio.run(execution.validate_prompt("check", api, None))
        report(ok, f"workflow {' '.join(extra)}: ComfyUI's validate_prompt {'accepts it' if ok else error} {node_errors or ''}")
    return []


def main(argv: Optional[List[str]] = None, *, run_cli: Callable[[List[str]], int]) -> int:
    """``run_cli`` is the CLI's ``main``: the check writes its workflows through the real command, and the
    library never imports the CLI (``circle-rotate bench comfyui`` passes it in)."""
    parser = argparse.ArgumentParser(prog="circle-rotate bench comfyui", description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", type=Path, required=True, help="a ComfyUI source tree")
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="check_comfyui_") as tmp:
        d = args.dir or Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        os.chdir(d)
        failures = check(args.comfyui.resolve(), d, run_cli)
    print(f"{'all checks passed' if not failures else f'{len(failures)} check(s) failed'}")
    return 1 if failures else 0

