"""Minimal safetensors reader/writer (json + numpy only).

File layout: u64 little-endian header length N, N bytes of JSON header
(padded with spaces to a multiple of 8), then the raw little-endian data.
Header maps tensor name -> {"dtype", "shape", "data_offsets": [begin, end]}
with offsets relative to the start of the data section, plus an optional
"__metadata__" map of str -> str.
"""
import json
import struct

import numpy as np

_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}


def _code_for(dt):
    dt = np.dtype(dt)
    for code, d in _DTYPES.items():
        if d.kind == dt.kind and d.itemsize == dt.itemsize:
            return code
    raise TypeError("unsupported dtype %s" % dt)


def save(path, tensors, metadata=None):
    """Write dict name -> np.ndarray (scalars allowed, shape [])."""
    header = {}
    blobs = []
    off = 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        code = _code_for(a.dtype)
        raw = np.ascontiguousarray(a, dtype=_DTYPES[code]).tobytes()
        header[name] = {"dtype": code, "shape": list(a.shape),
                        "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)


def load(path, with_metadata=False):
    """Read a safetensors file -> dict name -> np.ndarray (native copies)."""
    with open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 8:
        raise ValueError("%s: file too short" % path)
    (n,) = struct.unpack("<Q", buf[:8])
    if 8 + n > len(buf):
        raise ValueError("%s: header length %d exceeds file size" % (path, n))
    header = json.loads(buf[8:8 + n].decode("utf-8"))
    data = memoryview(buf)[8 + n:]
    out = {}
    meta = header.pop("__metadata__", None) or {}
    for name, info in header.items():
        dt = _DTYPES[info["dtype"]]
        shape = tuple(int(s) for s in info["shape"])
        b, e = info["data_offsets"]
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if e - b != count * dt.itemsize or e > len(data) or b < 0:
            raise ValueError("%s: bad data_offsets for %s" % (path, name))
        arr = np.frombuffer(data[b:e], dtype=dt, count=count).reshape(shape)
        out[name] = arr.astype(dt.newbyteorder("="), copy=True)
    if with_metadata:
        return out, meta
    return out
