"""Merge the released pair: the high-noise LoRA into the high-noise expert, the low into the low.

The two Wan2.2 experts have identical shapes, so a swapped pair merges without complaint and
gives broken videos. Before any work, each base is identified by
:func:`circle_rotate.kernel.checkpoint_identity.identify_checkpoint` (header metadata, then the file or folder
name) and each LoRA by :func:`circle_rotate.tools.lora.inspect.lora_expert` (training metadata,
then the ``_h``/``_l`` or ``high_noise``/``low_noise`` name). A contradiction is an error; so is
a file nothing tells about, unless ``assume_experts`` trusts the order given. Both merges are
planned (and so checked) before the first one writes.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from circle_rotate.kernel.disk_space import existing_parent, short_disks
from circle_rotate.kernel.errors import UserError
from circle_rotate.tools.lora.files import AlphaIfMissing, read_lora_index
from circle_rotate.tools.lora.inspect import lora_expert
from circle_rotate.tools.merge.run import MergeReport, PreparedMerge, prepare_merge, read_base, run_merge
from circle_rotate.tools.merge.summary import PlanSummary, summarize

logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]
EXPERTS = ("high", "low")


@dataclass(frozen=True)
class PairReport:
    high: MergeReport
    low: MergeReport
    evidence: Dict[str, str]  # "high base" -> "high (filename)" ...

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


def _check(role: str, path: Path, wanted: str, found: Optional[str], evidence: Optional[str], *, assume: bool,
           ignore_evidence: bool) -> Tuple[Optional[str], str]:
    """(problem or None, how the expert was established) for one file."""
    if found == wanted:
        return None, f"{found} ({evidence})"
    if found is None:
        if assume:
            return None, f"{wanted} (assumed from the command line)"
        return (f"cannot tell which expert --{wanted} {role} '{path.name}' is for (no metadata, no high/low noise in its name)",
                "unknown")
    if ignore_evidence:
        logger.warning("--%s %s %s looks like the %s-noise one (%s); used as %s as asked", wanted, role, path, found,
                       evidence, wanted)
        return None, f"{wanted} (overriding {found} by {evidence})"
    return f"--{wanted} {role} '{path.name}' is the {found}-noise one (by {evidence})", f"{found} ({evidence})"


def output_name(task: str, expert: str, lora: Path, dtype: str, variant: Optional[str] = None) -> str:
    """``wan2.2_i2v_high_noise_<lora stem>_<dtype>.safetensors`` (``wan2.2_fun_inpaint_...`` for the
    Fun-InP experts): keeps ``high_noise`` and ``fun_inpaint`` in the name, as Comfy-Org names its
    files, so the file identifies itself to ComfyUI users and to :mod:`circle_rotate.kernel.checkpoint_identity`."""
    model = "fun_inpaint" if variant == "fun-inp" else task
    return f"wan2.2_{model}_{expert}_noise_{lora.stem}_{dtype}.safetensors"


@dataclass(frozen=True)
class PreparedPair:
    """Both merges checked and planned, the disk included; nothing written (see :func:`prepare_pair`)."""

    high: PreparedMerge
    low: PreparedMerge
    evidence: Dict[str, str]
    out_dir: Path

    def summary(self) -> PairSummary:
        """What :func:`run_pair` would write: each expert's plan, their total and the free space (``--dry-run``)."""
        disk = existing_parent(self.out_dir)
        plans = {e: summarize(p.plan, str(p.out)) for e, p in (("high", self.high), ("low", self.low))}
        return PairSummary(plans["high"], plans["low"], dict(self.evidence), str(self.out_dir),
                           self.high.plan.output_bytes + self.low.plan.output_bytes, str(disk),
                           shutil.disk_usage(disk).free)


@dataclass(frozen=True)
class PairSummary:
    high: PlanSummary
    low: PlanSummary
    evidence: Dict[str, str]
    out_dir: str
    bytes: int  # both merged experts together
    disk: str  # where the free space was measured (out_dir, or its nearest existing folder)
    free_bytes: int

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)

    def lines(self) -> List[str]:
        return [*self.high.lines(), *self.low.lines(),
                f"both: {self.bytes / 2**30:.2f} GiB ({self.bytes:,} bytes) into {self.out_dir}; "
                f"{self.free_bytes / 2**30:.2f} GiB free at {self.disk}; nothing written"]


