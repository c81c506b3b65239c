"""The query planner's parser: each ``--query`` is a plain referring expression or ``SUBJECT RELATION OBJECT``.

SUBJECT and OBJECT are expressions the model answers; RELATION is a spatial predicate in metres over the merged
polygons (:mod:`pipelines.relations`). Grammar, normalisation and semantics: ``docs/queries.md``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

__all__ = [
    "DEFAULT_NEAR_M",
    "GRAMMAR",
    "MAX_DISTANCE_M",
    "ParsedQuery",
    "QueryParseError",
    "QueryPlan",
    "Relation",
    "RelationKind",
    "RelationsMode",
    "parse_query",
    "plan_queries",
]

RelationKind = Literal["near", "within", "farther", "inside", "touching"]
RelationsMode = Literal["auto", "vector", "model"]

#: ``near`` without a distance (``--near-m``): 50 m, about 25 pixels at the demo's 2 m and 5 at Sentinel-2's
#: 10 m. The demo sets its region's own rule (``near`` of the SynRS scene unit, in metres).
DEFAULT_NEAR_M = 50.0
#: Longest distance a query may state; more is almost surely a typo (``km`` for ``m``).
MAX_DISTANCE_M = 100_000.0

GRAMMAR = """\
QUERY    := SUBJECT RELATION [and RELATION]...   (anything else is a plain expression sent to the model as is)
RELATION := [not] near Y | [not] within D UNIT of Y | farther than D UNIT from Y | more than D UNIT from Y
          | away from Y (= not near) | [not] inside Y | [not] in Y | within Y (= inside)
          | [not] touching Y | [not] adjacent to Y | [not] next to Y
UNIT     := m | metres | meters | km | kilometres | kilometers   (0 < D <= 100 km; "50m" and "0.5 km" work)
e.g. "all ponds near roads", "buildings within 100 m of the river and not near roads\""""

_UNITS = {"m": 1.0, "metre": 1.0, "metres": 1.0, "meter": 1.0, "meters": 1.0,
          "km": 1000.0, "kilometre": 1000.0, "kilometres": 1000.0, "kilometer": 1000.0, "kilometers": 1000.0}  # fmt: skip
_DETERMINERS = frozenset({"all", "the", "a", "an", "every", "each", "any", "some"})
#: Relative-clause glue dropped at the end of a subject ("ponds that are near ...") or after "and".
_GLUE = (("that", "are"), ("which", "are"), ("that", "is"), ("which", "is"), ("that", "lie"), ("which", "lie"),
         ("are",), ("is",), ("and",))  # fmt: skip
#: Words of an image position the model reads itself: "in the top right corner" is not an ``inside`` relation.
_POSITION = frozenset({"top", "bottom", "left", "right", "upper", "lower", "middle", "center", "centre",
                       "central", "half", "corner", "side", "edge", "image", "picture", "photo", "scene", "tile",
                       "frame", "quadrant", "north", "south", "east", "west", "northern", "southern", "eastern",
                       "western", "part"})  # fmt: skip
_POSITION_FILL = frozenset({"the", "a", "an", "of", "this"})
#: A subject with one of these is a model phrase ("the largest pond near roads" ranks among ponds near roads).
_SUPERLATIVES = frozenset({"nearest", "closest", "farthest", "furthest", "largest", "biggest", "smallest",
                           "longest", "shortest", "widest", "narrowest", "tallest", "highest", "lowest",
                           "leftmost", "rightmost", "topmost", "uppermost", "bottommost", "lowermost"})  # fmt: skip
_PREPOSITIONS = frozenset({"in", "on", "at", "of", "with", "from", "by", "to", "near", "inside", "within",
                           "above", "below", "under", "over", "along", "beside", "between", "left", "right"})  # fmt: skip
#: Words that may start a relation: a position phrase after "in" ends at one of them.
_MARKERS = frozenset({"and", "not", "near", "within", "inside", "in", "farther", "further", "more", "touching",
                      "adjacent", "next", "away"})  # fmt: skip
