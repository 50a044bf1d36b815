"""Factored path alternations match exactly what the patterns match one by one (RE2 full match,
as Envoy's safe_regex), and are much smaller RE2 programs.

The property test builds pattern sets from tricky tokens (quantifiers, lazy ones, counted
repetition, classes with `]`, escapes, nested and named groups, flag groups, anchors) and tries
strings built from those same tokens' own texts, plus near-misses of them.
"""

from __future__ import annotations

import functools

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from xdsserver.translate.build import _path_matchers, _program_estimate
from xdsserver.translate.regexfactor import factor_alternation, tokenize

re2 = pytest.importorskip("re2")

_OPTS = re2.Options()
_OPTS.log_errors = False


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str):
    try:
        return re2.compile(pattern, options=_OPTS)
    except re2.error:
        return None


def _full(pattern: str, s: str) -> bool:
    return _compiled(pattern).fullmatch(s) is not None


def _same_verdicts(patterns: list[str], strings: list[str]) -> str:
    merged = factor_alternation(patterns)
    assert _compiled(merged) is not None, merged
    for s in strings:
        want = any(_full(p, s) for p in patterns)
        assert _full(merged, s) == want, (patterns, merged, s, want)
    return merged


# ---- tokens ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern, tokens", [
    ("/a/b", ("/", "a", "/", "b")),
    ("/a/[0-9]+", ("/", "a", "/", "[0-9]+")),
    ("a+b+", ("a+", "b+")),
    ("x{2}y{1,}z{0,3}?", ("x{2}", "y{1,}", "z{0,3}?")),
    ("a*?b+?c??", ("a*?", "b+?", "c??")),
    ("[]a]x", ("[]a]", "x")),
    ("[^]a]*x", ("[^]a]*", "x")),
    (r"[\]x]y", (r"[\]x]", "y")),
    ("[[:alpha:]-]+/", ("[[:alpha:]-]+", "/")),
    ("[a[]b", ("[a[]", "b")),                         # `[` inside a class is a member
    (r"\.\d\pL\p{Greek}+\x41\x{263a}", (r"\.", r"\d", r"\pL", r"\p{Greek}+", r"\x41", r"\x{263a}")),
    (r"a\\.", ("a", r"\\", ".")),                     # an escaped backslash, then any character
    ("((a|b)c)+x", ("((a|b)c)+", "x")),
    ("(?P<id>[a-z]+)/(?:x|(y))*", ("(?P<id>[a-z]+)", "/", "(?:x|(y))*")),
    ("(?<id>a)(?i:B)", ("(?<id>a)", "(?i:B)")),
    ("(a(?i)b)c", ("(a(?i)b)", "c")),                 # flags set inside a group end with it
    ("([)]|\\))z", ("([)]|\\))", "z")),               # `)` in a class or escaped closes nothing
    ("^/a$", ("^", "/", "a", "$")),
    ("", ()),
])
def test_patterns_are_cut_into_atoms_with_their_quantifiers(pattern, tokens):
    assert tokenize(pattern) == tokens
    assert "".join(tokens) == pattern
    assert all(_compiled(t) is not None for t in tokens)


@pytest.mark.parametrize("pattern", [
    "a|b",            # top-level alternation
    "(?i)a",          # changes the meaning of what follows
    "a(?-i)b",
    r"\Qa.b\E",
    r"a\Q.b",
    "a{,2}",          # a literal brace to RE2
    "a{x}", "{2}", "a}", "a]",
    "*a", "+a", "?a",
    "(a", "a)", "[a", "[]", "[[:alpha]", "[[:nope:]", "(?#c)a", "(?P=n)",
    r"\1", r"\0", r"\C", r"\E", r"\Z", r"\q", r"\_", "\\",
])
def test_patterns_that_cannot_be_cut_with_certainty_are_kept_whole(pattern):
    assert tokenize(pattern) is None
    assert factor_alternation([pattern, "/x"]) == f"/x|(?:{pattern})"


# ---- factoring: table -----------------------------------------------------------------------

_WORDS = ["", "a", "b", "aa", "ab", "ba", "bb", "aaa", "abab", "x", "xx", "xxx", "/", "/a", "/b",
          "/a.b", "/axb", "/c.b", "/a/1", "/a/12", "/b/1", "/a/", "]", "a]", "]x", "/]x", "/ax",
          "acx", "bcx", "abcx", "dx", "ddx", "x/y", "/svc1/items/2", "/svc12/items/", "/svc/items/3"]


@pytest.mark.parametrize("patterns, expected", [
    # Quantifiers at the boundary stay with their atom: not (?:a|b)+.
    (["a+", "b+"], "a+|b+"),
    (["xa+", "ya+"], "(?:x|y)a+"),
    (["ax{2}", "bx{2}"], "(?:a|b)x{2}"),
    (["ax", "ax{2}"], "ax|ax{2}"),                     # their last tokens differ
    (["/[]a]x", "/[^]a]x"], "/(?:[]a]|[^]a])x"),
    (["/a\\.b", "/c\\.b"], "/(?:a|c)\\.b"),
    (["((a|b)c)+x", "(d)+x"], "(?:((a|b)c)+|(d)+)x"),
    (["a+?b", "c+?b"], "(?:a+?|c+?)b"),
    (["/svc1/items/[0-9]+", "/svc12/items/[0-9]+"], "/svc1(?:|2)/items/[0-9]+"),
    (["/a", "/a"], "/a"),
    (["ab", "b"], "(?:|a)b"),
    (["(?i)a", "/x", "/y|/z"], "/x|(?:(?i)a)|(?:/y|/z)"),
])
def test_factored_alternations(patterns, expected):
    assert _same_verdicts(patterns, _WORDS + patterns) == expected


