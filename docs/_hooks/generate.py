"""MkDocs hook: the reference pages that must never go stale are generated at build time.

- `cli.md` from the typer app (every command and sub-command, its help, arguments and options);
- `configs.md` from the config schema (the `train` section, every task's sections and every
  registered model's architecture keys: type, range or choices, default, and the comment the source
  gives the field);
- in any page, `<!-- hub-models -->` becomes the table of shipped checkpoints (from
  `rtgen/hub/manifest.json`) and `<!-- model-card: NAME -->` the model card of `rtgen/hub/NAME/`, its
  headings moved down two levels so that it sits under the page's own.

The hook imports rtgen the way a user's program does, so a renamed command, key or model fails the
strict build instead of leaving a wrong page behind.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import re
import sys
import tokenize
import types
import typing
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GENERATED_NOTE = ("<!-- Generated at build time by docs/_hooks/generate.py; edit the code, not this page. -->\n"
                  "!!! note \"Generated page\"\n    This page is generated from the code each time the site is built, "
                  "so it always matches the installed rtgen.\n\n")


# ---------------------------------------------------------------------------------------------- CLI

def _cell(text) -> str:
    """A Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _param_row(param, ctx) -> tuple[str, str] | None:
    """(the argument or option as `--help` writes it, its help with default and required marks)."""
    record = param.get_help_record(ctx)
    if record is None:
        if getattr(param, "param_type_name", "") != "argument":
            return None
        record = (param.human_readable_name, getattr(param, "help", "") or "")
    decl, help_text = record
    return f"`{decl}`", _cell(help_text)


def _command_section(cmd, path: list[str], depth: int, lines: list[str]) -> None:
    title = " ".join(path)
    lines.append(f"{'#' * depth} `{title}`\n")
    help_text = (cmd.help or cmd.short_help or "").strip()
    if help_text:
        lines.append(help_text.replace("\b\n", "") + "\n")
    subcommands = getattr(cmd, "commands", None)
    if subcommands:
        lines.append("| command | what it does |\n| --- | --- |")
        for name in sorted(subcommands):
            anchor = "-".join([*path, name]).lower()
            short = subcommands[name].get_short_help_str(120)
            lines.append(f"| [`{' '.join([*path, name])}`](#{anchor}) | {_cell(short)} |")
        lines.append("")
        for name in sorted(subcommands):
            _command_section(subcommands[name], [*path, name], min(depth + 1, 4), lines)
        return
    ctx = type(cmd).context_class(cmd, info_name=title) if hasattr(type(cmd), "context_class") else None
    usage = " ".join(cmd.collect_usage_pieces(ctx))
    lines.append(f"```text\n{title} {usage}\n```\n")
    rows = [r for r in (_param_row(p, ctx) for p in cmd.params if not getattr(p, "hidden", False)) if r]
    if rows:
        lines.append("| argument or option | meaning |\n| --- | --- |")
        lines += [f"| {a} | {b} |" for a, b in rows]
        lines.append("| `--help` | Show the help and exit. |")
        lines.append("")


def cli_markdown() -> str:
    import typer

    from rtgen.cli import app

    group = typer.main.get_command(app)
    lines = ["# Command line\n", GENERATED_NOTE,
             "Every command prints one line naming the file and the key, row or voxel when its input is "
             "wrong, never a traceback; `rtgen COMMAND --help` prints what this page lists.\n"]
    _command_section(group, ["rtgen"], 2, lines)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ configs

_BOUNDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}


def _constraints(meta) -> list[str]:
    out = []
    for m in meta:
        inner = getattr(m, "metadata", None)
        if inner is not None and not isinstance(m, (int, float, str)):  # a pydantic FieldInfo
            out += _constraints(inner)
            continue
        for attr, sym in _BOUNDS.items():
            if hasattr(m, attr) and getattr(m, attr) is not None:
                out.append(f"{sym} {getattr(m, attr)}")
        if getattr(m, "multiple_of", None) is not None:
            out.append(f"multiple of {m.multiple_of}")
        if getattr(m, "min_length", None) is not None:
            out.append(f"at least {m.min_length} items")
        if getattr(m, "max_length", None) is not None:
            out.append(f"at most {m.max_length} items")
    return out


