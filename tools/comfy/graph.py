"""A ComfyUI node graph and its two JSON forms: the API prompt (``/prompt``) and the UI workflow.

The node interfaces below are ComfyUI 0.3.64's, read from its source (``nodes.py``,
``comfy_extras/nodes_wan.py``, ``nodes_model_advanced.py``, ``nodes_video.py``; GPL-3.0, read,
not copied): each class's inputs in the order of its ``INPUT_TYPES`` (required, then optional),
each either a *socket* (a typed link from another node's output) or a *widget* (a value), and its
outputs. ``tests/data/comfy_nodes_0.3.64.json`` keeps the full definitions (types, choices,
ranges) the tests check every written workflow against.

The two forms differ in how values travel:

- API: ``{node_id: {"class_type", "inputs": {name: value or [node_id, output_index]}}}``.
- UI (what the browser opens by drag-and-drop): LiteGraph nodes whose ``inputs`` list only the
  sockets (a link id or null each), ``widgets_values`` the widget values in input order, and a
  ``links`` table ``[id, from_node, from_slot, to_node, to_slot, type]``. The frontend adds a
  value after a seed widget (what to do to it after each run: ``control_after_generate``) and
  after an image-upload combo (the upload button's ``"image"``), so ``widgets_values`` has them too.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

#: Socket input: a link, named by its type. Widget input: None.
Input = Tuple[str, Optional[str]]

#: class -> (inputs in INPUT_TYPES order as (name, socket type or None for a widget), outputs (name, type)).
NODES: Dict[str, Tuple[Tuple[Input, ...], Tuple[Tuple[str, str], ...]]] = {
    "UNETLoader": ((("unet_name", None), ("weight_dtype", None)), (("MODEL", "MODEL"),)),
    "LoraLoaderModelOnly": ((("model", "MODEL"), ("lora_name", None), ("strength_model", None)), (("MODEL", "MODEL"),)),
    "ModelSamplingSD3": ((("model", "MODEL"), ("shift", None)), (("MODEL", "MODEL"),)),
    "CLIPLoader": ((("clip_name", None), ("type", None), ("device", None)), (("CLIP", "CLIP"),)),
    "CLIPTextEncode": ((("text", None), ("clip", "CLIP")), (("CONDITIONING", "CONDITIONING"),)),
    "VAELoader": ((("vae_name", None),), (("VAE", "VAE"),)),
    "LoadImage": ((("image", None),), (("IMAGE", "IMAGE"), ("MASK", "MASK"))),
    "WanImageToVideo": ((("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("vae", "VAE"), ("width", None),
                         ("height", None), ("length", None), ("batch_size", None),
                         ("clip_vision_output", "CLIP_VISION_OUTPUT"), ("start_image", "IMAGE")),
                        (("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent", "LATENT"))),
    "WanFunInpaintToVideo": ((("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("vae", "VAE"), ("width", None),
                              ("height", None), ("length", None), ("batch_size", None),
                              ("clip_vision_output", "CLIP_VISION_OUTPUT"), ("start_image", "IMAGE"), ("end_image", "IMAGE")),
                             (("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent", "LATENT"))),
    "KSamplerAdvanced": ((("model", "MODEL"), ("add_noise", None), ("noise_seed", None), ("steps", None), ("cfg", None),
                          ("sampler_name", None), ("scheduler", None), ("positive", "CONDITIONING"),
                          ("negative", "CONDITIONING"), ("latent_image", "LATENT"), ("start_at_step", None),
                          ("end_at_step", None), ("return_with_leftover_noise", None)), (("LATENT", "LATENT"),)),
    "VAEDecode": ((("samples", "LATENT"), ("vae", "VAE")), (("IMAGE", "IMAGE"),)),
    "CreateVideo": ((("images", "IMAGE"), ("fps", None), ("audio", "AUDIO")), (("VIDEO", "VIDEO"),)),
    "SaveVideo": ((("video", "VIDEO"), ("filename_prefix", None), ("format", None), ("codec", None)), ()),
}
#: Widgets after which the frontend stores one more value of its own, and that value.
FRONTEND_EXTRA = {("KSamplerAdvanced", "noise_seed"): "fixed", ("LoadImage", "image"): "image"}

Value = Union[str, int, float, bool]


@dataclass(frozen=True)
class Link:
    """Output ``slot`` of node ``node``."""

    node: int
    slot: int = 0


@dataclass
class Node:
    id: int
    cls: str
    inputs: Dict[str, Union[Value, Link]]
    pos: Tuple[float, float] = (0.0, 0.0)
    title: Optional[str] = None


@dataclass
class Graph:
    nodes: List[Node] = field(default_factory=list)

    def add(self, cls: str, pos: Tuple[float, float] = (0.0, 0.0), title: Optional[str] = None,
            **inputs: Union[Value, Link]) -> Link:
        """Add a node (inputs by name; sockets take a :class:`Link`); returns a link to its first output."""
        if cls not in NODES:
            raise KeyError(f"no node definition for {cls!r}")
        names = {name for name, _ in NODES[cls][0]}
        unknown = set(inputs) - names
        if unknown:
            raise KeyError(f"{cls} has no input(s) {sorted(unknown)}")
        node = Node(len(self.nodes) + 1, cls, dict(inputs), pos, title)
        self.nodes.append(node)
        return Link(node.id)


def to_api(graph: Graph) -> Dict[str, dict]:
    """The ``/prompt`` form: ``{"prompt": <this>}`` is what ComfyUI's endpoint takes."""
    out: Dict[str, dict] = {}
    for node in graph.nodes:
        inputs = {name: ([str(v.node), v.slot] if isinstance(v, Link) else v) for name, v in node.inputs.items()}
        entry: dict = {"class_type": node.cls, "inputs": inputs}
        if node.title:
            entry["_meta"] = {"title": node.title}
        out[str(node.id)] = entry
    return out


