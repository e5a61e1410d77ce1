"""MovieLens loaders (GroupLens; research use only, never redistribute): ML-1M ``::`` files and ML-100k.

Tasks as in DML (section 3.1.1): ``like`` = rating >= 4 (binary, AUC) and ``rating`` (regression, MSE).
Features as in the DML repository's ML-1M notebook, minus title tokens: user id, gender, age, occupation,
zip code (user side); movie id, release year, first listed genre (sparse) and the genre multi-hot (dense)
(item side). Split: random 8:1:1 with a fixed seed, as the paper says (the notebook's time-ordered split
is not used).

ML-1M ratings may be the full ``ratings.dat`` or the partial prefix in ``shared/data``
(``ratings.partial-users-1-2999.dat.gz``, users 1-2999 only); both load the same way.
"""

from __future__ import annotations

import gzip
import io
import logging
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from models.data.dataset import Side, Splits, TabularData, build_tabular, float_column, read_fields
from models.data.download import RemoteFile, fetch
from models.errors import DataError
from models.layers import TaskSpec

logger = logging.getLogger(__name__)

# GroupLens publishes md5 sums next to the archives (ml-1m.zip.md5, ml-100k.zip.md5).
ML_1M = RemoteFile(
    "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
    "ml-1m.zip",
    md5="c4d9eecfca2ab87c1945afe126590906",
)
ML_100K = RemoteFile(
    "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
    "ml-100k.zip",
    md5="0e33842e24a9c977be4e0107933c0723",
)
TASKS = (TaskSpec("like", "binary"), TaskSpec("rating", "regression"))
ML_1M_GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
ML_100K_GENRES = ("unknown",) + ML_1M_GENRES
_USER_SPARSE: list[tuple[str, Side]] = [
    ("user_id", "user"),
    ("gender", "user"),
    ("age", "user"),
    ("occupation", "user"),
    ("zip", "user"),
]
_ITEM_SPARSE: list[tuple[str, Side]] = [("item_id", "item"), ("year", "item"), ("genre", "item")]


def _read_table(
    path: Path, sep: str, names: list[str], remote: RemoteFile, encoding: str = "latin-1"
) -> pd.DataFrame:
    """Read a ``sep``-separated file, gzipped or not, with the fast C parser (``::`` is rewritten to a tab).

    ``remote`` is the archive the file comes from, named when the file is missing."""
    if not path.exists():
        raise DataError(f"missing MovieLens file {path} (official archive: {remote.url})")
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    text = raw.decode(encoding)
    if sep == "::":
        text, sep = text.replace("::", "\t"), "\t"
    return read_fields(io.StringIO(text), str(path), names, sep=sep, keep_default_na=False)


def _first_existing(directory: Path, candidates: list[str], remote: RemoteFile) -> Path:
    for pattern in candidates:
        found = sorted(directory.glob(pattern))
        if found:
            return found[0]
    raise DataError(f"{directory}: none of {candidates} found (official archive: {remote.url})")


def _finish(
    frame: pd.DataFrame, genres: tuple[str, ...], genre_lists: pd.Series, embedding_dim: int
) -> TabularData:
    multi_hot = np.stack([genre_lists.map(lambda gs, g=g: float(g in gs)).to_numpy() for g in genres], axis=1)
    for i, g in enumerate(genres):
        frame[f"genre_{g}"] = multi_hot[:, i].astype(np.float32)
    frame["genre"] = genre_lists.map(lambda gs: gs[0] if gs else "")
    rating = float_column(frame, "rating")
    frame["like"] = (rating >= 4).astype(np.float32)
    frame["rating"] = rating
    return build_tabular(
        frame,
        sparse=_USER_SPARSE + _ITEM_SPARSE,
        dense=[(f"genre_{g}", "item") for g in genres],
        tasks=TASKS,
        label_columns=["like", "rating"],
        embedding_dim=embedding_dim,
        item_id_column="item_id",
        integer_columns=("user_id", "item_id"),
    )


