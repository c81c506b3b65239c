"""Dataset readers (RRSIS-D, RefSegRS, RISBench, SynRS) returning :class:`Sample`; see DATA_AND_EVAL.md."""

from crobim.data.errors import DatasetFormatError, DatasetNotFoundError, SampleReadError, UnsafePickleError
from crobim.data.refsegrs import RefSegRS
from crobim.data.risbench import RISBench
from crobim.data.rrsisd import RRSISD
from crobim.data.sample import Sample
from crobim.data.synrs.dataset import SynRS

__all__ = [
    "DATASETS",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "RISBench",
    "RRSISD",
    "RefSegRS",
    "Sample",
    "SampleReadError",
    "SynRS",
    "UnsafePickleError",
]

#: Reader class per dataset name (the ``--dataset`` choices of ``jobs/evaluate.py``).
DATASETS: dict[str, type] = {"rrsisd": RRSISD, "refsegrs": RefSegRS, "risbench": RISBench, "synrs": SynRS}
