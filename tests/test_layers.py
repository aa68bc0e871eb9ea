"""The import graph, read from the source with ``ast``: no cycles, the library never imports the
CLI, and every import runs down the layers (function-level and TYPE_CHECKING imports included).

Layers, bottom to top (a module may import its own layer and the layers its layer lists):

- kernel: errors, atomic I/O, safetensors I/O, video, Wan facts, finding musubi-tuner;
- media (orbit measurement) -> prepare (clips, captions, manifest) -> dataset (TOML) ->
  musubi (cache, train, generate, preflight) -> eval, each on everything below it;
- tools (LoRA keys and I/O, merge, convert) beside that chain, on the kernel only;
- selfcheck (smoke, demo, tiny models, synthetic data, benchmarks) above all of them;
- cli on top.

Modules are found from ``pyproject.toml``'s ``package-dir`` and placed by the longest prefix of
their file path in :data:`PLACES`, so the test reads the flat tree of today and the tree after
the folder relayout alike (the relayout rewrites the file entries below with the files).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import toml

ROOT = Path(__file__).resolve().parents[1]
CHAIN = ("kernel", "media", "prepare", "dataset", "musubi", "eval")
#: layer -> the layers it may import (its own included)
MAY_IMPORT: Dict[str, Set[str]] = {
    **{layer: set(CHAIN[: i + 1]) for i, layer in enumerate(CHAIN)},
    "tools": {"kernel", "tools"},
    "selfcheck": set(CHAIN) | {"tools", "selfcheck"},
    "cli": set(CHAIN) | {"tools", "selfcheck", "cli"},
}
#: file path prefix (from the repository root) -> layer; the longest matching prefix wins. Keyed by
#: path, so the relayout script rewrites the module entries with the files and leaves the folders.
PLACES: Dict[str, str] = {
    # packages (after the relayout each job has its own)
    "plugins/__init__.py": "kernel",
    "plugins/kernel/": "kernel",
    "plugins/media/": "media",
    "plugins/prepare/": "prepare",
    "plugins/dataset/": "dataset",
    "plugins/musubi/": "musubi",
    "eval/": "eval",
    "tools/": "tools",
    "plugins/selfcheck/": "selfcheck",
    "plugins/synthetic/": "selfcheck",
    "plugins/cli/": "cli",
    "plugins/__main__.py": "cli",
    "recipes/": "kernel",
    "datasets/": "kernel",
    # the flat modules of today (plugins/)
    "plugins/kernel/errors.py": "kernel",
    "plugins/kernel/atomic.py": "kernel",
    "plugins/kernel/direct_io.py": "kernel",
    "plugins/kernel/safetensors_io.py": "kernel",
    "plugins/kernel/checkpoint_identity.py": "kernel",
    "plugins/kernel/progress.py": "kernel",
    "plugins/kernel/disk_space.py": "kernel",
    "plugins/kernel/memory.py": "kernel",
    "plugins/kernel/video_io.py": "kernel",
    "plugins/kernel/mp4_rotation.py": "kernel",
    "plugins/kernel/display.py": "kernel",
    "plugins/kernel/wan_arch.py": "kernel",
    "plugins/kernel/buckets.py": "kernel",
    "plugins/kernel/musubi_env.py": "kernel",
    "plugins/media/orbit.py": "media",
    "plugins/media/orbit_flow.py": "media",
    "plugins/media/orbit_qc.py": "media",
    "plugins/media/scene_cuts.py": "media",
    "plugins/media/borders.py": "media",
    "plugins/prepare/run.py": "prepare",
    "plugins/prepare/clip_plan.py": "prepare",
    "plugins/prepare/manifest.py": "prepare",
    "plugins/prepare/options.py": "prepare",
    "plugins/prepare/source.py": "prepare",
    "plugins/prepare/plot.py": "prepare",
    "plugins/prepare/caption.py": "prepare",
    "plugins/prepare/caption_templates.py": "prepare",
    "plugins/prepare/subject_map.py": "prepare",
    "plugins/prepare/source_caption.py": "prepare",
    "plugins/dataset/items.py": "dataset",
    "plugins/dataset/toml_writer.py": "dataset",
    "plugins/dataset/schema.py": "dataset",
    "plugins/dataset/check.py": "dataset",
    "plugins/musubi/recipe_reader.py": "musubi",
    "plugins/musubi/processes.py": "musubi",
    "plugins/musubi/tasks.py": "musubi",
    "plugins/musubi/args.py": "musubi",
    "plugins/musubi/cache_plan.py": "musubi",
    "plugins/musubi/cache_status.py": "musubi",
    "plugins/musubi/cache.py": "musubi",
    "plugins/musubi/vram.py": "musubi",
    "plugins/musubi/preflight_findings.py": "musubi",
    "plugins/musubi/preflight_data.py": "musubi",
    "plugins/musubi/preflight.py": "musubi",
    "plugins/musubi/run_record.py": "musubi",
    "plugins/musubi/train.py": "musubi",
    "plugins/musubi/generate.py": "musubi",
    "plugins/musubi/downloads.py": "musubi",
    "plugins/musubi/doctor.py": "musubi",
    "plugins/selfcheck/tiny_task.py": "selfcheck",
    "plugins/selfcheck/tiny_models.py": "selfcheck",
    "plugins/selfcheck/forkserver.py": "selfcheck",
    "plugins/selfcheck/smoke_steps.py": "selfcheck",
    "plugins/selfcheck/smoke.py": "selfcheck",
    "plugins/selfcheck/demo.py": "selfcheck",
    "plugins/selfcheck/bench_prepare.py": "selfcheck",
    # self-check modules that live in other folders today
    "plugins/selfcheck/synthetic/lora.py": "selfcheck",
    "plugins/selfcheck/bench_merge.py": "selfcheck",
    "plugins/selfcheck/bench_eval.py": "selfcheck",
    "plugins/selfcheck/bench_accuracy.py": "selfcheck",
    "plugins/selfcheck/bench_fp8_merge.py": "selfcheck",
    "plugins/selfcheck/check_comfyui.py": "selfcheck",
    # modules added with the data-parallel training, the bad-input guards and the prepared-folder check
    "plugins/kernel/input_files.py": "kernel",
    "plugins/kernel/write_checks.py": "kernel",
    "plugins/prepare/prepared_folder.py": "prepare",
    "plugins/musubi/accelerate_launch.py": "musubi",
    "plugins/musubi/parallel_plan.py": "musubi",
    "plugins/musubi/train_parallel.py": "musubi",
    "plugins/selfcheck/cpu_ddp.py": "selfcheck",
    "plugins/selfcheck/ddp_probe.py": "selfcheck",
}


def find_modules(root: Path = ROOT) -> Dict[str, Path]:
    """Dotted name -> file of every module the wheel ships (``package-dir`` of pyproject.toml)."""
    package_dir = toml.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    modules: Dict[str, Path] = {}
    # the most specific mapping names a file: circle_rotate.cli -> plugins/cli before circle_rotate -> plugins
    for package, folder in sorted(package_dir.items(), key=lambda kv: -len(Path(kv[1]).parts)):
        base = root / folder
        for f in sorted(base.rglob("*.py")):
            parts = f.relative_to(base).with_suffix("").parts
            name = ".".join((package, *parts[:-1], *([] if parts[-1] == "__init__" else [parts[-1]])))
            if f not in modules.values():
                modules[name] = f
    return modules


def _resolve(node: ast.AST, name: str, is_package: bool, modules: Dict[str, Path]) -> List[str]:
    """The modules of this project that one import statement in module ``name`` loads."""
    if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = name.split(".") if is_package else name.split(".")[:-1]
            anchor = anchor[: len(anchor) - node.level + 1]
            base = ".".join(anchor + ([node.module] if node.module else []))
        # `from pkg import mod` loads pkg.mod; `from mod import func` loads mod
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    found = []
    for t in targets:
        while t not in modules and "." in t:
            t = t.rsplit(".", 1)[0]
        if t in modules and t != name:
            found.append(t)
    return found


def import_graph(modules: Dict[str, Path]) -> Dict[str, Set[str]]:
    graph: Dict[str, Set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):  # every import, at module level or inside a function
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name].update(_resolve(node, name, path.name == "__init__.py", modules))
    return graph


def layer_of(name: str) -> Optional[str]:
    path = MODULES[name].relative_to(ROOT).as_posix()
    best = max((p for p in PLACES if path == p or (p.endswith("/") and path.startswith(p))), key=len, default=None)
    return PLACES[best] if best else None


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One import cycle as a list of modules (first == last), or None."""
    state: Dict[str, int] = {}  # 1: on the stack, 2: done
    stack: List[str] = []

    def visit(m: str) -> Optional[List[str]]:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


