#!/usr/bin/python3
"""tests/reference/test_downstream_data.py: checks bench/downstream_data.py, the
WordNet supersense task and the pretraining corpus that holds none of its dev or
test glosses. Exits 77 (skipped) without wordnet-base.

  /usr/bin/python3 tests/reference/test_downstream_data.py \
      --script bench/downstream_data.py --workdir /tmp/dsd
"""

import argparse
import collections
import gzip
import json
import os
import re
import shutil
import subprocess
import sys

POS_PREFIX = {"n": "noun.", "v": "verb.", "a": "adj.", "r": "adv."}
FILES = ["task/train.jsonl", "task/dev.jsonl", "task/test.jsonl", "corpus.txt"]
SPLITS = ("train", "dev", "test")
failures = []


def check(ok, what):
    print("%s: %s" % ("ok  " if ok else "FAIL", what))
    if not ok:
        failures.append(what)
    return ok


def key(text):
    return " ".join(text.split()).casefold()


def run(script, wordnet, out, kjv=None):
    cmd = [sys.executable, script, "--wordnet", wordnet, "--out", out]
    if kjv:
        cmd += ["--kjv", kjv]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True)
    if p.returncode != 0:
        print(p.stdout)
        print("FAIL: %s exited %d" % (" ".join(cmd), p.returncode))
        sys.exit(1)
    return p.stdout


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def load_split(path):
    """Returns the rows of a split, checking that each line is the object asked for."""
    rows, bad = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                r = json.loads(line)
                ok = (isinstance(r, dict) and set(r) == {"text", "label", "synset"}
                      and all(isinstance(v, str) for v in r.values())
                      and r["text"] and r["text"] == r["text"].strip()
                      and re.fullmatch(r"[nvar]\.\d{8}", r["synset"])
                      and r["label"].startswith(POS_PREFIX[r["synset"][0]]))
            except ValueError:
                ok = False
            if ok:
                rows.append(r)
            else:
                bad.append("%s:%d: %r" % (path, lineno, line[:80]))
    check(not bad, "%s: every line is JSON with text, label, synset (pos-consistent)%s"
          % (os.path.basename(path), "; first bad: " + bad[0] if bad else ""))
    return rows


def wordnet_facts(wordnet):
    """Returns {"<pos>.<offset>": lex_filenum} for every synset, read independently."""
    filenum = {}
    for pos, name in (("n", "data.noun"), ("v", "data.verb"), ("a", "data.adj"), ("r", "data.adv")):
        with open(os.path.join(wordnet, name), encoding="utf-8") as f:
            for line in f:
                if line.startswith("  ") or not line.strip():
                    continue
                fields = line.split()
                filenum["%s.%s" % (pos, fields[0])] = int(fields[1])
    return filenum


