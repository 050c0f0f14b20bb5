#!/usr/bin/python3
"""BERT TFRecord interop of mlmpi-data against an independent codec.

    test_tfrecord.py --bin PATH/mlmpi-data [--workdir DIR] [--seed N]

Reading: tfrecord_py.py (python3-protobuf with the Example schema built from
TensorFlow's field numbers, framing and CRC32C computed here) writes records
as create_pretraining_data.py's features, with map entries shuffled, keys
after values, packed, unpacked and mixed lists, repeated names (the last
counts) and unrelated extra features. `mlmpi-data dump` must print every
feature's values exactly, and `mlmpi-data tfrecord-import --rows` must give
every batch field exactly and the right counts, for files, globs and comma
lists; `mlmpi-data inspect` must print for each file what tfrecord-import
prints for it alone.

Damage: every flipped byte and every truncation of a small file, and records
with valid checksums but a wrong feature type, length, range, a missing
feature or a malformed protobuf must end with exit status 1 and one line
naming the file, the record's byte offset and (for features) the feature
(inspect too, and on a file that is neither a shard nor TFRecords).

Writing: `mlmpi-data tfrecord-export` on shards made by `mlmpi-data shard`
must, read back by tfrecord_py.py, hold exactly the rows `mlmpi-data batches`
prints for the same options, as int64/float lists of BERT's lengths.
"""
import argparse
import glob
import json
import os
import random
import shutil
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import tfrecord_py as tp  # noqa: E402

INT_FEATURES = ["input_ids", "input_mask", "segment_ids", "masked_lm_positions",
                "masked_lm_ids", "next_sentence_labels"]
ALL_FEATURES = INT_FEATURES[:5] + ["masked_lm_weights", "next_sentence_labels"]
CLS, SEP, PAD = 1, 2, 0

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL: " + what, file=sys.stderr)
    return cond


def run(args, *extra):
    p = subprocess.run([ARGS.bin] + list(extra), capture_output=True, text=True, errors="replace")
    return p.returncode, p.stdout, p.stderr


# ---- Records as create_pretraining_data.py writes them ----------------------------
def make_record(rng, T, P, odd_weights=False):
    n = rng.randint(P + 3, T)
    a = rng.randint(1, n - 3)
    ids = [CLS] + [rng.randrange(5, 30522) for _ in range(n - 2)] + [SEP] + [PAD] * (T - n)
    ids[a + 1] = SEP
    seg = [0] * (a + 2) + [1] * (n - a - 2) + [0] * (T - n)
    k = rng.randint(1, P)
    pos = sorted(rng.sample(range(1, n - 1), k))
    w = [rng.choice([1.0, 0.5, 0.3, 1e-3]) if odd_weights else 1.0 for _ in range(k)]
    return {
        "input_ids": ids,
        "input_mask": [1] * n + [0] * (T - n),
        "segment_ids": seg,
        "masked_lm_positions": pos + [0] * (P - k),
        "masked_lm_ids": [rng.randrange(5, 30522) for _ in range(k)] + [0] * (P - k),
        "masked_lm_weights": [tp.f32(x) for x in w] + [0.0] * (P - k),
        "next_sentence_labels": [rng.randint(0, 1)],
    }


EXTRAS = {
    "big": ("int64", [-1, 1 << 40, -(1 << 63), (1 << 63) - 1, 0]),
    "score": ("float", [tp.f32(x) for x in (-0.0, 1e-45, 3.4028234e38, -2.5, 0.1)]),
    "note": ("bytes", [b"", b'a"b\\c\n\t', bytes(range(256))]),
}


