"""AutoJudge on toy models with a synthetic final answer: mining, training, caching, decoding.

The toy task's "final answer" is the last character of the output. In an order-1 toy chain,
greedy continuations after a substituted token often merge back into the original path (the
answer is unchanged: an unimportant mismatch) and sometimes do not (important).
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from pathlib import Path

import pytest
import torch
from helpers import make_method, request, toy_pair
from typer.testing import CliRunner

from specbench import cache_dirs
from specbench.cli.main import app
from specbench.decoding.verify import StepFeatures
from specbench.errors import SpecbenchError
from specbench.judge import cache
from specbench.judge.classifier import JudgeClassifier
from specbench.judge.continuations import greedy_continuations
from specbench.judge.mining import MiningSettings, mine_labels
from specbench.judge.verifier import JudgeVerifier
from specbench.plugins import discover_methods
from specbench.presets.schema import load_preset, sweep_parameter
from specbench.prompts.conversation import PromptEncoder
from specbench.prompts.prompt import Prompt
from specbench.prompts.sources import InlinePromptSet
from specbench.prompts.tasks import Score, tasks
from specbench.records import SampleRecord, read_records
from specbench.run.plan import run_context
from specbench.run.runner import run_preset


class LastCharTask:
    name = "toy-last"

    def answer(self, prompt: Prompt, text: str) -> Hashable | None:
        return text[-1:] or None

    def score(self, prompt: Prompt, text: str) -> Score | None:
        return Score(float(text[-1:] in "aeiou"), text[-1:])


@pytest.fixture(autouse=True)
def toy_task_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(tasks(), "toy-last", LastCharTask())
    monkeypatch.setenv(cache_dirs.CACHE_ENV, str(tmp_path / "cache"))


PRESET = """
name = "toy-autojudge"
[models.target]
backend = "toy"
vocab_size = 24
order = 1
seed = 21
sharpness = 3.0
[models.draft]
backend = "toy"
vocab_size = 24
order = 1
seed = 21
sharpness = 3.0
distance = 1.5

[[methods]]
name = "baseline"
[[methods]]
name = "speculative"
params = {{ k = 4 }}
[[methods]]
name = "autojudge"
[methods.params]
k = 4
threshold = {threshold}
[methods.params.judge]
max_new_tokens = 24
max_mismatches_per_prompt = 12
require_finished = false  # the toy chain never ends; its last character is always an answer
[methods.params.judge.prompts]
source = "inline"
task = "toy-last"
prompts = {train}

[prompts]
source = "inline"
task = "toy-last"
prompts = {test}

