"""Restricted loading of third-party pickles such as RRSIS-D's ``refs(unc).p`` (DATA_AND_EVAL.md §3).

A pickle can run arbitrary code when loaded: every global it names is imported and may be called. This module
is the only place in the project that unpickles. Its unpickler admits plain builtin containers and scalars and
refuses every other global (``os.system``, ``copyreg._reconstructor``, numpy, any class) before anything from
the file is imported or called. Changing the allow-list is a reviewed code change, never a runtime option.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
from pathlib import Path
from typing import IO, Any

from crobim.data.errors import DatasetFormatError, UnsafePickleError

__all__ = [
    "ALLOWED_BUILTINS",
    "RestrictedUnpickler",
    "convert_refs_to_json",
    "load_refs",
    "safe_load",
    "safe_loads",
    "validate_refs",
]

logger = logging.getLogger(__name__)

#: The only globals a pickle may name: container and scalar constructors from ``builtins``.
ALLOWED_BUILTINS: dict[str, type] = {
    "set": set,
    "frozenset": frozenset,
    "list": list,
    "dict": dict,
    "tuple": tuple,
    "str": str,
    "bytes": bytes,
    "int": int,
    "float": float,
    "bool": bool,
    "complex": complex,
}

# Python 2 spells the module ``__builtin__`` and two of the types differently.
_PY2_NAMES = {"unicode": "str", "long": "int"}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the globals in :data:`ALLOWED_BUILTINS`.

    Overriding ``find_class`` bypasses Python's own Python-2 name mapping, so ``__builtin__`` is accepted as an
    alias of ``builtins`` (and nothing else is). Persistent ids are refused as well.
    """

    def find_class(self, module: str, name: str) -> Any:  # noqa: ANN401 - returns a type from the allow-list
        """Return an allowed builtin type or raise :class:`UnsafePickleError` naming the refused global."""
        if module == "__builtin__":
            name = _PY2_NAMES.get(name, name)
            module = "builtins"
        if module == "builtins" and name in ALLOWED_BUILTINS:
            return ALLOWED_BUILTINS[name]
        raise UnsafePickleError(
            f"refused to load global {module}.{name} from a pickle: only plain containers and scalars "
            f"({', '.join(sorted(ALLOWED_BUILTINS))}) are allowed. The file may carry code; do not load it "
            "with pickle. If it is a genuine dataset file, report it: the allow-list is a reviewed code change."
        )

    def persistent_load(self, pid: Any) -> Any:  # noqa: ANN401 - signature fixed by pickle
        """Refuse persistent ids (they would let the file reach external objects)."""
        raise UnsafePickleError(
            f"refused persistent id {pid!r} in a pickle: persistent references are not allowed"
        )


def safe_load(file: IO[bytes]) -> Any:  # noqa: ANN401 - any plain container
    """Unpickle ``file`` with :class:`RestrictedUnpickler`.

    A Python 2 pickle whose byte strings are not ASCII is read again with ``encoding="latin1"``.

    Args:
        file: A binary file object positioned at the start of the pickle (must be seekable for the retry).

    Returns:
        The unpickled plain object.

    Raises:
        UnsafePickleError: If the pickle names a global outside the allow-list or a persistent id.
        DatasetFormatError: If the bytes are not a valid pickle.
    """
    start = file.tell()
    try:
        return RestrictedUnpickler(file).load()
    except UnicodeDecodeError:
        file.seek(start)
        logger.info("pickle holds non-ASCII Python 2 strings; reading again with encoding='latin1'")
        return RestrictedUnpickler(file, encoding="latin1").load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise DatasetFormatError(f"not a valid pickle: {type(err).__name__}: {err}") from err


