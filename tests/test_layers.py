"""The package's import graph (module-level and in-function imports): no cycles, and the network and codec
layers import nothing from the layers above them."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "higgs_audio"
ABOVE_MODEL_AND_CODEC = ("api", "cli", "server", "cluster", "train", "voices", "prompt", "longform", "engine",
                         "serve_engine", "scenes", "options", "runner", "output", "inputs", "results")


def _graph() -> dict[str, set[str]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
                targets = subs if len(subs) == len(node.names) else [node.module, *subs]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def test_no_import_cycles():
    graph, state, cycles = _graph(), {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_model_and_codec_import_nothing_above_them():
    above = tuple(f"higgs_audio.{m}" for m in ABOVE_MODEL_AND_CODEC)
    wrong = {name: sorted(t for t in targets if t.startswith(above))
             for name, targets in _graph().items() if name.startswith(("higgs_audio.model", "higgs_audio.codec"))}
    assert {name: targets for name, targets in wrong.items() if targets} == {}
