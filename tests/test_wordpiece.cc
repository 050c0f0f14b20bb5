/* test_wordpiece.cc: unit tests of the BERT WordPiece tokenizer against the
 * definition of BERT's BasicTokenizer + WordpieceTokenizer: cleaning,
 * punctuation and CJK splitting, casing and accents, greedy longest-match
 * sub-words, [UNK], vocabulary and config loading, special tokens, decode
 * and thread safety. The comparison with an independent implementation is
 * tests/reference/wordpiece. */
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "tokenizer.h"

namespace {

/* ---- Helpers ---------------------------------------------------------------- */

bool tmp_made = false;
const std::string &TmpDir() {
  static std::string dir = [] {
    std::string tmpl = testing::TempDir() + "mlmpi_wordpiece_XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back(0);
    const char *d = mkdtemp(buf.data());
    if (!d) abort();
    tmp_made = true;
    return std::string(d);
  }();
  return dir;
}

class TmpDirCleanup : public testing::Environment {
 public:
  void TearDown() override {
    if (tmp_made) std::filesystem::remove_all(TmpDir());
  }
};
testing::Environment *const tmp_cleanup = testing::AddGlobalTestEnvironment(new TmpDirCleanup);

void WriteFile(const std::string &path, const std::string &bytes) {
  std::ofstream f(path, std::ios::binary);
  f << bytes;
}

/* Makes directory `name` holding vocab.txt (the pieces, one a line) and,
 * when config is not empty, tokenizer_config.json. Returns the vocab path. */
std::string MakeVocab(const std::string &name, const std::vector<std::string> &pieces,
                      const std::string &config = "") {
  std::string dir = TmpDir() + "/" + name;
  std::filesystem::create_directories(dir);
  std::string text;
  for (const auto &p : pieces) text += p + "\n";
  WriteFile(dir + "/vocab.txt", text);
  if (!config.empty()) WriteFile(dir + "/tokenizer_config.json", config);
  return dir + "/vocab.txt";
}

const std::vector<std::string> kSpecials = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};

/* The toy vocabulary most tests use: lower-case, so inferred uncased. */
std::vector<std::string> ToyPieces() {
  std::vector<std::string> v = kSpecials;
  for (const char *p :
       {"un",       "##aff", "##able", "hello", "world", "the",      "a",      "##a", "ab",
        "##c",      "##bcd", "x",      "##y",   "5",     "##€",      "quoted", "que", "naive",
        "angstrom", "cl",    "##s",    "ж",     "##ж",   "中",       "文",     "字",  "ひらかな",
        "ᄒ",       "##ᅡ",  "##ᆫ",   "οδος",  "σα",    "ab中文cd", "i",      ",",   "!",
        ".",        "?",     "$",      "+",     "=",     "[",        "]",      "“",   "”",
        "—",        "¿",     "'",      "#",     "-",     "3",        "8"})
    v.push_back(p);
  return v;
}

/* Owns a loaded tokenizer. */
struct Tok {
  tokenizer *t = nullptr;
  explicit Tok(const std::string &path) {
    EXPECT_EQ(tok_load(path.c_str(), &t), STATUS_OK) << status_message();
  }
  ~Tok() { tok_free(t); }
  Tok(const Tok &) = delete;
  Tok &operator=(const Tok &) = delete;

  std::vector<int32_t> Ids(const std::string &text) const {
    tok_ids ids = {};
    EXPECT_EQ(tok_encode(t, text.data(), text.size(), &ids), STATUS_OK) << status_message();
    std::vector<int32_t> v(ids.v, ids.v + ids.n);
    tok_ids_free(&ids);
    return v;
  }
  /* The pieces of text, separated by spaces. */
  std::string Pieces(const std::string &text) const {
    std::string s;
    for (int32_t id : Ids(text)) {
      size_t len = 0;
      const char *p = tok_piece(t, id, &len);
      if (!s.empty()) s += ' ';
      s.append(p, len);
    }
    return s;
  }
  std::string Decode(const std::vector<int32_t> &ids) const {
    tok_str s = {};
    EXPECT_EQ(tok_decode(t, ids.data(), ids.size(), &s), STATUS_OK) << status_message();
    std::string r = s.s ? std::string(s.s, s.n) : std::string();
    tok_str_free(&s);
    return r;
  }
};

const Tok &Toy() {
  static Tok tok(MakeVocab("toy", ToyPieces()));
  return tok;
}