def test_prefix_and_suffix_never_overlap():
    # The common prefix of "aa" and "aaa" is all of "aa": no token of it is left for a suffix.
    strings = ["", "a", "aa", "aaa", "aaaa", "aba", "aaba", "ba", "abba"]
    assert _same_verdicts(["aa", "aaa"], strings) == "aa(?:|a)"
    assert _same_verdicts(["aba", "aaba", "aa"], strings) == "a(?:|ab|b)a"


def test_the_benchmark_rule_set_becomes_a_small_program():
    paths = [f"/svc{i}/items/[0-9]+" for i in range(998)] + ["/index.html", "/probe-3"]
    (matcher,) = _path_matchers(paths)
    merged = matcher["safe_regex"]["regex"]
    unfactored = "|".join(f"(?:{p})" for p in paths)
    assert _compiled(unfactored).programsize > 10_000
    assert _compiled(merged).programsize < 500
    hits = ["/svc0/items/1", "/svc997/items/0123", "/index.html", "/probe-3", "/svc10/items/9"]
    misses = ["/svc998/items/1", "/svc1/items/", "/svc1/items/x", "/index.htm", "/probe-4", "/svc/items/1",
              "/svc01/items/1", "/svc1/items/1/"]
    _same_verdicts(paths, hits + misses)
    assert all(_full(merged, s) for s in hits)
    assert not any(_full(merged, s) for s in misses)


# ---- factoring: property --------------------------------------------------------------------

# (token text, strings it matches or nearly matches), the strings feed the generated inputs.
_ATOMS: list[tuple[str, list[str]]] = [
    ("a", ["a"]), ("b", ["b"]), ("/", ["/"]), ("-", ["-"]), ("A", ["A"]),
    (".", ["a", "/", "é"]), (r"\.", [".", "a"]), (r"\\", ["\\"]), (r"\d", ["1"]), (r"\w", ["a", "_"]),
    (r"\pL", ["é", "1"]), (r"\p{Greek}", ["λ", "a"]), (r"\x41", ["A"]),
    ("[ab]", ["a", "b"]), ("[]a]", ["]", "a"]), ("[^]a]", ["b", "]"]), ("[^/]", ["a", "/"]),
    (r"[\]/]", ["]", "/"]), ("[[:alpha:]]", ["a", "1"]), ("[a-c]", ["b", "d"]),
    ("(a|b)", ["a", "b"]), ("(?:ab)", ["ab"]), ("(?P<n>a)", ["a"]), ("(?i:a)", ["A", "a"]),
    ("((a)b)", ["ab"]), ("(a(?i)b)", ["aB", "ab"]), ("(a|)", ["a", ""]), ("(?:/a)", ["/a"]),
    ("^", [""]), ("$", [""]), (r"\b", [""]),
]
_QUANTS = ["", "", "", "*", "+", "?", "{2}", "{1,}", "{0,2}", "*?", "+?", "??", "{1,2}?"]
# Whole patterns that must be kept as they are.
_WHOLE = ["a|b", "(?i)a", "/x|/ab", "a{,2}", "a(?i)b", "[a|b]"]


@st.composite
def _pattern(draw) -> tuple[str, list[list[str]]]:
    """A pattern, and for each of its tokens the strings to build inputs from."""
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        text, samples = draw(st.sampled_from(_ATOMS))
        q = draw(st.sampled_from(_QUANTS))
        reps = [0, 1, 2] if q else [1]
        parts.append((text + q, [s * r for s in samples for r in reps]))
    return "".join(t for t, _ in parts), [s for _, s in parts]


@st.composite
def _case(draw) -> tuple[list[str], list[str]]:
    # A shared head and tail make factoring happen (that is what it is for).
    head, head_s = draw(_pattern())
    tail, tail_s = draw(_pattern())
    patterns, token_samples = [], []
    for _ in range(draw(st.integers(2, 6))):
        if draw(st.integers(0, 9)) == 0:
            patterns.append(draw(st.sampled_from(_WHOLE)))
            token_samples.append([["a", "b", "/x", "A"]])
            continue
        mid, mid_s = draw(_pattern())
        patterns.append(draw(st.sampled_from([head + mid + tail, head + mid, mid + tail, mid])))
        token_samples.append(head_s + mid_s + tail_s)
    strings = set(patterns) | {"", "a", "ab", "/a", "]"}
    for samples in token_samples:
        for _ in range(6):
            s = "".join(draw(st.sampled_from(opts)) for opts in samples)
            strings.add(s)
            if s:                                    # near-misses: one character off
                i = draw(st.integers(0, len(s) - 1))
                strings.update({s[:i] + s[i + 1:], s[:i] + "a" + s[i:], s[:i] + "]" + s[i + 1:]})
    return patterns, sorted(strings)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_case())
def test_factored_alternation_matches_exactly_what_the_patterns_match(case):
    patterns, strings = case
    assume(all(_compiled(p) is not None for p in patterns))
    merged = _same_verdicts(patterns, strings)
    for p in patterns:              # each token is a regex on its own: a real boundary
        assert all(_compiled(t) is not None for t in tokenize(p) or ()), p
    # Within the size build._path_matchers budgets for these patterns (Envoy's program limit),
    # plus the fixed instructions every program has.
    budget = 4 + sum(_program_estimate(p) for p in set(patterns))
    assert _compiled(merged).programsize <= budget, (patterns, merged)
