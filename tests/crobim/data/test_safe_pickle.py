import io
import os
import pickle
import re
import subprocess
from pathlib import Path

import pytest

from crobim.data.errors import DatasetFormatError, UnsafePickleError
from crobim.data.safe_pickle import load_refs, safe_load, safe_loads, validate_refs

REPO = Path(__file__).resolve().parents[3]


class _Evil:
    """Pickles to a call of os.system that would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _refs(**extra):
    ref = {"ref_id": 1, "ann_id": 1, "image_id": 1, "category_id": 3, "split": "test", "file_name": "00001.jpg",
           "sent_ids": [1], "sentences": [{"raw": "the ship", "sent": "the ship", "tokens": ["the", "ship"], "sent_id": 1}]}  # fmt: skip
    ref.update(extra)
    return [ref]


def test_refuses_os_system_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps([_Evil(marker)], protocol=2)
    assert b"system" in payload
    with pytest.raises(UnsafePickleError, match=r"(posix|os)\.system"):
        safe_loads(payload)
    assert not marker.exists()
    # The same file as a dataset: refused with the path named, still nothing executed.
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps(_refs(extra=_Evil(marker))))
    with pytest.raises(UnsafePickleError, match=r"refs\(unc\)\.p"):
        load_refs(path)
    assert not marker.exists()
    # Sanity: a real unpickler would have run it (in a child process, so this test stays clean).
    code = f"import pickle; pickle.loads({payload!r})"
    subprocess.run(["python", "-c", code], check=False, cwd=tmp_path)
    assert marker.exists()


@pytest.mark.parametrize(
    "obj_global",
    [
        b"copyreg\n_reconstructor",
        b"numpy.core.multiarray\n_reconstruct",
        b"builtins\neval",
        b"builtins\ngetattr",
        b"__builtin__\napply",
        b"collections\nOrderedDict",
    ],  # fmt: skip
)
def test_refuses_other_globals(obj_global):
    payload = b"c" + obj_global + b"\n)R."  # GLOBAL, EMPTY_TUPLE, REDUCE, STOP (protocol 0)
    with pytest.raises(UnsafePickleError, match="refused to load global"):
        safe_loads(payload)


def test_refuses_persistent_ids():
    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return "ext" if obj == "x" else None

    buf = io.BytesIO()
    P(buf, protocol=2).dump(["x"])
    with pytest.raises(UnsafePickleError, match="persistent"):
        safe_loads(buf.getvalue())


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_plain_containers_load_unchanged(protocol):
    obj = {"a": [1, 2.5, None, True], "b": ("t", "u"), "c": {1, 2}, "d": frozenset({3}), "e": complex(1, 2)}
    if protocol >= 3:
        obj["f"] = b"by"  # protocols 0-2 spell bytes as a _codecs.encode call, which is refused
    assert safe_loads(pickle.dumps(obj, protocol=protocol)) == obj


def test_python2_builtin_alias_and_latin1_retry():
    # Protocol 2 from Python 3 names sets as __builtin__.set, exactly as Python 2 did.
    payload = pickle.dumps({"s": {1}}, protocol=2)
    assert b"__builtin__" in payload
    assert safe_loads(payload) == {"s": {1}}
    # A Python 2 str (SHORT_BINSTRING) holding a non-ASCII byte: ASCII fails, latin1 retry succeeds.
    py2 = b"\x80\x02]q\x00U\x04caf\xe9q\x01a."
    assert safe_load(io.BytesIO(py2)) == ["caf\xe9"]


def test_garbage_is_a_format_error():
    with pytest.raises(DatasetFormatError):
        safe_loads(b"not a pickle")


def test_schema_validation_names_entry_and_field():
    validate_refs(_refs())
    with pytest.raises(DatasetFormatError, match="list of refs"):
        validate_refs({"ref_id": 1})
    with pytest.raises(DatasetFormatError, match="lacks the required key 'ann_id'"):
        validate_refs([{k: v for k, v in _refs()[0].items() if k != "ann_id"}])
    with pytest.raises(DatasetFormatError, match="'image_id' is str"):
        validate_refs(_refs(image_id="1"))
    with pytest.raises(DatasetFormatError, match="sentence 0"):
        validate_refs(_refs(sentences=[{"sent": "no raw"}]))


def _python_files(root: Path):
    skip = {".venv", ".git", "build", "dist", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache"}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip and not d.endswith(".egg-info")]
        for name in filenames:
            if name.endswith(".py"):
                yield Path(dirpath) / name


def _offenders(root: Path) -> list[str]:
    pattern = re.compile(r"\bpickle\.loads?\(|\bcPickle\.loads?\(")
    found = []
    for path in _python_files(root):
        rel = path.relative_to(root)
        if rel.as_posix() == "crobim/data/safe_pickle.py":
            continue
        for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if pattern.search(line.split("#", 1)[0]) and 'f"import pickle; pickle.loads(' not in line:
                found.append(f"{rel}:{lineno}: {line.strip()}")
    return found


def test_lint_scanner_finds_planted_call(tmp_path):
    call = "pickle." + "load("  # spelled in two parts so this file does not trip the repo scan
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "bad.py").write_text(f"import pickle\nx = {call}open('f', 'rb'))\n")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "ignored.py").write_text(f"{call}b'')\n")
    assert _offenders(tmp_path) == [f"pkg/bad.py:2: x = {call}open('f', 'rb'))"]


def test_no_unrestricted_pickle_loading_in_repo():
    offenders = _offenders(REPO)
    assert not offenders, "unrestricted unpickling; use crobim.data.safe_pickle:\n" + "\n".join(offenders)
