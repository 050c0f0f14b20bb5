"""An independent reader of TensorBoard event files: TFRecord framing with
masked CRC32C checked here, and Event messages decoded by python3-protobuf
from a descriptor built at run time with TensorBoard's field numbers."""
import struct

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ (0x82F63B78 if _c & 1 else 0)
    _TABLE.append(_c)


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = (c >> 8) ^ _TABLE[(c ^ b) & 0xFF]
    return c ^ 0xFFFFFFFF


def masked(c):
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _event_class():
    f = descriptor_pb2.FileDescriptorProto(name="tb_events_test.proto", package="t", syntax="proto3")
    T = descriptor_pb2.FieldDescriptorProto
    v = f.message_type.add(name="Value")
    v.field.add(name="tag", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    v.field.add(name="simple_value", number=2, type=T.TYPE_FLOAT, label=T.LABEL_OPTIONAL)
    s = f.message_type.add(name="Summary")
    s.field.add(name="value", number=1, type=T.TYPE_MESSAGE, type_name=".t.Value", label=T.LABEL_REPEATED)
    e = f.message_type.add(name="Event")
    e.field.add(name="wall_time", number=1, type=T.TYPE_DOUBLE, label=T.LABEL_OPTIONAL)
    e.field.add(name="step", number=2, type=T.TYPE_INT64, label=T.LABEL_OPTIONAL)
    e.field.add(name="file_version", number=3, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    e.field.add(name="summary", number=5, type=T.TYPE_MESSAGE, type_name=".t.Summary", label=T.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    desc = pool.FindMessageTypeByName("t.Event")
    try:
        return message_factory.GetMessageClass(desc)
    except AttributeError:  # older python3-protobuf
        return message_factory.MessageFactory(pool).GetPrototype(desc)


def read_events(path):
    """[(step, {tag: value}), ...] plus the file_version, checking every CRC."""
    Event = _event_class()
    data = open(path, "rb").read()
    out, version, o = [], None, 0
    while o < len(data):
        (n,) = struct.unpack_from("<Q", data, o)
        (lc,) = struct.unpack_from("<I", data, o + 8)
        if masked(crc32c(data[o:o + 8])) != lc:
            raise ValueError(f"{path}: bad length CRC at {o}")
        payload = data[o + 12:o + 12 + n]
        (dc,) = struct.unpack_from("<I", data, o + 12 + n)
        if masked(crc32c(payload)) != dc:
            raise ValueError(f"{path}: bad data CRC at {o}")
        e = Event()
        e.ParseFromString(payload)
        if e.file_version:
            version = e.file_version
        else:
            out.append((e.step, {v.tag: v.simple_value for v in e.summary.value}))
        o += n + 16
    return version, out
