"""tfrecord_py.py: an independent TFRecord / tf.train.Example codec for the
tests: the Example message classes are built at run time from a
FileDescriptorProto with TensorFlow's field numbers (python3-protobuf, no
TensorFlow), the framing and its masked CRC32C are computed here, and the
wire bytes of every variant protobuf allows (map entries in any order, key
after value, packed, unpacked or mixed lists, repeated names) are written by
hand so that the reader under test meets all of them.
"""
import struct

from google.protobuf import descriptor_pb2, descriptor_pool

try:
    from google.protobuf.message_factory import GetMessageClass
except ImportError:  # protobuf < 4.22
    from google.protobuf import message_factory

    def GetMessageClass(desc):
        return message_factory.MessageFactory(desc.file.pool).GetPrototype(desc)


# ---- Schema -----------------------------------------------------------------
def _schema():
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(
        name="mlmpi_test_example.proto", package="tfxtest", syntax="proto3")

    def message(name, fields, parent=None):
        m = (parent.nested_type if parent else fdp.message_type).add(name=name)
        for fname, number, ftype, label, type_name, oneof in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
            if oneof is not None:
                f.oneof_index = oneof
        return m

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message("BytesList", [("value", 1, F.TYPE_BYTES, rep, None, None)])
    message("FloatList", [("value", 1, F.TYPE_FLOAT, rep, None, None)])
    message("Int64List", [("value", 1, F.TYPE_INT64, rep, None, None)])
    feat = message("Feature", [
        ("bytes_list", 1, F.TYPE_MESSAGE, opt, ".tfxtest.BytesList", 0),
        ("float_list", 2, F.TYPE_MESSAGE, opt, ".tfxtest.FloatList", 0),
        ("int64_list", 3, F.TYPE_MESSAGE, opt, ".tfxtest.Int64List", 0),
    ])
    feat.oneof_decl.add(name="kind")
    feats = message("Features", [
        ("feature", 1, F.TYPE_MESSAGE, rep, ".tfxtest.Features.FeatureEntry", None)])
    entry = message("FeatureEntry", [
        ("key", 1, F.TYPE_STRING, opt, None, None),
        ("value", 2, F.TYPE_MESSAGE, opt, ".tfxtest.Feature", None),
    ], parent=feats)
    entry.options.map_entry = True
    message("Example", [("features", 1, F.TYPE_MESSAGE, opt, ".tfxtest.Features", None)])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {n: GetMessageClass(pool.FindMessageTypeByName("tfxtest." + n))
            for n in ("BytesList", "FloatList", "Int64List", "Feature", "Features", "Example")}


M = _schema()


# ---- Framing ------------------------------------------------------------------
def _crc_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_CRC = _crc_table()


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc(data):
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(payload):
    head = struct.pack("<Q", len(payload))
    return (head + struct.pack("<I", masked_crc(head)) + payload +
            struct.pack("<I", masked_crc(payload)))


def write_records(path, payloads):
    """Writes the records; returns each record's byte offset."""
    offsets, out = [], bytearray()
    for p in payloads:
        offsets.append(len(out))
        out += frame(p)
    with open(path, "wb") as f:
        f.write(out)
    return offsets


def read_records(path):
    """[(offset, payload)], checking both checksums of every record."""
    data = open(path, "rb").read()
    out, o = [], 0
    while o < len(data):
        if len(data) - o < 12:
            raise ValueError("%s: truncated header at %d" % (path, o))
        (n,) = struct.unpack_from("<Q", data, o)
        if struct.unpack_from("<I", data, o + 8)[0] != masked_crc(data[o:o + 8]):
            raise ValueError("%s: bad length crc at %d" % (path, o))
        if len(data) - o - 12 < n + 4:
            raise ValueError("%s: record at %d runs past the end" % (path, o))
        p = data[o + 12:o + 12 + n]
        if struct.unpack_from("<I", data, o + 12 + n)[0] != masked_crc(p):
            raise ValueError("%s: bad data crc at %d" % (path, o))
        out.append((o, p))
        o += n + 16
    return out


# ---- Wire bytes by hand ---------------------------------------------------------
def varint(v):
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def tag(field, wire):
    return varint(field << 3 | wire)


def ld(field, data):
    return tag(field, 2) + varint(len(data)) + data


def f32(v):
    """v rounded to float32, as a Python float."""
    return struct.unpack("<f", struct.pack("<f", v))[0]


def list_bytes(kind, values, form):
    """The body of an Int64List / FloatList / BytesList. form: 'packed'
    (through the protobuf library, which packs), 'unpacked' (by hand) or
    'mixed' (a packed run followed by single elements, also legal)."""
    if kind == "bytes":
        return b"".join(ld(1, v) for v in values)
    if form == "packed":
        cls = M["Int64List"] if kind == "int64" else M["FloatList"]
        body = cls(value=values).SerializeToString()
        assert not values or body[0] == 0x0A, "the library did not pack the list"
        return body
    if form == "mixed":
        h = len(values) // 2
        return list_bytes(kind, values[:h], "packed") + list_bytes(kind, values[h:], "unpacked")
    if kind == "int64":
        return b"".join(tag(1, 0) + varint(v) for v in values)
    return b"".join(tag(1, 5) + struct.pack("<f", v) for v in values)


KIND_FIELD = {"bytes": 1, "float": 2, "int64": 3}


def feature_bytes(kind, values, form="packed"):
    if kind is None:
        return b""  # a Feature with no list
    return ld(KIND_FIELD[kind], list_bytes(kind, values, form))


def entry_bytes(key, feature, value_first=False, no_value=False):
    k = ld(1, key.encode())
    if no_value:
        return k
    v = ld(2, feature)
    return v + k if value_first else k + v


def example_bytes(entries):
    """entries: already encoded FeatureEntry bodies, in the order given."""
    return ld(1, b"".join(ld(1, e) for e in entries))


def parse_example(payload):
    """{name: (kind, [values])} through the protobuf library."""
    ex = M["Example"].FromString(payload)
    out = {}
    for name, feat in ex.features.feature.items():
        kind = feat.WhichOneof("kind")
        if kind is None:
            out[name] = (None, [])
        else:
            out[name] = (kind.split("_")[0], list(getattr(feat, kind).value))
    return out
