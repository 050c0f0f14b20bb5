/* test_spm.cc: unit tests of the SentencePiece backend on small models built
 * here byte by byte: unigram and BPE segmentation worked out by hand,
 * user-defined pieces, merged unknown pieces, byte fallback, decoding,
 * special-token look-ups, load errors and thread safety. The comparison with
 * spm_encode/spm_decode on trained models is tests/reference/test_spm.py. */
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "tokenizer.h"

namespace {

/* ---- Building ModelProto bytes ---------------------------------------------- */

std::string Varint(uint64_t v) {
  std::string s;
  do {
    uint8_t b = v & 0x7F;
    v >>= 7;
    s.push_back((char)(b | (v ? 0x80 : 0)));
  } while (v);
  return s;
}

std::string Bytes(int field, const std::string &payload) {
  return Varint((uint64_t)field << 3 | 2) + Varint(payload.size()) + payload;
}

std::string Int(int field, int64_t v) { return Varint((uint64_t)field << 3) + Varint((uint64_t)v); }

std::string Float(int field, float f) {
  std::string s = Varint((uint64_t)field << 3 | 5);
  s.append((const char *)&f, 4);
  return s;
}

enum { NORMAL = 1, UNKNOWN = 2, CONTROL = 3, USER = 4, UNUSED = 5, BYTE = 6 };

struct Piece {
  std::string text;
  float score;
  int type;
};

/* A ModelProto: the pieces, a trainer spec (model type, byte fallback) and
 * an identity normalizer with SentencePiece's default flags. */
std::string Model(const std::vector<Piece> &pieces, int model_type, bool byte_fallback) {
  std::string m;
  for (const Piece &p : pieces)
    m += Bytes(1, Bytes(1, p.text) + Float(2, p.score) + Int(3, p.type));
  m += Bytes(2, Int(3, model_type) + Int(35, byte_fallback));
  m += Bytes(3, Bytes(1, "identity"));
  return m;
}

std::vector<Piece> WithBytes(std::vector<Piece> p) {
  char name[8];
  for (int b = 0; b < 256; b++) {
    snprintf(name, sizeof name, "<0x%02X>", b);
    p.push_back({name, 0, BYTE});
  }
  return p;
}

const char *const kU = "\xe2\x96\x81"; /* U+2581 */

std::string U(const char *rest) { return std::string(kU) + rest; }

/* Unigram: ids 0..9. */
std::vector<Piece> UnigramPieces() {
  return {{"<unk>", 0, UNKNOWN}, {"<s>", 0, CONTROL},  {"</s>", 0, CONTROL}, {kU, -1, NORMAL},
          {"a", -2, NORMAL},     {"b", -2, NORMAL},    {"ab", -1.5, NORMAL}, {U("ab"), -2, NORMAL},
          {"<sep>", 0, USER},    {"<pad>", 0, CONTROL}};
}

/* BPE: ids 0..8. */
std::vector<Piece> BpePieces() {
  return {{"<unk>", 0, UNKNOWN}, {kU, 0, NORMAL},    {"a", 0, NORMAL},     {"b", 0, NORMAL},
          {"c", 0, NORMAL},      {"ab", -1, NORMAL}, {"bc", -0.5, NORMAL}, {"abc", -2, NORMAL},
          {U("a"), -3, NORMAL},  {"ba", -1, NORMAL}};
}

class Spm : public testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = testing::TempDir() + "mlmpi_spm_XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back(0);
    ASSERT_NE(mkdtemp(buf.data()), nullptr);
    dir_ = buf.data();
  }
  void TearDown() override {
    for (tokenizer *t : loaded_) tok_free(t);
    std::filesystem::remove_all(dir_);
  }
  std::string Write(const std::string &name, const std::string &bytes) {
    std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }
  tokenizer *Load(const std::string &bytes) {
    tokenizer *t = nullptr;
    std::string path = Write("m" + std::to_string(loaded_.size()) + ".model", bytes);
    EXPECT_EQ(tok_load(path.c_str(), &t), STATUS_OK) << status_message();
    if (t) loaded_.push_back(t);
    return t;
  }
  std::string dir_;
  std::vector<tokenizer *> loaded_;
};

