"""What musubi-tuner's ``--lora_weight`` (``wan_generate_video.py``) applies of a LoRA file, and
what it would silently skip: checked before a generation run, which would otherwise make videos
without the LoRA."""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.wan_arch import musubi_lora_name
from circle_rotate.tools.lora.files import read_lora_index, require_a_wan_module
from circle_rotate.tools.lora.keys import module_sort_key
from circle_rotate.tools.lora.lycoris import LABELS, product_key


def musubi_lora_problems(path: Path) -> List[Tuple[str, str, str]]:
    """What musubi-tuner's ``--lora_weight`` would silently not apply of the LoRA at ``path``, as
    ``(severity, message, fix)`` findings for :func:`circle_rotate.musubi.generate.generate`.

    wan_generate_video.py hands the file's state dict as it is to ``utils/lora_utils.py``
    ``load_safetensors_with_lora_and_fp8``, whose weight hook looks each model weight ``W.weight`` up
    only as ``lora_unet_`` + ``W`` with ``_`` for ``.`` + ``.lora_down.weight``/``.lora_up.weight``/
    ``.alpha`` (LoHa/LoKr: their parts under that name, one kind of network per file, by
    ``detect_network_type``), never adds ``.diff``/``.diff_b``/``.diff_m`` tensors, and only logs
    "not all LoRA keys are used" for the rest. So a ComfyUI (``diffusion_model.*``, what ``convert
    --format comfy`` writes) or Diffusers-layout LoRA, which the readers here take, generates videos
    without the LoRA: an error. Two more are errors that no ``convert`` fixes (it renames, it does not
    rebuild): a DoRA (``dora_scale`` magnitudes: the hook applies the pairs as a plain LoRA and never the
    magnitude, which ``merge``/``convert`` refuse to drop for the same reason) and LyCORIS LoKr modules
    whose ``w1`` is stored decomposed (``lokr_w1_a``/``lokr_w1_b``: ``networks/lokr.py``
    ``merge_weights_to_tensor`` looks for a whole ``lokr_w1`` only and leaves the weight as it is).
    Whole-tensor differences beside musubi-named pairs (the lightx2v LoRAs) are a warning, with the
    wording ``inspect`` uses.
    """
    try:
        # finite=False: this check is about names; reading every weight for NaN is merge's and inspect's job
        index = read_lora_index(path, finite=False)
        require_a_wan_module(index)
    except UserError as exc:
        return [("error", exc.problem, exc.fix or "")]
    merge = f"circle-rotate merge EXPERT --lora {path} -o MERGED.safetensors"
    if index.dora:
        # (merge, convert, combine and resize refuse it too: loaders disagree on how to apply the magnitude)
        first = index.dora[min(index.dora, key=module_sort_key)]
        return [("error", f"a DoRA LoRA: {len(index.dora)} module(s) carry a learned magnitude (e.g. '{first}'), "
                          "which musubi-tuner's --lora_weight never applies (it adds the pairs as a plain LoRA): "
                          "the videos would not show the LoRA as trained",
                 "generate with a LoRA trained without DoRA, or load this one in ComfyUI as it is "
                 "(LoraLoaderModelOnly applies DoRA at load time)")]
    total = len(index.modules) + len(index.products)
    split_w1 = [index.products[m].keys["lokr_w1_a"] for m in sorted(index.products, key=module_sort_key)
                if index.products[m].kind == "lokr" and "lokr_w1" not in index.products[m].keys]
    if split_w1:
        some = "none of its modules" if len(split_w1) == total else f"{len(split_w1)} of its {total} modules"
        return [("error", f"{len(split_w1)} LoKr module(s) store w1 decomposed (lokr_w1_a/lokr_w1_b, e.g. "
                          f"'{split_w1[0]}'), which musubi-tuner's LoKr merge skips (it looks for a whole lokr_w1): "
                          f"--lora_weight would silently apply {some}",
                 f"merge it into the expert instead ({merge}; convert keeps the factors as they are) and generate "
                 "without it")]
    skipped = []  # a stored key of every LoRA/LoHa/LoKr module musubi's hook will not find
    for module, info in index.modules.items():
        stem = musubi_lora_name(module)
        if (info.down_key, info.up_key) != (stem + ".lora_down.weight", stem + ".lora_up.weight") \
                or info.alpha_key not in (None, stem + ".alpha"):
            skipped.append(info.down_key)
    for module, info in index.products.items():
        if any(key != product_key(module, part, "musubi") for part, key in info.stored):
            skipped.append(next(iter(info.keys.values())))
    musubi_file = path.with_name(f"{path.stem}_musubi.safetensors")
    if skipped:
        what = (f"a {index.fmt}-layout LoRA" if index.fmt != "musubi" else "a LoRA not in musubi-tuner's own key spelling")
        some = "none of its modules" if len(skipped) == total else f"{len(skipped)} of its {total} modules"
        return [("error", f"{what} (e.g. '{skipped[0]}'): musubi-tuner's --lora_weight finds a LoRA only under "
                          f"lora_unet_*.lora_down/lora_up names, so it would silently apply {some}",
                 f"circle-rotate convert {path} -o {musubi_file} --format musubi, and pass that file")]
    kinds = sorted(({"LoRA"} if index.modules else set()) | {LABELS[info.kind] for info in index.products.values()})
    if len(kinds) > 1:
        return [("error", f"mixes {' and '.join(kinds)} modules: musubi-tuner's --lora_weight applies one kind of "
                          "network per file and would silently skip the others",
                 f"merge it into the expert instead ({merge}), which applies every kind, and generate without it")]
    if not index.diffs:
        return []
    first = index.diffs[min(index.diffs)].key
    if not total:
        return [("error", f"holds only whole-tensor differences ({len(index.diffs)}, e.g. '{first}'), which "
                          "musubi-tuner's --lora_weight skips: it would apply none of it",
                 f"merge it into the expert ({merge}) and generate without it")]
    return [("warning", f"{len(index.diffs)} whole-tensor difference(s) (.diff/.diff_b/.diff_m, e.g. '{first}'): "
                        "musubi-tuner's --lora_weight skips them (its modules still apply)",
             f"to have them too, merge the LoRA into the expert ({merge}) and generate without it")]
