"""The header metadata of LoRA files that says how to scale them: diffusers' PEFT ``LoraConfig``
(``lora_adapter_metadata``, read where diffusers reads it and written to match what a file holds)
and sd-scripts' ``ss_network_dim``/``ss_network_alpha`` records, kept true to the tensors written."""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter
from typing import Dict, Mapping, Optional, Tuple, Union

from circle_rotate.tools.lora.keys import (DIFFUSERS_PREFIXES, FORMATS_WITH_ALPHA, key_stem, lora_key,
                                          module_sort_key)

logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]


#: The header entry holding diffusers' PEFT ``LoraConfig`` (``loaders/lora_base.py`` LORA_ADAPTER_METADATA_KEY).
PEFT_METADATA_KEY = "lora_adapter_metadata"
#: ``save_lora_weights`` prefixes each entry with the component ("transformer.r"); the pipeline's loader keeps
#: only those (``load_lora_adapter(prefix="transformer")``). ``save_lora_adapter`` writes them unprefixed ("r").
PEFT_METADATA_PREFIX = "transformer."
#: ``LoraConfig``'s defaults (peft/tuners/lora/config.py) for a config that names no r or lora_alpha.
_PEFT_DEFAULT_R = _PEFT_DEFAULT_ALPHA = 8
#: The layout diffusers loads with that config as the adapter's. ComfyUI and musubi-tuner never read it, so in
#: their layouts (a file an older converter copied it into) a module's scale is what its alpha tensor says.
PEFT_METADATA_LAYOUTS = ("diffusers",)


def peft_config(metadata: Mapping[str, str], path: Optional[PathLike] = None) -> Optional[Dict[str, object]]:
    """The PEFT ``LoraConfig`` fields diffusers builds a LoRA's adapter from (see the module docstring);
    None without one. The ``transformer.``-prefixed entries win over unprefixed ones, as diffusers'
    pipeline loader reads them. An entry that is not a JSON object is left out (with a warning naming
    ``path``, where given: the file is read once with it)."""
    raw = metadata.get(PEFT_METADATA_KEY)
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        if path is not None:
            logger.warning("%s: its '%s' is not a JSON object; reading the LoRA without it", path, PEFT_METADATA_KEY)
        return None
    prefixed = {k[len(PEFT_METADATA_PREFIX):]: v for k, v in data.items() if k.startswith(PEFT_METADATA_PREFIX)}
    return prefixed or {k: v for k, v in data.items() if "." not in k} or None


def _peft_pattern(patterns: object, name: str) -> object:
    """The value of the first ``rank_pattern``/``alpha_pattern`` key matching module ``name``, as PEFT picks it
    (peft/utils/other.py ``get_pattern_key``: a regex matching the name's end at a dot); None if none does."""
    if not isinstance(patterns, dict):
        return None
    for key, value in patterns.items():
        try:
            if re.match(rf"(.*\.)?({key})$", name):
                return value
        except re.error:  # PEFT would fail on it; no module matches it here
            continue
    return None


def peft_module_name(key: str) -> str:
    """The module name diffusers' PEFT config patterns match for LoRA tensor ``key``: its stem without the
    layout prefix (``transformer.blocks.0.attn1.to_q.lora_A.weight`` -> ``blocks.0.attn1.to_q``)."""
    stem = key_stem(key) or key
    return next((stem[len(p):] for p in DIFFUSERS_PREFIXES if stem.startswith(p)), stem)


def peft_alpha(config: Mapping[str, object], name: str, rank: int) -> Tuple[float, int]:
    """(alpha, r) of module ``name`` (:func:`peft_module_name`) under ``config``: PEFT scales it by
    ``lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``), with r the rank diffusers builds the layer at,
    which must be the tensors' ``rank`` for it to load. The alpha returned is that scale times ``rank``,
    so ``alpha / rank`` is what diffusers applies.

    Raises:
        ValueError: a value that is not a number.
    """
    r = _peft_pattern(config.get("rank_pattern"), name)
    a = _peft_pattern(config.get("alpha_pattern"), name)
    r = int(config.get("r", _PEFT_DEFAULT_R) if r is None else r)
    a = float(config.get("lora_alpha", _PEFT_DEFAULT_ALPHA) if a is None else a)
    # (where r is not ``rank`` diffusers loads no such file: the caller reads the file without the config,
    # circle_rotate.tools.lora.files._with_peft_alphas)
    return (a * math.sqrt(rank) if config.get("use_rslora") else a), r


