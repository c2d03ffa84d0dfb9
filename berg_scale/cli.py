"""The `berg-scale` command line.

Each subcommand lives in its own module under `berg_scale.commands` and exposes
`configure(parser)` and `run(args) -> int`. Command modules keep heavy imports
(torch, ray) inside `run` so that `berg-scale --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from berg_scale import __version__
from berg_scale.errors import BergScaleError

# (command name, module under berg_scale.commands, one-line help)
COMMANDS: list[tuple[str, str, str]] = [
    ("demo", "demo", "run the whole pipeline on a synthetic BERG root and synthetic images"),
    ("generate", "generate", "generate responses for sharded images from a run config"),
    ("status", "status", "show done / failed / pending shards of an output"),
    ("rnc", "rnc", "relational neural control over generated responses"),
    ("make-shards", "make_shards", "pack a folder of images into WebDataset tar shards"),
    ("synth-root", "synth_root", "write a synthetic BERG root with random weights"),
    ("fetch-weights", "fetch_weights", "download the BERG weight files a run needs"),
    ("plan", "plan", "estimate GPUs, output size and run time of a config"),
    ("experiment", "experiment", "run an in silico experiment of the BERG paper over generated responses"),
    ("search", "search", "find the images whose predicted response pattern is nearest a target pattern"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="berg-scale",
        description="Generate in silico brain responses with BERG encoding models at scale, "
        "and search them with Relational Neural Control.",
    )
    parser.add_argument("--version", action="version", version=f"berg-scale {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name, help_text in COMMANDS:
        try:
            module = importlib.import_module(f"berg_scale.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"berg_scale.commands.{module_name}":
                raise
            continue
        command_parser = sub.add_parser(name, help=help_text, description=module.__doc__)
        module.configure(command_parser)
        command_parser.set_defaults(_run=module.run)
    _record_flags(parser)
    return parser


def _record_flags(parser: argparse.ArgumentParser) -> None:
    """Give every (sub)command's namespace the set of its own option strings (`_flags`), so
    error messages can leave out advice about flags the running command does not have."""
    flags = frozenset(option for action in parser._actions for option in action.option_strings)
    parser.set_defaults(_flags=flags)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _record_flags(child)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    from berg_scale.io.storage_errors import set_command_flags

    set_command_flags(getattr(args, "_flags", None))
    try:
        return int(args._run(args) or 0)
    except BergScaleError as exc:
        return _report(args.command, exc)
    except KeyboardInterrupt as stop:
        from berg_scale.engine.termination import Terminated, sigterm_received

        terminated = isinstance(stop, Terminated) or sigterm_received()
        print(f"berg-scale {args.command}: {'terminated (SIGTERM)' if terminated else 'interrupted'}",
              file=sys.stderr)
        return 143 if terminated else 130
    except BrokenPipeError:
        # The reader of our output went away (`| head`): not an error of ours. Point stdout
        # at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        # Last resort: storage, credential, endpoint and file errors that no command
        # translated still become one line with the fix; anything else is a bug and
        # keeps its traceback.
        from berg_scale.io.storage_errors import translate_storage_error

        translated = translate_storage_error(exc)
        if translated is None:
            raise
        return _report(args.command, translated)
    finally:
        set_command_flags(None)  # a library caller after us gets the full advice again


def _report(command: str, exc: BaseException) -> int:
    """Print an error as exactly one line (exit status 2, as the docs promise)."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    print(f"berg-scale {command}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
