"""pipelines.query_grammar: each query's parse, the shared sub-queries, the modes and the refusals."""

from __future__ import annotations

import json

import pytest

from pipelines.query_grammar import (
    DEFAULT_NEAR_M,
    GRAMMAR,
    ParsedQuery,
    QueryParseError,
    Relation,
    parse_query,
    plan_queries,
)

N = DEFAULT_NEAR_M

# (query, subject, [(kind, object, negated, distance_m)]) in "auto" and "vector" alike.
RELATION_QUERIES = [
    ("all ponds near roads", "all ponds", [("near", "all roads", False, N)]),
    ("ponds not near the road", "all ponds", [("near", "the road", True, N)]),
    ("Ponds near the roads.", "all ponds", [("near", "the roads", False, N)]),
    ("ALL PONDS NEAR ROADS?", "all ponds", [("near", "all roads", False, N)]),
    ("  all   ponds near  roads ", "all ponds", [("near", "all roads", False, N)]),
    ("ponds near to roads", "all ponds", [("near", "all roads", False, N)]),
    ("all ponds that are near roads", "all ponds", [("near", "all roads", False, N)]),
    ("ponds which are within 50 m of a road", "all ponds", [("within", "a road", False, 50.0)]),
    ("the pond that is near the river", "the pond", [("near", "the river", False, N)]),
    ("ponds within 50m of roads", "all ponds", [("within", "all roads", False, 50.0)]),
    ("ponds within 50 metres of roads", "all ponds", [("within", "all roads", False, 50.0)]),
    ("ponds within 12.5 meters from roads", "all ponds", [("within", "all roads", False, 12.5)]),
    ("buildings within 0.5 km of the river", "all buildings", [("within", "the river", False, 500.0)]),
    ("buildings within 1.1km of the river", "all buildings", [("within", "the river", False, 1100.0)]),
    ("buildings within 1,500 m of the river", "all buildings", [("within", "the river", False, 1500.0)]),
    ("ponds not within 20 m of roads", "all ponds", [("within", "all roads", True, 20.0)]),
    ("ponds farther than 200 m from roads", "all ponds", [("farther", "all roads", False, 200.0)]),
    ("ponds further than 1 km away from the river", "all ponds", [("farther", "the river", False, 1000.0)]),
    ("ponds more than 30 metres from roads", "all ponds", [("farther", "all roads", False, 30.0)]),
    ("ponds away from roads", "all ponds", [("near", "all roads", True, N)]),
    ("ponds inside the forest", "all ponds", [("inside", "the forest", False, None)]),
    ("ponds inside of the forest", "all ponds", [("inside", "the forest", False, None)]),
    ("buildings in fields", "all buildings", [("inside", "all fields", False, None)]),
    ("trees within the park", "all trees", [("inside", "the park", False, None)]),
    ("ponds not inside the forest", "all ponds", [("inside", "the forest", True, None)]),
    ("ponds not in the forest", "all ponds", [("inside", "the forest", True, None)]),
    ("trees touching the river", "all trees", [("touching", "the river", False, None)]),
    ("trees adjacent to roads", "all trees", [("touching", "all roads", False, None)]),
    ("the tree next to the pond", "the tree", [("touching", "the pond", False, None)]),
    ("ponds not touching roads", "all ponds", [("touching", "all roads", True, None)]),
    ("ponds not adjacent to roads", "all ponds", [("touching", "all roads", True, None)]),
    ("red buildings near roads", "all red buildings", [("near", "all roads", False, N)]),
    ("grass near roads", "the grass", [("near", "all roads", False, N)]),
    ("every pond near a road", "every pond", [("near", "a road", False, N)]),
    (
        "ponds near roads and not near the river",
        "all ponds",
        [("near", "all roads", False, N), ("near", "the river", True, N)],
    ),
    (
        "ponds within 100 m of roads and inside the forest and not touching buildings",
        "all ponds",
        [
            ("within", "all roads", False, 100.0),
            ("inside", "the forest", False, None),
            ("touching", "all buildings", True, None),
        ],
    ),
    (
        "all ponds near roads, and that are not inside the forest!",
        "all ponds",
        [("near", "all roads", False, N), ("inside", "the forest", True, None)],
    ),
    # An image position stays inside the phrase; "and" without a relation after it stays in the object.
    (
        "all ponds in the left half near roads",
        "all ponds in the left half",
        [("near", "all roads", False, N)],
    ),
    ("ponds near roads in the upper left", "all ponds", [("near", "all roads in the upper left", False, N)]),
    ("ponds near roads and rivers", "all ponds", [("near", "all roads and rivers", False, N)]),
]

