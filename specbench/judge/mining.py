"""Label mining for AutoJudge: which draft/target mismatches change the final answer?

For each training prompt the target answers greedily (a reference that does not finish within
``max_new_tokens`` has no reliable answer: the prompt is skipped). The draft, teacher-forced
on the current response, proposes its argmax at every position; at a position where it
disagrees, its token is substituted and the target continues greedily. The mismatch is
*unimportant* (label 0) when the final answer is unchanged, *important* (label 1) otherwise;
a continuation that does not finish is dropped (its answer is unknown).

The search is the paper's semi-greedy one (Garipov et al., 2025): after an unimportant
mismatch the response *becomes* the alternative and the search goes on after it, the way
decoding goes on after the judge kept a draft token; after an important one it goes on in
the target's response. At most ``max_mismatches_per_prompt`` mismatches are evaluated, spread
over the answer. The feature of a mismatch is what the verifier sees at decode time: the
target's last hidden state at the substituted token, joined with the draft's, and the
target's confidence at the mismatch (:mod:`specbench.judge.confidence_features`, from its
logits there).

Up to ``batch_size`` prompts are searched at once and every round's generations (a new
prompt's reference answer, or one continuation per prompt in search) run as one batch; a
prompt that is done leaves its row to the next prompt at once, so the batch stays full
instead of waiting for the prompt with the most mismatches. Each finished prompt's examples
are written to a :class:`MiningCache` right away; mining resumes there and grows with the
prompt set.

Prompts cached before the confidence columns existed get them by a *replay* when a judge
asks for them: the search's final path is rebuilt by greedy decoding with the kept
substitutions put back at their positions (every continuation stops just past the next
mismatch: one answer's decoding per prompt plus a prefill per mismatch, not a continuation
to the end per mismatch), and the target's logits at each
mismatch come from the same prefills mining reads. A replay checks each mismatch's target
token. Greedy decoding is not bit-for-bit the same in every batch (padding, call shapes), so
a near-tie can go the other way and the replayed path part from the mined one: such a
prompt is marked in the cache and mined again, its confidence read inline. Leaving it out
instead would bias the data: paths part most after an important mismatch, whose path is
rebuilt from a fresh prefill, so the prompts that part hold more important mismatches
(docs/benchmarks/history.md, "AutoJudge: the target's confidence at the mismatch").
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from specbench.judge.confidence_features import confidence_features
from specbench.judge.continuations import Continuation, greedy_continuations
from specbench.judge.token_features import TokenFeaturizer
from specbench.models.base import LanguageModel
from specbench.models.capabilities import InternalStates
from specbench.prompts.conversation import PromptEncoder
from specbench.prompts.prompt import Prompt

AnswerFn = Callable[[Prompt, str], Hashable | None]


class NothingMinedError(ValueError):
    """Mining left no labelled mismatch to train on."""


@dataclass
class MiningSettings:
    max_new_tokens: int = 256
    max_mismatches_per_prompt: int = 16
    batch_size: int = 8
    draft_features: bool = True
    semi_greedy: bool = True
    #: Answers (and continuations) that stop at the length limit have no reliable final
    #: answer; tasks whose answer is defined at any length (toy tests) turn this off.
    require_finished: bool = True
    #: Continuations by batched greedy speculative decoding with the draft (``k`` drafts):
    #: the same tokens as plain greedy decoding, fewer target calls. 0: plain ``generate``.
    speculative_k: int = 0
    #: The judge reads the target's confidence at each mismatch: cached prompts mined
    #: without it are replayed (see the module docstring).
    confidence: bool = False


@dataclass
class MinedExample:
    prompt_id: str
    position: int
    draft_token: int
    target_token: int
    important: bool


@dataclass
class MiningProgress:
    prompts_done: int
    prompts_total: int
    examples: int
    important: int
    message: str


@dataclass
class MinedData:
    """Features ``[N, F]``, labels ``[N]`` (1 = important) and what each row is."""

    features: torch.Tensor
    labels: torch.Tensor
    examples: list[MinedExample]
    prompts_used: int
    prompts_without_answer: list[str] = field(default_factory=list)
    unfinished: int = 0
    prompts_from_cache: int = 0
    #: ``[N, 7]`` confidence columns: with ``MiningSettings.confidence``, or when every
    #: prompt has them.
    confidence: torch.Tensor | None = None
    prompts_replayed: int = 0
    #: Cached prompts mined again for confidence: their replay disagreed.
    prompts_remined: int = 0
    #: Prompts still without confidence (the target gives no logits), left out of the data.
    prompts_left_out: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        important = int(self.labels.sum())
        return {"important": important, "unimportant": len(self.labels) - important}

    @property
    def groups(self) -> list[str]:
        """Each row's prompt, for splits that keep a prompt's mismatches together."""
        return [e.prompt_id for e in self.examples]


@dataclass
class PromptMined:
    """One prompt's mining result, as cached."""

    features: list[torch.Tensor] = field(default_factory=list)
    examples: list[MinedExample] = field(default_factory=list)
    answered: bool = True
    unfinished: int = 0
    confidence: list[torch.Tensor] = field(default_factory=list)
    #: Its replay for confidence disagreed with the mined path: it is to be mined again
    #: (see the module docstring).
    replay_failed: bool = False

    @property
    def has_confidence(self) -> bool:
        return len(self.confidence) == len(self.examples)