MODULES = find_modules()
GRAPH = import_graph(MODULES)


def _edges() -> List[Tuple[str, str]]:
    return [(a, b) for a in sorted(GRAPH) for b in sorted(GRAPH[a])]


def test_the_graph_is_read_from_the_source():
    # guards the reader itself: these imports exist at module level and inside functions
    assert len(MODULES) > 80
    assert "circle_rotate.cli.main" in MODULES and "circle_rotate.tools" in MODULES
    assert len(_edges()) > 150
    cli_main = next(n for n in MODULES if n.endswith("cli.main"))
    assert any(b.endswith("errors") for b in GRAPH[cli_main])


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in MODULES if layer_of(m) is None)
    assert not unplaced, f"give these a layer in PLACES (tests/test_layers.py): {unplaced}"


def test_no_import_cycles():
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH) or [])


def test_the_library_never_imports_the_cli():
    upward = [f"{a} -> {b}" for a, b in _edges()
              if layer_of(b) == "cli" and layer_of(a) != "cli"]
    assert upward == []


def test_imports_run_down_the_layers():
    wrong = [f"{a} ({layer_of(a)}) -> {b} ({layer_of(b)})" for a, b in _edges()
             if layer_of(a) and layer_of(b) and layer_of(b) not in MAY_IMPORT[layer_of(a)]]
    assert wrong == []


def test_the_checker_finds_a_cycle_and_an_upward_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert "musubi" not in MAY_IMPORT["prepare"] and "cli" not in MAY_IMPORT["selfcheck"]
    tools = [m for m in MODULES if MODULES[m].relative_to(ROOT).parts[0] == "tools"]
    assert tools and all(layer_of(m) in ("tools", "selfcheck") for m in tools)
