"""The package's import graph, read with ``ast``, keeps the shape issue 15 gave it.

Every import counts, wherever it is written: module level, inside a function, under
``if TYPE_CHECKING:``, and ``importlib.import_module("...")`` (a string constant that names a
module of the package, as ``chainlit_orm/__init__.py``'s lazy table does, counts as an import of
it). The rules:

* no cycle between modules;
* :mod:`chainlit_orm.schema_gen` imports nothing that does I/O (no layer, migrator, storage or
  transfer module, no network or database driver);
* ``layers.sql`` and ``layers.dynamodb`` never import each other;
* :mod:`chainlit_orm.storage` imports nothing from :mod:`chainlit_orm.layers`;
* no module imports another module's private (``_name``) names (a package's own private
  submodules, ``storage._signing`` or ``transfer._layer``, are its siblings' to import);
* private top-level names are unique across the package (one ``_plan``, one ``_Backfill``...).

``python -m tests.test_architecture`` prints (Markdown) the package-level import graph, the rules
above checked on it, and the ten largest modules, for a change's closing note.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGE = "chainlit_orm"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

#: Imports that do I/O (a network client, a database driver, an async engine, a filesystem
#: abstraction). PynamoDB's model, attribute and index declarations are allowed in schema_gen: it
#: generates item classes and calls none of their methods; PynamoDB's I/O is its ``connection``.
IO_MODULES = (
    "aioboto3", "aiobotocore", "aiohttp", "aiosqlite", "alembic.runtime", "asyncmy", "asyncpg",
    "boto3", "botocore", "fsspec", "adlfs", "s3fs", "gcsfs", "http", "httpx", "pynamodb.connection",
    "requests", "socket", "sqlalchemy.ext.asyncio", "urllib.request",
)
#: Parts of the package that do I/O.
IO_PACKAGES = ("layers", "migrations", "storage", "transfer", "config", "cli")


@dataclass
class Module:
    """One module of the package: its dotted name, file, line count and what it imports."""

    name: str
    path: Path
    lines: int
    internal: set[str] = field(default_factory=set)
    external: set[str] = field(default_factory=set)


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(tree: ast.AST, name: str, is_package: bool) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(module, names) for every import in ``tree``, wherever it is."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            yield module, tuple(alias.name for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                node.value.startswith(PACKAGE + ".")):
            yield node.value, ()  # importlib.import_module("chainlit_orm....") and lazy tables


def build_graph(root: Path = ROOT) -> dict[str, Module]:
    """Every module of the package with its internal and external imports."""
    modules: dict[str, Module] = {}
    trees = {}
    for path in sorted(root.rglob("*.py")):
        name = _module_name(path, root)
        text = path.read_text(encoding="utf-8")
        modules[name] = Module(name, path, len(text.splitlines()))
        trees[name] = ast.parse(text, str(path))
    for name, module in modules.items():
        is_package = module.path.name == "__init__.py"
        for target, names in _imported(trees[name], name, is_package):
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                if target not in modules:
                    continue  # a string that only looks like a module name
                found = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
                # "from pkg import submodule" imports the submodule; "from pkg import name" the
                # package itself
                if len(found) < len(names) or not names:
                    found.append(target)
                module.internal.update(t for t in found if t != name)
            elif target:
                module.external.add(target)
    return modules


def find_cycle(modules: dict[str, Module]) -> list[str] | None:
    """One import cycle, as the list of modules around it, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for target in sorted(modules[name].internal):
            if state.get(target) == 1:
                return [*stack[stack.index(target):], target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[name] = 2
        return None

    for name in sorted(modules):
        if name not in state:
            cycle = visit(name)
            if cycle:
                return cycle
    return None


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _offenders(modules: dict[str, Module], source: str, targets: Iterable[str]) -> list[str]:
    wanted = [f"{PACKAGE}.{t}" for t in targets]
    return sorted(f"{m.name} -> {t}" for m in modules.values() if _in(m.name, f"{PACKAGE}.{source}")
                  for t in m.internal if any(_in(t, w) for w in wanted))


def package_of(name: str) -> str:
    """The first-level part of the package a module belongs to (``layers.dynamodb`` counts as
    its own part, as does ``layers.sql``)."""
    parts = name.split(".")[1:]
    if not parts:
        return PACKAGE
    if parts[0] == "layers" and len(parts) > 1 and parts[1] in ("dynamodb", "sql"):
        return f"layers.{parts[1]}"
    return parts[0]


def package_edges(modules: dict[str, Module]) -> dict[str, set[str]]:
    """The import graph between the parts of the package (see :func:`package_of`)."""
    edges: dict[str, set[str]] = {}
    for module in modules.values():
        source = package_of(module.name)
        edges.setdefault(source, set())
        for target in module.internal:
            if package_of(target) != source:
                edges[source].add(package_of(target))
    return edges


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_imports(root: Path = ROOT) -> list[str]:
    """``module -> imported._name`` for every private name a module imports from another one."""
    found = []
    for path in sorted(root.rglob("*.py")):
        name = _module_name(path, root)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE):
                for alias in node.names:
                    sibling_module = node.module == package and (
                        root.parent / Path(*f"{node.module}.{alias.name}".split("."))
                    ).with_suffix(".py").exists()
                    if _private(alias.name) and not sibling_module:
                        found.append(f"{name} -> {node.module}.{alias.name}")
    return found


