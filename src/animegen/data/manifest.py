"""The dataset manifest: one JSON row per source image in `DATASET/manifest.jsonl`.

Why JSONL, append-only: every `animegen data` command appends the new version of a row as soon as it has
finished that image (one `write` + flush per row). A killed process loses at most the line it was writing;
a torn last line is cut off on the next open. Reading keeps the *last* version of each row, so re-running a
command resumes where it stopped. When a command completes, the file is compacted (rewritten with one line
per row through an atomic rename). `export_parquet` writes the same rows as a Parquet table.

Row key: `path` (absolute source path). Columns (all JSON; absent values are null):

| column            | type             | written by | meaning                                                         |
|-------------------|------------------|------------|-----------------------------------------------------------------|
| path              | str              | ingest     | absolute path of the source image (never modified)              |
| sha256            | str              | ingest     | hex sha256 of the file bytes (content identity)                 |
| size              | int              | ingest     | file size in bytes                                              |
| mtime_ns          | int              | ingest     | source mtime when ingested                                      |
| width, height     | int              | ingest     | pixel size after EXIF orientation                               |
| format            | str              | ingest     | real content format (PIL name: JPEG, PNG, ...)                   |
| mode              | str              | ingest     | PIL mode before conversion to RGB (P, CMYK, I;16, RGBA, ...)    |
| normalized        | bool             | ingest     | decoded pixels differ from the file (export re-encodes as PNG)  |
| phash             | str              | ingest     | 64-bit DCT perceptual hash, hex                                 |
| mean_color        | str              | ingest     | average colour as hex RGB (near-duplicate sanity check)         |
| status            | str              | all        | ok / error / duplicate / near_duplicate / filtered              |
| reason            | str              | all        | why a row is not ok (human readable)                            |
| duplicate_of      | str              | ingest     | path of the kept image for (near) duplicates                    |
| cluster           | int              | ingest     | near-duplicate cluster id (same id = same picture)              |
| source_caption    | str              | ingest     | caption read from a `.txt` / `.caption` / `.json` sidecar       |
| source_tags       | list[str]        | ingest     | tags from a `.json` sidecar ("tags" key), if any                |
| source_repeats    | int              | ingest     | N of the kohya `N_name` folder the image is in (its repeats     |
|                   |                  |            | per epoch there; 0 = never); unset outside such a folder        |
| class_token       | str              | ingest     | `name` of that folder: kohya's caption for an image with no     |
|                   |                  |            | caption file                                                    |
| tags              | list[str]        | tag        | general tags, most confident first                              |
| character_tags    | list[str]        | tag        | character tags, most confident first                            |
| tag_scores        | dict[str, float] | tag        | tagger confidence of every kept tag                             |
| rating            | str              | tag        | general / sensitive / questionable / explicit                   |
| tagger            | str              | tag        | which tagger produced the tags                                  |
| aesthetic_score   | float            | score      | LAION improved aesthetic predictor output (~1-10)               |
| aesthetic_tag     | str              | score      | very aesthetic / aesthetic / displeasing / very displeasing     |
| quality_tag       | str              | score      | masterpiece ... worst quality (by percentile)                   |
| nl_caption        | str              | caption    | natural-language caption from a captioner plug-in               |
| caption           | str              | caption    | the final training caption (use this to train)                  |
| bucket            | str              | balance    | the single balance bucket of the image                          |
| weight            | float            | balance    | multiplies `source_repeats` when `repeats` is unset (a fraction:|
|                   |                  |            | an expected count); pulls each bucket toward the median size    |
| repeats           | int              | balance    | times shown per epoch, weight and source repeats already in it; |
|                   |                  |            | 0 = never (unset: `source_repeats` x `weight`, each 1 if unset; |
|                   |                  |            | see `data.balance.exposure`)                                    |

Rows with `status == "ok"` are the training set. Unknown keys found in a file are kept (in `extra`).

The tags of a row (`ManifestRow.all_tags`, what stats, balance, export and captions all use) are the sidecar's
first, then the tagger's, each once, as kohya's `--append_tags` merges them: the caption file's tag list (for an
image with no caption, the kohya class token it would train with), the JSON sidecar's tags, the tagger's
character tags, its general tags. A sentence caption gives no tags.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Self

from animegen.core.files import atomic_write
from animegen.data.sidecar import caption_tags, dedupe_tags
from animegen.prompts.tags import normalize_tag

MANIFEST_NAME = "manifest.jsonl"
LOCK_NAME = ".manifest.lock"

STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_DUPLICATE = "duplicate"
STATUS_NEAR_DUPLICATE = "near_duplicate"
STATUS_FILTERED = "filtered"


@dataclass
class ManifestRow:
    """One image of the dataset; see the module docstring for the meaning of each column."""

    path: str
    sha256: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    mode: str | None = None
    normalized: bool | None = None
    phash: str | None = None
    mean_color: str | None = None
    status: str = STATUS_OK
    reason: str | None = None
    duplicate_of: str | None = None
    cluster: int | None = None
    source_caption: str | None = None
    source_tags: list[str] | None = None
    source_repeats: int | None = None
    class_token: str | None = None
    tags: list[str] | None = None
    character_tags: list[str] | None = None
    tag_scores: dict[str, float] | None = None
    rating: str | None = None
    tagger: str | None = None
    aesthetic_score: float | None = None
    aesthetic_tag: str | None = None
    quality_tag: str | None = None
    nl_caption: str | None = None
    caption: str | None = None
    bucket: str | None = None
    weight: float | None = None
    repeats: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    @property
    def caption_file_tags(self) -> list[str] | None:
        """The tags of the text kohya trains the image with: its caption's tag list, or with no caption its
        class token; None for a sentence caption, or no caption and no class token."""
        if self.source_caption:
            return caption_tags(self.source_caption)
        return [normalize_tag(self.class_token)] if self.class_token else None

    @property
    def sidecar_tags(self) -> list[str]:
        """The tags the sources give: `caption_file_tags`, then the JSON sidecar's (normalised, may repeat)."""
        return [*(self.caption_file_tags or []), *(normalize_tag(t) for t in self.source_tags or [])]

    @property
    def all_tags(self) -> list[str]:
        """The tags of the row (module docstring): sidecar tags, tagger character tags, tagger general tags."""
        return dedupe_tags([*self.sidecar_tags, *(self.character_tags or []), *(self.tags or [])])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra") or {}
        return {**extra, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ManifestRow:
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names and k != "extra"}
        return cls(**known, extra=extra)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _row_line(row: ManifestRow) -> str:
    """One JSON line. A file name that is not valid UTF-8 reaches us with surrogate escapes (PEP 383), which
    UTF-8 cannot encode: they are written as `\\udcXX` JSON escapes, which `json.loads` turns back into the
    same str, so the stored path still opens the very file."""
    text = json.dumps(row.to_dict(), ensure_ascii=False)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


