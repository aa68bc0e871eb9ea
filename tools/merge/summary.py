"""What a merge plan would write, in a few lines (``merge --dry-run``): nothing is read but headers."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Dict, List

import torch

from circle_rotate.tools.merge.plan import MergePlan

_BLOCK = re.compile(r"blocks\.(\d+)\.(.+?)(?:\.weight)?$")  # a difference may change a bias or the modulation
_DTYPE_NAME = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64",
               torch.float8_e4m3fn: "fp8_e4m3fn", torch.float8_e5m2: "fp8_e5m2"}


@dataclass(frozen=True)
class PlanSummary:
    out: str
    base: str
    expert: str
    variant: str
    bytes: int
    dtypes: Dict[str, int]  # output dtype -> tensors
    merged: int
    converted: int
    copied: int
    added: List[str]  # fp8 side tensors written that the base does not have (kinds)
    dropped: int
    blocks: str  # "0-39" or "none"
    modules: List[str]  # module names touched inside the blocks
    skipped: List[str] = field(default_factory=list)  # LoRA keys left out by --skip-absent
    base_files: int = 1  # the base's shards (one output file either way)

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)

    def lines(self) -> List[str]:
        dtypes = ", ".join(f"{n} {name}" for name, n in sorted(self.dtypes.items(), key=lambda kv: -kv[1]))
        return [f"would write {self.out}: {self.bytes / 2**30:.2f} GiB ({self.bytes:,} bytes), expert {self.expert}, "
                f"{self.variant}" + (f", one file from the base's {self.base_files} shards" if self.base_files > 1 else ""),
                f"tensors: {dtypes}",
                f"merged {self.merged} (blocks {self.blocks}: {', '.join(self.modules) or 'none'}), converted "
                f"{self.converted}, copied byte for byte {self.copied}",
                *([f"left out (absent from the expert): {len(self.skipped)} LoRA module(s), e.g. '{self.skipped[0]}'"]
                  if self.skipped else []),
                f"fp8 side tensors: {', '.join(self.added) or 'none'} added, {self.dropped} dropped; nothing written"]


def _ranges(numbers: List[int]) -> str:
    out: List[str] = []
    for n in sorted(numbers):
        if out and out[-1][1] == n - 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in out) or "none"


def summarize(plan: MergePlan, out: str) -> PlanSummary:
    """Size, dtypes and touched layers of ``plan`` written to ``out``."""
    blocks, modules = set(), set()
    for t in plan.tensors:
        m = _BLOCK.search(t.key) if t.deltas else None
        if m:
            blocks.add(int(m.group(1)))
            modules.add(m.group(2))
    added = Counter({"marker": "scaled_fp8", "scale": "scale_weight", "const": "scale_input"}[t.kind]
                    for t in plan.tensors if t.kind in ("marker", "scale", "const") and t.key not in plan.base.tensors)
    return PlanSummary(
        out=out, base=str(plan.base.path), expert=plan.metadata.get("circle_rotate.expert", "unknown"),
        variant=plan.identity.variant or plan.identity.task, bytes=plan.output_bytes,
        dtypes=dict(Counter(_DTYPE_NAME.get(t.dtype, str(t.dtype).replace("torch.", "")) for t in plan.tensors)),
        merged=sum(1 for t in plan.tensors if t.deltas),
        converted=sum(1 for t in plan.tensors if t.kind == "compute" and not t.deltas), copied=plan.count("raw"),
        added=[f"{n} {kind}" for kind, n in added.items()], dropped=len(plan.dropped), blocks=_ranges(list(blocks)),
        modules=sorted(modules), skipped=[k for keys in plan.skipped for k in keys], base_files=len(plan.base.shards),
    )
