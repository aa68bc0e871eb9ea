"""Random models for running musubi-tuner's real Wan scripts on a CPU (the smoke run, tests).

Everything here is built with musubi's own model classes, so the files have exactly the
keys and shapes musubi's loaders expect:

- the DiT experts: :func:`circle_rotate.selfcheck.synthetic.tiny_wan.write_tiny_wan` with
  :data:`circle_rotate.selfcheck.tiny_task.TINY_DIT` in fp32 (on a CPU musubi fails with a bf16 DiT:
  its time embedding asks for an fp32 autocast region that CPU autocast does not support);
- the VAE: musubi's real Wan2.1 VAE architecture (``wan/modules/vae.py``, ~127M parameters,
  254 MB as bf16), randomly initialised: the VAE's shapes are fixed by the latent layout
  the DiT expects, so it cannot be shrunk;
- the T5: musubi's ``umt5_xxl`` encoder with :data:`circle_rotate.selfcheck.tiny_task.TINY_T5`;
- the tokenizer: a character-level ``T5TokenizerFast`` built offline, saved where musubi's
  ``T5EncoderModel`` looks for it (``Wan-AI/Wan2.1-T2V-14B/google/umt5-xxl`` under the
  working directory, found with ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass
from pathlib import Path

import torch

from circle_rotate.kernel.atomic import atomic_path
from circle_rotate.musubi.preflight import vae_shapes
from circle_rotate.selfcheck.synthetic.tiny_wan import write_tiny_wan
from circle_rotate.selfcheck.tiny_task import TINY_DIT, TINY_T5, build_tiny_t5

logger = logging.getLogger(__name__)

#: Where musubi's T5EncoderModel asks transformers for the tokenizer (relative to the cwd).
TOKENIZER_REPO = "Wan-AI/Wan2.1-T2V-14B"
TOKENIZER_SUBFOLDER = "google/umt5-xxl"
_SPECIALS = ("<pad>", "</s>", "<unk>")
_CHARS = string.ascii_lowercase + string.digits + " .,;:!?'\"()-_>/&+"


@dataclass(frozen=True)
class TinyModels:
    """Paths of a complete tiny model set."""

    dit_low: Path
    dit_high: Path
    vae: Path
    t5: Path
    tokenizer_root: Path  # the directory to run musubi in (holds Wan-AI/Wan2.1-T2V-14B/...)


def _init_like_torch(name: str, param: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    if name.endswith("gamma"):
        return torch.ones(param.shape)
    if name.endswith("bias"):
        return torch.zeros(param.shape)
    fan_in = param[0].numel() if param.dim() > 1 else param.numel()
    return torch.randn(param.shape, generator=gen) / fan_in ** 0.5


def write_tiny_vae(path: Path, *, seed: int = 0) -> Path:
    """musubi's real Wan2.1 VAE architecture with random weights, as bf16 safetensors."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    tensors = {k: _init_like_torch(k, torch.empty(s), gen).to(torch.bfloat16) for k, s in vae_shapes().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    return path


def write_tiny_t5(path: Path, *, seed: int = 0) -> Path:
    """musubi's umt5-xxl encoder class in the :data:`TINY_T5` shape, as bf16 safetensors."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = build_tiny_t5()
    tensors = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    return path


def write_tiny_tokenizer(root: Path) -> Path:
    """A character-level T5TokenizerFast at ``root/Wan-AI/Wan2.1-T2V-14B/google/umt5-xxl``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    vocab = {tok: i for i, tok in enumerate((*_SPECIALS, *_CHARS))}
    if len(vocab) > TINY_T5["vocab_size"]:
        raise ValueError(f"tokenizer vocabulary ({len(vocab)}) larger than the tiny T5's ({TINY_T5['vocab_size']})")
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    fast = T5TokenizerFast(tokenizer_object=tok, extra_ids=0, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    out = root / TOKENIZER_REPO / TOKENIZER_SUBFOLDER
    fast.save_pretrained(str(out))
    return out


def write_tiny_models(directory: Path, *, seed: int = 0) -> TinyModels:
    """Write (or reuse, when already complete) a tiny DiT pair, VAE, T5 and tokenizer.

    Args:
        directory: where the files go; it is also the working directory musubi must run in.
        seed: values are a function of the seed (the two experts use ``seed+1``/``seed+2``).

    Returns:
        The paths.
    """
    directory.mkdir(parents=True, exist_ok=True)
    models = TinyModels(
        dit_low=directory / "tiny_wan2.2_i2v_low_noise_fp32.safetensors",
        dit_high=directory / "tiny_wan2.2_i2v_high_noise_fp32.safetensors",
        vae=directory / "tiny_wan2.1_vae_random_bf16.safetensors",
        t5=directory / "tiny_umt5_encoder_random_bf16.safetensors",
        tokenizer_root=directory,
    )
    for path, expert, offset in ((models.dit_low, "low", 2), (models.dit_high, "high", 1)):
        if not path.exists():
            write_tiny_wan(path, config=TINY_DIT, dtype="fp32", seed=seed + offset, expert=expert)
    if not models.vae.exists():
        logger.info("writing a random real-architecture Wan VAE (254 MB) to %s", models.vae)
        write_tiny_vae(models.vae, seed=seed)
    if not models.t5.exists():
        write_tiny_t5(models.t5, seed=seed)
    if not (directory / TOKENIZER_REPO / TOKENIZER_SUBFOLDER / "tokenizer.json").exists():
        write_tiny_tokenizer(directory)
    return models