# Text the model reads as a whole: plain in "auto" (sent exactly as typed), refused by "vector".
PLAIN_QUERIES = [
    ("the building in the left half", "image positions"),
    ("the pond in the top right corner", "image positions"),
    ("the tree in the middle", "image positions"),
    ("the pond in the image", "image positions"),
    ("the road nearest the river", "superlatives"),
    ("the largest pond", "superlatives"),
    ("the building closest to the river", "superlatives"),
    ("the largest pond near roads", "superlative subject"),
    ("all buildings left of the road", "no relation"),
    ("All Buildings", "no relation"),
    ("ponds within 50 of roads", "has no unit"),
    ("ponds near roads inside the forest", "joined with 'and'"),
]

# (query, reason substring, closest reading) refused by "vector"; the None-suggestion ones say "see the grammar".
VECTOR_REFUSALS = [
    ("ponds within 50 of roads", "has no unit", "all ponds within 50 m of all roads"),
    ("ponds close to roads", "no relation", "all ponds near all roads"),
    ("ponds not far from roads", "no relation", "all ponds near all roads"),
    ("ponds far from roads", "no relation", "all ponds not near all roads"),
    ("ponds outside the forest", "no relation", "all ponds not inside the forest"),
    ("ponds less than 50 m from roads", "no relation", "all ponds within 50 m of all roads"),
    ("ponds at least 2 km from roads", "no relation", "all ponds farther than 2000 m from all roads"),
    (
        "ponds near roads inside the forest",
        "joined with 'and'",
        "all ponds near all roads and inside the forest",
    ),
    ("ponds within 50 m roads", "expected 'of'", "all ponds within 50 m of all roads"),
    ("ponds not away from roads", "double negation", "all ponds near all roads"),
    ("the largest pond", "superlatives", None),
]

# Refused in "auto" and "vector" alike: (query, reason substring, closest reading).
ERRORS = [
    ("ponds near", "nothing after 'near' (no object)", "all ponds near Y"),
    ("ponds within 50 m of", "nothing after 'within 50 m of'", "all ponds within 50 m of Y"),
    ("ponds near roads and not near", "nothing after 'not near'", "all ponds near all roads and not near Y"),
    ("ponds near within 50 m of roads", "nothing after 'near'", "all ponds near Y"),
    ("ponds near and not near rivers", "nothing after 'near'", "all ponds near Y"),
    ("near roads", "no subject", "X near all roads"),
    ("that are not inside the forest", "no subject", "X not inside the forest"),
    ("ponds near roads and", "'and' with nothing after it", "all ponds near all roads"),
    ("ponds near roads and that are", "'and' with nothing after it", "all ponds near all roads"),
    ("ponds within -5 m of roads", "not positive", "all ponds within 5 m of all roads"),
    ("ponds within 0 m of roads", "not positive", None),
    ("ponds farther than 0.0 km from roads", "not positive", None),
    ("ponds within 500 km of roads", "over 100 km", "all ponds within 500 m of all roads"),
    (
        "ponds within m of roads",
        "distance such as '50 m' is missing after 'within'",
        "all ponds within 50 m of all roads",
    ),
    ("   ", "empty", "all ponds near roads"),
]


def _as_rows(parsed: ParsedQuery) -> list[tuple]:
    return [(r.kind, r.object, r.negated, r.distance_m) for r in parsed.relations]


@pytest.mark.parametrize(("query", "subject", "relations"), RELATION_QUERIES)
def test_relation_queries_parse(query, subject, relations):
    for mode in ("auto", "vector"):
        parsed = parse_query(query, mode)
        assert (parsed.text, parsed.subject, _as_rows(parsed)) == (
            " ".join(query.split()),
            subject,
            relations,
        )
        assert parsed.composed
        # The canonical text reads back as the same parse (normalisation is idempotent).
        again = parse_query(f"{parsed.subject} " + " and ".join(r.describe() for r in parsed.relations), mode)
        assert (again.subject, again.relations) == (parsed.subject, parsed.relations)


def test_parser_table_has_forty_phrasings():
    assert len({q for q, *_ in RELATION_QUERIES + PLAIN_QUERIES + VECTOR_REFUSALS + ERRORS}) >= 40


@pytest.mark.parametrize(("query", "reason"), PLAIN_QUERIES)
def test_model_phrases_are_plain_in_auto_and_refused_in_vector(query, reason):
    parsed = parse_query(query, "auto")
    assert parsed == ParsedQuery(query, query, ())  # exactly as typed: no case change, no article added
    assert not parsed.composed and parsed.expressions() == (query,)
    with pytest.raises(QueryParseError, match=reason):
        parse_query(query, "vector")