def merge_pair(high: Tuple[PathLike, PathLike], low: Tuple[PathLike, PathLike], out_dir: PathLike, *,
               dtype: str = "same", strengths: Tuple[float, float] = (1.0, 1.0), assume_experts: bool = False,
               ignore_expert_evidence: bool = False, alpha_if_missing: AlphaIfMissing = None, force: bool = False,
               workers: Optional[int] = None, skip_absent: bool = False) -> PairReport:
    """Merge ``high = (expert, lora)`` and ``low = (expert, lora)`` into two files in ``out_dir``.

    Args:
        high, low: (base expert, LoRA) for each noise level.
        out_dir: folder for the two merged experts (created if needed).
        dtype: as :func:`circle_rotate.tools.merge.run.merge_loras`.
        strengths: LoRA strength for (high, low).
        assume_experts: trust the order given for files that nothing identifies.
        ignore_expert_evidence: merge even when a file's metadata or name says the other expert.
        alpha_if_missing, force, workers, skip_absent: as :func:`circle_rotate.tools.merge.run.merge_loras`.

    Raises:
        UserError: a wrong or unidentifiable expert (naming the file and the evidence), or any
            merge error; nothing is kept then (a finished high-noise expert is removed, Ctrl-C too).
    """
    prepared = prepare_pair(high, low, out_dir, dtype=dtype, strengths=strengths, assume_experts=assume_experts,
                            ignore_expert_evidence=ignore_expert_evidence, alpha_if_missing=alpha_if_missing,
                            force=force, skip_absent=skip_absent)
    return run_pair(prepared, workers=workers)


def prepare_pair(high: Tuple[PathLike, PathLike], low: Tuple[PathLike, PathLike], out_dir: PathLike, *,
                 dtype: str = "same", strengths: Tuple[float, float] = (1.0, 1.0), assume_experts: bool = False,
                 ignore_expert_evidence: bool = False, alpha_if_missing: AlphaIfMissing = None, force: bool = False,
                 skip_absent: bool = False) -> PreparedPair:
    """Every check of :func:`merge_pair` (experts, LoRAs, outputs, free disk for both), and both
    plans; nothing is written and ``out_dir`` is not created (``merge-pair --dry-run`` stops here).

    Args: as :func:`merge_pair`.

    Raises:
        UserError: as :func:`merge_pair`, before anything is written.
    """
    problems: List[str] = []
    evidence: Dict[str, str] = {}
    prepared = {}
    for expert, (base, lora), strength in zip(EXPERTS, (high, low), strengths):
        info = read_base(base)  # the one read of this base's header: checked here, planned from below
        ident = info.identity
        lora_found = lora_expert(read_lora_index(lora, finite=False))  # prepare_merge checks the weights
        for role, path, (found, how) in (("base", Path(base), (ident.expert, ident.expert_evidence)),
                                          ("LoRA", Path(lora), lora_found)):
            problem, evidence[f"{expert} {role}"] = _check(role, path, expert, found, how, assume=assume_experts,
                                                          ignore_evidence=ignore_expert_evidence)
            if problem:
                problems.append(problem)
        if not problems:
            label = ident.dtype if dtype == "same" else dtype
            out = Path(out_dir) / output_name(ident.task, expert, Path(lora), label, ident.variant)
            prepared[expert] = prepare_merge(info, [(lora, strength)], out, dtype=dtype, alpha_if_missing=alpha_if_missing,
                                             force=force, expert=expert, skip_absent=skip_absent,
                                             ignore_expert_evidence=True,  # checked above, with the pair's own rules
                                             strength_flags=[f"--strength-{expert}"])
    if problems:
        raise UserError("; ".join(problems), fix="pass the high-noise expert and its LoRA (circle_rotate_h) with --high and "
                        "the low-noise ones with --low; --assume-experts trusts the order for unnamed files, "
                        "--ignore-expert-evidence overrides a misleading name")
    short = short_disks([(Path(out_dir), prepared[e].plan.output_bytes) for e in EXPERTS])
    if short:  # both before either: a full disk found by the second would leave the first alone, 14-28 GB
        folder, need, free = short[0]
        raise UserError(f"the two merged experts need {need / 1e9:.1f} GB and {folder} has {free / 1e9:.1f} GB free",
                        path=Path(out_dir), fix="free space there, choose another -o folder, or a smaller --dtype "
                                               "(fp8_scaled halves fp16)")
    return PreparedPair(prepared["high"], prepared["low"], evidence, Path(out_dir))


def run_pair(pair: PreparedPair, *, workers: Optional[int] = None) -> PairReport:
    """Write both merged experts of ``pair`` (high first); on any error or Ctrl-C neither is kept."""
    prepared = {"high": pair.high, "low": pair.low}
    evidence = pair.evidence
    reports = {}
    try:
        for expert in EXPERTS:
            reports[expert] = run_merge(prepared[expert], workers=workers)
    except BaseException:
        # the pair is the output: a high-noise expert without its low-noise one is a stray 14-28 GB
        # file that the rerun would refuse to replace
        for expert in reports:
            Path(reports[expert].out).unlink(missing_ok=True)
        raise
    return PairReport(reports["high"], reports["low"], evidence)