def private_top_level_names(root: Path = ROOT) -> dict[str, list[str]]:
    """Every private top-level name (function, class, assignment) and the modules defining it."""
    names: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                defined = [node.name]
            elif isinstance(node, ast.Assign):
                defined = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                defined = [node.target.id]
            else:
                continue
            for item in defined:
                if _private(item):
                    names.setdefault(item, []).append(_module_name(path, root))
    return names


# --------------------------------------------------------------------------------------- tests


def test_no_import_cycle() -> None:
    assert find_cycle(build_graph()) is None


def test_schema_gen_does_no_io() -> None:
    modules = build_graph()
    assert _offenders(modules, "schema_gen", IO_PACKAGES) == []
    io = sorted(f"{m.name} -> {t}" for m in modules.values() if _in(m.name, f"{PACKAGE}.schema_gen")
                for t in m.external if any(_in(t, io) for io in IO_MODULES))
    assert io == []


def test_the_layers_never_import_each_other() -> None:
    modules = build_graph()
    assert _offenders(modules, "layers.sql", ["layers.dynamodb"]) == []
    assert _offenders(modules, "layers.dynamodb", ["layers.sql"]) == []


def test_storage_imports_nothing_from_the_layers() -> None:
    assert _offenders(build_graph(), "storage", ["layers"]) == []


def test_no_module_imports_another_modules_private_names() -> None:
    assert private_imports() == []


def test_private_top_level_names_are_unique() -> None:
    assert {name: where for name, where in private_top_level_names().items()
            if len(where) > 1} == {}


def _sources(*parts: str) -> Iterator[tuple[str, ast.AST]]:
    """(module name, tree) of every module under these parts of the package (a part is a
    package directory or a module file, relative to the package)."""
    for part in parts:
        path = ROOT / part
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
        for file in files:
            yield _module_name(file), ast.parse(file.read_text(encoding="utf-8"), str(file))


def test_the_step_and_element_order_is_written_once() -> None:
    """Both backends order a thread's steps and elements with ``models.rules`` (``STEP_ORDER``,
    ``step_order``, ``element_order``): no sort key on ``createdAt`` is written inline
    in a layer."""
    inline = []
    for name, tree in _sources("layers"):
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            key = next((k.value for k in node.keywords if k.arg == "key"), None)
            if isinstance(key, ast.Lambda):
                inside: ast.AST = key.body
            elif isinstance(node.func, ast.Attribute) and node.func.attr == "order_by":
                inside = ast.Tuple(elts=list(node.args))
            else:
                continue
            if any((isinstance(c, ast.Constant) and c.value == "createdAt")
                   or (isinstance(c, ast.Attribute) and c.attr == "createdAt")
                   for c in ast.walk(inside)):
                inline.append(f"{name}:{node.lineno}: {ast.unparse(node)[:80]}")
    assert inline == []
    for module in ("layers/sql", "layers/dynamodb/backend"):
        imported = {alias.name for _, tree in _sources(module) for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module == f"{PACKAGE}.models.rules"
                    for alias in node.names}
        assert imported & {"STEP_ORDER", "step_order"} and "element_order" in imported, module


