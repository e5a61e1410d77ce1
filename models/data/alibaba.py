"""Ali-CCP and AliExpress sample formats (the torch-rechub CSV samples in ``shared/data``).

Both are already label-encoded (0-based); ids are shifted by one so that 0 stays out-of-vocabulary.
Ali-CCP: tasks ``click``/``purchase``; user fields (101, 121-129, the *_14 behaviour fields, scenario 301)
are user side, item fields (205, 206, 207, 210, 216) and user-item cross fields (508, 509, 702, 853) item side.
AliExpress: tasks ``click``/``conversion``; the 16 categorical and 63 numerical fields are anonymised, so all
are treated as request (user) side and no item table is built. ``search_id`` is an identifier, not a feature.

The full sets are on Tianchi behind a login (no direct download); the samples' official source is the
torch-rechub repository at a pinned commit, which ``download_*`` fetches with sha256 verification.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from models.data.dataset import Side, Splits, TabularData, build_tabular
from models.data.download import RemoteFile, fetch
from models.errors import DataError
from models.layers import TaskSpec

_RECHUB = (
    "https://raw.githubusercontent.com/datawhalechina/torch-rechub/5a73b2eebc3a670dc64c54971cc06a78ddd55394"
)
ALI_CCP_FILES = {
    "train": RemoteFile(
        f"{_RECHUB}/examples/ranking/data/ali-ccp/ali_ccp_train_sample.csv",
        "ali_ccp_train_sample.csv",
        sha256="1c1d125bcdfca70c8f5ed24f6221acadab3e19b70e0b06b3eb3adb2af7a0f9b5",
    ),
    "val": RemoteFile(
        f"{_RECHUB}/examples/ranking/data/ali-ccp/ali_ccp_val_sample.csv",
        "ali_ccp_val_sample.csv",
        sha256="1236e1504b76bf7ceb48dbe3d999ae8b49f61fcda2d684578320fd9fc7821104",
    ),
    "test": RemoteFile(
        f"{_RECHUB}/examples/ranking/data/ali-ccp/ali_ccp_test_sample.csv",
        "ali_ccp_test_sample.csv",
        sha256="9764a9b8e53b25f85c00e08a89f65ecfadab100cb0834161bd7ef671b7702a09",
    ),
}
ALIEXPRESS_FILES = {
    "train": RemoteFile(f"{_RECHUB}/examples/ranking/data/aliexpress/aliexpress_train_sample.csv",
                        "aliexpress_train_sample.csv",
                        sha256="9a602d2bd6012b23898437f60977135b65e75c3414bf19cac0d70408b12035ef"),
    "test": RemoteFile(f"{_RECHUB}/examples/ranking/data/aliexpress/aliexpress_test_sample.csv",
                       "aliexpress_test_sample.csv",
                       sha256="c264673dc08e68d1c6153b48c9039a3ea4d3ff3106b071550db34e311e25d529"),
}  # fmt: skip
_CCP_USER = ["101", "121", "122", "124", "125", "126", "127", "128", "129", "301",
             "109_14", "110_14", "127_14", "150_14"]  # fmt: skip
_CCP_ITEM = ["205", "206", "207", "210", "216", "508", "509", "702", "853"]
_CCP_DENSE_USER = ["D109_14", "D110_14", "D127_14", "D150_14"]
_CCP_DENSE_ITEM = ["D508", "D509", "D702", "D853"]


def _read(directory: Path, files: dict[str, RemoteFile], required: list[str]) -> dict[str, pd.DataFrame]:
    """Each sample file of ``files``; a missing file names its official address, a missing column the file."""
    frames = {}
    for split, remote in files.items():
        path = directory / remote.filename
        if not path.exists():
            raise DataError(f"missing sample file {path} (official file: {remote.url})")
        frames[split] = pd.read_csv(path)
        missing = [c for c in required if c not in frames[split].columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    return frames


def _split_back(data: TabularData, sizes: list[int]) -> list[TabularData]:
    bounds = np.cumsum([0, *sizes])
    return [data.subset(np.arange(a, b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def load_ali_ccp(path: Path | str, embedding_dim: int = 8) -> Splits:
    """The three Ali-CCP sample files of a directory, as their own train/val/test."""
    columns = [*_CCP_USER, *_CCP_ITEM, *_CCP_DENSE_USER, *_CCP_DENSE_ITEM, "click", "purchase"]
    frames = _read(Path(path), ALI_CCP_FILES, columns)
    frame = pd.concat(frames.values(), ignore_index=True)
    sparse: list[tuple[str, Side]] = [(c, "user") for c in _CCP_USER] + [(c, "item") for c in _CCP_ITEM]
    data = build_tabular(
        frame,
        sparse=sparse,
        dense=[(c, "user") for c in _CCP_DENSE_USER] + [(c, "item") for c in _CCP_DENSE_ITEM],
        tasks=(TaskSpec("click"), TaskSpec("purchase")),
        label_columns=["click", "purchase"],
        embedding_dim=embedding_dim,
        item_id_column="205",
        integer_columns=[c for c, _ in sparse],
        integer_shift=1,
    )
    return Splits(*_split_back(data, [len(f) for f in frames.values()]))


def load_aliexpress(path: Path | str, embedding_dim: int = 8, seed: int = 0) -> Splits:
    """The AliExpress sample files; validation is 10% of the training file (a fixed-seed random pick)."""
    frames = _read(Path(path), ALIEXPRESS_FILES, ["click", "conversion"])
    frame = pd.concat(frames.values(), ignore_index=True)
    categorical = [c for c in frame.columns if c.startswith("categorical_")]
    numerical = [c for c in frame.columns if c.startswith("numerical_")]
    data = build_tabular(
        frame,
        sparse=[(c, "user") for c in categorical],
        dense=[(c, "user") for c in numerical],
        tasks=(TaskSpec("click"), TaskSpec("conversion")),
        label_columns=["click", "conversion"],
        embedding_dim=embedding_dim,
        integer_columns=categorical,
        integer_shift=1,
    )
    train_all, test = _split_back(data, [len(frames["train"]), len(frames["test"])])
    order = np.random.default_rng(seed).permutation(len(train_all))
    n_val = max(1, len(train_all) // 10)
    return Splits(train_all.subset(order[n_val:]), train_all.subset(order[:n_val]), test)


def download_samples(kind: str, directory: Path | str) -> Path:
    """Fetch the ``ali-ccp`` or ``aliexpress`` sample files, each verified by sha256."""
    files = {"ali-ccp": ALI_CCP_FILES, "aliexpress": ALIEXPRESS_FILES}.get(kind)
    if files is None:
        raise DataError(f"unknown sample set {kind!r}; allowed: ali-ccp, aliexpress")
    for remote in files.values():
        fetch(remote, Path(directory))
    return Path(directory)
