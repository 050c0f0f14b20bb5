/* test_core.cc: unit tests of the core library: status and memory, CRC32C,
 * the Philox generator and its uniform streams, safetensors reading and
 * writing (including corrupt and truncated files) and the parameter table. */
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core.h"

/* Exported by crc32c.c for tests only: the table path whatever the CPU. */
extern "C" uint32_t crc32c_update_soft(uint32_t crc, const void *buf, size_t n);

namespace {

/* ---- Helpers ---------------------------------------------------------------- */

/* A private directory for this process's files, made once. */
bool tmp_made = false;
const std::string &TmpDir() {
  static std::string dir = [] {
    std::string tmpl = testing::TempDir() + "mlmpi_core_XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back(0);
    const char *d = mkdtemp(buf.data());
    if (!d) abort();
    tmp_made = true;
    return std::string(d);
  }();
  return dir;
}

std::string TmpPath(const std::string &name) { return TmpDir() + "/" + name; }

/* Removes the directory after the tests of this process have run. */
class TmpDirCleanup : public testing::Environment {
 public:
  void TearDown() override {
    if (tmp_made) std::filesystem::remove_all(TmpDir());
  }
};
testing::Environment *const tmp_cleanup = testing::AddGlobalTestEnvironment(new TmpDirCleanup);

std::string ReadBytes(const std::string &path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

void WriteBytes(const std::string &path, const std::string &bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), (std::streamsize)bytes.size());
}

bool Contains(const std::string &hay, const std::string &needle) {
  return hay.find(needle) != std::string::npos;
}

/* A safetensors file from a header (padded with spaces to a multiple of 8)
 * and raw data bytes. */
std::string MakeSafetensors(std::string header, const std::string &data, bool pad = true) {
  if (pad)
    while (header.size() % 8) header += ' ';
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; i++) out[i] = (char)((n >> (8 * i)) & 0xff);
  return out + header + data;
}

/* Reads path expecting a FORMAT or I/O error whose message names the file. */
testing::AssertionResult ReadFails(const std::string &path, const std::string &also = "") {
  st_file *f = reinterpret_cast<st_file *>(0x1);
  status_set(STATUS_OK, "%s", "");
  status_t st = st_read(path.c_str(), &f);
  std::string msg = status_message();
  if (st == STATUS_OK) {
    st_free(f);
    return testing::AssertionFailure() << path << " was accepted";
  }
  if (st != STATUS_FORMAT && st != STATUS_IO)
    return testing::AssertionFailure() << "status " << status_name(st) << ": " << msg;
  if (f != nullptr) return testing::AssertionFailure() << "*out not NULL after failure";
  if (!Contains(msg, path)) return testing::AssertionFailure() << "message lacks path: " << msg;
  if (!also.empty() && !Contains(msg, also))
    return testing::AssertionFailure() << "message lacks '" << also << "': " << msg;
  return testing::AssertionSuccess() << msg;
}

/* ---- Status and memory ------------------------------------------------------ */

TEST(Status, SetReturnsCodeAndFormatsMessage) {
  EXPECT_EQ(status_set(STATUS_CONFIG, "key '%s' has bad value %d", "lr", 7), STATUS_CONFIG);
  EXPECT_STREQ(status_message(), "key 'lr' has bad value 7");
  EXPECT_EQ(status_set(STATUS_IO, "second"), STATUS_IO);
  EXPECT_STREQ(status_message(), "second");
}

TEST(Status, MessageIsPerThread) {
  status_set(STATUS_ARG, "main thread message");
  std::string other;
  std::thread t([&] {
    other = status_message(); /* a fresh thread has no message */
    status_set(STATUS_IO, "worker message");
  });
  t.join();
  EXPECT_EQ(other, "");
  EXPECT_STREQ(status_message(), "main thread message");
}

TEST(Status, NamesAreDistinct) {
  std::set<std::string> names;
  for (int c = STATUS_OK; c <= STATUS_TIMEOUT; c++) {
    std::string n = status_name((status_t)c);
    EXPECT_FALSE(n.empty());
    names.insert(n);
  }
  EXPECT_EQ(names.size(), (size_t)(STATUS_TIMEOUT + 1));
}

TEST(Mem, AllocIs64ByteAligned) {
  for (size_t n : {0, 1, 3, 63, 64, 65, 1000, 1 << 20}) {
    void *p = mem_alloc(n, "aligned test");
    ASSERT_NE(p, nullptr) << n;
    EXPECT_EQ((uintptr_t)p % 64, 0u) << n;
    memset(p, 0xab, n); /* the whole size is usable (ASan checks this) */
    mem_free(p);
  }
}

TEST(Mem, CallocZeroes) {
  const size_t n = 4099;
  unsigned char *p = static_cast<unsigned char *>(mem_calloc(n, "calloc test"));
  ASSERT_NE(p, nullptr);
  EXPECT_EQ((uintptr_t)p % 64, 0u);
  size_t nonzero = 0;
  for (size_t i = 0; i < n; i++) nonzero += p[i] != 0;
  EXPECT_EQ(nonzero, 0u);
  mem_free(p);
  mem_free(nullptr);
}

TEST(Mem, HugeAllocFailsWithMessageNamingWhat) {
  /* Sizes whose 64-byte rounding overflows: they must fail before reaching
   * the allocator (which under ASan would abort instead of returning NULL). */
  for (size_t n : {SIZE_MAX, SIZE_MAX - 10}) {
    status_set(STATUS_OK, "%s", "");
    EXPECT_EQ(mem_alloc(n, "the giant table"), nullptr);
    std::string msg = status_message();
    EXPECT_TRUE(Contains(msg, "the giant table")) << msg;
    EXPECT_TRUE(Contains(msg, "out of memory")) << msg;
    EXPECT_TRUE(Contains(msg, std::to_string(n))) << msg;
    EXPECT_EQ(mem_calloc(n, "the giant table"), nullptr);
  }
}

