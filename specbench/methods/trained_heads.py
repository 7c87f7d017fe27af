"""The base of methods whose drafter is a trained head on the target's own states (EAGLE-3,
Medusa): what they share is finding, training and checking the head, not how it drafts.

A method gives ``kind`` (the head store's name for it), where its params name a head
(``given``), how to load one (``load``), how to train one (``trainer``, ``training``), how
to use a loaded one (``use``: check it fits, move it to the target's device and dtype, build
the proposer) and the one line that describes a trained one (``describe``). The target must
offer :class:`~specbench.models.capabilities.InternalStates`.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from typing_extensions import TypeVar

from specbench.heads.store import Trainer, heads_for
from specbench.methods.in_process import InProcessMethod, OneSequenceParams
from specbench.models.capabilities import InternalStates, internal_states
from specbench.plugins import MethodModels, RunContext

H = TypeVar("H", bound=OneSequenceParams, default=OneSequenceParams)


class TrainedHeadsMethod(InProcessMethod[H]):
    """A method drafting with trained heads (see the module docstring)."""

    kind: ClassVar[str] = ""

    def __init__(self, params: H, models: MethodModels) -> None:
        super().__init__(params, models)
        self.states: InternalStates = internal_states(models.target, self.name)
        self.ready = False
        source = self.given()
        if source is not None:
            self.use(self.load(source), source)
            self.ready = True

    @abstractmethod
    def given(self) -> str | None:
        """The head folder or hub id the params name (``None``: the one trained for this
        target and these settings)."""

    @abstractmethod
    def load(self, source: str) -> Any:
        """Load a head from a folder or hub id."""

    @abstractmethod
    def training(self) -> Any:
        """The training settings (part of the trained head's key)."""

    @abstractmethod
    def trainer(self) -> Trainer:
        """The function that trains (or finds) the heads: ``specbench.heads.*_training``."""

    @abstractmethod
    def use(self, heads: Any, source: str) -> None:
        """Check ``heads`` fits the target, move it there, and build the proposer."""

    @abstractmethod
    def describe(self, folder: Path, meta: dict[str, Any]) -> str:
        """One line about trained heads (their folder and holdout accuracy)."""

    def _trained(self, context: RunContext, train: bool, force: bool = False) -> str:
        """Use the heads trained for this target and these settings (training them when
        ``train``); a one-line summary of them."""
        target = self.models.target
        folder, meta = heads_for(
            context, target, self.kind, self.training(), self.trainer(), train, force
        )
        self.use(self.load(str(folder)), str(folder))
        self.ready = True
        return f"{context.label}: {self.describe(folder, meta)}"

    def prepare(self, context: RunContext) -> None:
        if not self.ready:
            self._trained(context, train=context.train_missing)

    def train(self, context: RunContext) -> str | None:
        if self.given() is not None:
            return None  # given heads: nothing to train
        return self._trained(context, train=True, force=context.force_train)
