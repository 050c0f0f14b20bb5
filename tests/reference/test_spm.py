#!/usr/bin/python3
"""Compare mlmpi's SentencePiece backend with Debian's spm_encode/spm_decode.

    test_spm.py --bin PATH/mlmpi-data --workdir DIR [--only NAME,...] [--keep]

Trains models with spm_train (unigram, BPE, char and word; byte fallback,
identity and NFKC normalization, split digits, user-defined and control
symbols, no dummy prefix, whitespace as suffix, custom rule files) on the
King James Bible from Debian's bible-kjv, derives two more by changing piece
types (unused and user-defined pieces), then for every model requires, line
for line and byte for byte, on the Bible (the whole of it for four models,
every fifth verse for the others) and on a file of hard Unicode written here:

    mlmpi-data encode          == spm_encode --output_format=id
    mlmpi-data encode --pieces == spm_encode --output_format=piece
    mlmpi-data decode          == spm_decode --input_format=id
                                  (on spm_encode's ids and on random ids)

and that encode with two threads gives the same bytes as with one.  The first
differing line is printed with both outputs.  The corpus is cached in DIR;
models are trained afresh on each run.

The checks are shown able to fail: the comparison must find differences
between this backend on one model and spm_encode on another, and must flag
exactly the one line of a reference that was altered on purpose.  Bad model
files (missing, not a model, empty, truncated, a broken charsmap) must each
end mlmpi-data with an error line that names the file.

Exits 77 (skipped) when spm_train or the bible program is missing.
"""
import argparse
import os
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

SKIP = 77

# name: spm_train options beyond the input, prefix and sentence sampling.
MODELS = {
    "uni_nfkc": ["--model_type=unigram", "--vocab_size=4000"],
    "uni_bf_identity": ["--model_type=unigram", "--vocab_size=2000", "--byte_fallback=true",
                        "--normalization_rule_name=identity"],
    "uni_user_digits": ["--model_type=unigram", "--vocab_size=3000", "--split_digits=true",
                        "--user_defined_symbols=<sep>,<cls>,▁God,Lord,@@,ab,☃,漢字,\u200d",
                        "--control_symbols=<mask>,<pad2>"],
    "uni_nodummy_ws": ["--model_type=unigram", "--vocab_size=1500", "--add_dummy_prefix=false",
                       "--remove_extra_whitespaces=false", "--normalization_rule_name=nfkc"],
    "uni_suffix_cf": ["--model_type=unigram", "--vocab_size=2500",
                      "--treat_whitespace_as_suffix=true", "--input_sentence_size=6000",
                      "--normalization_rule_name=nmt_nfkc_cf", "--byte_fallback=true"],
    "uni_8k": ["--model_type=unigram", "--vocab_size=8000", "--character_coverage=0.99"],
    "bpe_nfkc": ["--model_type=bpe", "--vocab_size=4000"],
    "bpe_bf_digits": ["--model_type=bpe", "--vocab_size=2000", "--byte_fallback=true",
                      "--split_digits=true"],
    "bpe_user_identity": ["--model_type=bpe", "--vocab_size=3000",
                          "--normalization_rule_name=identity",
                          "--user_defined_symbols=<sep>,Lord,@@,▁the▁,☃,\u200d",
                          "--byte_fallback=true"],
    "bpe_nodummy": ["--model_type=bpe", "--vocab_size=1000", "--add_dummy_prefix=false",
                    "--remove_extra_whitespaces=false"],
    "bpe_nosplit_ws": ["--model_type=bpe", "--vocab_size=2000", "--split_by_whitespace=false",
                       "--allow_whitespace_only_pieces=true", "--split_by_unicode_script=false",
                       "--input_sentence_size=5000"],
    # Custom rules (written by this script): multi-character keys, a rule
    # to nothing, rules to spaces and to U+2581, and a denormalizer; special
    # pieces moved and renamed, another unknown surface.
    "uni_rules_tsv": ["--model_type=unigram", "--vocab_size=2000",
                      "--normalization_rule_tsv={workdir}/norm.tsv",
                      "--denormalization_rule_tsv={workdir}/denorm.tsv",
                      "--unk_surface=<?>", "--pad_id=3", "--bos_id=-1", "--unk_piece=[UNK]",
                      "--unk_id=2", "--eos_id=1"],
    "char": ["--model_type=char", "--vocab_size=70"],
    "word": ["--model_type=word", "--vocab_size=3000"],
    "word_suffix": ["--model_type=word", "--vocab_size=2000", "--treat_whitespace_as_suffix=true"],
}

