"""The registries read from the source files, without importing them: checking a config in a second.

Importing the networks imports PyTorch, MONAI, diffusers and the rest (seconds of CPU), and a config
with `epochs: ten` should not wait for that before its one-line error. So the CLI checks a run config
against what this module reads with `ast` from `rtgen/models/*.py` and `rtgen/tasks/**.py`:

- every `@register_model("name", config=XConfig, task="...", **presets)` (a decorator, or the call
  `register_model(...)(Cls)` at the top of a module) and every `@register_task("name")`, with their
  literal arguments and the class docstring that `rtgen models` shows;
- each config dataclass (a model's `config=`, a task's `sections`), rebuilt from its `class` statement
  in a small namespace: the module's imports from `dataclasses`, `typing`, `pydantic` and a few more
  light modules, the module's constants and helper functions it uses, and other rtgen dataclasses it
  names, rebuilt the same way. The rebuilt class is the source's class, executed again: same fields,
  types, defaults, ranges and `__post_init__` checks (a test compares every one with the real class).

What cannot be rebuilt so (a name imported from torch, a registration with a computed name) falls
back to importing the module: slower, never wrong. Nothing is generated for these checks, so a new
model stays one file; register it with a literal name (as `rtgen/models/unet2d.py` does) for its
configs to be checked in a second. (`rtgen models` also reads the recorded parameter counts:
`parameter_table`.)
"""

from __future__ import annotations
import __future__

import ast
import builtins
import importlib
import importlib.util
import sys
import types
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

LIGHT_MODULES = frozenset(sys.stdlib_module_names) | {"pydantic", "pydantic_core", "annotated_types",
                                                       "typing_extensions", "yaml"}
"""What a rebuilt definition may import for real (the standard library, pydantic, PyYAML): milliseconds."""

_PREFIX = "_rtgen_source."  # the rebuilt classes' module names (pydantic resolves string annotations there)


class NotStatic(Exception):
    """A definition that cannot be rebuilt from the source alone; its module is imported instead."""


@dataclass(frozen=True)
class SourceModel:
    name: str
    module: str  # dotted name of the file that registers it
    cls: str  # the network class
    config: str  # the config dataclass's name, as written in the registering module
    task: str
    presets: dict = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class SourceTask:
    name: str
    module: str
    cls: str
    description: str = ""


@dataclass
class SourceIndex:
    """What a package registers, as read from its files; `dynamic` lists modules that register in a
    way not read here (their entries are known only by importing them)."""

    models: dict[str, SourceModel] = field(default_factory=dict)
    tasks: dict[str, SourceTask] = field(default_factory=dict)
    dynamic: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- files


def _locations(package: str) -> list[Path]:
    """The folders of a package, found without importing it or its parents (importing `rtgen.data`
    to find `rtgen.data.transforms` would import what this module avoids)."""
    top, *rest = package.split(".")
    spec = importlib.util.find_spec(top)  # a top-level name is found, not imported
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec is not None else []
    for part in rest:
        roots = [r / part for r in roots if (r / part / "__init__.py").is_file()]
    return roots


def package_files(package: str) -> dict[str, Path]:
    """Dotted module name -> file of every module the registry imports from `package` (its
    sub-packages whole), found without importing the package itself."""
    files: dict[str, Path] = {}
    for root in _locations(package):
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("").parts
            if rel[0].startswith("_") or "__pycache__" in rel:  # `Registry.load` skips private modules
                continue
            parts = rel[:-1] if rel[-1] == "__init__" else rel
            files[".".join((package, *parts))] = path
    return files


def module_file(module: str) -> Path:
    """The source file of a module, without importing it or its package."""
    head, _, tail = module.rpartition(".")
    roots = _locations(head) if head else []
    if not head:
        spec = importlib.util.find_spec(module)
        roots = [Path(spec.origin).parent] if spec is not None and spec.origin else []
        tail = Path(spec.origin).stem if roots else tail
    for root in roots:
        for path in (root / f"{tail}.py", root / tail / "__init__.py"):
            if path.is_file():
                return path
    raise NotStatic(f"{module}: not found")


@cache
def _parse(path: Path, mtime: float) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def parse_module(module: str, path: Path | None = None) -> tuple[ast.Module, Path]:
    path = path or module_file(module)
    return _parse(path, path.stat().st_mtime), path


# ---------------------------------------------------------------- registrations


def _call_name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        raise NotStatic(ast.unparse(node)) from None


