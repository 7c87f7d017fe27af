"""Everything a plugin author needs, from one module.

A method, backend or tracker plugin imports from here only::

    from specbench.api import InProcessMethod, ExecutionParams, RowProposer, Proposal

The names below are specbench's plugin interface: they keep their meaning across minor
versions, while the modules they live in may move. The plugin guides are the docstrings of
:class:`DecodingMethod` (methods and their hooks), :class:`Proposer` (drafting),
:class:`ModelBackend` (loading models) and :class:`Tracker` (experiment trackers);
``docs/plugins.md`` walks through writing each.
"""

from __future__ import annotations

from specbench.cache_dirs import cache_root
from specbench.decoding.drafters import ModelDrafter, NgramDrafter
from specbench.decoding.proposers import (
    NoProposer,
    Outcome,
    Proposal,
    Proposer,
    RowProposer,
    Sessions,
    Slot,
)
from specbench.decoding.sampling import SamplingParams, logits_to_probs, sample
from specbench.decoding.tree import Candidate, TokenTree, TreeProposer, best_subtree
from specbench.decoding.types import (
    DecodeStats,
    GenerationRequest,
    GenerationResult,
    InterruptedGeneration,
    ServedRequest,
    SpecCounters,
    StopReason,
)
from specbench.decoding.verify import (
    RejectionVerifier,
    StepFeatures,
    TypicalAcceptanceVerifier,
    Verdict,
    Verifier,
)
from specbench.errors import PluginError, SpecbenchError
from specbench.methods.external_engines import (
    counter_stats,
    engine_model,
    gguf_path,
    parse_prometheus,
    per_position,
    spec_counters,
)
from specbench.methods.in_process import ExecutionParams, InProcessMethod, OneSequenceParams
from specbench.methods.server_process import (
    ServerLauncher,
    ServerProcess,
    free_port,
    server_launchers,
)
from specbench.models.backends import ModelBackend
from specbench.models.base import BatchSession, ForwardOutput, LanguageModel, Session, Tokenizer
from specbench.models.capabilities import (
    Architecture,
    InternalStates,
    StateCapture,
    TransformersModel,
    internal_states,
    transformers_model,
)
from specbench.models.spec_base import ModelSpecBase
from specbench.models.specs import HFModelSpec, ModelsSpec
from specbench.plugins import (
    CommandPlugin,
    DecodingMethod,
    EngineMethod,
    MethodModels,
    MethodParams,
    ModelRole,
    RunContext,
    discover_methods,
)
from specbench.prompts.prompt import Prompt
from specbench.prompts.sources import PromptSource, prompts_from_rows
from specbench.prompts.tasks import Score, Task
from specbench.tracking import Tracker

__all__ = [
    "Architecture",
    "BatchSession",
    "Candidate",
    "CommandPlugin",
    "DecodeStats",
    "DecodingMethod",
    "EngineMethod",
    "ExecutionParams",
    "ForwardOutput",
    "GenerationRequest",
    "GenerationResult",
    "HFModelSpec",
    "InProcessMethod",
    "InternalStates",
    "InterruptedGeneration",
    "LanguageModel",
    "MethodModels",
    "MethodParams",
    "ModelBackend",
    "ModelDrafter",
    "ModelRole",
    "ModelSpecBase",
    "ModelsSpec",
    "NgramDrafter",
    "NoProposer",
    "OneSequenceParams",
    "Outcome",
    "PluginError",
    "Prompt",
    "PromptSource",
    "Proposal",
    "Proposer",
    "RejectionVerifier",
    "RowProposer",
    "RunContext",
    "SamplingParams",
    "Score",
    "ServedRequest",
    "ServerLauncher",
    "ServerProcess",
    "Session",
    "Sessions",
    "Slot",
    "SpecCounters",
    "SpecbenchError",
    "StateCapture",
    "StepFeatures",
    "StopReason",
    "Task",
    "TokenTree",
    "Tokenizer",
    "Tracker",
    "TransformersModel",
    "TreeProposer",
    "TypicalAcceptanceVerifier",
    "Verdict",
    "Verifier",
    "best_subtree",
    "cache_root",
    "counter_stats",
    "discover_methods",
    "engine_model",
    "free_port",
    "gguf_path",
    "internal_states",
    "logits_to_probs",
    "parse_prometheus",
    "per_position",
    "prompts_from_rows",
    "sample",
    "server_launchers",
    "spec_counters",
    "transformers_model",
]
