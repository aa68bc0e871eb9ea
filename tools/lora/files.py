"""Read a Wan LoRA of any layout into typed per-module values; write one in any layout.

A LoRA is read in two steps, as the base models are: :func:`read_lora_index` parses the header
(and the tiny alpha scalars) into a :class:`LoraIndex`, then :func:`load_module` reads one
module's ``down``/``up`` pair when it is needed. Names are understood by
:mod:`circle_rotate.tools.lora.keys`.

Alpha. A module's delta is ``(alpha / rank) * up @ down``. musubi-tuner always saves ``.alpha``
(its ``network_alpha`` defaults to 1, so a rank-32 musubi LoRA has scale 1/32). The diffusers
layout has no alpha tensors (scale 1, unless its ``lora_adapter_metadata`` says otherwise: see
PEFT metadata below), and ComfyUI treats a ``lora_A/lora_B`` file without
alpha the same way. A musubi/sd-scripts file without alpha, or any file where only some modules
have one, is ambiguous: sd-scripts would take alpha = rank, which makes a musubi LoRA 32x
stronger than trained. :func:`module_scales` refuses those unless the caller says what to assume
(``alpha_if_missing="rank"`` or a number).

Whole-tensor differences (``.diff``/``.diff_b``/``.diff_m``) are read beside the modules, by the
Wan parameter they change (:class:`DiffInfo`, :mod:`circle_rotate.tools.lora.diffs`); they have no alpha.
LoHa and LoKr modules (:class:`ProductInfo`, :mod:`circle_rotate.tools.lora.lycoris`) are read beside
them too, with their alpha.

PEFT metadata. diffusers (>= 0.34) saves a LoRA's PEFT ``LoraConfig`` as JSON in the header entry
``lora_adapter_metadata`` and, when it is there, builds the adapter from it rather than from the shapes
(``loaders/lora_base.py`` ``LORA_ADAPTER_METADATA_KEY``, ``utils/peft_utils.py`` ``_create_lora_config``):
scale ``lora_alpha / r``, per module ``alpha_pattern``/``rank_pattern``. In the diffusers layout that is
the alpha a module without ``.alpha`` has (:func:`~circle_rotate.tools.lora.peft_metadata.peft_config`); every file written here gets that entry
rewritten to what its tensors hold, or dropped (:func:`~circle_rotate.tools.lora.peft_metadata.output_metadata`).
A config whose r is not the tensors' rank, which diffusers cannot load the file with (what an older ``resize``
or ``combine`` left, copied onto tensors with their scale folded in), is read as absent and reported.

DoRA. A module may also carry ``<stem>.dora_scale``, a learned magnitude. ComfyUI loads it
(``comfy/lora.py`` reads ``{x}.dora_scale`` for every adapter) and rescales the merged weight at load
time (``weight_adapter/base.py`` ``weight_decompose``), but loaders disagree on that rescaling:
ComfyUI normalises by the base weight's norm when the magnitude runs along the output axis, where
LyCORIS and PEFT normalise the merged weight, and strength interpolates the result rather than
scaling the delta. The files are read and reported (:attr:`LoraIndex.dora`), and every command that
would rewrite the weights refuses them by name (:func:`require_wan_lora`) rather than guess.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch

from circle_rotate.kernel.errors import NonFiniteError, UserError
from circle_rotate.kernel.safetensors_io import SafetensorsHeader, SafetensorsWriter, read_header, read_tensor
from circle_rotate.kernel.wan_arch import COMFY_PREFIX
from circle_rotate.tools.lora.diffs import diff_key, parse_diff_key
from circle_rotate.tools.lora.keys import (COMFY_LORA_PREFIX, FORMATS_WITH_ALPHA, is_wan_module, lora_key,
                                          module_of_stem, module_sort_key, parse_lora_key)
from circle_rotate.tools.lora.lycoris import (LABELS, delta_shape, missing_parts, parse_product_key, product_key,
                                           product_scale)
from circle_rotate.tools.lora.peft_metadata import (PEFT_METADATA_KEY, PEFT_METADATA_LAYOUTS, output_metadata,
                                                   peft_alpha, peft_config, peft_module_name, stale_config_text)
from circle_rotate.tools.option_values import AlphaIfMissing

logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class LoraModuleInfo:
    """What the header says about one LoRA module (no tensor data)."""

    module: str
    down_key: str
    up_key: str
    alpha_key: Optional[str]
    down_shape: Tuple[int, ...]
    up_shape: Tuple[int, ...]
    dtype: str  # safetensors dtype of the up/down weights
    alpha: Optional[float]

    @property
    def rank(self) -> int:
        return self.down_shape[0]

    @property
    def in_features(self) -> int:
        return math.prod(self.down_shape[1:])

    @property
    def out_features(self) -> int:
        return self.up_shape[0]

    @property
    def num_params(self) -> int:
        return math.prod(self.down_shape) + math.prod(self.up_shape)


@dataclass(frozen=True)
class DiffInfo:
    """What the header says about one whole-tensor difference (see :mod:`circle_rotate.tools.lora.diffs`)."""

    param: str  # the Wan parameter it is added to, e.g. "blocks.0.norm3.weight"
    key: str  # its name in the file
    shape: Tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class ProductInfo:
    """What the header says about one LoHa or LoKr module (see :mod:`circle_rotate.tools.lora.lycoris`)."""

    module: str
    kind: str  # "loha" or "lokr"
    keys: Dict[str, str]  # part ("hada_w1_a", ...) -> its name in the file
    shapes: Dict[str, Tuple[int, ...]]
    alpha_key: Optional[str]
    alpha: Optional[float]

    @property
    def scale(self) -> float:
        return product_scale(self.kind, self.shapes, self.alpha)

    @property
    def delta_shape(self) -> Tuple[int, int]:
        return delta_shape(self.kind, self.shapes)

    @property
    def stored(self) -> List[Tuple[str, str]]:
        """(part, key) of every tensor the module stores, its alpha (part ``alpha``) last."""
        return list(self.keys.items()) + ([("alpha", self.alpha_key)] if self.alpha_key else [])


@dataclass(frozen=True)
class LoraIndex:
    """A LoRA file's modules and differences, from its header. ``fmt`` is the layout (or ``mixed``)."""

    path: Path
    header: SafetensorsHeader
    fmt: str
    modules: Dict[str, LoraModuleInfo]
    unknown_keys: Tuple[str, ...] = ()  # tensors that are neither a LoRA part of a Wan module nor a difference
    metadata: Dict[str, str] = field(default_factory=dict)
    diffs: Dict[str, DiffInfo] = field(default_factory=dict)  # Wan parameter -> its difference
    products: Dict[str, ProductInfo] = field(default_factory=dict)  # Wan module -> its LoHa/LoKr
    dora: Dict[str, str] = field(default_factory=dict)  # Wan module -> its DoRA magnitude's key (dora_scale)
    text_encoder: Tuple[str, ...] = ()  # text-encoder LoRA tensors (lora_te_*, text_encoder.*): not for the DiT
    # Wan module -> the r its lora_adapter_metadata gives where the tensors hold another rank (diffusers
    # builds rank-r layers from it and fails to load the file)
    peft_rank_mismatch: Dict[str, int] = field(default_factory=dict)

    @property
    def has_alpha(self) -> bool:
        return any(m.alpha is not None for m in self.modules.values())


