#!/usr/bin/env node
/* tok_diff_gpt2.js: the GPT-2 reference encoders for bench/tok_diff.py, one
 * run per batch. js-tiktoken (encoding "gpt2", the primary reference) and
 * gpt-3-encoder, as pinned in tests/reference/package.json.
 *
 *   node tok_diff_gpt2.js encode IN.json OUT.json
 *       IN: [[base64 of the text's UTF-8 bytes, "tg"], ...] ("t": js-tiktoken,
 *       "g": gpt-3-encoder). The bytes become a string as a UTF-8 file does
 *       in node (TextDecoder: each maximal ill-formed subpart one U+FFFD, a
 *       leading U+FEFF kept), as tests/reference/test_gpt2.js does.
 *       OUT: [{"t": [ids] or null, "g": [ids] or null}, ...], with "terr" or
 *       "gerr" the error where an encoder threw (js-tiktoken overflows the
 *       stack on a pre-token of more than about 10^5 tokens).
 *   node tok_diff_gpt2.js probe IN.json OUT.json
 *       IN: [character, ...]. OUT: the characters a run of which js-tiktoken
 *       leaves one token per byte (no merge applies, so a long run costs the
 *       references linear time; other runs cost them quadratic time).
 *   node tok_diff_gpt2.js letters OUT.json
 *       OUT: {"unicode": node's Unicode version, "ln": [[lo, hi], ...]}, the
 *       ranges of code points that are \p{L} or \p{N} in that version (the
 *       pre-tokenizer's classes; mlmpi takes them from PCRE2's tables).
 * Exit 77 when the npm packages are not installed. */
'use strict';
const fs = require('fs');
const path = require('path');

const modules = path.join(__dirname, '..', 'tests', 'reference', 'node_modules');
let tiktoken, gpt3;
try {
  tiktoken = require(path.join(modules, 'js-tiktoken')).getEncoding('gpt2');
  gpt3 = require(path.join(modules, 'gpt-3-encoder'));
} catch (e) {
  console.error(`tok_diff_gpt2.js: the npm reference encoders are not installed in ${modules} ` +
                `(tests/run.sh installs them) - ${e.message.split('\n')[0]}`);
  process.exit(77);
}

const td = new TextDecoder('utf-8', {ignoreBOM: true});
const [cmd, inFile, outFile] = process.argv.slice(2);

if (cmd === 'encode') {
  const items = JSON.parse(fs.readFileSync(inFile, 'utf8'));
  const out = items.map(([b64, refs]) => {
    const s = td.decode(Buffer.from(b64, 'base64'));
    const r = {t: null, g: null};
    for (const [k, enc] of [['t', (x) => tiktoken.encode(x, [], [])], ['g', (x) => gpt3.encode(x)]])
      if (refs.includes(k)) {
        try {
          r[k] = enc(s);
        } catch (e) {
          r[k + 'err'] = String(e).split('\n')[0];
        }
      }
    return r;
  });
  fs.writeFileSync(outFile, JSON.stringify(out));
} else if (cmd === 'probe') {
  const chars = JSON.parse(fs.readFileSync(inFile, 'utf8'));
  const cheap = chars.filter((c) => tiktoken.encode(c.repeat(16), [], []).length ===
                                    16 * Buffer.byteLength(c));
  fs.writeFileSync(outFile, JSON.stringify(cheap));
} else if (cmd === 'letters') {
  const ln = [];
  const re = /[\p{L}\p{N}]/u;
  for (let c = 0; c < 0x110000; c++) {
    if (!re.test(String.fromCodePoint(c))) continue;
    if (ln.length && ln[ln.length - 1][1] === c - 1) ln[ln.length - 1][1] = c;
    else ln.push([c, c]);
  }
  fs.writeFileSync(inFile, JSON.stringify({unicode: process.versions.unicode, ln}));
} else {
  console.error('usage: tok_diff_gpt2.js encode|probe IN.json OUT.json, or letters OUT.json');
  process.exit(2);
}