class MiningCache:
    """Per-prompt mining results in ``folder`` (one file per prompt id)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, prompt_id: str) -> Path:
        digest = hashlib.sha256(prompt_id.encode()).hexdigest()[:16]
        return self.folder / f"{digest}.pt"

    def load(self, prompt_id: str) -> PromptMined | None:
        path = self._path(prompt_id)
        return self._read(path) if path.is_file() else None

    def all(self) -> list[PromptMined]:
        """Every prompt mined so far (file order), e.g. to study a cache while mining runs."""
        return [self._read(path) for path in sorted(self.folder.glob("*.pt"))]

    @staticmethod
    def _read(path: Path) -> PromptMined:
        saved = torch.load(path)
        found = len(saved["examples"])
        return PromptMined(
            features=list(saved["features"].float()) if found else [],
            examples=[MinedExample(**e) for e in saved["examples"]],
            answered=bool(saved["answered"]),
            unfinished=int(saved["unfinished"]),
            # Files written before the confidence columns have none: replayed on demand.
            confidence=list(saved["confidence"]) if found and "confidence" in saved else [],
            replay_failed=bool(saved.get("replay_failed", False)),
        )

    def save(self, prompt_id: str, mined: PromptMined) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(prompt_id)
        features = torch.stack(mined.features).half() if mined.features else torch.zeros(0)
        saved: dict[str, Any] = {
            "prompt_id": prompt_id,
            "features": features,
            "examples": [asdict(e) for e in mined.examples],
            "answered": mined.answered,
            "unfinished": mined.unfinished,
            "replay_failed": mined.replay_failed,
        }
        if mined.has_confidence:
            saved["confidence"] = (
                torch.stack(mined.confidence).float() if mined.confidence else torch.zeros(0)
            )
        partial = path.with_suffix(".partial")
        torch.save(saved, partial)
        partial.replace(path)


@dataclass
class _Search:
    """The semi-greedy search on one prompt."""

    prompt: Prompt
    ids: list[int]
    response: list[int] | None = None  # None until the reference answer is generated
    answer: Hashable | None = None
    cursor: int = 0  # positions before it are settled
    spacing: int = 1
    draft_choice: list[int] | None = None  # the draft's argmax per response position
    mined: PromptMined = field(default_factory=PromptMined)
    done: bool = False

    def next_mismatch(self, draft: LanguageModel) -> tuple[int, int] | None:
        assert self.response is not None
        if self.draft_choice is None:
            self.draft_choice = _draft_argmax(draft, self.ids, self.response)
        for position in range(self.cursor, len(self.response)):
            if self.draft_choice[position] != self.response[position]:
                return position, self.draft_choice[position]
        return None


def mine_labels(
    target: LanguageModel,
    draft: LanguageModel,
    prompts: Sequence[Prompt],
    encoder: PromptEncoder,
    answer: AnswerFn,
    settings: MiningSettings,
    on_progress: Callable[[MiningProgress], None] | None = None,
    cache: MiningCache | None = None,
) -> MinedData:
    """Mine labelled mismatches from ``prompts`` (see the module docstring): take what the
    cache holds, bring cached prompts up to the settings (replay them for the confidence
    columns), mine the rest, then collect every prompt's examples."""
    mining = _Mining(target, draft, list(prompts), encoder, settings, on_progress, cache)
    todo = mining.from_cache()
    remined = mining.bring_cache_up_to_date()
    mining.search(remined + todo, answer)
    return mining.collect(remined)