def _classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}


def _registration(call: ast.Call, cls: str, module: str, classes: dict[str, ast.ClassDef]):
    kind = _call_name(call.func)
    if len(call.args) != 1 or not isinstance(name := _literal(call.args[0]), str):
        raise NotStatic("a registered name that is not a literal")
    kw = {k.arg: k.value for k in call.keywords}
    if None in kw:  # **presets
        raise NotStatic("registration with **kwargs")
    doc = ast.get_docstring(classes[cls]) if cls in classes else None
    if "description" in kw:
        description = _literal(kw.pop("description"))
    elif cls in classes:  # as the registry shows a class without a description
        from rtgen.core.registry import summary

        description = summary(doc)
    else:
        raise NotStatic(f"{cls} is not defined in {module}: its docstring is unknown")
    if kind == "register_task":
        if kw:
            raise NotStatic("register_task with unknown arguments")
        return "task", SourceTask(name, module, cls, description)
    config, task = kw.pop("config", None), kw.pop("task", None)
    if not isinstance(config, ast.Name) or task is None:
        raise NotStatic("register_model without a named config class and a task")
    return "model", SourceModel(name, module, cls, config.id, _literal(task),
                                {k: _literal(v) for k, v in kw.items()}, description)


def _registrations(module: str, tree: ast.Module) -> list:
    """The module's registrations, or NotStatic if it registers in any other way."""
    classes = _classes(tree)
    found, seen = [], set()
    for node in tree.body:
        calls: list[tuple[ast.Call, str]] = []
        if isinstance(node, ast.ClassDef):
            calls = [(d, node.name) for d in node.decorator_list
                     if isinstance(d, ast.Call) and _call_name(d.func) in ("register_model", "register_task")]
        elif (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Call)
              and _call_name(node.value.func.func) in ("register_model", "register_task")):
            arg = node.value.args
            if len(arg) != 1 or not isinstance(arg[0], ast.Name):
                raise NotStatic("a registration of an expression")
            calls = [(node.value.func, arg[0].id)]
        for call, cls in calls:
            seen.add(id(call.func))
            found.append(_registration(call, cls, module, classes))
    for node in ast.walk(tree):  # any other use (in a function, a loop, under another name)
        if isinstance(node, (ast.Name, ast.Attribute)) and _call_name(node) in ("register_model", "register_task"):
            if id(node) not in seen and isinstance(getattr(node, "ctx", None), ast.Load):
                raise NotStatic("register_model or register_task used other than as a literal registration")
    return found


def _build_index(package: str) -> SourceIndex:
    index = SourceIndex()
    for module, path in package_files(package).items():
        tree, _ = parse_module(module, path)
        try:
            entries = _registrations(module, tree)
        except NotStatic:
            index.dynamic.append(module)
            continue
        for kind, entry in entries:
            getattr(index, f"{kind}s").setdefault(entry.name, entry)
    return index


_INDEXES: dict[tuple, SourceIndex] = {}


def source_index(package: str) -> SourceIndex:
    """What `package` registers, read from its files (cached until a file changes)."""
    files = package_files(package)
    stamp = (package, tuple((m, p.stat().st_mtime) for m, p in files.items()))
    if stamp not in _INDEXES:
        _INDEXES[stamp] = _build_index(package)
    return _INDEXES[stamp]


# ---------------------------------------------------------------- rebuilding definitions


def _bound_in(node: ast.AST) -> set[str]:
    """Names bound anywhere inside `node` (arguments, assignments, loops, comprehensions, nested defs)."""
    bound: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
            bound.add(n.id)
        elif isinstance(n, ast.arg):
            bound.add(n.arg)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n is not node:
            bound.add(n.name)
        elif isinstance(n, ast.ExceptHandler) and n.name:
            bound.add(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):  # runs when the function is called, if ever
            bound.update((a.asname or a.name).split(".")[0] for a in n.names)
    return bound


def _names_read(nodes, lazy_annotations: bool) -> set[str]:
    """Names read by `nodes`, other than builtins. With postponed annotations, those of function
    signatures are never evaluated and are left out."""
    skip: set[int] = set()
    used: set[str] = set()
    for node in nodes:
        if lazy_annotations:
            for n in ast.walk(node):
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    for a in (*n.args.posonlyargs, *n.args.args, *n.args.kwonlyargs, n.args.vararg, n.args.kwarg):
                        if a is not None and a.annotation is not None:
                            skip.update(id(x) for x in ast.walk(a.annotation))
                    if n.returns is not None:
                        skip.update(id(x) for x in ast.walk(n.returns))
        used |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
                 and id(n) not in skip}
    return used - set(dir(builtins))


