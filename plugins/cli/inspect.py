"""``circle-rotate inspect FILE``: what a LoRA or a Wan expert file is."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from circle_rotate.cli._common import new_parser, print_json
from circle_rotate.cli._lora_options import add_output_options

if TYPE_CHECKING:  # the reports' module imports torch, which only run() may pay for
    from circle_rotate.tools.lora.inspect import LoraReport, ModelReport

ORDER = 30


def add_parser(sub) -> None:
    p = new_parser(sub, "inspect", help="describe a LoRA or a Wan2.2 expert (.safetensors)",
                   description="For a LoRA: layout, ranks, alphas and scale, Wan2.2 target modules covered and missed, "
                               "dtype, parameters, delta norms, ss_* training metadata, expert, and whether ComfyUI "
                               "loads every key. For a model: expert, I2V/T2V, dtype or fp8_scaled, key prefix. "
                               "Exit status 1 (after the report) when a LoRA holds NaN or inf values.",
                   examples="  circle-rotate inspect circle_rotate_h.safetensors\n"
                            "  circle-rotate inspect wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors --json\n")
    p.add_argument("file", type=Path, help="a .safetensors LoRA or DiT checkpoint")
    add_output_options(p, run, alpha=False, force=False)


def _lora_lines(r: LoraReport) -> list:
    missing = ", ".join(r.missing_targets[:5]) + (f" (+{len(r.missing_targets) - 5} more)" if len(r.missing_targets) > 5 else "")
    norm = r.delta_norm
    kinds = (["LoRA"] if r.modules > sum(r.products.values()) else []) + list(r.products)  # pairs, LoHa, LoKr
    return [
        ("kind", f"{' + '.join(kinds)}, {r.format} layout"),
        ("modules", f"{r.modules} ({r.params:,} parameters, {r.file_bytes / 2**20:.1f} MiB, {', '.join(r.dtypes)})"),
        ("rank", ", ".join(f"{k} x{v}" for k, v in r.ranks.items())),
        ("alpha", ", ".join(f"{k} x{v}" for k, v in r.alphas.items())
         + (f" ({r.alpha_from_metadata} from lora_adapter_metadata, as Diffusers reads it)"
            if r.alpha_from_metadata else "")),
        ("scale alpha/rank", ", ".join(f"{k} x{v}" for k, v in r.scales.items())),
        ("targets", f"{r.targets_covered}/{r.targets_total} {r.target_model} LoRA targets" + (f"; missing {missing}" if missing else "")
         if r.targets_total else r.target_model),
        ("extra modules", ", ".join(r.extra_modules[:5]) or "none"),
        ("delta norm", f"min {norm['min']:.4g}, median {norm['median']:.4g}, max {norm['max']:.4g}"
         + (" (LoRA pairs)" if r.products else "") if norm else "-"),
        ("NaN/inf", f"{len(r.nonfinite_keys)} tensor(s), first '{r.nonfinite_keys[0]}'" if r.nonfinite_keys else "none"),
        ("expert", f"{r.expert} ({r.expert_evidence})" if r.expert else "unknown (no metadata or name says)"),
        ("LoHa/LoKr", ", ".join(f"{n} {kind} modules" for kind, n in r.products.items()) + ": merge adds them, ComfyUI "
         "loads them" if r.products else "none"),
        ("differences", _diff_line(r)),
        ("DoRA", _dora_line(r)),
        ("ComfyUI", _comfy_line(r)),
        ("unknown keys", ", ".join(r.unknown_keys[:5]) or "none"),
    ] + _warning_lines(r) + [(k, v if len(v) < 100 else v[:97] + "...") for k, v in sorted(r.training.items())]


def _warning_lines(r: LoraReport) -> list:
    out = []
    if r.text_encoder_keys:
        out.append(("text encoder", f"{len(r.text_encoder_keys)} tensor(s) (first '{r.text_encoder_keys[0]}'): not for "
                                    "the DiT; every command leaves them out, as ComfyUI's LoraLoaderModelOnly does"))
    if r.metadata_mismatch:
        out.append(("metadata", "; ".join(r.metadata_mismatch) + ": the tensors are what loaders use"))
    return out


def _diff_line(r: LoraReport) -> str:
    if not r.diffs:
        return "none"
    kinds = ", ".join(f"{n} {kind}{'es' if kind == 'bias' and n > 1 else ('s' if n > 1 else '')}"
                      for kind, n in sorted(r.diffs.items()))
    comfy = (f"ComfyUI all but the {len(r.comfyui_skips)} it cannot apply" if r.comfyui_skips else "ComfyUI too")
    return (f"{sum(r.diffs.values())} whole-tensor ({kinds}): merge adds them, {comfy}; "
            "musubi-tuner's --lora_weight skips them")


def _peft_dora(r: LoraReport) -> bool:
    return any(".lora_magnitude_vector" in k for k in r.comfyui_not_loaded)


def _dora_line(r: LoraReport) -> str:
    if not r.dora:
        return "none"
    if _peft_dora(r):
        pairs = ("it would apply the pairs as a plain LoRA" if r.format in ("musubi", "comfy") else
                 f"nor, in the {r.format} layout, its pairs")
        return (f"PEFT's magnitude (lora_magnitude_vector) on {r.dora} modules: ComfyUI does not load it ({pairs}); "
                "merge, convert, combine and resize refuse the file")
    return (f"a magnitude (dora_scale) on {r.dora} modules: ComfyUI applies it when it loads the LoRA; merge, "
            "convert, combine and resize refuse the file")


def _comfy_line(r: LoraReport) -> str:
    zeros = r.alphas.get("0", 0)
    if r.comfyui_loads_all_keys and zeros:
        return (f"loads every key, but takes its {zeros} alpha(s) of 0 as no change (musubi trained them as scale 1): "
                "circle-rotate convert IN -o OUT --format comfy writes them as the rank")
    if r.comfyui_loads_all_keys:
        return "loads every key"
    others = [k for k in r.comfyui_not_loaded if k not in set(r.comfyui_skips)]
    if not others and r.comfyui_skips:
        return (f"does not apply {len(r.comfyui_skips)} modulation difference(s) (under any name: its model patcher "
                "never patches blocks.N.modulation); to have them, merge the LoRA into the expert: circle-rotate merge")
    which = f" ({len(others)} 'lora key not loaded', first '{others[0]}')" if others else ""
    if _peft_dora(r):
        return f"would not load every key{which}: load it with the PEFT/Diffusers pipeline it was trained for"
    if others and set(others) <= set(r.unknown_keys):
        return f"would not load {len(others)} key(s): 'lora key not loaded' (see unknown keys)"
    return f"would not load every key: circle-rotate convert IN -o OUT --format comfy{which}"


def _model_lines(r: ModelReport) -> list:
    return [
        ("kind", f"model, {r.family}, {r.task}" + (", Diffusers layout (not Wan's own key names; merge writes it in "
                                                   "Wan's)" if r.layout == "diffusers" else "")),
        ("expert", f"{r.expert} ({r.expert_evidence})" if r.expert else "unknown (no metadata or name says)"),
        ("dtype", r.dtype),
        ("fp8 layout", r.fp8_layout),
        ("key prefix", r.key_prefix or "(none)"),
        ("shape", f"dim {r.dim}, {r.num_layers} blocks, in_dim {r.in_dim}"),
        ("tensors", f"{r.tensors} ({r.params:,} parameters, {r.file_bytes / 2**30:.2f} GiB)"
                    + (f" in {r.shards} shards" if r.shards > 1 else "")),
        ("metadata", ", ".join(r.metadata_keys) or "none"),
    ]


def run(args: argparse.Namespace) -> int:
    from circle_rotate.tools.lora.inspect import LoraReport, inspect_file

    report = inspect_file(args.file)
    if args.json:
        print_json(report.to_dict())
        return _flag_nonfinite(report)
    rows = _lora_lines(report) if isinstance(report, LoraReport) else _model_lines(report)
    width = max(len(k) for k, _ in rows)
    print(report.path)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    return _flag_nonfinite(report)


def _flag_nonfinite(report) -> int:
    bad = getattr(report, "nonfinite_keys", None)
    if not bad:
        return 0
    from circle_rotate.kernel.errors import NonFiniteError

    print(f"circle-rotate inspect: error: {NonFiniteError(report.path, key=bad[0], count=len(bad))}", file=sys.stderr)
    return 1