/* ---- BasicTokenizer ----------------------------------------------------------- */

TEST(WordpieceBasic, SplitsOnAsciiAndUnicodePunctuation) {
  EXPECT_EQ(Toy().Pieces("Hello, world!"), "hello , world !");
  // $ + = are symbols in Unicode but punctuation by BERT's ASCII ranges.
  EXPECT_EQ(Toy().Pieces("$5+3=8"), "$ 5 + 3 = 8");
  EXPECT_EQ(Toy().Pieces("“quoted”—¿qué?"), "“ quoted ” — ¿ que ?");
  // A non-ASCII symbol (Sc) is not punctuation: it stays in the word.
  EXPECT_EQ(Toy().Pieces("5€"), "5 ##€");
  EXPECT_EQ(Toy().Pieces("the#a"), "the # a");
}

TEST(WordpieceBasic, CjkIdeographsAreWordsOfTheirOwn) {
  EXPECT_EQ(Toy().Pieces("ab中文cd"), "ab 中 文 [UNK]");
  EXPECT_EQ(Toy().Pieces("中文字"), "中 文 字");
  // Hiragana is not an ideograph: it stays one word (and, uncased, loses the
  // voicing mark U+3099 that NFD splits from が, a nonspacing mark).
  EXPECT_EQ(Toy().Pieces("ひらがな"), "ひらかな");
}

TEST(WordpieceBasic, CjkSplittingCanBeTurnedOff) {
  Tok tok(MakeVocab("nocjk", ToyPieces(), R"({"tokenize_chinese_chars": false})"));
  EXPECT_EQ(tok.Pieces("ab中文cd"), "ab中文cd");
  EXPECT_EQ(tok.Pieces("中文字"), "[UNK]");
}

TEST(WordpieceBasic, UncasedLowerCasesAndStripsAccents) {
  EXPECT_EQ(Toy().Pieces("Héllo"), "hello");
  EXPECT_EQ(Toy().Pieces("HELLO WORLD"), "hello world");
  EXPECT_EQ(Toy().Pieces("ÅNGSTRÖM naïve"), "angstrom naive");
  // Decomposed input: e + U+0301.
  EXPECT_EQ(Toy().Pieces("he\xcc\x81llo"), "hello");
  // U+0130 lower-cases to i + U+0307, and the mark goes with the accents.
  EXPECT_EQ(Toy().Pieces("\xc4\xb0"), "i");
  // Hangul syllables decompose into jamo under NFD, as in BERT's uncased models.
  EXPECT_EQ(Toy().Pieces("한"), "ᄒ ##ᅡ ##ᆫ");
}

TEST(WordpieceBasic, FinalSigmaFollowsPythonLower) {
  // ς (U+03C2) at the end of a word, σ elsewhere.
  EXPECT_EQ(Toy().Pieces("ΟΔΟΣ"), "οδος");
  EXPECT_EQ(Toy().Pieces("ΟΔΟΣ."), "οδος .");
  EXPECT_EQ(Toy().Pieces("ΣΑ"), "σα");
}

TEST(WordpieceBasic, CasedKeepsCaseAndAccents) {
  std::vector<std::string> v = kSpecials;
  for (const char *p : {"Héllo", "hello", "Hello", "World", ","}) v.push_back(p);
  // The vocabulary has upper-case pieces: inferred cased without a config.
  Tok inferred(MakeVocab("cased_inferred", v));
  EXPECT_EQ(inferred.Pieces("Héllo, World"), "Héllo , World");
  EXPECT_EQ(inferred.Pieces("hello Hello"), "hello Hello");
  // The config file wins over the inference, both ways.
  Tok lower(MakeVocab("cased_forced_lower", v, R"({"do_lower_case": true})"));
  EXPECT_EQ(lower.Pieces("Héllo Hello"), "hello hello");
  Tok cased(MakeVocab("toy_forced_cased", ToyPieces(), R"({"do_lower_case": false})"));
  EXPECT_EQ(cased.Pieces("hello Hello"), "hello [UNK]");
}

TEST(WordpieceBasic, LowerCaseWithoutAccentStripping) {
  std::vector<std::string> v = kSpecials;
  v.push_back("héllo");
  v.push_back("hello");
  Tok tok(MakeVocab("lower_keep_accents", v,
                    R"({"do_lower_case": true, "strip_accents": false, "unk_token": "[UNK]"})"));
  EXPECT_EQ(tok.Pieces("HÉLLO Hello"), "héllo hello");
}

