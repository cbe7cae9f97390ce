"""Text for the terminal: names printed so that they cannot fake lines or hide characters."""

from __future__ import annotations


def printable(text: str) -> str:
    """text for one line of terminal output: control, format and separator characters
    (newline, ESC, U+2028, bidi overrides, ...) and backslashes escaped Python-style,
    so a name can neither fake lines nor hide characters. JSON output keeps exact text."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(
        "\\\\" if c == "\\" else c if c.isprintable() else c.encode("unicode_escape").decode()
        for c in text
    )
