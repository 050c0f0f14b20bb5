// test_shard.cc: TFRecord framing and mlmpi shards: round trip, the index,
// and damage (flipped bytes, truncation, wrong magic) reported with the file
// and byte offset, never a crash.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "shard.h"

namespace {

std::string tmp(const std::string &name) { return ::testing::TempDir() + name; }

std::vector<unsigned char> slurp(const std::string &p) {
  std::vector<unsigned char> v;
  FILE *f = fopen(p.c_str(), "rb");
  int c;
  while ((c = fgetc(f)) != EOF) v.push_back((unsigned char)c);
  fclose(f);
  return v;
}

void spit(const std::string &p, const std::vector<unsigned char> &v) {
  FILE *f = fopen(p.c_str(), "wb");
  if (!v.empty()) fwrite(v.data(), 1, v.size(), f);  // data() of an empty vector may be NULL
  fclose(f);
}

TEST(TfRecord, FramingMatchesTheFormat) {
  std::string p = tmp("a.tfrecord");
  tfr_writer w;
  ASSERT_EQ(tfr_writer_open(&w, p.c_str()), STATUS_OK);
  uint64_t at[2];
  ASSERT_EQ(tfr_write(&w, "hello", 5, &at[0]), STATUS_OK);
  ASSERT_EQ(tfr_write(&w, "", 0, &at[1]), STATUS_OK);
  ASSERT_EQ(tfr_writer_close(&w), STATUS_OK);
  EXPECT_EQ(at[0], 0u);
  EXPECT_EQ(at[1], 21u);
  std::vector<unsigned char> b = slurp(p);
  ASSERT_EQ(b.size(), 21u + 16u);
  // u64 length 5, little-endian.
  EXPECT_EQ(b[0], 5);
  for (int i = 1; i < 8; i++) EXPECT_EQ(b[i], 0);
  // Masked CRC32C of the 8 length bytes, and of the payload.
  uint32_t lc = b[8] | b[9] << 8 | b[10] << 16 | (uint32_t)b[11] << 24;
  EXPECT_EQ(lc, crc32c_mask(crc32c_update(0, b.data(), 8)));
  EXPECT_EQ(std::string(b.begin() + 12, b.begin() + 17), "hello");
  uint32_t pc = b[17] | b[18] << 8 | b[19] << 16 | (uint32_t)b[20] << 24;
  EXPECT_EQ(pc, crc32c_mask(crc32c_update(0, "hello", 5)));
  tfr_file f;
  ASSERT_EQ(tfr_open(p.c_str(), &f), STATUS_OK);
  uint64_t o = 0;
  const uint8_t *pl;
  size_t n;
  ASSERT_EQ(tfr_read_at(&f, &o, &pl, &n), STATUS_OK);
  EXPECT_EQ(std::string((const char *)pl, n), "hello");
  ASSERT_EQ(tfr_read_at(&f, &o, &pl, &n), STATUS_OK);
  EXPECT_EQ(n, 0u);
  EXPECT_EQ(o, b.size());
  EXPECT_NE(tfr_read_at(&f, &o, &pl, &n), STATUS_OK);
  tfr_close(&f);
}

struct Doc {
  std::vector<int32_t> ids;
  std::vector<uint32_t> ends;
  std::vector<uint8_t> words;
};

std::vector<Doc> make_docs(int n) {
  std::vector<Doc> docs;
  uint32_t s = 7;
  for (int d = 0; d < n; d++) {
    Doc doc;
    int len = 1 + (int)((s = s * 1103515245u + 12345u) >> 16) % 300;
    for (int i = 0; i < len; i++)
      doc.ids.push_back((int32_t)((s = s * 1103515245u + 12345u) >> 16) % 1000);
    for (int e = 17; e < len; e += 17) doc.ends.push_back((uint32_t)e);
    doc.ends.push_back((uint32_t)len);
    doc.words.assign((len + 7) / 8, 0x55);
    docs.push_back(doc);
  }
  return docs;
}

std::string write_shard(const std::string &name, const std::vector<Doc> &docs) {
  std::string p = tmp(name);
  shard_meta m = {};
  m.tokenizer_fingerprint = 0x1234567890abcdefull;
  m.vocab_size = 1000;
  m.cls_id = 1;
  m.sep_id = 2;
  m.mask_id = 3;
  m.pad_id = 0;
  m.unk_id = 4;
  snprintf(m.tokenizer_kind, sizeof m.tokenizer_kind, "sentencepiece");
  snprintf(m.split, sizeof m.split, "train");
  shard_writer *w;
  EXPECT_EQ(shard_writer_open(&w, p.c_str(), &m), STATUS_OK);
  for (const Doc &d : docs)
    EXPECT_EQ(shard_writer_add(w, d.ids.data(), d.ids.size(), d.ends.data(), d.ends.size(),
                               d.words.data()),
              STATUS_OK);
  EXPECT_EQ(shard_writer_close(w), STATUS_OK);
  return p;
}

TEST(Shard, RoundTripWithRandomAccess) {
  std::vector<Doc> docs = make_docs(200);
  std::string p = write_shard("rt.mlms", docs);
  shard_reader *r;
  ASSERT_EQ(shard_open(p.c_str(), &r), STATUS_OK) << status_message();
  EXPECT_EQ(r->n_docs, 200u);
  uint64_t tokens = 0;
  for (const Doc &d : docs) tokens += d.ids.size();
  EXPECT_EQ(r->n_tokens, tokens);
  EXPECT_EQ(r->meta.tokenizer_fingerprint, 0x1234567890abcdefull);
  EXPECT_EQ(r->meta.mask_id, 3);
  EXPECT_STREQ(r->meta.split, "train");
  EXPECT_STREQ(r->meta.tokenizer_kind, "sentencepiece");
  EXPECT_EQ(shard_verify(r), STATUS_OK) << status_message();
  for (uint64_t i : {199ull, 0ull, 57ull, 123ull}) {
    shard_doc d;
    ASSERT_EQ(shard_read_doc(r, i, &d), STATUS_OK);
    EXPECT_EQ(std::vector<int32_t>(d.ids, d.ids + d.n_ids), docs[i].ids);
    EXPECT_EQ(std::vector<uint32_t>(d.sentence_ends, d.sentence_ends + d.n_sentences),
              docs[i].ends);
    ASSERT_NE(d.word_starts, nullptr);
    EXPECT_EQ(d.word_starts[0], 0x55);
    shard_doc_free(&d);
  }
  shard_doc d;
  EXPECT_EQ(shard_read_doc(r, 200, &d), STATUS_ARG);
  shard_close(r);
}

TEST(Shard, EveryFlippedByteIsDetectedWithItsOffset) {
  std::string p = write_shard("flip.mlms", make_docs(5));
  std::vector<unsigned char> good = slurp(p);
  std::string q = tmp("flipped.mlms");
  for (size_t i = 0; i < good.size(); i++) {
    std::vector<unsigned char> bad = good;
    bad[i] ^= 0x10;
    spit(q, bad);
    shard_reader *r;
    status_t st = shard_open(q.c_str(), &r);
    if (st == STATUS_OK) {
      st = shard_verify(r);
      shard_close(r);
    }
    ASSERT_NE(st, STATUS_OK) << "flipped byte " << i << " went unnoticed";
    std::string msg = status_message();
    EXPECT_NE(msg.find(q), std::string::npos) << msg;
    EXPECT_NE(msg.find("byte"), std::string::npos) << msg;
  }
}

TEST(Shard, TruncationAndForeignFilesAreReported) {
  std::string p = write_shard("trunc.mlms", make_docs(5));
  std::vector<unsigned char> good = slurp(p);
  std::string q = tmp("truncated.mlms");
  for (size_t n = 0; n < good.size(); n++) {
    spit(q, std::vector<unsigned char>(good.begin(), good.begin() + n));
    shard_reader *r;
    status_t st = shard_open(q.c_str(), &r);
    if (st == STATUS_OK) {
      st = shard_verify(r);
      shard_close(r);
    }
    ASSERT_NE(st, STATUS_OK) << "truncated to " << n;
  }
  // A valid TFRecord file that is not a shard (wrong magic).
  tfr_writer w;
  ASSERT_EQ(tfr_writer_open(&w, q.c_str()), STATUS_OK);
  ASSERT_EQ(tfr_write(&w, "\x09\x01\x02\x03\x04\x05\x06\x07\x08", 9, nullptr), STATUS_OK);
  ASSERT_EQ(tfr_writer_close(&w), STATUS_OK);
  shard_reader *r;
  EXPECT_EQ(shard_open(q.c_str(), &r), STATUS_FORMAT);
  EXPECT_NE(std::string(status_message()).find("not an mlmpi shard"), std::string::npos);
  EXPECT_EQ(shard_open("/nonexistent.mlms", &r), STATUS_IO);
}

}  // namespace