@dataclass(frozen=True)
class LoraModule:
    """One module's LoRA: ``delta = (alpha / rank) * up @ down`` (alpha None: see module docstring)."""

    module: str
    down: torch.Tensor  # (rank, in_features, *kernel)
    up: torch.Tensor  # (out_features, rank, *1)
    alpha: Optional[float]

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclass
class _Grouped:
    """A header's tensor names sorted by what they are (see :func:`_group_keys`)."""

    pairs: Dict[str, Dict[str, str]] = field(default_factory=dict)  # module -> part ("down"/"up"/"alpha") -> key
    products: Dict[str, Dict[str, str]] = field(default_factory=dict)  # module -> LoHa/LoKr part -> key
    diffs: Dict[str, DiffInfo] = field(default_factory=dict)
    unknown: List[str] = field(default_factory=list)
    fmts: set = field(default_factory=set)
    dora: Dict[str, str] = field(default_factory=dict)  # module -> its .dora_scale key
    text_encoder: List[str] = field(default_factory=list)


DORA_SUFFIX = ".dora_scale"
# PEFT saves a DoRA's magnitude as "<module>.lora_magnitude_vector" (get_peft_model_state_dict), or with
# the adapter's name, "<module>.lora_magnitude_vector.default.weight", in any of its layouts' stems.
_PEFT_MAGNITUDE = re.compile(r"(.+)\.lora_magnitude_vector(?:\.[^.]+\.weight|\.weight)?")
# Text-encoder LoRA names, the ones ComfyUI's model_lora_keys_clip maps (comfy/lora.py:97-173): a Wan
# DiT LoRA may carry them (sd-scripts style trainers), and LoraLoaderModelOnly loads none of them.
_TEXT_ENCODER = re.compile(r"(lora_(prior_)?te\d*_|text_encoders?(_\d+)?\.)")


