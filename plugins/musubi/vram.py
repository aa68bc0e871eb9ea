"""A rough VRAM estimate for LoRA training of one Wan2.2 expert with musubi-tuner.

Pure arithmetic on the model shapes (:mod:`circle_rotate.kernel.wan_arch`) and the longest
training sample, no GPU needed. It is an estimate to choose settings by (expect +-30%;
it has not been calibrated against a measured run here), built from:

- frozen DiT weights: block Linear weights in 1 byte with ``--fp8_base``, else 2; the rest
  2 bytes; ``--blocks_to_swap N`` keeps N blocks in CPU RAM (plus one block in flight);
- the LoRA: fp32 weights and gradients plus optimizer state (AdamW 8 bytes per parameter,
  AdamW8bit 2);
- activations, per token and block: about 44 x dim + 4 x ffn_dim bytes kept for backward
  (the LoRA inputs, q/k/v and attention outputs, fp32 norm inputs, the FFN hidden state);
  ``--gradient_checkpointing`` keeps only each block's fp32 input (4 x dim bytes per token)
  plus one block's activations while it is recomputed, ``--gradient_checkpointing_cpu_offload``
  moves those block inputs to CPU RAM too;
- 1.5 GB for the CUDA context and allocator slack.

Tokens per sample = latent frames x (height / 16) x (width / 16) (VAE stride 8, patch 2).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, Optional, Sequence, Tuple

from circle_rotate.kernel.wan_arch import WanDiTConfig, block_shapes, dit_shapes, lora_target_modules

GB = 2**30
OVERHEAD_BYTES = int(1.5 * GB)
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adamw8bit": 2, "adafactor": 4}
BUDGETS_GB = (24, 48, 80)


@dataclass(frozen=True)
class VramSettings:
    """The memory knobs (all of them are recipe variables; none changes the maths)."""

    fp8_base: bool = True
    gradient_checkpointing: bool = False
    cpu_offload: bool = False
    blocks_to_swap: int = 0

    def recipe_vars(self) -> Dict[str, str]:
        """These settings as recipe variables (``fp8_base`` is a published flag, not a knob)."""
        return {"GRADIENT_CHECKPOINTING": str(int(self.gradient_checkpointing)),
                "GRADIENT_CHECKPOINTING_CPU_OFFLOAD": str(int(self.cpu_offload)),
                "BLOCKS_TO_SWAP": str(self.blocks_to_swap)}

    def describe(self) -> str:
        parts = ["fp8_base" if self.fp8_base else "fp16 base"]
        if self.gradient_checkpointing:
            parts.append("gradient checkpointing" + (" + CPU offload" if self.cpu_offload else ""))
        if self.blocks_to_swap:
            parts.append(f"{self.blocks_to_swap} blocks swapped")
        return ", ".join(parts)


@dataclass(frozen=True)
class VramEstimate:
    settings: VramSettings
    parts: Tuple[Tuple[str, int], ...]

    @property
    def total_bytes(self) -> int:
        return sum(v for _, v in self.parts)

    @property
    def total_gb(self) -> float:
        return self.total_bytes / GB


def tokens_per_sample(frames: int, height: int, width: int) -> int:
    """DiT tokens of one clip: latent frames x (h/16) x (w/16)."""
    return (1 + (frames - 1) // 4) * (height // 16) * (width // 16)


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def lora_parameters(cfg: WanDiTConfig, rank: int) -> int:
    """Trainable parameters of a rank-``rank`` musubi LoRA on every target module."""
    shapes = dit_shapes(cfg)
    return sum(rank * sum(shapes[f"{m}.weight"]) for m in lora_target_modules(cfg))


def block_weight_bytes(cfg: WanDiTConfig, *, fp8_base: bool = True) -> int:
    """Bytes of one DiT block's frozen weights: its Linear weights in 1 byte with ``--fp8_base``
    (else 2), the rest in 2. What ``--blocks_to_swap`` keeps in host RAM per block."""
    block = block_shapes(cfg, 0)
    linear = sum(_numel(s) for k, s in block.items() if k.endswith(".weight") and len(s) == 2)
    rest = sum(_numel(s) for s in block.values()) - linear
    return linear * (1 if fp8_base else 2) + rest * 2


def estimate_vram(cfg: WanDiTConfig, *, tokens: int, batch: int = 1, settings: VramSettings = VramSettings(),
                  rank: int = 32, optimizer: str = "adamw8bit") -> VramEstimate:
    """Estimated peak VRAM of one training step (see the module docstring for the terms)."""
    block_bytes = block_weight_bytes(cfg, fp8_base=settings.fp8_base)
    total = sum(_numel(s) for s in dit_shapes(cfg).values())
    other = total - cfg.num_layers * sum(_numel(s) for s in block_shapes(cfg, 0).values())
    resident = cfg.num_layers - settings.blocks_to_swap + (1 if settings.blocks_to_swap else 0)
    per_token_block = 44 * cfg.dim + 4 * cfg.ffn_dim
    full_block = tokens * batch * per_token_block
    block_input = tokens * batch * cfg.dim * 4
    if not settings.gradient_checkpointing:
        activations = cfg.num_layers * full_block
    elif not settings.cpu_offload:
        activations = cfg.num_layers * block_input + full_block
    else:
        activations = 2 * block_input + full_block
    lora = lora_parameters(cfg, rank) * (8 + OPTIMIZER_STATE_BYTES.get(optimizer.lower(), 8))
    return VramEstimate(settings, (("DiT weights", resident * block_bytes + other * 2), ("LoRA + optimizer", lora),
                                   ("activations", activations), ("CUDA context", OVERHEAD_BYTES)))


def settings_ladder(cfg: WanDiTConfig, base: VramSettings) -> Tuple[VramSettings, ...]:
    """From least to most intrusive: as given, + checkpointing, + CPU offload, + 1..N-1 swapped blocks."""
    gc = replace(base, gradient_checkpointing=True)
    offload = replace(gc, cpu_offload=True)
    swaps = tuple(replace(offload, blocks_to_swap=n) for n in range(max(1, base.blocks_to_swap), cfg.num_layers))
    return (base, gc, offload, *swaps)


def fitting_settings(cfg: WanDiTConfig, budget_gb: float, *, tokens: int, batch: int = 1,
                     base: VramSettings = VramSettings(), rank: int = 32,
                     optimizer: str = "adamw8bit") -> Optional[VramEstimate]:
    """The least intrusive settings whose estimate fits ``budget_gb`` (90% of it, for fragmentation)."""
    for s in settings_ladder(cfg, base):
        est = estimate_vram(cfg, tokens=tokens, batch=batch, settings=s, rank=rank, optimizer=optimizer)
        if est.total_bytes <= 0.9 * budget_gb * GB:
            return est
    return None
