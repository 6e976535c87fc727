"""revjax: forward, backward and bidirectional GPT models from corpus to chat.

Commands for corpora, tokenizers, configs, quickstart, training, chains, evaluation, comparison, report cards, chat,
sweeps and PyTorch export/import.

Every command is one row of :data:`COMMANDS`: the functions that add its arguments to a parser and run it. The
config commands (quickstart, chain, prepare, tokenizer, config) and train take train's arguments, ``--config FILE``
(repeatable; a bare name such as ``default`` or ``model/d20`` is looked up in ``configs/``) and ``key.sub=value``
overrides (:mod:`revjax.train.command`); the others come from their own modules, whose ``main(argv)`` runs them
alone.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from revjax.analysis import experiment_report, report
from revjax.chat import cli as chat_cli
from revjax.chat import server as chat_server
from revjax.compilation import use_compilation_cache
from revjax.config import Config, ConfigError, load_config
from revjax.config_args import config_files, config_from_args
from revjax.errors import exit_on_interrupt, run_command
from revjax.eval import compare
from revjax.eval import rerank_cli
from revjax.eval import run as eval_run
from revjax.experiments import cli as sweep_cli
from revjax.interop import export, importer, lm_eval_cli
from revjax.train import command as train_command


def prepare_corpus(config: Config) -> Path:
    """Build or download the configured corpus; returns its folder."""
    if config.data.corpus == "default":
        from revjax.data.corpus import prepare_default_corpus

        target = config.data_path()
        if target.name != "default":
            raise ConfigError(f"data.dir={target} must be a folder named 'default' for data.corpus=default")
        return prepare_default_corpus(target.parent, cache_dir=config.base_path() / "downloads")
    if config.data.corpus == "fineweb":
        from revjax.data.fineweb import download_shards

        download_shards(range(config.data.fineweb_shards), config.data_path(), base_url=config.data.fineweb_url)
        return config.data_path()
    from revjax.data.shards import split_shards

    split_shards(config.data_path(), "train")  # a user-provided folder: check it holds shards
    return config.data_path()


def describe_corpus(folder: Path) -> str:
    """One line saying what the corpus folder holds: documents and characters per split (from its manifest when
    it has one), else its shards."""
    import json

    try:
        splits = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["splits"]
        parts = [f"{int(v['docs']):,} {k} documents ({int(v['chars']):,} characters)" for k, v in splits.items()]
    except (OSError, ValueError, KeyError, TypeError):
        parts = [f"{len(list(folder.glob('*.parquet')))} shards"]
    return f"corpus ready at {folder}: {', '.join(parts)}"


def corpus_chars(config: Config) -> int | None:
    """Characters of the corpus's train split from its manifest, or None when it has none."""
    import json

    try:
        return int(json.loads((config.data_path() / "manifest.json").read_text(encoding="utf-8"))
                   ["splits"]["train"]["chars"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def train_tokenizer(config: Config):
    """The configured tokenizer: the one already at ``tokenizer_path()`` if it has the configured size (a tokenizer
    that checkpoints may reference is never overwritten), else a new one trained on the corpus's train split, its
    compression measured on the val split."""
    from revjax.data.shards import iter_documents
    from revjax.runlock import RunLock
    from revjax.tokenizer import TOKENIZER_FILE, Tokenizer, TokenizerError
    from revjax.tokenizer import train_tokenizer as train

    path = config.tokenizer_path()
    # one first run trains it; another started at the same time waits, then reuses or refuses what the first made
    with RunLock(path, "tokenizer", create=True, beside=True, wait=True):
        if (path / TOKENIZER_FILE).exists():
            existing = Tokenizer.load(path)
            if existing.vocab_size != config.tokenizer.vocab_size:
                raise TokenizerError(
                    f"a {existing.vocab_size}-token tokenizer already exists at {path} and checkpoints may use it; "
                    f"set tokenizer.dir to another folder to train a {config.tokenizer.vocab_size}-token one beside it"
                )
            print(f"using the {existing.vocab_size}-token tokenizer at {path} (delete that folder to train a new one)")
            return existing
        data = config.data_path()
        return train(
            iter_documents(data, "train"),
            path,
            config.tokenizer.vocab_size,
            doc_cap=config.tokenizer.doc_cap,
            max_chars=config.tokenizer.max_chars,
            total_chars=corpus_chars(config),
            token_bytes_method=config.tokenizer.token_bytes,
            eval_texts=iter_documents(data, "val"),
        )


def show_directions(config: Config, tokenizer, text: str) -> None:
    """Print how one sentence looks to a forward, backward and bidirectional model."""
    from revjax.direction import Direction, Specials, document_direction, orient_document, orient_text

    specials, seed, unit = Specials.from_tokenizer(tokenizer), config.direction.seed, config.direction.unit
    ids = tokenizer.encode(text)
    print(f"\n{text!r} in model order ({len(ids)} tokens; | separates tokens; reversal unit {unit}):")
    for direction in Direction:
        body = tokenizer.encode(orient_text(text, document_direction(direction, seed, 0), unit))
        oriented, _ = orient_document(body, direction, specials, seed=seed, unit=unit)
        pieces = [tokenizer.decode([int(t)]) for t in oriented]
        print(f"  {direction.value:>13}: {'|'.join(pieces)!r}")


def config_command(func: Callable[[argparse.Namespace], int | None]) -> Callable[[argparse.Namespace], int]:
    """``func`` run as :func:`revjax.errors.run_command` runs a command: a user-fixable error prints ``revjax: error:
    …`` and gives its exit code."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        return run_command("revjax", lambda: func(args))

    return run


@config_command
def cmd_prepare(args: argparse.Namespace) -> None:
    config = config_from_args(args, ["default"])
    print(describe_corpus(prepare_corpus(config)))


@config_command
def cmd_tokenizer(args: argparse.Namespace) -> None:
    train_tokenizer(config_from_args(args, ["default"]))


@config_command
def cmd_config(args: argparse.Namespace) -> None:
    print(config_from_args(args, ["default"]).to_yaml(), end="")


@config_command
def cmd_quickstart(args: argparse.Namespace) -> int:
    from revjax.train.loop import exit_code, train

    files = config_files(args, ["default"])
    config = load_config(files, args.overrides)
    print(f"revjax quickstart: run '{config.run_name}', files under {config.base_path()}")
    directions = ("forward", "backward")
    stages = 2 + len(directions)
    print(f"\n[1/{stages}] corpus")
    print(describe_corpus(prepare_corpus(config)))
    print(f"\n[2/{stages}] tokenizer")
    tokenizer = train_tokenizer(config)
    show_directions(config, tokenizer, "In the beginning was the Word.")
    results = {}
    for stage, direction in enumerate(directions, start=3):
        print(f"\n[{stage}/{stages}] training a {direction} model")
        run = load_config(files, [*args.overrides, f"direction.direction={direction}",
                                  f"run_name={config.run_name}-{direction}"])
        results[direction] = train(run)
        if results[direction].interrupted:
            print(f"{results[direction].summary()}; run the same command again to continue")
            return exit_code(results[direction])
    print(f"\n{'direction':<10} {'val bpb':>8} {'at step':>8} {'seconds':>8}  checkpoints")
    for direction, r in results.items():
        print(f"{direction:<10} {r.val_bpb:>8.4f} {r.val_bpb_step:>8} {r.seconds:>8.0f}  {r.run_dir}")
    for direction, r in results.items():
        print(f"\n{direction} sample (reading order): {r.samples[direction][0]!r}")
    return 0


@config_command
def cmd_chain(args: argparse.Namespace) -> int:
    from revjax.train.chain import run_chain, summary_table
    from revjax.train.loop import exit_code

    files = config_files(args, ["default"])
    config = load_config(files, args.overrides)
    prepare_corpus(config)
    train_tokenizer(config)  # the existing one when it has the configured size
    outcomes = run_chain(files, args.overrides)
    print("\n" + summary_table(outcomes))
    last = next((o.result for o in reversed(outcomes) if o.result is not None), None)
    if last is not None and last.interrupted:
        print("interrupted: run the same command again to continue")
        return exit_code(last)
    if last is not None:  # a phase trained now, or what a finished one recorded
        for way, texts in last.samples.items():
            for text in texts:
                print(f"[{way}] {text}")
    return 0


class Command(NamedTuple):
    """A revjax command: ``add_arguments(parser)`` adds its arguments, ``run(args)`` runs it (errors already reported
    as one sentence) and returns its exit code."""

    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    help: str
    description: str | None = None  # the --help page's text (default: help)
    cached: bool = False  # keeps compiled programs in <base dir>/jax_cache (jax's persistent cache)
    own_module: bool = True  # ends the process with its exit code, 0 included, as its module's own main does


COMMANDS: dict[str, Command] = {
    "quickstart": Command(train_command.add_arguments, cmd_quickstart,
                          "prepare the default corpus, train its tokenizer, a forward and a backward model",
                          own_module=False),
    "chain": Command(train_command.add_arguments, cmd_chain,
                     "run base → mid → SFT → RL for the configured direction, each phase resumable", own_module=False),
    "prepare": Command(train_command.add_arguments, cmd_prepare, "build or download the configured corpus",
                       own_module=False),
    "tokenizer": Command(train_command.add_arguments, cmd_tokenizer,
                         "train the configured tokenizer and print compression stats", own_module=False),
    "config": Command(train_command.add_arguments, cmd_config, "print the resolved configuration as YAML",
                      own_module=False),
    "train": Command(train_command.add_arguments, train_command.run,
                     "train (or continue) the configured run, like python -m revjax.train (--help for options)",
                     train_command.DESCRIPTION),
    "eval": Command(eval_run.add_arguments, eval_run.run,
                    "evaluate a run: bpb, CORE, the offline suite, ChatCORE (--help for options)",
                    eval_run.DESCRIPTION, cached=True),
    "rerank": Command(rerank_cli.add_arguments, rerank_cli.run,
                      "best-of-N answers reranked by a backward model's reverse reward (--help for options)",
                      rerank_cli.DESCRIPTION, cached=True),
    "compare": Command(compare.add_arguments, compare.run,
                       "compare runs per direction on the same bytes: bpb, suites, gaps, plots (--help)",
                       compare.DESCRIPTION, cached=True),
    "report": Command(report.add_arguments, report.run,
                      "a report card (markdown and HTML) of one or more chains, per direction (--help)",
                      report.DESCRIPTION),
    "plot": Command(experiment_report.add_arguments, experiment_report.run,
                    "plots and a report (markdown, HTML) of an experiment, intervals over seeds (--help)",
                    experiment_report.DESCRIPTION),
    "chat": Command(chat_cli.add_arguments, chat_cli.run,
                    "chat with a trained model in the terminal (--help for options)", chat_cli.DESCRIPTION),
    "serve": Command(chat_server.add_arguments, chat_server.run,
                     "serve a model over an OpenAI-compatible API with a web page (--help for options)",
                     chat_server.DESCRIPTION),
    "sweep": Command(sweep_cli.add_arguments, sweep_cli.run,
                     "run an experiment sweep locally, on SLURM or on a pod (--help for options)",
                     sweep_cli.DESCRIPTION),
    "export": Command(export.add_arguments, export.run,
                      "export a revjax checkpoint to onanchat/nanochat's PyTorch layout (--help for options)",
                      export.DESCRIPTION),
    "import": Command(importer.add_arguments, importer.run,
                      "import an onanchat/nanochat PyTorch checkpoint as a revjax run (--help for options)",
                      importer.DESCRIPTION),
    "lm-eval": Command(lm_eval_cli.add_arguments, lm_eval_cli.run,
                       "lm-evaluation-harness's command line with --model revjax (ARGS are lm-eval's own)",
                       lm_eval_cli.DESCRIPTION, cached=True),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="revjax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        page = sub.add_parser(name, help=command.help, description=command.description or command.help,
                              formatter_class=eval_run.DefaultsHelpFormatter)
        command.add_arguments(page)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    command = COMMANDS[args.command]
    if args.command == "train":
        exit_on_interrupt("revjax.train")  # until the training loop's own handler, which saves
    if command.cached:
        use_compilation_cache()
    code = command.run(args)
    if code or command.own_module:
        raise SystemExit(code or 0)


if __name__ == "__main__":
    main()