@pytest.mark.parametrize(("query", "reason", "closest"), VECTOR_REFUSALS)
def test_vector_refusals_give_reason_grammar_and_closest_reading(query, reason, closest):
    with pytest.raises(QueryParseError) as info:
        parse_query(query, "vector")
    err = info.value
    assert isinstance(err, ValueError) and reason in err.reason and err.suggestion == closest
    message = str(err)
    assert repr(query) in message and reason in message and GRAMMAR in message
    assert (f"did you mean: {closest!r}?" if closest else "see the grammar") in message


@pytest.mark.parametrize(("query", "reason", "closest"), ERRORS)
def test_malformed_relations_are_refused_in_auto_and_vector(query, reason, closest):
    for mode in ("auto", "vector"):
        with pytest.raises(QueryParseError) as info:
            parse_query(query, mode)
        assert reason in info.value.reason and info.value.suggestion == closest
        assert GRAMMAR in str(info.value)


@pytest.mark.parametrize("query", [q for q, *_ in RELATION_QUERIES + PLAIN_QUERIES + VECTOR_REFUSALS])
def test_model_mode_keeps_every_query_plain(query):
    parsed = parse_query(query, "model")
    assert parsed == ParsedQuery(" ".join(query.split()), " ".join(query.split()), ())


def test_near_takes_near_m_and_stated_distances_do_not():
    parsed = parse_query("ponds near roads and within 30 m of the river and inside the forest", near_m=57.6)
    assert [r.distance_m for r in parsed.relations] == [57.6, 30.0, None]
    assert parsed.relations[0].describe() == "near all roads"


def test_plan_shares_sub_queries_in_first_seen_order():
    plan = plan_queries(["all ponds near roads", "all ponds not near roads"])
    assert plan.expressions == ("all ponds", "all roads")  # 2 decodes, not 4
    plan = plan_queries(
        ["Buildings near the river", "all ponds", "ponds within 20 m of buildings", "all roads"]
    )
    assert plan.expressions == ("all buildings", "the river", "all ponds", "all roads")
    assert [q.composed for q in plan.queries] == [True, False, True, False]
    # A plain query is sent as typed: "All Ponds" is not the sub-query "all ponds".
    assert plan_queries(["All Ponds", "ponds near roads"]).expressions == (
        "All Ponds",
        "all ponds",
        "all roads",
    )
    model = plan_queries(["all ponds near roads", "all ponds not near roads"], "model")
    assert model.expressions == ("all ponds near roads", "all ponds not near roads")


def test_plan_to_json_has_round_numbers_and_reads_back():
    plan = plan_queries(
        ["ponds within 1.1 km of roads", "ponds not near the river", "the largest pond"], "auto", 60
    )
    text = json.dumps(plan.to_json())
    assert '"near_m": 60.0' in text and '"distance_m": 1100.0' in text and '"distance_m": 60.0' in text
    doc = json.loads(text)
    assert doc == {
        "mode": "auto",
        "near_m": 60.0,
        "expressions": ["all ponds", "all roads", "the river", "the largest pond"],
        "queries": [
            {"text": "ponds within 1.1 km of roads", "subject": "all ponds", "composed": True, "relations": [
                {"kind": "within", "object": "all roads", "negated": False, "distance_m": 1100.0,
                 "text": "within 1100 m of all roads"}]},
            {"text": "ponds not near the river", "subject": "all ponds", "composed": True, "relations": [
                {"kind": "near", "object": "the river", "negated": True, "distance_m": 60.0,
                 "text": "not near the river"}]},
            {"text": "the largest pond", "subject": "the largest pond", "composed": False, "relations": []},
        ],
    }  # fmt: skip


def test_settings_and_relation_checks():
    with pytest.raises(ValueError, match="--relations 'vectors' is unknown"):
        parse_query("ponds near roads", "vectors")  # type: ignore[arg-type]
    for bad in (0.0, -1.0, float("nan"), 1e6):
        with pytest.raises(ValueError, match="--near-m"):
            plan_queries(["ponds near roads"], "auto", bad)
    with pytest.raises(ValueError, match="non-empty list"):
        plan_queries([])
    with pytest.raises(QueryParseError, match="'and' with nothing"):
        plan_queries(["all ponds", "ponds near roads and"], "auto")
    with pytest.raises(ValueError, match="needs distance_m"):
        Relation("within", "all roads")
    with pytest.raises(ValueError, match="takes no distance_m"):
        Relation("inside", "the forest", distance_m=3.0)
    with pytest.raises(ValueError, match="unknown relation kind"):
        Relation("beside", "the forest")  # type: ignore[arg-type]
    assert Relation("farther", "all roads", True, 2.5).describe() == "not farther than 2.5 m from all roads"
