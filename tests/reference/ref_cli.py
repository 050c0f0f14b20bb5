"""ref_cli.py: the command line the `mlmpi-train step` reference tests share.

    BIN_TEST.py --bin PATH/mlmpi-train [--workdir DIR] [--seed N] [--timeout S]
    BIN_TEST.py --self-test
"""
import argparse
import json
import os
import subprocess
import tempfile

import numpy as np
import torch

import st_io

# The step tests' tolerances: forward and backward against float64 (test_bert_step.py's
# compare() says why each is what it is), and after --steps K (test_optim_step.py's
# trajectory checks: each tensor's total change, the losses and norms, and the fraction of
# the largest gradient below which a gradient counts as zero).
SCALAR_RTOL = 1e-5
LOGIT_RTOL = 1e-4
GRAD_RTOL = 5e-4
GRAD_GLOBAL_FRAC = 1e-3
DELTA_RTOL = 1e-3
STEP_SCALAR_RTOL = 1e-4
ZERO_GRAD_FRAC = 1e-12


def log(s):
    print(s, flush=True)


def start(doc, seed, timeout, self_test, prefix):
    """Parses the shared flags. Returns an exit code when the run ends here (--self-test ran
    self_test(seed, log); the binary is missing), else (args, workdir) for the comparisons
    against the binary: workdir is --workdir, or a new temporary directory."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--bin", help="path to mlmpi-train")
    ap.add_argument("--workdir", help="keep inputs and outputs here (default: a temp dir)")
    ap.add_argument("--seed", type=int, default=seed)
    ap.add_argument("--timeout", type=int, default=timeout,
                    help="per-run timeout of the binary (s)")
    ap.add_argument("--self-test", action="store_true", help="reference-side checks only")
    a = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if a.self_test:
        return self_test(a.seed, log)
    if not a.bin:
        ap.error("--bin is required (or --self-test)")
    if not os.path.exists(a.bin):
        log("FAIL binary not found: %s" % a.bin)
        return 1
    workdir = a.workdir or tempfile.mkdtemp(prefix=prefix)
    os.makedirs(workdir, exist_ok=True)
    return a, workdir


class SubprocessRunner:
    """Runs the binary with args: (exit code, stderr), or (None, why) past the timeout."""

    def __init__(self, binary, timeout):
        self.binary, self.timeout = binary, timeout

    def __call__(self, args):
        try:
            p = subprocess.run([self.binary] + args, capture_output=True, text=True,
                               timeout=self.timeout)
        except subprocess.TimeoutExpired:
            return None, "timed out after %ds" % self.timeout
        return p.returncode, p.stderr


def bad_input_verdict(name, culprit, rc, err, width=28):
    """0 when a malformed input was refused as it must be (nonzero exit without a signal or
    a timeout, exactly one stderr line, naming culprit), else 1; logs PASS or FAIL."""
    lines = err.rstrip("\n").split("\n") if err.strip() else []
    why = []
    if rc is None:
        why.append("timed out")
    elif rc == 0:
        why.append("exit status 0")
    elif rc < 0:
        why.append("killed by signal %d" % -rc)
    if len(lines) != 1:
        why.append("stderr has %d lines, expected 1" % len(lines))
    if culprit not in err:
        why.append("stderr does not name %s" % culprit)
    if why:
        log("FAIL bad-input %-*s %s; stderr: %r" % (width, name, "; ".join(why), err[-1000:]))
        return 1
    log("PASS bad-input %-*s exit %d: %s" % (width, name, rc, lines[0].strip()))
    return 0


def compare_outputs(expected, ref, out, bounds):
    """(records, problems) for a step's OUT against the float64 reference ref: OUT must hold
    exactly the expected names, each floating point, of the reference's shape, finite, and
    within bounds[name] in max abs error.  records: (name, err, bound) per compared tensor;
    problems: one string per failure."""
    problems = ["%s: missing from OUT" % n for n in expected if n not in out]
    problems += ["%s: unexpected tensor in OUT" % n for n in sorted(set(out) - set(expected))]
    records = []
    for n in expected:
        if n not in out:
            continue
        r = np.asarray(ref[n], np.float64)
        o = np.asarray(out[n])
        if o.dtype.kind != "f":
            problems.append("%s: dtype %s, expected floating point" % (n, o.dtype))
            continue
        if tuple(o.shape) != tuple(r.shape):
            problems.append("%s: shape %s, expected %s" % (n, list(o.shape), list(r.shape)))
            continue
        o = o.astype(np.float64)
        if not np.all(np.isfinite(o)):
            problems.append("%s: contains non-finite values" % n)
            continue
        diff = np.abs(o - r)
        err = float(diff.max()) if diff.size else 0.0
        bound = bounds[n]
        records.append((n, err, bound))
        if not err <= bound:
            idx = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.ndim else ()
            problems.append("%s: max abs err %.3e > bound %.3e (ratio %.2f) at %s: out=%.9g ref=%.9g"
                            % (n, err, bound, err / bound if bound > 0 else float("inf"),
                               tuple(int(i) for i in idx), float(o[idx]), float(r[idx])))
    return records, problems


def worst(records):
    """The compared tensor nearest its bound, as one line."""
    if not records:
        return "no tensors compared"
    n, e, b = max(records, key=lambda r: (r[1] / r[2]) if r[2] > 0 else float("inf"))
    return "worst %s err=%.2e bound=%.2e ratio=%.3f" % (n, e, b, e / b if b > 0 else float("inf"))


def write_case(d, cfg, weights, batch):
    """config.json, W.safetensors and B.safetensors in d (a stale OUT.safetensors removed);
    returns the `step` arguments that read them and write d/OUT.safetensors."""
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    st_io.save(os.path.join(d, "W.safetensors"), weights)
    st_io.save(os.path.join(d, "B.safetensors"), batch)
    out = os.path.join(d, "OUT.safetensors")
    if os.path.exists(out):
        os.remove(out)
    return ["step", "--model", os.path.join(d, "config.json"),
            "--weights", os.path.join(d, "W.safetensors"),
            "--batch", os.path.join(d, "B.safetensors"), "--out", out]