def is_peft_magnitude(key: str) -> bool:
    """Whether ``key`` is a PEFT DoRA magnitude (which ComfyUI does not load: "lora key not loaded")."""
    return _PEFT_MAGNITUDE.fullmatch(key) is not None


def is_text_encoder_key(key: str) -> bool:
    """Whether ``key`` is a text encoder's LoRA tensor (``lora_te_*``, ``lora_te1_*``, ``text_encoder.*``...)."""
    return _TEXT_ENCODER.match(key) is not None


def _dora_module(key: str) -> Optional[str]:
    """The Wan module a DoRA magnitude belongs to: ``<stem>.dora_scale`` (the musubi and comfy stems
    ComfyUI maps) or PEFT's ``<stem>.lora_magnitude_vector`` (any layout with PEFT parts)."""
    peft = _PEFT_MAGNITUDE.fullmatch(key)
    if peft:
        parsed = parse_lora_key(peft.group(1) + ".lora_A.weight")
        return parsed.module if parsed else None
    if not key.endswith(DORA_SUFFIX):
        return None
    found = module_of_stem(key[: -len(DORA_SUFFIX)])
    return found[0] if found else None


def _group_keys(header: SafetensorsHeader) -> _Grouped:
    g = _Grouped()
    for key in header.keys():
        parsed = parse_lora_key(key)
        if parsed is not None:
            g.fmts.add(parsed.fmt)
            parts = g.pairs.setdefault(parsed.module, {})
            if parsed.part in parts:
                raise UserError(f"LoRA module '{parsed.module}' is stored twice ('{parts[parsed.part]}' and '{key}')",
                                path=header.path, fix="keep one copy of each module; the file mixes two LoRA layouts")
            parts[parsed.part] = key
            continue
        product = parse_product_key(key)
        if product is not None:
            g.fmts.add(product.fmt)
            g.products.setdefault(product.module, {})[product.part] = key
            continue
        diff = parse_diff_key(key)
        if diff is None:
            dora = _dora_module(key)
            if dora is None:
                (g.text_encoder if is_text_encoder_key(key) else g.unknown).append(key)
            else:
                g.dora[dora] = key
            continue
        if diff.param in g.diffs:
            raise UserError(f"the difference of '{diff.param}' is stored twice ('{g.diffs[diff.param].key}' and "
                            f"'{key}')", path=header.path, fix="keep one of them; the file mixes two LoRA layouts")
        g.fmts.add(diff.fmt)
        info = header.tensors[key]
        g.diffs[diff.param] = DiffInfo(diff.param, key, info.shape, info.dtype)
    for module, parts in g.products.items():  # a LoHa/LoKr module's alpha was read as a LoRA's
        pair = g.pairs.pop(module, {})
        if set(pair) - {"alpha"}:
            raise UserError(f"module '{module}' is stored both as a LoRA pair ('{pair.get('down', pair.get('up'))}') and "
                            f"as {_product_label(parts)} ('{next(iter(parts.values()))}')", path=header.path,
                            fix="keep one of them; the file mixes two kinds of network")
        if "alpha" in pair:
            parts["alpha"] = pair["alpha"]
    changed = {m + ".weight" for m in (*g.pairs, *g.products)}
    both = sorted(set(g.diffs) & changed)
    if both:
        raise UserError(f"'{g.diffs[both[0]].key}' and a LoRA module both change '{both[0]}'"
                        + (f" (and {len(both) - 1} more)" if len(both) > 1 else "") + "; loaders disagree on which wins "
                        "(ComfyUI applies only the difference)", path=header.path,
                        fix="keep either the difference or the module for each weight")
    return g


def _product_label(parts: Mapping[str, str]) -> str:
    return LABELS["loha" if any(p.startswith("hada_") for p in parts) else "lokr"]


def _alpha(header: SafetensorsHeader, key: Optional[str], fh: BinaryIO) -> Optional[float]:
    return float(read_tensor(header, key, fh=fh).float().reshape(-1)[0]) if key else None


