"""Token patterns for TfidfVectorizer that tokenize identically in scikit-learn and onnxruntime.

scikit-learn tokenizes with Python's ``re`` (Unicode-aware ``\\w``, ``\\d``, ``\\s``,
``\\b``); onnxruntime's ``Tokenizer`` uses RE2, where those classes are ASCII-only
and look-arounds do not exist. skl2onnx silently swaps scikit-learn's default
``(?u)\\b\\w\\w+\\b`` for ``[a-zA-Z0-9_]+``, which keeps one-letter tokens (and so
changes n-grams). edgeml therefore uses only patterns built from explicit ASCII
character classes, which mean the same in both engines, and refuses the rest.

The text cleaning options of a recipe map to patterns (``token_pattern``); the
train stage builds ``TfidfVectorizer(lowercase=..., token_pattern=token_pattern(...))``.
Lower-casing runs in ONNX as ``StringNormalizer`` with the ``C`` locale (the default
``en_US.UTF-8`` locale is missing on many devices and makes onnxruntime refuse the
model): it lowers ASCII letters only, which is all the patterns below can match.
"""

from __future__ import annotations

import re

from edgeml.errors import ConversionError

__all__ = ["TOKEN_PATTERNS", "check_token_pattern", "token_pattern"]

# (strip_punctuation, strip_digits) -> pattern; the same as edgeml.train.pipeline's
# text_token_pattern. Words are runs of at least 2 ASCII letters (and digits); with
# strip_punctuation False each ASCII punctuation character is a token of its own.
# Non-ASCII letters are left out on purpose: Python lower-cases them, onnxruntime's
# StringNormalizer in the C locale does not, so "CAFÉ" would give different tokens.
_PUNCT = r"|[!-/:-@\[-`{-~]"
TOKEN_PATTERNS: dict[tuple[bool, bool], str] = {
    (True, True): "[A-Za-z]{2,}",
    (True, False): "[A-Za-z0-9]{2,}",
    (False, True): "[A-Za-z]{2,}" + _PUNCT,
    (False, False): "[A-Za-z0-9]{2,}" + _PUNCT,
}

# Constructs whose meaning differs between Python re and RE2 (or that RE2 lacks).
_UNSAFE = re.compile(r"\\[wWdDsSbBAZuUN0-9]|\(\?[=!<]|\(\?[a-zA-Z]*u|\(\?P=")


def token_pattern(*, strip_punctuation: bool = True, strip_digits: bool = True) -> str:
    """The token pattern realising the recipe's text cleaning options."""
    return TOKEN_PATTERNS[(bool(strip_punctuation), bool(strip_digits))]


def check_token_pattern(pattern: str, where: str = "TfidfVectorizer") -> str:
    """Return ``pattern`` if it converts with parity, else raise ConversionError saying what to use."""
    if pattern in TOKEN_PATTERNS.values():
        return pattern
    bad = _UNSAFE.search(pattern)
    if bad is None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConversionError(f"{where}: token_pattern {pattern!r} is not a valid regex: {exc}") from exc
        return pattern
    choices = ", ".join(
        f"{p!r} (strip_punctuation={k[0]}, strip_digits={k[1]})" for k, p in TOKEN_PATTERNS.items()
    )
    raise ConversionError(
        f"{where}: token_pattern {pattern!r} cannot be converted with parity: {bad.group(0)!r} "
        f"means something else in onnxruntime's RE2 tokenizer. Use explicit ASCII classes, "
        f"e.g. edgeml.convert.token_pattern(...): {choices}"
    )