@dataclass
class _Mining:
    """One call of :func:`mine_labels`: its prompts' results as they come in."""

    target: LanguageModel
    draft: LanguageModel
    prompts: list[Prompt]
    encoder: PromptEncoder
    settings: MiningSettings
    on_progress: Callable[[MiningProgress], None] | None
    cache: MiningCache | None
    results: dict[str, PromptMined] = field(default_factory=dict)
    from_cached: int = 0
    replayed_ok: int = 0

    def report(self, message: str) -> None:
        if self.on_progress is not None:
            self.on_progress(_progress(self.results, len(self.prompts), message))

    def save(self, prompt_id: str, mined: PromptMined) -> None:
        if self.cache is not None:
            self.cache.save(prompt_id, mined)

    def from_cache(self) -> list[Prompt]:
        """Take every prompt the cache holds; the prompts still to mine."""
        todo: list[Prompt] = []
        for prompt in self.prompts:
            cached = self.cache.load(prompt.id) if self.cache is not None else None
            if cached is None:
                todo.append(prompt)
            else:
                self.results[prompt.id] = cached
                self.from_cached += 1
        if self.from_cached:
            self.report(f"{self.from_cached} prompts mined before (cache)")
        return todo

    def bring_cache_up_to_date(self) -> list[Prompt]:
        """Cached prompts mined without the confidence columns the settings ask for are
        replayed to get them; those whose replay disagrees (or did before) are mined again.
        Returns the prompts to mine again, dropped from the results."""
        without = [
            p
            for p in self.prompts
            if self.settings.confidence
            and p.id in self.results
            and not self.results[p.id].has_confidence
        ]
        # Prompts marked by an earlier replay are mined again; so is any that disagrees below.
        remine = {p.id for p in without if self.results[p.id].replay_failed}
        replay = [p for p in without if p.id not in remine]
        if replay:
            searches = [
                _Search(p, self.encoder.encode([], p.turns[0], p.system), mined=self.results[p.id])
                for p in replay
            ]

            def replayed_one(search: _Search, agreed: bool) -> None:
                if agreed:
                    self.replayed_ok += 1
                else:
                    search.mined.confidence = []
                    search.mined.replay_failed = True
                    remine.add(search.prompt.id)
                # An interrupted run re-mines it without a second replay.
                self.save(search.prompt.id, search.mined)
                verdict = "replayed" if agreed else "replay disagreed, to be mined again:"
                self.report(f"{verdict} {search.prompt.id}")

            _replay_pool(self.target, self.draft, searches, self.settings, replayed_one)
        remined = [p for p in self.prompts if p.id in remine]
        for prompt in remined:
            del self.results[prompt.id]
        if remined:
            self.report(f"mining {len(remined)} prompts again: their replay disagreed")
        return remined

    def search(self, todo: list[Prompt], answer: AnswerFn) -> None:
        """Mine ``todo``, saving each prompt to the cache as it finishes."""

        def finished(search: _Search) -> None:
            self.results[search.prompt.id] = search.mined
            self.save(search.prompt.id, search.mined)
            self.report(f"mined {search.prompt.id}")

        searches = [_Search(p, self.encoder.encode([], p.turns[0], p.system)) for p in todo]
        _mine_pool(self.target, self.draft, searches, answer, self.settings, finished)

    def collect(self, remined: list[Prompt]) -> MinedData:
        """Every prompt's examples, in prompt order, as one labelled set."""
        features: list[torch.Tensor] = []
        confidence: list[torch.Tensor] = []
        examples: list[MinedExample] = []
        without_answer: list[str] = []
        left_out: list[str] = []
        unfinished = 0
        for prompt in self.prompts:
            mined = self.results[prompt.id]
            if not mined.answered:
                without_answer.append(prompt.id)
            if self.settings.confidence and not mined.has_confidence:
                left_out.append(prompt.id)
                continue
            features += mined.features
            confidence += mined.confidence
            examples += mined.examples
            unfinished += mined.unfinished
        if not examples and left_out:
            raise NothingMinedError(
                "no mined prompt has the target's confidence at its mismatches "
                f"({len(left_out)} left out: the target gives no logits there)"
            )
        if not examples:
            raise NothingMinedError(
                "mining found no mismatches: are the target and draft identical?"
            )
        return MinedData(
            features=torch.stack(features),
            labels=torch.tensor([e.important for e in examples], dtype=torch.long),
            examples=examples,
            prompts_used=len(self.prompts) - len(without_answer) - len(left_out),
            prompts_without_answer=without_answer,
            unfinished=unfinished,
            prompts_from_cache=self.from_cached - len(remined),
            confidence=torch.stack(confidence) if len(confidence) == len(examples) else None,
            prompts_replayed=self.replayed_ok,
            prompts_remined=len(remined),
            prompts_left_out=left_out,
        )