[sampling]
temperature = 0.0
max_new_tokens = 24
[runs]
warmup = 0
[output]
save_tokens = true  # the tests compare tokens
"""
ENDINGS = ("one", "two", "six", "ten")  # prompts' last characters steer an order-1 chain
WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
]


def _write_preset(tmp_path: Path, threshold: float = 0.5) -> Path:
    train = [{"id": f"train-{w}-{v}", "prompt": f"{w} {v}"} for w in WORDS for v in ENDINGS]
    test = [{"id": f"test-{w}", "prompt": f"the {w}"} for w in WORDS[:8]]
    path = tmp_path / "aj.toml"

    def fmt(rows: list[dict[str, str]]) -> str:
        items = ", ".join(f'{{ id = "{r["id"]}", prompt = "{r["prompt"]}" }}' for r in rows)
        return f"[{items}]"

    path.write_text(PRESET.format(threshold=threshold, train=fmt(train), test=fmt(test)))
    return path


def test_mining_labels_mismatches_by_answer_change() -> None:
    models = toy_pair(vocab_size=24, order=1, seed=21, distance=1.5, sharpness=3.0)
    prompts = InlinePromptSet(
        prompts=[f"{w} {e}" for w in WORDS[:3] for e in ENDINGS], task="toy-last"
    ).load(Path())
    data = mine_labels(
        models.target,
        models.require_draft(),
        prompts,
        PromptEncoder(models.target.tokenizer),
        LastCharTask().answer,
        MiningSettings(
            max_new_tokens=24, max_mismatches_per_prompt=12, batch_size=4, require_finished=False
        ),
    )
    assert len(data.labels) == len(data.examples) == data.features.shape[0] > 10
    counts = data.counts()
    assert counts["important"] > 0 and counts["unimportant"] > 0
    # Check one label by hand: substitute, continue greedily, compare the answers.
    example = data.examples[0]
    prompt = next(p for p in prompts if p.id == example.prompt_id)
    encoder = PromptEncoder(models.target.tokenizer)
    ids = encoder.encode([], prompt.text)
    reference = greedy_continuations(models.target, [ids], 24, frozenset())[0].tokens
    assert reference[example.position] == example.target_token
    alternative = reference[: example.position] + [example.draft_token]
    alternative += greedy_continuations(models.target, [ids + alternative], 24, frozenset())[
        0
    ].tokens
    alternative = alternative[:24]
    decode = models.target.tokenizer.decode
    assert example.important == (decode(alternative)[-1] != decode(reference)[-1])


def _mine(prompts: list[Prompt], models: object, **settings: object) -> object:
    from specbench.plugins import MethodModels

    assert isinstance(models, MethodModels)
    base = dict(max_new_tokens=24, max_mismatches_per_prompt=12, batch_size=4)
    mining_cache = settings.pop("_cache", None)
    return mine_labels(
        models.target,
        models.require_draft(),
        prompts,
        PromptEncoder(models.target.tokenizer),
        LastCharTask().answer,
        MiningSettings(**(base | {"require_finished": False} | settings)),  # type: ignore[arg-type]
        cache=mining_cache,  # type: ignore[arg-type]
    )


def test_semi_greedy_search_goes_on_from_the_alternative_answer() -> None:
    """After an unimportant mismatch the search reads the alternative answer (the paper's
    semi-greedy search); the independent search reads the target's own answer throughout."""
    models = toy_pair(vocab_size=24, order=1, seed=5, distance=3.0, sharpness=3.0)
    prompts = InlinePromptSet(
        prompts=[f"{w} {e}" for w in WORDS[:4] for e in ENDINGS], task="toy-last"
    ).load(Path())
    encoder = PromptEncoder(models.target.tokenizer)
    references = {
        p.id: greedy_continuations(models.target, [encoder.encode([], p.text)], 24, frozenset())[
            0
        ].tokens
        for p in prompts
    }

    def off_reference(data: object) -> int:
        return sum(
            references[e.prompt_id][e.position] != e.target_token
            for e in data.examples  # type: ignore[attr-defined]
        )

    independent = _mine(prompts, models, semi_greedy=False, max_mismatches_per_prompt=24)
    semi = _mine(prompts, models, semi_greedy=True, max_mismatches_per_prompt=24)
    assert off_reference(independent) == 0
    assert off_reference(semi) > 0
    # Each departure from the reference follows an unimportant mismatch of the same prompt.
    for i, example in enumerate(semi.examples):  # type: ignore[attr-defined]
        if references[example.prompt_id][example.position] != example.target_token:
            earlier = [e for e in semi.examples[:i] if e.prompt_id == example.prompt_id]  # type: ignore[attr-defined]
            assert any(not e.important for e in earlier)


def test_mining_resumes_from_its_cache_and_grows(tmp_path: Path) -> None:
    from specbench.judge.mining import MiningCache

    models = toy_pair(vocab_size=24, order=1, seed=21, distance=1.5, sharpness=3.0)
    prompts = InlinePromptSet(
        prompts=[f"{w} {e}" for w in WORDS[:3] for e in ENDINGS], task="toy-last"
    ).load(Path())
    mining_cache = MiningCache(tmp_path / "mined")
    first = _mine(prompts[:5], models, _cache=mining_cache)
    assert first.prompts_from_cache == 0  # type: ignore[attr-defined]
    grown = _mine(prompts, models, _cache=mining_cache)
    fresh = _mine(prompts, models)
    assert grown.prompts_from_cache == 5  # type: ignore[attr-defined]
    assert grown.examples == fresh.examples  # type: ignore[attr-defined]
    assert torch.allclose(grown.features, fresh.features, atol=1e-2)  # type: ignore[attr-defined]


def test_answers_that_do_not_finish_are_not_labelled() -> None:
    """A reference that stops at the length limit has no reliable final answer."""
    models = toy_pair(vocab_size=24, order=1, seed=21, distance=1.5, sharpness=3.0)
    prompts = InlinePromptSet(prompts=["alpha one", "bravo two"], task="toy-last").load(Path())
    with pytest.raises(ValueError, match="no mismatches"):
        _mine(prompts, models, require_finished=True)


