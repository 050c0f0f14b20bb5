#!/usr/bin/python3
"""Writes the fuzz targets' seed corpora under tests/fuzz/corpus/ from the
project's own tools (mlmpi-data for shards and TFRecords, spm_train for
SentencePiece models, tests/reference/st_io.py for safetensors) and small
hand-written inputs. Run it again to regenerate them; it replaces the files
it writes and leaves others (regression inputs) alone.
usage: make_corpus.py --data BUILD/bin/mlmpi-data
"""
import argparse
import glob
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
import st_io  # noqa: E402

C = os.path.join(HERE, "corpus")


def put(target, name, data):
    d = os.path.join(C, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def records(path):
    """The payloads of a TFRecord file (framing: u64 length, u32 CRC, payload, u32 CRC)."""
    b = open(path, "rb").read()
    o, out = 0, []
    while o + 12 <= len(b):
        (n,) = struct.unpack_from("<Q", b, o)
        out.append(b[o + 12:o + 12 + n])
        o += 16 + n
    return out


def gpt2_bytes_to_unicode():
    """GPT-2's printable stand-in for every byte (its published mapping)."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, extra = {}, 0
    for b in range(256):
        if b in keep:
            cs[b] = chr(b)
        else:
            cs[b] = chr(256 + extra)
            extra += 1
    return cs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="mlmpi-corpus-")
    text = subprocess.run(["bible", "-f", "Gen1:1-Gen2:25"], capture_output=True, text=True,
                          check=True).stdout
    lines = [l.split(" ", 1)[-1].strip() for l in text.splitlines() if l.strip()]
    txt = os.path.join(tmp, "gen.txt")
    with open(txt, "w") as f:  # documents: paragraphs of 6 verses
        for i in range(0, len(lines), 6):
            f.write("\n".join(lines[i:i + 6]) + "\n\n")

    # SentencePiece models, the spm_model seeds and the encoders' tokenizers
    # (one with the default NFKC rules, whose table makes it 240 KB; two
    # without normalisation, a few KB).
    models = {}
    big = os.path.join(tmp, "gen11.txt")
    with open(big, "w") as f:
        f.write(subprocess.run(["bible", "-f", "Gen1:1-Gen11:32"], capture_output=True, text=True,
                               check=True).stdout)
    for name, extra in (("unigram", ["--vocab_size=150"]),
                        ("bpe", ["--model_type=bpe", "--vocab_size=150",
                                 "--normalization_rule_name=identity"]),
                        ("bytefb", ["--byte_fallback=true", "--vocab_size=400",
                                    "--normalization_rule_name=identity"])):
        prefix = os.path.join(tmp, name)
        args = ["spm_train", f"--input={big}", f"--model_prefix={prefix}",
                "--character_coverage=1.0", "--minloglevel=2"] + extra
        subprocess.run(args, check=True, capture_output=True)
        models[name] = prefix + ".model"
        put("spm_model", name + ".model", open(prefix + ".model", "rb").read())

    # Shards (mode byte 0: as written; 1: the fuzzer recomputes CRCs).
    sh = os.path.join(tmp, "shards")
    subprocess.run([a.data, "shard", "--tokenizer", models["unigram"], "--out", sh,
                    "--holdout-docs", "1", txt], check=True, capture_output=True)
    for i, p in enumerate(sorted(glob.glob(os.path.join(sh, "*.mlms")))):
        b = open(p, "rb").read()
        put("shard", f"shard{i}", b"\x00" + b)
        put("shard", f"shard{i}.fixcrc", b"\x01" + b)

    # TFRecords of Examples and their payloads.
    tf = os.path.join(tmp, "x.tfrecord")
    subprocess.run([a.data, "tfrecord-export", "--data", sh, "--out", tf, "--seq-len", "24",
                    "--max-predictions", "4", "--count", "2"], check=True, capture_output=True)
    b = open(tf, "rb").read()
    put("tfrecord", "two", b"\x00" + b)
    put("tfrecord", "two.fixcrc", b"\x01" + b)
    for i, r in enumerate(records(tf)):
        put("tfexample", f"example{i}", r)

    # GPT-2 BPE: a byte-level vocabulary (every byte) with a few merges.
    cs = gpt2_bytes_to_unicode()
    vocab = {cs[b]: b for b in range(256)}
    merges = ["\u0120 t", "h e", "\u0120t he", "i n", "a n", "\u0120 a", "e r", "o r"]
    for m in merges:
        vocab[m.replace(" ", "")] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    vj = json.dumps(vocab, ensure_ascii=False)
    mt = "#version: 0.2\n" + "\n".join(merges) + "\n"
    put("gpt2_files", "small", vj + "\0" + mt)
    put("gpt2_files", "nomerges", vj + "\0" + "#version: 0.2\n")

    # WordPiece: a small uncased vocabulary, with and without a config.
    wp = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz.,;:!?'") \
        + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"] + \
        ["the", "and", "in", "god", "earth", "##s", "##ed", "##ing", "\u4e00", "\u00e9"]
    vt = "\n".join(wp) + "\n"
    put("wordpiece_files", "plain", vt)
    put("wordpiece_files", "lower", vt + "\0" + json.dumps({"do_lower_case": True}))
    put("wordpiece_files", "cased", vt + "\0" + json.dumps(
        {"do_lower_case": False, "tokenize_chinese_chars": False, "strip_accents": True,
         "unk_token": "[UNK]", "model_max_length": 512}))

    # Text for the encoders.
    texts = {"verse": lines[0], "mixed": "Caf\u00e9 \u65e5\u672c\u8a9e e\u0301 \U0001F600 12,345",
             "spaces": "  a \t b\n\n c  ", "run": "a" * 300}
    for t in ("encode_spm", "encode_gpt2", "encode_wordpiece"):
        for k, v in texts.items():
            put(t, k, v)
        put(t, "invalid", b"ok \xff\xfe \xc3( \xed\xa0\x80 \xf4\x90\x80\x80 end")

    # safetensors, from the independent writer: a weights-like file, a
    # step-batch-like file, one with metadata, one empty.
    st = os.path.join(tmp, "a.safetensors")
    st_io.save(st, {"w": np.arange(12, dtype=np.float32).reshape(4, 3),
                    "b": np.ones(3, dtype=np.float32)})
    put("safetensors", "weights", open(st, "rb").read())
    st_io.save(st, {"input_ids": np.arange(8, dtype=np.int32).reshape(2, 4),
                    "input_mask": np.ones((2, 4), dtype=np.int32),
                    "masked_lm_weights": np.ones((2, 1), dtype=np.float32)},
               metadata={"format": "pt", "step": "3"})
    put("safetensors", "batch", open(st, "rb").read())
    st_io.save(st, {})
    put("safetensors", "empty", open(st, "rb").read())

    # INI run configs: the example shipped with the project and small ones.
    ini = open(os.path.join(HERE, "..", "..", "launch", "examples", "kjv-bert-mini.ini")).read()
    put("train_config", "example.ini", ini)
    put("train_config", "small.ini", "[model]\npreset = bert-tiny\n[data]\npath = /tmp/d\n"
        "[train]\nglobal_batch = 8\nsteps = 3\n[optim]\nname = adamw\nlr = 1e-3\n"
        "[ckpt]\ndir = none\n")
    put("train_config", "task.ini", "[model]\npreset = bert-mini\nprecision = bf16\n[task]\n"
        "type = classify\ntrain = t.jsonl\ntext_field = text\n[comm]\ntimeout_s = 30\n")

    # Hugging Face config.json files.
    bert = {"architectures": ["BertForPreTraining"], "model_type": "bert", "hidden_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
            "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 64,
            "type_vocab_size": 2, "vocab_size": 100, "layer_norm_eps": 1e-12,
            "initializer_range": 0.02, "position_embedding_type": "absolute"}
    put("hf_config", "bert.json", json.dumps(bert, indent=2))
    electra = dict(bert, model_type="electra", architectures=["ElectraForPreTraining"],
                   embedding_size=32, generator={"hidden_size": 16, "num_attention_heads": 1,
                                                 "intermediate_size": 32})
    put("hf_config", "electra.json", json.dumps(electra, indent=2))
    cls = dict(bert, architectures=["BertForSequenceClassification"],
               id2label={"0": "neg", "1": "pos"}, label2id={"neg": 0, "pos": 1})
    put("hf_config", "classify.json", json.dumps(cls, indent=2))
    subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
