"""Finding and importing musubi-tuner, on GPU machines and (for checks and the smoke run) on CPUs.

musubi-tuner 0.3.4 cannot be imported on a CPU-only torch as it is:

- ``wan/modules/t5.py`` evaluates ``torch.cuda.current_device()`` as a default argument at
  import time, which raises without CUDA;
- ``wan_train_network.py``, ``wan_generate_video.py`` and ``wan/utils/utils.py`` import
  torchvision at module level, only for sampling and CLIP code; the only torchvision wheel
  that resolves beside a CPU torch 2.13 is a CUDA build that fails to import.

:func:`prepare_cpu_import` works around both, and only when needed: with CUDA present and a
working torchvision it changes nothing.
"""

from __future__ import annotations

import contextlib

import importlib
import io
import importlib.machinery
import importlib.metadata
import importlib.util
import logging
import sys
import types
from typing import Optional, Tuple

from circle_rotate.kernel.errors import UserError

logger = logging.getLogger(__name__)

# circle-rotate is not on PyPI (a package with a git-URL requirement cannot be uploaded there), so
# its train extra is installed from the clone; pip install --no-deps leaves out musubi-tuner's own
# requirements (voluptuous, easydict, accelerate...), which the second route must install itself.
REQUIREMENTS_HINT = ("in the circle-rotate clone: pip install -r .ci/musubi-requirements.txt "
                     "(musubi-tuner's requirements, which pip install --no-deps leaves out)")
INSTALL_HINT = ('in the circle-rotate clone: pip install -e ".[train]" (musubi-tuner v0.3.4 from GitHub, with its '
                "requirements), or pip install --no-deps <musubi-tuner checkout> and then "
                "pip install -r .ci/musubi-requirements.txt")
SUPPORTED_VERSION = "0.3.4"
#: The musubi-tuner scripts the kit parses, checks and runs: importing them imports every module the
#: kit uses, so every requirement of musubi's that the kit needs (see :func:`musubi_import_problem`).
SCRIPTS = ("wan_train_network", "wan_cache_latents", "wan_cache_text_encoder_outputs", "wan_generate_video")

_prepared = False


def musubi_version() -> Optional[str]:
    """The installed musubi-tuner version, or None when it is not installed."""
    try:
        return importlib.metadata.version("musubi-tuner")
    except importlib.metadata.PackageNotFoundError:
        return None if importlib.util.find_spec("musubi_tuner") is None else "unknown"


def musubi_available() -> bool:
    return importlib.util.find_spec("musubi_tuner") is not None


def _stub_torchvision() -> None:
    try:
        import torchvision  # noqa: F401

        return
    except Exception as exc:  # a CUDA torchvision beside CPU torch raises RuntimeError, not ImportError
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        logger.debug("torchvision unusable (%s); registering an empty stand-in for musubi's imports", exc)

    def make(name: str) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)  # find_spec() callers need one
        mod.__dict__["__circle_rotate_stub__"] = True

        def missing(attr: str):
            raise AttributeError(f"{name}.{attr}: torchvision is not usable here (CPU stand-in for musubi-tuner imports)")

        mod.__getattr__ = missing  # type: ignore[attr-defined]
        sys.modules[name] = mod
        return mod

    root = make("torchvision")
    root.transforms = make("torchvision.transforms")
    root.transforms.functional = make("torchvision.transforms.functional")
    root.transforms.v2 = make("torchvision.transforms.v2")
    root.io = make("torchvision.io")
    root.utils = make("torchvision.utils")


def prepare_cpu_import() -> None:
    """Make ``import musubi_tuner.<wan modules>`` work on a CPU-only torch (idempotent)."""
    global _prepared
    if _prepared:
        return
    import torch

    if not torch.cuda.is_available():
        # Only a default argument at import time needs it; nothing on the CPU path uses the value.
        torch.cuda.current_device = lambda: 0  # type: ignore[assignment]
    _stub_torchvision()
    _prepared = True


def import_musubi(module: str) -> types.ModuleType:
    """Import ``musubi_tuner.<module>`` (e.g. ``"dataset.config_utils"``) or raise a UserError saying how to install it."""
    if not musubi_available():
        raise UserError(f"musubi-tuner is not installed (needed for musubi_tuner.{module})", fix=INSTALL_HINT)
    prepare_cpu_import()
    try:
        # musubi's modules print on import ("Trying to import sageattention", "Failed to import ..."):
        # an optional attention backend's probe, nothing a user acts on; kept off a command's stdout
        # (--json) and its one-line stderr
        with contextlib.redirect_stdout(io.StringIO()):
            return importlib.import_module(f"musubi_tuner.{module}")
    except ImportError as exc:
        # find_spec() above only sees the musubi_tuner package: installed with pip install --no-deps,
        # its own requirements are missing and the import fails inside musubi, a traceback otherwise
        raise import_error(exc, f"musubi_tuner.{module}") from None


def import_error(exc: ImportError, needed_for: str) -> UserError:
    """The one-line error for an import of musubi-tuner (or of one of its requirements, such as
    accelerate) that failed with ``exc``; ``needed_for`` names what was being imported."""
    missing = (exc.name or "").split(".")[0]
    if isinstance(exc, ModuleNotFoundError) and missing == "musubi_tuner":
        return UserError(f"musubi-tuner {musubi_version()} has no module {exc.name} (needed for {needed_for}; "
                         f"circle-rotate is built for musubi-tuner {SUPPORTED_VERSION})", fix=INSTALL_HINT)
    if isinstance(exc, ModuleNotFoundError) and missing:
        return UserError(f"musubi-tuner's requirement '{missing}' is not installed ({needed_for} imports it)",
                         fix=REQUIREMENTS_HINT)
    return UserError(f"{needed_for} fails to import: {' '.join(str(exc).split()) or type(exc).__name__}",
                     fix=REQUIREMENTS_HINT)


def musubi_import_problem(scripts: Tuple[str, ...] = SCRIPTS) -> Optional[str]:
    """Why musubi-tuner's ``scripts`` cannot be imported here (one line, with the fix), or None when
    they can or musubi-tuner is not installed at all (see :func:`musubi_version`).

    The package alone being there says nothing about its requirements: ``pip install --no-deps``
    installs musubi-tuner without voluptuous, easydict or accelerate, and only a real import tells.
    """
    if not musubi_available():
        return None
    try:
        for script in scripts:
            import_musubi(script)
    except UserError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - any failure on import is what this reports
        return f"musubi-tuner fails to import: {' '.join(str(exc).split()) or type(exc).__name__}"
    return None


def require_cuda(what: str) -> None:
    """Refuse to start musubi-tuner's ``what`` on a machine without CUDA: its T5 and Wan modules
    assert CUDA at import, so it would die in a traceback (the CPU chain is ``circle-rotate smoke``).

    Raises:
        UserError: no CUDA device here.
    """
    import torch

    if not torch.cuda.is_available():
        raise UserError(f"no CUDA GPU here, and musubi-tuner's {what} needs one", fix="run it on a GPU machine (here: "
                        "--dry-run checks everything; `circle-rotate smoke` runs the whole chain on tiny models)")