def to_ui(graph: Graph) -> dict:
    """The drag-and-drop workflow (LiteGraph JSON, schema version 0.4)."""
    links: List[list] = []
    outputs: Dict[Tuple[int, int], List[int]] = {}
    ui_nodes = []
    for order, node in enumerate(graph.nodes):
        inputs, widgets = [], []
        for name, socket in NODES[node.cls][0]:
            value = node.inputs.get(name)
            if socket is None:
                if value is not None:
                    widgets.append(value)
                    extra = FRONTEND_EXTRA.get((node.cls, name))
                    if extra is not None:
                        widgets.append(extra)
                continue
            link_id = None
            if isinstance(value, Link):
                link_id = len(links) + 1
                src = graph.nodes[value.node - 1]
                links.append([link_id, value.node, value.slot, node.id, len(inputs), NODES[src.cls][1][value.slot][1]])
                outputs.setdefault((value.node, value.slot), []).append(link_id)
            inputs.append({"name": name, "type": socket, "link": link_id})
        entry = {"id": node.id, "type": node.cls, "pos": list(node.pos), "size": [320, 60 + 24 * (len(inputs) + len(widgets))],
                 "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": [],
                 "properties": {"Node name for S&R": node.cls}, "widgets_values": widgets}
        if node.title:
            entry["title"] = node.title
        ui_nodes.append(entry)
    for entry in ui_nodes:
        entry["outputs"] = [{"name": name, "type": kind, "slot_index": slot, "links": outputs.get((entry["id"], slot), [])}
                            for slot, (name, kind) in enumerate(NODES[entry["type"]][1])]
    return {"id": str(uuid.uuid4()), "revision": 0, "last_node_id": len(graph.nodes), "last_link_id": len(links),
            "nodes": ui_nodes, "links": links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 0.6, "offset": [0, 0]}}, "version": 0.4}