/* ---- CRC32C ------------------------------------------------------------------- */

TEST(Crc32c, CheckValue) {
  EXPECT_EQ(crc32c_update(0, "123456789", 9), 0xE3069283u);
  EXPECT_EQ(crc32c_update_soft(0, "123456789", 9), 0xE3069283u);
}

TEST(Crc32c, EmptyInput) {
  EXPECT_EQ(crc32c_update(0, "", 0), 0u);
  EXPECT_EQ(crc32c_update_soft(0, nullptr, 0), 0u);
  /* An empty update leaves a running CRC unchanged. */
  EXPECT_EQ(crc32c_update(0xE3069283u, "x", 0), 0xE3069283u);
}

TEST(Crc32c, Rfc3720Vectors) {
  /* iSCSI (RFC 3720, B.4) test patterns of 32 bytes. */
  unsigned char zeros[32] = {0}, ones[32], inc[32], dec[32];
  for (int i = 0; i < 32; i++) {
    ones[i] = 0xff;
    inc[i] = (unsigned char)i;
    dec[i] = (unsigned char)(31 - i);
  }
  EXPECT_EQ(crc32c_update(0, zeros, 32), 0x8A9136AAu);
  EXPECT_EQ(crc32c_update(0, ones, 32), 0x62A8AB43u);
  EXPECT_EQ(crc32c_update(0, inc, 32), 0x46DD794Eu);
  EXPECT_EQ(crc32c_update(0, dec, 32), 0x113FDB5Cu);
}

TEST(Crc32c, ChainingEqualsWhole) {
  std::mt19937 g(11);
  std::vector<unsigned char> buf(1000);
  for (auto &b : buf) b = (unsigned char)g();
  uint32_t whole = crc32c_update(0, buf.data(), buf.size());
  for (size_t cut : {0, 1, 7, 8, 9, 500, 999, 1000}) {
    uint32_t c =
        crc32c_update(crc32c_update(0, buf.data(), cut), buf.data() + cut, buf.size() - cut);
    EXPECT_EQ(c, whole) << cut;
    uint32_t s = crc32c_update_soft(crc32c_update_soft(0, buf.data(), cut), buf.data() + cut,
                                    buf.size() - cut);
    EXPECT_EQ(s, whole) << cut;
  }
}

TEST(Crc32c, HardwareMatchesTableOnManyLengthsAndAlignments) {
  std::mt19937 g(12);
  std::vector<unsigned char> buf(4096 + 16);
  for (auto &b : buf) b = (unsigned char)g();
  for (size_t align = 0; align < 8; align++)
    for (size_t n = 0; n <= 300; n++) {
      uint32_t seed = (uint32_t)g();
      ASSERT_EQ(crc32c_update(seed, buf.data() + align, n),
                crc32c_update_soft(seed, buf.data() + align, n))
          << "align " << align << " n " << n;
    }
  for (size_t align = 0; align < 8; align++)
    EXPECT_EQ(crc32c_update(0, buf.data() + align, 4096),
              crc32c_update_soft(0, buf.data() + align, 4096));
}

TEST(Crc32c, Mask) {
  /* ((0xE3069283 >> 15) | (0xE3069283 << 17)) + 0xa282ead8
   *   = (0x0001C60D | 0x25060000) + 0xA282EAD8 = 0x2507C60D + 0xA282EAD8. */
  EXPECT_EQ(crc32c_mask(0xE3069283u), 0xC78AB0E5u);
  EXPECT_EQ(crc32c_mask(0), 0xa282ead8u);
}

/* ---- Philox and uniform streams ------------------------------------------------ */

TEST(Philox, KnownAnswerVectors) {
  struct {
    uint32_t ctr[4], key[2], out[4];
  } kat[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const auto &k : kat) {
    uint32_t out[4];
    philox4x32_10(k.ctr, k.key, out);
    for (int i = 0; i < 4; i++)
      EXPECT_EQ(out[i], k.out[i]) << std::hex << k.ctr[0] << " word " << i;
  }
}

TEST(Rng, ToFloatRange) {
  EXPECT_EQ(rng_u32_to_float(0), 0.0f);
  EXPECT_LT(rng_u32_to_float(0xffffffffu), 1.0f);
  EXPECT_EQ(rng_u32_to_float(0xffffffffu), 1.0f - 1.0f / 16777216.0f);
}

rng_key Key(uint64_t seed, uint32_t step, uint32_t sample, uint32_t stream) {
  rng_key k;
  k.seed = seed;
  k.step = step;
  k.sample = sample;
  k.stream = stream;
  return k;
}

TEST(Rng, ElementsFollowTheDocumentedCounter) {
  /* Element e is word e % 4 of Philox(counter {e / 4, stream, sample, step},
   * key {seed low, seed high}); other implementations (the reference) rely
   * on this layout to reproduce dropout masks. */
  rng_key k = Key(0x123456789abcdefull, 17, 5, rng_stream(3, 2));
  std::vector<float> v(41);
  rng_uniform(k, 1000, v.size(), v.data());
  for (uint32_t i = 0; i < v.size(); i++) {
    uint32_t e = 1000 + i, ctr[4] = {e / 4, k.stream, k.sample, k.step}, out[4];
    uint32_t key[2] = {0x89abcdefu, 0x01234567u};
    philox4x32_10(ctr, key, out);
    EXPECT_EQ(v[i], rng_u32_to_float(out[e % 4])) << e;
  }
}

