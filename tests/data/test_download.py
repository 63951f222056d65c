"""Data directory, checksums and downloads, all offline (a fake fetch serves known bytes)."""

import gzip
import hashlib
import os
import pickle
import re
import stat
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from latentgrad.data import ChecksumError, DataNotFoundError, default_data_dir, files, load_dataset
from latentgrad.data.files import _fetch as real_fetch

MNIST_NAMES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]
MNIST_URLS = [files._MNIST_MIRRORS[0] + name for name in MNIST_NAMES]


@pytest.fixture
def fake_mnist(monkeypatch, idx_bytes):
    """Small stand-ins for the MNIST files (50,002 training images of 2x2 pixels), with the
    checksum table patched to their digests. Returns ``{name: gzip bytes}``."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (50_002, 2, 2), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 50_002, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 2, 2), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([4, 0, 9], np.uint8),
    }
    served = {}
    for stem, array in arrays.items():
        raw = idx_bytes(array)
        served[stem + ".gz"] = gzip.compress(raw, mtime=0)
        served[stem] = raw
    for name, data in served.items():
        monkeypatch.setitem(files._SHA256, f"mnist/{name}", hashlib.sha256(data).hexdigest())
    return served


class FakeFetch:
    """Serves ``{url: bytes}``; URLs not served fail like a missing network."""

    def __init__(self, served: dict[str, bytes]) -> None:
        self.served = served
        self.urls: list[str] = []

    def __call__(self, url: str, dest: Path) -> None:
        self.urls.append(url)
        assert dest.parent.is_dir() and dest.name.endswith(".part")
        if url not in self.served:
            raise urllib.error.URLError(f"no route to {url}")
        dest.write_bytes(self.served[url])


def _install(monkeypatch, served: dict[str, bytes]) -> FakeFetch:
    fetch = FakeFetch(served)
    monkeypatch.setattr(files, "_fetch", fetch)
    return fetch


def _count_hashing(monkeypatch) -> list[Path]:
    hashed: list[Path] = []
    original = files._sha256_file

    def counting(path: Path) -> str:
        hashed.append(path)
        return original(path)

    monkeypatch.setattr(files, "_sha256_file", counting)
    return hashed


def test_download_then_load(tmp_path, monkeypatch, fake_mnist):
    fetch = _install(monkeypatch, {url: fake_mnist[url.rsplit("/", 1)[1]] for url in MNIST_URLS})
    splits = load_dataset("mnist", tmp_path)
    assert sorted(fetch.urls) == sorted(MNIST_URLS)
    assert splits.train.shape == (50_000, 4) and splits.valid.shape == (2, 4)
    assert splits.test.shape == (3, 4) and splits.image_shape == (2, 2)
    assert splits.test_labels.tolist() == [4, 0, 9]
    assert 0 <= float(splits.train.min()) and float(splits.train.max()) <= 1
    directory = tmp_path / "mnist"
    assert sorted(p.name for p in directory.iterdir()) == sorted(MNIST_NAMES)  # no temp files
    for name in MNIST_NAMES:
        assert (directory / name).read_bytes() == fake_mnist[name]
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o644

    hashed = _count_hashing(monkeypatch)
    again = load_dataset("mnist", tmp_path)
    assert len(fetch.urls) == 4 and hashed == []  # neither downloaded nor hashed again
    assert torch.equal(again.train, splits.train)


def test_next_mirror_when_the_first_fails(tmp_path, monkeypatch, fake_mnist):
    second = files._MNIST_MIRRORS[1]
    fetch = _install(monkeypatch, {second + name: fake_mnist[name] for name in MNIST_NAMES})
    load_dataset("mnist", tmp_path)
    assert fetch.urls[:2] == [MNIST_URLS[0], second + MNIST_NAMES[0]]


def test_downloaded_file_with_wrong_checksum_is_deleted(tmp_path, monkeypatch, fake_mnist):
    served = {url: fake_mnist[url.rsplit("/", 1)[1]] for url in MNIST_URLS}
    served[MNIST_URLS[2]] = b"<html>not the file</html>"
    _install(monkeypatch, served)
    with pytest.raises(ChecksumError, match=MNIST_NAMES[2]) as info:
        load_dataset("mnist", tmp_path)
    assert MNIST_URLS[2] in str(info.value)
    assert not (tmp_path / "mnist" / MNIST_NAMES[2]).exists()
    assert not list((tmp_path / "mnist").glob("*.part"))


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "binarized-mnist"])
def test_offline_error_names_the_files_and_directory(tmp_path, monkeypatch, name):
    fetch = _install(monkeypatch, {})
    with pytest.raises(DataNotFoundError) as info:
        load_dataset(name, tmp_path)
    first = next(iter(files.FILES[name].values()))
    assert fetch.urls == list(first.urls)  # gives up after the first file's mirrors
    error = info.value
    assert isinstance(error, FileNotFoundError)
    message = str(error)
    directory = tmp_path / name
    assert error.directory == directory and f"{directory}/" in message
    for spec in files.FILES[name].values():
        assert spec.name in message and spec.urls[0] in message
        assert all(alternative in message for alternative in spec.alternatives)
    assert set(error.missing) == {spec.name for spec in files.FILES[name].values()}
    assert "LATENTGRAD_DATA" in message and "--data" in message
    assert "no route to" in message  # the reason the download failed
    assert not any(directory.iterdir())  # no partial files left behind


def test_no_download_when_switched_off(tmp_path, monkeypatch):
    def must_not_fetch(url, dest):
        raise AssertionError("fetched with download=False")

    monkeypatch.setattr(files, "_fetch", must_not_fetch)
    with pytest.raises(DataNotFoundError, match=r"download=False") as info:
        load_dataset("binarized-mnist", tmp_path, download=False)
    assert "binarized_mnist_train.amat (or binarized_mnist_train.amat.gz)" in str(info.value)
    assert not (tmp_path / "binarized-mnist").exists()


def test_only_the_missing_files_are_listed(tmp_path, write_bytes, fake_mnist):
    for name in MNIST_NAMES[:2]:
        (tmp_path / "mnist").mkdir(exist_ok=True)
        (tmp_path / "mnist" / name).write_bytes(fake_mnist[name])
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("mnist", tmp_path)
    assert info.value.missing == tuple(MNIST_NAMES[2:])
    assert MNIST_NAMES[0] not in str(info.value)


def test_uncompressed_files_are_accepted(tmp_path, fake_mnist):
    (tmp_path / "mnist").mkdir()
    for name in MNIST_NAMES:
        stem = name.removesuffix(".gz")
        (tmp_path / "mnist" / stem).write_bytes(fake_mnist[stem])
    assert load_dataset("mnist", tmp_path).test_labels.tolist() == [4, 0, 9]


def test_local_file_with_wrong_checksum(tmp_path, monkeypatch, fake_mnist):
    directory = tmp_path / "mnist"
    directory.mkdir()
    for name in MNIST_NAMES:
        (directory / name).write_bytes(fake_mnist[name])
    load_dataset("mnist", tmp_path)
    corrupt = directory / MNIST_NAMES[3]
    corrupt.write_bytes(fake_mnist[MNIST_NAMES[3]][:-3])  # changes size and mtime
    with pytest.raises(ChecksumError, match="SHA-256") as info:
        load_dataset("mnist", tmp_path)
    assert str(corrupt) in str(info.value)
    assert corrupt.exists()  # a user's file is reported, never deleted


def test_data_dir_comes_from_the_environment_then_the_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTGRAD_DATA", str(tmp_path / "shared"))
    assert default_data_dir() == tmp_path / "shared"
    with pytest.raises(DataNotFoundError, match=re.escape(str(tmp_path / "shared" / "mnist"))):
        load_dataset("mnist")
    monkeypatch.delenv("LATENTGRAD_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cache = tmp_path / "home" / ".cache" / "latentgrad"
    assert default_data_dir() == cache
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("fashion-mnist")
    assert info.value.directory == cache / "fashion-mnist"


def test_unwritable_directory_is_reported_as_missing_data(tmp_path):
    (tmp_path / "mnist").write_text("a file where the directory should be")
    with pytest.raises(DataNotFoundError, match=r"train-images-idx3-ubyte\.gz"):
        load_dataset("mnist", tmp_path)


def test_real_fetch_copies_the_bytes(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(3 << 20))
    dest = tmp_path / "dest.bin"
    real_fetch(source.as_uri(), dest)  # a file:// URL: urllib without a network
    assert dest.read_bytes() == source.read_bytes()


def test_data_not_found_error_pickles(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("mnist", tmp_path, download=False)
    copy = pickle.loads(pickle.dumps(info.value))
    assert str(copy) == str(info.value) and copy.missing == info.value.missing
    assert copy.directory == info.value.directory


def test_every_accepted_file_has_a_checksum():
    for specs in files.FILES.values():
        for spec in specs.values():
            for name in spec.names:
                assert len(files._SHA256[f"{spec.subdir}/{name}"]) == 64


def test_checksums_match_the_shared_sums_file():
    sums = Path(__file__).resolve().parents[3] / "shared" / "data" / "SHA256SUMS"
    if not sums.is_file():
        pytest.skip("no ../shared/data/SHA256SUMS")
    for line in sums.read_text().splitlines():
        digest, name = line.split()
        assert files._SHA256[name] == digest, name