def _is_backend(node: ast.AST) -> bool:
    """``backend`` or ``<anything>.backend`` (``self.backend``, ``layer.backend``)."""
    return (isinstance(node, ast.Name) and node.id == "backend") or (
        isinstance(node, ast.Attribute) and node.attr == "backend")


def backend_uses(*parts: str) -> dict[str, set[str]]:
    """module -> every name it uses on a backend: ``backend.<name>``, ``self.backend.<name>``
    and ``getattr``/``hasattr(backend, "<name>")``."""
    used: dict[str, set[str]] = {}
    for name, tree in _sources(*parts):
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _is_backend(node.value):
                used.setdefault(name, set()).add(node.attr)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) > 1
                  and _is_backend(node.args[0]) and isinstance(node.args[1], ast.Constant)):
                used.setdefault(name, set()).add(f"{node.func.id}:{node.args[1].value}")
    return used


def protocol_members(protocol: type) -> dict[str, object]:
    """The public members a protocol declares, its base protocols' included: name -> the
    function (None for a declared attribute)."""
    from typing import Protocol

    members: dict[str, object] = {}
    for cls in reversed(protocol.__mro__):
        if cls is Protocol or not getattr(cls, "_is_protocol", False):
            continue
        for name in getattr(cls, "__annotations__", {}):
            members.setdefault(name, None)
        for name, value in vars(cls).items():
            if not name.startswith("_"):
                members[name] = value
    return members


def test_the_backend_protocol_lists_what_the_semantics_layer_calls() -> None:
    """Every name ``layers/base.py`` and the lifecycle package use on a backend is declared in
    ``Backend`` (the lifecycle package's, in ``LifecycleBackend``, which it is typed on), and
    none is looked up by name."""
    from chainlit_orm.layers.base import Backend
    from chainlit_orm.lifecycle.records import LifecycleBackend

    semantics = backend_uses("layers/base.py")
    lifecycle = backend_uses("lifecycle")
    assert set(semantics) == {f"{PACKAGE}.layers.base"}
    assert set(lifecycle) == {f"{PACKAGE}.lifecycle.erase", f"{PACKAGE}.lifecycle.purge"}
    declared = protocol_members(Backend)
    used = set().union(*semantics.values(), *lifecycle.values())
    assert sorted(used - set(declared)) == []
    assert sorted(set().union(*lifecycle.values()) - set(protocol_members(LifecycleBackend))) == []
    # the protocol lists nothing the layer does not use (a member no one calls is dead weight)
    assert sorted(set(declared) - used) == []
    # and each member says what it does
    assert sorted(name for name, value in declared.items()
                  if value is not None and not getattr(value, "__doc__", None)) == []


def _parameters(function: Any) -> list[tuple[str, Any]]:
    import inspect

    return [(p.name, p.kind) for p in list(inspect.signature(function).parameters.values())[1:]]


async def test_both_backends_implement_every_protocol_member(tmp_path: Path) -> None:
    """SQLBackend and DynamoBackend have every member of ``Backend``, each method with the
    protocol's parameters (names and kinds) and the same sync/async nature."""
    import inspect

    from chainlit_orm.layers.base import Backend
    from chainlit_orm.layers.dynamodb import DynamoBackend, DynamoConfig
    from chainlit_orm.layers.sql import SQLBackend

    sql = SQLBackend(f"sqlite+aiosqlite:///{tmp_path / 'arch.db'}")
    dynamo = DynamoBackend(DynamoConfig("arch", region="us-east-1",
                                        endpoint_url="http://127.0.0.1:5055"))
    try:
        for backend in (sql, dynamo):
            for name, declared in protocol_members(Backend).items():
                assert hasattr(backend, name), (type(backend).__name__, name)
                if declared is None:
                    continue
                implemented = getattr(type(backend), name)
                assert _parameters(implemented) == _parameters(declared), (
                    type(backend).__name__, name)
                assert inspect.iscoroutinefunction(implemented) == (
                    inspect.iscoroutinefunction(declared)), (type(backend).__name__, name)
    finally:
        await sql.close()
        await dynamo.close()