TEST(Rng, ValuesDoNotDependOnSplit) {
  rng_key k = Key(42, 3, 9, rng_stream(1, 4));
  const uint32_t n = 1000;
  std::vector<float> whole(n), parts(n, -1.0f);
  rng_uniform(k, 0, n, whole.data());
  std::mt19937 g(5);
  for (int trial = 0; trial < 20; trial++) {
    std::fill(parts.begin(), parts.end(), -1.0f);
    uint32_t first = 0;
    while (first < n) {
      uint32_t len = std::min<uint32_t>(n - first, (uint32_t)(g() % 23)); /* 0 included */
      rng_uniform(k, first, len, parts.data() + first);
      first += len;
    }
    ASSERT_EQ(parts, whole) << "trial " << trial;
  }
  /* A single element anywhere equals the bulk draw. */
  for (uint32_t e : {0u, 1u, 2u, 3u, 4u, 5u, 998u, 999u}) {
    float one;
    rng_uniform(k, e, 1, &one);
    EXPECT_EQ(one, whole[e]) << e;
  }
}

size_t CountEqual(rng_key a, rng_key b) {
  std::vector<float> x(256), y(256);
  rng_uniform(a, 0, x.size(), x.data());
  rng_uniform(b, 0, y.size(), y.data());
  size_t eq = 0;
  for (size_t i = 0; i < x.size(); i++) eq += x[i] == y[i];
  return eq;
}

TEST(Rng, EveryKeyFieldChangesTheSequence) {
  rng_key base = Key(1234, 10, 20, 30);
  rng_key seed = base, seed_hi = base, step = base, sample = base, stream = base;
  seed.seed = 1235;
  seed_hi.seed = 1234 + (1ull << 32);
  step.step = 11;
  sample.sample = 21;
  stream.stream = 31;
  EXPECT_EQ(CountEqual(base, base), 256u);
  /* Two independent 24-bit streams agree on 256 draws with probability
   * about 256 / 2^24; allow one coincidence. */
  for (rng_key other : {seed, seed_hi, step, sample, stream})
    EXPECT_LE(CountEqual(base, other), 1u);
  /* Element e must not equal element e + 4 of the same stream (the index
   * word of the counter is used). */
  std::vector<float> v(8);
  rng_uniform(base, 0, 8, v.data());
  for (int i = 0; i < 4; i++) EXPECT_NE(v[i], v[i + 4]);
}

TEST(Rng, StatisticsOfAMillionDraws) {
  const size_t n = 1000000;
  std::vector<float> u(n);
  rng_uniform(Key(7, 1, 2, 3), 0, n, u.data());
  double sum = 0, sq = 0, lag = 0;
  std::vector<int> bins(100, 0);
  for (size_t i = 0; i < n; i++) {
    ASSERT_GE(u[i], 0.0f);
    ASSERT_LT(u[i], 1.0f);
    sum += u[i];
    bins[(size_t)(u[i] * 100)]++;
  }
  double mean = sum / n;
  for (size_t i = 0; i < n; i++) {
    sq += (u[i] - mean) * (u[i] - mean);
    if (i) lag += (u[i] - mean) * (u[i - 1] - mean);
  }
  double var = sq / n, corr = lag / sq;
  /* Standard errors for n = 1e6 uniforms: mean sqrt(1/12/n) = 2.9e-4,
   * variance sqrt((1/80 - 1/144)/n) = 7.5e-5, lag-1 correlation 1e-3. The
   * bounds are about 5 sigma: a constant output fails the variance, a
   * biased or skewed one the mean, and a counter-like ramp (which has the
   * right mean and variance) the correlation. */
  EXPECT_NEAR(mean, 0.5, 1.5e-3);
  EXPECT_NEAR(var, 1.0 / 12.0, 4e-4);
  EXPECT_NEAR(corr, 0.0, 5e-3);
  /* Chi-square over 100 equal bins has 99 degrees of freedom (mean 99,
   * sd 14); 200 is beyond 7 sd, while a distribution tilted by a few per
   * cent over [0,1) exceeds it. */
  double chi2 = 0, expect = n / 100.0;
  for (int b : bins) chi2 += (b - expect) * (b - expect) / expect;
  EXPECT_LT(chi2, 200.0);
  /* Resolution: mean, variance and bins cannot see a generator that only
   * has 16 bits (at most 65536 distinct values). With 24 bits, 1e6 draws
   * collide about n^2 / 2^25 = 3e4 times, so > 9e5 distinct values. */
  std::vector<float> sorted = u;
  std::sort(sorted.begin(), sorted.end());
  size_t distinct = (size_t)(std::unique(sorted.begin(), sorted.end()) - sorted.begin());
  EXPECT_GT(distinct, 900000u);
}

/* ---- Safetensors ----------------------------------------------------------------- */

struct SampleFile {
  std::vector<float> f32;
  std::vector<int32_t> i32;
  std::vector<double> f64;
  float scalar = 3.25f;
  float empty_dummy = 0.0f;
  int64_t f32_shape[2] = {3, 5}, i32_shape[1] = {7}, f64_shape[3] = {2, 1, 3},
          empty_shape[2] = {4, 0};