def test_judge_cache_key_changes_with_every_determinant(tmp_path: Path) -> None:
    base = load_preset(str(_write_preset(tmp_path)), discover_methods())
    prompts = base.preset.prompts.load(base.base_dir)
    models = toy_pair(vocab_size=24)

    def key(resolved) -> str:
        method = next(m for m in resolved.methods if m.info.name == "autojudge")
        instance = method.info.cls(method.params, models)
        return instance.training(run_context(resolved, method.label, prompts)).key()

    reference = key(base)
    changes = [
        ("models.target.seed", 9),
        ("models.draft.distance", 0.7),
        ("methods.2.params.judge.prompts.limit", 5),
        ("methods.2.params.judge.prompts.template", "Q {prompt}"),
        ("methods.2.params.judge.max_new_tokens", 30),
        ("methods.2.params.judge.max_mismatches_per_prompt", 3),
        ("methods.2.params.judge.features", "target"),
        ("methods.2.params.judge.search", "independent"),
        ("methods.2.params.judge.require_finished", True),
        ("methods.2.params.judge.classifier", "mlp"),
        ("methods.2.params.judge.c_grid", [1.0]),
        ("methods.2.params.judge.seed", 1),
        ("methods.2.params.judge.token_features", True),
        ("methods.2.params.judge.folds", 3),
    ]
    keys = {reference}
    for dotted, value in changes:
        changed = key(load_preset(str(tmp_path / "aj.toml"), discover_methods(), [(dotted, value)]))
        assert changed not in keys, dotted
        keys.add(changed)
    # What only affects decoding does not change the judge.
    for dotted, value in [
        ("methods.2.params.threshold", 0.9),
        ("methods.2.params.k", 7),
        ("sampling.max_new_tokens", 5),
        ("methods.2.params.judge.batch_size", 2),
    ]:
        same = load_preset(str(tmp_path / "aj.toml"), discover_methods(), [(dotted, value)])
        assert key(same) == reference, dotted


def test_run_without_judge_says_how_to_train_then_trains_on_request(tmp_path: Path) -> None:
    preset = load_preset(str(_write_preset(tmp_path)), discover_methods())
    with pytest.raises(SpecbenchError, match=r"specbench train --preset .*aj\.toml"):
        run_preset(preset, output=tmp_path / "a.jsonl")
    outcome = run_preset(preset, output=tmp_path / "b.jsonl", train_missing=True)
    assert len(cache.list_judges()) == 1
    summary = {s.method: s for s in outcome.summaries}["autojudge"]
    assert summary.exact is False
    for name in (
        "judge_accept_rate",
        "target_fallback_rate",
        "autojudge_train_samples",
        "autojudge_train_loss",
        "threshold",
    ):
        assert name in summary.stats, name
    assert summary.score_mean is not None


def test_threshold_zero_equals_greedy_speculative_and_acceptance_grows(tmp_path: Path) -> None:
    preset = load_preset(str(_write_preset(tmp_path)), discover_methods())
    swept = sweep_parameter(preset, "threshold", [0.0, 0.3, 0.6, 1.0])
    out = tmp_path / "sweep.jsonl"
    run_preset(swept, output=out, train_missing=True)
    samples = [r for r in read_records(out) if isinstance(r, SampleRecord)]
    by = {}
    for s in samples:
        by.setdefault(s.method, {})[s.prompt_id] = s
    for prompt_id, spec in by["speculative"].items():
        assert spec.tokens and by["autojudge-threshold=0"][prompt_id].tokens == spec.tokens
    per_step = []
    for label in (
        "autojudge-threshold=0",
        "autojudge-threshold=0.3",
        "autojudge-threshold=0.6",
        "autojudge-threshold=1",
    ):
        rows = by[label].values()
        per_step.append(sum(r.new_tokens for r in rows) / sum(r.target_calls for r in rows))
    assert per_step == sorted(per_step) and per_step[-1] > per_step[0]


def _run_judge_at_thresholds_0_and_1(
    tmp_path: Path, options: dict[str, object]
) -> tuple[Path, dict]:
    """Train a judge with ``judge.<name> = value`` for each of ``options`` and run it at
    thresholds 0 and 1: at 0 it must equal greedy speculative decoding token for token, at 1
    it must not. Returns the preset's path and the stored judge's metadata."""
    path = _write_preset(tmp_path)
    overrides = [(f"methods.2.params.judge.{name}", value) for name, value in options.items()]
    preset = load_preset(str(path), discover_methods(), overrides)
    out = tmp_path / "judge.jsonl"
    run_preset(sweep_parameter(preset, "threshold", [0.0, 1.0]), output=out, train_missing=True)
    (stored,) = cache.list_judges()
    for name, value in options.items():
        assert stored["settings"][name] == value and type(stored["settings"][name]) is type(value)
    by: dict[str, dict[str, SampleRecord]] = {}
    for record in read_records(out):
        if isinstance(record, SampleRecord):
            by.setdefault(record.method, {})[record.prompt_id] = record
    for prompt_id, spec in by["speculative"].items():
        assert by["autojudge-threshold=0"][prompt_id].tokens == spec.tokens
    lossy = by["autojudge-threshold=1"]
    assert any(lossy[p].tokens != spec.tokens for p, spec in by["speculative"].items())
    return path, stored