def lexnames_table(wordnet):
    """Returns {number: name} from DIR/lexnames, else from the lexnames(5WN) man page."""
    path = os.path.join(wordnet, "lexnames")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
    else:
        man = "/usr/share/man/man5/lexnames.5WN.gz"
        if not os.path.exists(man):
            return None
        with gzip.open(man, "rt", encoding="utf-8", errors="replace") as f:
            text = f.read()
    return {int(m.group(1)): m.group(2)
            for m in re.finditer(r"^(\d\d)\t([a-z]+\.[A-Za-z]+)", text, re.M)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--script", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--wordnet", default="/usr/share/wordnet")
    args = ap.parse_args()
    if not os.path.exists(os.path.join(args.wordnet, "data.noun")):
        print("skipped: no %s/data.noun (apt-get install wordnet-base)" % args.wordnet)
        return 77

    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    plain = os.path.join(args.workdir, "plain")
    out_a = os.path.join(args.workdir, "a")
    out_b = os.path.join(args.workdir, "b")

    # A first run without KJV finds a dev and a test gloss to plant in a small
    # KJV-like file; the two runs with it are compared byte for byte.
    run(args.script, args.wordnet, plain)
    dev0 = load_split(os.path.join(plain, "task/dev.jsonl"))
    test0 = load_split(os.path.join(plain, "task/test.jsonl"))
    if not (dev0 and test0):
        check(False, "dev and test are not empty")
        return 1
    kjv = os.path.join(args.workdir, "kjv_docs.txt")
    kjv_docs = [["In the beginning God created the heaven and the earth.",
                 dev0[0]["text"],
                 "And the earth was without form, and void."],
                ["  " + test0[0]["text"].upper() + "  "],
                ["The LORD is my shepherd; I shall not want."]]
    with open(kjv, "w", encoding="utf-8") as f:
        f.write("\n\n".join("\n".join(d) for d in kjv_docs) + "\n")
    summary = run(args.script, args.wordnet, out_a, kjv)
    run(args.script, args.wordnet, out_b, kjv)
    print(summary.rstrip())

    # Determinism.
    same = [f for f in FILES if read_bytes(os.path.join(out_a, f)) == read_bytes(os.path.join(out_b, f))]
    check(len(same) == len(FILES), "two runs are byte-identical (%d of %d files)" % (len(same), len(FILES)))
    check(all(read_bytes(os.path.join(plain, f)) == read_bytes(os.path.join(out_a, f)) for f in FILES[:3]),
          "the task does not depend on --kjv")

    rows = {s: load_split(os.path.join(out_a, "task", s + ".jsonl")) for s in SPLITS}
    total = sum(len(rows[s]) for s in SPLITS)

    # Disjoint by synset and by gloss text.
    ids = {s: {r["synset"] for r in rows[s]} for s in SPLITS}
    check(sum(len(ids[s]) for s in SPLITS) == total, "no synset twice")
    texts = {s: {key(r["text"]) for r in rows[s]} for s in SPLITS}
    for x, y in (("train", "dev"), ("train", "test"), ("dev", "test")):
        check(not (ids[x] & ids[y]), "%s and %s share no synset" % (x, y))
        n = len(texts[x] & texts[y])
        check(n == 0, "%s and %s share no gloss text (%d shared)" % (x, y, n))

    # Coverage and fractions.
    filenum = wordnet_facts(args.wordnet)
    n_synsets, filenums = len(filenum), set(filenum.values())
    check(0.99 * n_synsets <= total <= n_synsets,
          "the splits hold %d of the %d synsets (>= 99%%)" % (total, n_synsets))
    for s in ("dev", "test"):
        frac = len(rows[s]) / total
        check(abs(frac - 0.10) <= 0.015, "%s is %.2f%% of the task (10 +- 1.5)" % (s, 100 * frac))

    # Labels: one per lexicographer file that occurs (45 in WordNet 3.0).
    labels = collections.Counter(r["label"] for s in SPLITS for r in rows[s])
    expect = len(filenums)
    if not os.path.exists(os.path.join(args.wordnet, "lexnames")):
        expect = 45
    check(len(labels) == expect == len(filenums),
          "%d labels, %d lex_filenums occur in the data files, expected %d"
          % (len(labels), len(filenums), expect))
    table = lexnames_table(args.wordnet)
    if table is None:
        print("note: no lexnames file or lexnames(5WN) man page; labels not checked per synset")
    else:
        wrong = [r for s in SPLITS for r in rows[s]
                 if table.get(filenum.get(r["synset"], -1)) != r["label"]]
        check(len(table) >= len(filenums) and not wrong,
              "every label is the lexicographer file of its synset (%d wrong%s; %d names in lexnames)"
              % (len(wrong), ", e.g. %s" % wrong[0] if wrong else "", len(table)))

    # The corpus: blank-line separated documents, KJV first, training glosses only.
    with open(os.path.join(out_a, "corpus.txt"), encoding="utf-8") as f:
        raw = f.read()
    lines = raw.split("\n")
    check(raw.endswith("\n") and not raw.endswith("\n\n") and not raw.startswith("\n")
          and "\n\n\n" not in raw and all(l == l.strip() for l in lines),
          "corpus: no leading, trailing or doubled blank lines, lines trimmed")
    docs = [d.split("\n") for d in raw.rstrip("\n").split("\n\n")]
    check(len(docs) >= 10 and all(d and all(d) for d in docs),
          "corpus: %d non-empty blank-line separated documents" % len(docs))
    held = texts["dev"] | texts["test"]
    leaked = [l for l in lines if key(l) in held]
    check(not leaked, "corpus holds no dev or test gloss (%d leaked%s)"
          % (len(leaked), ", e.g. %r" % leaked[0][:60] if leaked else ""))
    train_texts = collections.Counter(r["text"] for r in rows["train"])
    kjv_expect = [[l for l in d if key(l) not in held] for d in kjv_docs]
    kjv_expect = [[l.strip() for l in d] for d in kjv_expect if d]
    check(docs[:len(kjv_expect)] == kjv_expect,
          "corpus starts with the KJV documents, planted dev/test glosses removed")
    gloss_lines = collections.Counter(l for d in docs[len(kjv_expect):] for l in d)
    check(gloss_lines == train_texts,
          "corpus after KJV is exactly the training glosses (%d lines, %d expected)"
          % (sum(gloss_lines.values()), sum(train_texts.values())))

    if failures:
        print("%d check(s) failed" % len(failures))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
