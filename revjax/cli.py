"""revjax: forward, backward and bidirectional GPT models from corpus to chat.

Commands for corpora, tokenizers, configs, quickstart, training, chains, evaluation, comparison, report cards, chat,
sweeps and PyTorch export/import.

The config commands take ``--config FILE`` (repeatable; a bare name such as ``default`` or ``model/d20`` is looked
up in ``configs/``) and ``key.sub=value`` overrides; the delegated ones (train, eval, compare, report, plot, chat,
serve, sweep, export, import) parse their own arguments.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Callable, Sequence

from revjax.config import Config, ConfigError, load_config
from revjax.config_args import config_files, config_from_args
from revjax.errors import exit_on_interrupt, run_command

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
            token_bytes_method=config.tokenizer.token_bytes,
            eval_texts=iter_documents(data, "val"),
        )


def show_directions(config: Config, tokenizer, text: str) -> None:
    """Print how one sentence looks to a forward, backward and bidirectional model."""
    from revjax.direction import Direction, Specials, orient_document

    specials = Specials.from_tokenizer(tokenizer)
    ids = tokenizer.encode(text)
    print(f"\n{text!r} in model order ({len(ids)} tokens; | separates tokens):")
    for direction in Direction:
        oriented, _ = orient_document(ids, direction, specials, seed=config.direction.seed)
        pieces = [tokenizer.decode([int(t)]) for t in oriented]
        print(f"  {direction.value:>13}: {'|'.join(pieces)!r}")


def cmd_prepare(args: argparse.Namespace) -> None:
    config = config_from_args(args, ["default"])
    print(f"corpus ready at {prepare_corpus(config)}")


def cmd_tokenizer(args: argparse.Namespace) -> None:
    train_tokenizer(config_from_args(args, ["default"]))


def cmd_config(args: argparse.Namespace) -> None:
    print(config_from_args(args, ["default"]).to_yaml(), end="")


def cmd_quickstart(args: argparse.Namespace) -> int:
    from revjax.train.loop import exit_code, train

    files = config_files(args, ["default"])
    config = load_config(files, args.overrides)
    print(f"revjax quickstart: run '{config.run_name}', files under {config.base_path()}")
    print("\n[1/3] corpus")
    prepare_corpus(config)
    print("\n[2/3] tokenizer")
    tokenizer = train_tokenizer(config)
    show_directions(config, tokenizer, "In the beginning was the Word.")
    results = {}
    for direction in ("forward", "backward"):
        print(f"\n[3/3] training a {direction} model")
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
    if last is not None:
        for way, texts in last.samples.items():
            for text in texts:
                print(f"[{way}] {text}")
    return 0


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], None], str]] = {
    "quickstart": (cmd_quickstart, "prepare the default corpus, train its tokenizer, a forward and a backward model"),
    "chain": (cmd_chain, "run base → mid → SFT → RL for the configured direction, each phase resumable"),
    "prepare": (cmd_prepare, "build or download the configured corpus"),
    "tokenizer": (cmd_tokenizer, "train the configured tokenizer and print compression stats"),
    "config": (cmd_config, "print the resolved configuration as YAML"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="revjax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (func, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", action="append", metavar="FILE", help="YAML config (repeatable, merged in order)")
        p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
        p.set_defaults(func=func)
    for name, (_, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


# Subcommands with their own arguments (no config): ``revjax NAME ...`` hands the rest to ``module:function`` as
# is. Those marked ``cached`` keep compiled programs in ``<base dir>/jax_cache`` (jax's persistent cache).
DELEGATED: dict[str, tuple[str, str]] = {
    "train": ("revjax.train.loop:run_from_args",
              "train (or continue) the configured run, like python -m revjax.train (--help for options)"),
    "eval": ("revjax.eval.run:main", "evaluate a run: bpb, CORE, the offline suite, ChatCORE (--help for options)"),
    "compare": ("revjax.eval.compare:main",
                "compare runs per direction on the same bytes: bpb, suites, gaps, plots (--help)"),
    "report": ("revjax.analysis.report:main",
               "a report card (markdown and HTML) of one or more chains, per direction (--help)"),
    "plot": ("revjax.analysis.experiment_report:main",
             "plots and a report (markdown, HTML) of an experiment, intervals over seeds (--help)"),
    "chat": ("revjax.chat.cli:main", "chat with a trained model in the terminal (--help for options)"),
    "serve": ("revjax.chat.server:main",
              "serve a model over an OpenAI-compatible API with a web page (--help for options)"),
    "sweep": ("revjax.experiments:main", "run an experiment sweep locally, on SLURM or on a pod (--help for options)"),
    "export": ("revjax.interop.export:main",
               "export a revjax checkpoint to onanchat/nanochat's PyTorch layout (--help for options)"),
    "import": ("revjax.interop.importer:main",
               "import an onanchat/nanochat PyTorch checkpoint as a revjax run (--help for options)"),
}
CACHED = ("eval", "compare")


def run_delegated(name: str, argv: list[str]) -> int:
    """Run subcommand ``name`` of :data:`DELEGATED` with its own arguments ``argv``."""
    if name == "train":
        exit_on_interrupt("revjax.train")
    if name in CACHED:
        from revjax.compilation import use_compilation_cache

        use_compilation_cache()
    module, _, function = DELEGATED[name][0].partition(":")
    return getattr(importlib.import_module(module), function)(argv)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        raise SystemExit(run_delegated(argv[0], argv[1:]))
    args = build_parser().parse_args(argv)
    code = run_command("revjax", lambda: args.func(args))
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
