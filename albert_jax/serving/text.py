"""Untrusted strings made safe to print on a terminal or write to a log line.

Key names, model names and anything else a caller or a database row supplies may hold
terminal escapes (``\\x1b[...``), carriage returns and newlines (which forge lines),
NULs, or Unicode bidirectional controls (which reorder what is shown, "Trojan Source").
:func:`printable` shows each of them as an escape sequence instead.
"""

from __future__ import annotations

# Bidi_Control characters (Unicode): embeddings, overrides, isolates and the marks; plus the
# line and paragraph separators, which some terminals and log viewers take for newlines.
_UNSAFE_FORMAT = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029")
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
ELLIPSIS = "\u2026"


def _escape(ch: str) -> str:
    code = ord(ch)
    # C0 controls, DEL, C1 controls (0x9b is a one-byte CSI on some terminals), the bidi and
    # separator characters, and lone surrogates (they cannot even be encoded as UTF-8).
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return _SHORT.get(ch) or f"\\x{code:02x}"
    if ch in _UNSAFE_FORMAT or 0xD800 <= code <= 0xDFFF:
        return f"\\u{code:04x}"
    return ch


def printable(text: str, limit: int | None = None) -> str:
    """``text`` with control characters escaped (``\\x1b``, ``\\n``, ``\\u202e``...).

    With ``limit``, the result is at most ``limit`` characters: a longer one is cut (never
    inside an escape) and ends with an ellipsis (U+2026). Printable text, backslashes
    included, is kept as it is.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    # Every character gives at least one: past limit + 1 of them the rest cannot be shown.
    pieces = [_escape(ch) for ch in (text if limit is None else text[: limit + 1])]
    if limit is None or sum(map(len, pieces)) <= limit:
        return "".join(pieces)
    kept: list[str] = []
    room = limit - len(ELLIPSIS)
    for piece in pieces:
        if len(piece) > room:
            break
        kept.append(piece)
        room -= len(piece)
    kept.append(ELLIPSIS)
    return "".join(kept)


__all__ = ["ELLIPSIS", "printable"]