def _type_text(tp) -> tuple[str, list[str]]:
    """(type, constraints) of an annotation, in words a config writer reads."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        base, *meta = args
        text, cons = _type_text(base)
        return text, cons + _constraints(meta)
    if origin in (typing.Union, types.UnionType):
        parts, cons, nullable = [], [], False
        for a in args:
            if a is type(None):
                nullable = True
                continue
            t, c = _type_text(a)
            parts.append(t)
            cons += c
        text = " or ".join(parts)
        return (text + " or null" if nullable else text), cons
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" if a is not None else "null" for a in args), []
    if origin in (list, tuple, dict, set):
        inner, cons = [], []
        for a in args:
            if a is Ellipsis:
                continue
            t, c = _type_text(a)
            inner.append(t)
            cons += c
        if origin is tuple and args and Ellipsis not in args:  # a fixed-length tuple: [a, b]
            return "[" + ", ".join(inner) + "]", cons
        if origin is dict:
            return (f"mapping of {inner[0]} to {inner[1]}" if len(inner) == 2 else "mapping"), cons
        return (f"list of {inner[0]}" if inner else "list"), cons
    if isinstance(tp, type):
        if issubclass(tp, enum.Enum):
            return "one of " + ", ".join(f"`{m.value}`" for m in tp), []
        return {"str": "text", "bool": "true/false", "NoneType": "null"}.get(tp.__name__, tp.__name__), []
    return str(tp).replace("typing.", ""), []


_REBUILT = "_rtgen_source."  # rtgen.core.source_registry's prefix for classes rebuilt from their source


def _module_name(cls) -> str:
    return cls.__module__.removeprefix(_REBUILT)


def _class_source(cls) -> str | None:
    """The `class` statement of `cls`, read from its file without importing the module."""
    import ast
    import textwrap

    try:
        from rtgen.core.source_registry import module_file

        path = Path(module_file(_module_name(cls)))
    except Exception:  # noqa: BLE001 (no source registry: ask inspect, which imports)
        import inspect

        try:
            return inspect.getsource(cls)
        except (OSError, TypeError):
            return None
    text = path.read_text()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            return textwrap.dedent("\n".join(text.splitlines()[start - 1:node.end_lineno])) + "\n"
    return None


def _comments(cls) -> dict[str, str]:
    """Field name -> the comment written beside (or just above) it in the class body."""
    source = _class_source(cls)
    if not source:
        return {}
    found: dict[str, str] = {}
    pending: list[str] = []
    line_field: dict[int, str] = {}
    for i, line in enumerate(source.splitlines(), 1):
        m = re.match(r"\s{4}(\w+)\s*:", line)
        if m and not line.strip().startswith("#"):
            line_field[i] = m.group(1)
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, IndentationError):
        return {}
    last_field_line = None
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            row = tok.start[0]
            if row in line_field:
                found[line_field[row]] = " ".join([*pending, text]).strip()
                pending = []
            elif last_field_line is not None and row == last_field_line + 1 and source.splitlines()[row - 1].startswith(" " * 8):
                continue
            else:
                pending.append(text)
        elif tok.type == tokenize.NAME and tok.start[0] in line_field and tok.start[1] == 4:
            name = line_field[tok.start[0]]
            if pending and name not in found:
                found[name] = " ".join(pending)
            pending = []
            last_field_line = tok.start[0]
        elif tok.type == tokenize.NAME and tok.string in ("def", "class") and tok.start[1] == 4:
            pending = []
    return found


def _default_text(f) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        try:
            value = f.default_factory()  # type: ignore[misc]
        except Exception:  # noqa: BLE001 (a factory that needs context: say so rather than guess)
            return "computed"
    else:
        return "required"
    if dataclasses.is_dataclass(value):
        return "see below"
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'`"{value}"`' if value else '`""`'
    return f"`{_yaml_value(value)}`"


def _yaml_value(value) -> str:
    """A default as it would be written in a config file (flow-style YAML)."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_value(v)}" for k, v in value.items()) + "}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# What the trainer's keys mean where the source gives no comment (the `train` section).
