"""A randomly initialised YOLOv8n (ultralytics builds it from its yaml; no weights are fetched),
for ``sam_reference.py`` where ultralytics is importable.

ultralytics needs torchvision only for NMS here; under :func:`tiny_sam.torchvision_shim` its
``ops.nms`` is ultralytics' own ``TorchNMS.nms``. Random weights score every class alike, so
the class biases are set to make person the class it finds at a confidence just above 0.25:
the reference's "largest box above 0.2" rule then chooses among 300 real detections.
"""

from __future__ import annotations


def random_yolov8n(seed: int = 0):
    import sys

    import torch
    from ultralytics import YOLO
    from ultralytics.utils.nms import TorchNMS

    sys.modules["torchvision"].ops.nms = lambda boxes, scores, iou: TorchNMS.nms(boxes, scores, iou)
    torch.manual_seed(seed)
    model = YOLO("yolov8n.yaml")
    with torch.no_grad():
        for branch in model.model.model[-1].cv3:  # the Detect head's class convolutions
            bias = torch.full(branch[-1].bias.shape, -6.0)
            bias[0] = -1.0
            branch[-1].bias.copy_(bias)
    return model
