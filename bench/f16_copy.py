#!/usr/bin/env python3
"""Writes a float16 copy of a safetensors checkpoint (f32 tensors halved, the rest as they are).

    python bench/f16_copy.py model.safetensors model-f16.safetensors

scripts/gpu-pack uses it to fit the pretrained all-MiniLM-L6-v2 (88 MB in f32) into what one
GPU run carries; emotune and Transformers load f16 checkpoints into float32 models. Only the
standard library and numpy: the format is an 8-byte header length, a JSON header, the bytes.
"""

import json
import os
import struct
import sys
import tempfile

import numpy as np


def main(src, dst):
    with open(src, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out_header, chunks, offset = {}, [], 0
    for name, info in header.items():
        if name == "__metadata__":
            out_header[name] = info
            continue
        start, end = info["data_offsets"]
        raw = data[start:end]
        dtype = info["dtype"]
        if dtype == "F32":
            raw = np.frombuffer(raw, dtype="<f4").astype("<f2").tobytes()
            dtype = "F16"
        out_header[name] = {"dtype": dtype, "shape": info["shape"], "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(out_header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(dst)))
    with os.fdopen(fd, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for c in chunks:
            f.write(c)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dst)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
