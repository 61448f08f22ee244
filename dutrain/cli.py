"""`dutrain VERB [--config FILE.yaml] [key=value ...]` — the module that reads argv.

One exception: `dutrain submit` owns its own `--flags` (`dutrain.submit.FLAG_TABLE`, one record
per flag) because what follows its VERB is another verb's argv; the CLI hands it the raw argv.
Every runner returns an int exit code and raises `UserError` for what the user can fix; this
module prints that as one line (`dutrain VERB: error: ...`, exit 2), and Ctrl-C as one line
(exit 130).
"""

from __future__ import annotations

import difflib
import os
import signal
import sys
import textwrap

from dutrain import __version__
from dutrain.config import VERBS, help_rows, load_config
from dutrain.errors import EXIT_CODES, EXIT_INTERRUPTED, EXIT_USER, UserError, disk_full

USAGE = "usage: dutrain VERB [--config FILE.yaml] [key=value ...]   (dutrain VERB --help)"


def _main_help() -> str:
    width = max(len(v) for v in VERBS) if VERBS else 8
    lines = [f"dutrain {__version__}: train VLMs to understand image degradation physically", "",
             USAGE, "", "verbs:"]
    lines += [f"  {name:<{width}}  {v.help}" for name, v in VERBS.items()]
    lines += ["", "Config: defaults ← --config FILE.yaml ← key=value overrides (dotted keys, YAML "
                  "values, e.g. sources=[builtin,/data/imgs] tracking.uri=http://127.0.0.1:5000).",
              "Secrets (AWS_*, MLFLOW_TRACKING_TOKEN, RAY_AUTH_TOKEN) come from the environment "
              "only.",
              "", "exit codes (every verb):"]
    lines += [f"  {code:>3}  {text}" for code, text in EXIT_CODES.items()]
    return "\n".join(lines)


def _verb_help(name: str) -> str:
    verb = VERBS[name]
    rows = help_rows(verb.config_class())
    kw = max(len(r[0]) for r in rows)
    dw = min(max(len(r[1]) for r in rows), 28)
    out = [f"usage: dutrain {name} [--config FILE.yaml] [key=value ...]", "", verb.help, "",
           "keys (default, description):"]
    for key, default, doc in rows:
        wrapped = textwrap.wrap(doc, 100 - kw - dw - 6) or [""]
        if len(default) > dw:  # a long default gets its own line
            out.append(f"  {key:<{kw}}  {default}")
            wrapped = [""] + wrapped
        out.append(f"  {key:<{kw}}  {default:<{dw}}  {wrapped[0]}" if len(default) <= dw
                   else " " * (kw + dw + 6) + wrapped[1])
        out += [" " * (kw + dw + 6) + w for w in wrapped[1 if len(default) <= dw else 2:]]
    return "\n".join(out)


def split_args(argv: list[str]) -> tuple[str | None, list[str], bool]:
    """(--config file, key=value overrides, --help asked) from a verb's argv."""
    config, overrides, want_help = None, [], False
    it = iter(argv)
    for a in it:
        if a in ("-h", "--help"):
            want_help = True
        elif a in ("-c", "--config"):
            config = next(it, None)
            if config is None:
                raise UserError("--config needs a file name")
        elif a.startswith("--config="):
            config = a.split("=", 1)[1]
        elif a.startswith("-"):
            raise UserError(f"unknown option '{a}'; options: --config FILE, --help; "
                              f"everything else is key=value")
        else:
            overrides.append(a)
    return config, overrides, want_help


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:  # `dutrain ... | head` must not end in a traceback
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    except (AttributeError, ValueError):
        pass
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_main_help())
        return 0
    if argv[0] in ("-V", "--version"):
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in VERBS:
        close = difflib.get_close_matches(name, list(VERBS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"dutrain: unknown verb '{name}'{hint}; verbs: {', '.join(VERBS)}", file=sys.stderr)
        return EXIT_USER
    try:
        return _run_verb(name, rest)
    except UserError as exc:  # the one place a user error is printed
        print(f"dutrain {name}: error: {exc}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print(f"dutrain {name}: interrupted; finished work is kept, rerun the same command to "
              f"resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if not disk_full(exc):
            raise
        where = getattr(exc, "filename", None)
        where = f" (writing {where})" if where else ""
        print(f"dutrain {name}: error: no space left on device{where}; finished work is kept: "
              f"free space or choose another output, then rerun the same command", file=sys.stderr)
        return EXIT_USER


def _run_verb(name: str, rest: list[str]) -> int:
    """Parse, validate and run one verb; every runner returns an exit code (int) or None (0)."""
    verb = VERBS[name]
    if name == "submit":  # submit reads its own --flags (a verb and that verb's overrides)
        return int(verb.run_fn()(rest) or 0)
    config, overrides, want_help = split_args(rest)
    if want_help:
        print(_verb_help(name))
        return 0
    cfg = load_config(verb.config_class(), config, overrides, verb=name)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    return int(verb.run_fn()(cfg) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
