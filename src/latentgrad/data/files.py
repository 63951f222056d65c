"""Where the data files live, how they are checked and how they are downloaded.

A data directory holds one sub-directory per data set (``mnist/``, ``fashion-mnist/``,
``binarized-mnist/``) with the files under their published names. It is, in this order, the
``data_dir`` argument, the ``LATENTGRAD_DATA`` environment variable, or ``~/.cache/latentgrad``.
Every file used is checked against the SHA-256 table below (once per process for an unchanged
file). Missing files are downloaded from their canonical location with :mod:`urllib`, written
under a temporary name, verified and only then renamed into place.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DATA_ENV_VAR",
    "ChecksumError",
    "DataNotFoundError",
    "default_data_dir",
    "resolve_data_dir",
]

DATA_ENV_VAR = "LATENTGRAD_DATA"

_TIMEOUT_S = 60.0
_CHUNK = 1 << 20

# SHA-256 of every accepted file, keyed "<subdir>/<name>". The .gz values of the MNIST sets are
# those of the published files; the uncompressed entries are the digests of their contents, so a
# directory of unpacked files (or the .amat files as Larochelle's page serves them) also passes.
_SHA256: dict[str, str] = {
    "mnist/train-images-idx3-ubyte.gz": (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
    ),
    "mnist/train-labels-idx1-ubyte.gz": (
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
    ),
    "mnist/t10k-images-idx3-ubyte.gz": (
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
    ),
    "mnist/t10k-labels-idx1-ubyte.gz": (
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
    ),
    "mnist/train-images-idx3-ubyte": (
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
    ),
    "mnist/train-labels-idx1-ubyte": (
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
    ),
    "mnist/t10k-images-idx3-ubyte": (
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
    ),
    "mnist/t10k-labels-idx1-ubyte": (
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
    ),
    "fashion-mnist/train-images-idx3-ubyte.gz": (
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"
    ),
    "fashion-mnist/train-labels-idx1-ubyte.gz": (
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"
    ),
    "fashion-mnist/t10k-images-idx3-ubyte.gz": (
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"
    ),
    "fashion-mnist/t10k-labels-idx1-ubyte.gz": (
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"
    ),
    "fashion-mnist/train-images-idx3-ubyte": (
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
    ),
    "fashion-mnist/train-labels-idx1-ubyte": (
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
    ),
    "fashion-mnist/t10k-images-idx3-ubyte": (
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
    ),
    "fashion-mnist/t10k-labels-idx1-ubyte": (
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
    ),
    "binarized-mnist/binarized_mnist_train.amat": (
        "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d"
    ),
    "binarized-mnist/binarized_mnist_valid.amat": (
        "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2"
    ),
    "binarized-mnist/binarized_mnist_test.amat": (
        "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c"
    ),
    "binarized-mnist/binarized_mnist_train.amat.gz": (
        "af247bd6075cf9adc4715459dcd5f13eaa99a2c92d8d81379a05da94770b6c0e"
    ),
    "binarized-mnist/binarized_mnist_valid.amat.gz": (
        "533b71bc0198f4d73c54ae5fe6c96fc08dc3cf1b3fae24c5521dbc0452507e38"
    ),
    "binarized-mnist/binarized_mnist_test.amat.gz": (
        "32a3c54d03504632bf9f131b4a148c7567aa6fc87da017049b044bdc14c2a0f2"
    ),
}

_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
_FASHION_MNIST_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
_BINARIZED_MNIST_MIRRORS = (
    "https://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",
)

# (path, size, mtime in ns) of the files verified in this process: hashing 100 MB on every
# call would cost more than reading the data.
_verified: set[tuple[str, int, int]] = set()


class DataNotFoundError(FileNotFoundError):
    """Data files are missing and could not be downloaded.

    Attributes:
        directory: the directory the files belong in.
        missing: the files (canonical names) that are missing there.
    """

    def __init__(self, message: str, directory: Path, missing: Sequence[str]) -> None:
        super().__init__(message)
        self.directory = directory
        self.missing = tuple(missing)

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[type[DataNotFoundError], tuple[str, Path, tuple[str, ...]]]:
        # Sweeps run in worker processes, which send exceptions back pickled.
        return type(self), (str(self.args[0]), self.directory, self.missing)


class ChecksumError(ValueError):
    """A data file does not have the SHA-256 digest of the published file."""


@dataclass(frozen=True)
class FileSpec:
    """One file of a data set.

    Attributes:
        subdir: the data set's sub-directory of the data directory.
        name: the name the file is downloaded under.
        alternatives: other accepted names for the same contents (e.g. compressed or not).
        mirrors: base URLs, tried in order, that serve ``name``.
    """

    subdir: str
    name: str
    alternatives: tuple[str, ...]
    mirrors: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """Every accepted name, the downloaded one first."""
        return (self.name, *self.alternatives)

    @property
    def urls(self) -> tuple[str, ...]:
        """Where the file can be downloaded from, in the order tried."""
        return tuple(mirror + self.name for mirror in self.mirrors)


def _idx_specs(subdir: str, mirrors: tuple[str, ...]) -> dict[str, FileSpec]:
    stems = {
        "train_images": "train-images-idx3-ubyte",
        "train_labels": "train-labels-idx1-ubyte",
        "test_images": "t10k-images-idx3-ubyte",
        "test_labels": "t10k-labels-idx1-ubyte",
    }
    return {key: FileSpec(subdir, stem + ".gz", (stem,), mirrors) for key, stem in stems.items()}


FILES: dict[str, dict[str, FileSpec]] = {
    "mnist": _idx_specs("mnist", _MNIST_MIRRORS),
    "fashion-mnist": _idx_specs("fashion-mnist", _FASHION_MNIST_MIRRORS),
    "binarized-mnist": {
        split: FileSpec(
            "binarized-mnist",
            f"binarized_mnist_{split}.amat",
            (f"binarized_mnist_{split}.amat.gz",),
            _BINARIZED_MNIST_MIRRORS,
        )
        for split in ("train", "valid", "test")
    },
}
"""The files of each downloadable data set, by role (``train_images``, ``valid``, ...)."""


def default_data_dir() -> Path:
    """The data directory used when none is given.

    Returns:
        ``$LATENTGRAD_DATA`` when that variable is set (and not empty), else
        ``~/.cache/latentgrad``.

    Example:
        >>> default_data_dir() == (
        ...     Path(os.environ["LATENTGRAD_DATA"]).expanduser()
        ...     if os.environ.get("LATENTGRAD_DATA")
        ...     else Path.home() / ".cache" / "latentgrad"
        ... )
        True
    """
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "latentgrad"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """``data_dir`` as a path (``~`` expanded), or :func:`default_data_dir` when ``None``.

    Args:
        data_dir: a directory, or ``None``.

    Returns:
        The data directory to use.

    Example:
        >>> resolve_data_dir("~/data") == Path.home() / "data"
        True
    """
    return default_data_dir() if data_dir is None else Path(data_dir).expanduser()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def verify_file(path: Path, key: str) -> None:
    """Check the SHA-256 of ``path`` against the table entry ``key`` (``"<subdir>/<name>"``).

    An unchanged file (same path, size and modification time) is hashed once per process.

    Args:
        path: the file.
        key: its entry in the checksum table.

    Raises:
        ChecksumError: the digest differs.
    """
    stamp = _stamp(path)
    if stamp in _verified:
        return
    actual = _sha256_file(path)
    if actual != _SHA256[key]:
        raise ChecksumError(
            f"{path}: SHA-256 {actual} differs from the published file's {_SHA256[key]}; the "
            "file is corrupt, truncated or another version. Delete it (it is downloaded again "
            "when a network is there) or replace it with the original."
        )
    _verified.add(stamp)


def _fetch(url: str, dest: Path) -> None:
    """Download ``url`` into the file ``dest`` (replaced by tests to keep them offline)."""
    request = urllib.request.Request(url, headers={"User-Agent": "latentgrad"})
    with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response, dest.open("wb") as out:
        shutil.copyfileobj(response, out, _CHUNK)


def _download(spec: FileSpec, directory: Path) -> Path:
    """Download, verify and atomically place ``spec``'s file; raise ``OSError`` if no mirror
    answers, :class:`ChecksumError` if one served other bytes (they are deleted)."""
    directory.mkdir(parents=True, exist_ok=True)
    dest = directory / spec.name
    expected = _SHA256[f"{spec.subdir}/{spec.name}"]
    errors: list[str] = []
    mismatch: ChecksumError | None = None
    for url in spec.urls:
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{spec.name}.", suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _fetch(url, tmp)
            actual = _sha256_file(tmp)
            if actual != expected:
                mismatch = ChecksumError(
                    f"{spec.name} downloaded from {url} has SHA-256 {actual}, not the published "
                    f"file's {expected}; it was deleted"
                )
                errors.append(f"{url}: wrong SHA-256")
                continue
            tmp.chmod(0o644)  # mkstemp makes it private; data files are for everyone
            os.replace(tmp, dest)
            _verified.add(_stamp(dest))
            return dest
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"{url}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
    if mismatch is not None:
        raise mismatch
    raise OSError("; ".join(errors))


def _find(spec: FileSpec, directory: Path) -> Path | None:
    for name in spec.names:
        path = directory / name
        if path.is_file():
            return path
    return None


def ensure_files(name: str, data_dir: Path, download: bool) -> dict[str, Path]:
    """The verified local files of data set ``name``, downloading missing ones if allowed.

    Args:
        name: a key of :data:`FILES`.
        data_dir: the data directory (the files are in its ``<subdir>/``).
        download: whether to download missing files.

    Returns:
        The path of each file, by role.

    Raises:
        DataNotFoundError: files are missing and ``download`` is false or failed.
        ChecksumError: a file (local or downloaded) has the wrong SHA-256.
    """
    specs = FILES[name]
    paths: dict[str, Path] = {}
    missing: dict[str, FileSpec] = {}
    for role, spec in specs.items():
        directory = data_dir / spec.subdir
        path = _find(spec, directory)
        if path is None:
            missing[role] = spec
        else:
            verify_file(path, f"{spec.subdir}/{path.name}")
            paths[role] = path
    if not missing:
        return paths
    reason = "downloading is switched off (download=False)"
    if download:
        for role, spec in list(missing.items()):
            try:
                paths[role] = _download(spec, data_dir / spec.subdir)
            except (OSError, http.client.HTTPException) as exc:
                # No network (or no writable directory): the other files would only wait for
                # the same time-outs.
                reason = f"downloading {spec.name} failed ({exc})"
                break
            del missing[role]
        if not missing:
            return paths
    raise _not_found(name, data_dir, list(missing.values()), reason)


def _not_found(name: str, data_dir: Path, specs: list[FileSpec], reason: str) -> DataNotFoundError:
    directory = data_dir / specs[0].subdir
    lines = [f"Data set {name!r}: {len(specs)} file(s) missing from {directory}/ and {reason}."]
    lines.append(f"Put these files in {directory}/:")
    for spec in specs:
        also = " or ".join(spec.alternatives)
        lines.append(f"  {spec.name}" + (f" (or {also})" if also else "") + f"  <- {spec.urls[0]}")
    lines.append(
        f"or point the {DATA_ENV_VAR} environment variable (the --data option of the "
        f"latentgrad command) at a directory that holds {specs[0].subdir}/ with them."
    )
    return DataNotFoundError("\n".join(lines), directory, [spec.name for spec in specs])
