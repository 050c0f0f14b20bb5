// test_wordpiece_ref.cjs: mlmpi's WordPiece tokenizer against Hugging Face
// `tokenizers` (its Rust implementation, from npm): BertNormalizer +
// BertPreTokenizer + WordPiece with max_input_chars_per_word 200. A generated
// multilingual corpus is encoded and decoded by `mlmpi-data` and by the
// reference under four settings (uncased inferred from the vocabulary, cased,
// lower-case keeping accents, CJK splitting off); every line must agree.
//
// The corpus leaves out the few characters where the two references of BERT
// tokenisation disagree and mlmpi follows BERT's tokenization.py: capital
// sigma (Python's str.lower() gives a final ς, Rust's per-character lower
// case does not) and U+2B820..U+2B91F (CJK in tokenization.py, not in
// Rust's table). Invalid UTF-8 is covered by tests/test_wordpiece.cc.
//
// usage: node test_wordpiece_ref.cjs --bin build/bin/mlmpi-data --workdir DIR
// Exit 0: all agree; 1: a difference; 77: the npm packages are not installed.
'use strict';
const fs = require('fs');
const path = require('path');
const { execFileSync } = require('child_process');

const SKIP = 77;

function parseArgs() {
  const a = { bin: null, workdir: null, lines: 3000 };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--bin') a.bin = argv[++i];
    else if (argv[i] === '--workdir') a.workdir = argv[++i];
    else if (argv[i] === '--lines') a.lines = Number(argv[++i]);
    else throw new Error(`unknown argument ${argv[i]}`);
  }
  if (!a.bin || !a.workdir) throw new Error('usage: --bin MLMPI_DATA --workdir DIR');
  return a;
}

let tokenizers;
try {
  tokenizers = require(path.join(__dirname, 'node_modules', 'tokenizers'));
} catch (e) {
  console.log(`SKIP: the npm package 'tokenizers' is not installed in ${__dirname} ` +
              `(launch/deps.sh mlmpi_install_npm installs it): ${e.message.split('\n')[0]}`);
  process.exit(SKIP);
}

// ---- A deterministic corpus ------------------------------------------------