TEST(WordpieceBasic, ControlCharactersAreRemoved) {
  // Removed characters join what is around them; they do not split.
  EXPECT_EQ(Toy().Pieces("hel\x01lo"), "hello");
  EXPECT_EQ(Toy().Pieces("hel\x7flo wor\xe2\x80\x8bld"), "hello world");  // DEL, U+200B (Cf)
  EXPECT_EQ(Toy().Pieces("hel\xef\xbf\xbdlo"), "hello");                  // U+FFFD
  EXPECT_EQ(Toy().Pieces(std::string("hel\0lo", 6)), "hello");            // NUL
  EXPECT_EQ(Toy().Pieces("hel\xc2\xadlo"), "hello");                      // soft hyphen (Cf)
}

TEST(WordpieceBasic, WhitespaceOfEveryKindSplits) {
  EXPECT_EQ(Toy().Pieces("hello\tworld\nthe\rhel\vlo"), "hello world the hello");  // \v is Cc
  // NBSP, ideographic space, em space (Zs), line and paragraph separators.
  EXPECT_EQ(Toy().Pieces("hello\xc2\xa0world\xe3\x80\x80the\xe2\x80\x83"
                         "a\xe2\x80\xa8the\xe2\x80\xa9world"),
            "hello world the a the world");
}

TEST(WordpieceBasic, EmptyAndBlankInputGiveNoIds) {
  EXPECT_TRUE(Toy().Ids("").empty());
  EXPECT_TRUE(Toy().Ids(" \t\n\r  \xe3\x80\x80 ").empty());
  EXPECT_TRUE(Toy().Ids("\x01\x02\xe2\x80\x8b").empty());
  // Only combining marks: nothing is left after stripping accents.
  EXPECT_TRUE(Toy().Ids("\xcc\x81\xcc\x88").empty());
}

TEST(WordpieceBasic, InvalidUtf8IsDropped) {
  EXPECT_EQ(Toy().Pieces("hel\xfflo"), "hello");
  // A truncated sequence is dropped without taking the byte after it.
  EXPECT_EQ(Toy().Pieces("x\xe2\x82y"), "x ##y");
  EXPECT_EQ(Toy().Pieces("x\xe2\x82"), "x");
  // Overlong forms and surrogates are ill-formed.
  EXPECT_EQ(Toy().Pieces("x\xc0\xafy x\xed\xa0\x80y"), "x ##y x ##y");
  EXPECT_EQ(Toy().Pieces("\x80\x80\xbf"), "");
}

TEST(WordpieceBasic, SpecialTokenSpellingsInTextAreSplit) {
  EXPECT_EQ(Toy().Pieces("[CLS]"), "[ cl ##s ]");
}

/* ---- WordpieceTokenizer ------------------------------------------------------- */

TEST(WordpieceGreedy, SplitsIntoContinuations) {
  EXPECT_EQ(Toy().Pieces("unaffable"), "un ##aff ##able");
  EXPECT_EQ(Toy().Pieces("unaffable hello"), "un ##aff ##able hello");
}

TEST(WordpieceGreedy, LongestMatchFirstAndNoBacktracking) {
  // "ab" + "##c" although "a" + "##bc..." exists.
  EXPECT_EQ(Toy().Pieces("abc"), "ab ##c");
  // Greedy takes "ab", then nothing matches "cd": the whole word is [UNK]
  // even though "a" + "##bcd" would cover it.
  EXPECT_EQ(Toy().Pieces("abcd"), "[UNK]");
  EXPECT_EQ(Toy().Pieces("aaa"), "a ##a ##a");
}

TEST(WordpieceGreedy, UnknownWordIsOneUnk) {
  EXPECT_EQ(Toy().Pieces("hello zzz world"), "hello [UNK] world");
  EXPECT_EQ(Toy().Pieces("unaffablez"), "[UNK]");
  const tok_specials sp = tok_get_specials(Toy().t);
  EXPECT_EQ(Toy().Ids("qqq"), std::vector<int32_t>{sp.unk});
}

