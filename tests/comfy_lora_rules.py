"""ComfyUI's LoRA key rules for a Wan model, re-stated from what its code does (GPL-3.0, so not copied).

Read upstream at a125cd84 (Oct 2025); the rules are listed in ``test_lora_keys``' docstring.
:func:`comfy_load` answers which tensors of a LoRA file ``load_lora`` consumes and which model
keys it patches, for the tests of every layout we write.
"""

from __future__ import annotations

from typing import Dict, Iterable, Set, Tuple

_PAIRS = ((".lora_up.weight", ".lora_down.weight"), ("_lora.up.weight", "_lora.down.weight"),
          (".lora_B.weight", ".lora_A.weight"), (".lora.up.weight", ".lora.down.weight"), (".lora_B", ".lora_A"),
          (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"),
          (".lora_B.default.weight", ".lora_A.default.weight"))
_SINGLES = (".alpha", ".dora_scale", ".w_norm", ".b_norm", ".diff", ".diff_b", ".set_weight", ".lora_mid.weight")
# LoHa (all four, with optional CP tensors) and LoKr (any of its parts) patch the key x maps to.
_LOHA = (".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b")
_LOHA_CP = (".hada_t1", ".hada_t2")
_LOKR = (".lokr_w1", ".lokr_w2", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2_a", ".lokr_w2_b", ".lokr_t2")


WAN_FUN_MARKER = "lora_unet__blocks_0_cross_attn_k.lora_down.weight"


def comfy_key_map(dit_keys: Iterable[str]) -> Dict[str, str]:
    """``model_lora_keys_unet`` for a Wan model whose DiT has ``dit_keys`` (no prefix)."""
    key_map = {}
    for k in ("diffusion_model." + key for key in dit_keys):
        if k.endswith(".weight"):
            key_map["lora_unet_" + k[len("diffusion_model."):-len(".weight")].replace(".", "_")] = k
            key_map[k[:-len(".weight")]] = k
        else:
            key_map[k] = k
    return key_map


def comfy_load(lora_keys: Iterable[str], key_map: Dict[str, str]) -> Tuple[Set[str], Set[str]]:
    """(LoRA keys ``load_lora`` consumes, model keys it patches): a pair, a LoHa or LoKr module or
    ``x.diff`` patches the key ``x`` maps to, ``x.diff_b`` that key's ``.bias``
    (``"{}.bias".format(key[:-len(".weight")])``)."""
    lora_keys = set(lora_keys)
    # comfy/lora_convert.py:39 (ComfyUI 0.3.64): Wan Fun's "lora_unet__" prefix becomes "lora_unet_" only
    # when this exact key is in the file; otherwise those keys stay as they are, and map to nothing.
    fun = WAN_FUN_MARKER in lora_keys
    lora = {k.replace("lora_unet__", "lora_unet_", 1) if fun and k.startswith("lora_unet__") else k for k in lora_keys}
    loaded, patched = set(), set()
    for x, target in key_map.items():
        loaded.update(x + s for s in _SINGLES if x + s in lora)
        if x + ".diff" in lora:
            patched.add(target)
        if x + ".diff_b" in lora:
            patched.add(target[:-len(".weight")] + ".bias")
        if x + _LOHA[0] in lora:
            loaded.update(x + s for s in _LOHA + _LOHA_CP if x + s in lora)
            patched.add(target)
        lokr = {x + s for s in _LOKR if x + s in lora}
        if lokr:
            loaded.update(lokr)
            patched.add(target)
        for up, down in _PAIRS:
            if x + up in lora:
                loaded.update({x + up, x + down})
                patched.add(target)
                break
    renamed_back = {"lora_unet__" + k[len("lora_unet_"):] for k in loaded if fun and k.startswith("lora_unet_")}
    return (loaded | renamed_back) & lora_keys, patched


def comfy_applied(patched: Iterable[str]) -> Set[str]:
    """Of the model keys ``load_lora`` patches, those the sampler's model really gets:
    ``ModelPatcher._load_list`` (``comfy/model_patcher.py``) passes over every parameter of a
    module with children, which in a Wan model are ``blocks.N.modulation`` and ``head.modulation``
    (read at a125cd84, and run there on a tiny Wan: their patch is registered, never applied)."""
    return {k for k in patched if not k.endswith(".modulation")}
