"""revjax: forward, backward and bidirectional GPT language models in JAX/Flax.

The package is built in layers; a module imports only from its own layer or the ones below it, and no import cycles
(tests/test_layout.py holds the table and checks both, counting imports inside functions and under TYPE_CHECKING):

1. foundation: ``errors``, ``yamlio``, ``phases`` (the phase facts), ``memory``, ``runlock``, ``replace``,
   ``analysis.plots`` (matplotlib only), ``architecture`` and ``horizon`` (the model recipes and nanochat's
   horizon formulas, plain Python)
2. schema: ``config_schema``, ``config_checks``, ``config_build``
3. config: ``config``, ``config_args``, ``compilation``
4. text: ``tokenizer``, ``direction``, ``data``
5. model: ``model``, ``model_ops``, ``recipe_model``, ``attention``, ``losses``, ``optim``, ``optim_2026``,
   ``sharding``, ``state``
6. runs: ``checkpoint``, ``runs``, ``engine``, ``calculator``, ``interop``
7. tasks: ``tasks``
8. eval/train: ``eval``, ``train``, ``tracking``
9. applications: ``chat``, ``analysis``, ``experiments``, ``interop.lm_eval`` and ``interop.lm_eval_cli`` (they
   read ``eval``)
10. cli: ``cli``
"""

__version__ = "0.1.0"