def _read_products(header: SafetensorsHeader, groups: Dict[str, Dict[str, str]], fh: BinaryIO,
                   bad: List[str]) -> Dict[str, ProductInfo]:
    products: Dict[str, ProductInfo] = {}
    for module in sorted(groups, key=module_sort_key):
        parts = dict(groups[module])
        alpha_key = parts.pop("alpha", None)
        kinds = {"loha" if p.startswith("hada_") else "lokr" for p in parts}
        if len(kinds) > 1:
            bad.append(f"module '{module}' mixes LoHa and LoKr tensors")
            continue
        kind = kinds.pop()
        lacking = missing_parts(kind, parts)
        if lacking:
            bad.append(f"{LABELS[kind]} module '{module}' has no {', '.join(lacking)}")
            continue
        shapes = {p: tuple(header.tensors[k].shape) for p, k in parts.items()}
        if any(len(shape) != 2 for shape in shapes.values()):
            bad.append(f"{LABELS[kind]} module '{module}' has tensors that are not matrices (Wan's are Linear layers)")
            continue
        products[module] = ProductInfo(module, kind, parts, shapes, alpha_key, _alpha(header, alpha_key, fh))
    return products


def _with_peft_alphas(modules: Dict[str, LoraModuleInfo], metadata: Mapping[str, str], path: PathLike
                      ) -> Tuple[Dict[str, LoraModuleInfo], Dict[str, int]]:
    """``modules`` with the alpha diffusers applies (:func:`peft_config`) where the layout reads it and the
    module has no alpha tensor; and the modules whose config r differs from their rank.

    A config whose r is not the tensors' rank for some module describes no loader: diffusers builds rank-r
    layers from it and fails to load the file at all, and the files that carry one (an older ``resize`` or
    ``combine`` copied the input's config verbatim onto tensors with the scale already folded in) hold their
    delta at the layout's own scale. Such a config is stale for the whole file and read as absent (scale 1
    in the diffusers layout); the mismatch is returned for ``inspect`` to report."""
    config = peft_config(metadata, path)
    if config is None:
        return modules, {}
    out, mismatch = dict(modules), {}
    try:
        for name, info in modules.items():
            parsed = parse_lora_key(info.down_key)
            if info.alpha_key is None and parsed is not None and parsed.fmt in PEFT_METADATA_LAYOUTS:
                alpha, r = peft_alpha(config, peft_module_name(info.down_key), info.rank)
                out[name] = replace(info, alpha=alpha)
                if r != info.rank:
                    mismatch[name] = r
    except (TypeError, ValueError):
        logger.warning("%s: its '%s' holds an r or lora_alpha that is not a number; reading the LoRA without it",
                       path, PEFT_METADATA_KEY)
        return modules, {}
    if mismatch:
        logger.warning("%s: %s; reading the LoRA without it (the diffusers layout's scale 1)", path,
                       stale_config_text(mismatch, {m: modules[m].rank for m in mismatch}))
        return modules, mismatch
    return out, mismatch


def read_lora_index(path: PathLike, *, finite: bool = True) -> LoraIndex:
    """Parse a LoRA's header into modules (reads only the alpha scalars, and with ``finite`` every weight once).

    Args:
        finite: refuse a LoRA holding NaN or inf (every command that uses one); ``inspect`` reports them instead.

    Raises:
        UserError: unreadable/truncated file, a pickle, a module without its up or down weight,
            up/down shapes that do not chain, or an incomplete LoHa/LoKr module.
        NonFiniteError: ``finite`` and a weight or alpha holds NaN/inf.
    """
    header = read_header(path)
    g = _group_keys(header)
    modules: Dict[str, LoraModuleInfo] = {}
    bad: List[str] = []
    with open(header.path, "rb") as fh:
        for module in sorted(g.pairs, key=module_sort_key):
            parts = g.pairs[module]
            if "down" not in parts or "up" not in parts:
                have = ", ".join(f"'{k}'" for k in parts.values())
                bad.append(f"{have} has no matching lora_{'up' if 'down' in parts else 'down'}")
                continue
            down, up = header.tensors[parts["down"]], header.tensors[parts["up"]]
            if len(down.shape) < 2 or len(up.shape) < 2 or up.shape[1] != down.shape[0]:
                bad.append(f"'{parts['up']}' {list(up.shape)} does not chain with '{parts['down']}' {list(down.shape)}")
                continue
            alpha_key = parts.get("alpha")
            if alpha_key and header.tensors[alpha_key].numel != 1:  # a loader would take its first value, or fail
                bad.append(f"'{alpha_key}' holds {header.tensors[alpha_key].numel} values; an alpha is one number")
                continue
            modules[module] = LoraModuleInfo(module, parts["down"], parts["up"], alpha_key, down.shape,
                                             up.shape, up.dtype, _alpha(header, alpha_key, fh))
        products = _read_products(header, g.products, fh, bad)
    if bad:
        raise UserError(f"broken LoRA: {'; '.join(bad[:3])}" + (f" and {len(bad) - 3} more" if len(bad) > 3 else ""),
                        path=header.path, fix="re-save or re-download the LoRA; was it cut short or edited by hand?")
    fmts = g.fmts
    fmt = fmts.pop() if len(fmts) == 1 else ("mixed" if fmts else "unknown")
    modules, rank_mismatch = _with_peft_alphas(modules, header.metadata, header.path)
    index = LoraIndex(header.path, header, fmt, modules, tuple(g.unknown), dict(header.metadata), g.diffs, products,
                      g.dora, tuple(g.text_encoder), rank_mismatch)
    if finite:
        bad_keys = nonfinite_keys(index)
        if bad_keys:
            raise NonFiniteError(index.path, key=bad_keys[0], count=len(bad_keys))
    return index