def encode_record(rng, rec, variant):
    """Hand-written Example bytes for rec; variant picks the wire forms.
    Returns (payload, expected {name: (kind, values)} of the whole map)."""
    forms = ["packed", "unpacked", "mixed"]
    items = []
    for name in ALL_FEATURES:
        kind = "float" if name == "masked_lm_weights" else "int64"
        items.append((name, kind, rec[name]))
    expect = {name: (kind, vals) for name, kind, vals in items}
    if variant % 3 == 1:
        for name, (kind, vals) in EXTRAS.items():
            items.append((name, kind, vals))
            expect[name] = (kind, vals)
    entries = []
    for name, kind, vals in items:
        form = forms[variant % 3] if variant % 4 else rng.choice(forms)
        entries.append(tp.entry_bytes(name, tp.feature_bytes(kind, vals, form),
                                      value_first=rng.random() < 0.3))
    rng.shuffle(entries)
    if variant % 5 == 2:  # an earlier entry of the same name loses
        entries.insert(0, tp.entry_bytes("input_ids", tp.feature_bytes("float", [1.5, 2.5])))
        entries.insert(1, tp.entry_bytes("next_sentence_labels",
                                         tp.feature_bytes("int64", [7, 7, 7], "unpacked")))
    if variant % 7 == 3:  # a feature with no list, and an entry with no value at all
        entries.append(tp.entry_bytes("empty", tp.feature_bytes(None, None)))
        entries.append(tp.entry_bytes("novalue", b"", no_value=True))
        expect["empty"] = (None, [])
        expect["novalue"] = (None, [])
    payload = tp.example_bytes(entries)
    # The library must read the hand-written bytes as intended.
    lib = tp.parse_example(payload)
    assert lib.keys() == expect.keys(), (lib.keys(), expect.keys())
    for name, (kind, vals) in expect.items():
        assert lib[name] == (kind, vals), (name, lib[name], vals)
    return payload, expect


def same_float(a, b):
    return struct.pack("<f", a) == struct.pack("<f", b)


def json_value(kind, v):
    if kind == "bytes":
        return v.encode("latin-1")
    return v