def safe_loads(data: bytes) -> Any:  # noqa: ANN401 - any plain container
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (see :func:`safe_load`)."""
    return safe_load(io.BytesIO(data))


_REF_FIELDS: dict[str, type | tuple[type, ...]] = {
    "ref_id": int,
    "ann_id": int,
    "image_id": int,
    "category_id": int,
    "split": str,
    "file_name": str,
    "sent_ids": list,
    "sentences": list,
}


def _check_int(value: Any) -> bool:  # noqa: ANN401
    return isinstance(value, int) and not isinstance(value, bool)


def validate_refs(refs: Any, source: str = "refs") -> list[dict[str, Any]]:  # noqa: ANN401
    """Check that ``refs`` follows the REFER schema of DATA_AND_EVAL.md §2.

    Args:
        refs: The unpickled object.
        source: Name of the file, for error messages.

    Returns:
        ``refs`` itself, typed.

    Raises:
        DatasetFormatError: Naming the entry, the field and what was expected.
    """
    if not isinstance(refs, list):
        raise DatasetFormatError(f"{source}: expected a list of refs, got {type(refs).__name__}")
    for i, ref in enumerate(refs):
        if not isinstance(ref, dict):
            raise DatasetFormatError(f"{source}: entry {i} is a {type(ref).__name__}, expected a dict")
        for key, typ in _REF_FIELDS.items():
            if key not in ref:
                raise DatasetFormatError(f"{source}: entry {i} lacks the required key {key!r}")
            value = ref[key]
            ok = _check_int(value) if typ is int else isinstance(value, typ)
            if not ok:
                raise DatasetFormatError(
                    f"{source}: entry {i} (ref_id={ref.get('ref_id')!r}) field {key!r} is "
                    f"{type(value).__name__} {value!r:.60}, expected {getattr(typ, '__name__', typ)}"
                )
        if not ref["sentences"]:
            raise DatasetFormatError(f"{source}: entry {i} (ref_id={ref['ref_id']}) has no sentences")
        for j, sent in enumerate(ref["sentences"]):
            if not isinstance(sent, dict) or not isinstance(sent.get("raw"), str):
                raise DatasetFormatError(
                    f"{source}: entry {i} (ref_id={ref['ref_id']}) sentence {j} must be a dict with a str 'raw'"
                )
            if "sent_id" in sent and not _check_int(sent["sent_id"]):
                raise DatasetFormatError(
                    f"{source}: entry {i} (ref_id={ref['ref_id']}) sentence {j} has a non-integer sent_id"
                )
    return refs


def load_refs(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Load and validate REFER refs from a pickle (restricted) or from the JSON written by :func:`convert_refs_to_json`.

    Args:
        path: ``refs(unc).p`` or ``refs(unc).json``.

    Returns:
        The validated list of ref dicts.

    Raises:
        UnsafePickleError: If the pickle names a refused global (nothing from it is executed).
        DatasetFormatError: If the content does not follow the schema.
    """
    p = Path(path)
    if p.suffix == ".json":
        with p.open("r", encoding="utf-8") as f:
            refs = json.load(f)
    else:
        with p.open("rb") as f:
            try:
                refs = safe_load(f)
            except UnsafePickleError as err:
                raise UnsafePickleError(f"{p}: {err}") from None
            except DatasetFormatError as err:
                raise DatasetFormatError(f"{p}: {err}") from None
    return validate_refs(refs, source=str(p))


def convert_refs_to_json(src: str | os.PathLike[str], dst: str | os.PathLike[str] | None = None) -> Path:
    """Write validated refs once to JSON; readers prefer the JSON afterwards.

    Args:
        src: The ``refs(unc).p`` pickle.
        dst: Output path (default: beside ``src`` with suffix ``.json``).

    Returns:
        The JSON path.

    Raises:
        DatasetFormatError: If the refs hold values JSON cannot store (e.g. sets).
    """
    refs = load_refs(src)
    out = Path(dst) if dst is not None else Path(src).with_suffix(".json")

    def refuse(obj: object) -> None:
        raise DatasetFormatError(
            f"{src}: holds a {type(obj).__name__}, which JSON cannot store; keep the pickle"
        )

    text = json.dumps(refs, ensure_ascii=False, default=refuse)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return out
