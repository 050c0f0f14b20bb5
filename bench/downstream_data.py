#!/usr/bin/python3
"""bench/downstream_data.py: the data half of the downstream benchmark (issue 14).

Builds a labelled task from Debian's wordnet-base: every WordNet 3.0 synset's gloss
(definition and examples, as the data files give them) labelled with its
lexicographer file (45 supersense classes: noun.animal, verb.motion, adj.all, ...),
split into train/dev/test by a stable hash of the synset id, and a pretraining
corpus that holds no dev or test gloss: the KJV documents (--kjv, as launch/demo.sh
writes kjv_docs.txt) followed by the training glosses.

  OUT/task/{train,dev,test}.jsonl  one {"text", "label", "synset"} per line
  OUT/corpus.txt                   documents separated by blank lines, one
                                   sentence or gloss per line (mlmpi-data shard)

bench/downstream.sh (to come) will pretrain on corpus.txt, fine-tune a classifier
on task/train.jsonl and report accuracy on dev and test against the majority-class
baseline this script prints.

Decisions, so the outputs are a pure function of the WordNet files (and --kjv):
- synset id is "<pos>.<offset>" with pos the data file's letter (n, v, a, r):
  satellites ('s') live in data.adj and share its offsets, so they are "a.<offset>"
  and belong to adj.all like their heads. Split: int(sha256(id), 16) % 10,
  0 -> test, 1 -> dev, else train (80/10/10). No seed.
- a gloss text (compared with whitespace collapsed and case folded) that occurs in
  test is dropped from dev and train, one in dev is dropped from train, so the
  splits are disjoint by text; the corpus is built from the kept training glosses,
  and any KJV line equal to a dev/test gloss is dropped as well (counts printed).
- the corpus's gloss documents are at most 50 glosses each, grouped by
  lexicographer file (in label order, then in data-file order).
- the label names come from DIR/lexnames when present; Debian 12's wordnet-base
  ships only its man page, lexnames(5WN), so the table below (copied from it) is
  used otherwise.

Python 3 standard library only: /usr/bin/python3 bench/downstream_data.py --out DIR
"""

import argparse
import collections
import hashlib
import json
import os
import sys

# lexnames(5WN), WordNet 3.0: file number -> lexicographer file name.
LEXNAMES = [
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal",
    "noun.artifact", "noun.attribute", "noun.body", "noun.cognition",
    "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon",
    "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body",
    "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl",
]

DATA_FILES = [("n", "data.noun"), ("v", "data.verb"), ("a", "data.adj"), ("r", "data.adv")]
SS_TYPES = {"n": "n", "v": "v", "a": "as", "r": "r"}  # allowed ss_type per file
DOC_GLOSSES = 50
SPLITS = ("train", "dev", "test")


def read_lexnames(wordnet):
    """Returns ({number: name}, source) from DIR/lexnames, or the built-in table."""
    path = os.path.join(wordnet, "lexnames")
    if not os.path.exists(path):
        return dict(enumerate(LEXNAMES)), "built-in table (lexnames(5WN))"
    names = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2 or not fields[0].isdigit():
                raise SystemExit("%s:%d: expected 'NN name category'" % (path, lineno))
            names[int(fields[0])] = fields[1]
    return names, path


def read_synsets(wordnet, lexnames):
    """Yields (synset id, label, gloss) for every synset in the four data files."""
    for pos, name in DATA_FILES:
        path = os.path.join(wordnet, name)
        with open(path, encoding="utf-8", errors="strict") as f:
            for lineno, line in enumerate(f, 1):
                if line.startswith("  "):  # the license header
                    continue
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                head, bar, gloss = line.partition(" | ")
                if not bar:
                    # A synset without a gloss ends its pointers with " |" or nothing.
                    head, gloss = line.split("|", 1)[0], ""
                fields = head.split()
                if len(fields) < 4:
                    raise SystemExit("%s:%d: too few fields" % (path, lineno))
                offset, filenum, ss_type = fields[0], fields[1], fields[2]
                if not (offset.isdigit() and filenum.isdigit()) or ss_type not in SS_TYPES[pos]:
                    raise SystemExit("%s:%d: not a synset line: %r" % (path, lineno, line[:60]))
                if int(filenum) not in lexnames:
                    raise SystemExit("%s:%d: lex_filenum %s not in lexnames" % (path, lineno, filenum))
                yield "%s.%s" % (pos, offset), lexnames[int(filenum)], gloss.strip()