def _def_time_parts(node: ast.stmt, lazy_annotations: bool) -> tuple[list[ast.AST], list[ast.AST]]:
    """(parts evaluated when `node` runs, function bodies evaluated only when called)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        a = node.args
        now = [*node.decorator_list, *a.defaults, *(d for d in a.kw_defaults if d is not None)]
        if not lazy_annotations:
            now += [x.annotation for x in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg)
                    if x is not None and x.annotation is not None]
            now += [node.returns] if node.returns is not None else []
        return now, [node]
    if isinstance(node, ast.ClassDef):
        now: list[ast.AST] = [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]
        later: list[ast.AST] = []
        for stmt in node.body:
            n, lt = _def_time_parts(stmt, lazy_annotations) if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                else ([stmt], [])
            now += n
            later += lt
        return now, later
    return [node], []


def _free_names(node: ast.stmt, lazy_annotations: bool) -> tuple[set[str], set[str]]:
    """(names `node` needs when it runs, names its functions need only when called), less the names
    bound inside it."""
    now, later = _def_time_parts(node, lazy_annotations)
    bound = _bound_in(node) | ({node.name} if isinstance(node, (ast.ClassDef, ast.FunctionDef)) else set())
    # a function's own parameters and locals: bound in it; names bound elsewhere in the class are not
    # visible from its methods, but they are attributes (self.x), never bare names, in practice
    eager = _names_read(now, lazy_annotations) - bound
    return eager, _names_read(later, lazy_annotations) - bound - eager


class _Unavailable:
    """A name that only a function body uses and that cannot be rebuilt (e.g. a torch class a
    property returns): any use raises NotStatic, and the check falls back to the imported class."""

    def __init__(self, name: str, why: str):
        object.__setattr__(self, "_why", f"{name}: {why}")

    def _fail(self, *args, **kwargs):
        raise NotStatic(object.__getattribute__(self, "_why"))

    __getattr__ = __call__ = __iter__ = __contains__ = __getitem__ = __len__ = __bool__ = _fail
    __eq__ = __lt__ = __gt__ = __le__ = __ge__ = __add__ = __mul__ = __mod__ = __hash__ = _fail


def _bindings(tree: ast.Module) -> dict[str, list[ast.stmt]]:
    """Top-level statement(s) binding each name of a module."""
    out: dict[str, list[ast.stmt]] = {}
    for node in tree.body:
        names: list[str] = []
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names = [node.name]
        elif isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            if len(names) != len(node.targets):
                names += ["<unpacked>"]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            names = [node.target.id]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [(a.asname or a.name).split(".")[0] for a in node.names]
        elif isinstance(node, (ast.If, ast.Try, ast.For, ast.While, ast.With)):
            names = sorted(_bound_in(node))
        for name in names:
            out.setdefault(name, []).append(node)
    return out


class _Builder:
    """Rebuilds top-level definitions of rtgen modules in namespaces of their own."""

    def __init__(self):
        self.namespaces: dict[str, types.ModuleType] = {}

    def namespace(self, module: str) -> types.ModuleType:
        if module not in self.namespaces:
            ns = types.ModuleType(_PREFIX + module)
            sys.modules[ns.__name__] = ns  # pydantic and dataclasses look a class's module up here
            self.namespaces[module] = ns
        return self.namespaces[module]

    def get(self, module: str, name: str, stack: tuple = ()) -> Any:
        ns = self.namespace(module)
        if name in ns.__dict__:
            return ns.__dict__[name]
        if (module, name) in stack:
            raise NotStatic(f"{module}.{name}: defined in terms of itself")
        tree, path = parse_module(module)
        nodes = _bindings(tree).get(name, [])
        if len(nodes) != 1:
            raise NotStatic(f"{module}.{name}: {'not defined at the top level' if not nodes else 'bound twice'}")
        node, stack = nodes[0], (*stack, (module, name))
        lazy = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and
                   any(a.name == "annotations" for a in n.names) for n in tree.body)
        if isinstance(node, ast.ImportFrom):
            alias = next(a for a in node.names if (a.asname or a.name) == name)
            source = self._resolve(module, path, node)
            if source.startswith("rtgen.") or source == "rtgen":
                value = self.get(source, alias.name, stack)
            elif source.split(".")[0] in LIGHT_MODULES:
                value = getattr(importlib.import_module(source), alias.name)
            else:
                raise NotStatic(f"{module}.{name}: imported from {source}")
        elif isinstance(node, ast.Import):
            alias = next(a for a in node.names if (a.asname or a.name).split(".")[0] == name)
            if alias.name.split(".")[0] not in LIGHT_MODULES:
                raise NotStatic(f"{module}.{name}: the module {alias.name}")
            value = importlib.import_module(alias.name if alias.asname else alias.name.split(".")[0])
        elif isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.Assign, ast.AnnAssign)):
            eager, later = _free_names(node, lazy)
            for free in sorted(eager):
                if isinstance(self.get(module, free, stack), _Unavailable):
                    raise NotStatic(f"{module}.{free}: {ns.__dict__[free]._why}")
            for free in sorted(later):
                try:
                    self.get(module, free, stack)
                except NotStatic as e:
                    ns.__dict__[free] = _Unavailable(free, str(e))
            flags = __future__.annotations.compiler_flag if lazy else 0
            code = compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec", flags=flags, dont_inherit=True)
            try:
                exec(code, ns.__dict__)
            except Exception as e:  # noqa: BLE001 (what the real module would raise is for its import to say)
                raise NotStatic(f"{module}.{name}: {type(e).__name__}: {e}") from None
            value = ns.__dict__[name]
        else:
            raise NotStatic(f"{module}.{name}: bound by a {type(node).__name__} statement")
        ns.__dict__[name] = value
        return value

    @staticmethod
    def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        return f"{package}.{node.module}" if node.module else package


_BUILDER = _Builder()
FALLBACKS: dict[str, str] = {}
"""`module.name` -> why it was imported instead of rebuilt (tests check that no shipped config needs it)."""


def source_object(module: str, name: str, fallback: bool = True) -> Any:
    """The top-level `name` of `module`, rebuilt from its source if it can be, else (with `fallback`)
    imported. Rebuilt classes are cached; rebuilding one runs only the statements it needs."""
    try:
        return _BUILDER.get(module, name)
    except (NotStatic, SyntaxError, OSError) as e:
        if not fallback:
            raise NotStatic(str(e)) from None
        FALLBACKS[f"{module}.{name}"] = str(e)
        return getattr(importlib.import_module(module), name)


def model_config_class(entry: SourceModel, fallback: bool = True) -> type:
    """The config dataclass of a registered model, rebuilt from its file."""
    return source_object(entry.module, entry.config, fallback)


def task_sections(entry: SourceTask, fallback: bool = True) -> dict[str, type]:
    """A task's config sections (name -> dataclass): its class's `sections`, or the nearest base's."""
    module, cls = entry.module, entry.cls
    try:
        for _ in range(20):
            tree, path = parse_module(module)
            node = _classes(tree).get(cls)
            if node is None:  # imported into this module: follow the import
                nodes = _bindings(tree).get(cls, [])
                if len(nodes) != 1 or not isinstance(nodes[0], ast.ImportFrom):
                    raise NotStatic(f"{module}.{cls}: not found")
                module, cls = _Builder._resolve(module, path, nodes[0]), cls
                continue
            for stmt in node.body:
                target = stmt.target if isinstance(stmt, ast.AnnAssign) else (
                    stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else None)
                if isinstance(target, ast.Name) and target.id == "sections" and stmt.value is not None:
                    if not isinstance(stmt.value, ast.Dict):
                        raise NotStatic(f"{module}.{cls}.sections: not a literal mapping")
                    out = {}
                    for k, v in zip(stmt.value.keys, stmt.value.values):
                        if not isinstance(v, ast.Name) or k is None:
                            raise NotStatic(f"{module}.{cls}.sections: not a mapping of names to classes")
                        out[_literal(k)] = source_object(module, v.id, fallback=False)
                    return out
            if len(node.bases) != 1 or not isinstance(node.bases[0], ast.Name):
                raise NotStatic(f"{module}.{cls}: its sections come from several bases")
            base = node.bases[0].id
            nodes = _bindings(tree).get(base, [])
            if base in _classes(tree):
                cls = base
            elif len(nodes) == 1 and isinstance(nodes[0], ast.ImportFrom):
                module, cls = _Builder._resolve(module, path, nodes[0]), base
            else:
                raise NotStatic(f"{module}.{base}: not found")
        raise NotStatic(f"{entry.module}.{entry.cls}: too deep a class hierarchy")
    except (NotStatic, SyntaxError, OSError) as e:
        if not fallback:
            raise NotStatic(str(e)) from None
        FALLBACKS[f"{entry.module}.{entry.cls}.sections"] = str(e)
        return dict(getattr(importlib.import_module(entry.module), entry.cls).sections)


