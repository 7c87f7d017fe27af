"""Checks, on the machine at hand, that a model's logits for a position do not depend on how
many positions one call scores.

``batch_invariant = true`` promises that greedy verification of k + 1 drafts gives, bit for
bit, the logits one-token decoding gives, so greedy speculative decoding equals greedy
decoding also in bfloat16. Whether the promise holds depends on the kernels the CPU takes
(AVX-512, AMX and AVX2 machines run different GEMM paths), so the loader checks it on the
loaded model before any timing: a few dozen positions scored in one call, one at a time, and
in chunks of four, compared bit for bit. The result goes into the model's description (the
run header) and, when rows differ, into a one-line warning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from specbench.models.base import LanguageModel


@dataclass(frozen=True)
class InvarianceCheck:
    """Rows compared, and how many differed between one call and one-at-a-time decoding
    (``single``) or chunks of four (``chunks``)."""

    rows: int
    context: int
    single: int
    chunks: int

    @property
    def holds(self) -> bool:
        return self.single == 0 and self.chunks == 0

    def as_dict(self) -> dict[str, int | bool]:
        return {**asdict(self), "holds": self.holds}

    def warning(self, role: str) -> str | None:
        """The line to show when the promise does not hold here, else ``None``."""
        if self.holds:
            return None
        return (
            f"{role}: batch_invariant does not hold on this CPU: of {self.rows} positions, "
            f"{self.single} differ between one call and one-token decoding and {self.chunks} "
            "between one call and chunks of four, so greedy speculative outputs may part from "
            "the baseline at near-ties (the records still compare them token for token)"
        )


def check_batch_invariance(
    model: LanguageModel, rows: int = 12, context: int = 20, seed: int = 0
) -> InvarianceCheck:
    """Score ``rows`` positions after ``context`` pseudo-random tokens in one call, one at a
    time and in chunks of four, and count the rows whose logits differ bit for bit."""
    generator = torch.Generator().manual_seed(seed)
    high = max(2, min(model.vocab_size, 32000))
    tokens = torch.randint(1, high, (context + rows,), generator=generator).tolist()
    # Positions context .. context + rows - 1: in one call (with the prefix), one at a time,
    # and four at a time after the same prefix.
    together = model.new_session().logits_from(tokens, context)
    session = model.new_session()
    session.logits_from(tokens[:context], context - 1)
    single = torch.stack(
        [session.logits_from(tokens[: i + 1], i)[-1] for i in range(context, context + rows)]
    )
    session = model.new_session()
    session.logits_from(tokens[:context], context - 1)
    pieces = []
    for start in range(context, context + rows, 4):
        end = min(start + 4, context + rows)
        pieces.append(session.logits_from(tokens[:end], start))
    chunks = torch.cat(pieces)
    return InvarianceCheck(
        rows=rows,
        context=context,
        single=int((together != single).any(dim=-1).sum()),
        chunks=int((together != chunks).any(dim=-1).sum()),
    )
