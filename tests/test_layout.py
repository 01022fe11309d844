"""The package's layers and the direction of their imports, read from the source (lazy imports inside functions
included): each folder of genvl/ is one layer and imports point down; evaluation and training sit side by side
and import neither each other nor the recipes or the CLI; the recipes (genvl/recipes/) sit on both and import no
other recipe; the CLI, which nothing imports, runs them; the scripts in examples/ and benchmarks/ import genvl
only, never each other."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# bottom to top; modules of one layer may import each other
LAYERS = {
    "io": 0,
    "world": 1,
    "models": 2,
    "attention": 2,
    "cache": 2,
    "lora": 2,
    "quantize": 2,
    "generation": 3,
    "pipelines": 4,
    "evaluation": 5,
    "training": 5,
    "recipes": 6,
    "cli": 7,
    "__main__": 8,
}
APART = {("evaluation", "training"), ("training", "evaluation")}
SCRIPT_FOLDERS = ("genvl/recipes", "examples", "benchmarks")


def imported_modules(path: Path, package: str):
    """(line, absolute module name) of every import in the file at `path`, whose own module is `package`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:  # `from . import unclip` imports a module too
                yield node.lineno, f"{module}.{alias.name}"


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "genvl" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in LAYERS else None


def genvl_files():
    for path in sorted((ROOT / "genvl").rglob("*.py")):
        relative = path.relative_to(ROOT).with_suffix("")
        parts = list(relative.parts)
        package = ".".join(parts[:-1] if parts[-1] == "__init__" else parts[:-1])
        yield path, ".".join(parts), package


def test_every_module_is_in_a_layer():
    unplaced = sorted(
        module for _, module, _ in genvl_files() if module != "genvl.__init__" and layer_of(module) is None
    )
    assert unplaced == [], f"give these a layer in LAYERS: {unplaced}"


def test_imports_point_down_the_layers():
    wrong = []
    for path, module, package in genvl_files():
        own = layer_of(module)
        if own is None:
            continue
        for line, target in imported_modules(path, package):
            other = layer_of(target)
            if other is None or other == own:
                continue
            if LAYERS[other] > LAYERS[own] or (own, other) in APART:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({own}) imports {target} ({other})")
    assert wrong == [], "imports against the layers:\n" + "\n".join(wrong)


def script_files():
    return [
        path for folder in SCRIPT_FOLDERS for path in sorted((ROOT / folder).glob("*.py")) if path.stem != "__init__"
    ]


@pytest.mark.parametrize("path", script_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_scripts_import_genvl_only_never_each_other(path):
    siblings = {p.stem for p in script_files()}
    source = path.read_text(encoding="utf-8")
    recipe = path.parent == ROOT / "genvl" / "recipes"
    wrong = [
        f"line {line}: {module}"
        for line, module in imported_modules(path, "genvl.recipes")
        if module.split(".")[0] in siblings or (recipe and module.startswith("genvl.recipes."))
    ]
    assert wrong == [], f"{path.relative_to(ROOT)} imports another script: {wrong}"
    assert "sys.path.insert" not in source and "sys.path.append" not in source, (
        f"{path.relative_to(ROOT)} changes sys.path to import something that is not genvl"
    )


def test_the_layer_check_sees_a_wrong_import(tmp_path):
    """The walk itself: an import from io up into the CLI, lazy inside a function, is found."""
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from ..cli import main\n")
    found = [target for _, target in imported_modules(module, "genvl.io")]
    assert "genvl.cli" in found and layer_of("genvl.cli") == "cli"
