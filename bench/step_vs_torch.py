#!/usr/bin/python3
"""Training-step benchmark: mlmpi against PyTorch on the same model, threads and batch,
in fp32 and bf16.

For each shape, every round runs bench_gemm (the GEMM peaks), then bench_step
once per mlmpi precision and bench/torch_step.py in fp32 and bf16, one after
the other, so drift in the machine's speed hits all of them; each figure is
the median over the rounds.  It prints tokens/s, the ratios of mlmpi bf16 to
the others, and each figure's GFLOP/s as a fraction of the GEMM peak that
bench_gemm measured in the same run with the shape's dimensions: the oneDNN
bf16 peak for bf16 rows, the oneDNN f32 peak for the others (the OpenBLAS
sgemm peak is printed beside it).  Both sides count the same FLOPs per step
(bert_flops_per_step's formula, checked against bench_step's own figure), and
both get the same number of masked positions per sequence.

"other cpu" is the CPU time the rest of the machine used while a run ran
(cores, from /proc/stat less the run's own time, steal included); anything
well above 0 means the figure was measured on a busy machine.

The BERT-base targets are printed as MET / NOT MET, not asserted.

usage: bench/step_vs_torch.py [--bin build/bin/bench_step] [--threads N] [--steps N]
                              [--warmup N] [--rounds N] [--shapes mini,base,base512]
                              [--mlmpi-precisions fp32,bf16]
"""
import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_KEYS = ("layers", "hidden", "heads", "intermediate", "vocab", "seq", "batch")
# steps: timed steps per run unless --steps says otherwise; base at T = 512 is
# slow in fp32, so it gets fewer.
SHAPES = {
    "mini": dict(layers=4, hidden=256, heads=4, intermediate=1024, vocab=8192, seq=128, batch=32,
                 steps=4),
    "base": dict(layers=12, hidden=768, heads=12, intermediate=3072, vocab=30522, seq=128, batch=8,
                 steps=3),
    "base512": dict(layers=12, hidden=768, heads=12, intermediate=3072, vocab=30522, seq=512,
                    batch=2, steps=2),
}
# The BERT-base targets for mlmpi bf16: (what, against, at least).
TARGETS = (
    ("mlmpi bf16 / mlmpi fp32", ("mlmpi", "fp32"), 3.0),
    ("mlmpi bf16 / torch fp32", ("torch", "fp32"), 4.0),
    ("mlmpi bf16 / torch bf16", ("torch", "bf16"), 1.3),
)
PEAK_TARGET = 0.5


def masked_per_seq(seq):
    """bench_step's default, passed to both sides so they agree."""
    return max(1, min(int(0.15 * seq + 0.5), seq - 1))


def flops_per_step(s, pred):
    """bert_flops_per_step (trainer/bert.c) for BertForPreTraining with NSP."""
    H, I, V, L = s["hidden"], s["intermediate"], s["vocab"], s["layers"]
    B, T = s["batch"], s["seq"]
    fwd = B * T * L * (2 * H * 3 * H + 2 * H * H + 4 * H * I + 4 * T * H)
    fwd += B * pred * (2 * H * H + 2 * H * V)
    fwd += B * (2 * H * H + 4 * H)
    return 3.0 * fwd


