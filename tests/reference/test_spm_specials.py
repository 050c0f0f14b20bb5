#!/usr/bin/python3
"""mlmpi-data on SentencePiece models without BERT's special pieces.

    test_spm_specials.py --bin PATH/mlmpi-data --workdir DIR

Trains three small models with spm_train on Genesis from Debian's bible-kjv:
"default" (spm_train's defaults: <unk> <s> </s>, no pad, no mask), "bare"
(--bos_id=-1 --eos_id=-1: none of [CLS] [SEP] [MASK] [PAD] in any spelling)
and "full" (--user_defined_symbols=[CLS],[SEP],[MASK],[PAD]). For each:

- `mlmpi-data shard` succeeds and says once on stderr which tokens it
  appended as which ids ("default": [MASK] [PAD] as V, V+1, with <s> </s>
  as [CLS] [SEP]; "bare": all four as V..V+3; "full": nothing, no line);
- `mlmpi-data inspect` shows vocab_size V + appended and those ids;
- `mlmpi-data batches` rows start with the [CLS] id, hold the [SEP] id, the
  [MASK] id at masked positions and the [PAD] id where input_mask is 0, and
  no id at or above the grown vocab_size;
- the shards' token ids (`mlmpi-data dump`) and `mlmpi-data encode` equal
  spm_encode's, `mlmpi-data decode` equals spm_decode on them, and an
  appended id decodes to its name;
- `shard --no-add-specials` fails with one line naming the model and the
  missing tokens, and writes no shard ("full": it succeeds).

Exits 77 (skipped) when spm_train, spm_encode, spm_decode or bible is missing.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys

SKIP = 77
NAMES = ["[CLS]", "[SEP]", "[MASK]", "[PAD]"]

# name: (spm_train options, the names appended, the ids of [CLS] [SEP] [MASK]
# [PAD] for a vocabulary of V pieces).
MODELS = {
    "default": ([], ["[MASK]", "[PAD]"], lambda V: (1, 2, V, V + 1)),
    "bare": (["--bos_id=-1", "--eos_id=-1"], NAMES, lambda V: (V, V + 1, V + 2, V + 3)),
    "full": (["--user_defined_symbols=[CLS],[SEP],[MASK],[PAD]"], [], lambda V: (3, 4, 5, 6)),
}

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL: " + what)
    return cond


def run(cmd, stdin=b""):
    return subprocess.run(cmd, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def lines_of(b):
    return b.decode("utf-8", "replace").splitlines()


def make_corpus(workdir):
    """Genesis without verse references: 12 documents of 25 verses, blank
    lines between them (a shard input), and the verses alone."""
    p = run(["bible", "-f", "Gen1:1-Gen50:26"])
    verses = [re.sub(r"^\S+\s+", "", l) for l in lines_of(p.stdout) if l.strip()]
    if not check(p.returncode == 0 and len(verses) > 1500, "bible gave %d verses" % len(verses)):
        return None, None, None
    text = os.path.join(workdir, "genesis.txt")
    with open(text, "w") as f:
        f.write("\n".join(verses) + "\n")
    docs = [verses[i:i + 25] for i in range(0, 300, 25)]
    shard_in = os.path.join(workdir, "docs.txt")
    with open(shard_in, "w") as f:
        f.write("\n\n".join("\n".join(d) for d in docs) + "\n")
    return text, shard_in, docs


class Case:
    """One trained model and what mlmpi-data should make of it."""

    def __init__(self, args, name, text, shard_in, docs):
        opts, self.appended, special_ids = MODELS[name]
        self.bin, self.name, self.shard_in, self.docs = args.bin, name, shard_in, docs
        prefix = os.path.join(args.workdir, name)
        p = run(["spm_train", "--input=" + text, "--model_prefix=" + prefix, "--vocab_size=1000",
                 "--minloglevel=2"] + opts)
        self.ok = check(p.returncode == 0, "spm_train %s: %s" % (name, p.stderr[-500:]))
        self.model = prefix + ".model"
        self.V = sum(1 for _ in open(prefix + ".vocab", "rb")) if self.ok else 0
        self.k = len(self.appended)
        self.special = dict(zip(NAMES, special_ids(self.V)))
        self.out = os.path.join(args.workdir, name + "-shards")
        self.shard = os.path.join(self.out, "train-00000.mlms")


def check_shard(c):
    """shard says once what it appended as which ids; inspect shows them."""
    shutil.rmtree(c.out, ignore_errors=True)
    p = run([c.bin, "shard", "--tokenizer", c.model, "--out", c.out, c.shard_in])
    err = lines_of(p.stderr)
    said = [l for l in err if "appended" in l]
    if not check(p.returncode == 0, "shard %s: exit %d: %s" % (c.name, p.returncode, err)):
        return False
    want = []
    if c.k:
        ids = "id %d" % c.V if c.k == 1 else "ids %d..%d" % (c.V, c.V + c.k - 1)
        want = ["mlmpi-data shard: %s has no %s: appended as %s" % (c.model, ", ".join(c.appended),
                                                                    ids)]
    if check(said == want, "shard %s: stderr %r, expected the line(s) %r" % (c.name, err, want)):
        print("  ok  shard %-8s %s" % (c.name, said[0] if said else "(nothing appended)"))
    p = run([c.bin, "inspect", c.shard])
    want = "vocab %d), ids cls %d sep %d mask %d pad %d unk 0;" % ((c.V + c.k,) + tuple(
        c.special[n] for n in NAMES))
    return check(p.returncode == 0 and want in p.stdout.decode(),
                 "inspect %s: %r lacks %r" % (c.name, p.stdout.decode(), want))


def check_row(c, j, r):
    """(masked positions holding [MASK], padded positions) of row r; checks
    the row's ids against the header's."""
    ids, sp = j["input_ids"][r], c.special
    check(ids[0] == sp["[CLS]"], "batches %s: row starts %d" % (c.name, ids[0]))
    check(sp["[SEP]"] in ids, "batches %s: row without [SEP]" % c.name)
    check(max(ids) < c.V + c.k, "batches %s: id %d >= %d" % (c.name, max(ids), c.V + c.k))
    check(max(j["masked_lm_ids"][r]) < c.V, "batches %s: a special as a label" % c.name)
    pads = [i for i, m in zip(ids, j["input_mask"][r]) if not m]
    check(all(i == sp["[PAD]"] for i in pads), "batches %s: padding %r" % (c.name, pads))
    masked = sum(1 for pos, w in zip(j["masked_lm_positions"][r], j["masked_lm_weights"][r])
                 if w > 0 and ids[pos] == sp["[MASK]"])
    return masked, len(pads)


def check_batches(c):
    p = run([c.bin, "batches", "--data", c.out, "--seq-len", "64", "--global-batch", "8",
             "--world", "1", "--rank", "0", "--step", "0", "--count", "3", "--seed", "5"])
    if not check(p.returncode == 0, "batches %s: %s" % (c.name, p.stderr.decode())):
        return
    counts = [check_row(c, j, r) for j in map(json.loads, lines_of(p.stdout))
              for r in range(len(j["input_ids"]))]
    masked, padded = sum(m for m, _ in counts), sum(n for _, n in counts)
    check(len(counts) == 24 and masked > 0 and padded > 0,
          "batches %s: %d rows, %d [MASK] at masked positions, %d padded" %
          (c.name, len(counts), masked, padded))


def check_codec(c):
    """Encoding is spm_encode's (in the shard and from mlmpi-data encode),
    decoding spm_decode's, and an appended id decodes to its name."""
    data = ("\n".join(v for d in c.docs for v in d) + "\n").encode()
    ref = run(["spm_encode", "--model", c.model, "--output_format=id"], data).stdout
    got = run([c.bin, "encode", "--tokenizer", c.model], data).stdout
    check(ref == got and ref, "encode %s differs from spm_encode" % c.name)
    ref_lines = lines_of(ref)
    p = run([c.bin, "dump", c.shard])
    dumped = [json.loads(l)["ids"] for l in lines_of(p.stdout) if l.startswith('{"document"')]
    want, at = [], 0
    for d in c.docs:
        want.append([int(x) for l in ref_lines[at:at + len(d)] for x in l.split()])
        at += len(d)
    check(dumped == want, "dump %s: the shard's ids are not spm_encode's" % c.name)
    ids = ("\n".join(ref_lines) + "\n").encode()
    ref = run(["spm_decode", "--model", c.model, "--input_format=id"], ids)
    got = run([c.bin, "decode", "--tokenizer", c.model], ids)
    check(ref.returncode == 0 and ref.stdout == got.stdout, "decode %s differs from spm_decode" % c.name)
    if c.k:
        words = ref_lines[0].split()[:3]
        line = " ".join([str(c.V)] + words + [str(c.V + i) for i in range(1, c.k)])
        p = run([c.bin, "decode", "--tokenizer", c.model], (line + "\n").encode())
        text = run(["spm_decode", "--model", c.model, "--input_format=id"],
                   (" ".join(words) + "\n").encode()).stdout.decode().strip()
        want = " ".join([c.appended[0], text] + c.appended[1:])
        check(p.stdout.decode().strip() == want,
              "decode %s %r: %r, expected %r" % (c.name, line, p.stdout.decode(), want))


