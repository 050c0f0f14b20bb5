"""ref_cli.py: the command line the `mlmpi-train step` reference tests share.

    BIN_TEST.py --bin PATH/mlmpi-train [--workdir DIR] [--seed N] [--timeout S]
    BIN_TEST.py --self-test
"""
import argparse
import os
import subprocess
import tempfile

import torch

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
