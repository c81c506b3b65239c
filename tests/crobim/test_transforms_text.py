"""``crobim.transforms.inspect_text``: how ``tokenize`` reads an expression (length, what survives truncation,
words the vocabulary does not know), checked against ``tokenize`` itself on the demo model's tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from crobim.transforms import inspect_text, tokenize

TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "assets" / "demo-model" / "tokenizer"
LONG = (
    "the large red roofed building with a white chimney standing next to the narrow winding road that leads "
    "to the old harbour on the northern side of the island"
)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)


def test_a_short_query_fits_and_is_known(tokenizer):
    report = inspect_text(tokenizer, "the red roof near the road", max_len=20)
    assert (report.num_tokens, report.max_tokens, report.truncated) == (6, 18, False)
    assert (
        report.kept == "the red roof near the road" and report.unknown_words == () and report.known_words == 6
    )


@pytest.mark.parametrize("max_len", [20, 8, 3])
def test_a_long_query_is_cut_where_tokenize_cuts_it(tokenizer, max_len):
    report = inspect_text(tokenizer, LONG, max_len=max_len)
    assert report.truncated and report.num_tokens == 29 and report.max_tokens == max_len - 2
    assert LONG.startswith(report.kept) and len(report.kept) < len(LONG)
    ids = tokenize(tokenizer, [LONG], max_len=max_len, return_tensors="np")["input_ids"][0]
    kept_ids = tokenizer(report.kept, add_special_tokens=False)["input_ids"]
    assert list(ids[1 : 1 + report.max_tokens]) == kept_ids  # exactly the tokens the model reads


def test_no_room_for_text_keeps_nothing(tokenizer):
    report = inspect_text(tokenizer, "a pond", max_len=2)
    assert report.truncated and report.max_tokens == 0 and report.kept == ""


def test_unknown_words_are_named_as_written(tokenizer):
    report = inspect_text(tokenizer, "Ünïcödé 🏠 house", max_len=20)
    assert report.unknown_words == ("🏠",) and report.known_words == 2
    cjk = inspect_text(tokenizer, "建筑物", max_len=20)
    assert cjk.unknown_words == ("建", "筑", "物") and cjk.known_words == 0


@pytest.mark.parametrize("text", ["???!!", "-- , .", ""])
def test_punctuation_only_has_no_word(tokenizer, text):
    report = inspect_text(tokenizer, text, max_len=20)
    assert report.known_words == 0 and report.unknown_words == () and not report.truncated


def test_a_slow_tokenizer_is_refused(tokenizer):
    class Slow:
        is_fast = False

    with pytest.raises(TypeError, match="Slow is a slow tokenizer"):
        inspect_text(Slow(), "a pond", max_len=20)