function rng(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const pick = (r, xs) => xs[Math.floor(r() * xs.length)];
const range = (lo, hi) => Array.from({ length: hi - lo + 1 }, (_, i) => String.fromCodePoint(lo + i));

// Characters words are made of, by script, and what goes between words.
const SCRIPTS = [
  range(0x61, 0x7a).concat(range(0x41, 0x5a)),                   // ASCII letters
  range(0x30, 0x39),                                              // digits
  'àáâãäåçèéêëìíîïñòóôõöùúûüýÿÀÁÂÃÄÅÇÈÉÊËÌÍÎÏÑÒÓÔÕÖÙÚÛÜÝßœŒæÆøØłŁ'.split(''),
  ['e\u0301', 'a\u0308', 'o\u0302\u0323', 'n\u0303', 'u\u0308\u0301', 'A\u030a'], // decomposed
  ['\u0130', '\u212a', '\u212b', '\u1e9e', '\u01c5', '\u2160', '\u24b6', '\u00aa'],  // case oddities
  range(0x3b1, 0x3c9).concat(range(0x391, 0x3a1), range(0x3a4, 0x3a9), 'άέήίόύώΆΈΉΊΌΎΏ'.split('')),
  range(0x430, 0x44f).concat(range(0x410, 0x42f)),                // Cyrillic
  range(0x5d0, 0x5ea),                                            // Hebrew
  range(0x627, 0x64a).concat(['\u064e', '\u0650', '\u0651']),     // Arabic with harakat
  'हिन्दीभाषाकखगघ'.split(''),                                    // Devanagari (Mn and Mc marks)
  range(0xe01, 0xe2e),                                            // Thai
  range(0x3041, 0x3093).concat(range(0x30a1, 0x30f3)),            // kana (with voiced forms)
  range(0xac00, 0xac40).concat(range(0xd55c, 0xd570)),            // Hangul syllables
  range(0x4e00, 0x4e80).concat(['\uf900', '\uf91d', '\u{20000}', '\u{2a700}', '\u{2f800}']),
  ['€', '£', '©', '°', '±', '×', '÷', '™', '√', '∞', '😀', '👍', '🎉', '\u{1d400}'],
];
const PUNCT = '!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~'.split('')
  .concat('¡¿«»“”‘’„—–…·•§¶。、「」『』！？，：；〈〉'.split(''));
const SPACES = [' ', ' ', ' ', ' ', '  ', '\t', '\r', '\u00a0', '\u3000', '\u2003', '\u2028', '\u2029', '\u000b'];
const REMOVED = ['\u0001', '\u0007', '\u007f', '\u0085', '\u200b', '\u200d', '\u00ad', '\ufeff', '\ufffd', '\u0000', '\ue000'];

function word(r) {
  const script = pick(r, SCRIPTS);
  const n = 1 + Math.floor(r() * r() * 14);
  let w = '';
  for (let i = 0; i < n; i++) {
    w += pick(r, script);
    if (r() < 0.04) w += pick(r, REMOVED);
    if (r() < 0.05) w += pick(r, PUNCT);
  }
  return w;
}

function corpus(nlines) {
  const r = rng(20240613);
  const lines = [
    '', ' ', '\t \u3000 ', 'Hello, World!', 'unaffable', "don't stop-me now... (really) [CLS] [MASK]",
    'Héllo naïve CAFÉ Ångström ǅemal İstanbul \u212aelvin STRAẞE', '中文字符 和 漢字、ひらがな カタカナ 한국어',
    'हिन्दी العَرَبِيَّة עברית ภาษาไทย Ελληνικά ΑΘΗΝΑ', 'a\u0000b\u0001c\u200bd\ufffde', 'tab\there\rcr\u000bvt\u000cff',
    'x'.repeat(200), 'y'.repeat(201), 'é'.repeat(200), 'e\u0301'.repeat(201), ('z'.repeat(150) + ',').repeat(3),
    '中'.repeat(250), '😀👍🎉 emoji😀mix', '$5+3=8 100% a@b.c ~tilde~ ^caret^ `tick`',
  ];
  while (lines.length < nlines) {
    const nw = 1 + Math.floor(r() * 12);
    let s = r() < 0.1 ? pick(r, SPACES) : '';
    for (let i = 0; i < nw; i++) {
      if (i) s += r() < 0.15 ? pick(r, PUNCT) : pick(r, SPACES);
      s += r() < 0.01 ? pick(r, SCRIPTS[0]).repeat(190 + Math.floor(r() * 20)) : word(r);
    }
    lines.push(s);
  }
  return lines;
}

// ---- Vocabularies built from the corpus ------------------------------------

const SPECIALS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'];

function hfJson(vocab, opt) {
  const v = {};
  vocab.forEach((p, i) => { v[p] = i; });
  return JSON.stringify({
    version: '1.0', truncation: null, padding: null, added_tokens: [],
    normalizer: { type: 'BertNormalizer', clean_text: true, handle_chinese_chars: opt.chinese,
                  strip_accents: opt.strip, lowercase: opt.lower },
    pre_tokenizer: { type: 'BertPreTokenizer' }, post_processor: null,
    decoder: { type: 'WordPiece', prefix: '##', cleanup: false },
    model: { type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##',
             max_input_chars_per_word: 200, vocab: v },
  });
}

// Whole words, prefixes and "##" pieces of the words the reference makes of
// the corpus, plus most single characters: enough that most words split into
// several pieces and some characters stay unknown.
function buildVocab(lines, opt, seed) {
  const r = rng(seed);
  const probe = tokenizers.Tokenizer.fromString(hfJson(SPECIALS, opt));
  const norm = probe.getNormalizer(), pre = probe.getPreTokenizer();
  const set = new Set(SPECIALS), out = SPECIALS.slice();
  const add = (p) => { if (!set.has(p)) { set.add(p); out.push(p); } };
  const chars = new Set();
  for (const line of lines) {
    for (const [w] of pre.preTokenizeString(norm.normalizeString(line))) {
      const cs = Array.from(w);
      cs.forEach((c) => chars.add(c));
      if (cs.length > 30) continue;
      if (r() < 0.3) add(w);
      const a = Math.floor(r() * cs.length);
      add(cs.slice(0, 1 + a).join(''));
      const b = Math.floor(r() * cs.length), e = b + 1 + Math.floor(r() * (cs.length - b));
      if (b > 0) add('##' + cs.slice(b, e).join(''));
    }
  }
  for (const c of chars) {
    if (r() < 0.93) add(c);
    if (r() < 0.9) add('##' + c);
  }
  return out;
}

// ---- Running both ----------------------------------------------------------

function runMlmpi(bin, args, input) {
  return execFileSync(bin, args, { input, maxBuffer: 1 << 28, stdio: ['pipe', 'pipe', 'pipe'] })
    .toString('utf8');
}

const show = (s) => JSON.stringify(s.length > 160 ? s.slice(0, 160) + '…' : s);

async function checkSetting(a, lines, name, opt, config, seed) {
  const vocab = buildVocab(lines, opt, seed);
  const dir = path.join(a.workdir, name);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'vocab.txt'), vocab.join('\n') + '\n');
  const cfg = path.join(dir, 'tokenizer_config.json');
  if (config) fs.writeFileSync(cfg, JSON.stringify(config));
  else if (fs.existsSync(cfg)) fs.unlinkSync(cfg);
  const ref = tokenizers.Tokenizer.fromString(hfJson(vocab, opt));

  const text = lines.join('\n') + '\n';
  const ours = runMlmpi(a.bin, ['encode', '--tokenizer', dir], text).split('\n');
  ours.pop();
  const oursText = runMlmpi(a.bin, ['decode', '--tokenizer', dir], ours.join('\n') + '\n').split('\n');
  oursText.pop();
  if (ours.length !== lines.length || oursText.length !== lines.length)
    throw new Error(`${name}: mlmpi-data gave ${ours.length} / ${oursText.length} lines for ${lines.length}`);

  let failed = 0, pieces = 0, unks = 0, multi = 0;
  for (let i = 0; i < lines.length; i++) {
    const enc = await ref.encode(lines[i], null, { addSpecialTokens: false });
    const want = enc.getIds();
    const got = ours[i] === '' ? [] : ours[i].split(' ').map(Number);
    const wantText = await ref.decode(want, false);
    pieces += want.length;
    unks += want.filter((id) => id === 1).length;
    multi += enc.getTokens().filter((t) => t.startsWith('##')).length;
    const same = got.length === want.length && got.every((x, k) => x === want[k]);
    if (same && oursText[i] === wantText) continue;
    if (++failed <= 8) {
      console.log(`${name}: line ${i + 1} ${show(lines[i])}`);
      if (!same) {
        console.log(`  mlmpi     ${show(got.map((id) => vocab[id]).join(' '))}`);
        console.log(`  reference ${show(enc.getTokens().join(' '))}`);
      } else {
        console.log(`  mlmpi decode     ${show(oursText[i])}`);
        console.log(`  reference decode ${show(wantText)}`);
      }
    }
  }
  console.log(`${name}: ${lines.length} lines, ${vocab.length} pieces in the vocabulary, ` +
              `${pieces} tokens (${multi} "##", ${unks} [UNK]): ` +
              `${lines.length - failed} passed, ${failed} failed`);
  return failed;
}

async function main() {
  const a = parseArgs();
  fs.mkdirSync(a.workdir, { recursive: true });
  const lines = corpus(a.lines);
  const settings = [
    ['uncased', { lower: true, strip: null, chinese: true }, null],
    ['cased', { lower: false, strip: null, chinese: true }, { do_lower_case: false }],
    ['lower_keep_accents', { lower: true, strip: false, chinese: true },
     { do_lower_case: true, strip_accents: false }],
    ['no_cjk_split', { lower: true, strip: null, chinese: false },
     { do_lower_case: true, tokenize_chinese_chars: false }],
  ];
  let failed = 0;
  for (let k = 0; k < settings.length; k++) {
    const [name, opt, config] = settings[k];
    failed += await checkSetting(a, lines, name, opt, config, 7 + k);
  }
  process.exit(failed ? 1 : 0);
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