  SampleFile() {
    for (int i = 0; i < 15; i++) f32.push_back(0.5f * (float)i - 3.0f);
    for (int i = 0; i < 7; i++) i32.push_back(i * 1000 - 3000);
    for (int i = 0; i < 6; i++) f64.push_back(1.0 / (i + 1));
  }

  void Write(const std::string &path) {
    st_writer *w = st_writer_init();
    ASSERT_NE(w, nullptr);
    ASSERT_EQ(st_writer_add(w, "w.f32", DTYPE_F32, 2, f32_shape, f32.data()), STATUS_OK);
    ASSERT_EQ(st_writer_add(w, "ids", DTYPE_I32, 1, i32_shape, i32.data()), STATUS_OK);
    ASSERT_EQ(st_writer_add(w, "empty", DTYPE_F32, 2, empty_shape, &empty_dummy), STATUS_OK);
    ASSERT_EQ(st_writer_add(w, "x.f64", DTYPE_F64, 3, f64_shape, f64.data()), STATUS_OK);
    ASSERT_EQ(st_writer_add(w, "scalar", DTYPE_F32, 0, nullptr, &scalar), STATUS_OK);
    ASSERT_EQ(st_writer_meta(w, "format", "pt"), STATUS_OK);
    ASSERT_EQ(st_writer_meta(w, "step", "old"), STATUS_OK);
    ASSERT_EQ(st_writer_meta(w, "step", "1234"), STATUS_OK); /* replaces */
    ASSERT_EQ(st_writer_write(w, path.c_str()), STATUS_OK) << status_message();
    st_writer_free(w);
  }
};

void ExpectTensor(const st_file *f, const char *name, dtype_t dt, std::vector<int64_t> shape,
                  const void *data, size_t nbytes) {
  const st_tensor *t = st_find(f, name);
  ASSERT_NE(t, nullptr) << name;
  EXPECT_EQ(t->dtype, dt) << name;
  ASSERT_EQ(t->ndim, (int)shape.size()) << name;
  size_t numel = 1;
  for (size_t i = 0; i < shape.size(); i++) {
    EXPECT_EQ(t->shape[i], shape[i]) << name;
    numel *= (size_t)shape[i];
  }
  EXPECT_EQ(t->numel, numel) << name;
  ASSERT_EQ(t->nbytes, nbytes) << name;
  if (nbytes) {
    EXPECT_EQ(memcmp(t->data, data, nbytes), 0) << name;
  }
}

TEST(Safetensors, RoundTrip) {
  SampleFile s;
  std::string path = TmpPath("roundtrip.safetensors");
  s.Write(path);
  EXPECT_NE(access((path + ".tmp" + std::to_string(getpid())).c_str(), F_OK), 0)
      << "temporary file left behind";
  st_file *f = nullptr;
  ASSERT_EQ(st_read(path.c_str(), &f), STATUS_OK) << status_message();
  EXPECT_EQ(f->n, 5);
  ExpectTensor(f, "w.f32", DTYPE_F32, {3, 5}, s.f32.data(), 15 * 4);
  ExpectTensor(f, "ids", DTYPE_I32, {7}, s.i32.data(), 7 * 4);
  ExpectTensor(f, "empty", DTYPE_F32, {4, 0}, nullptr, 0);
  ExpectTensor(f, "x.f64", DTYPE_F64, {2, 1, 3}, s.f64.data(), 6 * 8);
  ExpectTensor(f, "scalar", DTYPE_F32, {}, &s.scalar, 4);
  EXPECT_EQ(st_find(f, "nope"), nullptr);
  ASSERT_NE(f->metadata_json, nullptr);
  std::string meta = f->metadata_json;
  EXPECT_TRUE(Contains(meta, "\"format\":\"pt\"")) << meta;
  EXPECT_TRUE(Contains(meta, "\"step\":\"1234\"")) << meta;
  EXPECT_FALSE(Contains(meta, "old")) << meta;
  /* The F64 data is 8-byte aligned in memory (the header is padded and the
   * blob is 64-byte aligned), so it can be read in place. */
  EXPECT_EQ((uintptr_t)st_find(f, "x.f64")->data % 8, 0u);
  st_free(f);
  st_free(nullptr);
}

TEST(Safetensors, NoMetadataMeansNull) {
  float v[2] = {1, 2};
  int64_t shape[1] = {2};
  std::string path = TmpPath("nometa.safetensors");
  st_writer *w = st_writer_init();
  ASSERT_EQ(st_writer_add(w, "v", DTYPE_F32, 1, shape, v), STATUS_OK);
  ASSERT_EQ(st_writer_write(w, path.c_str()), STATUS_OK);
  st_writer_free(w);
  st_writer_free(nullptr);
  st_file *f = nullptr;
  ASSERT_EQ(st_read(path.c_str(), &f), STATUS_OK) << status_message();
  EXPECT_EQ(f->metadata_json, nullptr);
  EXPECT_EQ(f->n, 1);
  st_free(f);
}

/* Finds "name":{...} in a safetensors header by plain string search and
 * returns its data_offsets. Tensor entries contain no nested objects, so
 * the entry ends at the next '}'. */
bool ScanOffsets(const std::string &header, const std::string &name, uint64_t *b, uint64_t *e) {
  size_t at = header.find("\"" + name + "\":{");
  if (at == std::string::npos) return false;
  size_t end = header.find('}', at);
  size_t off = header.find("\"data_offsets\"", at);
  if (off == std::string::npos || off > end) return false;
  size_t lb = header.find('[', off);
  if (lb == std::string::npos || lb > end) return false;
  char *p = nullptr;
  *b = strtoull(header.c_str() + lb + 1, &p, 10);
  while (*p == ' ' || *p == ',') p++;
  *e = strtoull(p, &p, 10);
  return *p == ']';
}