_NUMBER = re.compile(r"^[+-]?\d+(?:\.\d+)?$")
#: Near-misses rewritten for the "did you mean" reading (never accepted as is).
_SYNONYMS = (
    (r"\b(?:close to|nearby|by|beside|alongside|along|around|close by)\b", "near"),
    (r"\bnot far from\b", "near"),
    (r"\bfar from\b", "away from"),
    (r"\boutside(?: of)?\b", "not inside"),
    (r"\b(?:less|closer) than (\S+ ?\S*) (?:away )?from\b", r"within \1 of"),
    (r"\bat least (\S+ ?\S*) (?:away )?from\b", r"farther than \1 from"),
    (r"\b(?:touch|touches|bordering|borders|border|adjoining|adjoin)\b", "touching"),
    (r"\b(?:contained in|located in|within the area of)\b", "inside"),
)


class QueryParseError(ValueError):
    """A query cannot be read as the mode asks; the message gives the query, why, the grammar, the closest reading."""

    def __init__(self, query: str, reason: str, suggestion: str | None) -> None:
        self.query, self.reason, self.suggestion = query, reason, suggestion
        mean = f"did you mean: {suggestion!r}?" if suggestion else "see the grammar"
        super().__init__(f"query {query!r} cannot be read as a relation query: {reason}; {mean}\n"
                         f"grammar (docs/queries.md):\n{GRAMMAR}")  # fmt: skip


@dataclass(frozen=True)
class Relation:
    """One spatial predicate on the subject's polygons, against the polygons of ``object``.

    ``distance_m``: ``near``: ``None`` until planned (then ``near_m``); ``within``/``farther``: the stated
    distance in metres; ``inside``/``touching``: ``None`` (their share and tolerance are evaluation settings).
    """

    kind: RelationKind
    object: str
    negated: bool = False
    distance_m: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in get_args(RelationKind):
            raise ValueError(f"unknown relation kind {self.kind!r}; one of {get_args(RelationKind)}")
        needs = self.kind in ("within", "farther")
        if self.kind != "near" and (self.distance_m is None) == needs:
            raise ValueError(f"relation {self.kind!r} {'needs' if needs else 'takes no'} distance_m")

    def describe(self) -> str:
        """Canonical text, e.g. ``"within 50 m of all roads"`` or ``"not near all roads"``."""
        d = _fmt_m(self.distance_m) if self.distance_m is not None else ""
        core = {
            "near": f"near {self.object}",
            "within": f"within {d} m of {self.object}",
            "farther": f"farther than {d} m from {self.object}",
            "inside": f"inside {self.object}",
            "touching": f"touching {self.object}",
        }[self.kind]
        return f"not {core}" if self.negated else core

    def to_json(self) -> dict[str, Any]:
        """``{kind, object, negated, distance_m, text}``."""
        return {"kind": self.kind, "object": self.object, "negated": self.negated,
                "distance_m": self.distance_m, "text": self.describe()}  # fmt: skip


@dataclass(frozen=True)
class ParsedQuery:
    """One query: a plain expression (no relations) or a subject filtered by relations joined with ``and``."""

    text: str
    subject: str
    relations: tuple[Relation, ...] = ()

    @property
    def composed(self) -> bool:
        """Whether the answer is computed from sub-queries (relations present)."""
        return bool(self.relations)

    def expressions(self) -> tuple[str, ...]:
        """The expressions the model decodes for this query: subject, then each object, distinct, in order."""
        return tuple(dict.fromkeys([self.subject, *(r.object for r in self.relations)]))

    def to_json(self) -> dict[str, Any]:
        """For ``--dry-run`` and ``run.json``."""
        return {"text": self.text, "subject": self.subject, "relations": [r.to_json() for r in self.relations],
                "composed": self.composed}  # fmt: skip


