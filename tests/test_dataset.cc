// test_dataset.cc: the batch function on synthetic shards: instances, epoch
// permutation, rank slices, determinism, masking statistics, NSP pairs; the
// batch sources; labelled tasks (JSON Lines) and the task source.
#include <cjson/cJSON.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "dataset.h"
#include "shard.h" /* writes the shards it reads */

#ifndef MLMPI_DATA_BIN
#error "MLMPI_DATA_BIN (the path of mlmpi-data) must be defined"
#endif

namespace {

const int kV = 500, kCLS = 1, kSEP = 2, kMASK = 3, kPAD = 0;

// The header of the tests' shards: a WordPiece vocabulary of kV with the
// specials above, split "train".
shard_meta test_meta() {
  shard_meta m = {};
  m.tokenizer_fingerprint = 42;
  m.vocab_size = kV;
  m.cls_id = kCLS;
  m.sep_id = kSEP;
  m.mask_id = kMASK;
  m.pad_id = kPAD;
  m.unk_id = 4;
  snprintf(m.tokenizer_kind, sizeof m.tokenizer_kind, "wordpiece");
  snprintf(m.split, sizeof m.split, "train");
  return m;
}

// Writes `docs` documents of random sentences into dir/train-0000{0,1}.mlms
// (two shards); tokens are drawn from [10, kV). Returns the token count.
uint64_t make_corpus(const std::string &dir, int docs, uint32_t seed,
                     bool short_sentences = false) {
  mkdir(dir.c_str(), 0755);
  shard_meta m = test_meta();
  uint64_t tokens = 0;
  uint32_t s = seed;
  auto rnd = [&s](uint32_t n) {
    s = s * 1664525u + 1013904223u;
    return (s >> 8) % n;
  };
  for (int part = 0; part < 2; part++) {
    std::string p = dir + "/train-0000" + std::to_string(part) + ".mlms";
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
// ---- Causal-LM batches (data.objective clm) ----------------------------------

// The token stream clm windows are cut from: every document of the two
// shards, in shard then document order, each followed by the end-of-text id.
std::vector<int32_t> clm_stream(const std::string &dir, int32_t eot, int *docs) {
  std::vector<int32_t> s;
  *docs = 0;
  for (const char *f : {"/train-00000.mlms", "/train-00001.mlms"}) {
    shard_reader *r;
    EXPECT_EQ(shard_open((dir + f).c_str(), &r), STATUS_OK) << status_message();
    for (uint64_t i = 0; i < r->n_docs; i++) {
      shard_doc d;
      EXPECT_EQ(shard_read_doc(r, i, &d), STATUS_OK);
      s.insert(s.end(), d.ids, d.ids + d.n_ids);
      s.push_back(eot);
      (*docs)++;
      shard_doc_free(&d);
    }
    shard_close(r);
  }
  return s;
}

data_config clm_config(int T, uint64_t seed = 12345) {
  data_config c = data_config_default();
  EXPECT_EQ(data_set_key(&c, "objective", "clm"), STATUS_OK);
  c.seq_len = T;
  c.max_predictions = 5;
  c.seed = seed;
  return c;
}

TEST(DatasetClm, WindowsAreTheDocumentStreamWithNextTokenTargets) {
  std::string dir = ::testing::TempDir() + "ds_clm";
  make_corpus(dir, 40, 11);
  const int T = 32;
  data_config c = clm_config(T);
  Opened o;
  ASSERT_EQ(dataset_open(&o.d, dir.c_str(), "train", &c), STATUS_OK) << status_message();
  ASSERT_EQ(dataset_eot_id(o.d), kSEP);  // no tokenizer record: the [SEP] slot
  int docs = 0;
  std::vector<int32_t> stream = clm_stream(dir, kSEP, &docs);
  const uint64_t L = stream.size(), n = dataset_instances(o.d);
  ASSERT_EQ(n, (L - 1 + T - 1) / T) << "windows of T + 1 tokens, stride T";
  ASSERT_NE((L - 1) % T, 0u) << "the corpus should end in a short window";
  // One step of global batch n is one epoch: every window exactly once.
  data_batch b;
  ASSERT_EQ(data_batch_alloc(&b, (int)n, T, c.max_predictions), STATUS_OK);
  ASSERT_EQ(dataset_get_batch(o.d, n, 0, 0, (int)n, &b), STATUS_OK) << status_message();
  std::map<std::vector<int32_t>, uint64_t> window_of;
  for (uint64_t k = 0; k < n; k++)
    window_of[std::vector<int32_t>(stream.begin() + (long)(k * T),
                                   stream.begin() + (long)std::min<uint64_t>(k * T + T, L - 1))] =
        k;
  std::set<uint64_t> seen;
  std::vector<int> covered(L, 0);
  int padded_rows = 0, eots = 0, bad = 0;
  for (uint64_t r = 0; r < n; r++) {
    const int32_t *in = b.input_ids + r * T, *tg = b.target_ids + r * T, *mk = b.input_mask + r * T;
    const float *w = b.target_weights + r * T;
    int real = 0;
    while (real < T && mk[real]) real++;
    auto it = window_of.find(std::vector<int32_t>(in, in + real));
    if (it == window_of.end()) {
      ADD_FAILURE() << "row " << r << " is not a window of the document stream";
      continue;
    }
    uint64_t k = it->first.size() == (size_t)real ? it->second : UINT64_MAX;
    seen.insert(k);
    for (int i = 0; i < T; i++) {
      bool is_real = i < real;
      if (is_real) {
        bad += tg[i] != stream[k * T + i + 1] || w[i] != 1.0f;
        covered[k * T + i + 1]++;
        eots += in[i] == kSEP;
      } else {
        bad += mk[i] != 0 || w[i] != 0.0f || in[i] != kSEP || tg[i] != kSEP;
      }
      if (i + 1 < real) bad += tg[i] != in[i + 1];  // targets are the inputs shifted by one
      bad += b.segment_ids[r * T + i] != 0;
    }
    if (real < T) {
      padded_rows++;
      bad += k != n - 1;  // only the stream's last window is short
    }
    for (int p = 0; p < c.max_predictions; p++)
      bad += b.masked_lm_weights[r * c.max_predictions + p] != 0 ||
             b.masked_lm_ids[r * c.max_predictions + p] != 0;
  }
  EXPECT_EQ(bad, 0);
  EXPECT_EQ(seen.size(), n);
  EXPECT_EQ(padded_rows, 1);
  // Every stream token after the first is a target exactly once; the
  // end-of-text id separates the documents (the last one ends the stream).
  EXPECT_EQ(std::count(covered.begin() + 1, covered.end(), 1), (long)(L - 1));
  EXPECT_EQ(eots + 1, docs) << "end-of-text ids among the inputs (the last is only a target)";
  data_batch_free(&b);
  printf(
      "clm: %llu windows of a %llu-token stream of %d documents: rows equal the stream's "
      "windows, targets the inputs shifted by one, every token a target once, end-of-text "
      "between documents, one padded window\n",
      (unsigned long long)n, (unsigned long long)L, docs);
  std::filesystem::remove_all(dir);
}

TEST(DatasetClm, BatchesAreAPureFunctionOfSeedStepAndSlice) {
  std::string dir = ::testing::TempDir() + "ds_clm_pure";
  make_corpus(dir, 40, 12);
  data_config c = clm_config(24, 7), other = clm_config(24, 8), mlm = clm_config(24, 7);
  mlm.objective = OBJECTIVE_MLM;
  Opened a, a2, b, m;
  ASSERT_EQ(dataset_open(&a.d, dir.c_str(), "train", &c), STATUS_OK) << status_message();
  ASSERT_EQ(dataset_open(&a2.d, dir.c_str(), "train", &c), STATUS_OK);
  ASSERT_EQ(dataset_open(&b.d, dir.c_str(), "train", &other), STATUS_OK);
  ASSERT_EQ(dataset_open(&m.d, dir.c_str(), "train", &mlm), STATUS_OK);
  EXPECT_EQ(dataset_fingerprint(a.d), dataset_fingerprint(a2.d));
  EXPECT_NE(dataset_fingerprint(a.d), dataset_fingerprint(m.d)) << "the objective is in the job";
  EXPECT_EQ(dataset_eot_id(m.d), -1);
  const int B = 16;
  data_batch x, y, z, part;
  ASSERT_EQ(data_batch_alloc(&x, B, 24, 5), STATUS_OK);
  ASSERT_EQ(data_batch_alloc(&y, B, 24, 5), STATUS_OK);
  ASSERT_EQ(data_batch_alloc(&z, B, 24, 5), STATUS_OK);
  ASSERT_EQ(data_batch_alloc(&part, 5, 24, 5), STATUS_OK);
  auto same = [&](const data_batch &p, const data_batch &q, int rows, int from) {
    size_t o = (size_t)from * 24, n = (size_t)rows * 24 * 4;
    return !memcmp(p.input_ids + o, q.input_ids, n) && !memcmp(p.input_mask + o, q.input_mask, n) &&
           !memcmp(p.target_ids + o, q.target_ids, n) &&
           !memcmp(p.target_weights + o, q.target_weights, n);
  };
  for (uint64_t step : {0ull, 3ull, 1000ull}) {
    ASSERT_EQ(dataset_get_batch(a.d, B, step, 0, B, &x), STATUS_OK);
    ASSERT_EQ(dataset_get_batch(a2.d, B, step, 0, B, &y), STATUS_OK);
    EXPECT_TRUE(same(x, y, B, 0)) << "step " << step << ": same arguments, other bytes";
    ASSERT_EQ(dataset_get_batch(b.d, B, step, 0, B, &z), STATUS_OK);
    EXPECT_FALSE(same(x, z, B, 0)) << "step " << step << ": another seed, the same batch";
    ASSERT_EQ(dataset_get_batch(a.d, B, step, 7, 5, &part), STATUS_OK);
    EXPECT_TRUE(same(x, part, 5, 7)) << "a slice is those rows of the whole batch";
  }
  ASSERT_EQ(dataset_get_batch(a.d, B, 1, 0, B, &y), STATUS_OK);
  ASSERT_EQ(dataset_get_batch(a.d, B, 0, 0, B, &x), STATUS_OK);
  EXPECT_FALSE(same(x, y, B, 0)) << "steps 0 and 1 gave the same batch";
  printf(
      "clm: equal bytes for equal (seed, step, slice) from two opens, other bytes for another "
      "seed or step, fingerprint differs from the mlm job's\n");
  for (data_batch *p : {&x, &y, &z, &part}) data_batch_free(p);
  std::filesystem::remove_all(dir);
}

// Equal instance counts, equal shards and settings: the objective alone
// must tell the two jobs apart (a service must not serve one for the other).
TEST(DatasetClm, FingerprintHoldsTheObjective) {
  std::string dir = ::testing::TempDir() + "ds_clm_fp";
  mkdir(dir.c_str(), 0755);
  shard_meta m = test_meta();
  shard_writer *w;
  ASSERT_EQ(shard_writer_open(&w, (dir + "/train-00000.mlms").c_str(), &m), STATUS_OK);
  // 8 one-sentence documents of 6 tokens, T 16: packed pairs them (4
  // instances), the clm stream of 56 tokens has 4 windows too.
  for (int d = 0; d < 8; d++) {
    int32_t ids[6];
    for (int i = 0; i < 6; i++) ids[i] = 10 + d * 6 + i;
    uint32_t end = 6;
    ASSERT_EQ(shard_writer_add(w, ids, 6, &end, 1, nullptr), STATUS_OK);
  }
  ASSERT_EQ(shard_writer_close(w), STATUS_OK);
  data_config clm = clm_config(16), mlm = clm;
  mlm.objective = OBJECTIVE_MLM;
  Opened a, b;
  ASSERT_EQ(dataset_open(&a.d, dir.c_str(), "train", &clm), STATUS_OK) << status_message();
  ASSERT_EQ(dataset_open(&b.d, dir.c_str(), "train", &mlm), STATUS_OK) << status_message();
  ASSERT_EQ(dataset_instances(a.d), 4u);
  ASSERT_EQ(dataset_instances(b.d), 4u);
  EXPECT_NE(dataset_fingerprint(a.d), dataset_fingerprint(b.d));
  printf(
      "clm and mlm jobs of 4 instances each on the same shard and settings: fingerprints "
      "%016llx and %016llx\n",
      (unsigned long long)dataset_fingerprint(a.d), (unsigned long long)dataset_fingerprint(b.d));
  std::filesystem::remove_all(dir);
}

TEST(DatasetClm, ObjectiveKeyAndBadCombinations) {
  data_config c = data_config_default();
  EXPECT_EQ(c.objective, OBJECTIVE_MLM);
  EXPECT_EQ(data_set_key(&c, "objective", "gpt"), STATUS_CONFIG);
  EXPECT_NE(std::string(status_message()).find("data.objective: 'gpt' is not mlm or clm"),
            std::string::npos)
      << status_message();
  std::string dir = ::testing::TempDir() + "ds_clm_bad";
  make_corpus(dir, 10, 13);
  c = clm_config(16);
  c.instances = INST_NSP;
  Opened o;
  EXPECT_EQ(dataset_open(&o.d, dir.c_str(), "train", &c), STATUS_CONFIG);
  EXPECT_NE(std::string(status_message()).find("data.instances must be packed"), std::string::npos)
      << status_message();
  // max_predictions only sizes the (zero) masked rows: larger than T is fine.
  c = clm_config(16);
  c.max_predictions = 20;
  ASSERT_EQ(dataset_open(&o.d, dir.c_str(), "train", &c), STATUS_OK) << status_message();
  batch_source_options so = {};
  so.path = "/nonexistent.tfrecord";
  so.config = clm_config(16);
  so.global_batch = 4;
  batch_source *src = nullptr;
  EXPECT_EQ(batch_source_open(&src, &so), STATUS_CONFIG);
  EXPECT_NE(std::string(status_message()).find("not TFRecord files"), std::string::npos)
      << status_message();
  std::filesystem::remove_all(dir);
}

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

// ---- Labelled tasks (dataset.h): JSON Lines examples as rows --------------------------
// A WordPiece vocabulary: [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4, then
// the letters a..z as ids 5..30, so the text "c" is the id 7.
const int kTPad = 0, kTCls = 2, kTSep = 3;
int32_t letter(char c) { return 5 + (c - 'a'); }

void write_file(const std::string &path, const std::string &bytes) {
  FILE *f = fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr) << path;
  fwrite(bytes.data(), 1, bytes.size(), f);
  fclose(f);
}

// Each test process has a directory of its own (ctest may run this file's
// tests side by side), removed when the tests end.
bool task_dir_made = false;
std::string task_dir() {
  static std::string d = [] {
    std::string tmpl = ::testing::TempDir() + "mlmpi_task_XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back(0);
    if (!mkdtemp(buf.data())) abort();
    task_dir_made = true;
    return std::string(buf.data());
  }();
  return d;
}

class TaskDirCleanup : public ::testing::Environment {
 public:
  void TearDown() override {
    if (task_dir_made) std::filesystem::remove_all(task_dir());
  }
};
::testing::Environment *const task_dir_cleanup =
    ::testing::AddGlobalTestEnvironment(new TaskDirCleanup);

std::string task_vocab() {
  static std::string path = [] {
    std::string text = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n";
    for (char c = 'a'; c <= 'z'; c++) text += std::string(1, c) + "\n";
    std::string p = task_dir() + "/vocab.txt";
    write_file(p, text);
    return p;
  }();
  return path;
}

// Writes name under the task directory; returns its path.
std::string task_file(const std::string &name, const std::string &lines) {
  std::string p = task_dir() + "/" + name;
  write_file(p, lines);
  return p;
}

// n tokens of letter c as a text: "c c c".
std::string letters(char c, int n) {
  std::string s;
  for (int i = 0; i < n; i++) s += i ? std::string(" ") + c : std::string(1, c);
  return s;
}

struct Task {
  task_data *t = nullptr;
  ~Task() { task_free(t); }
};

struct TaskArgs {
  int seq_len = 16;
  const char *pair = nullptr;
  const char *const *labels = nullptr;
  int n_labels = 0;
  bool unlabelled = false;
};

status_t open_task(Task &t, const std::string &path, const TaskArgs &a = TaskArgs()) {
  std::string vocab = task_vocab();
  task_options o = {};
  o.path = path.c_str();
  o.tokenizer = vocab.c_str();
  o.pair_field = a.pair;
  o.seq_len = a.seq_len;
  o.labels = a.labels;
  o.n_labels = a.n_labels;
  o.unlabelled = a.unlabelled;
  return task_open(&t.t, &o);
}

struct Batch {
  data_batch b = {};
  Batch(int n, int T, int P) { EXPECT_EQ(data_batch_alloc(&b, n, T, P), STATUS_OK); }
  ~Batch() { data_batch_free(&b); }
  std::vector<int32_t> ids(int i) const { return row(b.input_ids, i); }
  std::vector<int32_t> seg(int i) const { return row(b.segment_ids, i); }
  std::vector<int32_t> mask(int i) const { return row(b.input_mask, i); }
  std::vector<int32_t> row(const int32_t *v, int i) const {
    return std::vector<int32_t>(v + (size_t)i * b.T, v + (size_t)(i + 1) * b.T);
  }
};

// All examples of t in file order, as rows of a batch.
void fill_all(const Task &t, Batch &b) {
  std::vector<int64_t> idx;
  for (uint64_t i = 0; i < task_examples(t.t); i++) idx.push_back((int64_t)i);
  ASSERT_EQ(task_fill(t.t, idx.data(), (int)idx.size(), &b.b), STATUS_OK) << status_message();
}

// [CLS] a.. [SEP] (b.. [SEP]) then [PAD] up to T.
std::vector<int32_t> want_row(const std::string &a, const std::string &b, int T,
                              bool pair = false) {
  std::vector<int32_t> v = {kTCls};
  for (char c : a) v.push_back(letter(c));
  v.push_back(kTSep);
  if (pair || !b.empty()) {
    for (char c : b) v.push_back(letter(c));
    v.push_back(kTSep);
  }
  v.resize(T, kTPad);
  return v;
}

TEST(TaskData, TruncatesTheLongerTextFirst) {
  std::string p = task_file("trunc.jsonl",
                            "{\"text\": \"a b c d e f\", \"pair\": \"x y\", \"label\": \"l\"}\n"
                            "{\"text\": \"a b c d\", \"pair\": \"w x y z\", \"label\": \"l\"}\n"
                            "{\"text\": \"a\", \"pair\": \"p q r s t u v\", \"label\": \"l\"}\n");
  TaskArgs a;
  a.seq_len = 8;  // a budget of 5 text tokens
  a.pair = "pair";
  Task t;
  ASSERT_EQ(open_task(t, p, a), STATUS_OK) << status_message();
  Batch b(3, 8, 0);
  fill_all(t, b);
  EXPECT_EQ(b.ids(0), want_row("abc", "xy", 8));  // only the longer a loses tokens
  EXPECT_EQ(b.ids(1), want_row("abc", "wx", 8));  // ties take from b: 4+4 -> 4+3 -> 3+3 -> 3+2
  EXPECT_EQ(b.ids(2), want_row("a", "pqrs", 8));
  // Single texts keep their first seq_len - 2 tokens.
  std::string q = task_file("trunc1.jsonl", "{\"text\": \"a b c d e f\", \"label\": \"l\"}\n");
  a.pair = nullptr;
  a.seq_len = 5;
  Task s;
  ASSERT_EQ(open_task(s, q, a), STATUS_OK) << status_message();
  Batch c(1, 5, 0);
  fill_all(s, c);
  EXPECT_EQ(c.ids(0), want_row("abc", "", 5));
}

// Every pair of lengths against the closed form of Hugging Face's
// longest_first rule: a text keeps its length when it is at most its half of
// the budget (a's half rounded up), else the other text's leftover.
TEST(TaskData, LongestFirstMatchesItsClosedFormForAllLengths) {
  const int N = 9;
  std::string lines;
  for (int la = 0; la < N; la++)
    for (int lb = 0; lb < N; lb++)
      lines += "{\"text\": \"" + letters('a', la) + "\", \"b\": \"" + letters('b', lb) +
               "\", \"label\": 0}\n";
  std::string p = task_file("lengths.jsonl", lines);
  for (int T : {8, 9}) {  // an odd budget (where ties matter) and an even one
    const int B = T - 3;
    TaskArgs args;
    args.seq_len = T;
    args.pair = "b";
    Task t;
    ASSERT_EQ(open_task(t, p, args), STATUS_OK) << status_message();
    Batch b(N * N, T, 0);
    fill_all(t, b);
    for (int la = 0; la < N; la++)
      for (int lb = 0; lb < N; lb++) {
        int ka = la, kb = lb;
        if (la + lb > B) {
          ka = la <= (B + 1) / 2 ? la : lb <= B / 2 ? B - lb : (B + 1) / 2;
          kb = B - ka;
        }
        EXPECT_EQ(b.ids(la * N + lb), want_row(std::string(ka, 'a'), std::string(kb, 'b'), T, true))
            << la << " + " << lb << " in " << T;
      }
  }
}

TEST(TaskData, SegmentIdsMaskAndPadding) {
  std::string p = task_file("seg.jsonl", "{\"text\": \"a b\", \"pair\": \"c\", \"label\": 1}\n");
  TaskArgs a;
  a.seq_len = 10;
  a.pair = "pair";
  Task t;
  ASSERT_EQ(open_task(t, p, a), STATUS_OK) << status_message();
  Batch b(1, 10, 0);
  fill_all(t, b);
  EXPECT_EQ(b.ids(0), want_row("ab", "c", 10));
  EXPECT_EQ(b.seg(0), (std::vector<int32_t>{0, 0, 0, 0, 1, 1, 0, 0, 0, 0}));
  EXPECT_EQ(b.mask(0), (std::vector<int32_t>{1, 1, 1, 1, 1, 1, 0, 0, 0, 0}));
  EXPECT_EQ(b.b.next_sentence_labels[0], 0);
  EXPECT_EQ(task_vocab_size(t.t), 31);
  EXPECT_NE(task_tokenizer_fingerprint(t.t), 0u);
}

std::vector<std::string> labels_of(const Task &t) {
  const char *const *l = task_labels(t.t);
  return std::vector<std::string>(l, l + task_n_labels(t.t));
}

std::vector<int32_t> label_ids(const Task &t) {
  Batch b((int)task_examples(t.t), 4, 0);
  fill_all(t, b);
  return std::vector<int32_t>(b.b.next_sentence_labels, b.b.next_sentence_labels + b.b.n);
}

TEST(TaskData, LabelsAreSortedByBytesOrByValue) {
  TaskArgs a;
  a.seq_len = 4;
  Task s;
  ASSERT_EQ(open_task(s,
                      task_file("str.jsonl",
                                "{\"text\":\"a\",\"label\":\"pos\"}\n{\"text\":\"a\",\"label\":"
                                "\"neg\"}\n\n{\"text\":\"a\",\"label\":\"neutral\"}\n{\"text\":"
                                "\"a\",\"label\":\"pos\"}\n"),
                      a),
            STATUS_OK)
      << status_message();
  EXPECT_EQ(labels_of(s), (std::vector<std::string>{"neg", "neutral", "pos"}));
  EXPECT_EQ(label_ids(s), (std::vector<int32_t>{2, 0, 1, 2}));
  // Integers by value: 2 before 10, negatives first.
  Task n;
  ASSERT_EQ(open_task(n,
                      task_file("int.jsonl",
                                "{\"text\":\"a\",\"label\":10}\n{\"text\":\"a\",\"label\":2}\n{"
                                "\"text\":\"a\",\"label\":-1}\n"),
                      a),
            STATUS_OK)
      << status_message();
  EXPECT_EQ(labels_of(n), (std::vector<std::string>{"-1", "2", "10"}));
  EXPECT_EQ(label_ids(n), (std::vector<int32_t>{2, 1, 0}));
  // One string among the integers: all by bytes, "10" before "2".
  Task m;
  ASSERT_EQ(
      open_task(m,
                task_file("mixed.jsonl",
                          "{\"text\":\"a\",\"label\":10}\n{\"text\":\"a\",\"label\":\"2\"}\n"),
                a),
      STATUS_OK)
      << status_message();
  EXPECT_EQ(labels_of(m), (std::vector<std::string>{"10", "2"}));
  // The same data give the same fingerprint; other labels another.
  Task n2;
  ASSERT_EQ(open_task(n2, task_dir() + "/int.jsonl", a), STATUS_OK);
  EXPECT_EQ(task_fingerprint(n.t), task_fingerprint(n2.t));
  EXPECT_NE(task_fingerprint(n.t), task_fingerprint(m.t));
  a.seq_len = 5;
  Task n3;
  ASSERT_EQ(open_task(n3, task_dir() + "/int.jsonl", a), STATUS_OK);
  EXPECT_NE(task_fingerprint(n.t), task_fingerprint(n3.t));
}

TEST(TaskData, DevFilesMapOntoTheTrainingLabels) {
  const char *train[] = {"pos", "neg"};  // the given order is the id order
  TaskArgs a;
  a.seq_len = 4;
  a.labels = train;
  a.n_labels = 2;
  Task t;
  std::string p = task_file("dev.jsonl", "{\"text\":\"a\",\"label\":\"neg\"}\n");
  ASSERT_EQ(open_task(t, p, a), STATUS_OK) << status_message();
  EXPECT_EQ(label_ids(t), (std::vector<int32_t>{1}));
  EXPECT_EQ(labels_of(t), (std::vector<std::string>{"pos", "neg"}));
  std::string q =
      task_file("dev_bad.jsonl",
                "{\"text\":\"a\",\"label\":\"pos\"}\n\n{\"text\":\"a\",\"label\":\"meh\"}\n");
  Task u;
  EXPECT_EQ(open_task(u, q, a), STATUS_FORMAT);
  EXPECT_EQ(std::string(status_message()),
            q + ":3: label 'meh' is not one of the 2 labels of the training file");
  EXPECT_EQ(u.t, nullptr);
}

// Each bad line (line 3, after a good line and a blank one) fails with one
// line naming the file, the line and what is wrong.
TEST(TaskData, MalformedLinesNameFileAndLine) {
  struct Case {
    const char *line, *says;
  } cases[] = {
      {"not json", "not JSON"},
      {"{\"text\":\"a\",\"label\":\"x\"} trailing", "not JSON"},
      {"{\"text\":\"a\",", "not JSON"},
      {"[1, 2]", "not a JSON object"},
      {"\"text\"", "not a JSON object"},
      {"{\"label\":\"x\"}", "no field \"text\""},
      {"{\"text\":5,\"label\":\"x\"}", "field \"text\" is a number, not a string"},
      {"{\"text\":null,\"label\":\"x\"}", "field \"text\" is null"},
      {"{\"text\":\"a\"}", "no field \"label\""},
      {"{\"text\":\"a\",\"label\":true}", "field \"label\" is a boolean"},
      {"{\"text\":\"a\",\"label\":0.5}", "is a number that is not an integer"},
      {"{\"text\":\"a\",\"label\":1e300}", "is a number that is not an integer"},
      {"{\"text\":\"a\",\"label\":{}}", "field \"label\" is an object"},
      {"{\"text\":\"a\",\"label\":[1]}", "field \"label\" is an array"},
      {"{\"text\":\"a\",\"label\":null}", "field \"label\" is null"},
  };
  TaskArgs a;
  a.seq_len = 8;
  for (const Case &c : cases) {
    std::string p = task_file(
        "bad.jsonl", std::string("{\"text\":\"a\",\"label\":\"x\"}\n  \n") + c.line + "\n");
    Task t;
    EXPECT_EQ(open_task(t, p, a), STATUS_FORMAT) << c.line;
    std::string m = status_message();
    EXPECT_EQ(m.rfind(p + ":3: ", 0), 0u) << m;
    EXPECT_NE(m.find(c.says), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    EXPECT_EQ(t.t, nullptr);
  }
  // A pair task names its missing second text.
  std::string p = task_file("nopair.jsonl", "{\"text\":\"a\",\"label\":\"x\"}\n");
  a.pair = "hypothesis";
  Task t;
  EXPECT_EQ(open_task(t, p, a), STATUS_FORMAT);
  EXPECT_EQ(std::string(status_message()), p + ":1: no field \"hypothesis\"");
}

// Hostile bytes end in an error or a row, never a crash, and every error is one line.
TEST(TaskData, HostileInputIsAnErrorOrARow) {
  std::string deep(100000, '['), huge(1 << 20, 'a');
  std::vector<std::string> lines = {
      "{\"text\":\"\xff\xfe\x80 a \xc3\",\"label\":\"\xff\"}",
      std::string("{\"text\":\"a\0b\",\"label\":\"x\"}", 26),
      std::string("{\"text\":\"a\",\"label\":\"x\"}\0garbage", 32),
      "{\"text\":\"a\\u0000b\",\"label\":\"\\u0000\"}",
      "{\"text\":\"" + huge + "\",\"label\":\"x\"}",
      "{\"text\":\"" + letters('b', 100000) + "\",\"label\":\"x\"}",
      deep,
      "{\"text\":\"a\",\"label\":\"" + huge + "\"}",
      "\xef\xbb\xbf{\"text\":\"a\",\"label\":\"x\"}",
      "{\"text\":\"a\",\"label\":\"x\"}\r",
      "{}",
      "\x01",
  };
  const char *given[] = {"x"};
  for (const std::string &l : lines)
    for (bool dev : {false, true}) {
      TaskArgs a;
      a.seq_len = 6;
      if (dev) a.labels = given, a.n_labels = 1;
      Task t;
      if (open_task(t, task_file("hostile.jsonl", l + "\n"), a) != STATUS_OK) {
        EXPECT_EQ(std::string(status_message()).find('\n'), std::string::npos) << status_message();
        EXPECT_LT(strlen(status_message()), 400u);
        continue;
      }
      Batch b(1, 6, 2);
      fill_all(t, b);
      EXPECT_EQ(b.ids(0)[0], kTCls);
    }
}

TEST(TaskData, EmptyFilesAndBadOptionsAreErrors) {
  TaskArgs a;
  for (const char *text : {"", "\n\n  \n\t\r\n"}) {
    std::string p = task_file("empty.jsonl", text);
    Task t;
    EXPECT_EQ(open_task(t, p, a), STATUS_FORMAT);
    EXPECT_EQ(std::string(status_message()), p + ": no examples");
  }
  Task t;
  EXPECT_EQ(open_task(t, task_dir() + "/absent.jsonl", a), STATUS_IO);
  EXPECT_NE(std::string(status_message()).find("absent.jsonl"), std::string::npos);
  std::string p = task_file("one.jsonl", "{\"text\":\"a\",\"label\":\"x\"}\n");
  a.seq_len = 1;
  EXPECT_EQ(open_task(t, p, a), STATUS_ARG);
  a.seq_len = 2;
  a.pair = "b";
  EXPECT_EQ(open_task(t, p, a), STATUS_ARG);
  a.pair = nullptr;
  const char *twice[] = {"x", "x"};
  a.labels = twice;
  a.n_labels = 2;
  EXPECT_EQ(open_task(t, p, a), STATUS_ARG);
  EXPECT_NE(std::string(status_message()).find("'x' twice"), std::string::npos);
  a.n_labels = 0;
  EXPECT_EQ(open_task(t, p, a), STATUS_ARG);
  // A tokenizer without [CLS] [SEP] [PAD] cannot make rows.
  write_file(task_dir() + "/bare.txt", "[UNK]\na\n");
  task_options o = {};
  o.path = p.c_str();
  std::string bare = task_dir() + "/bare.txt";
  o.tokenizer = bare.c_str();
  o.seq_len = 8;
  EXPECT_EQ(task_open(&t.t, &o), STATUS_ARG);
  EXPECT_NE(std::string(status_message()).find("[CLS] [SEP] [PAD]"), std::string::npos)
      << status_message();
  EXPECT_EQ(t.t, nullptr);
}

TEST(TaskData, AtMost512Labels) {
  std::string lines;
  for (int i = 0; i <= TASK_MAX_LABELS; i++)
    lines += "{\"text\":\"a\",\"label\":" + std::to_string(i) + "}\n";
  TaskArgs a;
  Task t;
  EXPECT_EQ(open_task(t, task_file("many.jsonl", lines), a), STATUS_FORMAT);
  EXPECT_NE(std::string(status_message()).find(":513: label '512'"), std::string::npos)
      << status_message();
  lines.resize(lines.rfind("{"));
  ASSERT_EQ(open_task(t, task_file("many.jsonl", lines), a), STATUS_OK) << status_message();
  EXPECT_EQ(task_n_labels(t.t), TASK_MAX_LABELS);
  EXPECT_STREQ(task_labels(t.t)[TASK_MAX_LABELS - 1], "511");
}

TEST(TaskData, UnlabelledFilesNeedNoLabels) {
  std::string p = task_file("pred.jsonl", "{\"text\":\"a\"}\n{\"text\":\"b\",\"label\":true}\n");
  TaskArgs a;
  a.seq_len = 4;
  a.unlabelled = true;
  Task t;
  ASSERT_EQ(open_task(t, p, a), STATUS_OK) << status_message();
  EXPECT_EQ(task_n_labels(t.t), 0);
  EXPECT_EQ(label_ids(t), (std::vector<int32_t>{-1, -1}));
  // With the training labels given, they are still there to name predictions.
  const char *train[] = {"neg", "pos"};
  a.labels = train;
  a.n_labels = 2;
  Task u;
  ASSERT_EQ(open_task(u, p, a), STATUS_OK) << status_message();
  EXPECT_EQ(labels_of(u), (std::vector<std::string>{"neg", "pos"}));
  EXPECT_EQ(label_ids(u), (std::vector<int32_t>{-1, -1}));
}

TEST(TaskData, FillsPaddingRowsAndBatchesWithoutMaskedSlots) {
  std::string p = task_file("fill.jsonl", "{\"text\":\"a b\",\"label\":\"x\"}\n");
  TaskArgs a;
  a.seq_len = 6;
  Task t;
  ASSERT_EQ(open_task(t, p, a), STATUS_OK) << status_message();
  Batch b(3, 6, 0);  // P 0: a fine-tuning batch
  ASSERT_NE(b.b.masked_lm_positions, nullptr);
  const int64_t idx[3] = {-1, 0, -1};
  ASSERT_EQ(task_fill(t.t, idx, 3, &b.b), STATUS_OK) << status_message();
  EXPECT_EQ(b.b.n, 3);
  EXPECT_EQ(b.ids(0), want_row("", "", 6));
  EXPECT_EQ(b.mask(0), (std::vector<int32_t>{1, 1, 0, 0, 0, 0}));
  EXPECT_EQ(b.ids(1), want_row("ab", "", 6));
  EXPECT_EQ((std::vector<int32_t>(b.b.next_sentence_labels, b.b.next_sentence_labels + 3)),
            (std::vector<int32_t>{-1, 0, -1}));
  // A batch with masked slots gets them zeroed, whatever they held.
  Batch m(2, 6, 3);
  for (int i = 0; i < 6; i++)
    m.b.masked_lm_positions[i] = m.b.masked_lm_ids[i] = 9, m.b.masked_lm_weights[i] = 1;
  ASSERT_EQ(task_fill(t.t, idx, 2, &m.b), STATUS_OK);
  for (int i = 0; i < 6; i++) {
    EXPECT_EQ(m.b.masked_lm_positions[i], 0);
    EXPECT_EQ(m.b.masked_lm_ids[i], 0);
    EXPECT_EQ(m.b.masked_lm_weights[i], 0.0f);
  }
  // The batch's T must be the task's seq_len; indexes must be examples.
  Batch w(1, 8, 0);
  EXPECT_EQ(task_fill(t.t, idx + 1, 1, &w.b), STATUS_ARG);
  const int64_t past = 1;
  EXPECT_EQ(task_fill(t.t, &past, 1, &b.b), STATUS_ARG);
  EXPECT_EQ(task_steps_per_epoch(10, 4), 3u);
  EXPECT_EQ(task_steps_per_epoch(8, 4), 2u);
  EXPECT_EQ(task_steps_per_epoch(3, 4), 1u);
}

// ---- The task as a batch source ---------------------------------------------------
// N examples whose texts are single distinct letters, so a row's second id
// names its example.
const int kTaskN = 10;
std::string letter_task() {
  std::string lines;
  for (int i = 0; i < kTaskN; i++)
    lines += "{\"text\":\"" + std::string(1, (char)('a' + i)) +
             "\",\"label\":" + std::to_string(i % 3) + "}\n";
  return task_file("letters.jsonl", lines);
}

std::vector<int> examples_of(const data_batch &b) {
  std::vector<int> v;
  for (int i = 0; i < b.n; i++)
    v.push_back(b.input_mask[i * b.T + 2] ? b.input_ids[i * b.T + 1] - 5 : -1);
  return v;
}

struct TaskSource {
  Task task;
  Source src;
  batch_source_options opt = {};
  TaskSource(uint64_t gb, uint64_t seed, bool ordered) {
    TaskArgs a;
    a.seq_len = 4;
    EXPECT_EQ(open_task(task, letter_task(), a), STATUS_OK) << status_message();
    opt.task = task.t;
    opt.global_batch = gb;
    opt.task_seed = seed;
    opt.ordered = ordered;
    opt.config = data_config_default();
    EXPECT_EQ(batch_source_open(&src.s, &opt), STATUS_OK) << status_message();
  }
  std::vector<int> get(uint64_t step, uint64_t first, int count) {
    Batch b(count, 4, 0);
    EXPECT_EQ(batch_source_get(src.s, step, first, count, &b.b), STATUS_OK) << status_message();
    return examples_of(b.b);
  }
};

TEST(BatchSource, TaskEpochsArePermutations) {
  const uint64_t GB = 4, S = 3;  // 10 examples: 3 steps, the last wrapping by 2
  TaskSource ts(GB, 5, false);
  EXPECT_STREQ(batch_source_kind(ts.src.s), "task");
  EXPECT_EQ(batch_source_nsp(ts.src.s), 1);
  EXPECT_EQ(batch_source_vocab_size(ts.src.s), 31);
  EXPECT_EQ(batch_source_instances(ts.src.s), (uint64_t)kTaskN);
  EXPECT_EQ(batch_source_tokenizer_fingerprint(ts.src.s), task_tokenizer_fingerprint(ts.task.t));
  char *abs = realpath(task_vocab().c_str(), nullptr);
  EXPECT_STREQ(batch_source_tokenizer(ts.src.s), abs);
  free(abs);
  std::vector<std::vector<int>> epochs;
  for (uint64_t e = 0; e < 3; e++) {
    std::vector<int> order;
    for (uint64_t k = 0; k < S; k++)
      for (int x : ts.get(e * S + k, 0, (int)GB)) order.push_back(x);
    ASSERT_EQ(order.size(), 12u);
    std::set<int> once(order.begin(), order.begin() + kTaskN);
    EXPECT_EQ(once.size(), (size_t)kTaskN) << "epoch " << e;
    EXPECT_EQ(*once.begin(), 0);
    EXPECT_EQ(*once.rbegin(), kTaskN - 1);
    EXPECT_EQ(order[10], order[0]);  // the documented wrap to the permutation's start
    EXPECT_EQ(order[11], order[1]);
    epochs.push_back(order);
  }
  EXPECT_NE(epochs[0], epochs[1]);
  EXPECT_NE(epochs[1], epochs[2]);
  // The same (seed, step, first, count) gives the same rows; rank slices
  // put together give the whole global batch.
  for (uint64_t step : {0ull, 4ull, 1000ull}) {
    std::vector<int> whole = ts.get(step, 0, (int)GB);
    EXPECT_EQ(ts.get(step, 0, (int)GB), whole);
    std::vector<int> parts = ts.get(step, 0, 1);
    for (int x : ts.get(step, 1, 3)) parts.push_back(x);
    EXPECT_EQ(parts, whole);
    std::vector<int> halves = ts.get(step, 0, 2);
    for (int x : ts.get(step, 2, 2)) halves.push_back(x);
    EXPECT_EQ(halves, whole);
  }
  // The labels travel with the rows.
  Batch b(4, 4, 0);
  ASSERT_EQ(batch_source_get(ts.src.s, 1, 0, 4, &b.b), STATUS_OK);
  for (int i = 0; i < 4; i++) EXPECT_EQ(b.b.next_sentence_labels[i], (b.ids(i)[1] - 5) % 3);
  // Another seed: another order and another fingerprint.
  TaskSource other(GB, 6, false);
  std::vector<int> o;
  for (uint64_t k = 0; k < S; k++)
    for (int x : other.get(k, 0, (int)GB)) o.push_back(x);
  EXPECT_NE(o, epochs[0]);
  EXPECT_NE(batch_source_fingerprint(other.src.s), batch_source_fingerprint(ts.src.s));
}

TEST(BatchSource, OrderedTaskPadsPastTheEnd) {
  TaskSource ts(4, 5, true);
  EXPECT_EQ(ts.get(0, 0, 4), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(ts.get(1, 2, 2), (std::vector<int>{6, 7}));
  EXPECT_EQ(ts.get(2, 0, 4), (std::vector<int>{8, 9, -1, -1}));
  EXPECT_EQ(ts.get(~0ull / 2, 0, 2), (std::vector<int>{-1, -1}));  // no overflow into range
  Batch b(4, 4, 0);
  ASSERT_EQ(batch_source_get(ts.src.s, 2, 0, 4, &b.b), STATUS_OK);
  EXPECT_EQ(b.b.next_sentence_labels[1], 9 % 3);
  EXPECT_EQ(b.b.next_sentence_labels[2], -1);
  EXPECT_EQ(b.b.next_sentence_labels[3], -1);
  EXPECT_EQ(b.ids(3), want_row("", "", 4));
  TaskSource shuffled(4, 5, false);
  EXPECT_NE(batch_source_fingerprint(shuffled.src.s), batch_source_fingerprint(ts.src.s));
}

// `mlmpi-data shard` records its tokenizer beside the shards; the shard
// source reports it, and a task on the same tokenizer has its fingerprint.
TEST(BatchSource, ShardsReportTheTokenizerTheyWereMadeWith) {
  std::string dir = task_dir() + "/shards",
              corpus = task_file("corpus.txt", "a b c\nd e\n\nf g h\n");
  std::string cmd = std::string(MLMPI_DATA_BIN) + " shard --tokenizer " + task_vocab() + " --out " +
                    dir + " " + corpus + " 2>/dev/null";
  ASSERT_EQ(system(cmd.c_str()), 0) << cmd;
  char *text = nullptr;
  size_t len = 0;
  ASSERT_EQ(core_read_file("", (dir + "/mlmpi-tokenizer.json").c_str(), 0, &text, &len), STATUS_OK)
      << status_message();
  EXPECT_NE(access((dir + "/mlmpi-tokenizer.json.tmp").c_str(), F_OK), 0);
  cJSON *j = cJSON_Parse(text);
  free(text);
  ASSERT_NE(j, nullptr);
  char *abs = realpath(task_vocab().c_str(), nullptr);
  EXPECT_STREQ(cJSON_GetStringValue(cJSON_GetObjectItem(j, "path")), abs);
  EXPECT_STREQ(cJSON_GetStringValue(cJSON_GetObjectItem(j, "kind")), "wordpiece");
  EXPECT_EQ(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "vocab_size")), 31.0);
  EXPECT_EQ(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "added_specials")), 0.0);
  std::string fp = cJSON_GetStringValue(cJSON_GetObjectItem(j, "fingerprint"));
  cJSON_Delete(j);
  batch_source_options opt = {};
  opt.path = dir.c_str();
  opt.config = data_config_default();
  opt.global_batch = 2;
  Source src;
  ASSERT_EQ(batch_source_open(&src.s, &opt), STATUS_OK) << status_message();
  EXPECT_STREQ(batch_source_tokenizer(src.s), abs);
  free(abs);
  char hex[17];
  snprintf(hex, sizeof hex, "%016llx",
           (unsigned long long)batch_source_tokenizer_fingerprint(src.s));
  EXPECT_EQ(fp, hex);
  Task t;
  ASSERT_EQ(open_task(t, letter_task()), STATUS_OK);
  EXPECT_EQ(batch_source_tokenizer_fingerprint(src.s), task_tokenizer_fingerprint(t.t));
  // A record whose fingerprint is not the shards' is stale and ignored.
  write_file(dir + "/mlmpi-tokenizer.json", "{\"path\": \"/elsewhere\", \"fingerprint\": \"1\"}\n");
  Source stale;
  ASSERT_EQ(batch_source_open(&stale.s, &opt), STATUS_OK) << status_message();
  EXPECT_STREQ(batch_source_tokenizer(stale.s), "");
  EXPECT_EQ(batch_source_tokenizer_fingerprint(stale.s), task_tokenizer_fingerprint(t.t));
  // Shards without a record: the header's fingerprint and no path.
  std::string old = task_dir() + "/old_shards";
  make_corpus(old, 10, 3);
  opt.path = old.c_str();
  Source o;
  ASSERT_EQ(batch_source_open(&o.s, &opt), STATUS_OK) << status_message();
  EXPECT_STREQ(batch_source_tokenizer(o.s), "");
  EXPECT_EQ(batch_source_tokenizer_fingerprint(o.s), 42u);
}

}  // namespace