TEST(Safetensors, FileLayoutCheckedIndependently) {
  SampleFile s;
  std::string path = TmpPath("layout.safetensors");
  s.Write(path);
  std::string bytes = ReadBytes(path);
  ASSERT_GE(bytes.size(), 8u);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = hlen << 8 | (unsigned char)bytes[i];
  EXPECT_EQ(hlen % 8, 0u) << "header length " << hlen;
  ASSERT_LE(8 + hlen, bytes.size());
  std::string header = bytes.substr(8, hlen);
  EXPECT_EQ(header.front(), '{');
  EXPECT_EQ(header.find_last_not_of(' '), header.rfind('}')) << "padding must be spaces";
  uint64_t b = 0, e = 0;
  ASSERT_TRUE(ScanOffsets(header, "x.f64", &b, &e)) << header;
  ASSERT_EQ(e - b, 6 * sizeof(double));
  ASSERT_LE(8 + hlen + e, bytes.size());
  EXPECT_EQ(memcmp(bytes.data() + 8 + hlen + b, s.f64.data(), e - b), 0);
  /* The data section is exactly the tensors: the file ends at the largest
   * end offset. */
  uint64_t maxend = 0;
  for (const char *n : {"w.f32", "ids", "empty", "x.f64", "scalar"}) {
    ASSERT_TRUE(ScanOffsets(header, n, &b, &e)) << n;
    maxend = std::max(maxend, e);
  }
  EXPECT_EQ(8 + hlen + maxend, bytes.size());
}

TEST(Safetensors, ZeroSizeTensorSharingAStartOffsetIsNotAnOverlap) {
  /* An empty tensor at the offset where a non-empty one starts occupies no
   * bytes; the header order (non-empty first) must not matter. */
  std::string data(8, '\x01');
  for (const char *hdr : {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                          "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}",
                          "{\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
                          "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                          "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,8]}}"}) {
    std::string path = TmpPath("empty_shared.safetensors");
    WriteBytes(path, MakeSafetensors(hdr, data));
    st_file *f = nullptr;
    EXPECT_EQ(st_read(path.c_str(), &f), STATUS_OK) << hdr << ": " << status_message();
    st_free(f);
  }
}

