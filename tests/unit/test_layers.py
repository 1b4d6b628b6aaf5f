"""The package's layers: the core imports neither Scrapy nor Twisted, never imports the
crawl layer, and no two modules import each other, directly or around a loop."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import PYTHON, ROOT, python_env

PACKAGE = "scrapy_checkpoint"
#: The only layer allowed to import these.
CRAWL = f"{PACKAGE}.crawl"
FRAMEWORKS = ("scrapy", "twisted", "scrapy_redis")
#: Old import paths of crawl classes, kept as re-exports, and the path of the ready item
#: pipelines (``scrapy_checkpoint.pipelines``): they import Scrapy by design.
REEXPORTS = frozenset({f"{PACKAGE}.middleware", f"{PACKAGE}.extension", f"{PACKAGE}.outputs",
                       f"{PACKAGE}.pipelines"})


def _walk(path: Path, prefix: str) -> Iterator[tuple[str, Path]]:
    """Every module under ``path`` (found on disk, nothing imported): name, source file."""
    for info in pkgutil.iter_modules([str(path)]):
        name = prefix + info.name
        if info.ispkg:
            yield name, path / info.name / "__init__.py"
            yield from _walk(path / info.name, name + ".")
        else:
            yield name, path / f"{info.name}.py"


MODULES: dict[str, Path] = {PACKAGE: ROOT / PACKAGE / "__init__.py",
                            **dict(_walk(ROOT / PACKAGE, PACKAGE + "."))}


def _in_crawl(name: str) -> bool:
    return name == CRAWL or name.startswith(CRAWL + ".")


CORE = sorted(m for m in MODULES if not _in_crawl(m) and m not in REEXPORTS)


def _imports(name: str, path: Path, *, runtime_only: bool) -> set[str]:
    """Every module ``name``'s source imports, absolute, at any depth (functions included).

    ``from pkg import x`` counts as importing ``pkg.x`` when that is a module of this
    package, else ``pkg``. With ``runtime_only``, imports under ``if TYPE_CHECKING:`` are
    left out (they never run).
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped: set[int] = set()
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped.update(id(n) for child in node.body for n in ast.walk(child))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1]
                                + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return found


def test_the_module_walk_finds_the_core_and_the_crawl_layer() -> None:
    # Guards the walk itself: an empty or partial list would make the tests below vacuous.
    for expected in (f"{PACKAGE}.checkpoint", f"{PACKAGE}.tracker", f"{PACKAGE}.cli",
                     f"{PACKAGE}.stores.redis", f"{PACKAGE}.journal.frames", f"{PACKAGE}.shared"):
        assert expected in CORE
    assert f"{CRAWL}.frontier" in MODULES
    assert not any(_in_crawl(m) for m in CORE)
    assert not REEXPORTS & set(CORE)


#: Run in a fresh interpreter with the core modules as arguments. It imports the package
#: itself, as importing any of its modules does first, then imports each module in a child
#: forked from that state: the same modules load as in a fresh ``python -c "import m"`` per
#: module, without paying the package's import once per module. Prints, as its last line,
#: {module: [exit code, framework modules loaded or the error]} as JSON.
IMPORT_EACH = f"""
import importlib, json, os, sys, traceback
FRAMEWORKS = {FRAMEWORKS!r}
def loaded():
    return sorted(m for m in sys.modules if m.split('.')[0] in FRAMEWORKS)
results = {{}}
before = loaded()
importlib.import_module({PACKAGE!r})
results[{PACKAGE!r}] = [0, before + [m for m in loaded() if m not in before]]
for name in sys.argv[1:]:
    if name == {PACKAGE!r}:
        continue
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            report = [0, loaded()]
        except BaseException:
            report = [1, traceback.format_exc()]
        with os.fdopen(write, 'w') as pipe:
            json.dump(report, pipe)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, 'rb') as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    results[name] = json.loads(data) if data else [1, 'the child died']
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def imported_frameworks() -> dict[str, list[object]]:
    """Each core module imported alone (see IMPORT_EACH): module -> [exit code, the framework
    modules loaded, or the error]."""
    proc = subprocess.run([PYTHON, "-c", IMPORT_EACH, *CORE], capture_output=True, text=True,
                          env=python_env(), timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr
    results: dict[str, list[object]] = json.loads(proc.stdout.splitlines()[-1])
    return results


@pytest.mark.parametrize("module", CORE)
def test_a_core_module_imports_neither_scrapy_nor_twisted(
    module: str, imported_frameworks: dict[str, list[object]]
) -> None:
    returncode, loaded = imported_frameworks[module]
    assert returncode == 0, loaded
    assert isinstance(loaded, list)
    assert not loaded, f"importing {module} loads {len(loaded)} framework module(s): {loaded[:8]}"


@pytest.mark.parametrize("module", CORE)
def test_a_core_module_never_imports_the_crawl_layer_or_a_framework(module: str) -> None:
    # Any import, even in a function or under TYPE_CHECKING: the core must not know the crawl.
    imports = _imports(module, MODULES[module], runtime_only=False)
    assert sorted(m for m in imports if _in_crawl(m)) == []
    assert sorted(m for m in imports if m.split(".")[0] in FRAMEWORKS) == []


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None if it is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_cycle_finder_reports_a_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_package_has_no_import_cycles() -> None:
    # Module-level and function-level imports count; TYPE_CHECKING ones never run, so not.
    graph = {name: {m for m in _imports(name, path, runtime_only=True) if m in MODULES} - {name}
             for name, path in MODULES.items()}
    assert sum(map(len, graph.values())) > len(MODULES)  # the graph is not empty
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


#: The longest a class may be, in lines: past it, it holds more than one concern.
MAX_CLASS_LINES = 400


def test_no_class_is_longer_than_the_limit() -> None:
    too_long = []
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    too_long.append(f"{path.relative_to(ROOT)}: {node.name} ({lines} lines)")
    assert not too_long, "split these classes along their concerns: " + "; ".join(too_long)


def test_the_names_scripts_import_stay_where_they_were() -> None:
    """Recovery scripts and bug reports import the byte formats from the journal package
    and the stage-name check and snapshot codec from the file store: moving a module must
    keep these names where scripts find them."""
    import scrapy_checkpoint.stores.file as file_store
    from scrapy_checkpoint import journal

    for name in ("frame", "encode_group", "decode_group", "encode_snapshot", "decode_snapshot"):
        assert callable(getattr(journal, name)), name
    assert file_store.decode_snapshot is journal.decode_snapshot
    assert file_store.encode_snapshot is journal.encode_snapshot
    assert callable(file_store.check_stage_name)
    group = journal.decode_group(journal.encode_group([1], [], {"c": [1, 1, 0, 0]}))
    assert list(group.done) == [1]
