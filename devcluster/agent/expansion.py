"""`$(VAR)` expansion exactly as Kubernetes applies it to env values, command and args.

The rules (the kubelet's, restated):
- `$(NAME)` is replaced by NAME's value when NAME is known; an unknown reference stays as written;
- `$$` is an escaped `$` and produces a single `$` (so `$$(NAME)` yields the literal `$(NAME)`);
- a `$` followed by anything else, or at the very end, is kept as is;
- an unterminated `$(` is kept as is.
"""

from __future__ import annotations

from typing import Callable, Mapping

Lookup = Callable[[str], str | None]


def lookup_in(*contexts: Mapping[str, str]) -> Lookup:
    """A lookup that tries each mapping in turn and answers None for a name none of them knows."""

    def lookup(name: str) -> str | None:
        for context in contexts:
            if name in context:
                return context[name]
        return None

    return lookup


def expand(text: str, lookup: Lookup) -> str:
    """Expand every `$(NAME)` reference in `text`."""
    pieces: list[str] = []
    cursor = 0
    checkpoint = 0
    length = len(text)
    while cursor < length:
        if text[cursor] == "$" and cursor + 1 < length:
            pieces.append(text[checkpoint:cursor])
            following = text[cursor + 1]
            if following == "$":
                pieces.append("$")
                cursor += 2
            elif following == "(":
                closer = text.find(")", cursor + 2)
                if closer == -1:
                    pieces.append("$(")
                    cursor += 2
                else:
                    name = text[cursor + 2:closer]
                    value = lookup(name)
                    pieces.append(f"$({name})" if value is None else value)
                    cursor = closer + 1
            else:
                pieces.append("$" + following)
                cursor += 2
            checkpoint = cursor
        else:
            cursor += 1
    pieces.append(text[checkpoint:])
    return "".join(pieces)
