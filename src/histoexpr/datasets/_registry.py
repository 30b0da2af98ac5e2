"""Public data sets: a registry of their files, checksums and sources, and their download.

Each file is looked up under the data folder (:attr:`histoexpr.settings.datasets_dir`, else the
environment variable ``HISTOEXPR_DATA_DIR``, else a cache folder of the user's), its sha256
checked before use; a missing file is downloaded from the public repository it comes from (a
pinned commit), or, with ``download=False``, named in an error that says where to put it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .._core.logs import logger
from .._core.validate import check_bool

#: the public repositories (owner/name) and the commits the files were taken from
SOURCES = {
    "her2st": ("almaan/her2st", "85df741"),
    "stutility": ("jbergenstrahle/STUtility", "9a8f421"),
    "giottodata": ("josschavezf/GiottoData", "1dc55ee"),
    "pciseq": ("acycliq/pciSeq", "59f5379"),
    "pathml": ("Dana-Farber-AIOS/pathml", "fa49ffb"),
    "slideio": ("Booritas/slideio-tutorial", "67cb126"),
}
ENV_VARIABLE = "HISTOEXPR_DATA_DIR"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DataFile:
    """One file of a data set: where it lies under the data folder, its checksum and source."""

    name: str
    sha256: str
    url: str
    gzip: bool = False  # stored gzip-compressed; the source and the checksum are the plain file


def registry() -> dict[str, DataFile]:
    """The registered files by their name under the data folder."""
    files = {}
    text = (Path(__file__).with_name("registry.txt")).read_text()
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sha256, source, path, *flags = line.split()
        repo, commit = SOURCES[source]
        url = f"https://github.com/{repo}/raw/{commit}/{path}"
        files[name] = DataFile(name, sha256, url, gzip="gzip" in flags)
    return files


def data_dir() -> Path:
    """The folder the data sets are read from (and downloaded into).

    Returns
    -------
    :attr:`histoexpr.settings.datasets_dir` where set, else ``$HISTOEXPR_DATA_DIR``, else
    ``~/.cache/histoexpr/data`` (``$XDG_CACHE_HOME/histoexpr/data``).
    """
    from .._settings import settings

    if settings.datasets_dir is not None:
        return Path(settings.datasets_dir)
    if os.environ.get(ENV_VARIABLE):
        return Path(os.environ[ENV_VARIABLE]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "histoexpr" / "data"


def fetch(name: str, *, download: bool = True) -> Path:
    """The local path of the registered file ``name``, checked against its sha256.

    A missing file is downloaded from its source into the data folder (written beside its
    place and moved there once its checksum is right); with ``download=False`` a
    ``FileNotFoundError`` names the file, the folder to put it in and its URL. A file whose
    checksum differs raises a ``ValueError`` (it is never replaced: it is the user's).

    Parameters
    ----------
    name
        The file's name under the data folder, e.g. ``"her2st/counts/C2.tsv.gz"``.
    download
        Download it if missing; ``False`` raises a ``FileNotFoundError`` instead.

    Returns
    -------
    The path of the checked file.
    """
    download = check_bool("download", download)
    files = registry()
    if name not in files:
        raise KeyError(_unknown(name, files))
    entry = files[name]
    folder = data_dir()
    path = folder / name
    where = (
        f"Put the file there (from {entry.url}), or point hx.settings.datasets_dir or "
        f"${ENV_VARIABLE} at the folder that holds {name.split('/')[0]}/."
    )
    if not path.is_file():
        if not download:
            raise FileNotFoundError(
                f"The data file {name} is not in {folder} ({path} is missing). {where}"
            )
        _download(entry, path, where)
    digest = _sha256(path, entry.gzip)
    if digest != entry.sha256:
        raise ValueError(
            f"{path} is not the registered {name}: its sha256 is {digest}, not "
            f"{entry.sha256} (a truncated or another file?). Remove it to download "
            f"it again, or replace it with the file from {entry.url}."
        )
    return path


def _unknown(name, files: dict[str, DataFile]) -> str:
    """The message for a name that is not a registered file: the data sets and close names."""
    import difflib

    sets = sorted({key.split("/")[0] for key in files})
    close = difflib.get_close_matches(str(name), list(files), n=3, cutoff=0.5)
    in_set = [key for key in files if key.split("/")[0] == str(name).split("/")[0]]
    if close:
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?"
    elif in_set:
        hint = f" The files of {str(name).split('/')[0]!r} include {in_set[:3]}."
    else:
        hint = ""
    return (f"{name!r} is not a registered data file. The known data sets are {sets}; their "
            f"files are named '<data set>/<path>' (e.g. {next(iter(files))!r}).{hint} Pass "
            "one of the registered names, or read a data set with its own function (e.g. "
            "hx.datasets.her2st).")


def _sha256(path: Path, plain: bool) -> str:
    import gzip

    digest = hashlib.sha256()
    opener = gzip.open if plain else open
    with opener(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _download(entry: DataFile, path: Path, where: str) -> None:
    """Download ``entry`` to ``path``: into a temporary file beside it, checked, then moved.

    The temporary file names this machine and process
    (:func:`~histoexpr._core.files.partial_path`); what a killed download left there is removed
    by the next one (:func:`~histoexpr._core.files.written_beside`). Something other than a
    file at ``path`` (a folder, a link) is never replaced.
    """
    import gzip
    import urllib.error
    import urllib.request

    from .._core.files import written_beside

    if path.exists() or path.is_symlink():
        raise FileExistsError(
            f"The data file {entry.name} should be at {path}, but something that is not a "
            f"file is there (a folder or a link); it is left alone. Move it away, or {where}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FileNotFoundError(
            f"The data file {entry.name} is missing and cannot be downloaded "
            f"into {path.parent} ({error}). {where}"
        ) from error
    logger.info("Downloading %s from %s", entry.name, entry.url)
    try:
        with written_beside(path) as partial:
            with urllib.request.urlopen(entry.url, timeout=60) as response:  # noqa: S310
                if entry.gzip:
                    with gzip.open(partial, "wb") as out:
                        shutil.copyfileobj(response, out, _CHUNK)
                else:
                    with open(partial, "wb") as out:
                        shutil.copyfileobj(response, out, _CHUNK)
            digest = _sha256(partial, entry.gzip)
            if digest != entry.sha256:
                raise ValueError(
                    f"The download of {entry.name} from {entry.url} has the sha256 "
                    f"{digest}, not the registered {entry.sha256}; nothing was kept. "
                    f"{where}"
                )
    except (OSError, urllib.error.URLError) as error:
        raise FileNotFoundError(
            f"The data file {entry.name} is missing and its download from "
            f"{entry.url} failed ({error}). {where}"
        ) from error