#: dtype -> (same-width int dtype, exponent mask): all exponent bits set is inf or NaN. Testing the
#: bits is ~2x faster than torch.isfinite on bf16 and makes no float copy.
_EXPONENT = {torch.float16: (torch.int16, 0x7C00), torch.bfloat16: (torch.int16, 0x7F80),
             torch.float32: (torch.int32, 0x7F800000)}


def _all_finite(t: torch.Tensor) -> bool:
    if t.dtype not in _EXPONENT:
        return bool(torch.isfinite(t.float()).all())
    int_dtype, mask = _EXPONENT[t.dtype]
    return not bool(((t.view(int_dtype) & mask) == mask).any())


def nonfinite_keys(index: LoraIndex) -> List[str]:
    """Names of the tensors (alphas included) holding NaN or inf. A LoRA is small next to a base
    (hundreds of MB at most), so reading it once more costs little beside what it would poison."""
    alphas = [(i.alpha_key, i.alpha) for i in (*index.modules.values(), *index.products.values())]
    bad = [key for key, alpha in alphas if alpha is not None and not math.isfinite(alpha)]
    keys = [k for info in index.modules.values() for k in (info.down_key, info.up_key)]
    keys += [k for info in index.products.values() for k in info.keys.values()]
    with open(index.path, "rb") as fh:
        for key in keys + [d.key for d in index.diffs.values()]:
            if not _all_finite(read_tensor(index.header, key, fh=fh)):
                bad.append(key)
    return bad


def _holds_wan_weights(keys: Iterable[str]) -> bool:
    """Do ``keys`` include a Wan DiT linear weight itself (a model given where a LoRA goes)?"""
    for key in keys:
        stem = key[: -len(".weight")] if key.endswith(".weight") else None
        for prefix in ("", COMFY_PREFIX, COMFY_LORA_PREFIX):  # a checkpoint's, a ComfyUI one's, a state dict's
            if stem and stem.startswith(prefix) and is_wan_module(stem[len(prefix):]):
                return True
    return False


def require_a_wan_module(index: LoraIndex) -> None:
    """Raise unless the file changes at least one Wan module or parameter (what even ``inspect`` needs).

    Raises:
        UserError: a Wan model given as a LoRA, or a LoRA for another model (or in a layout not read).
    """
    if not index.modules and not index.diffs and not index.products:
        shown = ", ".join(f"'{k}'" for k in sorted(index.unknown_keys + index.text_encoder)[:3]) or "no tensors"
        if _holds_wan_weights(index.unknown_keys):
            raise UserError(f"a Wan model's weights, not a LoRA (found {shown})", path=index.path,
                            fix="pass the model as the EXPERT (the first argument) and the LoRA with --lora")
        raise UserError(f"no tensor names a Wan DiT LoRA module (found {shown}): a LoRA for another model, or a key "
                        f"layout not read here", path=index.path,
                        fix="use a Wan2.2 LoRA in one of the layouts read: musubi-tuner, ComfyUI, Diffusers/PEFT, "
                            "DiffSynth-Studio, finetrainers, SimpleTuner LyCORIS")