def test_token_features_train_and_decode_with_the_same_columns(tmp_path: Path) -> None:
    """A judge with token features trains, decodes (its classifier reads hidden states plus
    the token columns), and at threshold 0 still equals greedy speculative decoding; the
    mining cache is shared with the judge without token features."""
    path, _ = _run_judge_at_thresholds_0_and_1(tmp_path, {"token_features": True})
    mined = list((cache.judges_dir() / "mined").iterdir())
    plain = load_preset(str(path), discover_methods())
    run_preset(plain, output=tmp_path / "plain.jsonl", train_missing=True)
    assert list((cache.judges_dir() / "mined").iterdir()) == mined  # mined once, used twice
    assert len(cache.list_judges()) == 2


def test_a_judge_chooses_its_feature_set_inside_validation_and_decodes_with_it(
    tmp_path: Path,
) -> None:
    """With judge.feature_sets the judge picks one set with C; its classifier reads those
    columns of the full row the verifier builds; at threshold 0 it still equals greedy
    speculative decoding token for token."""
    sets = ["target+draft+tokens", "tokens", "draft"]
    _, stored = _run_judge_at_thresholds_0_and_1(
        tmp_path, {"token_features": True, "feature_sets": sets}
    )
    chosen = stored["report"]["chosen_features"]
    assert chosen in sets
    judge = cache.load_judge(stored["key"])
    assert judge is not None
    columns = judge.classifier.columns
    assert columns is not None
    from specbench.judge.mining import hidden_width

    models = toy_pair(vocab_size=24, order=1, seed=21, distance=1.5, sharpness=3.0)
    target_width = hidden_width(models.target)
    assert target_width == hidden_width(models.require_draft()) == 48  # logits + one-hot
    ranges = {"target": range(0, 48), "draft": range(48, 96), "tokens": range(96, 112)}
    assert columns.tolist() == [c for block in chosen.split("+") for c in ranges[block]]


def test_feature_sets_must_name_blocks_that_are_on() -> None:
    from pydantic import ValidationError

    from specbench.judge.settings import JudgeSettings

    with pytest.raises(ValidationError, match="'confidence', which is off"):
        JudgeSettings(feature_sets=["target+confidence"])
    with pytest.raises(ValidationError, match="unknown block 'logits'"):
        JudgeSettings(feature_sets=["target+logits"])
    assert JudgeSettings(confidence_features=True, feature_sets=["confidence"]).blocks() == [
        "target",
        "draft",
        "confidence",
    ]


def test_the_verifier_sees_each_draft_tokens_position_in_the_response() -> None:
    from specbench.decoding.core import decode
    from specbench.decoding.drafters import ModelDrafter
    from specbench.decoding.verify import Verdict, leading_accepts

    class Recording:
        """Greedy verification that records what it was told of positions."""

        needs_features = True

        def __init__(self) -> None:
            self.seen: list[tuple[int, list[int]]] = []

        def verify(self, draft_tokens, draft_probs, target_probs, generator, features=None):  # type: ignore[no-untyped-def]
            assert features is not None and features.draft_positions is not None
            self.seen.append((committed[0], features.draft_positions[0].tolist()))
            choice = target_probs.argmax(-1)
            k = draft_tokens.shape[1]
            accepted = leading_accepts(draft_tokens == choice[:, :k])
            committed[0] += int(accepted[0]) + 1
            return Verdict(accepted=accepted, next_tokens=choice[0, accepted])

    committed = [0]
    models = toy_pair(vocab_size=24, order=1, seed=21, distance=1.5, sharpness=3.0)
    verifier = Recording()
    (result,) = decode(
        [request([1, 2, 3], 30)], models.target, ModelDrafter(models.require_draft(), k=4), verifier
    )
    assert len(result.tokens) == 30 and len(verifier.seen) > 3
    for before, positions in verifier.seen:
        assert positions == list(range(before, before + len(positions)))


def test_verifier_acceptance_is_monotone_in_the_threshold() -> None:
    generator = torch.Generator().manual_seed(0)
    batch, k, vocab, dim = 64, 6, 10, 5
    classifier = JudgeClassifier(
        kind="logistic",
        mean=torch.zeros(dim, dtype=torch.float64),
        std=torch.ones(dim, dtype=torch.float64),
        state={
            "w": torch.randn(dim, dtype=torch.float64, generator=generator),
            "b": torch.zeros((), dtype=torch.float64),
        },
    )
    drafts = torch.randint(vocab, (batch, k), generator=generator)
    target_tokens = torch.randint(vocab, (batch, k + 1), generator=generator)
    agree = torch.rand(batch, k, generator=generator) < 0.6
    target_tokens[:, :k] = torch.where(agree, drafts, target_tokens[:, :k])
    target = torch.nn.functional.one_hot(target_tokens, vocab).float()
    features = StepFeatures(torch.randn(batch, k + 1, dim, generator=generator))
    previous = None
    for threshold in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        verdict = JudgeVerifier(classifier, threshold, False).verify(
            drafts, target[:, :k], target, None, features
        )
        if previous is not None:
            assert bool((verdict.accepted >= previous).all())
        previous = verdict.accepted
    exact = JudgeVerifier(classifier, 0.0, False).verify(
        drafts, target[:, :k], target, None, features
    )
    matches = (drafts == target[:, :k].argmax(-1)).long().cumprod(-1).sum(-1)
    assert torch.equal(exact.accepted, matches)