def cpu_busy_s():
    """Seconds of CPU the whole machine has spent busy (steal included)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class RunFailed(Exception):
    pass


def run(cmd, env):
    """Runs cmd; returns (stdout, stderr, other cpu in cores)."""
    b0, c0, t0 = cpu_busy_s(), children_cpu_s(), time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    other = (cpu_busy_s() - b0 - (children_cpu_s() - c0)) / wall if wall > 0 else 0.0
    if p.returncode != 0:
        raise RunFailed("%s\n  exit status %d\n  stdout: %s\n  stderr: %s" % (
            " ".join(cmd), p.returncode, p.stdout.strip()[-2000:], p.stderr.strip()[-2000:]))
    return p.stdout, p.stderr, max(other, 0.0)


def last_json(out, cmd):
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise RunFailed("%s\n  printed no JSON line: %r" % (" ".join(cmd), out[-500:]))


def openblas_core(bench_step, env):
    """The "Core: ..." line OpenBLAS prints under OPENBLAS_VERBOSE=2, from a tiny bench_step."""
    cmd = [bench_step, "--layers", "1", "--hidden", "32", "--heads", "2", "--intermediate", "64",
           "--vocab", "64", "--seq", "8", "--batch", "1", "--steps", "1", "--warmup", "0",
           "--threads", "1"]
    try:
        _, err, _ = run(cmd, dict(env, OPENBLAS_VERBOSE="2"))
    except RunFailed as e:
        return "unknown (%s)" % str(e).splitlines()[0]
    m = re.search(r"^Core: .*$", err, re.M)
    return m.group(0) if m else "unknown (no Core line on stderr)"


def gemm_peaks(bench_gemm, s, threads, env):
    cmd = [bench_gemm, "--json", "--threads", str(threads), "--hidden", str(s["hidden"]),
           "--inter", str(s["intermediate"]), "--heads", str(s["heads"]), "--seq", str(s["seq"]),
           "--batch", str(s["batch"]), "--vocab", str(s["vocab"])]
    out, err, other = run(cmd, env)
    rows = [json.loads(l) for l in out.strip().splitlines()]
    peak = rows[-1]
    peak["shape"] = max(rows[:-1], key=lambda r: r["gflop"])["shape"]
    # The largest shape is not always the fastest (at BERT-base T = 128 it is
    # the MLM logits, 160 rows), so the best rate over all shapes goes beside it.
    best = max(rows[:-1], key=lambda r: r["dnnl_bf16_gflops"])
    peak["best_bf16_gflops"], peak["best_bf16_shape"] = best["dnnl_bf16_gflops"], best["shape"]
    peak["other_cpu"] = other
    peak["rows"] = rows[:-1]  # every product's rates, for callers that rank them otherwise
    return peak


def peak_key(precision):
    return "peak_bf16_gflops" if precision.startswith("bf16") else "peak_f32_gflops"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "build", "bin", "bench_step"))
    ap.add_argument("--gemm-bin", default=None, help="bench_gemm (default: beside --bin)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps per run (default per shape: %s)"
                    % ", ".join("%s %d" % (k, v["steps"]) for k, v in SHAPES.items()))
    ap.add_argument("--warmup", type=int, default=2,
                    help="untimed steps per run; torch needs two to reach its steady speed")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--shapes", default="mini,base,base512")
    ap.add_argument("--mlmpi-precisions", default="fp32,bf16",
                    help="bench_step --precision values; bf16 and fp32 always run")
    a = ap.parse_args()
    unknown = [n for n in a.shapes.split(",") if n not in SHAPES]
    if unknown:
        ap.error("unknown shape %s (known: %s)" % (",".join(unknown), ",".join(SHAPES)))
    gemm_bin = a.gemm_bin or os.path.join(os.path.dirname(a.bin), "bench_gemm")
    precs = [p for p in a.mlmpi_precisions.split(",") if p]
    # bf16 first, then fp32, then the extras, in the order given.
    precs = ["bf16", "fp32"] + [p for p in precs if p not in ("bf16", "fp32")]
    impls = [("mlmpi", p) for p in precs] + [("torch", "fp32"), ("torch", "bf16")]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), OPENBLAS_NUM_THREADS=str(a.threads))

    print("step_vs_torch: threads=%d rounds=%d (median of rounds) mlmpi precisions=%s"
          % (a.threads, a.rounds, ",".join(precs)))
    print("OpenBLAS kernel (OPENBLAS_VERBOSE=2, tiny bench_step): %s; OPENBLAS_CORETYPE=%s"
          % (openblas_core(a.bin, env), os.environ.get("OPENBLAS_CORETYPE", "(unset)")))
    print("load average at start: %.2f %.2f %.2f; cpus %d" % (os.getloadavg() + (os.cpu_count(),)))
    sys.stdout.flush()

    for name in a.shapes.split(","):
        s = SHAPES[name]
        steps = a.steps if a.steps is not None else s["steps"]
        pred = masked_per_seq(s["seq"])
        common = []
        for k in MODEL_KEYS:
            common += ["--" + k, str(s[k])]
        common += ["--pred", str(pred), "--threads", str(a.threads), "--steps", str(steps),
                   "--warmup", str(a.warmup)]
        cmds = {}
        for impl, p in impls:
            if impl == "mlmpi":
                cmds[(impl, p)] = [a.bin] + common + ["--precision", p]
            else:
                cmds[(impl, p)] = [sys.executable, os.path.join(HERE, "torch_step.py")] + common \
                    + ["--optim", "sgd", "--precision", p]
        flops = flops_per_step(s, pred)
        print("\n## %s: L=%d H=%d NH=%d I=%d V=%d T=%d B=%d P=%d, %.1f GFLOP/step, %d timed steps"
              " after %d warm-up per run" % (name, s["layers"], s["hidden"], s["heads"],
                                              s["intermediate"], s["vocab"], s["seq"], s["batch"],
                                              pred, flops / 1e9, steps, a.warmup))
        res = {k: [] for k in impls}
        failed = {}
        peaks = []
        for r in range(a.rounds):
            try:
                pk = gemm_peaks(gemm_bin, s, a.threads, env)
                peaks.append(pk)
                print("# round %d bench_gemm (largest shape %s): bf16 %.1f, f32 %.1f, openblas %.1f"
                      " GFLOP/s; best bf16 shape %s %.1f; other cpu %.2f" % (
                          r + 1, pk["shape"], pk["peak_bf16_gflops"], pk["peak_f32_gflops"],
                          pk["peak_openblas_gflops"], pk["best_bf16_shape"],
                          pk["best_bf16_gflops"], pk["other_cpu"]))
            except RunFailed as e:
                print("# round %d bench_gemm FAILED: %s" % (r + 1, e))
            for k in impls:
                if k in failed:
                    continue
                try:
                    out, _, other = run(cmds[k], env)
                    j = last_json(out, cmds[k])
                except RunFailed as e:
                    failed[k] = str(e)
                    print("# round %d %s %s FAILED: %s" % (r + 1, k[0], k[1], e))
                    continue
                j["other_cpu"] = other
                j["gflops_same_count"] = flops / (j["step_ms"] / 1e3) / 1e9
                res[k].append(j)
                note = ""
                if k[0] == "mlmpi":
                    ours = j["gflops"] * j["step_ms"] / 1e3 * 1e9
                    if abs(ours - flops) > 0.005 * flops:
                        note = " FLOP COUNT MISMATCH: bench_step %.2f GFLOP, here %.2f" % (
                            ours / 1e9, flops / 1e9)
                else:
                    want = "bfloat16" if k[1] == "bf16" else "float32"
                    if j.get("matmul_dtype") != want:
                        note = " MATMUL DTYPE %s, not %s" % (j.get("matmul_dtype"), want)
                loss = j.get("loss", j.get("final_loss"))
                print("# round %d %-5s %-11s %9.1f tok/s %9.1f ms/step  loss %.4f  other cpu %.2f%s"
                      % (r + 1, k[0], k[1], j["tokens_per_s"], j["step_ms"], loss, other, note))
                sys.stdout.flush()

        med = lambda xs: statistics.median(xs) if xs else float("nan")
        peak = {key: med([p[key] for p in peaks])
                for key in ("peak_bf16_gflops", "peak_f32_gflops", "peak_openblas_gflops",
                            "best_bf16_gflops")}
        tok = {k: med([j["tokens_per_s"] for j in res[k]]) for k in impls}
        rows = []
        print("\n%-8s %-6s %-11s %9s %7s %9s %8s %10s %8s %8s %9s" % (
            "shape", "impl", "precision", "tok/s", "spread", "ms/step", "GFLOP/s", "peak",
            "of peak", "of sgemm", "other cpu"))
        for k in impls:
            if not res[k]:
                print("%-8s %-6s %-11s FAILED" % (name, k[0], k[1]))
                rows.append((k, None))
                continue
            gf = med([j["gflops_same_count"] for j in res[k]])
            pkey = peak_key(k[1])
            pk = peak[pkey]
            other = max(j["other_cpu"] for j in res[k])
            frac, frac_ob = gf / pk, gf / peak["peak_openblas_gflops"]
            ms = med([j["step_ms"] for j in res[k]])
            toks = [j["tokens_per_s"] for j in res[k]]
            spread = (max(toks) - min(toks)) / tok[k]
            print("%-8s %-6s %-11s %9.1f %6.0f%% %9.1f %8.1f %5s %4.0f %8.2f %8.2f %9.2f" % (
                name, k[0], k[1], tok[k], 100 * spread, ms, gf, pkey.split("_")[1], pk, frac,
                frac_ob, other))
            rows.append((k, dict(tok=tok[k], ms=ms, gflops=gf, peak=pk, frac=frac,
                                 frac_ob=frac_ob, other=other)))
        print("GEMM peaks (bench_gemm, median of rounds, largest shape %s): oneDNN bf16 %.1f, "
              "oneDNN f32 %.1f, OpenBLAS sgemm %.1f GFLOP/s; fastest bf16 shape %s %.1f" % (
                  peaks[0]["shape"] if peaks else "?", peak["peak_bf16_gflops"],
                  peak["peak_f32_gflops"], peak["peak_openblas_gflops"],
                  peaks[0]["best_bf16_shape"] if peaks else "?", peak["best_bf16_gflops"]))
        print("spread: (max - min) / median of tok/s over the rounds")
        bf = tok[("mlmpi", "bf16")]
        ratios = [("mlmpi", p) for p in precs[1:]] + [("torch", "fp32"), ("torch", "bf16")]
        for k in ratios:
            print("ratio %-32s %6.2f" % ("mlmpi bf16 / %s %s" % k, bf / tok[k]))
        print("ratio %-32s %6.2f" % ("torch bf16 / torch fp32",
                                     tok[("torch", "bf16")] / tok[("torch", "fp32")]))
        if name.startswith("base"):
            print("targets (BERT-base, %s):" % name)
            for what, other, want in TARGETS:
                got = bf / tok[other]
                print("  %-38s %6.2f  >= %.2f %s" % (what, got, want,
                                                       "MET" if got >= want else "NOT MET"))
            d = dict(rows).get(("mlmpi", "bf16"))
            got = d["frac"] if d else float("nan")
            best = d["gflops"] / peak["best_bf16_gflops"] if d else float("nan")
            print("  %-38s %6.2f  >= %.2f %s (%.2f of the fastest bf16 shape)" % (
                "mlmpi bf16 of measured bf16 GEMM peak", got, PEAK_TARGET,
                "MET" if got >= PEAK_TARGET else "NOT MET", best))
        for k, msg in failed.items():
            print("FAILED %s %s: %s" % (k[0], k[1], msg))
        sys.stdout.flush()
    print("\nload average at end: %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
