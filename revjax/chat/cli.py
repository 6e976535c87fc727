"""``revjax chat RUN_DIR``: talk to a revjax model in the terminal, streaming, in any direction it reads.

A forward reply is printed as it is written. A backward one is written right to left: on a terminal the line
being written is shown growing leftwards (its newest, leftmost part, redrawn in place), then replaced by the whole
reply in reading order; when the output is not a terminal only the final reply is printed. On a terminal a
``thinking…`` line (``compiling…`` before the first reply, which compiles the model) stands where the reply will
be until its first text arrives. Replies are rendered for people (:func:`revjax.direction.render_reply`): a tool
call reads ``[calculator: EXPR = RESULT]``. A base model (trained on documents only) is announced with a warning.
A ``sequence``-mode backward model is offered the reverse task: you type an answer and the model writes the
question that precedes it. A backward ``word`` or ``entity`` model (its unit is named in the greeting) writes whole
words right to left, each spelled as usual; its reply grows leftwards a word at a time.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from typing import Sequence, TextIO

from revjax.chat.session import REVERSE, ChatError, ChatSession, load_model
from revjax.direction import Direction, Unit
from revjax.errors import run_command

HELP = "/forward, /backward: generation direction (bidirectional models) · /clear: new conversation · /quit: leave"


def _labels(session: ChatSession) -> tuple[str, str]:
    """(what the user types, what the model writes) for the session's current direction."""
    if session.task == REVERSE:
        return "Answer", "Question (reverse task)"
    return "You", "Assistant"


def base_warning(session: ChatSession) -> str | None:
    """One line saying the model is a base model (never taught to chat), or None for a chat model."""
    if not session.model.is_base:
        return None
    return ("warning: this is a base model (phase base, trained on documents only): it continues text rather than "
            "answering; chat with a mid, sft or rl run for replies")


def describe(session: ChatSession) -> str:
    model = session.model
    step = "" if model.step is None else f", step {model.step}"
    unit = "" if model.unit is Unit.TOKEN else f", {model.unit.value} units"
    lines = [f"revjax chat: {model.name}{step}, a {model.direction.value} model ({model.mode.value} conversations"
             f"{unit}); generating {session.generate.value}"]
    if session.task == REVERSE:
        lines.append("Reverse task: type an answer; the model writes the question that comes before it.")
    lines += [w for w in [base_warning(session)] if w]
    lines.append(HELP)
    return "\n".join(lines)


def waiting_note(session: ChatSession) -> str:
    """What stands where the reply will be until its first text: ``compiling…`` for the session's first reply."""
    return "thinking…" if session.replies else "compiling… (the first reply compiles the model)"


def show_reply(session: ChatSession, text: str, settings: dict, out: TextIO, *, label: bool = True) -> bool:
    """Generate and print one turn; False if Ctrl-C stopped it (then nothing is added to the history).

    Without ``label`` only the reply text is printed (``-p``). On a terminal a waiting note (:func:`waiting_note`)
    is shown until the first text arrives, then cleared."""
    reply = session.reply(text, **settings)
    name = _labels(session)[1]
    head = f"{name}: " if label else ""
    live = out.isatty()
    width = max(20, shutil.get_terminal_size((80, 24)).columns - len(name) - 8)
    forward = reply.way is Direction.FORWARD
    waiting = live
    if live:
        out.write(f"{head if forward else name + ' ← '}{waiting_note(session)}")
        out.flush()
    try:
        if forward:
            if not live:
                out.write(head)
            for piece in reply:
                if waiting:
                    out.write(f"\r\033[K{head}")
                    waiting = False
                out.write(piece.text)
                out.flush()
            out.write(f"\r\033[K{head}\n" if waiting else "\n")
        else:
            shown = ""
            for piece in reply:
                shown = piece.text + shown
                if live:  # the text so far, growing leftwards, redrawn in place
                    out.write(f"\r\033[K{name} ← {shown.replace(chr(10), ' ')[:width]}")
                    out.flush()
            out.write(("\r\033[K" if live else "") + f"{head}{reply.text}\n")
    except KeyboardInterrupt:
        out.write("\r\033[K[stopped]\n" if live and (waiting or not forward) else " [stopped]\n")
        return False
    finally:
        out.flush()
    return True


def repl(session: ChatSession, settings: dict, out: TextIO = sys.stdout) -> None:
    print(describe(session), file=out)
    while True:
        try:
            line = input(f"\n{_labels(session)[0]}: ")
        except EOFError:
            print(file=out)
            return
        command = line.strip()
        if command in ("/quit", "/exit"):
            return
        if command == "/clear":
            session.clear()
            print("conversation cleared", file=out)
            continue
        if command in ("/forward", "/backward"):
            try:
                way = session.set_direction(command[1:])
            except ChatError as err:
                print(err, file=out)
                continue
            note = " (reverse task: type an answer, the model writes its question)" if session.task == REVERSE else ""
            print(f"generating {way.value}{note}", file=out)
            continue
        if command.startswith("/"):
            print(f"unknown command {command}; {HELP}", file=out)
            continue
        if command:
            show_reply(session, line, settings, out)


DESCRIPTION = "``revjax chat RUN_DIR``: chat with a revjax run (multi-turn, streaming; -p answers one prompt)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``RUN_DIR [-p PROMPT] [--temperature T] [--top-k K] [--max-tokens N] [--step N] [--direction …] [--seed N]``,
    and the in-chat commands as the epilog."""
    parser.epilog = HELP
    parser.add_argument("run_dir", help="a revjax run folder (imported onanchat exports too)")
    parser.add_argument("-p", "--prompt", help="answer this one prompt (an answer, for the reverse task) and exit")
    parser.add_argument("--temperature", type=float, default=0.6, help="0 is greedy (default 0.6)")
    parser.add_argument("--top-k", type=int, default=50, help="sample among the K likeliest tokens, 0: all (50)")
    parser.add_argument("--max-tokens", type=int, default=512, help="most tokens per reply (512)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest intact one)")
    parser.add_argument("--direction", choices=("forward", "backward"), help="generation direction to start with "
                        "(bidirectional models; default forward)")
    parser.add_argument("--seed", type=int, help="random seed of every reply (default: a fresh one per reply)")


def run(args: argparse.Namespace) -> int:
    """Chat with the run ``args`` name (or answer ``--prompt``); returns the exit code."""

    def body() -> None:
        if args.temperature < 0 or args.top_k < 0 or args.max_tokens < 1:
            raise ChatError("--temperature and --top-k must be non-negative and --max-tokens at least 1")
        session = ChatSession(load_model(args.run_dir, args.step), generate=args.direction)
        settings = {"temperature": args.temperature, "top_k": args.top_k, "max_tokens": args.max_tokens,
                    "seed": args.seed}
        if args.prompt is not None:
            warning = base_warning(session)
            if warning:
                print(warning, file=sys.stderr)
            show_reply(session, args.prompt, settings, sys.stdout, label=False)
            return
        repl(session, settings)

    return run_command("revjax chat", body)


def main(argv: Sequence[str] | None = None) -> int:
    """``revjax chat RUN_DIR``: chat with a revjax run (multi-turn, streaming; -p answers one prompt)."""
    parser = argparse.ArgumentParser(prog="revjax chat", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))