def real_class(cls: type) -> type:
    """The imported class a rebuilt one stands for (itself if it is not a rebuilt one)."""
    module = getattr(cls, "__module__", "")
    if not module.startswith(_PREFIX):
        return cls
    return getattr(importlib.import_module(module[len(_PREFIX):]), cls.__qualname__)


# ---------------------------------------------------------------- lookups for config checks


@dataclass(frozen=True)
class ModelSchema:
    """What a config's `model:` section is checked against."""

    name: str
    task: str
    presets: dict
    config: type


def _unknown(kind: str, name: str, names, source: str):
    from rtgen.core.errors import ConfigError

    return ConfigError(source, f"unknown {kind} {name!r}; known: {', '.join(sorted(names))}")


def model_schema(name: str, source: str = "config", package: str = "rtgen.models") -> ModelSchema | None:
    """The registered model `name` (from the source, or from the registry where it was registered in
    this process), or None when only importing the package could tell (a module registers names
    this module cannot read). An unknown name is the registry's ConfigError."""
    from rtgen.core.registry import MODELS

    live = MODELS._entries
    if name in live:
        e = live[name]
        return ModelSchema(name, e.task, dict(e.presets), e.config)
    index = source_index(package)
    if name in index.models:
        e = index.models[name]
        return ModelSchema(name, e.task, dict(e.presets), model_config_class(e))
    if index.dynamic and not MODELS._loaded:
        return None
    raise _unknown("model", name, {*index.models, *live}, source)


