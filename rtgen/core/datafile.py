"""Small user data files (criteria sets, scorecard templates): JSON, or YAML by suffix, read into
plain Python values, every problem one `DataError` that names the file and, where known, the line."""

from __future__ import annotations

import json
from pathlib import Path

from rtgen.core.errors import DataError

YAML_SUFFIXES = (".yaml", ".yml")


def read_json_or_yaml(path: str | Path, what: str, yaml_allowed: bool = True):
    """The parsed content of `path`: YAML when `yaml_allowed` and its suffix is .yaml or .yml, else JSON.
    `what` names the file in errors ("criteria file": "criteria file not found")."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(path, f"{what} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"cannot read the {what}: {e}") from None
    if yaml_allowed and path.suffix.lower() in YAML_SUFFIXES:
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise DataError(path, f"not valid YAML ({getattr(e, 'problem', None) or e})",
                            line=mark.line + 1 if mark is not None else None) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, f"not valid JSON ({e.msg})", line=e.lineno) from None