def check_refusal(c):
    """--no-add-specials: one line naming the model and the missing tokens, no shard."""
    out = c.out + "-refused"
    shutil.rmtree(out, ignore_errors=True)
    p = run([c.bin, "shard", "--no-add-specials", "--tokenizer", c.model, "--out", out, c.shard_in])
    err = lines_of(p.stderr)
    if not c.k:
        check(p.returncode == 0 and not [l for l in err if "appended" in l],
              "shard --no-add-specials %s: exit %d, %r" % (c.name, p.returncode, err))
        return
    ok = (p.returncode != 0 and len(err) == 1 and err[0].startswith("mlmpi-data shard: ") and
          c.model in err[0] and ", ".join(c.appended) in err[0] and "--no-add-specials" in err[0]
          and not os.path.exists(os.path.join(out, "train-00000.mlms")))
    if check(ok, "shard --no-add-specials %s: exit %d, %r" % (c.name, p.returncode, err)):
        print("  ok  refused %-6s %s" % (c.name, err[0]))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    missing = [t for t in ("spm_train", "spm_encode", "spm_decode", "bible") if not shutil.which(t)]
    if missing:
        print("SKIP: %s not found (Debian packages sentencepiece and bible-kjv)" % ", ".join(missing))
        return SKIP
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    text, shard_in, docs = make_corpus(args.workdir)
    if text:
        for name in MODELS:
            c = Case(args, name, text, shard_in, docs)
            if c.ok and check_shard(c):
                check_batches(c)
                check_codec(c)
            if c.ok:
                check_refusal(c)
    if failures:
        print("%d check(s) failed" % len(failures))
        return 1
    print("SentencePiece models without BERT's special pieces: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