@dataclass(frozen=True)
class QueryPlan:
    """Every query's parse and the distinct expressions of all of them (first-seen order: the decode order)."""

    queries: tuple[ParsedQuery, ...]
    expressions: tuple[str, ...]
    mode: RelationsMode
    near_m: float

    def to_json(self) -> dict[str, Any]:
        """``{mode, near_m, queries: [...], expressions: [...]}``."""
        return {"mode": self.mode, "near_m": self.near_m, "queries": [q.to_json() for q in self.queries],
                "expressions": list(self.expressions)}  # fmt: skip


class _Soft(Exception):
    """Not a relation query after all (``auto``: plain); ``vector`` refuses it."""

    def __init__(self, reason: str, retry: list[str] | None = None, suggestion: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.retry, self.suggestion = reason, retry, suggestion


class _Hard(_Soft):
    """A relation query wrong in every mode but ``model`` (empty parts, impossible distance)."""


def _fmt_m(metres: float) -> str:
    return f"{metres:.6f}".rstrip("0").rstrip(".")


def _tokens(text: str) -> list[str]:
    """Lower-case words; commas, final stops and quotes dropped; ``50m`` split into ``50 m``."""
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text.lower())
    s = re.sub(r"[,;:!?\"()\[\]]|\.(?!\d)", " ", s)
    s = re.sub(r"(?<=\d)(km|kilomet(?:er|re)s?|met(?:er|re)s?|m)\b", r" \1", s)
    return s.split()


def _normalise(words: Sequence[str]) -> str:
    """A referring expression: kept if it starts with a determiner, else "all" (plural head) or "the"."""
    if words[0] in _DETERMINERS:
        return " ".join(words)
    head = words[0]
    for w in words[1:]:
        if w in _PREPOSITIONS:
            break
        head = w
    plural = head.endswith("s") and not head.endswith(("ss", "us", "is"))
    return ("all " if plural else "the ") + " ".join(words)


def _strip_glue(words: list[str]) -> list[str]:
    """``words`` without relative-clause glue at the end ("ponds that are" -> "ponds")."""
    while words and (n := next((len(g) for g in _GLUE if tuple(words[-len(g) :]) == g), 0)):
        words = words[:-n]
    return words


def _skip_glue(t: list[str], i: int) -> int:
    """Index after relative-clause glue starting at ``i`` ("and that are not near" -> at "not")."""
    return i + next((len(g) for g in _GLUE[:-1] if tuple(t[i : i + len(g)]) == g), 0)


def _is_position(t: list[str], k: int) -> bool:
    """Whether ``t[k:]`` up to the next relation word is an image position ("the top right corner")."""
    end = k
    while end < len(t) and t[end] not in _MARKERS:
        end += 1
    words = set(t[k:end])
    return bool(words & _POSITION) and words <= _POSITION | _POSITION_FILL


def _distance(t: list[str], k: int, joiner: str) -> tuple[float, int]:
    """The distance at ``t[k]`` (number and unit) in metres, and the index after ``joiner``."""
    num = t[k] if k < len(t) else ""
    if not _NUMBER.match(num):
        fix = [*t[:k], "50", *([] if num in _UNITS else ["m"]), *t[k:]]
        raise _Hard(f"a distance such as '50 m' is missing after {t[k - 1]!r}", retry=fix)
    unit = t[k + 1] if k + 1 < len(t) else ""
    if unit not in _UNITS:
        raise _Soft(f"the distance {num} has no unit (m or km)", retry=[*t[: k + 1], "m", *t[k + 1 :]])
    metres = round(float(num) * _UNITS[unit], 6)
    if metres <= 0:
        raise _Hard(f"the distance {num} {unit} is not positive",
                    retry=[*t[:k], num.lstrip("+-"), *t[k + 1 :]] if metres < 0 else None)  # fmt: skip
    if metres > MAX_DISTANCE_M:
        raise _Hard(f"the distance {num} {unit} is over {_fmt_m(MAX_DISTANCE_M / 1000)} km (a typo?)",
                    retry=[*t[: k + 1], "m", *t[k + 2 :]] if float(num) <= MAX_DISTANCE_M else None)  # fmt: skip
    k += 2
    k += t[k : k + 1] == ["away"] and joiner == "from"
    if t[k : k + 1] != [joiner] and not (joiner == "of" and t[k : k + 1] == ["from"]):
        raise _Soft(f"expected {joiner!r} after the distance", retry=[*t[:k], joiner, *t[k:]])
    return metres, k + 1