#: Underscored names that are public API of a library: SQLAlchemy's ``Row._mapping`` (named so
#: it cannot clash with a column, as namedtuple's ``_asdict``).
PUBLIC_UNDERSCORED = frozenset({"_mapping"})


def foreign_private_attributes(*parts: str) -> list[str]:
    """``module:line: expr`` for every ``<object>._name`` whose object is not ``self``/``cls``:
    a private attribute of an object another module made (a backend, a layer)."""
    found = []
    for name, tree in _sources(*parts):
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and _private(node.attr)
                    and node.attr not in PUBLIC_UNDERSCORED
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                found.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_private_attribute_of_another_modules_object_is_used() -> None:
    """The transfer, the semantics layer and the lifecycle package use the backends (and each
    other) through public, documented names only: ``DynamoBackend.call``/``query_all``/
    ``batch_get``/``batch_write``/``lookup``/``load_texts``, ``SQLBackend.run`` and its
    ``check_schema`` argument, never ``backend._call``."""
    assert foreign_private_attributes("transfer", "layers/base.py", "lifecycle") == []


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes of a module, its classes and functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def declared_layout_literals(*parts: str) -> list[str]:
    """``module:line: 'text'`` for every string constant (docstrings aside) under ``parts``
    that is a DynamoDB name or key template the default model set declares: an index name, an
    index key attribute, a table or index key template (``THREAD#{id}``, ``USER``...), or any
    text with a ``#{`` placeholder."""
    from chainlit_orm.models.modelset import DEFAULT_MODELS

    declared: set[str] = set()
    for keys in DEFAULT_MODELS.dynamo.values():
        declared |= {keys.pk, keys.sk}
        for index in keys.indexes:
            declared |= {index.index, index.pk_attribute, index.sk_attribute, index.pk, index.sk}
    found = []
    for name, tree in _sources(*parts):
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and id(node) not in docstrings
                    and (node.value in declared or "#{" in node.value)):
                found.append(f"{name}:{node.lineno}: {node.value!r}")
    return found


def test_the_dynamodb_layer_reads_index_names_and_key_templates_from_the_model_set() -> None:
    """No index name (``UserThread``, ``UserActivity``, ``ById``...), index key attribute or key
    template is written in ``layers/dynamodb``: the models declare them (``__dynamo__``), and
    the layer finds each index by its role through ``ItemLayout`` (``list_index``,
    ``lookup_index``, ``owner_index``, ``feedback_index``), so a model set that renames one is
    followed everywhere (``tests/dynamodb/test_renamed_indexes.py`` runs such a set on moto).
    The rest of the package (the backfill's migrator, the transfer, ``schema_gen``) reads them
    from the model set too: only ``models`` declares them."""
    assert declared_layout_literals("layers/dynamodb") == []
    everything_else = sorted(path.relative_to(ROOT).as_posix() for path in ROOT.iterdir()
                             if path.name != "models" and (path.is_dir() or path.suffix == ".py")
                             and path.name != "__pycache__")
    assert declared_layout_literals(*everything_else) == []