def test_training_prompts_must_not_overlap_the_run(tmp_path: Path) -> None:
    path = _write_preset(tmp_path)
    text = path.read_text().replace('id = "train-alpha-one"', 'id = "test-alpha"')
    path.write_text(text)
    preset = load_preset(str(path), discover_methods())
    with pytest.raises(SpecbenchError, match="overlap the run's prompts"):
        run_preset(preset, output=tmp_path / "x.jsonl", train_missing=True)


def test_autojudge_needs_greedy_decoding(tmp_path: Path) -> None:
    preset = load_preset(
        str(_write_preset(tmp_path)), discover_methods(), [("sampling.temperature", 0.7)]
    )
    with pytest.raises(SpecbenchError, match="decodes greedily"):
        run_preset(preset, output=tmp_path / "x.jsonl", train_missing=True)


def test_judge_cli_train_and_cache(tmp_path: Path) -> None:
    runner = CliRunner()
    path = _write_preset(tmp_path)
    trained = runner.invoke(app, ["judge", "train", "--preset", str(path)])
    assert trained.exit_code == 0, trained.output
    assert "trained on" in trained.output and "ROC-AUC" in trained.output
    again = runner.invoke(app, ["judge", "train", "--preset", str(path)])
    assert "already trained" in again.output
    listing = runner.invoke(app, ["judge", "cache", "list"])
    key = cache.list_judges()[0]["key"]
    assert listing.exit_code == 0 and key in listing.output
    shown = runner.invoke(app, ["judge", "cache", "show", key[:8]])
    assert shown.exit_code == 0 and '"important"' in shown.output
    assert runner.invoke(app, ["judge", "cache", "path", key]).output.strip().endswith(key)
    run = runner.invoke(
        app,
        ["run", "-p", str(path), "-o", str(tmp_path / "r.jsonl"), "--thresholds", "0.2,0.8", "-q"],
    )
    assert run.exit_code == 0, run.output
    labels = {r.method for r in read_records(tmp_path / "r.jsonl") if isinstance(r, SampleRecord)}
    assert {"autojudge-threshold=0.2", "autojudge-threshold=0.8"} <= labels
    assert runner.invoke(app, ["judge", "cache", "clear"]).exit_code == 2
    cleared = runner.invoke(app, ["judge", "cache", "clear", "--all"])
    assert cleared.exit_code == 0 and cache.list_judges() == []