TEST(WordpieceGreedy, WordsOver200CodePointsAreUnk) {
  std::string a200(200, 'a');
  EXPECT_EQ(Toy().Ids(a200).size(), 200u);
  EXPECT_EQ(Toy().Pieces(a200 + "a"), "[UNK]");
  // The limit counts code points, not bytes: ж is two bytes.
  std::string zh200;
  for (int i = 0; i < 200; i++) zh200 += "ж";
  EXPECT_EQ(Toy().Ids(zh200).size(), 200u);
  EXPECT_EQ(Toy().Pieces(zh200 + "ж"), "[UNK]");
  // ... after normalisation: 400 code points of decomposed "ä" strip to 200 "a".
  std::string a_uml;
  for (int i = 0; i < 200; i++) a_uml += "a\xcc\x88";
  EXPECT_EQ(Toy().Ids(a_uml).size(), 200u);
  // Punctuation splits a long token into short words.
  EXPECT_EQ(Toy().Ids(a200 + "," + a200).size(), 401u);
  EXPECT_EQ(Toy().Pieces(a200 + "a!hello"), "[UNK] ! hello");
}

TEST(WordpieceGreedy, MissingUnkTokenIsAnError) {
  Tok tok(MakeVocab("no_unk", {"[CLS]", "hello"}));
  EXPECT_EQ(tok.Pieces("hello"), "hello");
  tok_ids ids = {};
  EXPECT_EQ(tok_encode(tok.t, "hello zzz", 9, &ids), STATUS_ARG);
  EXPECT_NE(std::string(status_message()).find("[UNK]"), std::string::npos) << status_message();
  EXPECT_NE(std::string(status_message()).find("zzz"), std::string::npos) << status_message();
  tok_ids_free(&ids);
}

TEST(WordpieceGreedy, ConfiguredUnkToken) {
  Tok tok(MakeVocab("unk_cfg", {"<unk>", "hello"}, R"({"unk_token": {"content": "<unk>"}})"));
  EXPECT_EQ(tok.Pieces("hello zzz"), "hello <unk>");
}

/* ---- Decode ------------------------------------------------------------------- */

TEST(WordpieceDecode, JoinsContinuationsAndSpacesWords) {
  const std::string in = "Hello, UNAFFABLE world!  ab中文";
  const std::string normalised = "hello , unaffable world ! ab 中 文";
  EXPECT_EQ(Toy().Decode(Toy().Ids(in)), normalised);
  // Decoding is idempotent on normalised text.
  EXPECT_EQ(Toy().Decode(Toy().Ids(normalised)), normalised);
  // A continuation first keeps its "##".
  int32_t aff = tok_piece_id(Toy().t, "##aff"), un = tok_piece_id(Toy().t, "un");
  EXPECT_EQ(Toy().Decode({aff, un, aff}), "##aff unaff");
  EXPECT_EQ(Toy().Decode({}), "");
}

TEST(WordpieceDecode, RejectsOutOfRangeIds) {
  tok_str s = {};
  int32_t bad[] = {1, 100000};
  EXPECT_EQ(tok_decode(Toy().t, bad, 2, &s), STATUS_ARG);
  tok_str_free(&s);
}

/* ---- Vocabulary and loading ----------------------------------------------------- */

TEST(WordpieceVocab, IdsAreLineNumbers) {
  const Tok &t = Toy();
  EXPECT_EQ(tok_get_kind(t.t), TOK_WORDPIECE);
  EXPECT_EQ(tok_vocab_size(t.t), (int32_t)ToyPieces().size());
  EXPECT_EQ(tok_piece_id(t.t, "[PAD]"), 0);
  EXPECT_EQ(tok_piece_id(t.t, "un"), 5);
  EXPECT_EQ(tok_piece_id(t.t, "##aff"), 6);
  EXPECT_EQ(tok_piece_id(t.t, "aff"), -1);
  EXPECT_EQ(tok_piece_id(t.t, "##un"), -1);
  size_t len = 0;
  EXPECT_STREQ(tok_piece(t.t, 7, &len), "##able");
  EXPECT_EQ(len, 6u);
}

TEST(WordpieceVocab, LoadsFromItsDirectory) {
  MakeVocab("bydir", ToyPieces());
  Tok tok(TmpDir() + "/bydir");
  EXPECT_EQ(tok.Pieces("unaffable"), "un ##aff ##able");
}