std::vector<int32_t> Encode(const tokenizer *t, const std::string &text) {
  tok_ids ids = {};
  EXPECT_EQ(tok_encode(t, text.data(), text.size(), &ids), STATUS_OK) << status_message();
  std::vector<int32_t> v(ids.v, ids.v + ids.n);
  tok_ids_free(&ids);
  return v;
}

std::string Pieces(const tokenizer *t, const std::string &text) {
  tok_ids ids = {};
  tok_str s = {};
  EXPECT_EQ(tok_encode_pieces(t, text.data(), text.size(), &ids, &s), STATUS_OK);
  std::string r(s.s ? s.s : "", s.n);
  tok_ids_free(&ids);
  tok_str_free(&s);
  return r;
}

std::string Decode(const tokenizer *t, const std::vector<int32_t> &ids) {
  tok_str s = {};
  EXPECT_EQ(tok_decode(t, ids.data(), ids.size(), &s), STATUS_OK) << status_message();
  std::string r(s.s ? s.s : "", s.n);
  tok_str_free(&s);
  return r;
}

using V = std::vector<int32_t>;

/* ---- Unigram ------------------------------------------------------------------ */

TEST_F(Spm, UnigramViterbi) {
  tokenizer *t = Load(Model(UnigramPieces(), 1, false));
  ASSERT_NE(t, nullptr);
  /* "▁ab" (-2) beats "▁" + "ab" (-2.5) and "▁" + "a" + "b" (-5). */
  EXPECT_EQ(Encode(t, "ab"), V({7}));
  /* Extra and surrounding spaces go; each word gets its own prefix. */
  EXPECT_EQ(Encode(t, "  ab   ab  "), V({7, 7}));
  EXPECT_EQ(Encode(t, "ba"), V({3, 5, 4}));
  EXPECT_EQ(Encode(t, ""), V({}));
  EXPECT_EQ(Encode(t, "   "), V({}));
}

TEST_F(Spm, UnigramUserDefinedAndUnknown) {
  tokenizer *t = Load(Model(UnigramPieces(), 1, false));
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(Encode(t, "a<sep>b"), V({3, 4, 8, 5}));
  /* A run of unknown characters is one unknown piece, printed as its text. */
  EXPECT_EQ(Encode(t, "xyz"), V({3, 0}));
  EXPECT_EQ(Pieces(t, "xyz ab"), U(" xyz ") + U("ab"));
  /* Control pieces are never produced from text. */
  EXPECT_EQ(Encode(t, "<s>"), V({3, 0}));
  /* An invalid byte becomes U+FFFD, unknown here. */
  EXPECT_EQ(Pieces(t, "a\xff"), U(" a \xef\xbf\xbd"));
}

TEST_F(Spm, UnigramDecode) {
  tokenizer *t = Load(Model(UnigramPieces(), 1, false));
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(Decode(t, {7, 8, 0, 1, 4}), "ab<sep> \xe2\x81\x87 a");
  EXPECT_EQ(Decode(t, {3, 3, 7, 3, 4}), "ab a");
  EXPECT_EQ(Decode(t, {}), "");
  tok_str s = {};
  int32_t bad = 10;
  EXPECT_EQ(tok_decode(t, &bad, 1, &s), STATUS_ARG);
  tok_str_free(&s);
}