TEST(Safetensors, CorruptFilesFailWithPath) {
  const std::string ok_entry = "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}";
  const std::string data8(8, '\0');
  std::string p;

  EXPECT_TRUE(ReadFails(TmpPath("does_not_exist.safetensors")));

  p = TmpPath("short.safetensors");
  WriteBytes(p, std::string("\x08\0\0\0", 4));
  EXPECT_TRUE(ReadFails(p));
  WriteBytes(p, "");
  EXPECT_TRUE(ReadFails(p));

  p = TmpPath("hlen_too_big.safetensors");
  std::string f = MakeSafetensors("{" + ok_entry + "}", data8);
  f[0] = (char)0xff; /* header length now exceeds the file */
  WriteBytes(p, f);
  EXPECT_TRUE(ReadFails(p));
  f[0] = 0;
  f[7] = (char)0x80; /* a length near 2^63 must not wrap or allocate */
  WriteBytes(p, f);
  EXPECT_TRUE(ReadFails(p));

  p = TmpPath("not_json.safetensors");
  WriteBytes(p, MakeSafetensors("{\"a\": [1, 2", data8));
  EXPECT_TRUE(ReadFails(p));
  WriteBytes(p, MakeSafetensors("[1, 2]", data8)); /* JSON, not an object */
  EXPECT_TRUE(ReadFails(p));
  WriteBytes(p, MakeSafetensors("{\"a\": 5}", data8)); /* entry not an object */
  EXPECT_TRUE(ReadFails(p, "'a'"));

  p = TmpPath("offsets_beyond.safetensors");
  WriteBytes(p, MakeSafetensors("{" + ok_entry + "}", std::string(4, '\0')));
  EXPECT_TRUE(ReadFails(p, "'a'"));
  WriteBytes(p, MakeSafetensors("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}",
                                data8));
  EXPECT_TRUE(ReadFails(p, "'a'")); /* end before begin */
  WriteBytes(p, MakeSafetensors("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}",
                                data8));
  EXPECT_TRUE(ReadFails(p, "'a'"));

  p = TmpPath("shape_mismatch.safetensors");
  WriteBytes(p, MakeSafetensors("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}",
                                data8));
  EXPECT_TRUE(ReadFails(p, "'a'"));
  WriteBytes(p, MakeSafetensors("{\"a\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                                data8));
  EXPECT_TRUE(ReadFails(p, "'a'"));
  WriteBytes(p, MakeSafetensors("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}",
                                data8));
  EXPECT_TRUE(ReadFails(p, "'a'"));
  WriteBytes(p, MakeSafetensors("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,"
                                "4294967296],\"data_offsets\":[0,8]}}",
                                data8));
  EXPECT_TRUE(ReadFails(p, "'a'")); /* numel overflows size_t */

  p = TmpPath("unknown_dtype.safetensors");
  WriteBytes(p, MakeSafetensors("{\"a\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                                data8));
  EXPECT_TRUE(ReadFails(p, "F33"));

  p = TmpPath("overlap.safetensors");
  WriteBytes(p, MakeSafetensors("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                                "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                                std::string(12, '\0')));
  EXPECT_TRUE(ReadFails(p, "overlap"));

  p = TmpPath("duplicate.safetensors");
  WriteBytes(p, MakeSafetensors("{" + ok_entry +
                                    ",\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,"
                                    "16]}}",
                                std::string(16, '\0')));
  EXPECT_TRUE(ReadFails(p, "'a'"));

  p = TmpPath("too_many_dims.safetensors");
  WriteBytes(p, MakeSafetensors("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],"
                                "\"data_offsets\":[0,8]}}",
                                data8));
  EXPECT_TRUE(ReadFails(p, "'a'"));
}

TEST(Safetensors, DirectoryIsAnIoError) {
  st_file *f = nullptr;
  EXPECT_EQ(st_read(TmpDir().c_str(), &f), STATUS_IO);
  EXPECT_TRUE(Contains(status_message(), TmpDir())) << status_message();
  EXPECT_EQ(f, nullptr);
}

TEST(Safetensors, DuplicateMetadataIsRejected) {
  /* cJSON keeps duplicate keys; a second "__metadata__" is malformed like a
   * second tensor of one name (and once leaked the first copy). */
  std::string p = TmpPath("dup_meta.safetensors");
  WriteBytes(
      p, MakeSafetensors("{\"__metadata__\":{\"a\":\"1\"},\"__metadata__\":{\"b\":\"2\"}}", ""));
  EXPECT_TRUE(ReadFails(p, "__metadata__"));
}

TEST(Safetensors, EveryTruncationFailsCleanly) {
  SampleFile s;
  std::string path = TmpPath("full.safetensors"), cut = TmpPath("cut.safetensors");
  s.Write(path);
  std::string bytes = ReadBytes(path);
  ASSERT_GT(bytes.size(), 100u);
  for (size_t n = 0; n < bytes.size(); n++) {
    WriteBytes(cut, bytes.substr(0, n));
    st_file *f = nullptr;
    status_t st = st_read(cut.c_str(), &f);
    /* The data section ends with the last tensor, so no strict prefix of
     * the file is a valid safetensors file. */
    ASSERT_NE(st, STATUS_OK) << "prefix of " << n << " bytes accepted";
    ASSERT_TRUE(st == STATUS_FORMAT || st == STATUS_IO) << n << ": " << status_message();
    ASSERT_TRUE(Contains(status_message(), cut)) << n << ": " << status_message();
    ASSERT_EQ(f, nullptr);
  }
}

TEST(Safetensors, ExpectNamesTheTensor) {
  SampleFile s;
  std::string path = TmpPath("expect.safetensors");
  s.Write(path);
  st_file *f = nullptr;
  ASSERT_EQ(st_read(path.c_str(), &f), STATUS_OK);
  const st_tensor *t = nullptr;
  int64_t good[2] = {3, 5}, bad[2] = {5, 3};
  EXPECT_EQ(st_expect(f, path.c_str(), "w.f32", DTYPE_F32, 2, good, &t), STATUS_OK);
  EXPECT_EQ(t, st_find(f, "w.f32"));
  EXPECT_EQ(st_expect(f, path.c_str(), "scalar", DTYPE_F32, 0, nullptr, nullptr), STATUS_OK);

  EXPECT_NE(st_expect(f, path.c_str(), "w.f32", DTYPE_F64, 2, good, nullptr), STATUS_OK);
  std::string m = status_message();
  EXPECT_TRUE(Contains(m, "'w.f32'") && Contains(m, path) && Contains(m, "F64")) << m;

  EXPECT_NE(st_expect(f, path.c_str(), "w.f32", DTYPE_F32, 2, bad, nullptr), STATUS_OK);
  m = status_message();
  EXPECT_TRUE(Contains(m, "'w.f32'") && Contains(m, "[3,5]") && Contains(m, "[5,3]")) << m;
  EXPECT_NE(st_expect(f, path.c_str(), "w.f32", DTYPE_F32, 1, good, nullptr), STATUS_OK);
  EXPECT_TRUE(Contains(status_message(), "'w.f32'")) << status_message();

  EXPECT_NE(st_expect(f, path.c_str(), "ghost", DTYPE_F32, 2, good, nullptr), STATUS_OK);
  m = status_message();
  EXPECT_TRUE(Contains(m, "'ghost'") && Contains(m, path) && Contains(m, "missing")) << m;
  st_free(f);
}

/* ---- Parameter table -------------------------------------------------------------- */

struct ParamSpec {
  const char *name;
  std::vector<int64_t> shape;
  bool decay, adapt;
};

const std::vector<ParamSpec> kSpecs = {
    {"embeddings.word_embeddings.weight", {11, 4}, true, true},
    {"layer.0.query.weight", {4, 4}, true, true},
    {"layer.0.query.bias", {4}, false, false},
    {"layer.0.key.weight", {4, 4}, true, true},
    {"layer.0.LayerNorm.weight", {4}, false, true},
    {"pooler.dense.weight", {3, 2, 1, 4}, true, false},
};

void BuildTable(param_table *t, const std::vector<ParamSpec> &specs) {
  param_table_init(t);
  for (const auto &s : specs)
    ASSERT_GE(param_table_add(t, s.name, (int)s.shape.size(), s.shape.data(), s.decay, s.adapt), 0)
        << status_message();
}

TEST(ParamTable, OffsetsAreConsecutive) {
  param_table t;
  BuildTable(&t, kSpecs);
  ASSERT_EQ(t.n, (int)kSpecs.size());
  size_t off = 0;
  for (int i = 0; i < t.n; i++) {
    size_t numel = 1;
    for (int64_t d : kSpecs[i].shape) numel *= (size_t)d;
    EXPECT_STREQ(t.p[i].name, kSpecs[i].name);
    EXPECT_EQ(t.p[i].offset, off) << t.p[i].name;
    EXPECT_EQ(t.p[i].numel, numel) << t.p[i].name;
    EXPECT_EQ(t.p[i].decay, kSpecs[i].decay);
    EXPECT_EQ(t.p[i].adapt, kSpecs[i].adapt);
    EXPECT_EQ(param_table_find(&t, kSpecs[i].name), i);
    off += numel;
  }
  EXPECT_EQ(t.total, off);
  EXPECT_EQ(param_table_find(&t, "layer.0.query"), -1);
  param_table_free(&t);
  EXPECT_EQ(t.n, 0);
  param_table_free(nullptr);
}

TEST(ParamTable, GrowsPastInitialCapacity) {
  param_table t;
  param_table_init(&t);
  int64_t shape[1] = {3};
  for (int i = 0; i < 200; i++)
    ASSERT_EQ(param_table_add(&t, ("p" + std::to_string(i)).c_str(), 1, shape, true, true), i);
  EXPECT_EQ(t.total, 600u);
  EXPECT_EQ(t.p[199].offset, 597u);
  EXPECT_EQ(param_table_find(&t, "p123"), 123);
  param_table_free(&t);
}

TEST(ParamTable, RejectsDuplicateAndOverlongNames) {
  param_table t;
  BuildTable(&t, kSpecs);
  int n = t.n;
  size_t total = t.total;
  int64_t shape[1] = {4};
  EXPECT_EQ(param_table_add(&t, "layer.0.query.bias", 1, shape, false, false), -1);
  EXPECT_TRUE(Contains(status_message(), "layer.0.query.bias")) << status_message();
  std::string long_name(PARAM_NAME_MAX, 'x');
  EXPECT_EQ(param_table_add(&t, long_name.c_str(), 1, shape, false, false), -1);
  EXPECT_EQ(t.n, n);
  EXPECT_EQ(t.total, total);
  long_name.resize(PARAM_NAME_MAX - 1); /* the longest allowed */
  EXPECT_EQ(param_table_add(&t, long_name.c_str(), 1, shape, false, false), n);
  param_table_free(&t);
}

TEST(ParamTable, HashTracksLayout) {
  auto hash_of = [](const std::vector<ParamSpec> &specs) {
    param_table t;
    BuildTable(&t, specs);
    uint64_t h = param_table_hash(&t);
    param_table_free(&t);
    return h;
  };
  uint64_t h = hash_of(kSpecs);
  EXPECT_EQ(hash_of(kSpecs), h);
  std::vector<ParamSpec> shape = kSpecs, decay = kSpecs, adapt = kSpecs, name = kSpecs;
  shape[1].shape = {2, 8}; /* same numel, so the same offsets */
  decay[2].decay = true;
  adapt[4].adapt = false;
  name[3].name = "layer.0.key.weighT";
  std::vector<ParamSpec> order = {kSpecs[1], kSpecs[0]}, prefix = {kSpecs[0], kSpecs[1]};
  for (const auto &v : {shape, decay, adapt, name}) EXPECT_NE(hash_of(v), h);
  EXPECT_NE(hash_of(order), hash_of(prefix));
  EXPECT_NE(hash_of(prefix), h);
  param_table empty;
  param_table_init(&empty);
  EXPECT_NE(param_table_hash(&empty), h);
}

class ParamIo : public testing::Test {
 protected:
  void SetUp() override {
    BuildTable(&t_, kSpecs);
    buf_.resize(t_.total);
    for (size_t i = 0; i < buf_.size(); i++) buf_[i] = 0.25f * (float)i - 7.0f;
  }
  void TearDown() override { param_table_free(&t_); }

  /* Writes the table's tensors (renamed, reshaped or extended by edit). */
  std::string WriteWith(const std::string &file, const char *skip, const char *reshape,
                        bool extra) {
    std::string path = TmpPath(file);
    st_writer *w = st_writer_init();
    int64_t odd[1] = {3};
    for (int i = 0; i < t_.n; i++) {
      const param_info *p = &t_.p[i];
      if (skip && !strcmp(p->name, skip)) continue;
      if (reshape && !strcmp(p->name, reshape))
        EXPECT_EQ(st_writer_add(w, p->name, DTYPE_F32, 1, odd, buf_.data() + p->offset), STATUS_OK);
      else
        EXPECT_EQ(st_writer_add(w, p->name, DTYPE_F32, p->ndim, p->shape, buf_.data() + p->offset),
                  STATUS_OK);
    }
    if (extra) {
      EXPECT_EQ(st_writer_add(w, "cls.extra.bias", DTYPE_F32, 1, odd, buf_.data()), STATUS_OK);
    }
    EXPECT_EQ(st_writer_write(w, path.c_str()), STATUS_OK) << status_message();
    st_writer_free(w);
    return path;
  }

  status_t Load(const std::string &path, bool strict, std::vector<float> *out) {
    st_file *f = nullptr;
    status_t st = st_read(path.c_str(), &f);
    EXPECT_EQ(st, STATUS_OK) << status_message();
    if (st != STATUS_OK) return st;
    out->assign(t_.total, -999.0f);
    st = param_load_safetensors(&t_, out->data(), f, path.c_str(), strict);
    st_free(f);
    return st;
  }

  param_table t_;
  std::vector<float> buf_;
};

TEST_F(ParamIo, ExactFileLoadsStrict) {
  std::string path = WriteWith("params_exact.safetensors", nullptr, nullptr, false);
  std::vector<float> got;
  EXPECT_EQ(Load(path, true, &got), STATUS_OK) << status_message();
  EXPECT_EQ(got, buf_);
}

TEST_F(ParamIo, ExtraTensorOnlyFailsStrict) {
  std::string path = WriteWith("params_extra.safetensors", nullptr, nullptr, true);
  std::vector<float> got;
  EXPECT_EQ(Load(path, false, &got), STATUS_OK) << status_message();
  EXPECT_EQ(got, buf_);
  EXPECT_NE(Load(path, true, &got), STATUS_OK);
  std::string m = status_message();
  EXPECT_TRUE(Contains(m, "cls.extra.bias") && Contains(m, path)) << m;
}

TEST_F(ParamIo, MissingTensorFailsEitherWay) {
  std::string path = WriteWith("params_missing.safetensors", "layer.0.key.weight", nullptr, false);
  std::vector<float> got;
  for (bool strict : {false, true}) {
    EXPECT_NE(Load(path, strict, &got), STATUS_OK);
    std::string m = status_message();
    EXPECT_TRUE(Contains(m, "layer.0.key.weight") && Contains(m, path)) << m;
  }
}

TEST_F(ParamIo, MisshapedTensorFailsEitherWay) {
  std::string path = WriteWith("params_shape.safetensors", nullptr, "layer.0.query.bias", false);
  std::vector<float> got;
  for (bool strict : {false, true}) {
    EXPECT_NE(Load(path, strict, &got), STATUS_OK);
    std::string m = status_message();
    EXPECT_TRUE(Contains(m, "layer.0.query.bias") && Contains(m, path)) << m;
  }
}

TEST_F(ParamIo, WriterWithPrefixRoundTrips) {
  std::string path = TmpPath("params_prefix.safetensors");
  st_writer *w = st_writer_init();
  ASSERT_EQ(param_add_to_writer(&t_, buf_.data(), "generator.", w), STATUS_OK);
  ASSERT_EQ(param_add_to_writer(&t_, buf_.data(), "", w), STATUS_OK);
  ASSERT_EQ(st_writer_write(w, path.c_str()), STATUS_OK) << status_message();
  st_writer_free(w);

  st_file *f = nullptr;
  ASSERT_EQ(st_read(path.c_str(), &f), STATUS_OK) << status_message();
  EXPECT_EQ(f->n, 2 * t_.n);
  for (int i = 0; i < t_.n; i++) {
    const param_info *p = &t_.p[i];
    std::string pre = std::string("generator.") + p->name;
    std::vector<int64_t> shape(p->shape, p->shape + p->ndim);
    ExpectTensor(f, pre.c_str(), DTYPE_F32, shape, buf_.data() + p->offset, p->numel * 4);
    ExpectTensor(f, p->name, DTYPE_F32, shape, buf_.data() + p->offset, p->numel * 4);
  }
  /* The unprefixed copies load non-strictly; the prefixed ones make a
   * strict load fail. */
  std::vector<float> got(t_.total, 0.0f);
  EXPECT_EQ(param_load_safetensors(&t_, got.data(), f, path.c_str(), false), STATUS_OK);
  EXPECT_EQ(got, buf_);
  EXPECT_NE(param_load_safetensors(&t_, got.data(), f, path.c_str(), true), STATUS_OK);
  EXPECT_TRUE(Contains(status_message(), "generator.")) << status_message();
  st_free(f);
}

TEST_F(ParamIo, WrongDtypeFails) {
  std::string path = TmpPath("params_dtype.safetensors");
  st_writer *w = st_writer_init();
  std::vector<double> wide(t_.total, 1.0);
  for (int i = 0; i < t_.n; i++) {
    const param_info *p = &t_.p[i];
    bool f64 = !strcmp(p->name, "layer.0.LayerNorm.weight");
    ASSERT_EQ(
        st_writer_add(w, p->name, f64 ? DTYPE_F64 : DTYPE_F32, p->ndim, p->shape,
                      f64 ? (const void *)wide.data() : (const void *)(buf_.data() + p->offset)),
        STATUS_OK);
  }
  ASSERT_EQ(st_writer_write(w, path.c_str()), STATUS_OK);
  st_writer_free(w);
  std::vector<float> got;
  EXPECT_NE(Load(path, false, &got), STATUS_OK);
  EXPECT_TRUE(Contains(status_message(), "layer.0.LayerNorm.weight")) << status_message();
}

}  // namespace

TEST(CoreMkdir, MakesParentsAcceptsExistingAndRefusesAFileInTheWay) {
  namespace fs = std::filesystem;
  std::string base = testing::TempDir() + "mlmpi_mkdir_" + std::to_string(getpid());
  fs::remove_all(base);
  std::string deep = base + "/a/b/c";
  ASSERT_EQ(core_mkdir_p(deep.c_str()), STATUS_OK) << status_message();
  EXPECT_TRUE(fs::is_directory(deep));
  EXPECT_EQ(core_mkdir_p(deep.c_str()), STATUS_OK);  // already there
  std::ofstream(base + "/file") << "x";
  std::string blocked = base + "/file";
  EXPECT_EQ(core_mkdir_p(blocked.c_str()), STATUS_IO);
  EXPECT_NE(std::string(status_message()).find(blocked), std::string::npos) << status_message();
  std::string under = base + "/file/sub";
  EXPECT_EQ(core_mkdir_p(under.c_str()), STATUS_IO);
  EXPECT_EQ(core_mkdir_p(""), STATUS_IO);
  fs::remove_all(base);
}
