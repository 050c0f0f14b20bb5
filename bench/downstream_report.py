#!/usr/bin/python3
"""bench/downstream_report.py: the Python half of bench/downstream.sh (issue 14).

Subcommands, each a pure function of its files:

  subset IN OUT --target N [--floor M]
      a fixed, stratified subset of a task file: for each label (in file order) the
      examples at evenly spaced positions of that label's list, round(count * N / lines)
      of them but at least min(M, count), written in file order
  truncation --spm MODEL --seq-len L FILE...
      how many texts have more than L - 2 SentencePiece pieces (spm_encode), i.e. are
      cut by fine-tuning's [CLS] text [SEP] rows
  collect --metrics M --truth T --pred P [--set key=value ...]
      one JSON result line: the best epoch's dev accuracy and macro-F1 from a fine-tuning
      metrics.jsonl (the epoch kept in ckpt.dir/best: the first with the highest dev
      accuracy), and the test accuracy and macro-F1 of `mlmpi-train predict`'s output
      against the truth file, plus the --set fields
  report --results R --train T --dev D --test X --out DIR [--minutes N]
      the table (DIR/table.md, also printed), the majority-class baselines, the ratios,
      the verdict on the two targets, and DIR/downstream.png (gnuplot): test accuracy
      against pretraining minutes

Macro-F1 is scikit-learn's default: the mean over the labels that occur in the truth
or the predictions of 2 TP / (true + predicted). Spread is (max - min) / 2 over seeds.

Python 3 standard library only (and gnuplot for the PNG).
"""

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def accuracy_f1(truth, pred):
    """(accuracy, macro-F1) of two equal-length label lists."""
    if len(truth) != len(pred) or not truth:
        raise SystemExit("downstream_report: %d labels against %d predictions" % (len(truth), len(pred)))
    tp, true_n, pred_n = collections.Counter(), collections.Counter(truth), collections.Counter(pred)
    for t, p in zip(truth, pred):
        if t == p:
            tp[t] += 1
    labels = set(true_n) | set(pred_n)
    f1 = sum(2.0 * tp[k] / (true_n[k] + pred_n[k]) for k in labels) / len(labels)
    return sum(tp.values()) / len(truth), f1


