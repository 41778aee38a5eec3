"""Hostnames from container names: --hostname-match / --hostname-replacement, with Go's semantics.

Weave's users write replacements for Go's regexp.ReplaceAllString: `$1`, `${1}`,
`$name`, `${name}`, `$$`.  Go also never matches the empty string right after a
previous match, so `(.*)` on "foo" matches once (Python's re.sub would match
twice).  Patterns are Python `re` (RE2's common syntax is the same; `(?P<n>...)`
works in both).
"""
from __future__ import annotations

import re

_GO_REF = re.compile(r"\$(\$|\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")


def _expand(template: str, m: re.Match) -> str:
    def ref(r: re.Match) -> str:
        if r.group(1) == "$":
            return "$"
        name = r.group(2) or r.group(3)
        try:
            value = m.group(int(name)) if name.isdigit() else m.group(name)
        except IndexError:
            return ""  # Go: an unknown group expands to nothing
        return value or ""
    return _GO_REF.sub(ref, template)


def replace_all(pattern: re.Pattern, replacement: str, text: str) -> str:
    out, pos, last_end = [], 0, -1
    for m in pattern.finditer(text):
        if m.start() == m.end() and m.start() == last_end:
            continue  # Go skips an empty match right after a previous match
        out.append(text[pos:m.start()])
        out.append(_expand(replacement, m))
        pos = last_end = m.end()
    out.append(text[pos:])
    return "".join(out)


def derive(name: str, labels: dict | None, from_label: str | None, match: re.Pattern, replacement: str) -> str:
    """The hostname for a container: its name (or a label's value), rewritten."""
    source = name
    if from_label and labels and isinstance(labels.get(from_label), str) and labels[from_label]:
        source = labels[from_label]
    return replace_all(match, replacement, source)