TEST_F(Spm, LookupsAndSpecials) {
  tokenizer *t = Load(Model(UnigramPieces(), 1, false));
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(tok_get_kind(t), TOK_SPM);
  EXPECT_EQ(tok_vocab_size(t), 10);
  size_t len = 0;
  EXPECT_EQ(std::string(tok_piece(t, 7, &len)), U("ab"));
  EXPECT_EQ(len, 5u);
  EXPECT_EQ(tok_piece_id(t, "ab"), 6);
  EXPECT_EQ(tok_piece_id(t, "<s>"), 1);
  EXPECT_EQ(tok_piece_id(t, "zz"), -1);
  tok_specials sp = tok_get_specials(t);
  EXPECT_EQ(sp.cls, 1);
  EXPECT_EQ(sp.sep, 2);
  EXPECT_EQ(sp.pad, 9);
  EXPECT_EQ(sp.unk, 0);
  EXPECT_EQ(sp.mask, -1);
  EXPECT_EQ(tok_require_specials(t), STATUS_ARG);
}

/* ---- BPE -------------------------------------------------------------------------- */

TEST_F(Spm, BpeMergeOrder) {
  tokenizer *t = Load(Model(BpePieces(), 2, false));
  ASSERT_NE(t, nullptr);
  /* bc (-0.5) first, then a+bc = abc (-2); ▁a (-3) never gets its turn. */
  EXPECT_EQ(Encode(t, "abc"), V({1, 7}));
  /* ab and ba tie at -1: the leftmost pair merges first. */
  EXPECT_EQ(Encode(t, "abab"), V({1, 5, 5}));
  EXPECT_EQ(Encode(t, "a"), V({8}));
  EXPECT_EQ(Encode(t, "xx a yy"), V({1, 0, 8, 1, 0}));
  EXPECT_EQ(Pieces(t, "xx"), U(" xx"));
}

TEST_F(Spm, ByteFallback) {
  tokenizer *t = Load(Model(WithBytes(BpePieces()), 2, true));
  ASSERT_NE(t, nullptr);
  const int32_t b0 = 10; /* <0x00> */
  /* U+2603 is three bytes, each its own piece. */
  EXPECT_EQ(Encode(t, "a\xe2\x98\x83"), V({8, b0 + 0xE2, b0 + 0x98, b0 + 0x83}));
  EXPECT_EQ(Pieces(t, "\xe2\x98\x83"), U(" <0xE2> <0x98> <0x83>"));
  EXPECT_EQ(Decode(t, {8, b0 + 0xE2, b0 + 0x98, b0 + 0x83}), "a\xe2\x98\x83");
  /* Bytes that are not UTF-8 decode to U+FFFD each. */
  EXPECT_EQ(Decode(t, {b0 + 0xFF, b0 + 0xE2, b0 + 0x98, 2}),
            "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
            "a");
  /* Text of bytes never matches a byte piece. */
  EXPECT_EQ(Encode(t, "<0x41>").size(), 7u);
}

/* ---- Errors ---------------------------------------------------------------------- */

TEST_F(Spm, LoadErrorsNameTheFile) {
  struct {
    const char *name;
    std::string bytes;
    status_t code;
  } cases[] = {
      {"garbage.model", "In the beginning\n", STATUS_FORMAT},
      {"empty.model", "", STATUS_FORMAT},
      {"nounk.model", Model({{"a", 0, NORMAL}}, 1, false), STATUS_FORMAT},
      {"onlyreserved.model", Model({{"<unk>", 0, UNKNOWN}}, 1, false), STATUS_FORMAT},
      {"bytes_off.model", Model(WithBytes(BpePieces()), 2, false), STATUS_FORMAT},
      {"no_bytes.model", Model(BpePieces(), 2, true), STATUS_FORMAT},
      {"badtype.model", Model({{"<unk>", 0, UNKNOWN}, {"a", 0, 9}}, 1, false), STATUS_FORMAT},
      {"badmap.model",
       Bytes(1, Bytes(1, "<unk>") + Int(3, UNKNOWN)) + Bytes(1, Bytes(1, "a")) +
           Bytes(3, Bytes(2, std::string("\x10\x00\x00\x00xy", 6))),
       STATUS_FORMAT},
  };
  for (auto &c : cases) {
    std::string path = Write(c.name, c.bytes);
    tokenizer *t = nullptr;
    EXPECT_EQ(tok_load(path.c_str(), &t), c.code) << c.name;
    EXPECT_EQ(t, nullptr);
    EXPECT_NE(std::string(status_message()).find(path), std::string::npos) << status_message();
  }
  tokenizer *t = nullptr;
  std::string missing = dir_ + "/missing.model";
  EXPECT_EQ(tok_load(missing.c_str(), &t), STATUS_IO);
  EXPECT_NE(std::string(status_message()).find(missing), std::string::npos);
}