def test_threshold_zero_equals_greedy_speculative_on_hf(
    tiny_hf: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from specbench.methods.autojudge import AutoJudgeMethod
    from specbench.models.loading import load_models
    from specbench.models.specs import HFModelSpec, ModelsSpec

    folders = tiny_hf["llama"]
    models = load_models(
        ModelsSpec(
            target=HFModelSpec(model=str(folders["target"]), dtype="float32", device="cpu"),
            draft=HFModelSpec(model=str(folders["draft"]), dtype="float32", device="cpu"),
        )
    )
    method = make_method("autojudge", models, k=4, threshold=0.0)
    assert isinstance(method, AutoJudgeMethod)
    hidden = models.target.model.config.hidden_size
    always_unimportant = JudgeClassifier(
        "logistic",
        torch.zeros(hidden, dtype=torch.float64),
        torch.ones(hidden, dtype=torch.float64),
        {
            "w": torch.zeros(hidden, dtype=torch.float64),
            "b": torch.tensor(-20.0, dtype=torch.float64),
        },
    )
    method.verifier = JudgeVerifier(always_unimportant, 0.0, False)
    method.stored = type(
        "S", (), {"report": type("R", (), {"samples": 1, "train_loss": 0.0, "roc_auc": None})()}
    )()
    speculative = make_method("speculative", models, k=4)
    for text in ("the quick brown", "def add(a, b):"):
        prompt = tiny_hf["tokenizer"].encode(text)
        assert (
            method.generate(request(prompt, 30)).tokens
            == speculative.generate(request(prompt, 30)).tokens
        )
    method.verifier = JudgeVerifier(always_unimportant, 0.5, False)
    lossy = method.generate(request(tiny_hf["tokenizer"].encode("the quick brown"), 30))
    assert lossy.stats.rejections == 0  # the judge keeps every mismatch


def test_speculative_continuations_equal_plain_greedy(tiny_hf: dict) -> None:
    """Mining's continuations by batched greedy speculative decoding: the same tokens and
    the same prefix states as plain batched generate."""
    from helpers import hf_pair

    from specbench.judge.mining import _continue

    models = hf_pair(tiny_hf)
    target, draft = models.target, models.require_draft()
    prefixes = [[5, 9, 23, 7], [40, 41, 42, 43, 44, 45], [100, 3, 17]]
    budgets = [12, 7, 12]
    plain = _continue(target, draft, prefixes, budgets, frozenset(), MiningSettings(batch_size=2))
    fast = _continue(
        target, draft, prefixes, budgets, frozenset(), MiningSettings(batch_size=2, speculative_k=3)
    )
    assert [len(c.tokens) for c in fast] == budgets
    assert [c.tokens for c in fast] == [c.tokens for c in plain]
    for a, b in zip(fast, plain, strict=True):
        assert torch.allclose(a.prefix_hidden, b.prefix_hidden, atol=1e-4)


def _random_judge(dim: int, seed: int, scale: float = 1.0) -> JudgeClassifier:
    generator = torch.Generator().manual_seed(seed)
    return JudgeClassifier(
        "logistic",
        torch.zeros(dim, dtype=torch.float64),
        torch.ones(dim, dtype=torch.float64),
        {
            "w": scale * torch.randn(dim, dtype=torch.float64, generator=generator),
            "b": torch.zeros((), dtype=torch.float64),
        },
    )


def test_the_last_draft_state_is_computed_only_when_the_judge_needs_it() -> None:
    """Leaving the draft's state at the last token to a callback changes no verdict, and the
    callback runs only when some row reaches a mismatch at the last token."""
    generator = torch.Generator().manual_seed(3)
    batch, k, vocab, dim = 64, 5, 8, 4
    drafts = torch.randint(vocab, (batch, k), generator=generator)
    target_tokens = torch.randint(vocab, (batch, k + 1), generator=generator)
    agree = torch.rand(batch, k, generator=generator) < 0.6
    target_tokens[:, :k] = torch.where(agree, drafts, target_tokens[:, :k])
    target = torch.nn.functional.one_hot(target_tokens, vocab).float()
    target_hidden = torch.randn(batch, k + 1, dim, generator=generator)
    draft_hidden = torch.randn(batch, k, dim, generator=generator)
    classifier = _random_judge(2 * dim, seed=4)
    calls = []

    def last() -> torch.Tensor:
        calls.append(1)
        return draft_hidden[:, -1]

    for threshold in (0.0, 0.3, 0.6, 1.0):
        eager = JudgeVerifier(classifier, threshold, True).verify(
            drafts, target[:, :k], target, None, StepFeatures(target_hidden, draft_hidden)
        )
        calls.clear()
        lazy = JudgeVerifier(classifier, threshold, True).verify(
            drafts,
            target[:, :k],
            target,
            None,
            StepFeatures(target_hidden, draft_hidden[:, :-1], draft_hidden_last=last),
        )
        assert torch.equal(eager.accepted, lazy.accepted)
        assert torch.equal(eager.next_tokens, lazy.next_tokens)
        matches = drafts == target_tokens[:, :k]
        reach_last_mismatch = (eager.accepted >= k - 1) & ~matches[:, -1]
        assert len(calls) == int(bool(reach_last_mismatch.any()))
    assert threshold == 1.0 and len(calls) == 1  # everything kept: the last token is judged

    # A batch where every row rejects before the last token never computes it.
    early = drafts.clone()
    early[:, 0] = (target_tokens[:, 0] + 1) % vocab
    calls.clear()
    JudgeVerifier(classifier, 0.0, True).verify(
        early,
        target[:, :k],
        target,
        None,
        StepFeatures(target_hidden, draft_hidden[:, :-1], draft_hidden_last=last),
    )
    assert calls == []


def test_autojudge_with_draft_states_skips_the_extra_draft_forward(tiny_hf: dict) -> None:
    """Decoding with the last draft state on demand gives the tokens an always-computed
    state gives, with fewer draft forwards."""
    from helpers import hf_pair

    from specbench.decoding.core import decode
    from specbench.decoding.drafters import ModelDrafter
    from specbench.decoding.proposers import Proposal

    class EagerDrafter(ModelDrafter):
        def propose(self, slots):  # type: ignore[no-untyped-def]
            (proposal,) = super().propose(slots)
            if proposal.last_hidden is None:
                return [proposal]
            last = proposal.last_hidden()[None]
            hidden = last if proposal.hidden is None else torch.cat([proposal.hidden, last])
            return [Proposal(proposal.tokens, proposal.probs, hidden)]

    models = hf_pair(tiny_hf)
    dim = models.target.model.config.hidden_size + models.require_draft().model.config.hidden_size
    prompt = tiny_hf["tokenizer"].encode("the quick brown")
    results = {}
    for name, drafter_class in (("lazy", ModelDrafter), ("eager", EagerDrafter)):
        verifier = JudgeVerifier(_random_judge(dim, seed=5, scale=0.05), 0.5, True)
        drafter = drafter_class(models.require_draft(), k=4, collect_hidden=True)
        (result,) = decode([request(prompt, 40)], models.target, drafter, verifier)
        results[name] = (result, verifier.judge_accepted)
    (lazy, lazy_kept), (eager, eager_kept) = results["lazy"], results["eager"]
    assert lazy.tokens == eager.tokens and lazy_kept == eager_kept > 0
    assert lazy.stats.target_calls == eager.stats.target_calls
    assert lazy.stats.draft_calls < eager.stats.draft_calls


def test_draft_features_without_the_draft_states_are_refused() -> None:
    classifier = _random_judge(8, seed=6)
    drafts = torch.tensor([[1, 2, 3]])
    target = torch.nn.functional.one_hot(torch.tensor([[0, 0, 0, 0]]), 5).float()
    hidden = torch.randn(1, 4, 4)
    short = torch.randn(1, 2, 4)
    for features in (StepFeatures(hidden), StepFeatures(hidden, short[:, :1])):
        with pytest.raises(ValueError, match="need the draft's hidden states"):
            JudgeVerifier(classifier, 0.5, True).verify(
                drafts, target[:, :3], target, None, features
            )
    # k - 1 states without a way to compute the last are refused as well.
    with pytest.raises(ValueError, match="2 of 3 draft tokens"):
        JudgeVerifier(classifier, 0.5, True).verify(
            drafts, target[:, :3], target, None, StepFeatures(hidden, short)
        )


def test_confidence_features_by_hand() -> None:
    from specbench.judge.confidence_features import CONFIDENCE_FEATURE_NAMES, confidence_features

    probs = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.25, 0.25, 0.25, 0.25]])
    logits = probs.log()  # a zero probability is a -inf logit: no NaN may come of it
    columns = confidence_features(logits, torch.tensor([2, 1]), torch.tensor([0, 0]))
    assert columns.shape == (2, len(CONFIDENCE_FEATURE_NAMES))
    named = dict(zip(CONFIDENCE_FEATURE_NAMES, columns.T, strict=True))
    assert torch.allclose(named["p_draft"], torch.tensor([0.2, 0.25]))
    assert torch.allclose(named["p_target"], torch.tensor([0.5, 0.25]))
    assert torch.allclose(named["log_ratio"], torch.tensor([math.log(2.5), 0.0]), atol=1e-6)
    entropy = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))
    assert torch.allclose(named["entropy"], torch.tensor([entropy, math.log(4)]), atol=1e-6)
    # Two tokens rank above the draft's in row 0, none above it (a tie) in row 1.
    assert named["log_rank_draft"].tolist() == pytest.approx([math.log(3), 0.0])
    assert not columns.isnan().any()