TEST(WordpieceVocab, CrLfBlankLinesAndNoFinalNewline) {
  std::string dir = TmpDir() + "/crlf";
  std::filesystem::create_directories(dir);
  WriteFile(dir + "/vocab.txt", "[UNK]\r\nhello\r\n\r\n##s\r\nworld");
  Tok tok(dir + "/vocab.txt");
  EXPECT_EQ(tok_vocab_size(tok.t), 5);
  EXPECT_EQ(tok_piece_id(tok.t, "hello"), 1);
  EXPECT_EQ(tok_piece_id(tok.t, ""), 2);
  EXPECT_EQ(tok_piece_id(tok.t, "world"), 4);
  EXPECT_EQ(tok.Pieces("hellos world"), "hello ##s world");
}

TEST(WordpieceVocab, DuplicatePieceLooksUpItsLastId) {
  // The reference builds a dict with vocab[token] = index: the later line wins.
  Tok tok(MakeVocab("dup", {"[UNK]", "a", "##b", "a"}));
  EXPECT_EQ(tok_vocab_size(tok.t), 4);
  EXPECT_EQ(tok_piece_id(tok.t, "a"), 3);
  EXPECT_EQ(tok.Ids("ab"), (std::vector<int32_t>{3, 2}));
  size_t len = 0;
  EXPECT_STREQ(tok_piece(tok.t, 1, &len), "a");
  EXPECT_EQ(tok.Decode({1, 2}), "ab");
}