/* ---- Threads ---------------------------------------------------------------------- */

TEST_F(Spm, ThreadsAgreeWithOneThread) {
  tokenizer *t = Load(Model(WithBytes(BpePieces()), 2, true));
  tokenizer *u = Load(Model(UnigramPieces(), 1, false));
  ASSERT_NE(t, nullptr);
  ASSERT_NE(u, nullptr);
  std::mt19937 rng(5);
  const char *alphabet[] = {"a", "b", "c", " ", "  ", "x", "\xe2\x98\x83", "\xff", "<sep>", kU};
  std::vector<std::string> lines(400);
  for (auto &l : lines)
    for (int k = rng() % 200; k > 0; k--) l += alphabet[rng() % 10];
  std::vector<std::vector<int32_t>> want_t, want_u;
  for (auto &l : lines) want_t.push_back(Encode(t, l)), want_u.push_back(Encode(u, l));
  std::vector<std::thread> th;
  std::vector<int> bad(8, 0);
  for (int k = 0; k < 8; k++)
    th.emplace_back([&, k] {
      for (int rep = 0; rep < 5; rep++)
        for (size_t i = k; i < lines.size(); i += 3) {
          if (Encode(t, lines[i]) != want_t[i]) bad[k]++;
          if (Encode(u, lines[i]) != want_u[i]) bad[k]++;
        }
    });
  for (auto &x : th) x.join();
  for (int k = 0; k < 8; k++) EXPECT_EQ(bad[k], 0) << "thread " << k;
}

/* ---- Appended special tokens ---------------------------------------------------- */

/* A model as spm_train makes it with --bos_id=-1 --eos_id=-1: no [CLS]
 * [SEP] [MASK] [PAD] in any spelling. Ids 0..5. */
std::vector<Piece> NoSpecialPieces() {
  return {{"<unk>", 0, UNKNOWN}, {kU, -1, NORMAL},     {"a", -2, NORMAL},
          {"b", -2, NORMAL},     {"ab", -1.5, NORMAL}, {U("ab"), -2, NORMAL}};
}

/* The ids of [CLS] [SEP] [MASK] [PAD]. */
V Specials(const tokenizer *t) {
  const tok_specials sp = tok_get_specials(t);
  return {sp.cls, sp.sep, sp.mask, sp.pad};
}

std::string Missing(const tokenizer *t, int *n) {
  char names[64];
  *n = tok_missing_specials(t, names, sizeof names);
  return names;
}