def task_schema(name: str, source: str = "config", package: str = "rtgen.tasks") -> dict[str, type] | None:
    """The config sections of the registered task `name` (name -> dataclass), as `model_schema`."""
    from rtgen.core.registry import TASKS

    live = TASKS._entries
    if name in live:
        return dict(live[name].cls.sections)
    index = source_index(package)
    if name in index.tasks:
        return task_sections(index.tasks[name])
    if index.dynamic and not TASKS._loaded:
        return None
    raise _unknown("task", name, {*index.tasks, *live}, source)


# ---------------------------------------------------------------- what `rtgen models` lists

PARAMETER_TABLE = ("rtgen.models", "parameter_counts.json")
"""Where the networks' parameter counts are recorded (`scripts/parameter_counts.py` writes it from
the built networks; a test checks every count against them)."""


def parameter_table() -> dict[str, int]:
    import json

    roots = _locations(PARAMETER_TABLE[0])
    path = roots[0] / PARAMETER_TABLE[1] if roots else None
    if path is None or not path.is_file():
        return {}
    return {k: int(v) for k, v in json.loads(path.read_text())["parameters"].items()}


def model_listing(parameters: bool = True, package: str = "rtgen.models") -> list[dict]:
    """Every registered network: {"model", "task", "parameters" (at its default config; with
    `parameters`), "description"}, sorted by name, as the registry has them but read from the source.
    Counts come from the recorded table; a network it does not list (a new file, or one registered in
    this process) is imported and built to count it."""
    from rtgen.core.registry import MODELS, parameter_counts

    index = source_index(package)
    if index.dynamic:  # names only importing the package can tell
        MODELS.load()
    live = dict(MODELS._entries)
    table = parameter_table() if parameters else {}
    names = sorted({*index.models, *live})
    missing = [n for n in names if n not in table]
    counted = parameter_counts(missing) if parameters and missing else {}
    rows = []
    for name in names:
        entry = live[name] if name in live else index.models[name]
        row: dict = {"model": name, "task": entry.task}
        if parameters:
            row["parameters"] = table[name] if name in table else counted[name]
        rows.append({**row, "description": entry.description})
    return rows


def task_listing(package: str = "rtgen.tasks") -> list[dict]:
    """Every registered task: {"task", "description"}, sorted by name, read from the source."""
    from rtgen.core.registry import TASKS

    index = source_index(package)
    if index.dynamic:
        TASKS.load()
    live = dict(TASKS._entries)
    return [{"task": n, "description": (live[n] if n in live else index.tasks[n]).description}
            for n in sorted({*index.tasks, *live})]