def split_of(synset):
    """The split of a synset id: a pure function of the id (80/10/10)."""
    bucket = int(hashlib.sha256(synset.encode("ascii")).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "dev" if bucket == 1 else "train"


def text_key(text):
    """The form two glosses are compared in for leakage."""
    return " ".join(text.split()).casefold()


def read_kjv(path):
    """Returns the KJV file as a list of documents, each a list of lines."""
    docs, cur = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                cur.append(line)
            elif cur:
                docs.append(cur)
                cur = []
    if cur:
        docs.append(cur)
    return docs


def write_lines(path, lines):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line)
            f.write("\n")
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wordnet", default="/usr/share/wordnet", help="WordNet dict directory")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--kjv", help="KJV documents (blank-line separated), put first in corpus.txt")
    args = ap.parse_args()

    if not os.path.exists(os.path.join(args.wordnet, "data.noun")):
        sys.stderr.write("downstream_data: no %s/data.noun (apt-get install wordnet-base)\n"
                         % args.wordnet)
        return 2
    lexnames, lexsource = read_lexnames(args.wordnet)

    rows = {s: [] for s in SPLITS}
    empty = 0
    for synset, label, gloss in read_synsets(args.wordnet, lexnames):
        if not gloss:
            empty += 1
            continue
        rows[split_of(synset)].append({"text": gloss, "label": label, "synset": synset})

    # Leakage: test wins over dev, dev over train.
    test_keys = {text_key(r["text"]) for r in rows["test"]}
    before_dev = len(rows["dev"])
    rows["dev"] = [r for r in rows["dev"] if text_key(r["text"]) not in test_keys]
    dropped_dev = before_dev - len(rows["dev"])
    held_keys = test_keys | {text_key(r["text"]) for r in rows["dev"]}
    before_train = len(rows["train"])
    rows["train"] = [r for r in rows["train"] if text_key(r["text"]) not in held_keys]
    dropped_train = before_train - len(rows["train"])

    task = os.path.join(args.out, "task")
    os.makedirs(task, exist_ok=True)
    for s in SPLITS:
        write_lines(os.path.join(task, s + ".jsonl"),
                    (json.dumps(r, ensure_ascii=False) for r in rows[s]))

    # The corpus: KJV documents, then the training glosses by lexicographer file.
    corpus, dropped_kjv, kjv_docs = [], 0, 0
    if args.kjv:
        for doc in read_kjv(args.kjv):
            kept = [l for l in doc if text_key(l) not in held_keys]
            dropped_kjv += len(doc) - len(kept)
            if kept:
                corpus.append(kept)
                kjv_docs += 1
    by_label = collections.defaultdict(list)
    for r in rows["train"]:
        by_label[r["label"]].append(r["text"])
    for label in sorted(by_label):
        texts = by_label[label]
        for i in range(0, len(texts), DOC_GLOSSES):
            corpus.append(texts[i:i + DOC_GLOSSES])
    lines = []
    for i, doc in enumerate(corpus):
        if i:
            lines.append("")
        lines.extend(doc)
    write_lines(os.path.join(args.out, "corpus.txt"), lines)

    # Summary.
    total = sum(len(rows[s]) for s in SPLITS)
    print("downstream_data: wordnet %s, labels from %s" % (args.wordnet, lexsource))
    for s in SPLITS:
        print("  %-5s %6d synsets (%.1f%%)" % (s, len(rows[s]), 100.0 * len(rows[s]) / total))
    labels = collections.Counter(r["label"] for s in SPLITS for r in rows[s])
    print("  classes: %d of %d in lexnames" % (len(labels), len(lexnames)))
    major, major_n = collections.Counter(r["label"] for r in rows["train"]).most_common(1)[0]
    for s in ("dev", "test"):
        acc = sum(r["label"] == major for r in rows[s]) / max(1, len(rows[s]))
        print("  majority-class baseline (%s, from train) on %s: %.4f" % (major, s, acc))
    print("  skipped: %d empty glosses; leakage: %d train and %d dev synsets dropped "
          "(gloss text also in a held-out split), %d KJV lines dropped"
          % (empty, dropped_train, dropped_dev, dropped_kjv))
    print("  corpus: %d documents (%d KJV, %d gloss documents of <= %d glosses), %d lines"
          % (len(corpus), kjv_docs, len(corpus) - kjv_docs, DOC_GLOSSES, len(lines) - len(corpus) + 1))
    print("  wrote %s/task/{train,dev,test}.jsonl and %s/corpus.txt" % (args.out, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