def test_the_graph_reader_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The reader itself: function-local, TYPE_CHECKING, relative and importlib imports."""
    package = tmp_path / PACKAGE
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text('LAZY = {"a": "chainlit_orm.a"}\n')
    (package / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from chainlit_orm import b\n")
    (package / "b.py").write_text("def f():\n    from .sub import c\n    import boto3\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "c.py").write_text(
        'import importlib\nimportlib.import_module("chainlit_orm.a")\n')
    modules = build_graph(package)
    assert {name: sorted(m.internal) for name, m in modules.items()} == {
        "chainlit_orm": ["chainlit_orm.a"],
        "chainlit_orm.a": ["chainlit_orm.b"],
        "chainlit_orm.b": ["chainlit_orm.sub.c"],
        "chainlit_orm.sub": [],
        "chainlit_orm.sub.c": ["chainlit_orm.a"],
    }
    assert modules["chainlit_orm.b"].external == {"boto3"}
    assert find_cycle(modules) == ["chainlit_orm.a", "chainlit_orm.b", "chainlit_orm.sub.c",
                                   "chainlit_orm.a"]
    assert import_kinds(package) == {"module level": 0, "function-local": 1, "TYPE_CHECKING": 1,
                                     "importlib / lazy string": 2}


# -------------------------------------------------------------------------------------- report


def import_kinds(root: Path = ROOT) -> dict[str, int]:
    """How many imports of package modules are written each way: at module level, inside a
    function, under ``if TYPE_CHECKING:``, or as a module-name string (``importlib`` and the
    lazy table of ``chainlit_orm/__init__.py``). :func:`build_graph` counts all of them."""
    counts = {"module level": 0, "function-local": 0, "TYPE_CHECKING": 0,
              "importlib / lazy string": 0}
    names = {_module_name(path, root) for path in root.rglob("*.py")} - {PACKAGE}

    def internal(node: ast.AST) -> bool:
        if isinstance(node, ast.Import):
            return any(a.name.startswith(PACKAGE) for a in node.names)
        return isinstance(node, ast.ImportFrom) and (
            bool(node.level) or (node.module or "").startswith(PACKAGE))

    def visit(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, "function-local" if kind == "module level" else kind)
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(child, "TYPE_CHECKING")
            elif isinstance(child, ast.Import | ast.ImportFrom):
                counts[kind] += internal(child)
            elif isinstance(child, ast.Constant) and child.value in names:
                counts["importlib / lazy string"] += 1
            else:
                visit(child, kind)

    for path in sorted(root.rglob("*.py")):
        visit(ast.parse(path.read_text(encoding="utf-8")), "module level")
    return counts


def report(out: object = None) -> None:
    """Print, as Markdown, the package-level import graph, the four rules of issue 15 checked on
    it, and the ten largest modules (for a change's closing note)."""
    stream: Any = out or sys.stdout
    modules = build_graph()

    def say(text: str = "") -> None:
        print(text, file=stream)

    say("# chainlit_orm import graph (read with `ast`)")
    say()
    say(f"{len(modules)} modules. Every import of a package module counts, wherever it is "
        "written:")
    say()
    for kind, count in import_kinds().items():
        say(f"- {kind}: {count}")
    say()
    say("## Package-level graph")
    say()
    say("`layers.sql` and `layers.dynamodb` are parts of their own; an edge is any module of "
        "the source part importing any module of the target part.")
    say()
    say("```")
    for source, targets in sorted(package_edges(modules).items()):
        say(f"{source} -> {', '.join(sorted(targets)) or '-'}")
    say("```")
    say()
    say("## Rules")
    say()
    schema_io = _offenders(modules, "schema_gen", IO_PACKAGES) + sorted(
        f"{m.name} -> {t}" for m in modules.values() if _in(m.name, f"{PACKAGE}.schema_gen")
        for t in m.external if any(_in(t, io) for io in IO_MODULES))
    rules = {
        "module-level import cycle": find_cycle(modules),
        "schema_gen imports of I/O (package parts or drivers)": schema_io,
        "layers.sql -> layers.dynamodb": _offenders(modules, "layers.sql", ["layers.dynamodb"]),
        "layers.dynamodb -> layers.sql": _offenders(modules, "layers.dynamodb", ["layers.sql"]),
        "storage -> layers": _offenders(modules, "storage", ["layers"]),
        "imports of another module's private names": private_imports(),
        "private top-level names defined twice": {
            name: where for name, where in private_top_level_names().items() if len(where) > 1},
    }
    for rule, found in rules.items():
        say(f"- {rule}: {found if found else 'none'}")
    say()
    say("## Ten largest modules")
    say()
    say("| lines | module |")
    say("|---:|---|")
    for module in sorted(modules.values(), key=lambda m: -m.lines)[:10]:
        say(f"| {module.lines} | `{module.path.relative_to(ROOT.parent)}` |")


if __name__ == "__main__":
    report()
