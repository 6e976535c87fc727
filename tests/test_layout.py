"""The house rules, checked on the source itself (no imports of revjax, no jax).

* No import cycles among revjax modules, counting imports inside functions and under ``TYPE_CHECKING``.
* Layers: every module belongs to one layer of :data:`LAYERS` and imports only modules of its own layer or lower.
* Sizes: every module of revjax/ has at most 400 lines and every function at most 80.
* Test modules do not import one another; what several share lives in ``tests/helpers.py`` or ``tests/conftest.py``.
* Every repository path that a docstring or comment under revjax/ names exists.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from functools import cache
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "revjax"
TESTS = REPO_ROOT / "tests"

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80

# Lowest first. A module belongs to the layer of the longest entry that is its name or the name of a package above
# it (the root package ``revjax`` is its ``__init__`` only). The same order, in words, is in revjax/__init__.py.
LAYERS: list[tuple[str, list[str]]] = [
    # analysis.plots: matplotlib only, drawn by eval.compare as well as by the analysis package
    ("foundation", ["revjax", "revjax.errors", "revjax.yamlio", "revjax.phases", "revjax.memory", "revjax.runlock",
                    "revjax.replace", "revjax.analysis.plots", "revjax.architecture",
                    "revjax.horizon"]),
    ("schema", ["revjax.config_checks", "revjax.config_build", "revjax.config_schema"]),
    ("config", ["revjax.config", "revjax.config_args", "revjax.compilation"]),
    ("text", ["revjax.tokenizer", "revjax.direction", "revjax.data"]),
    ("model", ["revjax.model", "revjax.attention", "revjax.losses", "revjax.optim", "revjax.optim_2026",
               "revjax.sharding",
               "revjax.state", "revjax.model_ops", "revjax.recipe_model"]),
    ("runs", ["revjax.checkpoint", "revjax.runs", "revjax.engine", "revjax.calculator", "revjax.interop"]),
    ("tasks", ["revjax.tasks"]),
    ("eval/train", ["revjax.eval", "revjax.train", "revjax.tracking"]),
    ("applications", ["revjax.chat", "revjax.analysis", "revjax.experiments", "revjax.interop.lm_eval",
                      "revjax.interop.lm_eval_cli"]),
    ("cli", ["revjax.cli"]),
]

# A repository path in prose: a known top-level folder (or one level up), then a file with a source/doc suffix.
PATH_MENTION = re.compile(
    r"(?<![\w/.-])((?:\.\./)*(?:revjax|tests|scripts|configs|docs|reference|shared)/[\w/.-]*\w\."
    r"(?:py|md|yaml|yml|json|toml|txt))\b"
)


# ------------------------------------------------------------------------------------------------- import graph


@cache
def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name → (file, is a package's ``__init__``) for every ``revjax/**/*.py``."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        found[".".join(parts)] = (path, is_package)
    return found


def _known(name: str) -> str | None:
    """The longest prefix of ``name`` that is a revjax module (``revjax.data.corpus.Corpus`` → ``revjax.data.corpus``)."""
    mods = modules()
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


@cache
def import_edges() -> dict[str, dict[str, int]]:
    """Module → {imported revjax module: first line}, every ``import`` statement counted wherever it stands."""
    edges: dict[str, dict[str, int]] = {}
    for name, (path, is_package) in modules().items():
        package = name if is_package else name.rpartition(".")[0]
        targets: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            found: list[str | None] = []
            if isinstance(node, ast.Import):
                found = [_known(alias.name) for alias in node.names if alias.name.split(".")[0] == "revjax"]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source.split(".")[0] != "revjax":
                    continue
                # ``from revjax.data import corpus`` imports the module revjax.data.corpus
                found = [
                    f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules() else _known(source)
                    for alias in node.names
                ]
            for target in found:
                if target and target != name:
                    targets.setdefault(target, node.lineno)
        edges[name] = targets
    return edges


def strongly_connected(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def layer_of(module: str) -> int | None:
    best, best_len = None, -1
    for rank, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            matches = module == entry or (entry != "revjax" and module.startswith(entry + "."))
            if matches and len(entry) > best_len:
                best, best_len = rank, len(entry)
    return best


def _relative(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


# ------------------------------------------------------------------------------------------------------- tests


def test_the_import_graph_is_read():
    edges = import_edges()
    assert "revjax.model" in edges and "revjax.config" in edges["revjax.model"]
    assert strongly_connected({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    cycles = strongly_connected(import_edges())
    assert not cycles, "import cycles among revjax modules:\n" + "\n".join(" ↔ ".join(c) for c in cycles)


def test_every_module_has_a_layer():
    missing = sorted(name for name in modules() if layer_of(name) is None)
    assert not missing, f"modules in no layer of tests/test_layout.py's LAYERS: {missing}"


def test_every_layer_entry_is_a_module():
    stale = sorted(entry for _, entries in LAYERS for entry in entries if entry not in modules())
    assert not stale, f"LAYERS names modules that do not exist: {stale}"


def test_nothing_imports_a_higher_layer():
    upward = []
    for name, targets in sorted(import_edges().items()):
        own = layer_of(name)
        for target, line in sorted(targets.items()):
            theirs = layer_of(target)
            if own is not None and theirs is not None and theirs > own:
                path = _relative(modules()[name][0])
                upward.append(f"{path}:{line} {name} ({LAYERS[own][0]}) imports {target} ({LAYERS[theirs][0]})")
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_module_and_function_sizes():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        lines = len(source.splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{_relative(path)}: {lines} lines (module, at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(source, str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(
                        f"{_relative(path)}:{node.lineno} {node.name}: {length} lines (function, at most "
                        f"{MAX_FUNCTION_LINES})"
                    )
    assert not too_long, "too long:\n" + "\n".join(too_long)


def _imported_test_modules(path: Path) -> list[str]:
    imported = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = ".".join((["tests"] if node.level else []) + ([node.module] if node.module else []))
            names = [source] if node.module else [f"{source}.{alias.name}" for alias in node.names]
            if source == "tests":  # from tests import test_x
                names = [f"tests.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            module = ".".join(parts[:2]) if parts[0] == "tests" else parts[0]
            if module.rpartition(".")[2].startswith("test_") and module != f"tests.{path.stem}":
                imported.append(module)
    return imported


def test_test_modules_do_not_import_each_other():
    offenders = [
        f"{_relative(path)} imports {', '.join(sorted(set(names)))}"
        for path in sorted(TESTS.glob("test_*.py"))
        if (names := _imported_test_modules(path))
    ]
    assert not offenders, "test modules importing test modules (move the helper to tests/helpers.py):\n" + "\n".join(
        offenders
    )


def _prose(path: Path) -> list[tuple[int, str]]:
    """(line, text) of the comments and docstrings of a Python file, or of the comments of a YAML file."""
    source = path.read_text(encoding="utf-8")
    if path.suffix != ".py":
        return [(n, line) for n, line in enumerate(source.splitlines(), 1) if line.lstrip().startswith("#")]
    texts = [
        (token.start[0], token.string)
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    texts.append((body[0].lineno, body[0].value.value))
    return texts


def test_paths_named_in_docstrings_and_comments_exist():
    missing = []
    for path in sorted(p for p in PACKAGE.rglob("*") if p.suffix in {".py", ".yaml", ".yml"}):
        for line, text in _prose(path):
            for mention in PATH_MENTION.findall(text):
                target = (REPO_ROOT / mention).resolve()
                if not target.is_relative_to(REPO_ROOT) or not target.exists():
                    missing.append(f"{_relative(path)}:{line} names {mention}")
    assert not missing, "paths that are not in the repository:\n" + "\n".join(missing)


def test_a_missing_path_is_found():
    assert PATH_MENTION.findall("see ``../shared/reference/x.md`` §3 and revjax/model.py.") == [
        "../shared/reference/x.md",
        "revjax/model.py",
    ]
    assert PATH_MENTION.findall("nanochat's tasks/gsm8k.py and <out>/revjax/x.py") == []
