"""circle-rotate: train, merge and evaluate camera-orbit LoRAs for Wan2.2 I2V-A14B.

The import namespace maps onto the project folders: ``circle_rotate`` is ``plugins/``
(the core and the musubi-tuner helpers), ``circle_rotate.tools`` is ``tools/`` (merge,
convert, inspect) and ``circle_rotate.eval`` is ``eval/`` (metrics and reports).
"""

__version__ = "0.1.0"

from circle_rotate.kernel.errors import UserError  # noqa: E402

__all__ = ["UserError", "__version__"]