# ---- subset ---------------------------------------------------------------------------
def cmd_subset(a):
    with open(a.input, encoding="utf-8") as f:
        lines = [l for l in f.read().splitlines() if l.strip()]
    by_label = collections.OrderedDict()
    for i, line in enumerate(lines):
        by_label.setdefault(json.loads(line)["label"], []).append(i)
    frac = a.target / len(lines)
    keep = []
    for idx in by_label.values():
        n = min(len(idx), max(min(a.floor, len(idx)), round(len(idx) * frac)))
        keep.extend(idx[j * len(idx) // n] for j in range(n))
    keep.sort()
    with open(a.output, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(lines[i] + "\n" for i in keep)
    print("%d of %d lines, %d labels" % (len(keep), len(lines), len(by_label)))


# ---- truncation -----------------------------------------------------------------------
def cmd_truncation(a):
    budget = a.seq_len - 2
    for path in a.files:
        texts = [r["text"].replace("\n", " ") for r in read_jsonl(path)]
        out = subprocess.run(["spm_encode", "--model=" + a.spm, "--output_format=id"],
                             input="\n".join(texts) + "\n", capture_output=True, text=True,
                             check=True).stdout.splitlines()
        if len(out) != len(texts):
            raise SystemExit("downstream_report: spm_encode gave %d lines for %d texts" % (len(out), len(texts)))
        lens = sorted(len(l.split()) for l in out)
        cut = sum(n > budget for n in lens)
        print("%s: %d of %d texts (%.1f%%) have more than %d pieces and are truncated "
              "(median %d, 95th percentile %d pieces)"
              % (os.path.basename(path), cut, len(lens), 100.0 * cut / len(lens), budget,
                 lens[len(lens) // 2], lens[int(0.95 * (len(lens) - 1))]))


# ---- collect --------------------------------------------------------------------------
def best_epoch(metrics):
    """The epoch line kept in ckpt.dir/best: the first with the highest dev accuracy."""
    best = None
    with open(metrics, encoding="utf-8") as f:
        for line in f:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if "dev_accuracy" in r and (best is None or r["dev_accuracy"] > best["dev_accuracy"]):
                best = r
    if best is None:
        raise SystemExit("downstream_report: no dev_accuracy line in %s" % metrics)
    return best


def parse_value(v):
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


def cmd_collect(a):
    ep = best_epoch(a.metrics)
    truth = [r["label"] for r in read_jsonl(a.truth)]
    pred = [r["label"] for r in read_jsonl(a.pred)]
    acc, f1 = accuracy_f1(truth, pred)
    rec = {}
    for kv in a.set or []:
        k, _, v = kv.partition("=")
        rec[k] = parse_value(v)
    rec.update({"best_epoch": ep["epoch"], "dev_accuracy": ep["dev_accuracy"],
                "dev_macro_f1": ep["dev_macro_f1"], "test_accuracy": acc, "test_macro_f1": f1,
                "test_n": len(truth)})
    print(json.dumps(rec, sort_keys=True))


# ---- report ---------------------------------------------------------------------------
ROWS = [("bert-mini", "pretrained", "BERT-mini pretrained"),
        ("electra-small", "pretrained", "ELECTRA-small pretrained"),
        ("bert-mini", "random", "BERT-mini random init"),
        ("electra-small", "random", "ELECTRA-small random init")]
KEYS = ["dev_accuracy", "dev_macro_f1", "test_accuracy", "test_macro_f1"]


def spread(values):
    """(mean, (max - min) / 2, min, max)."""
    return statistics.fmean(values), (max(values) - min(values)) / 2, min(values), max(values)


def fmt(values):
    m, s, _, _ = spread(values)
    return "%.4f ± %.4f" % (m, s)


def majority(train, split):
    """The accuracy and macro-F1 of always answering the training subset's commonest label."""
    label = collections.Counter(r["label"] for r in read_jsonl(train)).most_common(1)[0][0]
    truth = [r["label"] for r in read_jsonl(split)]
    return (label,) + accuracy_f1(truth, [label] * len(truth))


def cmd_report(a):
    res = read_jsonl(a.results)
    groups = collections.defaultdict(list)
    for r in res:
        groups[(r["model"], r["init"])].append(r)
    out = []
    p = out.append
    p("| model | pretraining minutes | pretraining steps | seeds | dev accuracy | dev macro-F1 "
      "| test accuracy | test macro-F1 |")
    p("|---|---|---|---|---|---|---|---|")
    for model, init, name in ROWS:
        g = groups.get((model, init))
        if not g:
            continue
        steps = sorted({r["steps"] for r in g})
        p("| %s | %g | %s | %d | %s |" % (name, g[0]["minutes"], ",".join(map(str, steps)), len(g),
                                          " | ".join(fmt([r[k] for r in g]) for k in KEYS)))
    lab, dacc, df1 = majority(a.train, a.dev)
    _, tacc, tf1 = majority(a.train, a.test)
    p("| majority class (%s) | – | – | – | %.4f | %.4f | %.4f | %.4f |" % (lab, dacc, df1, tacc, tf1))
    mids = [r for r in res if r["init"] == "mid"]
    if mids:
        p("")
        p("Mid-budget checkpoints (one seed each; the curve's middle points):")
        p("")
        p("| model | pretraining minutes | pretraining steps | seed | dev accuracy | dev macro-F1 "
          "| test accuracy | test macro-F1 |")
        p("|---|---|---|---|---|---|---|---|")
        for r in sorted(mids, key=lambda r: r["model"]):
            p("| %s | %g | %d | %d | %s |" % (r["model"], r["minutes"], r["steps"], r["seed"],
                                             " | ".join("%.4f" % r[k] for k in KEYS)))
    p("")
    p("Test set: %d lines (a fixed stratified subset of test.jsonl); dev: %d lines. "
      "Spread: (max - min) / 2 over the seeds." % (res[0]["test_n"], len(read_jsonl(a.dev))))

    # Ratios and the targets, on test accuracy.
    def mean(model, init, key="test_accuracy"):
        g = groups.get((model, init))
        return spread([r[key] for r in g]) if g else None

    p("")
    verdicts = []
    for model, label in (("bert-mini", "BERT-mini"), ("electra-small", "ELECTRA-small")):
        pt, rd = mean(model, "pretrained"), mean(model, "random")
        if not (pt and rd):
            continue
        dpt, drd = mean(model, "pretrained", "dev_accuracy"), mean(model, "random", "dev_accuracy")
        clear = pt[2] > rd[3]  # every pretrained seed above every random one
        p("- %s pretrained / random init: test accuracy %.4f / %.4f = %.2fx (dev %.2fx); "
          "macro-F1 %.2fx; lowest pretrained seed %.4f vs highest random seed %.4f: %s"
          % (label, pt[0], rd[0], pt[0] / rd[0], dpt[0] / drd[0],
             mean(model, "pretrained", "test_macro_f1")[0] / max(1e-9, mean(model, "random", "test_macro_f1")[0]),
             pt[2], rd[3], "clear margin (target met)" if clear else "no clear margin (target not met)"))
        verdicts.append(clear)
    eb, bb = mean("electra-small", "pretrained"), mean("bert-mini", "pretrained")
    if eb and bb:
        overlap = not (eb[2] > bb[3] or bb[2] > eb[3])
        p("- ELECTRA-small / BERT-mini, both pretrained %g minutes: test accuracy %.4f / %.4f = %.2fx: "
          "%s%s" % (a.minutes, eb[0], bb[0], eb[0] / bb[0],
                    "ELECTRA >= BERT (target met)" if eb[0] >= bb[0] else "ELECTRA < BERT (target not met)",
                    "; the seed ranges overlap" if overlap else "; the seed ranges do not overlap"))
    text = "\n".join(out) + "\n"
    with open(os.path.join(a.out, "table.md"), "w", encoding="utf-8") as f:
        f.write(text)
    sys.stdout.write(text)
    plot(a, res, tacc)


def plot(a, res, baseline):
    """Test accuracy against pretraining minutes: 0 (random init), N/2 (mid), N."""
    dat = os.path.join(a.out, "curve.dat")
    with open(dat, "w") as f:
        for model in ("bert-mini", "electra-small"):
            f.write("# %s: minutes mean min max\n" % model)
            for init in ("random", "mid", "pretrained"):
                g = [r["test_accuracy"] for r in res if r["model"] == model and r["init"] == init]
                if g:
                    m, _, lo, hi = spread(g)
                    x = [r["minutes"] for r in res if r["model"] == model and r["init"] == init][0]
                    f.write("%g %.5f %.5f %.5f\n" % (x, m, lo, hi))
            f.write("\n\n")
    png = os.path.join(a.out, "downstream.png")
    script = """
set terminal pngcairo size 900,600
set output '%s'
set title "Supersense classification (45 classes) after equal pretraining time, 2 ranks"
set xlabel 'pretraining minutes (0: random init)'
set ylabel 'test accuracy (mean; bars: min..max over seeds)'
set grid; set key bottom right; set yrange [0:*]; set offsets graph 0.05, graph 0.05, 0, 0
plot '%s' index 0 using 1:2:3:4 with yerrorlines pointtype 7 title 'BERT-mini', \\
     '%s' index 1 using 1:2:3:4 with yerrorlines pointtype 5 title 'ELECTRA-small', \\
     %.5f with lines dashtype 2 linecolor rgb '#888888' title 'majority class'
""" % (png, dat, dat, baseline)
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    print("PNG: %s" % png)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("subset")
    s.add_argument("input")
    s.add_argument("output")
    s.add_argument("--target", type=int, required=True)
    s.add_argument("--floor", type=int, default=1)
    s = sub.add_parser("truncation")
    s.add_argument("--spm", required=True)
    s.add_argument("--seq-len", type=int, required=True)
    s.add_argument("files", nargs="+")
    s = sub.add_parser("collect")
    s.add_argument("--metrics", required=True)
    s.add_argument("--truth", required=True)
    s.add_argument("--pred", required=True)
    s.add_argument("--set", action="append")
    s = sub.add_parser("report")
    for k in ("results", "train", "dev", "test", "out"):
        s.add_argument("--" + k, required=True)
    s.add_argument("--minutes", type=float, default=0)
    a = ap.parse_args()
    {"subset": cmd_subset, "truncation": cmd_truncation, "collect": cmd_collect,
     "report": cmd_report}[a.cmd](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