TEST(WordpieceVocab, SpecialTokens) {
  const tok_specials sp = tok_get_specials(Toy().t);
  EXPECT_EQ(sp.pad, 0);
  EXPECT_EQ(sp.unk, 1);
  EXPECT_EQ(sp.cls, 2);
  EXPECT_EQ(sp.sep, 3);
  EXPECT_EQ(sp.mask, 4);
  EXPECT_EQ(tok_require_specials(Toy().t), STATUS_OK);

  Tok tok(MakeVocab("no_mask", {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello"}));
  EXPECT_EQ(tok_get_specials(tok.t).mask, -1);
  EXPECT_EQ(tok_require_specials(tok.t), STATUS_ARG);
  EXPECT_NE(std::string(status_message()).find("[MASK]"), std::string::npos) << status_message();
}

TEST(WordpieceVocab, MissingFileIsAnIoError) {
  tokenizer *t = nullptr;
  std::string path = TmpDir() + "/nowhere/vocab.txt";
  EXPECT_EQ(tok_load(path.c_str(), &t), STATUS_IO);
  EXPECT_EQ(t, nullptr);
  EXPECT_NE(std::string(status_message()).find(path), std::string::npos) << status_message();
  // The backend itself, called directly, says the same.
  void *impl = nullptr;
  const tok_ops *ops = nullptr;
  EXPECT_EQ(tok_wordpiece_load(path.c_str(), &impl, &ops), STATUS_IO);
  EXPECT_EQ(impl, nullptr);
}

TEST(WordpieceVocab, EmptyFileIsAFormatError) {
  std::string dir = TmpDir() + "/empty";
  std::filesystem::create_directories(dir);
  WriteFile(dir + "/vocab.txt", "");
  tokenizer *t = nullptr;
  EXPECT_EQ(tok_load((dir + "/vocab.txt").c_str(), &t), STATUS_FORMAT);
  EXPECT_NE(std::string(status_message()).find("empty"), std::string::npos) << status_message();
  EXPECT_NE(std::string(status_message()).find(dir), std::string::npos) << status_message();
}

TEST(WordpieceVocab, BadBytesNameTheLine) {
  std::string dir = TmpDir() + "/badutf8";
  std::filesystem::create_directories(dir);
  WriteFile(dir + "/vocab.txt", "[UNK]\nok\nb\xffgus\n");
  tokenizer *t = nullptr;
  EXPECT_EQ(tok_load((dir + "/vocab.txt").c_str(), &t), STATUS_FORMAT);
  EXPECT_NE(std::string(status_message()).find("line 3"), std::string::npos) << status_message();
  WriteFile(dir + "/vocab.txt", std::string("[UNK]\nn\0l\n", 10));
  EXPECT_EQ(tok_load((dir + "/vocab.txt").c_str(), &t), STATUS_FORMAT);
  EXPECT_NE(std::string(status_message()).find("line 2"), std::string::npos) << status_message();
}

TEST(WordpieceVocab, BadConfigIsAFormatError) {
  tokenizer *t = nullptr;
  std::string p = MakeVocab("badjson", ToyPieces(), "{\"do_lower_case\": tru");
  EXPECT_EQ(tok_load(p.c_str(), &t), STATUS_FORMAT);
  EXPECT_NE(std::string(status_message()).find("tokenizer_config.json"), std::string::npos)
      << status_message();
  p = MakeVocab("badflag", ToyPieces(), R"({"do_lower_case": "yes"})");
  EXPECT_EQ(tok_load(p.c_str(), &t), STATUS_FORMAT);
  EXPECT_NE(std::string(status_message()).find("do_lower_case"), std::string::npos)
      << status_message();
  // Keys it does not use are ignored; null means "not said".
  p = MakeVocab("otherkeys", ToyPieces(),
                R"({"model_max_length": 512, "do_lower_case": null, "never_split": null})");
  Tok tok(p);
  EXPECT_EQ(tok.Pieces("Héllo"), "hello");
}

TEST(WordpieceBasic, RandomBytesEncodeAndDecode) {
  // Any bytes encode without error to ids that decode; mostly ill-formed
  // UTF-8 mixed with pieces of well-formed text.
  const char *bits[] = {"a",  "\xc3\xa9", "\xe4\xb8\xad", "\xf0\x9f\x98\x80", " ",
                        ",",  "\xcc\x81", "\xce\xa3",     "\xe2\x80\xa8",     "#",
                        "un", "aff",      "able"};
  uint64_t s = 12345;
  auto next = [&s] { return (s = s * 6364136223846793005ull + 1442695040888963407ull) >> 33; };
  for (int rep = 0; rep < 2000; rep++) {
    std::string text;
    int n = (int)(next() % 64);
    for (int i = 0; i < n; i++) {
      if (next() % 2) {
        text += (char)(next() & 0xff);
      } else {
        text += bits[next() % (sizeof bits / sizeof bits[0])];
      }
    }
    if (rep % 100 == 0) text += std::string(300, 'a') + "\xce\xa3";
    std::vector<int32_t> ids = Toy().Ids(text);
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < tok_vocab_size(Toy().t));
    // Decoding and encoding again gives the same ids, unless a word was [UNK].
    std::string back = Toy().Decode(ids);
    if (back.find("[UNK]") == std::string::npos) {
      EXPECT_EQ(Toy().Ids(back), ids) << text;
    }
  }
}

/* ---- Threads ------------------------------------------------------------------- */

TEST(WordpieceThreads, ConcurrentEncodesAgree) {
  std::vector<std::string> lines;
  for (int i = 0; i < 200; i++)
    lines.push_back("Hello, unaffable WORLD! ab中文 ΟΔΟΣ naïve " + std::string(i % 7, 'a') +
                    (i % 3 ? " zzz" : " $5+3=8"));
  std::vector<std::vector<int32_t>> want;
  for (const auto &l : lines) want.push_back(Toy().Ids(l));
  std::vector<std::thread> threads;
  std::vector<int> bad(4, 0);
  for (int k = 0; k < 4; k++)
    threads.emplace_back([&, k] {
      for (int rep = 0; rep < 20; rep++)
        for (size_t i = 0; i < lines.size(); i++) {
          tok_ids ids = {};
          if (tok_encode(Toy().t, lines[i].data(), lines[i].size(), &ids) != STATUS_OK ||
              std::vector<int32_t>(ids.v, ids.v + ids.n) != want[i])
            bad[k]++;
          tok_ids_free(&ids);
        }
    });
  for (auto &th : threads) th.join();
  for (int k = 0; k < 4; k++) EXPECT_EQ(bad[k], 0) << "thread " << k;
}

}  // namespace

/* The fingerprint follows the settings, not only the pieces: the same vocab
 * read cased and uncased encodes differently, so it must differ. */
TEST(WordpieceFingerprint, FollowsCasingSettings) {
  std::string a = MakeVocab("fp_lower", ToyPieces(), R"({"do_lower_case": true})");
  std::string b = MakeVocab("fp_cased", ToyPieces(), R"({"do_lower_case": false})");
  std::string c = MakeVocab("fp_lower2", ToyPieces(), R"({"do_lower_case": true})");
  Tok ta(a), tb(b), tc(c);
  EXPECT_NE(tok_fingerprint(ta.t), tok_fingerprint(tb.t));
  EXPECT_EQ(tok_fingerprint(ta.t), tok_fingerprint(tc.t));
}