def _match(t: list[str], i: int) -> tuple[Relation, int] | None:
    """The relation (object still empty) starting at ``t[i]`` and the index of its object, if one starts there."""
    neg = t[i] == "not"
    j = i + 1 if neg else i
    w, nxt = (t[j] if j < len(t) else ""), (t[j + 1] if j + 1 < len(t) else "")
    if w == "near":
        return Relation("near", "", neg), j + 1 + (nxt == "to")
    if w == "away" and nxt == "from":
        if neg:
            raise _Soft("'not away from' is a double negation", retry=[*t[:i], "near", *t[j + 2 :]])
        return Relation("near", "", True), j + 2
    if w == "within" and (_NUMBER.match(nxt) or nxt in _UNITS or nxt == "of"):
        d, k = _distance(t, j + 1, "of")
        return Relation("within", "", neg, d), k
    if w in ("inside", "in", "within"):
        k = j + 1 + (w == "inside" and nxt == "of")
        return None if _is_position(t, k) else (Relation("inside", "", neg), k)
    if w in ("farther", "further") and nxt == "than":
        d, k = _distance(t, j + 2, "from")
        return Relation("farther", "", neg, d), k
    if w == "more" and nxt == "than" and j + 2 < len(t) and _NUMBER.match(t[j + 2]):
        d, k = _distance(t, j + 2, "from")
        return Relation("farther", "", neg, d), k
    if w == "touching" or w in ("adjacent", "next") and nxt == "to":
        return Relation("touching", "", neg), j + (1 if w == "touching" else 2)
    return None


def _object_end(t: list[str], j: int) -> tuple[int, int | None]:
    """End of the object starting at ``t[j]`` and the start of the next relation (after ``and``), if any."""
    for k in range(j, len(t)):
        if t[k] == "and":
            m = _skip_glue(t, k + 1)
            if m >= len(t):
                raise _Hard("'and' with nothing after it", retry=t[:k])
            if _match(t, m) is not None:
                return k, m
        elif t[k] in _MARKERS and _match(t, k) is not None:
            if k == j:  # "near within 50 m of roads": the first relation has no object
                return j, None
            raise _Soft("relations must be joined with 'and'", retry=[*t[:k], "and", *t[k:]])
    return len(t), None


def _parse_relations(t: list[str], near_m: float) -> tuple[str, tuple[Relation, ...]] | None:
    """Subject and relations of a tokenised query, or ``None`` if no relation starts anywhere in it."""
    start = next((i for i in range(len(t)) if _match(t, i) is not None), None)
    if start is None:
        return None
    subject_words = _strip_glue(t[:start])
    subject = _normalise(subject_words) if subject_words else "X"
    relations: list[Relation] = []
    i: int | None = start
    while i is not None:
        rel, j = _match(t, i) or (Relation("near", ""), i)  # i is a relation start: never the fallback
        end, nxt = _object_end(t, j)
        if end == j:
            fix = _canonical(subject, [*relations, replace(rel, object="Y")])
            raise _Hard(f"nothing after {' '.join(t[i:j])!r} (no object)", suggestion=fix)
        near = near_m if rel.kind == "near" else rel.distance_m
        relations.append(replace(rel, object=_normalise(t[j:end]), distance_m=near))
        i = nxt
    if not subject_words:
        raise _Hard("no subject before the relation", suggestion=_canonical("X", relations))
    if _SUPERLATIVES.intersection(subject_words):
        raise _Soft("a superlative subject is read by the model as a whole (it ranks among the related ones)")
    return subject, tuple(relations)


