"""The models of a run: the roles a method can ask for, and the set the runner loaded."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from specbench.errors import PluginError
from specbench.models.base import LanguageModel, Tokenizer

if TYPE_CHECKING:
    from specbench.models.specs import ModelsSpec


class ModelRole(str, Enum):
    """A model a method can ask for."""

    TARGET = "target"
    DRAFT = "draft"


class MethodModels:
    """The models a method works with, and their specs.

    ``target`` is loaded only when some method of the run needs it in-process (``needs``
    holds ``ModelRole.TARGET``); a run of external engines alone loads only ``tokenizer``
    (the target's, which the runner encodes prompts with) and hands engines ``specs``.
    """

    def __init__(
        self,
        target: LanguageModel | None = None,
        draft: LanguageModel | None = None,
        *,
        tokenizer: Tokenizer | None = None,
        specs: ModelsSpec | None = None,
    ) -> None:
        if tokenizer is None:
            if target is None:
                raise ValueError("MethodModels needs a target model or a tokenizer")
            tokenizer = target.tokenizer
        self._target = target
        self.draft = draft
        self.tokenizer: Tokenizer = tokenizer
        self.specs = specs

    @property
    def target(self) -> LanguageModel:
        """The in-process target model."""
        if self._target is None:
            raise PluginError(
                "this method needs the in-process target model and none was loaded",
                "declare needs = {ModelRole.TARGET} on the method",
            )
        return self._target

    @property
    def loaded_target(self) -> LanguageModel | None:
        """The in-process target, or ``None`` when the run loaded none (engines only)."""
        return self._target

    @property
    def loaded(self) -> list[LanguageModel]:
        """The in-process models of the run (none for engine-only runs)."""
        return [m for m in (self._target, self.draft) if m is not None]

    def require_draft(self) -> LanguageModel:
        if self.draft is None:
            raise PluginError(
                "this method needs a draft model and none was loaded",
                "add a [models.draft] table to the preset",
            )
        return self.draft

    def require_specs(self) -> ModelsSpec:
        """The preset's model specs (engines build their own models from them)."""
        if self.specs is None:
            raise PluginError("this method needs the preset's model specs and has none")
        return self.specs