# ---- Reading -------------------------------------------------------------------
def test_read(work, rng):
    T, P = 32, 5
    files = {}
    for name, count, start in (("a", 40, 0), ("b", 25, 40)):
        recs, payloads, expects = [], [], []
        for i in range(count):
            r = make_record(rng, T, P, odd_weights=(i % 3 == 0))
            p, e = encode_record(rng, r, start + i)
            recs.append(r)
            payloads.append(p)
            expects.append(e)
        path = os.path.join(work, "in", "part-%s.tfrecord" % name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        offsets = tp.write_records(path, payloads)
        files[name] = (path, recs, expects, offsets)

    # dump: every feature of every record, exactly.
    for name, (path, recs, expects, offsets) in files.items():
        rc, out, err = run(None, "dump", path)
        if not check(rc == 0, "dump %s: exit %d: %s" % (path, rc, err.strip())):
            continue
        lines = out.splitlines()
        check(len(lines) == len(recs), "dump %s: %d lines for %d records" % (path, len(lines), len(recs)))
        for i, (line, e, off) in enumerate(zip(lines, expects, offsets)):
            j = json.loads(line)
            check(j["record"] == i and j["offset"] == off,
                  "dump %s record %d: record/offset %s/%s, expected %d/%d" % (path, i, j["record"], j["offset"], i, off))
            feats = j["features"]
            check(sorted(feats) == sorted(e), "dump %s record %d: names %s vs %s" % (path, i, sorted(feats), sorted(e)))
            for fname, (kind, vals) in e.items():
                got = feats.get(fname, "missing")
                if kind is None:
                    check(got is None, "dump %s record %d %s: %r, expected null" % (path, i, fname, got))
                    continue
                got = [json_value(kind, v) for v in got]
                if kind == "float":
                    ok = len(got) == len(vals) and all(
                        isinstance(g, float) and same_float(g, v) for g, v in zip(got, vals))
                else:
                    ok = got == vals and all(type(g) is type(v) for g, v in zip(got, vals))
                check(ok, "dump %s record %d %s: %r, expected %r" % (path, i, fname, got, vals))

    # import --rows: the values the trainer reads, for a list, a glob and a comma list.
    all_recs = files["a"][1] + files["b"][1]
    pa, pb = files["a"][0], files["b"][0]
    for spec in ([pa, pb], [os.path.join(work, "in", "part-*.tfrecord")], [pa + "," + pb]):
        rc, out, err = run(None, "tfrecord-import", "--rows", *spec)
        if not check(rc == 0, "import %s: exit %d: %s" % (spec, rc, err.strip())):
            continue
        rows = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
        check(len(rows) == len(all_recs), "import %s: %d rows" % (spec, len(rows)))
        for i, (row, r) in enumerate(zip(rows, all_recs)):
            for fname in ALL_FEATURES:
                if fname == "masked_lm_weights":
                    ok = all(same_float(float(g), v) for g, v in zip(row[fname], r[fname]))
                else:
                    ok = row[fname] == r[fname]
                check(ok, "import rows record %d %s: %r, expected %r" % (i, fname, row[fname], r[fname]))
        summary = [l for l in out.splitlines() if not l.startswith("{")]
        tokens = sum(sum(r["input_mask"]) for r in all_recs)
        preds = sum(sum(1 for w in r["masked_lm_weights"] if w) for r in all_recs)
        ones = sum(r["next_sentence_labels"][0] for r in all_recs)
        want = [
            "%s: 40 records" % pa, "%s: 25 records" % pb,
            "65 records in 2 file(s): seq_len 32, max_predictions 5; %d real tokens" % tokens,
            "%d masked predictions" % preds,
            "next_sentence_labels %d x 0, %d x 1, 0 other" % (65 - ones, ones),
            "all checksums and features ok"]
        text = "\n".join(summary)
        for w in want:
            check(w in text, "import %s: summary lacks %r:\n%s" % (spec, w, text))
    # inspect: each TFRecord file gets the report tfrecord-import gives for it.
    reports = []
    for path in (pa, pb):
        rc, out, err = run(None, "tfrecord-import", path)
        rc_i, out_i, err_i = run(None, "inspect", path)
        check(rc == 0 and rc_i == 0 and out_i == out and "%s: " % path in out and not err_i,
              "inspect %s: exit %d, %r (stderr %r); tfrecord-import: %r" % (path, rc_i, out_i, err_i, out))
        reports.append(out)
    rc, out, err = run(None, "inspect", pa, pb)
    check(rc == 0 and out == "".join(reports), "inspect of two files: exit %d, %r" % (rc, out))
    # The fingerprint does not depend on where the files lie; it does on the seed.
    moved = os.path.join(work, "moved")
    shutil.rmtree(moved, ignore_errors=True)
    shutil.copytree(os.path.join(work, "in"), moved)
    fps = []
    for args in ([pa, pb], [os.path.join(moved, "part-*.tfrecord")], ["--seed", "9", pa, pb]):
        rc, out, err = run(None, "tfrecord-import", *args)
        fps.append(out.split("fingerprint ")[1].split()[0] if rc == 0 else err)
    check(fps[0] == fps[1] and fps[0] != fps[2], "fingerprints %s" % fps)
    # Wrong shape asked for, and no match.
    rc, out, err = run(None, "tfrecord-import", "--seq-len", "31", pa)
    check(rc == 1 and pa in err and "byte 0" in err and "'input_ids' has 32 values, expected 31" in err,
          "import --seq-len 31: %d %s" % (rc, err.strip()))
    rc, out, err = run(None, "tfrecord-import", os.path.join(work, "in", "nothing-*.tfrecord"))
    check(rc == 1 and "no files match" in err, "import of an empty glob: %d %s" % (rc, err.strip()))
    return files


# ---- Damage ------------------------------------------------------------------------
def record_at(offsets, size, i):
    """Start of the record holding byte i."""
    return max(o for o in offsets if o <= i)


def expect_error(path, rc, err, offset, feature=None, cmd="tfrecord-import"):
    lines = err.strip().splitlines()
    ok = (rc == 1 and len(lines) == 1 and lines[0].startswith("mlmpi-data %s: " % cmd) and
          path in lines[0] and ("byte %d" % offset) in lines[0] and
          (feature is None or ("'%s'" % feature) in lines[0]))
    return check(ok, "%s %s (expect byte %d%s): exit %d, %r" % (
        cmd, os.path.basename(path), offset, ", feature " + feature if feature else "", rc, err))


def test_damage(work, rng):
    T, P = 16, 3
    d = os.path.join(work, "damage")
    os.makedirs(d, exist_ok=True)
    recs = [make_record(rng, T, P) for _ in range(3)]
    payloads = [encode_record(rng, r, v)[0] for r, v in zip(recs, (0, 1, 2))]
    good = os.path.join(d, "good.tfrecord")
    offsets = tp.write_records(good, payloads)
    data = open(good, "rb").read()
    bad = os.path.join(d, "bad.tfrecord")
    # Every flipped byte.
    for i in range(len(data)):
        b = bytearray(data)
        b[i] ^= 0xFF if i % 2 else 0x01
        open(bad, "wb").write(b)
        off = record_at(offsets, len(data), i)
        rc, out, err = run(None, "tfrecord-import", bad)
        expect_error(bad, rc, err, off)
        if i % 3 == 0:
            rc, out, err = run(None, "dump", bad)
            expect_error(bad, rc, err, off, cmd="dump")
        elif i % 3 == 1:
            rc, out, err = run(None, "inspect", bad)
            expect_error(bad, rc, err, off, cmd="inspect")
    # Every truncation: a cut at a record boundary is a shorter valid file.
    for n in range(len(data)):
        open(bad, "wb").write(data[:n])
        rc, out, err = run(None, "tfrecord-import", bad)
        if n == 0:
            check(rc == 1 and "no records" in err and bad in err, "empty file: %d %s" % (rc, err))
        elif n in offsets:
            k = offsets.index(n)
            check(rc == 0 and ("%d records in 1 file" % k) in out, "cut at %d: %d %s" % (n, rc, err))
        else:
            expect_error(bad, rc, err, record_at(offsets, len(data), n))
    # Valid checksums, wrong contents: record 1 of 3 is the bad one.
    def with_entries(edit):
        r = dict(recs[1])
        entries = {}
        for name in ALL_FEATURES:
            kind = "float" if name == "masked_lm_weights" else "int64"
            entries[name] = tp.feature_bytes(kind, r[name], "unpacked")
        edit(entries)
        return tp.example_bytes([tp.entry_bytes(k, v) for k, v in entries.items()])

    def setf(name, kind, vals):
        return lambda e: e.__setitem__(name, tp.feature_bytes(kind, vals))

    wrong = [
        ("masked_lm_weights", "holds int64_list, expected float_list", setf("masked_lm_weights", "int64", [1, 1, 0])),
        ("input_mask", "holds float_list, expected int64_list", setf("input_mask", "float", [1.0] * T)),
        ("input_ids", "holds bytes_list, expected int64_list", setf("input_ids", "bytes", [b"x"] * T)),
        ("input_ids", "holds no list, expected int64_list", setf("input_ids", None, None)),
        ("input_ids", "has 15 values, expected 16", setf("input_ids", "int64", recs[1]["input_ids"][:-1])),
        ("masked_lm_ids", "has 4 values, expected 3", setf("masked_lm_ids", "int64", [5, 6, 7, 8])),
        ("next_sentence_labels", "has 2 values, expected 1", setf("next_sentence_labels", "int64", [0, 1])),
        ("next_sentence_labels", "has 0 values, expected 1", setf("next_sentence_labels", "int64", [])),
        ("segment_ids", "is missing", lambda e: e.pop("segment_ids")),
        ("masked_lm_positions", "is 16, outside [0, 15]", setf("masked_lm_positions", "int64", [1, 16, 0])),
        ("masked_lm_positions", "is -1, outside [0, 15]", setf("masked_lm_positions", "int64", [-1, 2, 0])),
        ("masked_lm_ids", "is 2147483648", setf("masked_lm_ids", "int64", [5, 1 << 31, 0])),
        ("masked_lm_weights", "is not finite", setf("masked_lm_weights", "float", [1.0, float("nan"), 0.0])),
    ]
    for feature, text, edit in wrong:
        path = os.path.join(d, "wrong.tfrecord")
        offs = tp.write_records(path, [payloads[0], with_entries(edit), payloads[2]])
        rc, out, err = run(None, "tfrecord-import", "--seq-len", str(T), "--max-predictions", str(P), path)
        if expect_error(path, rc, err, offs[1], feature):
            check(text in err, "wrong %s: %r lacks %r" % (feature, err, text))
    # Not a protobuf at all (valid checksums): import and dump both refuse.
    for junk in (b"\x0a\x05\x01", b"\xff\xff\xff", b"\x0a\x02\x0a\x80"):
        path = os.path.join(d, "junk.tfrecord")
        offs = tp.write_records(path, [payloads[0], junk])
        for cmd in ("tfrecord-import", "dump", "inspect"):
            rc, out, err = run(None, cmd, path)
            if expect_error(path, rc, err, offs[1], cmd=cmd):
                check("not a tf.train.Example" in err, "junk %r: %s" % (junk, err))
    # A file that is neither a shard nor TFRecords.
    path = os.path.join(d, "text.txt")
    open(path, "w").write("hello, this is not a record file at all\n")
    rc, out, err = run(None, "dump", path)
    check(rc == 1 and path in err and "byte 0" in err, "dump of text: %d %s" % (rc, err))
    rc, out, err = run(None, "inspect", path)
    lines = err.strip().splitlines()
    check(rc == 1 and len(lines) == 1 and lines[0].startswith("mlmpi-data inspect: ") and
          path in lines[0] and not out, "inspect of text: %d %r %r" % (rc, out, err))


# ---- Writing -----------------------------------------------------------------------
def make_shards(work, rng):
    d = os.path.join(work, "corpus")
    os.makedirs(d, exist_ok=True)
    cons, vows = "bdfgklmnprstvz", "aeiou"
    words = sorted({rng.choice(cons) + rng.choice(vows) + rng.choice(cons) + rng.choice(vows)
                    for _ in range(400)})
    vocab = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]", "."] + words
    with open(os.path.join(d, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    with open(os.path.join(d, "corpus.txt"), "w") as f:
        for doc in range(60):
            for s in range(rng.randint(1, 9)):
                f.write(" ".join(rng.choice(words) for _ in range(rng.randint(2, 30))) + " .\n")
            f.write("\n")
    out = os.path.join(d, "shards")
    shutil.rmtree(out, ignore_errors=True)
    rc, o, err = run(None, "shard", "--tokenizer", os.path.join(d, "vocab.txt"), "--out", out,
                     os.path.join(d, "corpus.txt"))
    if not check(rc == 0, "shard: %d %s" % (rc, err)):
        return None
    return out


def read_export(path, T, P):
    """Rows of an exported file, checking it is what BERT's reader expects."""
    rows = []
    for off, payload in tp.read_records(path):
        ex = tp.parse_example(payload)
        check(sorted(ex) == sorted(ALL_FEATURES), "export %s at %d: features %s" % (path, off, sorted(ex)))
        row = {}
        for name in ALL_FEATURES:
            kind, vals = ex.get(name, (None, []))
            want_kind = "float" if name == "masked_lm_weights" else "int64"
            want_len = {"masked_lm_positions": P, "masked_lm_ids": P, "masked_lm_weights": P,
                        "next_sentence_labels": 1}.get(name, T)
            check(kind == want_kind and len(vals) == want_len,
                  "export %s at %d: %s is %s[%d], expected %s[%d]" % (path, off, name, kind, len(vals), want_kind, want_len))
            row[name] = vals
        rows.append(row)
    return rows


def batches_rows(shards, data_opts, B, S0, count):
    rc, out, err = run(None, "batches", "--data", shards, "--global-batch", str(B), "--world", "1",
                       "--rank", "0", "--step", str(S0), "--count", str(count), *data_opts)
    if not check(rc == 0, "batches %s: %d %s" % (data_opts, rc, err)):
        return []
    rows = []
    for line in out.splitlines():
        j = json.loads(line)
        for k in range(len(j["input_ids"])):
            rows.append({name: j[name][k] for name in ALL_FEATURES})
    return rows


def same_rows(a, b, what):
    if not check(len(a) == len(b), "%s: %d rows vs %d" % (what, len(a), len(b))):
        return
    for i, (x, y) in enumerate(zip(a, b)):
        for name in ALL_FEATURES:
            if name == "masked_lm_weights":
                ok = all(same_float(float(p), float(q)) for p, q in zip(x[name], y[name]))
            else:
                ok = x[name] == y[name]
            if not check(ok, "%s row %d %s: %r vs %r" % (what, i, name, x[name], y[name])):
                return


def test_write(work, rng):
    shards = make_shards(work, rng)
    if not shards:
        return
    d = os.path.join(work, "export")
    os.makedirs(d, exist_ok=True)
    cases = [
        ("packed", ["--seq-len", "64", "--max-predictions", "10", "--seed", "7"], 8, 0, 3),
        ("nsp", ["--seq-len", "48", "--max-predictions", "8", "--seed", "11", "--instances", "nsp",
                 "--whole-word", "--masking", "electra", "--mask-prob", "0.2"], 6, 5, 2),
        ("short", ["--seq-len", "16", "--max-predictions", "3", "--seed", "3"], 7, 2, 4),
    ]
    for name, opts, B, S0, S in cases:
        path = os.path.join(d, name + ".tfrecord")
        rc, out, err = run(None, "tfrecord-export", "--data", shards, "--out", path, "--steps", str(S),
                           "--global-batch", str(B), "--start-step", str(S0), *opts)
        if not check(rc == 0, "export %s: %d %s" % (name, rc, err)):
            continue
        T, P = int(opts[1]), int(opts[3])
        mine = read_export(path, T, P)
        want = batches_rows(shards, opts, B, S0, S)
        same_rows(mine, want, "export %s vs batches" % name)
        if name == "nsp":
            check(any(r["next_sentence_labels"] == [1] for r in mine) and
                  any(r["next_sentence_labels"] == [0] for r in mine), "nsp export: one label only")
        rc, out, err = run(None, "tfrecord-import", "--rows", path)
        if check(rc == 0, "import of export %s: %d %s" % (name, rc, err)):
            back = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
            same_rows(back, want, "import of export %s vs batches" % name)
    # --count N is the global batch of N at step 0; the default is one epoch.
    opts = ["--seq-len", "32", "--max-predictions", "5", "--seed", "5"]
    path = os.path.join(d, "count.tfrecord")
    rc, out, err = run(None, "tfrecord-export", "--data", shards, "--out", path, "--count", "13", *opts)
    if check(rc == 0, "export --count: %d %s" % (rc, err)):
        same_rows(read_export(path, 32, 5), batches_rows(shards, opts, 13, 0, 1), "export --count 13")
    epoch = os.path.join(d, "epoch.tfrecord")
    rc, out, err = run(None, "tfrecord-export", "--data", shards, "--out", epoch, *opts)
    if check(rc == 0, "export of an epoch: %d %s" % (rc, err)):
        n = len(tp.read_records(epoch))
        same_rows(read_export(epoch, 32, 5), batches_rows(shards, opts, n, 0, 1), "export of an epoch")
    # Bad requests end with one line and status 2.
    for bad in (["--count", "0"], ["--steps", "2"], ["--count", "3", "--steps", "1", "--global-batch", "2"]):
        rc, out, err = run(None, "tfrecord-export", "--data", shards, "--out", path, *opts, *bad)
        check(rc == 2 and len(err.strip().splitlines()) == 1, "export %s: %d %s" % (bad, rc, err))
    rc, out, err = run(None, "tfrecord-export", "--data", os.path.join(d, "nowhere"), "--out", path, *opts)
    check(rc == 1 and "nowhere" in err, "export from a missing dir: %d %s" % (rc, err))


def main():
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="mlmpi-data")
    ap.add_argument("--workdir", default="ref_tfrecord")
    ap.add_argument("--seed", type=int, default=20240605)
    ARGS = ap.parse_args()
    shutil.rmtree(ARGS.workdir, ignore_errors=True)
    os.makedirs(ARGS.workdir)
    rng = random.Random(ARGS.seed)
    test_read(ARGS.workdir, rng)
    test_damage(ARGS.workdir, rng)
    test_write(ARGS.workdir, rng)
    if failures:
        print("%d check(s) failed" % len(failures), file=sys.stderr)
        return 1
    print("tfrecord interop: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