def _canonical(subject: str, relations: Sequence[Relation]) -> str:
    return f"{subject} " + " and ".join(r.describe() for r in relations)


def _closest(t: list[str], err: _Soft, near_m: float) -> str | None:
    """The closest reading of a refused query: the error's own fix, else a synonym rewritten, parsed again."""
    if err.suggestion:
        return err.suggestion
    text = " ".join(t)
    candidates = ([err.retry] if err.retry else []) + [re.sub(p, r, text).split() for p, r in _SYNONYMS]
    for words in candidates:
        try:
            parsed = _parse_relations(words, near_m)
        except _Soft:
            continue
        if parsed is not None:
            return _canonical(*parsed)
    return None


def _no_relation(t: list[str]) -> _Soft:
    if _SUPERLATIVES.intersection(t):
        return _Soft("no relation; superlatives (nearest, largest ...) are read by the model: use auto")
    if {"in", "inside", "within"} & set(t) and _POSITION.intersection(t):
        return _Soft("no relation; image positions (in the left half ...) are read by the model: use auto")
    return _Soft("no relation (near, within D m of, farther than D m from, inside, touching)")


def _check_settings(mode: str, near_m: float) -> float:
    if mode not in get_args(RelationsMode):
        raise ValueError(f"--relations {mode!r} is unknown; one of {', '.join(get_args(RelationsMode))}")
    if not (math.isfinite(near_m) and 0 < near_m <= MAX_DISTANCE_M):
        raise ValueError(f"--near-m = {near_m} is invalid; expected metres in (0, {MAX_DISTANCE_M:g}]")
    return float(near_m)


def parse_query(text: str, mode: RelationsMode = "auto", near_m: float = DEFAULT_NEAR_M) -> ParsedQuery:
    """Read one query: plain (sent to the model as typed) or a subject with relations.

    Args:
        text: The query as typed (whitespace normalised; a plain query keeps its case and words).
        mode: ``auto`` parses what parses and keeps the rest plain; ``vector`` refuses what does not parse as a
            relation query; ``model`` keeps every query plain (the paper's behaviour).
        near_m: Distance of ``near`` in metres (filled into every ``near`` relation).

    Raises:
        QueryParseError: ``vector`` for a query without a relation; every mode but ``model`` for an empty
            subject or object, a distance <= 0 or over 100 km, or a dangling ``and``.
        ValueError: For an unknown mode or a bad ``near_m``.
    """
    near_m = _check_settings(mode, near_m)
    clean = " ".join(str(text).split())
    if not clean:
        raise QueryParseError(clean, "the query is empty", "all ponds near roads")
    plain = ParsedQuery(clean, clean, ())
    if mode == "model":
        return plain
    t = _tokens(clean)
    try:
        parsed = _parse_relations(t, near_m)
        if parsed is None:
            raise _no_relation(t)
    except _Soft as err:
        if mode == "auto" and not isinstance(err, _Hard):
            return plain
        raise QueryParseError(clean, err.reason, _closest(t, err, near_m)) from None
    return ParsedQuery(clean, parsed[0], parsed[1])


def plan_queries(
    queries: Sequence[str], mode: RelationsMode = "auto", near_m: float = DEFAULT_NEAR_M
) -> QueryPlan:
    """Parse every query and list the distinct expressions the model decodes (first-seen order).

    ``queries`` are the job's checked queries (:func:`pipelines.queries.validate_queries`); ``mode`` and
    ``near_m`` as in :func:`parse_query`, whose errors it raises for the first query that fails.
    """
    if isinstance(queries, str) or not queries:
        raise ValueError("plan_queries needs a non-empty list of queries")
    parsed = tuple(parse_query(q, mode, near_m) for q in queries)
    expressions = tuple(dict.fromkeys(e for q in parsed for e in q.expressions()))
    return QueryPlan(parsed, expressions, mode, float(near_m))
