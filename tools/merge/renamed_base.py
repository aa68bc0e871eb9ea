"""A Diffusers-format expert seen under Wan's own key names, so the merge plans, reads and writes it
like any other base and the output is what ComfyUI and musubi-tuner load.

``Wan-AI/Wan2.2-I2V-A14B-Diffusers`` stores each expert (``transformer/`` high-noise,
``transformer_2/`` low-noise, as ``WanImageToVideoPipeline`` switches them) with Diffusers'
``WanTransformer3DModel`` names, in shards. Diffusers' converter renames Wan's tensors and changes
nothing else (no reshaping, no fusing), so renaming back is exact: :class:`RenamedHeader` answers under
the Wan name with the same bytes of the same shard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from circle_rotate.kernel.checkpoint_identity import WAN_LAYOUT_SOURCES
from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.safetensors_io import SafetensorsHeader, TensorInfo
from circle_rotate.kernel.shards import AnyHeader
from circle_rotate.tools.lora.keys import wan_param_from_diffusers


@dataclass(frozen=True)
class RenamedHeader:
    """``inner`` (any header) with its tensors under other names; ``source`` maps each new name to the old."""

    inner: AnyHeader
    source: Dict[str, str]
    tensors: Dict[str, TensorInfo] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tensors", {new: self.inner.tensors[old] for new, old in self.source.items()})

    path = property(lambda self: self.inner.path)
    metadata = property(lambda self: self.inner.metadata)
    shards = property(lambda self: self.inner.shards)
    file_size = property(lambda self: self.inner.file_size)
    total_bytes = property(lambda self: self.inner.total_bytes)
    largest_tensor_bytes = property(lambda self: self.inner.largest_tensor_bytes)

    def __contains__(self, key: str) -> bool:
        return key in self.source

    def keys(self):
        return self.tensors.keys()

    def header_of(self, key: str) -> SafetensorsHeader:
        return self.inner.header_of(self.source[key])

    @property
    def storage_order(self) -> List[str]:
        back = {old: new for new, old in self.source.items()}
        return [back[k] for k in self.inner.storage_order]


def wan_named(header: AnyHeader) -> RenamedHeader:
    """A Diffusers-format Wan transformer's header under Wan's names.

    Raises:
        UserError: a tensor with no Wan name (another Diffusers model, or a fused/quantized export),
            or two tensors that would take one name.
    """
    source: Dict[str, str] = {}
    for key in header.keys():
        wan = wan_param_from_diffusers(key)
        if wan is None:
            raise UserError(f"'{key}' has no counterpart in Wan's layout (not a WanTransformer3DModel tensor)",
                            path=header.path, fix="use " + WAN_LAYOUT_SOURCES)
        if wan in source:
            raise UserError(f"'{source[wan]}' and '{key}' would both become '{wan}'", path=header.path,
                            fix="use " + WAN_LAYOUT_SOURCES)
        source[wan] = key
    return RenamedHeader(header, source)