# spm_encode aborts the whole run on a line where a word model finds a word
# spelled like a control piece ("all normalized characters are not
# consumed"); such lines are left out of the hard file for those models.
HARD_EXCLUDE = {"word_suffix": [b"<s>", b"</s>"]}

# Models checked on the whole Bible; the others on every fifth verse.
BIBLE_WHOLE = {"uni_nfkc", "uni_bf_identity", "bpe_nfkc", "bpe_bf_digits"}

# Models made from trained ones by changing piece types, as spm_train never
# writes them: pieces the segmenters must skip (unused; BPE then splits them
# back) and longer pieces turned user-defined. (A control piece that is a
# single character would make spm_encode abort, as above.)
MUTANTS = {"bpe_mutant": "bpe_nfkc", "uni_mutant": "uni_nfkc"}


def hard_lines(bible_lines):
    """Lines meant to break a SentencePiece reimplementation, as bytes."""
    u = [
        "ＡＢＣ　ｄｅｆ　１２３ ｱｲｳｴｵ ﾊﾞﾋﾟ　全角",
        "e\u0301 a\u0308 n\u0303 A\u030a o\u0302\u0323 \u0301 lone mark",
        "Z\u0334\u0321\u031b\u0355a\u0337l\u0338g\u0335o\u0336",
        "漢字かなカナ한국어 中文，標點。「引号」",
        "\u1100\u1161\u11a8 jamo, 가각",
        "👍🏽 👨\u200d👩\u200d👧\u200d👦 🏳\ufe0f\u200d🌈 🇺🇸🇯🇵🇪🇺 ❤\ufe0f 😀😀😀",
        "مرحبا بالعالم \u200fשלום עולם\u200e mixed عربي English עברית",
        "zero\u200bwidth\u200cjoin\u200dner\ufeffbom\u2060wj",
        "\u200b\u200b",
        "\u200d",
        "ctrl\x01\x07\x1b\x7f\x0b\x0cend",
        "cr\rin the middle\r",
        "nel\u0085 ls\u2028 ps\u2029 nbsp\u00a0em\u2003ideo\u3000x",
        "   lead and trail   ",
        "a    b\t\t\tc \t d\t",
        "\t\t",
        "    ",
        " ",
        "",
        "▁▁x▁ ▁ ▁",
        "▁",
        "<s> </s> <unk> <0x41> <mask> <sep>x<cls> <pad2> @@ @@@ ab abab",
        "God Lord the LORD ▁God ☃☃☃ 漢字漢字 ☃漢字",
        "digits 1234567890 ١٢٣٤ ４５６ 3.14159 1,000,000 ①②③ ½ ²",
        "ligatures ﬁ ﬂ ﬀ ㎏ ㍻ ™ Ⅻ ﷺ ﷽ ℌ ℍ",
        "Case FOLDING Straße İstanbul ΣΊΣΥΦΟΣ ǅ",
        "math 𝐀𝐁𝐂 𝔸𝔹 ∀x∈ℝ: x²≥0",
        "tags 󠁧󠁢󠁳󠁣󠁴󠁿 variation \ufe0e\ufe0f",
        "private \ue000\U000f0000 noncharacter \ufffe\uffff",
        "replacement \ufffd\ufffd",
        "And God said, Let there be light: and there was light.",
        "AND GOD SAID let THERE be LIGHT",
        "a" * 3000,
        "ab" * 2000,
        " ".join(["God"] * 2000),
    ]
    lines = [s.encode("utf-8") for s in u]
    lines += [
        b"bad \xff byte",
        b"\xff\xfe\xfd",
        b"overlong \xc0\x80 \xc1\xbf \xe0\x80\x80 \xf0\x80\x80\x80",
        b"surrogate \xed\xa0\x80\xed\xbf\xbf",
        b"too big \xf4\x90\x80\x80 \xf5\x80\x80\x80 \xf8\x88\x80\x80\x80",
        b"truncated \xe2\x96",
        b"truncated at end \xe2",
        b"\xe2\x96",
        b"lone continuation \x80\x81\xbf",
        b"mixed \xe2\x96\x81\xff\xe2\x96\x81",
        b"nul\x00in\x00the\x00line",
        b"\x00",
        b"latin1 caf\xe9 na\xefve",
    ]
    # Very long lines: whole chapters, and the first thousand verses as one.
    lines.append(b" ".join(bible_lines[:1000]))
    lines.append(b"  ".join(bible_lines[1000:1300]).replace(b" ", b" \t "))
    # Random lines, reproducible: code points from the ranges above, random
    # bytes, and Bible words with odd spacing.
    rng = random.Random(1234)
    pools = [
        (0x20, 0x7E), (0x00, 0x1F), (0x80, 0x2FF), (0x300, 0x36F), (0x590, 0x6FF),
        (0x2000, 0x206F), (0x2100, 0x22FF), (0x2580, 0x2582), (0x3000, 0x30FF),
        (0x4E00, 0x4E40), (0xAC00, 0xAC40), (0xFE00, 0xFE0F), (0xFF00, 0xFFEF),
        (0x1F300, 0x1F6FF), (0x1F1E6, 0x1F1FF), (0xE0000, 0xE007F), (0x10000, 0x10FFFF),
    ]
    words = b" ".join(bible_lines[:200]).split()
    for i in range(400):
        kind = i % 4
        if kind == 0:
            cps = []
            for _ in range(rng.randint(1, 60)):
                lo, hi = rng.choice(pools)
                c = rng.randint(lo, hi)
                if 0xD800 <= c <= 0xDFFF or c == 0x0A:
                    c = 0x20
                cps.append(chr(c))
            lines.append("".join(cps).encode("utf-8"))
        elif kind == 1:
            lines.append(bytes(rng.choice(b"\x00\x09\x20\x41\x61\x80\xbf\xc2\xc3\xe2\x96\x81\xe3\xf0\x9f\xff\xed\xef\xbf\xbd")
                               for _ in range(rng.randint(1, 40))).replace(b"\n", b" "))
        elif kind == 2:
            ws = [b" ", b"  ", b"\t", b"\xe3\x80\x80", b"\xc2\xa0", b"\xe2\x96\x81", b""]
            lines.append(b"".join(rng.choice(words) + rng.choice(ws)
                                  for _ in range(rng.randint(1, 30))))
        else:
            w = bytearray(rng.choice(words))
            for _ in range(rng.randint(1, 4)):
                w.insert(rng.randint(0, len(w)), rng.choice([0xe2, 0x80, 0x20, 0x30, 0x5f]))
            lines.append(bytes(w) + b" " + "".join(chr(rng.randint(0x1F1E6, 0x1F1FF))
                                                    for _ in range(3)).encode("utf-8"))
    assert all(b"\n" not in l for l in lines)
    return lines