def test_continuations_carry_the_logits_the_last_prefix_token_came_from(tiny_hf: dict) -> None:
    """Mining reads the target's logits at the mismatch from its continuation's prefill:
    the same logits a session computes there, in the toy default, in batched generate and
    in batched speculative continuations."""
    from helpers import hf_pair

    from specbench.judge.mining import _continue

    toy = toy_pair(vocab_size=24, order=1, seed=21, distance=1.5, sharpness=3.0).target
    prefix = [3, 7, 11, 2]
    (continuation,) = greedy_continuations(toy, [prefix], 5, frozenset())
    expected = toy.new_session().logits_from(prefix, len(prefix) - 2)[0]
    assert continuation.prefix_logits is not None
    assert torch.allclose(continuation.prefix_logits, expected)

    models = hf_pair(tiny_hf)
    target, draft = models.target, models.require_draft()
    prefixes = [[5, 9, 23, 7], [40, 41, 42, 43, 44, 45], [100, 3, 17]]
    for k in (0, 3):
        outputs = _continue(
            target,
            draft,
            prefixes,
            [6, 6, 6],
            frozenset(),
            MiningSettings(batch_size=2, speculative_k=k),
        )
        for prefix, output in zip(prefixes, outputs, strict=True):
            expected = target.new_session().logits_from(prefix, len(prefix) - 2)[0]
            assert output.prefix_logits is not None
            assert torch.allclose(output.prefix_logits, expected.float(), atol=1e-4), k


