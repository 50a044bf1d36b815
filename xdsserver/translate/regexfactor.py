"""Factor an alternation of RE2 patterns so its program holds the text they share once.

`/svc0/items/[0-9]+`, ..., `/svc997/items/[0-9]+`, `/index.html`, `/probe-3` as
`(?:p1)|(?:p2)|...` is an 11,118-instruction RE2 program that takes ~6 ms to compile, which
Envoy does for every route configuration that carries it; `/index.html|/probe-3|/svc(?:0|1|10|
...)/items/[0-9]+` is 331 instructions, ~0.5 ms. RE2 itself only factors common *literal
prefixes* of neighbouring alternatives, never suffixes, so that is what this module adds.

Why it keeps the verdicts: Envoy's safe_regex is a full match, a yes/no question about the
whole string, so an alternation is the union of its alternatives' languages (which alternative
RE2 prefers does not matter) and concatenation distributes over union:
P(?:m1|m2)S accepts exactly what P m1 S or P m2 S accepts. That holds as long as P, m_i and S
are sequences of *tokens* (an atom with all its quantifiers) whose meaning does not depend on
what precedes them. A pattern that cannot be cut so with certainty (a top-level `|`, `\\Q`, a
flag group `(?i)` that changes every later token, anything unusual) is kept whole, as today.

Pure: no RE2 needed (the property tests check the result against RE2).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

Tokens = tuple[str, ...]

# {n}, {n,} and {n,m}: anything else after an atom is a literal brace to RE2, which we do not
# try to reason about (the pattern is then kept whole).
_COUNTED = re.compile(r"\{[0-9]+(?:,[0-9]*)?\}")
_GROUP_HEAD = re.compile(r"\?(?::|P?<[A-Za-z0-9_]+>|[imsU]*(?:-[imsU]+)?:)")
_POSIX = re.compile(r"\[:\^?[a-z]+:\]")
_HEX2 = re.compile(r"[0-9A-Fa-f]{2}")
# Escapes of one letter whose meaning is fixed (\C, a single byte, is left out on purpose).
_LETTER_ESCAPES = frozenset("dDsSwWbBAzfnrtva")
# Characters that start something other than a plain literal at top level.
_SPECIAL = frozenset("\\.^$|?*+()[]{}")
# The common tokens in one C-level scan: a literal, `.`, `^`, `$`, a simple escape or a class
# without `[`, `\p`, `\x` inside, each with its quantifiers. `]?+` is possessive, so `[]` is
# not taken for a class (RE2 reads its `]` as a member and finds no end). A pattern with
# anything else (a group, ...) is not covered by the scan and goes through tokenize's loop.
_PUNCT = r"[!-/:-@\[-^`{-~ ]"
_SIMPLE_TOKEN = re.compile(
    r"(?:[^\\.^$|?*+()\[\]{}]|[.^$]|\\(?:[dDsSwWbBAzfnrtva]|" + _PUNCT + r")"
    r"|\[\^?+\]?+(?:[^\]\\\[]|\\(?:[dDsSwW]|" + _PUNCT + r"))*\])"
    r"(?:[*+?]|\{[0-9]+(?:,[0-9]*)?\})*")


def _braced_end(p: str, i: int) -> int | None:
    """End (exclusive) of `{...}` starting at p[i] == '{'."""
    close = p.find("}", i)
    return None if close < 0 else close + 1


def _escape_end(p: str, i: int) -> int | None:
    """End of the escape starting at p[i] == '\\', or None when it is one we do not handle."""
    if i + 1 >= len(p):
        return None
    c = p[i + 1]
    if c in "pP":
        if i + 2 < len(p) and p[i + 2] == "{":
            return _braced_end(p, i + 2)
        return i + 3 if i + 2 < len(p) and p[i + 2].isalpha() else None
    if c == "x":
        if i + 2 < len(p) and p[i + 2] == "{":
            return _braced_end(p, i + 2)
        return i + 4 if _HEX2.fullmatch(p, i + 2, i + 4) else None
    if c in _LETTER_ESCAPES:
        return i + 2
    if c.isascii() and not c.isalnum() and c != "_" and c.isprintable():
        return i + 2            # an escaped punctuation character: that character
    return None                 # \Q, \E, \C, octal, backreferences, unknown letters


def _class_end(p: str, i: int) -> int | None:
    """End of the character class starting at p[i] == '['."""
    j = i + 1
    if j < len(p) and p[j] == "^":
        j += 1
    if j < len(p) and p[j] == "]":
        j += 1                  # `[]a]`, `[^]a]`: a ']' first is a member, not the end
    while j < len(p):
        c = p[j]
        if c == "]":
            return j + 1
        if c == "\\":
            e = _escape_end(p, j)
            if e is None:
                return None
            j = e
        elif c == "[" and p.startswith("[:", j):
            m = _POSIX.match(p, j)
            if m is None:
                return None
            j = m.end()
        else:
            j += 1
    return None


def _group_end(p: str, i: int) -> int | None:
    """End of the group starting at p[i] == '(' (nested groups, classes and escapes skipped)."""
    depth = 0
    j = i
    while j < len(p):
        c = p[j]
        if c == "\\":
            e = _escape_end(p, j)
            if e is None:
                return None
            j = e
            continue
        if c == "[":
            e = _class_end(p, j)
            if e is None:
                return None
            j = e
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    return None


@functools.lru_cache(maxsize=65536)
def tokenize(pattern: str) -> Tokens | None:
    """`pattern` cut at top level into tokens (an atom with its quantifiers), or None.

    The tokens concatenated are `pattern`; each means the same wherever it stands in a
    concatenation. None when the pattern has a top-level `|`, a flag group without a colon such
    as `(?i)` (it would change the tokens after it), `\\Q`, or anything not recognised.
    """
    if not _SPECIAL.intersection(pattern):
        return tuple(pattern)
    simple = _SIMPLE_TOKEN.findall(pattern)
    if "".join(simple) == pattern:     # the scan covered it all, with no gap
        return tuple(simple)
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            end = _escape_end(pattern, i)
        elif c == "[":
            end = _class_end(pattern, i)
        elif c == "(":
            head = pattern[i + 1:i + 2]
            if head == "?" and not _GROUP_HEAD.match(pattern, i + 1):
                return None     # (?i) and anything else unknown
            end = _group_end(pattern, i)
        elif c in ".^$":
            end = i + 1
        elif c in "|)]{}*+?":
            return None         # alternation, stray closer/brace, or a quantifier with no atom
        else:
            end = i + 1
        if end is None:
            return None
        # Quantifiers (and a lazy `?`) belong to the atom: `a+` then `b+` must stay two tokens.
        while end < n:
            q = pattern[end]
            if q in "*+?":
                end += 1
            elif q == "{":
                m = _COUNTED.match(pattern, end)
                if m is None:
                    return None
                end = m.end()
            else:
                break
        out.append(pattern[i:end])
        i = end
    return tuple(out)


def _common_prefix(seqs: Sequence[Tokens], limit: int) -> int:
    """Tokens all of `seqs` start with (at most `limit`).

    Those of the smallest and the largest sequence in tuple order: every sequence sorts
    between them, so it shares what they share (two C-level scans, not one per sequence).
    """
    lo, hi = min(seqs), max(seqs)
    k = 0
    while k < limit and lo[k] == hi[k]:
        k += 1
    return k


# Memoized: a policy change usually leaves most groups as they were (1,000 rules and a new one:
# the big group is unchanged), and its factoring is the bulk of the work (~1 ms per 1,000).
@functools.lru_cache(maxsize=256)
def _factor_group(seqs: tuple[Tokens, ...]) -> str:
    """One regex accepting what any of `seqs` (distinct token sequences) accepts: P(?:m1|m2|...)S."""
    if len(seqs) == 1:
        return "".join(seqs[0])
    shortest = min(len(s) for s in seqs)
    pre = _common_prefix(seqs, shortest)
    suf = _common_prefix([t[::-1] for t in seqs], shortest - pre)   # never overlapping the prefix
    # Sorted, so RE2 can factor the common literal prefixes of neighbouring middles.
    middles = sorted({"".join(s[pre:len(s) - suf]) for s in seqs})
    head, tail = "".join(seqs[0][:pre]), "".join(seqs[0][len(seqs[0]) - suf:])
    if len(middles) == 1:
        return head + middles[0] + tail
    return f"{head}(?:{'|'.join(middles)}){tail}"


def factor_alternation(patterns: Sequence[str]) -> str:
    """An RE2 regex that fully matches exactly the strings one of `patterns` fully matches.

    Patterns are grouped by their last token (suffixes are what RE2 does not share on its own),
    and each group becomes P(?:m1|m2|...)S with its longest common token prefix P and suffix S.
    A pattern that cannot be tokenized stays whole, as `(?:pattern)`. The shared tokens are
    emitted once, so the program stays within what build._program_estimate budgets for the
    patterns; for a few tiny patterns RE2's own factoring of `(?:p1)|(?:p2)|...` can be a few
    instructions smaller, for many patterns it is far larger.

    `patterns` must not contain `\\Q` (build._mergeable): an unterminated quote would swallow
    the rest of the alternation.
    """
    groups: dict[str | None, dict[Tokens, None]] = {}
    whole: dict[str, None] = {}
    for p in patterns:
        toks = tokenize(p)
        if toks is None:
            whole[f"(?:{p})"] = None
        else:
            groups.setdefault(toks[-1] if toks else None, {})[toks] = None
    # No top-level `|` in a factored group: it needs no group of its own in the alternation.
    alternatives = sorted(_factor_group(tuple(g)) for g in groups.values())
    return "|".join(alternatives + list(whole))
