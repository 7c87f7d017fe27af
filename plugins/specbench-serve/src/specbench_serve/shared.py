"""Servers shared by the load levels of one configuration.

``--concurrency 1,4,16`` turns one preset method into one method per level; they all ask for
the same server. Each level joins the server's users when it is built (so the server knows
the most requests any level keeps in flight before it starts), the first level to run starts
it, and the last level to close stops it: one start per configuration, not one per level.
Users are held weakly: an instance built and dropped without being closed (the audit builds
a method's plain twin to ask what it is) does not keep the server up.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from specbench.api import ServerProcess


@dataclass
class _Shared:
    users: weakref.WeakSet[object] = field(default_factory=weakref.WeakSet)
    slots: int = 1
    server: ServerProcess | None = None


_SERVERS: dict[str, _Shared] = {}


def join(key: str, user: object, slots: int) -> None:
    """``user`` will need the server ``key`` for ``slots`` requests at once."""
    shared = _SERVERS.setdefault(key, _Shared())
    shared.users.add(user)
    shared.slots = max(shared.slots, slots)


def start(key: str, build: Callable[[int], ServerProcess], timeout_s: float,
          hint: str) -> tuple[ServerProcess, bool]:  # fmt: skip
    """The running server ``key``, started now (``True``) if it was not running."""
    shared = _SERVERS.setdefault(key, _Shared())
    if shared.server is not None and shared.server.exit_code is None:
        return shared.server, False
    server = build(shared.slots)
    server.start(timeout_s, hint)
    shared.server = server
    return server, True


def leave(key: str, user: object) -> None:
    """``user`` is done; the last user to leave stops the server."""
    shared = _SERVERS.get(key)
    if shared is None:
        return
    shared.users.discard(user)
    if not shared.users:
        if shared.server is not None:
            shared.server.stop()
        del _SERVERS[key]
