"""A pydantic model's fields as rows (name, type, default, description): for ``specbench
methods`` and ``backends`` tables and the generated reference pages alike."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Literal, Union, get_args, get_origin

from pydantic import BaseModel


@dataclass(frozen=True)
class FieldRow:
    """One field as the model declares it; ``default`` is ``required`` when there is none."""

    name: str
    type: str
    default: str
    description: str


def field_rows(model: type[BaseModel], skip: Sequence[str] = ()) -> list[FieldRow]:
    """Every field of ``model`` but ``skip``, in declaration order."""
    rows = []
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        default = info.get_default(call_default_factory=True)
        shown = "required" if info.is_required() else repr(default)
        rows.append(FieldRow(name, type_name(info.annotation), shown, info.description or ""))
    return rows


def type_name(annotation: object) -> str:
    """``int``, ``float | None``, ``'eager' | 'static'`` (a Literal lists its values)."""
    origin = get_origin(annotation)
    if origin is Literal:
        return " | ".join(repr(value) for value in get_args(annotation))
    if origin is Annotated:
        return type_name(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return " | ".join(type_name(arg) for arg in get_args(annotation))
    if annotation is type(None):
        return "None"
    name = getattr(annotation, "__name__", None)
    if isinstance(name, str) and not get_args(annotation):
        return name
    return str(annotation).replace("typing.", "")
