"""The package's imports run one way: cli -> configs -> studies -> attacks -> defences -> engine -> core.

Read from the source (every `import` statement, function-level ones included), so no JAX is needed.
"""

import ast
import os
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "ast_jax"
#: Layer of each top-level part of the package, lowest first; a module may import its own layer or lower.
LAYERS = {
    "core": ("__init__", "losses", "adversarial", "rng", "files", "data", "models", "interop", "results"),
    "engine": ("engine",),
    "defences": ("defences",),
    "attacks": ("attacks",),
    "studies": ("studies",),
    "configs": ("configs",),
    "cli": ("cli", "__main__"),
}
RANK = {part: rank for rank, parts in enumerate(LAYERS.values()) for part in parts}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
    """The ast_jax modules `path` imports (`from ast_jax.x import y` counts y when it is a module)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("ast_jax")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.startswith("ast_jax"):
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    found.add(candidate if _exists(candidate) else base)
    return found


def _exists(module: str) -> bool:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _rank(module: str) -> int:
    parts = module.split(".")
    return RANK[parts[1] if len(parts) > 1 else "__init__"]


GRAPH = {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_part_of_the_package_has_a_layer():
    assert {m.split(".")[1] for m in GRAPH if "." in m} <= set(RANK)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_go_to_the_same_layer_or_lower(module):
    upward = sorted(target for target in GRAPH[module] if _rank(target) > _rank(module))
    assert not upward, f"{module} imports a higher layer: {upward}"


def test_no_import_circle():
    """Tarjan's strongly connected components over the module graph: every one is a single module."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH.get(node, ()):
            if target not in GRAPH:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"


def test_studies_and_engine_never_load_a_config():
    loaders = {"ast_jax.cli", "ast_jax.cli.config", "ast_jax.configs", "ast_jax.configs.common"}
    offenders = {m: sorted(GRAPH[m] & loaders) for m in GRAPH if m.startswith(("ast_jax.studies", "ast_jax.engine"))}
    assert not {m: t for m, t in offenders.items() if t}


def _third_party(path: pathlib.Path) -> set[str]:
    """The top-level names of the packages `path` imports that are not ast_jax."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
        found |= {name.split(".")[0] for name in names if not name.startswith("ast_jax")}
    return found


def test_only_the_cli_and_configs_hold_a_config_object():
    """Below the configs everything takes typed settings (`studies.settings`, `engine.TrainSettings`):
    no module there imports ml_collections."""
    below = [p for p in sorted(PACKAGE.rglob("*.py")) if _rank(_module_name(p)) < RANK["configs"]]
    assert below and not [str(p.relative_to(PACKAGE)) for p in below if "ml_collections" in _third_party(p)]


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The check could fail: a module of the engine importing a study is found."""
    fake = PACKAGE / "engine" / "steps.py"
    imports = _imports(fake) | {"ast_jax.studies.pipeline"}
    assert any(_rank(t) > _rank("ast_jax.engine.steps") for t in imports)
    assert os.path.isfile(fake)
