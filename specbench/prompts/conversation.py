"""Turning a prompt's turns (and earlier answers) into the token ids a model sees."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from specbench.models.base import Tokenizer


@dataclass(frozen=True)
class PromptEncoder:
    """Encodes a conversation: through the chat template when asked and available.

    Without a chat template the conversation is plain text, turns separated by blank lines,
    and the model continues it.
    """

    tokenizer: Tokenizer
    chat_template: bool = True
    system_prompt: str | None = None

    def encode(
        self, history: Sequence[tuple[str, str]], user: str, system: str | None = None
    ) -> list[int]:
        """Ids for the next answer after ``history`` (user, answer) pairs and ``user``;
        ``system`` (a prompt's own system message) replaces the preset's system prompt."""
        system_prompt = system if system is not None else self.system_prompt
        if self.chat_template:
            messages = [
                {"role": role, "content": content}
                for role, content in self.messages(history, user, system)
            ]
            ids = self.tokenizer.chat_ids(messages)
            if ids is not None:
                return ids
        parts = [system_prompt] if system_prompt else []
        for question, answer in history:
            parts += [question, answer]
        parts.append(user)
        return self.tokenizer.encode("\n\n".join(parts))

    def messages(
        self, history: Sequence[tuple[str, str]], user: str, system: str | None = None
    ) -> list[tuple[str, str]]:
        """The conversation as ``(role, content)`` messages (what a chat API takes)."""
        system_prompt = system if system is not None else self.system_prompt
        messages = [("system", system_prompt)] if system_prompt else []
        for question, answer in history:
            messages += [("user", question), ("assistant", answer)]
        return [*messages, ("user", user)]