def stale_config_text(mismatch: Mapping[str, int], ranks: Mapping[str, int]) -> str:
    """How a ``lora_adapter_metadata`` whose r is not the tensors' rank is described: ``mismatch`` the r it
    says by module, ``ranks`` the ranks those modules hold."""
    said = ", ".join(f"{r:g}" for r in sorted(set(mismatch.values())))
    held = ", ".join(f"{r:g}" for r in sorted(set(ranks.values())))
    return (f"{PEFT_METADATA_KEY} says r {said} for {len(mismatch)} module(s), the tensors hold {held} "
            "(diffusers cannot load it)")


def _peft_metadata(ranks: Mapping[str, int], old: Optional[Mapping[str, object]]) -> str:
    """The ``lora_adapter_metadata`` of a diffusers-layout file whose modules hold ``ranks`` with their scales folded
    in (scale 1: alpha = r for each, by ``rank_pattern``/``alpha_pattern`` where ranks differ). Without it diffusers
    takes ``lora_alpha`` = the first module's rank for all (``get_peft_kwargs``), wrong for mixed ranks. The
    other fields of ``old`` (the input's config) are kept; ``use_rslora`` would change the scale."""
    names = {m: peft_module_name(lora_key(m, "down", "diffusers")) for m in ranks}
    common = Counter(ranks.values()).most_common(1)[0][0]
    ordered = sorted(ranks.items(), key=lambda kv: module_sort_key(kv[0]))
    pattern = {f"^{names[m]}": r for m, r in ordered if r != common}  # (anchored, as diffusers writes them)
    config = dict(old or {})
    config.update(r=common, lora_alpha=common, rank_pattern=pattern, alpha_pattern=dict(pattern), use_rslora=False)
    config.setdefault("target_modules", sorted(names.values()))
    config.setdefault("use_dora", False)
    config.setdefault("lora_bias", False)
    return json.dumps({PEFT_METADATA_PREFIX + k: v for k, v in config.items()}, sort_keys=True)


def output_metadata(metadata: Optional[Mapping[str, str]], fmt: str, ranks: Mapping[str, int],
                    alphas: Mapping[str, float]) -> Dict[str, str]:
    """``metadata`` for a LoRA file in layout ``fmt`` whose modules hold ``ranks`` and, in a layout with alpha,
    the ``alphas`` written: the records a loader or ``inspect`` reads a scale from follow the tensors.

    ``ss_network_dim``/``ss_network_alpha`` (sd-scripts' records, rewritten only where present) become the one
    rank/alpha written, or ``Dynamic`` (sd-scripts' word for several); the diffusers layout has no alpha, so no
    ``ss_network_alpha``. ``lora_adapter_metadata`` describes the diffusers layout's folded scales
    (:func:`_peft_metadata`) and is dropped elsewhere: diffusers would apply it on top of the alpha tensors.
    """
    out = dict(metadata or {})
    old = peft_config(out)
    out.pop(PEFT_METADATA_KEY, None)

    def record(key: str, values: set) -> None:
        if len(values) > 1:
            out[key] = "Dynamic"
        elif values:
            value = values.pop()
            try:
                if float(out[key]) == value:  # a record that was right stays as it was spelt ("4.0")
                    return
            except ValueError:
                pass
            out[key] = f"{value:g}"

    if "ss_network_dim" in out:
        record("ss_network_dim", set(ranks.values()))
    if "ss_network_alpha" in out:
        if fmt in FORMATS_WITH_ALPHA:
            record("ss_network_alpha", set(alphas.values()))
        else:
            del out["ss_network_alpha"]
    if fmt == "diffusers" and ranks:
        out[PEFT_METADATA_KEY] = _peft_metadata(ranks, old)
    return out