def require_wan_lora(index: LoraIndex) -> None:
    """Raise unless every tensor of the file is a LoRA part of a Wan DiT module or a difference of a Wan parameter.

    Raises:
        UserError: no Wan module at all (a LoRA for another model), or some tensors that
            ComfyUI would report as "lora key not loaded" and we could not merge.
    """
    require_a_wan_module(index)
    if index.dora:
        first = index.dora[min(index.dora, key=module_sort_key)]
        fix = ("load it in ComfyUI as it is (LoraLoaderModelOnly applies DoRA at load time) beside the unmerged expert"
               if not is_peft_magnitude(first) else
               "load it with the PEFT/Diffusers pipeline it was trained for, which applies DoRA at load time (ComfyUI "
               "does not load PEFT's lora_magnitude_vector: it would apply the pairs as a plain LoRA)")
        raise UserError(f"a DoRA LoRA: {len(index.dora)} module(s) carry a learned magnitude (e.g. '{first}'), which this "
                        "tool does not merge, convert, combine or resize (loaders disagree on how to apply it)",
                        path=index.path, fix=fix)
    if index.unknown_keys:
        keys = sorted(index.unknown_keys)
        shown = ", ".join(f"'{k}'" for k in keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
        raise UserError(f"{len(keys)} tensor(s) are not LoRA weights of a Wan DiT module: {shown}", path=index.path,
                        fix="supported: LoRA pairs (lora_down/lora_up or lora_A/lora_B, optional alpha), LoHa and LoKr "
                            "modules, and whole-tensor differences of Wan parameters (.diff, .diff_b, .diff_m)")
    if index.text_encoder:
        # Left out rather than refused: they change the text encoder, never the DiT, and ComfyUI's
        # LoraLoaderModelOnly (the node Wan workflows use) loads none of them either.
        logger.warning("%s: leaving out %d text-encoder tensor(s) (e.g. '%s'): they are not for the Wan DiT, and "
                       "ComfyUI's LoraLoaderModelOnly does not load them either", index.path, len(index.text_encoder),
                       sorted(index.text_encoder)[0])


def module_scales(index: LoraIndex, *, alpha_if_missing: AlphaIfMissing = None,
                  zero_alpha_as_rank: bool = False) -> Dict[str, float]:
    """``alpha / rank`` per module, refusing ambiguous missing alphas (see the module docstring) and alphas of 0.

    An alpha of 0 is read two ways: ComfyUI applies ``0 / rank``, no change at all
    (``comfy/weight_adapter/lora.py:175``), where musubi-tuner's and sd-scripts' ``LoRAModule`` take 0 as the
    rank (scale 1). Neither is what a merged file should silently pick, so it is refused like a missing alpha.

    Args:
        index: from :func:`read_lora_index`.
        alpha_if_missing: ``"rank"`` (scale 1, the sd-scripts/ComfyUI convention) or a number
            to use where a module has no alpha, or an alpha of 0; None refuses when the layout needs one.
        zero_alpha_as_rank: take an alpha of 0 as the rank without asking (``convert``, which says so
            in its report: the comfy file it writes then loads in ComfyUI as musubi-tuner reads it).

    Raises:
        UserError: names the first modules without alpha (or with alpha 0) and the flag that decides.
    """
    missing = [m for m, info in index.modules.items() if info.alpha is None]
    needs_alpha = index.fmt in ("musubi", "lycoris", "mixed") or (missing and index.has_alpha)
    if missing and needs_alpha and alpha_if_missing is None:
        key = index.modules[missing[0]].down_key.rsplit(".lora_", 1)[0] + ".alpha"  # where it would be
        raise UserError(f"missing alpha: '{key}' (and {len(missing) - 1} more module(s)) has no alpha, so its strength "
                        f"is unknown (musubi trains with alpha 1, which is scale 1/rank)", path=index.path,
                        fix="pass --alpha-if-missing rank (scale 1, sd-scripts/ComfyUI convention) or "
                            "--alpha-if-missing <number> (e.g. 1 for a musubi default)")
    zeros = sorted((m for m, info in index.modules.items() if info.alpha == 0), key=module_sort_key)
    if zeros and alpha_if_missing is None and not zero_alpha_as_rank:
        where = index.modules[zeros[0]].alpha_key or f"{PEFT_METADATA_KEY}'s lora_alpha"
        raise UserError(f"an alpha of 0: '{where}' (and {len(zeros) - 1} more module(s)) "
                        "is 0, which loaders read differently: ComfyUI applies 0 / rank (no change at all), "
                        "musubi-tuner and sd-scripts read it as the rank (scale 1)", path=index.path,
                        fix="pass --alpha-if-missing rank for scale 1 as musubi-tuner reads it (or a number to use as "
                            "alpha); to load it in ComfyUI as musubi-tuner does: circle-rotate convert IN -o OUT "
                            "--format comfy")
    out = {}
    for module, info in index.modules.items():
        alpha = info.alpha
        if alpha is None or alpha == 0:
            alpha = float(info.rank) if alpha_if_missing in (None, "rank") else float(alpha_if_missing)
        out[module] = alpha / info.rank
    return out


def load_diff(index: LoraIndex, param: str, *, fh: Optional[BinaryIO] = None) -> torch.Tensor:
    """Read the difference of Wan parameter ``param`` (as stored)."""
    return read_tensor(index.header, index.diffs[param].key, fh=fh)


def load_diffs(index: LoraIndex) -> Dict[str, torch.Tensor]:
    """Every difference of the file, by Wan parameter (they are norm- and bias-sized, small)."""
    with open(index.path, "rb") as fh:
        return {param: load_diff(index, param, fh=fh) for param in index.diffs}


def load_product(index: LoraIndex, module: str, *, fh: Optional[BinaryIO] = None) -> Dict[str, torch.Tensor]:
    """Read the tensors of LoHa/LoKr ``module`` (as stored), by part."""
    return {part: read_tensor(index.header, key, fh=fh) for part, key in index.products[module].keys.items()}


def require_layout(index: LoraIndex, fmt: str) -> None:
    """Refuse to write ``index``'s differences and LoHa/LoKr modules in a layout with no name a loader applies.

    Raises:
        UserError: naming the first tensor that layout cannot hold and the layout that can.
    """
    for info in index.products.values():
        try:
            product_key(info.module, next(iter(info.keys)), fmt)
        except ValueError:
            raise UserError(f"'{next(iter(info.keys.values()))}' ({LABELS[info.kind]}) has no name in the {fmt} layout",
                            path=index.path, fix="write --format comfy or musubi (ComfyUI loads both)") from None
    for param, info in index.diffs.items():
        try:
            diff_key(param, fmt)
        except ValueError:
            raise UserError(f"'{info.key}' (a whole-tensor difference of '{param}') has no name ComfyUI loads in the "
                            f"{fmt} layout", path=index.path,
                            fix="write --format comfy, which keeps every difference") from None


def require_lora_only(index: LoraIndex, what: str) -> None:
    """Refuse LoHa/LoKr modules where only LoRA ranks make sense (``combine``, ``resize``).

    Raises:
        UserError: naming the first such module and what to do instead.
    """
    if index.products:
        info = next(iter(index.products.values()))
        raise UserError(f"{what} works on LoRA ranks; '{next(iter(info.keys.values()))}' is a {LABELS[info.kind]} module",
                        path=index.path, fix="merge it into the expert instead (circle-rotate merge), or use a plain LoRA")


def load_module(index: LoraIndex, module: str, *, fh: Optional[BinaryIO] = None) -> LoraModule:
    """Read one module's down/up weights (as stored) and its alpha."""
    info = index.modules[module]
    return LoraModule(module, read_tensor(index.header, info.down_key, fh=fh),
                      read_tensor(index.header, info.up_key, fh=fh), info.alpha)


def fold_factors(scale: float, balance: float = 1.0) -> Tuple[float, float]:
    """Split ``scale`` into (down factor, up factor) with a power-of-two up factor.

    Multiplying by a power of two is exact, so a power-of-two scale (musubi's 1/32) folds
    into the weights without rounding; magnitudes stay balanced between the two factors.
    With ``balance`` = rms(down) / rms(up), the scaled factors get about the same magnitude
    (trained ``up`` weights are often 10x smaller than ``down``'s), which keeps both from the
    subnormals of fp16 when a small scale is folded into them.
    """
    up = 2.0 ** round(math.log2(scale * balance) / 2) if scale > 0 and balance > 0 else 1.0
    return scale / up, up


def folded(mod: LoraModule, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(down, up)`` with ``scale`` folded in, in their stored dtypes (for layouts with no alpha)."""
    f_down, f_up = fold_factors(scale)
    down = mod.down if f_down == 1.0 else (mod.down.float() * f_down).to(mod.down.dtype)
    up = mod.up if f_up == 1.0 else (mod.up.float() * f_up).to(mod.up.dtype)
    return down, up


def check_folded(path: PathLike, module: str, fmt: str, down: torch.Tensor, up: torch.Tensor) -> None:
    """Refuse weights a folded scale overflowed (they would be written as inf).

    Raises:
        NonFiniteError: naming the output ``path`` and the tensor.
    """
    for part, t in (("down", down), ("up", up)):
        if not _all_finite(t):  # (fp8 has no isfinite)
            raise NonFiniteError(path, key=lora_key(module, part, fmt),
                                 fix=f"its scale alpha/rank overflows {t.dtype} when folded in; keep alpha (--format "
                                     "musubi or comfy), or check the alpha")


def lora_specs(modules: Mapping[str, LoraModule], fmt: str, diffs: Optional[Mapping[str, torch.Tensor]] = None
               ) -> Dict[str, Tuple[torch.dtype, Tuple[int, ...]]]:
    """Header specs of a LoRA file in layout ``fmt``: module by module (down, up, alpha), then the differences."""
    diffs = diffs or {}
    specs: Dict[str, Tuple[torch.dtype, Tuple[int, ...]]] = {}
    for name in sorted(modules, key=module_sort_key):
        mod = modules[name]
        specs[lora_key(name, "down", fmt)] = (mod.down.dtype, tuple(mod.down.shape))
        specs[lora_key(name, "up", fmt)] = (mod.up.dtype, tuple(mod.up.shape))
        if fmt in FORMATS_WITH_ALPHA:
            specs[lora_key(name, "alpha", fmt)] = (torch.float32, ())
    for param in sorted(diffs, key=module_sort_key):
        specs[diff_key(param, fmt)] = (diffs[param].dtype, tuple(diffs[param].shape))
    return specs


def write_lora(path: PathLike, modules: Mapping[str, LoraModule], *, fmt: str,
               metadata: Optional[Mapping[str, str]] = None, diffs: Optional[Mapping[str, torch.Tensor]] = None) -> Path:
    """Write ``modules`` (and whole-tensor ``diffs``, by Wan parameter) as a LoRA in layout ``fmt`` (atomically).

    Every module must have an alpha (the caller resolves missing ones). For ``diffusers``
    the scale ``alpha / rank`` is folded into the weights (see :func:`fold_factors`). The
    caller checks that ``fmt`` can name every difference (:func:`require_layout`). The rank and
    alpha records of ``metadata`` are rewritten to what is written (:func:`output_metadata`).
    """
    diffs = diffs or {}
    alphas = {n: float(m.alpha) for n, m in modules.items()} if fmt in FORMATS_WITH_ALPHA else {}
    metadata = output_metadata(metadata, fmt, {n: m.rank for n, m in modules.items()}, alphas)
    with SafetensorsWriter(path, lora_specs(modules, fmt, diffs), metadata=metadata) as writer:
        for name in sorted(modules, key=module_sort_key):
            mod = modules[name]
            down, up = mod.down, mod.up
            if fmt not in FORMATS_WITH_ALPHA:
                down, up = folded(mod, mod.alpha / mod.rank)
                check_folded(path, name, fmt, down, up)
            writer.write(lora_key(name, "down", fmt), down.contiguous())
            writer.write(lora_key(name, "up", fmt), up.contiguous())
            if fmt in FORMATS_WITH_ALPHA:
                writer.write(lora_key(name, "alpha", fmt), torch.tensor(float(mod.alpha), dtype=torch.float32))
        for param in sorted(diffs, key=module_sort_key):
            writer.write(diff_key(param, fmt), diffs[param].contiguous())
    return Path(path)


def resolved_modules(index: LoraIndex, scales: Mapping[str, float], *, modules: Optional[Iterable[str]] = None
                     ) -> Dict[str, LoraModule]:
    """Load modules with every missing or zero alpha filled in (``alpha = scale * rank``). LoRAs are small
    next to a base (hundreds of MB at most), so converting tools hold one whole."""
    out = {}
    with open(index.path, "rb") as fh:
        for name in (modules if modules is not None else index.modules):
            mod = load_module(index, name, fh=fh)
            # an alpha of 0 means what the caller resolved (module_scales): ComfyUI reads 0 as no change
            alpha = mod.alpha if mod.alpha else scales[name] * mod.rank
            out[name] = LoraModule(name, mod.down, mod.up, alpha)
    return out