def run(cmd, stdin=b"", check=True):
    p = subprocess.run(cmd, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if check and p.returncode != 0:
        raise RuntimeError("%s exited %d: %s" % (" ".join(cmd), p.returncode,
                                                 p.stderr.decode(errors="replace")[-2000:]))
    return p


def split_lines(b):
    lines = b.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def compare(what, expected, got, inputs=None, label="FAIL", log=None):
    """Number of differing lines; reports the first with both outputs (to
    log, a list, when given, else printed)."""
    e, g = split_lines(expected), split_lines(got)
    bad = [i for i in range(max(len(e), len(g)))
           if (e[i] if i < len(e) else None) != (g[i] if i < len(g) else None)]
    if bad:
        i = bad[0]
        out = [("  %s %s: %d of %d lines differ (%d vs %d lines); first at line %d" %
                (label, what, len(bad), len(e), len(e), len(g), i + 1))]
        if inputs is not None and i < len(inputs):
            out.append("    input:    %r" % inputs[i][:300])
        out.append("    expected: %r" % (e[i][:300] if i < len(e) else None))
        out.append("    got:      %r" % (g[i][:300] if i < len(g) else None))
        if log is None:
            print("\n".join(out))
        else:
            log.extend(out)
    return len(bad)


def train(name, opts, corpus, workdir):
    prefix = os.path.join(workdir, name)
    cmd = ["spm_train", "--input=" + corpus, "--model_prefix=" + prefix,
           "--input_sentence_size=12000", "--shuffle_input_sentence=true",
           "--seed_sentencepiece_size=100000", "--random_seed=7", "--num_threads=2",
           "--minloglevel=2"] + [o.format(workdir=workdir) for o in opts]
    t = time.time()
    run(cmd)
    return name, prefix + ".model", time.time() - t


def pb_read_varint(b, i):
    n = shift = 0
    while True:
        n |= (b[i] & 0x7F) << shift
        shift += 7
        i += 1
        if b[i - 1] < 0x80:
            return n, i


def pb_fields(b):
    """(field number, wire type, value or payload bytes, raw bytes) of a message."""
    i = 0
    while i < len(b):
        start = i
        key, i = pb_read_varint(b, i)
        wt = key & 7
        if wt == 0:
            v, i = pb_read_varint(b, i)
        elif wt == 1:
            v, i = b[i:i + 8], i + 8
        elif wt == 2:
            n, i = pb_read_varint(b, i)
            v, i = b[i:i + n], i + n
        elif wt == 5:
            v, i = b[i:i + 4], i + 4
        else:
            raise ValueError("wire type %d" % wt)
        yield key >> 3, wt, v, b[start:i]


def mutate(src, dst):
    """Writes a copy of model src with some piece types changed."""
    out = bytearray()
    index = 0
    for num, wt, v, raw in pb_fields(open(src, "rb").read()):
        if num != 1:
            out += raw
            continue
        text, ptype, rest = None, 1, bytearray()
        for n2, w2, v2, raw2 in pb_fields(v):
            if n2 == 1:
                text = v2
            if n2 == 3:
                ptype = v2
            else:
                rest += raw2
        if ptype == 1 and index > 300:
            chars = len(text.decode("utf-8"))
            if index % 7 == 0 and chars > 1:
                ptype = 5
            elif index % 53 == 0 and chars > 2:
                ptype = 4
        index += 1
        sub = bytes(rest) + pb_varint(3 << 3) + pb_varint(ptype)
        out += pb_field(1, sub)
    with open(dst, "wb") as f:
        f.write(out)
    with open(dst[:-6] + ".vocab", "wb") as f:
        f.write(b"x\n" * index)


def check_model(args, name, model, corpora):
    """(failures, report lines) of one model."""
    fails, log = 0, []
    vocab = sum(1 for _ in open(model[:-6] + ".vocab", "rb"))
    for cname, path, lines in corpora:
        if cname == "hard" and name in HARD_EXCLUDE:
            lines = [l for l in lines if not any(w in l for w in HARD_EXCLUDE[name])]
        if cname == "bible" and name not in BIBLE_WHOLE:
            lines = lines[::5]
        data = b"\n".join(lines) + b"\n"
        ref_ids = run(["spm_encode", "--model", model, "--output_format=id"], data).stdout
        ref_pcs = run(["spm_encode", "--model", model, "--output_format=piece"], data).stdout
        got_ids = run([args.bin, "encode", "--tokenizer", model, "--threads", "1"], data).stdout
        got_pcs = run([args.bin, "encode", "--tokenizer", model, "--pieces"], data).stdout
        fails += compare("%s/%s ids" % (name, cname), ref_ids, got_ids, lines, log=log)
        fails += compare("%s/%s pieces" % (name, cname), ref_pcs, got_pcs, lines, log=log)
        if cname == "hard" or name == "uni_nfkc":
            got_ids2 = run([args.bin, "encode", "--tokenizer", model, "--threads", "2"], data).stdout
            fails += compare("%s/%s ids, 2 threads" % (name, cname), got_ids, got_ids2, lines,
                             log=log)
        ref_txt = run(["spm_decode", "--model", model, "--input_format=id"], ref_ids).stdout
        got_txt = run([args.bin, "decode", "--tokenizer", model], ref_ids).stdout
        fails += compare("%s/%s decode" % (name, cname), ref_txt, got_txt, split_lines(ref_ids),
                         log=log)
    # Random ids: control, unknown and byte pieces anywhere, runs of bytes
    # that are and are not UTF-8.
    rng = random.Random(name)
    special = [i for i in range(min(vocab, 300))]
    rand = []
    for _ in range(300):
        n = rng.randint(0, 25)
        rand.append(b" ".join(str(rng.choice(special) if rng.random() < 0.5 else
                                  rng.randrange(vocab)).encode() for _ in range(n)))
    data = b"\n".join(rand) + b"\n"
    ref_txt = run(["spm_decode", "--model", model, "--input_format=id"], data).stdout
    got_txt = run([args.bin, "decode", "--tokenizer", model], data).stdout
    fails += compare("%s/random ids decode" % name, ref_txt, got_txt, rand, log=log)
    return fails, log


def self_checks(args, models, corpora):
    """The comparison must be able to fail."""
    fails = 0
    names = sorted(models)
    a, b = models[names[0]], models[names[1]]
    cname, path, lines = corpora[0]
    data = b"\n".join(lines[:2000]) + b"\n"
    ref = run(["spm_encode", "--model", b, "--output_format=id"], data).stdout
    got = run([args.bin, "encode", "--tokenizer", a], data).stdout
    print("  self-check: this backend on %s vs spm_encode on %s (differences expected):" %
          (names[0], names[1]))
    if compare("foil", ref, got, label="as expected,") == 0:
        print("  FAIL self-check: two different models gave the same ids")
        fails += 1
    got = run([args.bin, "encode", "--tokenizer", a], data).stdout
    ref = run(["spm_encode", "--model", a, "--output_format=id"], data).stdout.split(b"\n")
    ids = ref[10].split(b" ")
    ids[len(ids) // 2] = str(int(ids[len(ids) // 2]) + 1).encode()
    ref[10] = b" ".join(ids)
    print("  self-check: a reference with line 11 altered (one difference expected):")
    if compare("foil", b"\n".join(ref), got, label="as expected,") != 1:
        print("  FAIL self-check: the altered line was not the one difference found")
        fails += 1
    return fails


def pb_varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pb_field(num, payload):
    return pb_varint(num << 3 | 2) + pb_varint(len(payload)) + payload


def tiny_model(charsmap=None, pieces=((b"<unk>", 2), (b"a", 1))):
    body = b""
    for p, t in pieces:
        body += pb_field(1, pb_field(1, p) + pb_varint(3 << 3) + pb_varint(t))
    if charsmap is not None:
        body += pb_field(3, pb_field(2, charsmap))
    return body


def error_checks(args, workdir, model):
    """Bad model files end mlmpi-data with one line naming the file."""
    fails = 0
    blob = open(model, "rb").read()
    cases = {
        "missing.model": None,
        "text.model": b"In the beginning God created the heaven and the earth.\n",
        "empty.model": b"",
        "truncated.model": blob[: len(blob) // 2 + 3],
        "nounk.model": tiny_model(pieces=((b"a", 1), (b"b", 1))),
        "dup.model": tiny_model(pieces=((b"<unk>", 2), (b"a", 1), (b"a", 1))),
        "badmap.model": tiny_model(charsmap=b"\xff\xff\x00\x00abc\x00"),
        "shortmap.model": tiny_model(charsmap=b"\x04\x00"),
    }
    for fname, content in cases.items():
        path = os.path.join(workdir, fname)
        if os.path.exists(path):
            os.remove(path)
        if content is not None:
            with open(path, "wb") as f:
                f.write(content)
        for cmd in ("encode", "decode"):
            p = run([args.bin, cmd, "--tokenizer", path], b"1 2\n", check=False)
            err = p.stderr.decode(errors="replace").strip()
            if p.returncode == 0 or path not in err or len(err.splitlines()) != 1:
                print("  FAIL %s %s: exit %d, stderr %r" % (cmd, fname, p.returncode, err))
                fails += 1
            elif cmd == "encode":
                print("  ok  %-16s %s" % (fname, err))
    # A well-formed tiny model works: "a" is a piece, everything else unk.
    path = os.path.join(workdir, "tiny.model")
    with open(path, "wb") as f:
        f.write(tiny_model())
    text = b"a b\naa  ba\n"
    p = run([args.bin, "encode", "--tokenizer", path], text, check=False)
    ref = run(["spm_encode", "--model", path, "--output_format=id"], text, check=False)
    if p.returncode != 0 or ref.returncode != 0 or p.stdout != ref.stdout:
        print("  FAIL tiny model: got %r %r, spm_encode %r %r" % (p.stdout, p.stderr, ref.stdout,
                                                                ref.stderr[-300:]))
        fails += 1
    return fails


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    for tool in ("spm_train", "spm_encode", "spm_decode", "bible"):
        if not shutil.which(tool):
            print("SKIP: %s not found (Debian packages sentencepiece and bible-kjv)" % tool)
            return SKIP
    os.makedirs(args.workdir, exist_ok=True)
    corpus = os.path.join(args.workdir, "bible.txt")
    if not os.path.exists(corpus):
        txt = run(["bible", "-f", "Gen1:1-Rev22:21"]).stdout
        with open(corpus + ".tmp", "wb") as f:
            f.write(txt)
        os.rename(corpus + ".tmp", corpus)
    bible = split_lines(open(corpus, "rb").read())
    if len(bible) < 30000:
        print("FAIL: the Bible corpus has only %d lines" % len(bible))
        return 1
    hard = hard_lines(bible)
    with open(os.path.join(args.workdir, "hard.txt"), "wb") as f:
        f.write(b"\n".join(hard) + b"\n")
    corpora = [("bible", corpus, bible), ("hard", None, hard)]
    # Rules as code points in hex: ff -> F, the -> <T>, A -> "  a", ; -> " ",
    # "," -> ", ,", ":" -> U+2581, U+200B -> nothing; decoding maps back.
    with open(os.path.join(args.workdir, "norm.tsv"), "w") as f:
        f.write("66 66\t46\n74 68 65\t3C 54 3E\n41\t20 20 61\n3B\t20\n2C\t2C 20 2C\n"
                "3A\t2581\n200B\t\n")
    with open(os.path.join(args.workdir, "denorm.tsv"), "w") as f:
        f.write("3C 54 3E\t74 68 65\n61\t41 41\n2C\t2E\n")

    names = [n for n in MODELS if not args.only or n in args.only.split(",")]
    t0 = time.time()
    models = {}
    with ThreadPoolExecutor(max_workers=2) as ex:
        for name, path, secs in ex.map(lambda n: train(n, MODELS[n], corpus, args.workdir), names):
            models[name] = path
            print("trained %-18s in %5.1fs" % (name, secs))
    print("training: %.1fs" % (time.time() - t0))
    for name, base in MUTANTS.items():
        if base in models:
            models[name] = os.path.join(args.workdir, name + ".model")
            mutate(models[base], models[name])
            names.append(name)

    fails = 0

    def check(name):
        t = time.time()
        f, log = check_model(args, name, models[name], corpora)
        return name, f, log, time.time() - t

    with ThreadPoolExecutor(max_workers=2) as ex:
        for name, f, log, secs in ex.map(check, names):
            print("%-18s %s (%.1fs)" % (name, "ok" if f == 0 else "%d FAILURES" % f, secs))
            if log:
                print("\n".join(log))
            fails += f
    if len(models) >= 2:
        fails += self_checks(args, models, corpora)
    fails += error_checks(args, args.workdir, models[names[0]])
    print("total %.1fs: %s" % (time.time() - t0, "PASS" if fails == 0 else "%d failures" % fails))
    return 0 if fails == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