def test_mining_records_confidence_and_replays_prompts_cached_without_it(tmp_path: Path) -> None:
    """New mining stores the target's confidence at each mismatch; a prompt cached without
    it is replayed once to the same columns; a prompt whose replay disagrees with its mined
    examples is mined again (not left out: that biases the data), as is one an earlier
    replay marked."""
    from specbench.judge.mining import MiningCache

    # Order 3: the logits at a mismatch depend on more than the token before it, so a
    # replay that rebuilt the path wrongly could not match by chance.
    models = toy_pair(vocab_size=24, order=3, seed=21, distance=1.5, sharpness=3.0)
    prompts = InlinePromptSet(
        prompts=[f"{w} {e}" for w in WORDS[:3] for e in ENDINGS], task="toy-last"
    ).load(Path())
    mining_cache = MiningCache(tmp_path / "mined")
    inline = _mine(prompts, models, _cache=mining_cache, confidence=True)
    assert inline.confidence is not None  # type: ignore[attr-defined]
    assert inline.confidence.shape == (len(inline.examples), 7)  # type: ignore[attr-defined]
    # At every mismatch the target's own token is its first choice: ratio >= 0, rank >= 1.
    assert (inline.confidence[:, 4] >= 0).all() and (inline.confidence[:, 6] > 0).all()  # type: ignore[attr-defined]

    with_examples = [p.id for p in prompts if mining_cache.load(p.id).examples]  # type: ignore[union-attr]
    for prompt_id in with_examples:  # as written before the confidence columns existed
        mined = mining_cache.load(prompt_id)
        assert mined is not None
        mined.confidence = []
        mining_cache.save(prompt_id, mined)
    broken, marked = with_examples[:2]
    mined = mining_cache.load(broken)
    assert mined is not None
    mined.examples[-1].target_token = mined.examples[-1].draft_token  # not what replay finds
    mining_cache.save(broken, mined)
    mined = mining_cache.load(marked)
    assert mined is not None
    mined.replay_failed = True  # an earlier run's replay disagreed
    mining_cache.save(marked, mined)

    without = _mine(prompts, models, _cache=mining_cache)  # a judge without confidence
    assert without.prompts_replayed == 0 and without.confidence is None  # type: ignore[attr-defined]
    assert without.prompts_remined == 0  # type: ignore[attr-defined]
    replayed = _mine(prompts, models, _cache=mining_cache, confidence=True)
    assert replayed.prompts_replayed == len(with_examples) - 2  # type: ignore[attr-defined]
    assert replayed.prompts_remined == 2 and replayed.prompts_left_out == []  # type: ignore[attr-defined]
    assert replayed.prompts_from_cache == len(prompts) - 2  # type: ignore[attr-defined]
    for prompt_id in (broken, marked):
        again_mined = mining_cache.load(prompt_id)
        assert again_mined is not None and not again_mined.replay_failed
        assert again_mined.has_confidence
    # The toy chain is deterministic: mining again finds the original examples.
    assert replayed.examples == inline.examples  # type: ignore[attr-defined]
    assert torch.allclose(replayed.confidence, inline.confidence, atol=1e-5)  # type: ignore[attr-defined]
    again = _mine(prompts, models, _cache=mining_cache, confidence=True)
    assert again.prompts_replayed == 0 and again.prompts_remined == 0  # type: ignore[attr-defined]


def test_confidence_judge_trains_and_decodes_with_the_same_columns(tmp_path: Path) -> None:
    """A judge that reads the target's confidence trains (its classifier has 7 more
    columns), decodes, and at threshold 0 still equals greedy speculative decoding."""
    _run_judge_at_thresholds_0_and_1(tmp_path, {"confidence_features": True})


def test_confidence_features_without_the_target_logits_are_refused() -> None:
    hidden = torch.randn(1, 3, 4)
    verifier = JudgeVerifier(_random_judge(4 + 7, seed=1), 0.5, False, confidence=True)
    drafts = torch.tensor([[1, 2]])
    target = torch.nn.functional.one_hot(torch.tensor([[3, 2, 1]]), 8).float()
    with pytest.raises(ValueError, match="target's logits"):
        verifier.verify(drafts, target[:, :2], target, None, StepFeatures(hidden))
    logits = torch.randn(1, 3, 8)
    verdict = verifier.verify(
        drafts, target[:, :2], target, None, StepFeatures(hidden, target_logits=logits)
    )
    assert int(verdict.accepted[0]) in (0, 1, 2)


def test_a_judge_with_no_mismatch_to_train_on_is_refused_in_one_line(tmp_path: Path) -> None:
    """A draft identical to the target leaves mining nothing: training stops with a
    SpecbenchError naming the way out, not a traceback."""
    from specbench.run.training import train_methods

    path = _write_preset(tmp_path)
    same = [("models.draft.distance", 0.0)]
    with pytest.raises(SpecbenchError, match="nothing to train") as raised:
        train_methods(load_preset(str(path), discover_methods(), same))
    assert "differs from the target" in raised.value.hint
