"""The one command-line convention: a dataclass is the command line.

Every field is a ``--flag`` with an underscore name (``--max_steps 2``, ``--strict_data false``), its default and help
come from the dataclass, and the dataclass's ``__post_init__`` validates: its ``ValueError`` becomes a usage error
naming the flag. Counts that may cover "everything" default to ``None`` (all); a bare ``0`` is refused by
``count_or_all`` rather than silently meaning all. Training (``TrainConfig``), evaluation and the benchmark use it.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, is_dataclass


def parse(config, argv: list[str] | None = None, description: str | None = None):
    """``config`` (a dataclass instance, whose values become the defaults) updated from ``argv``."""
    from transformers import HfArgumentParser

    if not is_dataclass(config) or isinstance(config, type):
        raise TypeError("parse() takes a dataclass instance")
    doc = description if description is not None else (sys.modules["__main__"].__doc__ or "").strip() or None
    parser = HfArgumentParser(type(config), description=doc)
    _underscores_only(parser)
    parser.set_defaults(**asdict(config))
    try:
        (parsed,) = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as e:
        parser.error(str(e))
    return parsed


def count_or_all(name: str, value: int | None, unset: str = "all") -> int | None:
    """A count where None means ``unset`` (all, or a default): a positive int, or None. 0 and negatives are refused,
    naming the flag, so 0 never silently means "all"."""
    if value is None:
        return None
    if isinstance(value, bool) or int(value) != value or value <= 0:
        raise ValueError(f"--{name} {value}: give a positive number, or leave the flag out for {unset}")
    return int(value)


def _underscores_only(parser) -> None:
    """HfArgumentParser also registers ``--max-steps`` for ``--max_steps``: drop those aliases, one name per flag."""
    for action in parser._actions:
        dashed = [o for o in action.option_strings if o.startswith("--") and "-" in o[2:]]
        if dashed and len(dashed) < len(action.option_strings):
            for o in dashed:
                parser._option_string_actions.pop(o, None)
            action.option_strings = [o for o in action.option_strings if o not in dashed]
