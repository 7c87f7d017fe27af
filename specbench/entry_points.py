"""Plugins through one door: every entry-point group (methods, backends, trackers) is read here.

A class registered under a group must subclass the group's base class and call itself by its
entry point's name (``name``). A plugin that fails to load is recorded with its error, never
raised: one broken package must not take the others down.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar, cast

T = TypeVar("T")


@dataclass(frozen=True)
class LoadedEntry(Generic[T]):
    """A class that loaded, with the distribution that provides it."""

    name: str
    cls: type[T]
    package: str
    version: str
    value: str


@dataclass(frozen=True)
class BrokenEntry:
    """An entry point that failed to load, and why (``Type: message``)."""

    name: str
    package: str
    version: str
    value: str
    error: str


@dataclass
class LoadedGroup(Generic[T]):
    """Every entry point of one group, by name: the loaded and the broken."""

    loaded: dict[str, LoadedEntry[T]] = field(default_factory=dict)
    broken: dict[str, BrokenEntry] = field(default_factory=dict)


def load_entry_points(
    group: str, base: Callable[..., T], check: Callable[[type[T]], None] | None = None
) -> LoadedGroup[T]:
    """Load every class registered under ``group``, in name order.

    Each must subclass ``base`` (the group's base class, abstract or not: typed as a callable
    because mypy refuses abstract classes as ``type[T]``) and have ``name`` equal to its entry
    point's name; ``check`` adds a group's own requirement (raise to reject). Failures land in
    ``broken``.
    """
    group_found: LoadedGroup[T] = LoadedGroup()
    for entry in sorted(entry_points(group=group), key=lambda e: e.name):
        package, version = distribution_of(entry)
        try:
            cls = _load_class(entry, base)
            if check is not None:
                check(cls)
            if entry.name in group_found.loaded:
                other = group_found.loaded[entry.name].package
                raise TypeError(f"the name '{entry.name}' is already provided by {other}")
        except Exception as error:  # a broken plugin must not take the others down
            group_found.broken[entry.name] = BrokenEntry(
                entry.name, package, version, entry.value, f"{type(error).__name__}: {error}"
            )
            continue
        group_found.loaded[entry.name] = LoadedEntry(entry.name, cls, package, version, entry.value)
    return group_found


def _load_class(entry: EntryPoint, base: Callable[..., T]) -> type[T]:
    loaded = entry.load()
    base_class = cast(type, base)
    if not (isinstance(loaded, type) and issubclass(loaded, base_class)):
        raise TypeError(f"{entry.value} is not a {base_class.__name__} subclass")
    declared = getattr(loaded, "name", entry.name)
    if declared != entry.name:
        raise TypeError(
            f"{entry.value} calls itself '{declared}' but is registered as '{entry.name}'"
        )
    return cast("type[T]", loaded)


def distribution_of(entry: EntryPoint) -> tuple[str, str]:
    """The installed distribution providing ``entry``: its name and version."""
    dist = entry.dist
    if dist is None:
        return "unknown", "unknown"
    return dist.metadata["Name"] or dist.name, dist.version
