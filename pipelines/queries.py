"""The job's plain-language queries: checked and normalised once, when the job's settings are made."""

from __future__ import annotations

__all__ = ["MAX_QUERY_CHARS", "validate_queries"]

#: Longest accepted query (characters); CroBIM truncates to ``text.max_len`` tokens anyway, so a longer text
#: is almost surely a mistake (a pasted paragraph).
MAX_QUERY_CHARS = 500


def validate_queries(queries: list[str], max_chars: int = MAX_QUERY_CHARS) -> list[str]:
    """Check the job's queries: at least one, none empty, none too long, no duplicates.

    Args:
        queries: The texts given with ``--query``.
        max_chars: Longest accepted query.

    Returns:
        The queries with surrounding whitespace removed.

    Raises:
        ValueError: Naming the offending query and the fix.
    """
    if not queries:
        raise ValueError('no --query given; pass at least one --query "..." (e.g. --query "buildings")')
    out: list[str] = []
    for i, q in enumerate(queries):
        text = " ".join(str(q).split())
        if not text:
            raise ValueError(
                f"query {i} is empty; give a plain-language description such as 'ponds near roads'"
            )
        if len(text) > max_chars:
            raise ValueError(
                f"query {i} has {len(text)} characters, more than the limit of {max_chars}; "
                "shorten it to the object you are looking for"
            )
        if text in out:
            raise ValueError(f"query {text!r} is given twice; each --query must be different")
        out.append(text)
    return out