_TRAIN_NOTES = {
    "epochs": "passes over the training data (each at most max_steps_per_epoch steps)",
    "batch_size": "training items (slices, cubes or patients, as the task draws them) per optimiser step",
    "lr": "peak learning rate of AdamW, after the linear warm-up; cosine decay follows",
    "weight_decay": "AdamW weight decay",
    "warmup_steps": "optimiser steps of linear warm-up",
    "seed": "fixes initialisation, data order, augmentation and the task's random draws",
    "device": "auto, cpu, cuda or cuda:N (auto: CUDA when present)",
    "max_steps_per_epoch": "cap on optimiser steps per epoch; null: the whole training set",
    "val_batch_size": "items per forward pass during validation",
    "out": "run folder (rtgen train --out overrides it)",
}


def _section_table(cls, presets: dict | None = None, fallback: dict | None = None) -> list[str]:
    hints = typing.get_type_hints(cls, include_extras=True)
    notes = {**(fallback or {}), **_comments(cls)}
    rows = ["| key | type | range | default | meaning |", "| --- | --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        text, cons = _type_text(hints.get(f.name, f.type))
        default = _default_text(f)
        if presets and f.name in presets:
            default = f"fixed: `{presets[f.name]!r}`"
        rows.append(f"| `{f.name}` | {_cell(text)} | {_cell(', '.join(cons))} | {_cell(default)} | "
                    f"{_cell(notes.get(f.name, ''))} |")
    return rows


def _doc_line(cls) -> str:
    doc = (cls.__doc__ or "").strip()
    if not doc or doc.startswith(cls.__name__ + "("):  # dataclass's generated signature
        return ""
    return " ".join(doc.split("\n\n")[0].split())


@dataclasses.dataclass
class _Entry:
    name: str
    task: str = ""
    config: type | None = None
    presets: dict = dataclasses.field(default_factory=dict)
    description: str = ""
    sections: dict = dataclasses.field(default_factory=dict)


def _registries() -> tuple[type, list[_Entry], list[_Entry]]:
    """(TrainConfig, tasks, models). Read from the source files where rtgen can (no torch: fast), else
    by importing the registries."""
    try:
        from rtgen.core import source_registry as sr

        models_idx, tasks_idx = sr.source_index("rtgen.models"), sr.source_index("rtgen.tasks")
        if models_idx.dynamic or tasks_idx.dynamic:
            raise LookupError("some modules register dynamically")
        train = sr.source_object("rtgen.engine.config", "TrainConfig")
        tasks = [_Entry(t.name, description=t.description, sections=sr.task_sections(t))
                 for t in sorted(tasks_idx.tasks.values(), key=lambda t: t.name)]
        models = [_Entry(m.name, m.task, sr.model_config_class(m), dict(m.presets), m.description)
                  for m in sorted(models_idx.models.values(), key=lambda m: m.name)]
        return train, tasks, models
    except (ImportError, LookupError, AttributeError):
        from rtgen.core.registry import MODELS, TASKS

        tasks = [_Entry(t.name, description=t.description, sections=dict(getattr(t.cls, "sections", {}) or {}))
                 for t in TASKS.entries()]
        models = [_Entry(m.name, m.task, m.config, dict(m.presets), m.description or _doc_line(m.cls))
                  for m in MODELS.entries()]
        from rtgen.engine.config import TrainConfig

        return TrainConfig, tasks, models


def configs_markdown() -> str:
    train, tasks, models = _registries()
    lines = ["# Configs\n", GENERATED_NOTE,
             "A run config is a YAML file of sections: `model` (the network's `name` and its architecture "
             "keys), `train` (the trainer's), an optional `task` (the model's own task by default), and the "
             "sections the task owns. Any key can be overridden on the command line as `section.key=value` "
             "(the value is read as YAML: `model.channels=[16,32,64,128]`, `train.init=` for empty).\n",
             "```bash\nrtgen train configs/mamba_unet_v2_cpu.yaml train.epochs=3 data.train=data/openkbp/train-pats\n```\n",
             "Every section is checked before any data is read: a wrong type, a value out of range or an "
             "unknown key is one line naming the file and the key, for example "
             "`error: configs/x.yaml: train.epochs: Input should be a valid integer (got 'ten')`. "
             "The files in `configs/` are named `<model>[_<size>][_<stage>].yaml`: no size is the paper's "
             "size, `cpu` the size the shipped CPU models were trained at.\n"]

    lines.append("## Tasks and their sections\n")
    lines.append("| task | sections besides `model` and `train` | models that train on it by default |")
    lines.append("| --- | --- | --- |")
    section_users: dict[tuple[str, type], list[str]] = {}
    for t in tasks:
        secs = t.sections
        for name, cls in secs.items():
            section_users.setdefault((name, cls), []).append(t.name)
        links = ", ".join(f"[`{n}`](#{_anchor(n, c)})" for n, c in secs.items()) or "none"
        names = ", ".join(f"`{m.name}`" for m in models if m.task == t.name) or ""
        lines.append(f"| `{t.name}` | {links} | {names} |")
    lines.append("")

    lines.append("## `train`: the trainer (every task)\n")
    lines += _section_table(train, fallback=_TRAIN_NOTES)
    lines.append("")

    lines.append("## Task sections\n")
    for (name, cls), users in sorted(section_users.items(), key=lambda kv: (kv[0][0], kv[1][0])):
        lines.append(f"### `{name}` ({', '.join(users)}) {{#{_anchor(name, cls)}}}\n")
        doc = _doc_line(cls)
        if doc:
            lines.append(doc + "\n")
        lines += _section_table(cls)
        lines.append("")
        nested = [f for f in dataclasses.fields(cls) if dataclasses.is_dataclass(_first_dataclass(cls, f))]
        for f in nested:
            sub = _first_dataclass(cls, f)
            lines.append(f"#### `{name}.{f.name}`\n")
            lines += _section_table(sub)
            lines.append("")

    lines.append("## `model`: architecture keys of each registered network\n")
    lines.append("`model.name` picks the network; the other keys of `model` are its config's. Keys marked "
                 "*fixed* define that name (the same network class registered under several names).\n")
    for m in models:
        lines.append(f"### `{m.name}`\n")
        lines.append(f"{_cell(m.description)} Default task: `{m.task}`; config class "
                     f"`{_module_name(m.config)}.{m.config.__qualname__}`.\n")
        lines += _section_table(m.config, m.presets)
        lines.append("")
    return "\n".join(lines) + "\n"


def _first_dataclass(owner, f):
    hints = typing.get_type_hints(owner, include_extras=True)
    tp = hints.get(f.name, f.type)
    for cand in (tp, *typing.get_args(tp)):
        if isinstance(cand, type) and dataclasses.is_dataclass(cand):
            return cand
    return None


def _anchor(section: str, cls) -> str:
    return f"section-{section}-{cls.__name__.lower()}"


# --------------------------------------------------------------------------------- hub and cards

def hub_table() -> str:
    """The shipped checkpoints as `rtgen.hub` reads its manifest (README.md's table, with scores and
    times, is `rtgen.hub.table`'s)."""
    from rtgen.hub import manifest, shipped_models

    defaults: dict[str, list[str]] = {}
    for task, name in manifest().get("default", {}).items():
        defaults.setdefault(name, []).append(task)
    rows = ["| name | network | task | data | trained on | default for | what it is |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for m in shipped_models():
        rows.append(f"| `hub:{m.folder}` | `{m.model}` | `{m.task}` | {_cell(m.data)} | {_cell(m.trained_on)} | "
                    f"{', '.join(f'`{t}`' for t in defaults.get(m.folder, []))} | {_cell(m.description)} |")
    return "\n".join(rows) + "\n"


def model_card(name: str) -> str:
    path = ROOT / "rtgen" / "hub" / name / "MODEL_CARD.md"
    text = path.read_text()
    out = []
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if not in_code and line.startswith("#"):
            line = "##" + line
        out.append(line)
    return (f'??? info "Model card of `hub:{name}` (`rtgen/hub/{name}/MODEL_CARD.md`)"\n\n'
            + "\n".join("    " + ln if ln else "" for ln in out) + "\n")


_CARD = re.compile(r"<!--\s*model-card:\s*([\w.-]+)\s*-->")


# ------------------------------------------------------------------------------------ MkDocs API

_PAGES = {"cli.md": cli_markdown, "configs.md": configs_markdown}


def on_files(files, config, **kwargs):
    for src, make in _PAGES.items():
        existing = files.get_file_from_path(src)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, src, content=make()))
    return files


def on_page_markdown(markdown: str, page, config, files, **kwargs):
    if "<!-- hub-models -->" in markdown:
        markdown = markdown.replace("<!-- hub-models -->", hub_table())
    return _CARD.sub(lambda m: model_card(m.group(1)), markdown)
