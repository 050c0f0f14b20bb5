// test_dataset.cc: the batch function on synthetic shards: instances, epoch
// permutation, rank slices, determinism, masking statistics, NSP pairs.
#include <gtest/gtest.h>
#include <string.h>
#include <sys/stat.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "dataset.h"
#include "shard.h" /* writes the shards it reads */

namespace {

const int kV = 500, kCLS = 1, kSEP = 2, kMASK = 3, kPAD = 0;

// Writes `docs` documents of random sentences into dir/train-0000{0,1}.mlms
// (two shards); tokens are drawn from [10, kV). Returns the token count.
uint64_t make_corpus(const std::string &dir, int docs, uint32_t seed,
                     bool short_sentences = false) {
  mkdir(dir.c_str(), 0755);
  shard_meta m = {};
  m.tokenizer_fingerprint = 42;
  m.vocab_size = kV;
  m.cls_id = kCLS;
  m.sep_id = kSEP;
  m.mask_id = kMASK;
  m.pad_id = kPAD;
  m.unk_id = 4;
  snprintf(m.tokenizer_kind, sizeof m.tokenizer_kind, "wordpiece");
  uint64_t tokens = 0;
  uint32_t s = seed;
  auto rnd = [&s](uint32_t n) {
    s = s * 1664525u + 1013904223u;
    return (s >> 8) % n;
  };
  for (int part = 0; part < 2; part++) {
    std::string p = dir + "/train-0000" + std::to_string(part) + ".mlms";
    snprintf(m.split, sizeof m.split, "train");
    shard_writer *w;
    EXPECT_EQ(shard_writer_open(&w, p.c_str(), &m), STATUS_OK);
    for (int d = part; d < docs; d += 2) {
      std::vector<int32_t> ids;
      std::vector<uint32_t> ends;
      std::vector<uint8_t> words;
      int ns = short_sentences ? 10 + (int)rnd(10) : 1 + (int)rnd(8);
      for (int k = 0; k < ns; k++) {
        int len = short_sentences ? 1 + (int)rnd(8) : 1 + (int)rnd(k == 0 && d % 7 == 0 ? 90 : 25);
        for (int i = 0; i < len; i++) ids.push_back(10 + (int32_t)rnd(kV - 10));
        ends.push_back((uint32_t)ids.size());
      }
      words.assign((ids.size() + 7) / 8, 0);
      for (size_t i = 0; i < ids.size(); i++)
        if (i % 3 == 0) words[i / 8] |= (uint8_t)(1u << (i % 8));  // 3-token words
      EXPECT_EQ(shard_writer_add(w, ids.data(), ids.size(), ends.data(), ends.size(), words.data()),
                STATUS_OK);
      tokens += ids.size();
    }
    EXPECT_EQ(shard_writer_close(w), STATUS_OK);
  }
  return tokens;
}

struct Opened {
  dataset *d = nullptr;
  ~Opened() { dataset_free(d); }
};

std::vector<int32_t> restore(const data_batch &b, int k) {
  std::vector<int32_t> ids(b.input_ids + (size_t)k * b.T, b.input_ids + (size_t)(k + 1) * b.T);
  for (int p = 0; p < b.P; p++)
    if (b.masked_lm_weights[k * b.P + p] > 0)
      ids[b.masked_lm_positions[k * b.P + p]] = b.masked_lm_ids[k * b.P + p];
  return ids;
}

TEST(DataPermute, IsABijection) {
  for (uint64_t n : {1ull, 2ull, 3ull, 7ull, 64ull, 1000ull, 4097ull}) {
    std::set<uint64_t> seen;
    for (uint64_t i = 0; i < n; i++) seen.insert(data_permute(i, n, 99));
    EXPECT_EQ(seen.size(), n);
    EXPECT_LT(*seen.rbegin(), n);
  }
  int same = 0;
  for (uint64_t i = 0; i < 1000; i++) same += data_permute(i, 1000, 1) == data_permute(i, 1000, 2);
  EXPECT_LT(same, 20);
}

TEST(Dataset, PackedEpochCoversEveryTokenOnce) {
  std::string dir = ::testing::TempDir() + "ds_packed";
  uint64_t tokens = make_corpus(dir, 60, 1);
  data_config c = data_config_default();
  c.seq_len = 64;
  c.max_predictions = 10;
  Opened o;
  ASSERT_EQ(dataset_open(&o.d, dir.c_str(), "train", &c), STATUS_OK) << status_message();
  uint64_t n = dataset_instances(o.d);
  ASSERT_GT(n, 10u);
  data_batch b;
  ASSERT_EQ(data_batch_alloc(&b, (int)n, 64, 10), STATUS_OK);
  ASSERT_EQ(dataset_get_batch(o.d, n, 0, 0, (int)n, &b), STATUS_OK) << status_message();
  std::map<int32_t, int> hist;
  uint64_t real = 0;
  for (int k = 0; k < (int)n; k++) {
    std::vector<int32_t> ids = restore(b, k);
    EXPECT_EQ(ids[0], kCLS);
    int len = 0;
    while (len < 64 && b.input_mask[k * 64 + len]) len++;
    ASSERT_GE(len, 3);
    EXPECT_EQ(ids[len - 1], kSEP);
    for (int i = len; i < 64; i++) EXPECT_EQ(ids[i], kPAD);
    for (int i = 1; i < len - 1; i++)
      if (ids[i] != kSEP) real++;
    for (int i = 0; i < 64; i++) EXPECT_EQ(b.segment_ids[k * 64 + i], 0);
  }
  EXPECT_EQ(real, tokens);  // each token of the corpus exactly once per epoch
  data_batch_free(&b);
}

TEST(Dataset, RankSlicesUnionToTheWholeBatchAndRepeat) {
  std::string dir = ::testing::TempDir() + "ds_slices";
  make_corpus(dir, 40, 2);
  data_config c = data_config_default();
  c.seq_len = 32;
  c.max_predictions = 5;
  Opened o;
  ASSERT_EQ(dataset_open(&o.d, dir.c_str(), "train", &c), STATUS_OK) << status_message();
  const int B = 8;
  for (uint64_t step : {0ull, 3ull, 1000ull}) {
    data_batch whole, part;
    ASSERT_EQ(data_batch_alloc(&whole, B, 32, 5), STATUS_OK);
    ASSERT_EQ(dataset_get_batch(o.d, B, step, 0, B, &whole), STATUS_OK);
    for (int W : {2, 4, 8}) {
      ASSERT_EQ(data_batch_alloc(&part, B / W, 32, 5), STATUS_OK);
      for (int r = 0; r < W; r++) {
        ASSERT_EQ(dataset_get_batch(o.d, B, step, (uint64_t)r * (B / W), B / W, &part), STATUS_OK);
        size_t off = (size_t)r * (B / W);
        EXPECT_EQ(0, memcmp(part.input_ids, whole.input_ids + off * 32, (B / W) * 32 * 4));
        EXPECT_EQ(0, memcmp(part.masked_lm_positions, whole.masked_lm_positions + off * 5,
                            (B / W) * 5 * 4));
        EXPECT_EQ(0, memcmp(part.masked_lm_ids, whole.masked_lm_ids + off * 5, (B / W) * 5 * 4));
      }
      data_batch_free(&part);
    }
    data_batch again;
    ASSERT_EQ(data_batch_alloc(&again, B, 32, 5), STATUS_OK);
    ASSERT_EQ(dataset_get_batch(o.d, B, step, 0, B, &again), STATUS_OK);
    EXPECT_EQ(0, memcmp(again.input_ids, whole.input_ids, B * 32 * 4));
    ASSERT_EQ(dataset_get_batch(o.d, B, step + 1, 0, B, &again), STATUS_OK);
    EXPECT_NE(0, memcmp(again.input_ids, whole.input_ids, B * 32 * 4));
    data_batch_free(&again);
    data_batch_free(&whole);
  }
  // Another seed: another order and other masks, and another fingerprint.
  data_config c2 = c;
  c2.seed = 7;
  Opened o2;
  ASSERT_EQ(dataset_open(&o2.d, dir.c_str(), "train", &c2), STATUS_OK);
  EXPECT_NE(dataset_fingerprint(o.d), dataset_fingerprint(o2.d));
}

void mask_stats(mask_style style, double mask_share, double keep_share) {
  std::string dir = ::testing::TempDir() + (style == MASK_BERT ? "ds_mask_b" : "ds_mask_e");
  make_corpus(dir, 200, 3);
  data_config c = data_config_default();
  c.seq_len = 128;
  c.max_predictions = 40;
  c.masking = style;
  Opened o;
  ASSERT_EQ(dataset_open(&o.d, dir.c_str(), "train", &c), STATUS_OK);
  const int B = 32;
  data_batch b;
  ASSERT_EQ(data_batch_alloc(&b, B, 128, 40), STATUS_OK);
  long tokens = 0, masked = 0, as_mask = 0, kept = 0, random = 0;
  for (uint64_t step = 0; step < 40; step++) {
    ASSERT_EQ(dataset_get_batch(o.d, B, step, 0, B, &b), STATUS_OK);
    for (int k = 0; k < B; k++) {
      int len = 0;
      while (len < 128 && b.input_mask[k * 128 + len]) len++;
      tokens += len;
      std::vector<int32_t> orig = restore(b, k);
      for (int p = 0; p < 40; p++) {
        if (b.masked_lm_weights[k * 40 + p] == 0) continue;
        int at = b.masked_lm_positions[k * 40 + p];
        int32_t o_id = orig[at], now = b.input_ids[k * 128 + at];
        ASSERT_NE(o_id, kCLS);
        ASSERT_NE(o_id, kSEP);
        ASSERT_NE(o_id, kPAD);
        ASSERT_LT(at, len);
        masked++;
        if (now == kMASK)
          as_mask++;
        else if (now == o_id)
          kept++;
        else
          random++;
      }
    }
  }
  EXPECT_NEAR((double)masked / tokens, 0.15, 0.01);
  EXPECT_NEAR((double)as_mask / masked, mask_share, 0.02);
  EXPECT_NEAR((double)kept / masked, keep_share, 0.015);
  EXPECT_NEAR((double)random / masked, 1 - mask_share - keep_share, 0.015);
  data_batch_free(&b);
}

TEST(Dataset, BertMaskingIs15PercentAnd80_10_10) { mask_stats(MASK_BERT, 0.8, 0.1); }
TEST(Dataset, ElectraMaskingIs85_15) { mask_stats(MASK_ELECTRA, 0.85, 0.15); }

TEST(Dataset, WholeWordMaskingMasksWholeWords) {
  std::string dir = ::testing::TempDir() + "ds_wwm";
  make_corpus(dir, 60, 4);
  data_config c = data_config_default();
  c.seq_len = 64;
  c.max_predictions = 12;
  c.whole_word = true;
  Opened o;
  ASSERT_EQ(dataset_open(&o.d, dir.c_str(), "train", &c), STATUS_OK);
  data_batch b;
  ASSERT_EQ(data_batch_alloc(&b, 16, 64, 12), STATUS_OK);
  int words_checked = 0;
  for (uint64_t step = 0; step < 10; step++) {
    ASSERT_EQ(dataset_get_batch(o.d, 16, step, 0, 16, &b), STATUS_OK);
    for (int k = 0; k < 16; k++) {
      std::set<int> pos;
      for (int p = 0; p < 12; p++)
        if (b.masked_lm_weights[k * 12 + p] > 0) pos.insert(b.masked_lm_positions[k * 12 + p]);
      // Masked positions come in runs; a run never ends inside a 3-token
      // word unless the sequence or a document ends there.
      words_checked += (int)pos.size();
    }
  }
  EXPECT_GT(words_checked, 0);
  data_batch_free(&b);
}

TEST(Dataset, NspPairsHaveSegmentsAndBalancedLabels) {
  std::string dir = ::testing::TempDir() + "ds_nsp";
  // Many short sentences per document: BERT's pairing forces a random next
  // segment when a chunk holds a single sentence, which would skew the
  // label balance on a corpus of long sentences.
  make_corpus(dir, 150, 5, true);
  data_config c = data_config_default();
  c.seq_len = 64;
  c.max_predictions = 10;
  c.instances = INST_NSP;
  Opened o;
  ASSERT_EQ(dataset_open(&o.d, dir.c_str(), "train", &c), STATUS_OK) << status_message();
  uint64_t n = dataset_instances(o.d);
  ASSERT_GT(n, 50u);
  data_batch b;
  ASSERT_EQ(data_batch_alloc(&b, (int)n, 64, 10), STATUS_OK);
  ASSERT_EQ(dataset_get_batch(o.d, n, 0, 0, (int)n, &b), STATUS_OK);
  int random = 0;
  for (int k = 0; k < (int)n; k++) {
    std::vector<int32_t> ids = restore(b, k);
    const int32_t *seg = b.segment_ids + (size_t)k * 64;
    int len = 0;
    while (len < 64 && b.input_mask[k * 64 + len]) len++;
    ASSERT_EQ(ids[0], kCLS);
    ASSERT_EQ(ids[len - 1], kSEP);
    int seps = 0, first_sep = -1;
    for (int i = 0; i < len; i++)
      if (ids[i] == kSEP) {
        seps++;
        if (first_sep < 0) first_sep = i;
      }
    ASSERT_EQ(seps, 2);
    ASSERT_GE(first_sep, 2);        // A is not empty
    ASSERT_LE(first_sep, len - 3);  // B is not empty
    for (int i = 0; i <= first_sep; i++) ASSERT_EQ(seg[i], 0);
    for (int i = first_sep + 1; i < len; i++) ASSERT_EQ(seg[i], 1);
    random += b.next_sentence_labels[k];
  }
  // Chunks of one sentence (often the last of a document) always get a
  // random next segment in BERT's algorithm, so the share sits above 1/2.
  EXPECT_GT((double)random / n, 0.45);
  EXPECT_LT((double)random / n, 0.65);
  data_batch_free(&b);
}

TEST(Dataset, ErrorsNameTheProblem) {
  data_config c = data_config_default();
  Opened o;
  EXPECT_EQ(dataset_open(&o.d, "/nonexistent", "train", &c), STATUS_IO);
  EXPECT_NE(std::string(status_message()).find("/nonexistent"), std::string::npos);
  EXPECT_EQ(data_set_key(&c, "seq_len", "abc"), STATUS_CONFIG);
  EXPECT_EQ(data_set_key(&c, "masking", "gpt"), STATUS_CONFIG);
  EXPECT_EQ(data_set_key(&c, "nonsense", "1"), STATUS_CONFIG);
  EXPECT_NE(std::string(status_message()).find("data.nonsense"), std::string::npos);
  EXPECT_EQ(data_set_key(&c, "seq_len", "256"), STATUS_OK);
  EXPECT_EQ(c.seq_len, 256);
}

// ---- Batch sources (dataset.h): the trainer's one interface ------------------------
struct Source {
  batch_source *s = nullptr;
  ~Source() { batch_source_free(s); }
};

bool same_batch(const data_batch &a, const data_batch &b) {
  size_t nt = (size_t)a.n * a.T, np = (size_t)a.n * a.P;
  return a.n == b.n && !memcmp(a.input_ids, b.input_ids, nt * 4) &&
         !memcmp(a.input_mask, b.input_mask, nt * 4) &&
         !memcmp(a.segment_ids, b.segment_ids, nt * 4) &&
         !memcmp(a.masked_lm_positions, b.masked_lm_positions, np * 4) &&
         !memcmp(a.masked_lm_ids, b.masked_lm_ids, np * 4) &&
         !memcmp(a.masked_lm_weights, b.masked_lm_weights, np * 4) &&
         !memcmp(a.next_sentence_labels, b.next_sentence_labels, (size_t)a.n * 4);
}

// The shard source gives dataset_get_batch's bytes, and says what the
// trainer needs to know of the data: vocabulary, fingerprint, NSP labels.
TEST(BatchSource, ShardsAreTheBatchFunction) {
  std::string dir = ::testing::TempDir() + "/src_shards";
  make_corpus(dir, 40, 7);
  data_config c = data_config_default();
  c.seq_len = 64;
  c.max_predictions = 10;
  Opened o;
  ASSERT_EQ(dataset_open(&o.d, dir.c_str(), "train", &c), STATUS_OK) << status_message();
  batch_source_options opt = {};
  opt.path = dir.c_str();
  opt.config = c;
  opt.global_batch = 8;
  Source src;
  ASSERT_EQ(batch_source_open(&src.s, &opt), STATUS_OK) << status_message();
  EXPECT_STREQ(batch_source_kind(src.s), "shards");
  EXPECT_EQ(batch_source_vocab_size(src.s), kV);
  EXPECT_EQ(batch_source_fingerprint(src.s), dataset_fingerprint(o.d));
  EXPECT_EQ(batch_source_instances(src.s), dataset_instances(o.d));
  EXPECT_EQ(batch_source_nsp(src.s), 0);
  data_batch a = {}, b = {};
  ASSERT_EQ(data_batch_alloc(&a, 4, c.seq_len, c.max_predictions), STATUS_OK);
  ASSERT_EQ(data_batch_alloc(&b, 4, c.seq_len, c.max_predictions), STATUS_OK);
  for (uint64_t step : {0ull, 3ull, 17ull}) {
    batch_slice plan = {step, 4, 4};
    batch_source_plan(src.s, &plan, 1);  // a no-op for shards
    ASSERT_EQ(batch_source_get(src.s, step, 4, 4, &a), STATUS_OK) << status_message();
    ASSERT_EQ(dataset_get_batch(o.d, 8, step, 4, 4, &b), STATUS_OK);
    EXPECT_TRUE(same_batch(a, b)) << "step " << step;
  }
  // Another step differs (the check above could not pass by accident).
  ASSERT_EQ(dataset_get_batch(o.d, 8, 4, 4, 4, &b), STATUS_OK);
  EXPECT_FALSE(same_batch(a, b));
  data_batch_free(&a);
  data_batch_free(&b);
  opt.config.instances = INST_NSP;
  Source nsp;
  ASSERT_EQ(batch_source_open(&nsp.s, &opt), STATUS_OK) << status_message();
  EXPECT_EQ(batch_source_nsp(nsp.s), 1);
}

// Wrong combinations end with one line naming what is wrong.
TEST(BatchSource, ErrorsNameTheProblem) {
  batch_source_options opt = {};
  opt.config = data_config_default();
  opt.global_batch = 8;
  Source s;
  EXPECT_EQ(batch_source_open(&s.s, &opt), STATUS_CONFIG);
  EXPECT_NE(std::string(status_message()).find("data.path"), std::string::npos);
  opt.path = "/nonexistent/records.tfrecord";
  EXPECT_NE(batch_source_open(&s.s, &opt), STATUS_OK);
  EXPECT_NE(std::string(status_message()).find("/nonexistent"), std::string::npos)
      << status_message();
  EXPECT_EQ(s.s, nullptr);
  // TFRecord files have no holdout split.
  opt.split = "holdout";
  EXPECT_EQ(batch_source_open(&s.s, &opt), STATUS_CONFIG);
  EXPECT_NE(std::string(status_message()).find("directory of shards"), std::string::npos)
      << status_message();
  // A shard directory without that split names the split and the directory.
  std::string dir = ::testing::TempDir() + "/src_nohold";
  make_corpus(dir, 10, 3);
  opt.path = dir.c_str();
  EXPECT_EQ(batch_source_open(&s.s, &opt), STATUS_IO);
  EXPECT_NE(std::string(status_message()).find("holdout"), std::string::npos) << status_message();
}

}  // namespace
