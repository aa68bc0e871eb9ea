"""Every workflow `circle-rotate workflow` writes validates against ComfyUI 0.3.64's node definitions.

The definitions are test data (``tests/data/comfy_nodes_0.3.64.json``, dumped from ComfyUI's own
``INPUT_TYPES``/``RETURN_TYPES``). Checked for both JSON forms: every class exists, every required
input is present with a value of the right type inside its range or choices, every link joins an
output to an input of the same type, and the switch step is the README's formula.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from circle_rotate.cli.main import main
from circle_rotate.tools.comfy.graph import FRONTEND_EXTRA, NODES
from circle_rotate.tools.comfy.workflow import SAMPLERS, SCHEDULERS, switch_step

DEFS = json.loads((Path(__file__).parent / "data" / "comfy_nodes_0.3.64.json").read_text())["classes"]
SOCKETS = {"MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE", "MASK", "CLIP_VISION_OUTPUT", "VIDEO", "AUDIO"}


def check_value(cls: str, name: str, spec: dict, value) -> None:
    where = f"{cls}.{name}={value!r}"
    kind = spec["type"]
    if kind == "COMBO":
        if "files" in spec:
            assert isinstance(value, str) and value, where
            if spec["files"] != "input":
                assert value.endswith(".safetensors"), where
        else:
            assert value in spec["choices"], where
        return
    if kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), where
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), where
    elif kind == "STRING":
        assert isinstance(value, str), where
        return
    else:
        raise AssertionError(f"{where}: {kind} is a socket, not a value")
    assert spec.get("min", -math.inf) <= value <= spec.get("max", math.inf), where
    if kind == "INT" and name in ("width", "height", "length") and "step" in spec:
        assert (value - (1 if name == "length" else 0)) % spec["step"] == 0, where


def validate_api(api: dict) -> None:
    for nid, node in api.items():
        cls = node["class_type"]
        assert cls in DEFS, cls
        d = DEFS[cls]
        allowed = {**d["required"], **d["optional"]}
        assert set(node["inputs"]) <= set(allowed), (cls, set(node["inputs"]) - set(allowed))
        for name, spec in d["required"].items():
            assert name in node["inputs"], f"{cls} (node {nid}) lacks required input {name}"
        for name, value in node["inputs"].items():
            spec = allowed[name]
            if spec["type"] in SOCKETS:
                assert isinstance(value, list) and len(value) == 2, (cls, name, value)
                src = api[value[0]]
                assert DEFS[src["class_type"]]["outputs"][value[1]]["type"] == spec["type"], (cls, name, src["class_type"])
            else:
                check_value(cls, name, spec, value)


def validate_ui(ui: dict) -> None:
    nodes = {n["id"]: n for n in ui["nodes"]}
    for n in ui["nodes"]:
        d = DEFS[n["type"]]
        ordered = list(d["required"].items()) + list(d["optional"].items())
        sockets = [(k, s) for k, s in ordered if s["type"] in SOCKETS]
        widgets = [(k, s) for k, s in ordered if s["type"] not in SOCKETS]
        assert [(i["name"], i["type"]) for i in n["inputs"]] == [(k, s["type"]) for k, s in sockets], n["type"]
        for i in n["inputs"]:
            if i["name"] in d["required"]:
                assert i["link"] is not None, f"{n['type']} socket {i['name']} not linked"
        values = list(n["widgets_values"])
        for name, spec in widgets:  # in ComfyUI's order, with the frontend's own extra values
            if not values and name in d["optional"]:
                break
            check_value(n["type"], name, spec, values.pop(0))
            if spec.get("control_after_generate"):
                assert values.pop(0) in ("fixed", "increment", "decrement", "randomize"), n["type"]
            if spec.get("image_upload"):
                assert values.pop(0) == "image"
        assert not values, (n["type"], values)
        assert [(o["name"], o["type"]) for o in n["outputs"]] == [(o["name"], o["type"]) for o in d["outputs"]], n["type"]
    for link_id, src, src_slot, dst, dst_slot, kind in ui["links"]:
        out, inp = nodes[src]["outputs"][src_slot], nodes[dst]["inputs"][dst_slot]
        assert out["type"] == inp["type"] == kind, (link_id, out, inp)
        assert link_id in out["links"] and inp["link"] == link_id
    assert ui["last_link_id"] == len(ui["links"]) and ui["last_node_id"] == max(nodes)


def samplers(api: dict):
    ks = sorted((n for n in api.values() if n["class_type"] == "KSamplerAdvanced"), key=lambda n: n["inputs"]["start_at_step"])
    return ks[0]["inputs"], ks[1]["inputs"]


def readme_switch(steps: int, shift: float) -> int:
    """README section 3: the first step whose sigma is below 0.9, sigma(t) = s t / (1 + (s - 1) t), t = 1 - i / n."""
    return next(i for i in range(steps + 1) if i == steps or shift * (1 - i / steps) / (1 + (shift - 1) * (1 - i / steps)) < 0.9)


def test_our_node_tables_match_comfyuis_definitions():
    for cls, (inputs, outputs) in NODES.items():
        d = DEFS[cls]
        ordered = list(d["required"].items()) + list(d["optional"].items())
        assert [name for name, _ in inputs] == [k for k, _ in ordered], cls
        assert [sock for _, sock in inputs] == [s["type"] if s["type"] in SOCKETS else None for _, s in ordered], cls
        assert list(outputs) == [(o["name"], o["type"]) for o in d["outputs"]], cls
    for (cls, name), _ in FRONTEND_EXTRA.items():
        spec = DEFS[cls]["required"][name]
        assert spec.get("control_after_generate") or spec.get("image_upload")
    assert list(SAMPLERS) == DEFS["KSamplerAdvanced"]["required"]["sampler_name"]["choices"]
    assert list(SCHEDULERS) == DEFS["KSamplerAdvanced"]["required"]["scheduler"]["choices"]


@pytest.mark.parametrize("steps,shift", [(4, 8.0), (20, 8.0), (20, 5.0), (30, 3.0), (8, 1.0), (40, 12.0), (6, 17.0)])
def test_switch_step_is_the_readme_formula(steps, shift):
    assert switch_step(steps, shift) == readme_switch(steps, shift)
    assert switch_step(4, 8.0) == 2 and switch_step(20, 8.0) == 10  # the study's 4-step workflow; README's example


CASES = {
    "lora_i2v": ["--high-lora", "circle_rotate_h.safetensors", "--low-lora", "circle_rotate_l.safetensors", "--strength-high", "0.8"],
    "merged_i2v": [],
    "lora_fun_lightx2v": ["--variant", "fun-inp", "--lightx2v", "--cfg", "1.6", "--end-image", "end.png",
                          "--high-lora", "h.safetensors", "--low-lora", "l.safetensors", "--width", "720", "--height", "1280"],
    "merged_fun_custom": ["--variant", "fun-inp", "--steps", "30", "--shift", "5", "--sampler", "uni_pc", "--scheduler", "beta",
                          "--frames", "49", "--seed", "18446744073709551615"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_written_workflows_validate_against_comfyui(tmp_path, case, capsys):
    out = tmp_path / f"{case}.json"
    args = ["workflow", "--high", "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
            "--low", "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors", "--out", str(out), "--json", *CASES[case]]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    ui, api = json.loads(out.read_text()), json.loads((tmp_path / f"{case}_api.json").read_text())
    validate_api(api)
    validate_ui(ui)
    high, low = samplers(api)
    steps = high["steps"]
    assert high["end_at_step"] == low["start_at_step"] == readme_switch(steps, report["shift"]) == report["switch_step"]
    assert low["end_at_step"] == steps and high["add_noise"] == "enable" and low["add_noise"] == "disable"
    assert high["return_with_leftover_noise"] == "enable" and low["return_with_leftover_noise"] == "disable"
    classes = [n["class_type"] for n in api.values()]
    assert ("WanFunInpaintToVideo" in classes) == ("fun" in case) and ("WanImageToVideo" in classes) != ("fun" in case)
    loras = [n["inputs"]["lora_name"] for n in api.values() if n["class_type"] == "LoraLoaderModelOnly"]
    assert len(loras) == (2 if case.startswith("lora") else 0) + (2 if "lightx2v" in case else 0)
    if "lightx2v" in case:  # the study's: 4 steps, switch at 2, distillation LoRA before the orbit LoRA
        assert steps == 4 and high["end_at_step"] == 2 and high["cfg"] == 1.6
        assert loras[0].startswith("wan2.2_i2v_lightx2v_4steps") and loras[1] == "h.safetensors"


def test_bad_values_are_refused_before_writing(tmp_path, capsys):
    out = tmp_path / "w.json"
    assert main(["workflow", "--high", "h.safetensors", "--low", "l.safetensors", "--frames", "80", "--width", "830",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "frames 80" in err and "width 830" in err and not out.exists()
    assert main(["workflow", "--high", "h.safetensors", "--low", "l.safetensors", "--end-image", "e.png", "--out", str(out)]) == 2
    assert "Fun-InP" in capsys.readouterr().err and not out.exists()
    assert main(["workflow", "--high", "h.safetensors", "--low", "l.safetensors", "--high-lora", "a.safetensors",
                 "--out", str(out)]) == 2
    assert not out.exists()


def test_swapped_experts_or_loras_and_paths_are_refused_before_writing(tmp_path, capsys):
    out = tmp_path / "w.json"
    high, low = "wan2.2_i2v_high_noise_14B_fp16.safetensors", "wan2.2_i2v_low_noise_14B_fp16.safetensors"
    assert main(["workflow", "--high", low, "--low", high, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"the high-noise expert {low} is named for the low-noise one (swapped?)" in err and not out.exists()
    assert main(["workflow", "--high", high, "--low", low, "--high-lora", "circle_rotate_l.safetensors",
                 "--low-lora", "circle_rotate_h.safetensors", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the high-noise LoRA circle_rotate_l.safetensors is named for the low-noise one" in err
    assert "the low-noise LoRA circle_rotate_h.safetensors is named for the high-noise one" in err
    assert main(["workflow", "--high", f"/srv/ComfyUI/models/diffusion_models/{high}", "--low", low,
                 "--out", str(out)]) == 2
    assert f"is a path: ComfyUI names a file by where it lies inside models/diffusion_models (e.g. {high})" \
        in capsys.readouterr().err and not out.exists()
    assert main(["-q", "workflow", "--high", f"wan/{high}", "--low", f"wan/{low}", "--out", str(out)]) == 0  # a subfolder


def test_a_strength_without_its_lora_is_refused_not_dropped(tmp_path, capsys):
    out = tmp_path / "w.json"
    assert main(["workflow", "--high", "h.safetensors", "--low", "l.safetensors", "--strength-high", "0.8",
                 "--out", str(out)]) == 2
    assert "no LoRA is given" in capsys.readouterr().err and not out.exists()