TEST_F(Spm, AppendsMissingSpecialsAfterTheVocabulary) {
  tokenizer *t = Load(Model(NoSpecialPieces(), 1, false));
  ASSERT_NE(t, nullptr);
  const std::string text = "ab [CLS] b[MASK] <pad> xyz";
  const V before = Encode(t, text);
  const uint64_t fp = tok_fingerprint(t);
  int n = 0;
  EXPECT_EQ(Missing(t, &n), "[CLS], [SEP], [MASK], [PAD]");
  EXPECT_EQ(n, 4);
  EXPECT_EQ(tok_require_specials(t), STATUS_ARG);
  EXPECT_NE(std::string(status_message()).find("[CLS], [SEP], [MASK], [PAD]"), std::string::npos);

  EXPECT_EQ(tok_add_specials(t), 4);
  EXPECT_EQ(tok_vocab_size(t), 10);
  EXPECT_EQ(Specials(t), V({6, 7, 8, 9}));
  EXPECT_EQ(tok_get_specials(t).unk, 0);
  EXPECT_EQ(Missing(t, &n), "");
  EXPECT_EQ(n, 0);
  EXPECT_EQ(tok_require_specials(t), STATUS_OK);
  size_t len = 0;
  EXPECT_EQ(std::string(tok_piece(t, 8, &len)), "[MASK]");
  EXPECT_EQ(len, 6u);
  EXPECT_EQ(std::string(tok_piece(t, 5, &len)), U("ab"));
  EXPECT_EQ(tok_piece(t, 10, &len), nullptr);
  EXPECT_EQ(tok_piece_id(t, "[PAD]"), 9);
  EXPECT_EQ(tok_piece_id(t, "ab"), 4);

  /* Text never encodes to an appended token, not even its own name. */
  EXPECT_EQ(Encode(t, text), before);
  EXPECT_EQ(Pieces(t, "[CLS]"), U(" [CLS]"));
  /* The files' ids decode as before; an appended id as its name, set off by
   * one space from the text around it; a control piece's empty text adds
   * no space. */
  EXPECT_EQ(Decode(t, {5, 3, 5}), "abb ab");
  EXPECT_EQ(Decode(t, {6, 5, 3, 7, 5, 7, 9, 9}), "[CLS] abb [SEP] ab [SEP] [PAD] [PAD]");
  EXPECT_EQ(Decode(t, {8}), "[MASK]");
  tok_str s = {};
  int32_t bad = 10;
  EXPECT_EQ(tok_decode(t, &bad, 1, &s), STATUS_ARG);
  tok_str_free(&s);

  /* The fingerprint covers what was appended and is still a function of
   * the file: another load of the same bytes gives the same one. */
  const uint64_t grown = tok_fingerprint(t);
  EXPECT_NE(grown, fp);
  EXPECT_EQ(tok_add_specials(t), 0);
  EXPECT_EQ(tok_fingerprint(t), grown);
  EXPECT_EQ(tok_vocab_size(t), 10);
  tokenizer *again = Load(Model(NoSpecialPieces(), 1, false));
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(tok_fingerprint(again), fp);
  EXPECT_EQ(tok_add_specials(again), 4);
  EXPECT_EQ(tok_fingerprint(again), grown);
}

TEST_F(Spm, AppendsOnlyTheSpecialsNoSpellingCovers) {
  /* spm_train's defaults: <s> and </s> serve as [CLS] and [SEP]; here
   * <pad> is [PAD], so only [MASK] is appended. */
  tokenizer *t = Load(Model(UnigramPieces(), 1, false));
  ASSERT_NE(t, nullptr);
  int n = 0;
  EXPECT_EQ(Missing(t, &n), "[MASK]");
  EXPECT_EQ(tok_add_specials(t), 1);
  EXPECT_EQ(Specials(t), V({1, 2, 10, 9}));
  EXPECT_EQ(tok_vocab_size(t), 11);
  EXPECT_EQ(Decode(t, {1, 7, 10, 4, 2}), "ab [MASK] a");
}

TEST_F(Spm, NothingAppendedWhereTheSpecialsExist) {
  std::vector<Piece> p = NoSpecialPieces();
  for (const char *name : {"[PAD]", "[CLS]", "[SEP]", "[MASK]"}) p.push_back({name, 0, USER});
  tokenizer *t = Load(Model(p, 1, false));
  ASSERT_NE(t, nullptr);
  const uint64_t fp = tok_fingerprint(t);
  EXPECT_EQ(tok_add_specials(t), 0);
  EXPECT_EQ(tok_vocab_size(t), 10);
  EXPECT_EQ(tok_fingerprint(t), fp);
  EXPECT_EQ(Specials(t), V({7, 8, 9, 6}));
  /* Decoding takes the backend's own path: a user-defined piece is text. */
  EXPECT_EQ(Decode(t, {7, 5, 8}), "[CLS] ab[SEP]");
}

}  // namespace