def _mine_pool(
    target: LanguageModel,
    draft: LanguageModel,
    searches: list[_Search],
    answer: AnswerFn,
    settings: MiningSettings,
    finished: Callable[[_Search], None],
) -> None:
    """Run the searches, ``batch_size`` at a time, one batch of generations a round."""
    stop_ids = frozenset(target.tokenizer.eos_token_ids)
    decode = target.tokenizer.decode
    limit = settings.max_new_tokens
    waiting = list(reversed(searches))
    active: list[_Search] = []
    while waiting or active:
        # A round's jobs: (search, None, None) generates the reference answer, (search,
        # position, token) continues after the draft's token substituted at position.
        jobs: list[tuple[_Search, int | None, int | None]] = []
        while not jobs or (len(active) < settings.batch_size and waiting):
            while len(active) < settings.batch_size and waiting:
                active.append(waiting.pop())
            jobs, done = [], []
            for search in active:
                if search.response is None:
                    jobs.append((search, None, None))
                    continue
                found = None if search.done else search.next_mismatch(draft)
                if found is None:
                    done.append(search)
                else:
                    jobs.append((search, *found))
            for search in done:
                active.remove(search)
                finished(search)
            if not jobs and not waiting:
                return
        prefixes = [_job_prefix(*job) for job in jobs]
        budgets = [limit if t is None else max(1, limit - t - 1) for _, t, _ in jobs]
        outputs = _continue(target, draft, prefixes, budgets, stop_ids, settings)
        mismatch_rows = [i for i, (_, t, _) in enumerate(jobs) if t is not None]
        draft_states: dict[int, torch.Tensor] = {}
        if settings.draft_features and mismatch_rows:
            states = _draft_states(draft, [prefixes[i] for i in mismatch_rows])
            draft_states = dict(zip(mismatch_rows, states, strict=True))
        for i, ((search, position, token), output) in enumerate(zip(jobs, outputs, strict=True)):
            if position is None or token is None:
                _take_reference(search, output.tokens, answer, decode, stop_ids, settings)
            else:
                _take_continuation(
                    search,
                    position,
                    token,
                    output,
                    draft_states.get(i),
                    answer,
                    decode,
                    stop_ids,
                    settings,
                )


