"""One URI-based filesystem layer for every step: ``file://`` (or a plain path) and ``s3://``.

Everything that reads or writes the store goes through here (fsspec underneath), so no step
branches on where the store lives. S3 needs the ``aws`` extra (s3fs); ``AWS_ENDPOINT_URL`` is
honoured, which is how the tests point it at moto.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import posixpath
import tarfile
from pathlib import Path
from typing import IO, Any, Iterator

import fsspec


class StorageError(RuntimeError):
    """A store URI that cannot be read or written."""


class UnsafeTarball(StorageError):
    """A tarball entry that is not a plain file inside the target folder."""


def normalize(uri: str | os.PathLike) -> str:
    """A plain path becomes an absolute ``file://`` URI; other URIs pass through."""
    text = os.fspath(uri)
    if "://" in text:
        return text.rstrip("/") if len(text.split("://", 1)[1]) > 1 else text
    return "file://" + str(Path(text).expanduser().resolve())


def join(uri: str, *parts: str) -> str:
    base = normalize(uri)
    return posixpath.join(base, *[p.strip("/") for p in parts if p])


def is_local(uri: str) -> bool:
    return normalize(uri).startswith("file://")


def local_path(uri: str) -> Path:
    """The filesystem path of a ``file://`` URI (local stores only)."""
    uri = normalize(uri)
    if not uri.startswith("file://"):
        raise StorageError(f"{uri} is not a local path; this operation needs a local store")
    return Path(uri[len("file://"):])


def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    uri = normalize(uri)
    protocol = uri.split("://", 1)[0]
    options: dict[str, Any] = {}
    if protocol == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["endpoint_url"] = endpoint
        # No listings cache: a store written by another process (a job, the simulator) must be
        # seen as it is now. The instance itself is reused (a fresh one costs ~0.45 s a call).
        options["use_listings_cache"] = False
    elif protocol == "file":
        options["auto_mkdir"] = True
    try:
        fs, path = fsspec.core.url_to_fs(uri, **options)
    except ImportError as error:  # s3fs missing
        raise StorageError(f"cannot open {uri}: {error}. Install the AWS extra: pip install -e '.[aws]'") from error
    return fs, path


def open_uri(uri: str, mode: str = "rb", **kwargs: Any) -> IO:
    fs, path = _fs(uri)
    if "w" in mode and fs.protocol in ("file", ("file", "local")):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
    return fs.open(path, mode, **kwargs)


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.exists(path)


def fingerprint(uri: str) -> str | None:
    """What changes when an object (or any file of a folder) is replaced: size, modification
    stamp and inode or ETag. None when it does not exist. One stat (HEAD on S3), no read."""
    fs, path = _fs(uri)
    try:
        info = fs.info(path)
        entries = [info] if info["type"] != "directory" else sorted(fs.find(path, detail=True).values(),
                                                                    key=lambda e: e["name"])
    except FileNotFoundError:
        return None
    return ";".join(
        f"{e['name']}:{e.get('size')}:{e.get('mtime') or e.get('LastModified')}:{e.get('ino') or e.get('ETag')}"
        for e in entries
    )


def read_bytes(uri: str) -> bytes:
    with open_uri(uri, "rb") as handle:
        return handle.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write atomically where the filesystem allows (local: temp file + rename)."""
    fs, path = _fs(uri)
    if is_local(uri):
        target = local_path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    else:
        fs.pipe_file(path, data)


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_json(uri: str, data: Any) -> None:
    write_bytes(uri, (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode())


def list_files(uri: str, suffixes: tuple[str, ...] = ()) -> list[str]:
    """Every file below ``uri`` (recursively) as full URIs, sorted; [] when it does not exist."""
    fs, path = _fs(uri)
    if not fs.exists(path):
        return []
    protocol = normalize(uri).split("://", 1)[0]
    found = []
    for name in fs.find(path):
        base = posixpath.basename(name)
        if base.startswith(".") or (suffixes and not base.endswith(suffixes)):
            continue
        found.append(f"{protocol}://{name if protocol != 'file' else name}")
    return sorted(found)


def list_dirs(uri: str) -> list[str]:
    """Immediate sub-folder names of ``uri``; [] when it does not exist."""
    fs, path = _fs(uri)
    if not fs.exists(path):
        return []
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False) if fs.isdir(p))


def usage(uri: str) -> tuple[int, int]:
    """(files, bytes) below ``uri``, recursively; (0, 0) when it does not exist."""
    fs, path = _fs(uri)
    if not fs.exists(path):
        return 0, 0
    sizes = [info.get("size") or 0 for info in fs.find(path, detail=True).values() if info.get("type") != "directory"]
    return len(sizes), int(sum(sizes))


def remove(uri: str, recursive: bool = True) -> None:
    fs, path = _fs(uri)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def upload_dir(local_dir: str | os.PathLike, uri: str) -> None:
    for file in sorted(Path(local_dir).rglob("*")):
        if file.is_file():
            write_bytes(join(uri, file.relative_to(local_dir).as_posix()), file.read_bytes())


def download_dir(uri: str, local_dir: str | os.PathLike) -> Path:
    root = normalize(uri)
    target = Path(local_dir)
    for file_uri in list_files(root):
        rel = file_uri[len(root):].lstrip("/")
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(read_bytes(file_uri))
    return target


def iter_lines(uri: str) -> Iterator[bytes]:
    """Lines of a (possibly gzip) JSON-lines object, without the newline."""
    compression = "gzip" if uri.endswith(".gz") else None
    with open_uri(uri, "rb", compression=compression) as handle:
        for line in handle:
            yield line.rstrip(b"\r\n")


def make_tarball(source_dir: str | os.PathLike) -> bytes:
    """A deterministic tar.gz of a folder (sorted, zeroed mtimes/owners): same files, same bytes."""
    buffer = io.BytesIO()
    # Level 1: a model is mostly float32 arrays, which no level compresses; level 9 (gzip's default) took 6.0 CPU-s
    # for a 200K-app model and level 1 2.3 s, for a file 0.5% larger.
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=1) as gz:
        with tarfile.open(fileobj=gz, mode="w") as tar:
            for file in sorted(Path(source_dir).rglob("*")):
                if not file.is_file():
                    continue
                info = tarfile.TarInfo(file.relative_to(source_dir).as_posix())
                info.size = file.stat().st_size
                info.mode = 0o644
                info.mtime = 0
                with file.open("rb") as handle:
                    tar.addfile(info, handle)
    return buffer.getvalue()


def extract_tarball(data: bytes, target_dir: str | os.PathLike) -> Path:
    """Extract a model tarball safely: regular files only, no absolute paths or '..'."""
    target = Path(target_dir)
    target.mkdir(parents=True, exist_ok=True)
    # Decompressed in one call (which also checks the gzip CRC and length, so a tarball damaged mid-way
    # raises instead of extracting short): listing the members and then extracting them from the gzip stream
    # decompressed it twice, since every seek back restarts the stream (7 of 13 s loading a 200K-app model).
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data)), mode="r:") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                raise UnsafeTarball(f"model tarball holds a non-file entry '{member.name}': refused")
            name = Path(member.name)
            if name.is_absolute() or ".." in name.parts:
                raise UnsafeTarball(f"model tarball entry '{member.name}' escapes the folder: refused")
        tar.extractall(target, filter="data")
    return target
