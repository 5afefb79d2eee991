"""The teacher cache's format against the obvious alternatives, on a real cache: size, open time, random access.

    python benchmarks/cache_format.py CACHE_DIR [--reads 2000] [--out benchmarks/results]

The same soft boxes and score cells are written three ways, and a training-like access pattern (one image's rows,
then their class vectors and distributions, images in random order) is timed on each:

* ``safetensors shards`` (what detkd writes): 256 images per file, arrays mapped from the file (``numpy.memmap``);
* ``npz shards``: the same shards as NumPy ``.npz`` (zip) files, loaded with ``numpy.load`` (no memory map: a zip
  member is read whole when accessed);
* ``npy per image``: one ``.npz`` file per image, opened at each access (no shard bookkeeping, one file per image).

Reads are timed after a first pass (the page cache warm), since a training run reads every image each epoch.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detkd.offline.cache import TeacherCache, is_cell

NAMES = ("boxes", "probs", "dist", "spacing", "cells", "cell_probs")
KINDS = {"boxes": np.float32, "probs": np.float16, "dist": np.float16, "spacing": np.float32, "cells": np.float32,
         "cell_probs": np.float16}  # fmt: skip


def _read(cache: TeacherCache, ids: np.ndarray) -> dict[str, np.ndarray]:
    """An image's soft-box payload and score cells, as a training step reads them."""
    cell = is_cell(ids)
    out = cache.payload(ids[~cell])
    field = cache.field(ids[cell])
    out["cells"], out["cell_probs"] = field["cells"], field["probs"]
    return out


def _per_image(cache: TeacherCache) -> list[dict[str, np.ndarray]]:
    out = []
    for digest in cache.entries:
        found = cache.image(digest)
        assert found is not None
        _, ids, _ = found
        pay = _read(cache, ids)  # float32 in memory; stored as the cache stores them (float16 payload)
        out.append({k: np.asarray(v, dtype=KINDS[k]) for k, v in pay.items()})
    return out


def _dir_size(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("cache")
    ap.add_argument("--reads", type=int, default=2000)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ns = ap.parse_args()
    cache = TeacherCache(ns.cache)
    images = _per_image(cache)
    rng = np.random.default_rng(0)
    order = rng.integers(0, len(images), ns.reads)
    work = Path(tempfile.mkdtemp(prefix="detkd-format-"))
    rows = {}
    try:
        # detkd's own format
        def read_st(c: TeacherCache, digests: list[str]) -> None:
            for i in order:
                found = c.image(digests[i])
                assert found is not None
                _read(c, found[1])

        t = time.perf_counter()
        c = TeacherCache(ns.cache)
        open_s = time.perf_counter() - t
        digests = list(c.entries)
        read_st(c, digests)  # warm
        t = time.perf_counter()
        read_st(c, digests)
        size, files = _dir_size(Path(ns.cache))
        read_us = (time.perf_counter() - t) / ns.reads * 1e6
        rows["safetensors shards (detkd)"] = {
            "bytes": size,
            "files": files,
            "open_s": open_s,
            "read_us_per_image": read_us,
        }
        # npz shards
        npz = work / "npz"
        npz.mkdir()
        shards = [images[i : i + 256] for i in range(0, len(images), 256)]
        for j, shard in enumerate(shards):
            offsets = np.cumsum([0] + [len(x["boxes"]) for x in shard])
            cell_offsets = np.cumsum([0] + [len(x["cells"]) for x in shard])
            arrays = {k: np.concatenate([x[k] for x in shard]) for k in NAMES if k in shard[0]}
            np.savez(npz / f"shard-{j:05d}.npz", offsets=offsets, cell_offsets=cell_offsets, **arrays)

        def read_npz(loaded: list) -> None:
            for i in order:
                s, r = divmod(int(i), 256)
                z = loaded[s]
                for k in NAMES:
                    if k in z:
                        off = z["cell_offsets" if k.startswith("cell") else "offsets"]
                        _ = z[k][off[r] : off[r + 1]]

        t = time.perf_counter()
        loaded = [np.load(p) for p in sorted(npz.glob("*.npz"))]
        open_s = time.perf_counter() - t
        read_npz(loaded)
        t = time.perf_counter()
        read_npz(loaded)
        size, files = _dir_size(npz)
        rows["npz shards"] = {"bytes": size, "files": files, "open_s": open_s,
                              "read_us_per_image": (time.perf_counter() - t) / ns.reads * 1e6}  # fmt: skip
        # one file per image
        per = work / "per_image"
        per.mkdir()
        for i, x in enumerate(images):
            np.savez(per / f"{i:07d}.npz", **x)

        def read_per() -> None:
            for i in order:
                with np.load(per / f"{int(i):07d}.npz") as z:
                    for k in NAMES:
                        if k in z:
                            _ = z[k]

        read_per()
        t = time.perf_counter()
        read_per()
        size, files = _dir_size(per)
        rows["one file per image"] = {"bytes": size, "files": files, "open_s": 0.0,
                                      "read_us_per_image": (time.perf_counter() - t) / ns.reads * 1e6}  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = len(images)
    for r in rows.values():
        r["mib_per_1000_images"] = r["bytes"] / 2**20 / n * 1000
    payload = {"cache": ns.cache, "images": n, "boxes": cache.boxes_total, "cells": cache.cells_total,
               "classes": cache.nc,
               "reg_max": cache.reg_max, "reads": ns.reads, "formats": rows,
               "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"cache_format_{payload['date']}.json"
    path.write_text(json.dumps(payload, indent=2))
    print(f"{n} images, {cache.boxes_total} soft boxes ({cache.boxes_total / n:.1f} per image), "
          f"{cache.cells_total / n:.0f} score cells per image, {cache.nc} classes, "
          f"reg_max {cache.reg_max}")  # fmt: skip
    print("| format | MiB per 1,000 images | files | open s | read µs per image (random order) |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['mib_per_1000_images']:.2f} | {r['files']} | {r['open_s']:.3f} | "
              f"{r['read_us_per_image']:.0f} |")  # fmt: skip
    print(json.dumps({"result": str(path)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