def _replay_pool(
    target: LanguageModel,
    draft: LanguageModel,
    searches: list[_Search],
    settings: MiningSettings,
    replayed: Callable[[_Search, bool], None],
) -> None:
    """Rebuild each cached search's path and the target's confidence at its mismatches.

    Job 0 generates the answer up to the first mismatch; job ``j`` puts mismatch ``j``'s kept
    token after the path, reads the target's logits at the mismatch from its prefill, and
    generates up to the next mismatch. One job per prompt a round, all prompts batched."""
    stop_ids = frozenset(target.tokenizer.eos_token_ids)
    paths: dict[int, list[int]] = {}
    active = list(range(len(searches)))
    for search in searches:
        search.mined.confidence = []
    round_ = 0
    while active:
        prefixes, budgets = [], []
        for i in active:
            search = searches[i]
            path = paths.setdefault(i, [])
            examples = search.mined.examples
            if round_ > 0:
                path = path + [_kept_token(examples[round_ - 1], settings)]
            prefixes.append(search.ids + path)
            if round_ == len(examples):  # only the last mismatch's logits are wanted
                budgets.append(1)
            else:
                # Slack past the next mismatch: speculative decoding drafts fewer tokens near
                # its budget, and calls of other shapes can round a near-tie the other way.
                need = max(0, examples[round_].position - len(path))
                budgets.append(need + settings.speculative_k + 1)
        outputs = _continue(target, draft, prefixes, budgets, stop_ids, settings)
        still = []
        for i, prefix, output in zip(active, prefixes, outputs, strict=True):
            search = searches[i]
            examples = search.mined.examples
            agreed = True
            if round_ > 0:
                example = examples[round_ - 1]
                logits = output.prefix_logits
                agreed = logits is not None and int(logits.argmax()) == example.target_token
                if agreed:
                    assert logits is not None
                    search.mined.confidence.append(
                        _confidence(logits, example.draft_token, example.target_token)
                    )
            if agreed and round_ < len(examples):
                path = prefix[len(search.ids) :]
                need = examples[round_].position - len(path)
                paths[i] = path + output.tokens[:need]
                agreed = len(paths[i]) == examples[round_].position
            if agreed and round_ < len(examples):
                still.append(i)
            else:
                replayed(search, agreed)
        active = still
        round_ += 1


def _kept_token(example: MinedExample, settings: MiningSettings) -> int:
    """The token the search went on with after a mismatch."""
    keep_draft = settings.semi_greedy and not example.important
    return example.draft_token if keep_draft else example.target_token


def _confidence(logits: torch.Tensor, draft_token: int, target_token: int) -> torch.Tensor:
    return confidence_features(logits, torch.tensor(draft_token), torch.tensor(target_token)).cpu()


def _job_prefix(search: _Search, position: int | None, token: int | None) -> list[int]:
    """A reference job reads the prompt; a mismatch job the response up to the draft's token."""
    if position is None or token is None or search.response is None:
        return search.ids
    return search.ids + search.response[:position] + [token]


