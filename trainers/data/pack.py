"""Packed cache: a dataset at one resolution as a single Parquet file.

Images are stored as fixed-size binary cells (H*W*3 bytes each), so loading is one read and one
`np.frombuffer` over contiguous memory: no PNG decoding, no per-row Python.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trainers.data.errors import DataError
from trainers.data.iclevr import image_dir, index_file, read_iclevr
from trainers.data.imageset import ImageSet
from trainers.data.labels import check_condition_files

PACK_VERSION = 1
META_KEY = b"cgan_search"
CACHE_ENV = "CGAN_SEARCH_CACHE"


def write_packed(data: ImageSet, out: str | Path) -> Path:
    """Write an ImageSet to Parquet atomically (temp file + rename: a crash never leaves half a cache)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    n, h, w, _ = data.images.shape
    images = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(h * w * 3), n, [None, pa.py_buffer(np.ascontiguousarray(data.images))]
    )
    labels_u8 = np.ascontiguousarray(data.labels.astype(np.uint8))
    labels = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(data.n_classes), n, [None, pa.py_buffer(labels_u8)]
    )
    meta = {
        "version": PACK_VERSION,
        "size": h,
        "classes": list(data.classes),
        "fingerprint": data.fingerprint,
        "name": data.name,
    }
    table = pa.table({"file": pa.array(data.files, pa.string()), "image": images, "labels": labels})
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    # Images are already dense uint8 noise to a codec; skipping compression keeps loads memcpy-fast.
    pq.write_table(table, tmp, compression="none")
    os.replace(tmp, out)
    return out


def load_packed(path: str | Path) -> ImageSet:
    """Read a packed Parquet file back into an ImageSet."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise DataError(f"{path}: packed file not found") from None
    except (OSError, pa.ArrowInvalid) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    raw_meta = (table.schema.metadata or {}).get(META_KEY)
    if raw_meta is None:
        raise DataError(f"{path}: not a cgan-search pack (no '{META_KEY.decode()}' metadata)")
    meta = json.loads(raw_meta)
    if meta.get("version") != PACK_VERSION:
        raise DataError(f"{path}: pack version {meta.get('version')}, this code reads {PACK_VERSION}")
    size, n_classes, n = meta["size"], len(meta["classes"]), table.num_rows
    images = _fixed_binary_to_numpy(table.column("image")).reshape(n, size, size, 3)
    labels = _fixed_binary_to_numpy(table.column("labels")).reshape(n, n_classes).astype(np.float32)
    return ImageSet(
        images=images,
        labels=labels,
        files=tuple(table.column("file").to_pylist()),
        classes=tuple(meta["classes"]),
        fingerprint=meta["fingerprint"],
        name=meta["name"],
    )


def _fixed_binary_to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    arr = column.combine_chunks()
    width = arr.type.byte_width
    buf = np.frombuffer(arr.buffers()[1], dtype=np.uint8)
    # A writable copy: torch warns on (and must not write through) read-only Arrow memory.
    return buf[arr.offset * width : (arr.offset + len(arr)) * width].copy()


def pack(root: str | Path, out: str | Path, *, size: int = 64, progress: bool = True) -> ImageSet:
    """Validate and decode a dataset folder once, and write its pack."""
    data = read_iclevr(root, size=size, progress=progress)
    write_packed(data, out)
    return data


def cache_dir() -> Path:
    """Where automatic packs live: $CGAN_SEARCH_CACHE, else ~/.cache/cgan-search (persistent, absolute:
    never a job's temporary working dir)."""
    base = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "cgan-search"
    return Path(base).expanduser().resolve() / "packs"


def cache_key(root: Path, size: int) -> str:
    """Cheap key from names, sizes and mtimes: any edited, added or removed file makes a new pack.
    (The content fingerprint inside the pack is the hash of the bytes, computed when it is built.)"""
    root = root.resolve()
    entries = [str(root), str(size), str(PACK_VERSION)]
    for path in [root / "objects.json", index_file(root)]:
        st = path.stat()
        entries.append(f"{path.name}:{st.st_size}:{st.st_mtime_ns}")
    with os.scandir(image_dir(root)) as it:
        for entry in sorted(it, key=lambda e: e.name):
            if entry.is_file():
                st = entry.stat()
                entries.append(f"{entry.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:20]


def load_cached(root: str | Path, *, size: int = 64, progress: bool = True) -> ImageSet:
    """Load a dataset folder through the pack cache, building the pack on first use."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    path = cache_dir() / f"{root.name}-{size}-{cache_key(root, size)}.parquet"
    if path.is_file():
        data = load_packed(path)
        # the key covers the images and the index, not test.json / new_test.json: check those each time
        check_condition_files(root, data.classes)
        return data
    return pack(root, path, size=size, progress=progress)
