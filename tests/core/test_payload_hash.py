"""The LoRA hash of infotext (A1111's `addnet_hash_safetensors`: sha256 of the bytes after a .safetensors
file's header) goes through the one cached file hash, so a LoRA is hashed once, not once per image.

Reference: A1111 1.10 `modules/hashes.py` (`addnet_hash_safetensors`: skip 8 + header length bytes,
sha256 the rest; cached by file mtime in its cache.json) and the safetensors layout (8-byte little-endian
header length, JSON header, tensor bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct

from animegen.core.files import sha256_file
from animegen.models.lora import lora_hash


def _safetensors(path, payload: bytes, meta: str) -> None:
    header = json.dumps({"__metadata__": {"m": meta}, "w": {"dtype": "U8", "shape": [len(payload)],
                                                            "data_offsets": [0, len(payload)]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + payload)


def test_payload_hash_skips_the_header_and_whole_file_hash_does_not(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    _safetensors(a, b"\x01\x02" * 500, "one")
    _safetensors(b, b"\x01\x02" * 500, "another header")
    assert sha256_file(a, safetensors_payload=True) == hashlib.sha256(b"\x01\x02" * 500).hexdigest()
    assert sha256_file(a, safetensors_payload=True) == sha256_file(b, safetensors_payload=True)
    assert sha256_file(a) == hashlib.sha256(a.read_bytes()).hexdigest() != sha256_file(b)


def test_lora_hash_is_answered_from_the_cache_while_size_and_mtime_stand(tmp_path):
    lora = tmp_path / "char.safetensors"
    _safetensors(lora, b"\x07" * 4096, "x")
    first = lora_hash(lora)
    assert first == hashlib.sha256(b"\x07" * 4096).hexdigest()[:12]
    stat = lora.stat()
    _safetensors(lora, b"\x08" * 4096, "x")  # same size; the mtime put back: only a cache can answer `first`
    os.utime(lora, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert lora_hash(lora) == first
    os.utime(lora, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # touched: hashed anew
    assert lora_hash(lora) == hashlib.sha256(b"\x08" * 4096).hexdigest()[:12]