def _take_reference(
    search: _Search,
    tokens: list[int],
    answer: AnswerFn,
    decode: Callable[[list[int]], str],
    stop_ids: frozenset[int],
    settings: MiningSettings,
) -> None:
    """The target's own answer: the one every alternative is compared with."""
    search.response = tokens
    finished = (bool(tokens) and tokens[-1] in stop_ids) or not settings.require_finished
    search.answer = answer(search.prompt, decode(tokens)) if finished else None
    if search.answer is None:
        search.mined.answered = False
        search.done = True
    search.spacing = max(1, len(tokens) // settings.max_mismatches_per_prompt)


def _take_continuation(
    search: _Search,
    position: int,
    token: int,
    output: Continuation,
    draft_state: torch.Tensor | None,
    answer: AnswerFn,
    decode: Callable[[list[int]], str],
    stop_ids: frozenset[int],
    settings: MiningSettings,
) -> None:
    """Label the mismatch at ``position`` by the answer of its continuation."""
    assert search.response is not None
    tail = output.tokens[: settings.max_new_tokens - position - 1]
    alternative = search.response[:position] + [token] + tail
    search.cursor = position + search.spacing
    finished = (token in stop_ids) or (bool(tail) and tail[-1] in stop_ids)
    if settings.require_finished and not finished:
        search.mined.unfinished += 1  # its answer is unknown: no label
    else:
        important = answer(search.prompt, decode(alternative)) != search.answer
        feature = output.prefix_hidden.float().cpu()
        if draft_state is not None:
            feature = torch.cat([feature, draft_state])
        search.mined.features.append(feature)
        if output.prefix_logits is not None:
            search.mined.confidence.append(
                _confidence(output.prefix_logits, token, search.response[position])
            )
        search.mined.examples.append(
            MinedExample(search.prompt.id, position, token, search.response[position], important)
        )
        if not important and settings.semi_greedy:
            search.response = alternative
            search.draft_choice = None  # a new response: the draft reads it again
    if len(search.mined.examples) + search.mined.unfinished >= settings.max_mismatches_per_prompt:
        search.done = True


def _continue(
    target: LanguageModel,
    draft: LanguageModel,
    prefixes: list[list[int]],
    budgets: list[int],
    stop_ids: frozenset[int],
    settings: MiningSettings,
) -> list[Continuation]:
    """Greedy continuations of ``prefixes`` (at most ``budgets`` tokens each) with the
    target's state at each prefix's end."""
    states_model = target if isinstance(target, InternalStates) else None
    if (
        settings.speculative_k <= 0
        or states_model is None
        or not states_model.final_states_readable()
    ):
        outputs = greedy_continuations(
            target, prefixes, max(budgets), stop_ids, batch_size=settings.batch_size
        )
        return [
            Continuation(o.tokens[:budget], o.prefix_hidden, o.prefix_logits)
            for o, budget in zip(outputs, budgets, strict=True)
        ]
    from specbench.decoding.core import decode
    from specbench.decoding.drafters import ModelDrafter
    from specbench.decoding.sampling import SamplingParams
    from specbench.decoding.types import GenerationRequest

    out: list[Continuation] = []
    for start in range(0, len(prefixes), settings.batch_size):
        chunk = prefixes[start : start + settings.batch_size]
        requests = [
            GenerationRequest(p, budget, SamplingParams(), seed=0, stop_token_ids=stop_ids)
            for p, budget in zip(chunk, budgets[start : start + settings.batch_size], strict=True)
        ]
        drafter = ModelDrafter(draft, settings.speculative_k)
        with states_model.capture_final_states(first_call=True) as first:
            results = decode(requests, target, drafter)
        # The first call is every row's prefill, rows left-aligned: the state at the
        # prefix's last token is at its length - 1, the one that chose it at length - 2.
        states = first.states
        assert states is not None
        # One output-layer call for the chunk (a one-token prefix has no token before it).
        rows = torch.arange(len(chunk))
        before = states_model.logits_of_states(states[rows, [max(0, len(p) - 2) for p in chunk]])
        for row, (prefix, result) in enumerate(zip(chunk, results, strict=True)):
            out.append(
                Continuation(
                    result.tokens,
                    states[row, len(prefix) - 1].float().cpu(),
                    before[row] if len(prefix) > 1 else None,
                )
            )
    return out


def _draft_argmax(draft: LanguageModel, prompt_ids: list[int], response: list[int]) -> list[int]:
    """The draft's argmax at every position of ``response``, teacher-forced on it."""
    if not response:
        return []
    logits = draft.new_session().logits_from(prompt_ids + response, len(prompt_ids) - 1)
    return [int(t) for t in logits[: len(response)].argmax(-1).tolist()]


def _draft_states(draft: LanguageModel, prefixes: list[list[int]]) -> list[torch.Tensor]:
    """The draft's hidden state at the last token of each prefix (one shared session)."""
    session = draft.new_session()
    states = []
    for prefix in prefixes:
        output = session.forward_from(prefix, len(prefix) - 1, hidden=True)
        assert output.hidden is not None
        states.append(output.hidden[-1].float().cpu())
    return states


def hidden_width(model: LanguageModel) -> int:
    """The width of ``model``'s hidden state (the columns its feature block takes)."""
    return int(_draft_states(model, [[0]])[0].numel())


def _progress(results: dict[str, PromptMined], total: int, message: str) -> MiningProgress:
    examples = [e for mined in results.values() for e in mined.examples]
    important = sum(e.important for e in examples)
    return MiningProgress(len(results), total, len(examples), important, message)


def mined_token_features(data: MinedData, tokenizer: Any) -> torch.Tensor:
    """The token features (:mod:`specbench.judge.token_features`) of every mined example."""
    featurizer = TokenFeaturizer(tokenizer.decode)
    return featurizer.features(
        [e.draft_token for e in data.examples],
        [e.target_token for e in data.examples],
        [e.position for e in data.examples],
    )


def example_rows(data: MinedData) -> list[dict[str, Any]]:
    return [e.__dict__ for e in data.examples]
