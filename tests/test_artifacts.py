"""The artifact store: path traversal refused in every spelling, safe archive unpacking, a local folder and a real
S3-compatible server (moto's server mode, a stand-in for hosted object storage)."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from shipyard.errors import PayloadTooLarge
from shipyard.registry.artifacts import ArtifactStore, UnsafePath, safe_extract, safe_key
from tests.helpers import free_port, wait_until

# Every spelling of "somewhere else" MLflow's artifact handlers let through at one time or another.
TRAVERSAL = [
    "../secret",
    "../../etc/passwd",
    "a/../../b",
    "a/./b",
    "a//b",
    "./a",
    ".",
    "..",
    "...",
    ".hidden",
    "a/.git/config",
    "..\\secret",
    "a\\..\\..\\b",
    "%2e%2e/secret",
    "%2E%2E%2Fsecret",
    "..%2fsecret",
    "..%5csecret",
    "%252e%252e%252fsecret",
    "%25%32%65%25%32%65/secret",
    "%c0%ae%c0%ae/secret",
    "a#/../../b",
    "a?/../../b",
    "a#b",
    "a?b=1",
    "/etc/passwd",
    "//server/share",
    "\\\\server\\share",
    "C:\\Windows\\win.ini",
    "c:/windows",
    "file:///etc/passwd",
    "file://etc/passwd",
    "s3://other-bucket/key",
    "http://169.254.169.254/latest",
    "~/.ssh/id_rsa",
    "~root",
    "a/b\x00.txt",
    "a\nb",
    "a/ b",
    "\uff0e\uff0e/secret",  # fullwidth dots
    "a/\u2024\u2024/b",  # one-dot leaders
    "",
    "a/",
    "/",
    "x" * 2000,
]


@pytest.mark.parametrize("name", TRAVERSAL)
def test_unsafe_names_are_refused(name: str, tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    with pytest.raises(UnsafePath):
        safe_key(name)
    with pytest.raises(UnsafePath):
        store.put_bytes(name, b"x")
    with pytest.raises(UnsafePath):
        store.get_bytes(name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts"]  # nothing written beside the store


def test_a_symlink_inside_the_store_cannot_lead_out(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store = ArtifactStore(tmp_path / "artifacts")
    (tmp_path / "artifacts" / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePath, match="outside"):
        store.put_bytes("link/x", b"x")
    assert list(outside.iterdir()) == []


def _exercise(store: ArtifactStore) -> None:
    info = store.put_bytes("models/m/1/config.json", b'{"a": 1}')
    assert info.size == 8 and len(info.sha256) == 64
    assert store.get_bytes("models/m/1/config.json") == b'{"a": 1}'
    assert store.exists("models/m/1/config.json") and not store.exists("models/m/2/config.json")
    store.put_bytes("models/m/1/weights.safetensors", b"w" * 3000)
    assert store.list("models/m") == ["models/m/1/config.json", "models/m/1/weights.safetensors"]
    assert store.sha256("models/m/1/config.json") == info.sha256
    store.put_bytes("models/m/1/config.json", b"{}")  # overwrite is atomic: a temp name, then a move
    assert store.get_bytes("models/m/1/config.json") == b"{}"
    store.delete("models/m/1/config.json")
    assert store.list("models") == ["models/m/1/weights.safetensors"]


def test_local_folder_store(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    _exercise(store)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    copied = store.put_file("blobs/big.bin", source)
    assert copied.size == source.stat().st_size
    assert store.get_bytes("blobs/big.bin") == source.read_bytes()


@pytest.fixture(scope="module")
def moto_server():
    moto = Path(sys.executable).parent / "moto_server"
    if not moto.exists():
        pytest.skip("moto[server] is not installed (pip install 'moto[server]' s3fs)")
    port = free_port()
    process = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip

    def up() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_until(up, 30, 0.1, "moto's S3 server")
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(10)


def test_s3_store_against_a_real_s3_server(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    options = {"client_kwargs": {"endpoint_url": moto_server}, "skip_instance_cache": True}
    import s3fs

    s3fs.S3FileSystem(**options).mkdir("shipyard-test")
    store = ArtifactStore("s3://shipyard-test/root", **options)
    _exercise(store)
    with pytest.raises(UnsafePath):
        store.put_bytes("../escape", b"x")
    assert not s3fs.S3FileSystem(**options).exists("shipyard-test/escape")


def _zip(path: Path, members: dict[str, bytes], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "/etc/passwd")
    return path


def _tar(path: Path, members: dict[str, bytes], link: tuple[str, str, bytes] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link[0])
            info.type = {b"sym": tarfile.SYMTYPE, b"hard": tarfile.LNKTYPE, b"dev": tarfile.CHRTYPE}[link[2]]
            info.linkname = link[1]
            tf.addfile(info)
    return path


def test_archives_unpack_safely(tmp_path: Path) -> None:
    good = _zip(tmp_path / "good.zip", {"model/config.json": b"{}", "model/w.bin": b"1234"})
    assert safe_extract(good, tmp_path / "out") == 6
    assert (tmp_path / "out" / "model" / "w.bin").read_bytes() == b"1234"
    tar = _tar(tmp_path / "good.tgz", {"a/b.txt": b"hello"})
    assert safe_extract(tar, tmp_path / "out-tar") == 5

    bad = [
        _zip(tmp_path / "slip.zip", {"ok.txt": b"1", "../../evil.txt": b"x"}),
        _zip(tmp_path / "abs.zip", {"/tmp/evil.txt": b"x"}),
        _zip(tmp_path / "back.zip", {"..\\evil.txt": b"x"}),
        _zip(tmp_path / "link.zip", {"ok.txt": b"1"}, symlink="link"),
        _tar(tmp_path / "slip.tgz", {"../evil.txt": b"x"}),
        _tar(tmp_path / "sym.tgz", {"ok.txt": b"1"}, link=("l", "/etc", b"sym")),
        _tar(tmp_path / "hard.tgz", {"ok.txt": b"1"}, link=("h", "/etc/passwd", b"hard")),
        _tar(tmp_path / "dev.tgz", {}, link=("d", "", b"dev")),
    ]
    for index, archive in enumerate(bad):
        with pytest.raises(UnsafePath):
            safe_extract(archive, tmp_path / f"bad{index}")
        assert not (tmp_path / f"bad{index}").exists()
    assert not (tmp_path.parent / "evil.txt").exists() and not list(tmp_path.glob(".unpack-*"))


def test_archive_size_is_bounded_while_copying(tmp_path: Path) -> None:
    bomb = _zip(tmp_path / "bomb.zip", {"zeros.bin": b"\0" * (5 * 1024 * 1024)})  # compresses to a few KiB
    assert bomb.stat().st_size < 100_000
    with pytest.raises(PayloadTooLarge):
        safe_extract(bomb, tmp_path / "out", max_bytes=1024 * 1024)
    many = _zip(tmp_path / "many.zip", {f"f{i}.txt": b"x" for i in range(20)})
    with pytest.raises(PayloadTooLarge):
        safe_extract(many, tmp_path / "out2", max_files=10)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()
