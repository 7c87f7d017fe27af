"""Preset files in TOML, YAML or JSON: one schema, the format chosen by the file's extension.

Parse errors carry the line the parser names; for YAML, validation errors get the line of the
field they are about (``yaml_lines``), so ``validate`` can say ``preset.yaml:12: methods[0]...``.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import tomllib

Format = Literal["toml", "yaml", "json"]
SUFFIXES: dict[str, Format] = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json"}


class PresetSyntaxError(ValueError):
    """A file that does not parse; ``line`` is 1-based when the parser says where."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def format_of(suffix: str) -> Format | None:
    return SUFFIXES.get(suffix.lower())


def parse(text: str, fmt: Format) -> dict[str, Any]:
    """The raw preset table of ``text``; a top level that is not a table is an error."""
    if fmt == "toml":
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise PresetSyntaxError(f"not valid TOML ({error})", _toml_line(error)) from error
    elif fmt == "yaml":
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise PresetSyntaxError(f"not valid YAML ({problem})", line) from error
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise PresetSyntaxError(f"not valid JSON ({error.msg})", error.lineno) from error
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PresetSyntaxError(
            f"the top level must be a table of settings, not {type(data).__name__}"
        )
    return data


def dump(data: dict[str, Any], fmt: Format) -> str:
    """``data`` written in ``fmt`` (comments of the original are not kept)."""
    if fmt == "toml":
        import tomli_w

        return str(tomli_w.dumps(_without_none(data)))
    if fmt == "yaml":
        import yaml

        return str(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100))
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _without_none(value: Any) -> Any:
    """TOML has no null: drop keys whose value is None (the schema's default applies)."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def _toml_line(error: tomllib.TOMLDecodeError) -> int | None:
    line = getattr(error, "lineno", None)
    if isinstance(line, int):
        return line
    text = str(error)
    marker = "(at line "
    if marker in text:
        digits = text.split(marker, 1)[1].split(",", 1)[0]
        return int(digits) if digits.isdigit() else None
    return None


def yaml_lines(text: str) -> dict[str, int]:
    """1-based line of every key and list item, keyed by display path (``methods[0].params.k``,
    the form preset issues use)."""
    import yaml

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = str(key.value)
                child = f"{path}.{name}" if path else name
                lines[child] = key.start_mark.line + 1
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                child = f"{path}[{index}]"
                lines[child] = item.start_mark.line + 1
                walk(item, child)

    if root is not None:
        walk(root, "")
    return lines


def line_of(path: str, lines: dict[str, int]) -> int | None:
    """The line of ``path`` or of its nearest parent that has one."""
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return None
