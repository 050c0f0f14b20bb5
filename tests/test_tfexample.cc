// test_tfexample.cc: BERT's tf.train.Example records: row round trips,
// hand-encoded wire variants (unpacked lists, shuffled entries, repeated
// names), every feature error, the TFRecord batch source (index, epoch
// permutation, slices, fingerprint, globs), damage and the JSON dump.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "tfexample.h"
#include "tfrecord.h"

namespace {

const int kV = 300, kCLS = 1, kSEP = 2, kMASK = 3, kPAD = 0;

std::string Scratch(const std::string &name) {
  std::string d = ::testing::TempDir() + "mlmpi_tfx_" + std::to_string(getpid()) + "_" + name;
  mkdir(d.c_str(), 0755);
  return d;
}

struct Batch {
  data_batch b{};
  Batch(int n, int T, int P) { EXPECT_EQ(data_batch_alloc(&b, n, T, P), STATUS_OK); }
  ~Batch() { data_batch_free(&b); }
  std::vector<int32_t> Ints(const int32_t *base, int k, int w) const {
    return std::vector<int32_t>(base + (size_t)k * w, base + (size_t)(k + 1) * w);
  }
  // Every field of row k, weights as their bits.
  std::vector<int64_t> Row(int k) const {
    std::vector<int64_t> r;
    for (auto *f : {b.input_ids, b.input_mask, b.segment_ids})
      for (int32_t v : Ints(f, k, b.T)) r.push_back(v);
    for (auto *f : {b.masked_lm_positions, b.masked_lm_ids})
      for (int32_t v : Ints(f, k, b.P)) r.push_back(v);
    for (int j = 0; j < b.P; j++) {
      uint32_t bits;
      memcpy(&bits, &b.masked_lm_weights[(size_t)k * b.P + j], 4);
      r.push_back(bits);
    }
    r.push_back(b.next_sentence_labels[k]);
    return r;
  }
};

uint32_t Lcg(uint32_t &s) { return s = s * 1664525u + 1013904223u, s >> 8; }

void FillRandom(data_batch *b, uint32_t seed) {
  for (int k = 0; k < b->n; k++) {
    for (int i = 0; i < b->T; i++) {
      size_t at = (size_t)k * b->T + i;
      b->input_ids[at] = (int32_t)Lcg(seed) - (1 << 22);  // negative ids too
      b->input_mask[at] = Lcg(seed) & 1;
      b->segment_ids[at] = Lcg(seed) % 3;
    }
    for (int j = 0; j < b->P; j++) {
      size_t at = (size_t)k * b->P + j;
      b->masked_lm_positions[at] = (int32_t)(Lcg(seed) % b->T);
      b->masked_lm_ids[at] = INT32_MAX - (int32_t)(Lcg(seed) % 5);
      b->masked_lm_weights[at] = (float)Lcg(seed) / 1e5f - 50.0f;
    }
    b->next_sentence_labels[k] = (int32_t)(Lcg(seed) % 2);
  }
}

// ---- Protobuf wire bytes by hand ------------------------------------------------
typedef std::string Bytes;

Bytes Varint(uint64_t v) {
  Bytes o;
  do {
    uint8_t c = v & 0x7f;
    v >>= 7;
    o.push_back((char)(v ? c | 0x80 : c));
  } while (v);
  return o;
}
Bytes Ld(int field, const Bytes &body) {
  return Varint((uint64_t)field << 3 | 2) + Varint(body.size()) + body;
}
Bytes Int64sUnpacked(const std::vector<int64_t> &v) {
  Bytes o;
  for (int64_t x : v) o += Varint(1 << 3 | 0) + Varint((uint64_t)x);
  return o;
}
Bytes Int64sPacked(const std::vector<int64_t> &v) {
  Bytes body;
  for (int64_t x : v) body += Varint((uint64_t)x);
  return Ld(1, body);
}
Bytes FloatsUnpacked(const std::vector<float> &v) {
  Bytes o;
  for (float x : v) o += Varint(1 << 3 | 5) + Bytes((const char *)&x, 4);
  return o;
}
Bytes IntFeature(const std::vector<int64_t> &v, bool packed) {
  return Ld(3, packed ? Int64sPacked(v) : Int64sUnpacked(v));
}
Bytes Entry(const std::string &key, const Bytes &feature, bool value_first = false) {
  return value_first ? Ld(2, feature) + Ld(1, key) : Ld(1, key) + Ld(2, feature);
}
Bytes Example(const std::vector<Bytes> &entries) {
  Bytes fs;
  for (auto &e : entries) fs += Ld(1, e);
  return Ld(1, fs);
}

// The features of row k as entries (unpacked lists unless told), BERT's order.
std::vector<Bytes> RowEntries(const data_batch &b, int k, bool packed = false) {
  auto ints = [&](const int32_t *base, int w) {
    return std::vector<int64_t>(base + (size_t)k * w, base + (size_t)(k + 1) * w);
  };
  std::vector<float> w(b.masked_lm_weights + (size_t)k * b.P,
                       b.masked_lm_weights + (size_t)(k + 1) * b.P);
  return {Entry("input_ids", IntFeature(ints(b.input_ids, b.T), packed)),
          Entry("input_mask", IntFeature(ints(b.input_mask, b.T), packed)),
          Entry("segment_ids", IntFeature(ints(b.segment_ids, b.T), packed)),
          Entry("masked_lm_positions", IntFeature(ints(b.masked_lm_positions, b.P), packed)),
          Entry("masked_lm_ids", IntFeature(ints(b.masked_lm_ids, b.P), packed)),
          Entry("masked_lm_weights", Ld(2, FloatsUnpacked(w))),
          Entry("next_sentence_labels", IntFeature({b.next_sentence_labels[k]}, packed))};
}

status_t Parse(const Bytes &p, data_batch *b, int k) {
  return tfx_parse_row((const uint8_t *)p.data(), p.size(), "f.tfrecord", 77, b, k);
}

// ---- Rows -----------------------------------------------------------------------
TEST(TfExampleRow, BuildThenParseGivesTheRow) {
  Batch a(6, 24, 4), b(6, 24, 4);
  FillRandom(&a.b, 7);
  for (int k = 0; k < 6; k++) {
    uint8_t *p;
    size_t n;
    ASSERT_EQ(tfx_build_row(&a.b, k, &p, &n), STATUS_OK);
    EXPECT_EQ(tfx_parse_row(p, n, "x", 0, &b.b, 5 - k), STATUS_OK) << status_message();
    free(p);
    EXPECT_EQ(a.Row(k), b.Row(5 - k)) << "row " << k;
  }
}

TEST(TfExampleRow, BuildsPackedListsInBertsOrder) {
  Batch a(1, 8, 2);
  FillRandom(&a.b, 3);
  uint8_t *p;
  size_t n;
  ASSERT_EQ(tfx_build_row(&a.b, 0, &p, &n), STATUS_OK);
  std::vector<Bytes> e = RowEntries(a.b, 0, true);
  // Weights are packed fixed32 too: rebuild that entry packed.
  std::vector<float> w(a.b.masked_lm_weights, a.b.masked_lm_weights + 2);
  e[5] = Entry("masked_lm_weights", Ld(2, Ld(1, Bytes((const char *)w.data(), 8))));
  EXPECT_EQ(Bytes((const char *)p, n), Example(e));
  free(p);
}

TEST(TfExampleRow, AcceptsEveryWireVariant) {
  Batch a(1, 16, 3), b(1, 16, 3);
  FillRandom(&a.b, 11);
  std::vector<Bytes> e = RowEntries(a.b, 0);
  // Shuffled, key after value, a losing earlier entry of the same name, extra
  // features, a list split into a packed run and single elements.
  std::swap(e[0], e[6]);
  std::swap(e[2], e[4]);
  e[3] = Entry("masked_lm_positions",
               Ld(3, Int64sPacked({a.b.masked_lm_positions[0]}) +
                         Int64sUnpacked({a.b.masked_lm_positions[1], a.b.masked_lm_positions[2]})),
               true);
  e.insert(e.begin(), Entry("input_ids", Ld(2, FloatsUnpacked({1.0f}))));
  e.push_back(Entry("note", Ld(1, Ld(1, "hello"))));
  e.push_back(Entry("empty", ""));
  ASSERT_EQ(Parse(Example(e), &b.b, 0), STATUS_OK) << status_message();
  EXPECT_EQ(a.Row(0), b.Row(0));
}

struct BadCase {
  const char *feature, *text;
  std::function<void(std::vector<Bytes> &)> edit;
};

TEST(TfExampleRow, NamesFileOffsetAndFeatureOfEveryError) {
  Batch a(1, 8, 2), b(1, 8, 2);
  FillRandom(&a.b, 5);
  for (int i = 0; i < 8; i++) a.b.input_ids[i] = 10 + i;
  a.b.masked_lm_positions[0] = 1;
  a.b.masked_lm_positions[1] = 2;
  std::vector<BadCase> cases = {
      {"input_ids", "is missing", [](std::vector<Bytes> &e) { e.erase(e.begin()); }},
      {"next_sentence_labels", "is missing", [](std::vector<Bytes> &e) { e.pop_back(); }},
      {"input_mask", "holds float_list, expected int64_list",
       [](std::vector<Bytes> &e) {
         e[1] = Entry("input_mask", Ld(2, FloatsUnpacked({1, 1, 1, 1, 1, 1, 1, 1})));
       }},
      {"masked_lm_weights", "holds int64_list, expected float_list",
       [](std::vector<Bytes> &e) {
         e[5] = Entry("masked_lm_weights", IntFeature({1, 0}, true));
       }},
      {"segment_ids", "holds bytes_list",
       [](std::vector<Bytes> &e) { e[2] = Entry("segment_ids", Ld(1, "")); }},
      {"input_ids", "holds no list", [](std::vector<Bytes> &e) { e[0] = Entry("input_ids", ""); }},
      {"input_ids", "has 7 values, expected 8",
       [](std::vector<Bytes> &e) {
         e[0] = Entry("input_ids", IntFeature({1, 2, 3, 4, 5, 6, 7}, false));
       }},
      {"masked_lm_ids", "has 3 values, expected 2",
       [](std::vector<Bytes> &e) {
         e[4] = Entry("masked_lm_ids", IntFeature({1, 2, 3}, true));
       }},
      {"next_sentence_labels", "has 0 values, expected 1",
       [](std::vector<Bytes> &e) { e[6] = Entry("next_sentence_labels", IntFeature({}, true)); }},
      {"masked_lm_positions", "value 1 is 8, outside [0, 7]",
       [](std::vector<Bytes> &e) {
         e[3] = Entry("masked_lm_positions", IntFeature({0, 8}, false));
       }},
      {"input_ids", "value 2 is -2147483649",
       [](std::vector<Bytes> &e) {
         e[0] = Entry("input_ids", IntFeature({1, 2, -2147483649ll, 4, 5, 6, 7, 8}, true));
       }},
      {"masked_lm_weights", "value 0 is not finite",
       [](std::vector<Bytes> &e) {
         e[5] = Entry("masked_lm_weights", Ld(2, FloatsUnpacked({INFINITY, 0})));
       }},
  };
  for (auto &c : cases) {
    std::vector<Bytes> e = RowEntries(a.b, 0);
    c.edit(e);
    EXPECT_EQ(Parse(Example(e), &b.b, 0), STATUS_FORMAT) << c.text;
    std::string m = status_message();
    EXPECT_NE(m.find("f.tfrecord: record at byte 77: feature '" + std::string(c.feature) + "'"),
              std::string::npos)
        << m;
    EXPECT_NE(m.find(c.text), std::string::npos) << m;
  }
  for (Bytes junk : {Bytes("\x0a\x05\x01", 3), Bytes("\xff\xff"), Bytes("\x0a\x02\x0a\x80", 4)}) {
    EXPECT_EQ(Parse(junk, &b.b, 0), STATUS_FORMAT);
    EXPECT_STREQ(status_message(),
                 "f.tfrecord: record at byte 77 is not a tf.train.Example (malformed protobuf)");
  }
  EXPECT_EQ(Parse("", &b.b, 0), STATUS_FORMAT);  // an empty Example lacks every feature
  EXPECT_NE(std::string(status_message()).find("'input_ids' is missing"), std::string::npos);
}

// ---- The batch source -------------------------------------------------------------
void WriteFile(const std::string &path, const std::vector<Bytes> &payloads,
               std::vector<uint64_t> *at = nullptr) {
  tfr_writer w;
  ASSERT_EQ(tfr_writer_open(&w, path.c_str()), STATUS_OK);
  for (auto &p : payloads) {
    uint64_t o;
    ASSERT_EQ(tfr_write(&w, p.data(), p.size(), &o), STATUS_OK);
    if (at) at->push_back(o);
  }
  ASSERT_EQ(tfr_writer_close(&w), STATUS_OK);
}

// n random rows, written as records (every third unpacked by hand).
std::vector<Bytes> Records(Batch &rows) {
  std::vector<Bytes> out;
  for (int k = 0; k < rows.b.n; k++) {
    if (k % 3 == 0) {
      out.push_back(Example(RowEntries(rows.b, k)));
      continue;
    }
    uint8_t *p;
    size_t n;
    EXPECT_EQ(tfx_build_row(&rows.b, k, &p, &n), STATUS_OK);
    out.emplace_back((const char *)p, n);
    free(p);
  }
  return out;
}

struct Source {
  tfx_source *s = nullptr;
  ~Source() { tfx_free(s); }
};

status_t Open(Source &src, const std::vector<std::string> &paths, int T, int P, uint64_t seed) {
  std::vector<const char *> v;
  for (auto &p : paths) v.push_back(p.c_str());
  return tfx_open(v.data(), (int)v.size(), T, P, seed, &src.s);
}

class TfSource : public ::testing::Test {
 protected:
  static constexpr int kT = 20, kP = 4, kN = 37;
  std::string dir;
  Batch rows{kN, kT, kP};
  void SetUp() override {
    dir = Scratch("src");
    FillRandom(&rows.b, 99);
    for (int k = 0; k < kN; k++) rows.b.masked_lm_positions[(size_t)k * kP] = k % kT;
    std::vector<Bytes> r = Records(rows);
    WriteFile(dir + "/part-0.tfrecord", std::vector<Bytes>(r.begin(), r.begin() + 15));
    WriteFile(dir + "/part-1.tfrecord", std::vector<Bytes>(r.begin() + 15, r.begin() + 16));
    WriteFile(dir + "/part-2.tfrecord", std::vector<Bytes>(r.begin() + 16, r.end()));
  }
};

TEST_F(TfSource, IndexesEveryRecordInFileOrder) {
  Source s;
  ASSERT_EQ(Open(s, {dir + "/part-*.tfrecord"}, kT, kP, 1), STATUS_OK) << status_message();
  ASSERT_EQ(tfx_records(s.s), (uint64_t)kN);
  ASSERT_EQ(tfx_files(s.s), 3);
  EXPECT_EQ(tfx_file_records(s.s, 0), 15u);
  EXPECT_EQ(tfx_file_records(s.s, 1), 1u);
  EXPECT_EQ(tfx_file_records(s.s, 2), 21u);
  EXPECT_EQ(std::string(tfx_file_path(s.s, 2)), dir + "/part-2.tfrecord");
  Batch one(1, kT, kP);
  for (int i = 0; i < kN; i++) {
    ASSERT_EQ(tfx_read_record(s.s, i, &one.b, 0), STATUS_OK) << status_message();
    EXPECT_EQ(one.Row(0), rows.Row(i)) << "record " << i;
  }
  EXPECT_EQ(tfx_read_record(s.s, kN, &one.b, 0), STATUS_ARG);
}

TEST_F(TfSource, BatchesFollowTheEpochPermutation) {
  const uint64_t seed = 4242, B = 8;
  Source s;
  ASSERT_EQ(Open(s, {dir + "/part-0.tfrecord," + dir + "/part-[12].tfrecord"}, kT, kP, seed),
            STATUS_OK)
      << status_message();
  Batch b(B, kT, kP);
  std::set<std::vector<int64_t>> epoch0;
  std::vector<std::vector<int64_t>> order[2];
  for (uint64_t step = 0; step < 10; step++) {
    ASSERT_EQ(tfx_get_batch(s.s, B, step, 0, (int)B, &b.b), STATUS_OK) << status_message();
    for (uint64_t j = 0; j < B; j++) {
      uint64_t g = step * B + j, e = g / kN;
      uint64_t rec = data_permute(g % kN, kN, seed ^ (e * 0x9e3779b97f4a7c15ull));
      EXPECT_EQ(b.Row((int)j), rows.Row((int)rec)) << "step " << step << " row " << j;
      if (e < 2) order[e].push_back(b.Row((int)j));
      if (e == 0) epoch0.insert(b.Row((int)j));
    }
  }
  EXPECT_EQ(epoch0.size(), (size_t)kN);  // every record once per epoch
  order[1].resize(kN);
  EXPECT_NE(order[0], order[1]);  // and a new order the next epoch
  // A rank's slice is the matching rows of the global batch.
  Batch whole(B, kT, kP), half(B / 2, kT, kP);
  ASSERT_EQ(tfx_get_batch(s.s, B, 3, 0, (int)B, &whole.b), STATUS_OK);
  ASSERT_EQ(tfx_get_batch(s.s, B, 3, B / 2, (int)B / 2, &half.b), STATUS_OK);
  for (int j = 0; j < (int)B / 2; j++) EXPECT_EQ(half.Row(j), whole.Row(j + (int)B / 2));
  EXPECT_EQ(tfx_get_batch(s.s, B, 3, 6, 4, &whole.b), STATUS_ARG);  // past the global batch
  Batch wrong(B, kT + 1, kP);
  EXPECT_EQ(tfx_get_batch(s.s, B, 0, 0, 1, &wrong.b), STATUS_ARG);
}

TEST_F(TfSource, InfersShapeAndFingerprintsContentNotPlace) {
  Source a, b, c, d, e;
  ASSERT_EQ(Open(a, {dir + "/part-*.tfrecord"}, 0, 0, 5), STATUS_OK);
  EXPECT_EQ(tfx_seq_len(a.s), kT);
  EXPECT_EQ(tfx_max_predictions(a.s), kP);
  std::string moved = Scratch("moved");
  for (int i = 0; i < 3; i++) {
    std::string from = dir + "/part-" + std::to_string(i) + ".tfrecord";
    std::string to = moved + "/x" + std::to_string(i) + ".tfrecord";
    ASSERT_EQ(link(from.c_str(), to.c_str()) == 0 || errno == EEXIST, true);
  }
  ASSERT_EQ(
      Open(b, {moved + "/x0.tfrecord", moved + "/x1.tfrecord,", moved + "/x2.tfrecord"}, kT, kP, 5),
      STATUS_OK)
      << status_message();
  EXPECT_EQ(tfx_fingerprint(a.s), tfx_fingerprint(b.s));
  ASSERT_EQ(Open(c, {dir + "/part-*.tfrecord"}, kT, kP, 6), STATUS_OK);
  EXPECT_NE(tfx_fingerprint(a.s), tfx_fingerprint(c.s));
  ASSERT_EQ(Open(d, {dir + "/part-0.tfrecord", dir + "/part-2.tfrecord"}, kT, kP, 5), STATUS_OK);
  EXPECT_NE(tfx_fingerprint(a.s), tfx_fingerprint(d.s));
  // A source opened for another shape fails on the first record it reads.
  ASSERT_EQ(Open(e, {dir + "/part-*.tfrecord"}, kT + 1, kP, 5), STATUS_OK);
  Batch one(1, kT + 1, kP);
  EXPECT_EQ(tfx_read_record(e.s, 0, &one.b, 0), STATUS_FORMAT);
  EXPECT_NE(
      std::string(status_message())
          .find(
              "part-0.tfrecord: record at byte 0: feature 'input_ids' has 20 values, expected 21"),
      std::string::npos)
      << status_message();
}

TEST(TfSourceErrors, NamesWhatIsMissingOrEmpty) {
  std::string dir = Scratch("errors");
  Source s;
  EXPECT_EQ(Open(s, {dir + "/none-*.tfrecord"}, 8, 2, 1), STATUS_IO);
  EXPECT_NE(std::string(status_message()).find("no files match"), std::string::npos);
  EXPECT_EQ(Open(s, {dir + "/absent.tfrecord"}, 8, 2, 1), STATUS_IO);
  EXPECT_NE(std::string(status_message()).find("absent.tfrecord"), std::string::npos);
  WriteFile(dir + "/empty.tfrecord", {});
  EXPECT_EQ(Open(s, {dir + "/empty.tfrecord"}, 8, 2, 1), STATUS_FORMAT);
  EXPECT_NE(std::string(status_message()).find("empty.tfrecord: no records"), std::string::npos);
  EXPECT_EQ(Open(s, {}, 8, 2, 1), STATUS_ARG);
  EXPECT_EQ(Open(s, {dir + "/empty.tfrecord"}, 8, 9, 1), STATUS_ARG);
  EXPECT_EQ(s.s, nullptr);
  tfx_free(nullptr);
}

TEST(TfSourceErrors, EveryFlippedByteAndTruncationIsReported) {
  std::string dir = Scratch("damage");
  Batch rows(3, 10, 2);
  FillRandom(&rows.b, 17);
  for (int k = 0; k < 3; k++)
    rows.b.masked_lm_positions[k * 2] = rows.b.masked_lm_positions[k * 2 + 1] = 1;
  std::vector<uint64_t> at;
  std::string good = dir + "/good.tfrecord", bad = dir + "/bad.tfrecord";
  WriteFile(good, Records(rows), &at);
  FILE *f = fopen(good.c_str(), "rb");
  std::string data(4096, '\0');
  data.resize(fread(&data[0], 1, data.size(), f));
  fclose(f);
  auto put = [&](const std::string &bytes) {
    FILE *o = fopen(bad.c_str(), "wb");
    fwrite(bytes.data(), 1, bytes.size(), o);
    fclose(o);
  };
  auto record_of = [&](size_t i) {
    uint64_t r = 0;
    for (uint64_t o : at)
      if (o <= i) r = o;
    return r;
  };
  for (size_t i = 0; i < data.size(); i++) {
    std::string d = data;
    d[i] ^= (char)(1 << (i % 8));
    put(d);
    Source s;
    EXPECT_EQ(Open(s, {bad}, 10, 2, 1), STATUS_FORMAT) << "flip at " << i;
    std::string m = status_message();
    EXPECT_NE(m.find(bad + ": "), std::string::npos) << m;
    EXPECT_NE(m.find("at byte " + std::to_string(record_of(i))), std::string::npos)
        << "flip at " << i << ": " << m;
  }
  for (size_t n = 0; n < data.size(); n++) {
    put(data.substr(0, n));
    Source s;
    status_t st = Open(s, {bad}, 10, 2, 1);
    bool boundary = n > 0 && (n == at[1] || n == at[2]);
    if (boundary) {
      ASSERT_EQ(st, STATUS_OK) << n;
      EXPECT_EQ(tfx_records(s.s), n == at[1] ? 1u : 2u);
    } else {
      EXPECT_EQ(st, STATUS_FORMAT) << "cut at " << n;
      if (n) {
        EXPECT_NE(std::string(status_message()).find("byte " + std::to_string(record_of(n))),
                  std::string::npos)
            << status_message();
      }
    }
  }
}

TEST(TfDump, PrintsTheFeatureMap) {
  std::string dir = Scratch("dump");
  float w[2] = {0.5f, -0.0f};
  float odd[3] = {1.0f, NAN, 1e-45f};
  std::vector<Bytes> e = {
      Entry("ids", IntFeature({1, -2, INT64_MIN}, false)),
      Entry("w", Ld(2, Ld(1, Bytes((const char *)w, 8))), true),
      Entry("odd", Ld(2, FloatsUnpacked({odd[0], odd[1], odd[2]}))),
      Entry("note", Ld(1, Ld(1, "a\"b\\c\n") + Ld(1, Bytes("\x00\xff", 2)))),
      Entry("ids", IntFeature({5}, true)),
      Entry("none", ""),
  };
  WriteFile(dir + "/d.tfrecord", {Example(e), ""});
  std::string out = dir + "/d.json";
  FILE *f = fopen(out.c_str(), "w");
  ASSERT_EQ(tfx_dump((dir + "/d.tfrecord").c_str(), f), STATUS_OK) << status_message();
  fclose(f);
  f = fopen(out.c_str(), "r");
  char buf[1024];
  std::string got;
  while (fgets(buf, sizeof buf, f)) got += buf;
  fclose(f);
  size_t second = tfr_framed_size(Example(e).size());
  EXPECT_EQ(got,
            "{\"record\":0,\"offset\":0,\"features\":{\"w\":[0.5,-0.0],\"odd\":[1.0,\"nan\",1."
            "40129846e-45],"
            "\"note\":[\"a\\\"b\\\\c\\n\",\"\\u0000\\u00ff\"],\"ids\":[5],\"none\":null}}\n"
            "{\"record\":1,\"offset\":" +
                std::to_string(second) + ",\"features\":{}}\n");
}

}  // namespace