def load_movielens_1m(path: Path | str, embedding_dim: int = 8) -> TabularData:
    """Join ratings, users and movies of an ML-1M directory (full or partial ratings file)."""
    directory = Path(path)
    patterns = ["ratings.dat", "ratings.dat.gz", "ratings.partial-*.dat.gz"]
    ratings_file = _first_existing(directory, patterns, ML_1M)
    ratings = _read_table(ratings_file, "::", ["user_id", "item_id", "rating", "timestamp"], ML_1M)
    users = _read_table(
        directory / "users.dat", "::", ["user_id", "gender", "age", "occupation", "zip"], ML_1M
    )
    movies = _read_table(directory / "movies.dat", "::", ["item_id", "title", "genres"], ML_1M)
    movies["year"] = movies["title"].str.extract(r"\((\d{4})\)\s*$", expand=False).fillna("")
    frame = ratings.merge(users, on="user_id", how="left").merge(movies, on="item_id", how="left")
    if frame["gender"].isna().any() or frame["title"].isna().any():
        raise DataError(f"{directory}: ratings refer to users or movies missing from users.dat/movies.dat")
    logger.info("ML-1M: %d ratings from %s", len(frame), ratings_file.name)
    return _finish(frame, ML_1M_GENRES, frame["genres"].str.split("|"), embedding_dim)


def load_movielens_100k(path: Path | str, embedding_dim: int = 8) -> TabularData:
    """Join ``u.data`` (or ``u.data.gz``), ``u.user`` and ``u.item`` of an ML-100k directory."""
    directory = Path(path)
    ratings = _read_table(
        _first_existing(directory, ["u.data", "u.data.gz"], ML_100K),
        "\t",
        ["user_id", "item_id", "rating", "timestamp"],
        ML_100K,
    )
    users = _read_table(directory / "u.user", "|", ["user_id", "age", "gender", "occupation", "zip"], ML_100K)
    item_cols = ["item_id", "title", "release", "video_release", "url", *ML_100K_GENRES]
    movies = _read_table(directory / "u.item", "|", item_cols, ML_100K)
    movies["year"] = movies["release"].str[-4:]
    flags = movies[list(ML_100K_GENRES)].to_numpy() == "1"
    movies["genre_list"] = [[g for g, on in zip(ML_100K_GENRES, row, strict=True) if on] for row in flags]
    frame = ratings.merge(users, on="user_id", how="left").merge(
        movies[["item_id", "year", "genre_list"]], on="item_id", how="left"
    )
    if frame["gender"].isna().any() or frame["genre_list"].isna().any():
        raise DataError(f"{directory}: ratings refer to users or items missing from u.user/u.item")
    return _finish(frame, ML_100K_GENRES, frame["genre_list"], embedding_dim)


def load_movielens(path: Path | str, seed: int = 0, embedding_dim: int = 8) -> Splits:
    """Either MovieLens layout, split 8:1:1 at random with ``seed``."""
    directory = Path(path)
    if (directory / "u.user").exists():
        data = load_movielens_100k(directory, embedding_dim)
    elif (directory / "users.dat").exists():
        data = load_movielens_1m(directory, embedding_dim)
    else:  # naming one layout's files would send a user of the other looking for the wrong ones
        raise DataError(
            f"{directory}: not a MovieLens folder: ML-1M has users.dat, movies.dat and ratings.dat, ML-100k "
            f"has u.user, u.item and u.data (official files: {ML_1M.url}, {ML_100K.url})"
        )
    return data.split((0.8, 0.1, 0.1), seed)


def download_movielens(variant: str, directory: Path | str) -> Path:
    """Download ``1m`` or ``100k`` from GroupLens, verify the archive, extract it; returns the data folder."""
    remote = {"1m": ML_1M, "100k": ML_100K}.get(variant)
    if remote is None:
        raise DataError(f"unknown MovieLens variant {variant!r}; allowed: 1m, 100k")
    archive = fetch(remote, Path(directory))
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(Path(directory))
    return Path(directory) / f"ml-{variant}"
