"""pipelines.queries: the job's queries checked and normalised once."""

from __future__ import annotations

import pytest

from pipelines.queries import validate_queries


def test_validate_queries_errors():
    assert validate_queries(["  two   words "]) == ["two words"]
    with pytest.raises(ValueError, match="no --query given"):
        validate_queries([])
    with pytest.raises(ValueError, match="query 1 is empty"):
        validate_queries(["roads", "   "])
    with pytest.raises(ValueError, match="characters, more than the limit"):
        validate_queries(["x" * 501])
    with pytest.raises(ValueError, match="given twice"):
        validate_queries(["roads", "roads"])