def _repair_tail(path: Path) -> None:
    """Cut a torn last line (a process killed mid-write) so appends start on a clean line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        size = f.seek(0, os.SEEK_END)
        pos = size
        chunk = 65536
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            data = f.read(pos - start)
            idx = data.rfind(b"\n")
            if idx >= 0:
                f.truncate(start + idx + 1)
                return
            pos = start
        f.truncate(0)


def read_rows(path: str | Path) -> dict[str, ManifestRow]:
    """Rows of a manifest file, last version of each path wins; unparsable (torn) lines are skipped."""
    rows: dict[str, ManifestRow] = {}
    path = Path(path)
    if not path.exists():
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(d, dict) and "path" in d:
                rows[d["path"]] = ManifestRow.from_dict(d)
    return rows


class Manifest:
    """A dataset folder's manifest, opened for reading and appending (one writer at a time: file lock).

    Use as a context manager; `put(row)` persists a row immediately, `close()` compacts the file.
    """

    def __init__(self, dataset: str | Path, *, create: bool = False):
        self.dir = Path(dataset)
        self.path = self.dir / MANIFEST_NAME
        if not self.path.exists() and not create:
            raise FileNotFoundError(
                f"no dataset manifest at {self.path}; run `animegen data ingest SRC --out {self.dir}` first"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.dir / LOCK_NAME, "w")  # noqa: SIM115  (held until close())
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise RuntimeError(f"{self.dir} is in use by another animegen process; wait for it to finish") from None
        _repair_tail(self.path)
        self.rows: dict[str, ManifestRow] = read_rows(self.path)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115  (the append log, closed in close())
        self._dirty = 0

    # -- writing ---------------------------------------------------------------------------------------
    def put(self, row: ManifestRow) -> None:
        """Record `row` (new or updated) on disk now: a later crash cannot lose it."""
        self.rows[row.path] = row
        self._fh.write(_row_line(row))
        self._fh.flush()
        self._dirty += 1

    def put_many(self, rows: Iterable[ManifestRow]) -> None:
        for row in rows:
            self.put(row)

    def compact(self) -> None:
        """Rewrite the file with one line per row (atomic rename, so a crash leaves the old file)."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        atomic_write(self.path, "".join(_row_line(row) for row in self.rows.values()))
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._dirty = 0

    def close(self, *, compact: bool = True) -> None:
        if self._fh.closed:
            return
        if compact:
            self.compact()
        self._fh.close()
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Compact only on success; after an error the append log is already complete and safe.
        self.close(compact=exc_type is None)

    # -- reading ---------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[ManifestRow]:
        return iter(self.rows.values())

    def __len__(self) -> int:
        return len(self.rows)

    def ok_rows(self) -> list[ManifestRow]:
        return [r for r in self.rows.values() if r.ok]


def load_manifest(dataset: str | Path) -> list[ManifestRow]:
    """Read-only view of a dataset's rows (no lock): what `animegen train` uses to find its images."""
    path = Path(dataset)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(f"no dataset manifest at {path}")
    return list(read_rows(path).values())


def export_parquet(rows: Iterable[ManifestRow], path: str | Path) -> Path:
    """Write rows as a Parquet table (tag_scores / extra as JSON strings: Parquet maps are awkward)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def utf8(v):  # Parquet strings are UTF-8: a surrogate-escaped byte (see _row_line) is shown as `\udcXX`
        if isinstance(v, str) and _SURROGATE.search(v):
            return v.encode("utf-8", "backslashreplace").decode("utf-8")
        return [utf8(x) for x in v] if isinstance(v, list) else v

    records = []
    for r in rows:
        d = {k: utf8(v) for k, v in asdict(r).items()}
        d["tag_scores"] = json.dumps(d["tag_scores"]) if d["tag_scores"] is not None else None
        d["extra"] = json.dumps(d["extra"]) if d["extra"] else None
        records.append(d)
    schema = pa.schema(
        [
            (f.name, pa.list_(pa.string()) if f.name in ("source_tags", "tags", "character_tags") else
             pa.int64() if f.name in ("size", "mtime_ns", "width", "height", "cluster", "source_repeats",
                                      "repeats") else
             pa.float64() if f.name in ("aesthetic_score", "weight") else
             pa.bool_() if f.name == "normalized" else pa.string())
            for f in fields(ManifestRow)
        ]
    )
    table = pa.Table.from_pylist(records, schema=schema)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path
