"""Every workflow `circle-rotate workflow` writes validates against ComfyUI 0.3.64's node definitions.

The definitions are test data (``tests/data/comfy_nodes_0.3.64.json``, dumped from ComfyUI's own
``INPUT_TYPES``/``RETURN_TYPES``). Checked for both JSON forms: every class exists, every required
input is present with a value of the right type inside its range or choices, every link joins an
output to an input of the same type, and the switch step is where ComfyUI's own KSampler puts the
first sigma below 0.9 (``tests/data/comfy_switch_steps_0.3.64.json``, see ``test_comfy_sigmas.py``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from circle_rotate.cli.main import main
from circle_rotate.tools.comfy.graph import FRONTEND_EXTRA, NODES
from circle_rotate.kernel.errors import UserError
from circle_rotate.tools.comfy.graph import to_api
from circle_rotate.tools.comfy.workflow import SAMPLERS, SCHEDULERS, ExpertChain, WorkflowSpec, build_graph

DEFS = json.loads((Path(__file__).parent / "data" / "comfy_nodes_0.3.64.json").read_text())["classes"]
#: [scheduler, sampler, steps, shift, first index below sigma 0.9, ...] from ComfyUI 0.3.64's KSampler
SWITCH_REF = json.loads((Path(__file__).parent / "data" / "comfy_switch_steps_0.3.64.json").read_text())
COMFY_SWITCH = {(r[0], r[1], r[2], r[3]): r[4] for r in SWITCH_REF["grid"] + SWITCH_REF["held_out"]}
HIGH, LOW = "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors", "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors"
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


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_the_written_switch_step_is_where_comfyuis_sigmas_fall_below_0_9(scheduler):
    """Both KSamplerAdvanced hand over at ComfyUI's own first sigma below 0.9, for every scheduler and sampler
    of the reference (grid and held-out cases); a schedule that starts below 0.9 is refused."""
    rows = [(k, first) for k, first in COMFY_SWITCH.items() if k[0] == scheduler]
    assert len(rows) >= 100
    for (_, sampler, steps, shift), first in rows:
        spec = WorkflowSpec(ExpertChain(HIGH), ExpertChain(LOW), steps=steps, shift=shift, sampler=sampler,
                            scheduler=scheduler)
        if first == 0:  # ddim_uniform with few steps or a small shift: the high-noise expert would get nothing
            with pytest.raises(UserError, match="starts at sigma 0.[0-8].*high-noise expert would take no step"):
                spec.check()
            continue
        high, low = samplers(to_api(build_graph(spec)))
        assert high["end_at_step"] == low["start_at_step"] == min(steps, first), (sampler, steps, shift)
        assert (high["sampler_name"], high["scheduler"]) == (sampler, scheduler)


def test_the_readmes_simple_schedule_examples():
    """README section 3: step 10 of 20 and step 2 of 4 at shift 8 (simple, euler)."""
    for steps, switch in ((20, 10), (4, 2)):
        assert COMFY_SWITCH["simple", "euler", steps, 8.0] == switch
        assert WorkflowSpec(ExpertChain(HIGH), ExpertChain(LOW), steps=steps).switch == switch


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
    key = (high["scheduler"], high["sampler_name"], steps, report["shift"])
    assert high["end_at_step"] == low["start_at_step"] == COMFY_SWITCH[key] == report["switch_step"]
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


def test_values_past_comfyuis_maxima_are_refused(tmp_path, capsys):
    """KSamplerAdvanced takes at most 10000 steps, WanImageToVideo at most 16384 frames (16381 as 4n+1)."""
    out = tmp_path / "w.json"
    base = ["workflow", "--high", HIGH, "--low", LOW, "--out", str(out)]
    assert main(base + ["--steps", "10001", "--frames", "16385"]) == 2
    err = capsys.readouterr().err
    assert "steps 10001 (2 to 10000" in err and "frames 16385 (4n+1 from 1 to 16381" in err and not out.exists()
    assert main(["-q"] + base + ["--steps", "10000", "--frames", "16381"]) == 0
    high, low = samplers(json.loads((tmp_path / "w_api.json").read_text()))
    assert high["steps"] == low["end_at_step"] == 10000


def test_model_names_comfyui_does_not_list_are_refused(tmp_path, capsys):
    """ComfyUI lists only its model extensions (folder_paths.supported_pt_extensions, any case) in each folder;
    a .gguf model is ComfyUI-GGUF's, whose own loader nodes are named."""
    out = tmp_path / "w.json"
    assert main(["workflow", "--high", "wan2.2_i2v_high_noise_14B_Q8_0.gguf", "--low", LOW, "--high-lora", "a",
                 "--low-lora", "b.pt", "--vae", "wan_2.1_vae", "--text-encoder", "umt5_xxl_q8.gguf", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert ("the high-noise expert wan2.2_i2v_high_noise_14B_Q8_0.gguf is a GGUF file, which ComfyUI's own loaders do "
            "not list (give the .safetensors expert's name here and, in ComfyUI, swap its loader for ComfyUI-GGUF's "
            "Unet Loader (GGUF) (UnetLoaderGGUF) with this file)") in err
    assert "the text encoder umt5_xxl_q8.gguf is a GGUF file" in err and "CLIPLoaderGGUF" in err
    assert "the high-noise LoRA a: ComfyUI lists only .safetensors, .sft, .ckpt" in err and "models/loras" in err
    assert "the VAE wan_2.1_vae: ComfyUI lists only" in err and "b.pt" not in err and not out.exists()
    assert main(["-q", "workflow", "--high", HIGH.upper(), "--low", LOW, "--high-lora", "a.ckpt", "--low-lora", "b.pt",
                 "--vae", "wan.pth", "--text-encoder", "umt5.sft", "--out", str(out)]) == 0


def test_a_lora_given_to_the_expert_it_is_merged_into_is_refused(tmp_path, capsys, monkeypatch):
    """merge-pair's outputs hold their LoRA: applied again it counts twice. The expert's own record decides
    where the file is at hand (the name taken from the working folder), else merge-pair's name for it."""
    from safetensors.torch import save_file
    import torch

    out = tmp_path / "w.json"
    merged = {e: f"wan2.2_i2v_{e}_noise_circle_rotate_{e[0]}_fp8_scaled.safetensors" for e in ("high", "low")}
    loras = ["--high-lora", "circle_rotate_h.safetensors", "--low-lora", "circle_rotate_l.safetensors"]
    monkeypatch.chdir(tmp_path)
    assert main(["workflow", "--high", merged["high"], "--low", merged["low"], *loras, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert (f"the high-noise LoRA circle_rotate_h.safetensors is already merged into {merged['high']} (by its name, "
            "as merge-pair names the experts it merges): applied again it would count twice") in err
    assert "the low-noise LoRA circle_rotate_l.safetensors is already merged" in err and not out.exists()
    assert "fix: leave the LoRAs out for merged experts" in err and "--strength-high/--strength-low 2" in err
    assert main(["-q", "workflow", "--high", merged["high"], "--low", merged["low"], "--out", str(out)]) == 0
    out.unlink()
    (tmp_path / "w_api.json").unlink()

    # here, the files decide: a renamed merge is found by its record, and a name that only looks merged is not
    record = json.dumps([{"file": "circle_rotate_h.safetensors", "bytes": 1, "strength": 0.8, "dtype": "fp8_scaled"}])
    save_file({"x": torch.zeros(1)}, str(tmp_path / "my_high_noise.safetensors"),
              metadata={"circle_rotate.merged_loras": record})
    save_file({"x": torch.zeros(1)}, str(tmp_path / merged["low"]), metadata={})
    assert main(["workflow", "--high", "my_high_noise.safetensors", "--low", merged["low"], *loras, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert ("the high-noise LoRA circle_rotate_h.safetensors is already merged into my_high_noise.safetensors (its "
            "metadata lists it at net strength 0.8)") in err and "low-noise LoRA" not in err and not out.exists()
    assert main(["-q", "workflow", "--high", HIGH, "--low", merged["low"], *loras, "--out", str(out)]) == 0
    out.unlink()
    (tmp_path / "w_api.json").unlink()

    # merged and taken out again at the opposite strength (merge's undo): the expert no longer holds it
    undone = json.dumps([{"file": "circle_rotate_h.safetensors", "bytes": 1, "strength": s, "dtype": "fp8_scaled"}
                         for s in (0.8, -0.8)])
    save_file({"x": torch.zeros(1)}, str(tmp_path / "undone_high_noise.safetensors"),
              metadata={"circle_rotate.merged_loras": undone})
    assert main(["-q", "workflow", "--high", "undone_high_noise.safetensors", "--low", merged["low"], *loras,
                 "--out", str(out)]) == 0


@pytest.mark.parametrize("name,variant", [("Wan2.2-Fun-A14B-InP_{e}_noise.safetensors", "fun-inp"),
                                          ("wan2.2_fun_inpaint_{e}_noise_14B_fp8_scaled.safetensors", "fun-inp"),
                                          ("wan2.2_fun_input_{e}_noise.safetensors", "i2v")])
def test_fun_inp_is_told_from_the_names_as_merge_tells_it(tmp_path, capsys, name, variant):
    """One rule for a name (checkpoint_identity's): VideoX-Fun's Fun-A14B-InP is Fun-InP here as in merge-pair."""
    from circle_rotate.kernel.checkpoint_identity import variant_of

    high, low = (name.format(e=e) for e in ("high", "low"))
    assert variant_of({}, Path(high)) == variant
    out = tmp_path / "w.json"
    end = ["--end-image", "end.png"] if variant == "fun-inp" else []
    assert main(["workflow", "--high", high, "--low", low, "--out", str(out), "--json", *end]) == 0
    assert json.loads(capsys.readouterr().out)["variant"] == variant
    classes = {n["class_type"] for n in json.loads((tmp_path / "w_api.json").read_text()).values()}
    assert ("WanFunInpaintToVideo" if variant == "fun-inp" else "WanImageToVideo") in classes
