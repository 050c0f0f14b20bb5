/* test_tb.cc: unit tests of the TensorBoard event writer (trainer/tb.h).
 * Files are read back independently: the TFRecord framing and its masked
 * CRC32C are checked by code written here (a bitwise CRC, not core's), the
 * Events decoded with protobuf-c's generated unpacker, and once more by the
 * Python reader tests/reference/tfevents.py (python3-protobuf, with
 * TensorBoard's field numbers), which is the TbReference suite. */
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "tensorboard.pb-c.h"

extern "C" {
#include "tb.h"
}

namespace {

/* ---- An independent reader ------------------------------------------------ */

/* CRC32C (Castagnoli, reflected polynomial 0x82F63B78), one bit at a time. */
uint32_t Crc32c(const void *data, size_t n) {
  const unsigned char *p = static_cast<const unsigned char *>(data);
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < n; i++) {
    c ^= p[i];
    for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1u)));
  }
  return ~c;
}

uint32_t Masked(uint32_t c) { return ((c >> 15) | (c << 17)) + 0xa282ead8u; }

uint64_t Le(const std::string &b, size_t at, int bytes) {
  uint64_t x = 0;
  for (int i = 0; i < bytes; i++) x |= uint64_t(static_cast<unsigned char>(b[at + i])) << (8 * i);
  return x;
}

/* The payloads of a TFRecord file; error says what is wrong and where
 * (empty when every record is whole and every CRC matches). */
struct Records {
  std::vector<std::string> payloads;
  std::string error;
};

Records ParseRecords(const std::string &b) {
  Records r;
  size_t o = 0;
  while (o < b.size()) {
    std::string at = " at offset " + std::to_string(o);
    if (b.size() - o < 12) return r.error = "truncated header" + at, r;
    uint64_t n = Le(b, o, 8);
    if (Le(b, o + 8, 4) != Masked(Crc32c(b.data() + o, 8)))
      return r.error = "bad length CRC" + at, r;
    if (b.size() - o - 12 < n + 4) return r.error = "truncated payload" + at, r;
    std::string payload = b.substr(o + 12, n);
    if (Le(b, o + 12 + n, 4) != Masked(Crc32c(payload.data(), n)))
      return r.error = "bad data CRC" + at, r;
    r.payloads.push_back(payload);
    o += 12 + n + 4;
  }
  return r;
}

/* One decoded Event. */
struct Event {
  double wall_time = 0;
  int64_t step = 0;
  bool is_version = false;
  std::string version;
  std::vector<std::pair<std::string, float>> values;
};

bool Decode(const std::string &payload, Event *out) {
  Mlmpi__Tb__Event *e = mlmpi__tb__event__unpack(nullptr, payload.size(),
                                                 reinterpret_cast<const uint8_t *>(payload.data()));
  if (!e) return false;
  out->wall_time = e->wall_time;
  out->step = e->step;
  out->is_version = e->what_case == MLMPI__TB__EVENT__WHAT_FILE_VERSION;
  if (out->is_version) out->version = e->file_version;
  if (e->what_case == MLMPI__TB__EVENT__WHAT_SUMMARY)
    for (size_t i = 0; i < e->summary->n_value; i++)
      out->values.emplace_back(e->summary->value[i]->tag, e->summary->value[i]->simple_value);
  mlmpi__tb__event__free_unpacked(e, nullptr);
  return true;
}

std::string ReadBytes(const std::string &path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

double WallNow() {
  timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  return double(t.tv_sec) + double(t.tv_nsec) * 1e-9;
}

uint32_t Bits(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  return u;
}

/* ---- Fixture: a private directory per test --------------------------------- */
class Tb : public testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = testing::TempDir() + "mlmpi_tb_XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back(0);
    ASSERT_NE(mkdtemp(buf.data()), nullptr) << tmpl << ": " << strerror(errno);
    dir_ = buf.data();
  }
  void TearDown() override {
    tb_close(w_);
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  /* Opens a writer on dir_, failing the test with the status message if not. */
  void Open() { ASSERT_EQ(tb_open(&w_, dir_.c_str()), STATUS_OK) << status_message(); }

  /* The one file in dir_ (a test failure when there is not exactly one). */
  std::string OnlyFile() {
    std::vector<std::string> files;
    for (const auto &e : std::filesystem::directory_iterator(dir_)) files.push_back(e.path());
    EXPECT_EQ(files.size(), 1u) << "files in " << dir_;
    return files.empty() ? std::string() : files[0];
  }

  /* Every event of the file, after checking framing and CRCs. */
  std::vector<Event> ReadEvents() {
    Records r = ParseRecords(ReadBytes(OnlyFile()));
    EXPECT_EQ(r.error, "");
    std::vector<Event> out;
    for (size_t i = 0; i < r.payloads.size(); i++) {
      Event e;
      EXPECT_TRUE(Decode(r.payloads[i], &e)) << "record " << i << " is not an Event";
      out.push_back(e);
    }
    return out;
  }

  void Scalars(int64_t step, const std::vector<std::string> &tags, const std::vector<float> &v) {
    std::vector<const char *> t;
    for (const auto &s : tags) t.push_back(s.c_str());
    ASSERT_EQ(tb_scalars(w_, step, t.data(), v.data(), int(v.size())), STATUS_OK)
        << status_message();
  }

  std::string dir_;
  tb_writer *w_ = nullptr;
};

/* ---- The reader itself ------------------------------------------------------ */

TEST(TbReader, Crc32cMatchesPublishedVectors) {
  EXPECT_EQ(Crc32c("123456789", 9), 0xe3069283u);
  std::string zeros(32, '\0'), ones(32, '\xff');
  EXPECT_EQ(Crc32c(zeros.data(), 32), 0x8a9136aau); /* RFC 3720, B.4 */
  EXPECT_EQ(Crc32c(ones.data(), 32), 0x62a8ab43u);
  EXPECT_EQ(Masked(0), 0xa282ead8u);
}

TEST_F(Tb, ReaderDetectsCorruption) {
  Open();
  Scalars(5, {"loss"}, {2.5f});
  ASSERT_EQ(tb_flush(w_), STATUS_OK);
  std::string good = ReadBytes(OnlyFile());
  ASSERT_EQ(ParseRecords(good).error, "");
  ASSERT_EQ(ParseRecords(good).payloads.size(), 2u);
  std::string bad = good;
  bad[bad.size() - 6] ^= 1; /* inside the last payload */
  EXPECT_NE(ParseRecords(bad).error.find("bad data CRC"), std::string::npos);
  bad = good;
  bad[0] ^= 1; /* the first length */
  EXPECT_NE(ParseRecords(bad).error.find("bad length CRC"), std::string::npos);
  EXPECT_NE(ParseRecords(good.substr(0, good.size() - 1)).error.find("truncated"),
            std::string::npos);
}

/* ---- The writer --------------------------------------------------------------- */

TEST_F(Tb, FileNameIsEventsOutTfeventsTimeHost) {
  time_t before = time(nullptr);
  Open();
  time_t after = time(nullptr);
  std::string name = std::filesystem::path(OnlyFile()).filename();
  std::smatch m;
  ASSERT_TRUE(std::regex_match(name, m, std::regex(R"(events\.out\.tfevents\.([0-9]+)\.(.+))")))
      << name;
  long long t = std::stoll(m[1].str());
  EXPECT_GE(t, (long long)before);
  EXPECT_LE(t, (long long)after);
  char host[256] = {0};
  ASSERT_EQ(gethostname(host, sizeof host - 1), 0);
  EXPECT_EQ(m[2].str(), host);
}

TEST_F(Tb, FirstRecordIsFileVersion) {
  double t0 = WallNow();
  Open();
  double t1 = WallNow();
  /* Readable straight after tb_open, without tb_flush or tb_close. */
  Records r = ParseRecords(ReadBytes(OnlyFile()));
  ASSERT_EQ(r.error, "");
  ASSERT_EQ(r.payloads.size(), 1u);
  Event e;
  ASSERT_TRUE(Decode(r.payloads[0], &e));
  EXPECT_TRUE(e.is_version);
  EXPECT_EQ(e.version, "brain.Event:2");
  EXPECT_EQ(e.step, 0);
  EXPECT_GE(e.wall_time, t0 - 0.01);
  EXPECT_LE(e.wall_time, t1 + 0.01);
  /* TensorBoard's field numbers on the wire, whatever our .proto says:
   * wall_time is field 1 (64-bit), file_version field 3 (length-delimited). */
  const std::string &p = r.payloads[0];
  ASSERT_EQ(p.size(), 1u + 8 + 2 + 13);
  EXPECT_EQ(static_cast<unsigned char>(p[0]), 0x09);
  EXPECT_EQ(p.substr(9), std::string("\x1a\x0d") + "brain.Event:2");
}

TEST_F(Tb, EachScalarsCallIsOneEvent) {
  Open();
  double t0 = WallNow();
  Scalars(1, {"train/loss"}, {7.25f});
  Scalars(2, {"train/loss", "train/lr", "train/grad_norm"}, {6.5f, 1e-3f, 0.75f});
  Scalars(int64_t(1) << 40, {"eval/loss", "eval/accuracy"}, {3.0f, 0.125f});
  double t1 = WallNow();
  tb_close(w_);
  w_ = nullptr;
  std::vector<Event> ev = ReadEvents();
  ASSERT_EQ(ev.size(), 4u);
  EXPECT_TRUE(ev[0].is_version);
  struct Want {
    int64_t step;
    std::vector<std::pair<std::string, float>> values;
  } want[] = {{1, {{"train/loss", 7.25f}}},
              {2, {{"train/loss", 6.5f}, {"train/lr", 1e-3f}, {"train/grad_norm", 0.75f}}},
              {int64_t(1) << 40, {{"eval/loss", 3.0f}, {"eval/accuracy", 0.125f}}}};
  for (int i = 0; i < 3; i++) {
    SCOPED_TRACE("event " + std::to_string(i + 1));
    const Event &e = ev[i + 1];
    EXPECT_FALSE(e.is_version);
    EXPECT_EQ(e.step, want[i].step);
    EXPECT_GE(e.wall_time, t0 - 0.01);
    EXPECT_LE(e.wall_time, t1 + 0.01);
    EXPECT_EQ(e.values, want[i].values);
  }
  EXPECT_LE(ev[1].wall_time, ev[2].wall_time);
  EXPECT_LE(ev[2].wall_time, ev[3].wall_time);
}

TEST_F(Tb, ReadableAfterFlushBeforeClose) {
  Open();
  Scalars(10, {"a"}, {1.0f});
  ASSERT_EQ(tb_flush(w_), STATUS_OK) << status_message();
  std::vector<Event> ev = ReadEvents();
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[1].step, 10);
  EXPECT_EQ(ev[1].values, (std::vector<std::pair<std::string, float>>{{"a", 1.0f}}));
  Scalars(11, {"a"}, {2.0f});
  ASSERT_EQ(tb_flush(w_), STATUS_OK) << status_message();
  ev = ReadEvents();
  ASSERT_EQ(ev.size(), 3u);
  EXPECT_EQ(ev[2].step, 11);
  EXPECT_EQ(ev[2].values, (std::vector<std::pair<std::string, float>>{{"a", 2.0f}}));
  /* Closing adds nothing after the last event. */
  size_t bytes = ReadBytes(OnlyFile()).size();
  tb_close(w_);
  w_ = nullptr;
  EXPECT_EQ(ReadBytes(OnlyFile()).size(), bytes);
  EXPECT_EQ(ReadEvents().size(), 3u);
}

TEST_F(Tb, ValuesRoundTripExactly) {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> v = {
      0.0f,        -1.0f,        1e-30f,   std::numeric_limits<float>::denorm_min(),
      FLT_MIN,     FLT_MAX,      -FLT_MAX, 1e30f,
      16777216.0f, 3.14159265f,  0.1f,     inf,
      -inf,        std::nanf("")};
  std::vector<std::string> tags;
  for (size_t i = 0; i < v.size(); i++) tags.push_back("v" + std::to_string(i));
  Open();
  Scalars(3, tags, v);
  ASSERT_EQ(tb_flush(w_), STATUS_OK);
  std::vector<Event> ev = ReadEvents();
  ASSERT_EQ(ev.size(), 2u);
  ASSERT_EQ(ev[1].values.size(), v.size());
  for (size_t i = 0; i < v.size(); i++) {
    EXPECT_EQ(ev[1].values[i].first, tags[i]);
    if (std::isnan(v[i]))
      EXPECT_TRUE(std::isnan(ev[1].values[i].second)) << tags[i];
    else
      EXPECT_EQ(Bits(ev[1].values[i].second), Bits(v[i])) << tags[i] << " = " << v[i];
  }
}

TEST_F(Tb, ManyScalarsInOneEvent) {
  std::vector<std::string> tags;
  std::vector<float> v;
  for (int i = 0; i < 100; i++) {
    tags.push_back("layer" + std::to_string(i) + "/trust_ratio");
    v.push_back(0.5f + float(i));
  }
  Open();
  Scalars(99, tags, v);
  tb_close(w_);
  w_ = nullptr;
  std::vector<Event> ev = ReadEvents();
  ASSERT_EQ(ev.size(), 2u);
  ASSERT_EQ(ev[1].values.size(), 100u);
  for (int i = 0; i < 100; i++) {
    EXPECT_EQ(ev[1].values[i].first, tags[i]);
    EXPECT_EQ(ev[1].values[i].second, v[i]);
  }
}

TEST_F(Tb, OpenFailsNamingThePath) {
  /* A parent that does not exist, and one that is a plain file (which even
   * root cannot write under). */
  std::string plain = dir_ + "/plain";
  ASSERT_TRUE(std::ofstream(plain).good());
  for (const std::string &bad : {dir_ + "/no/such/dir", plain + "/sub"}) {
    SCOPED_TRACE(bad);
    tb_writer *w = reinterpret_cast<tb_writer *>(&w_); /* a value tb_open must clear */
    status_t st = tb_open(&w, bad.c_str());
    EXPECT_EQ(st, STATUS_IO);
    EXPECT_EQ(w, nullptr);
    EXPECT_NE(std::string(status_message()).find(bad), std::string::npos) << status_message();
  }
  tb_close(nullptr); /* a no-op */
}

/* ---- The independent Python reader ----------------------------------------- */
class TbReference : public Tb {};

TEST_F(TbReference, PythonReaderAgrees) {
#if !defined(MLMPI_PYTHON3) || !defined(MLMPI_TFEVENTS_DIR)
  GTEST_SKIP() << "no /usr/bin/python3 at configure time: tests/reference/tfevents.py not run";
#else
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<std::string> tags = {"zero", "minus_one", "tiny", "huge", "pi", "inf", "nan"};
  std::vector<float> v = {0.0f, -1.0f, 1e-30f, FLT_MAX, 3.14159265f, inf, std::nanf("")};
  Open();
  Scalars(7, {"train/loss"}, {9.5f});
  Scalars(8, tags, v);
  ASSERT_EQ(tb_flush(w_), STATUS_OK);

  std::string events = OnlyFile(), script = dir_ + "/read.py";
  std::ofstream(script) << "import sys\n"
                           "sys.path.insert(0, sys.argv[1])\n"
                           "try:\n"
                           "    import tfevents\n"
                           "except ImportError as e:\n"
                           "    print('SKIP', e)\n"
                           "    sys.exit(77)\n"
                           "version, events = tfevents.read_events(sys.argv[2])\n"
                           "print('version', version)\n"
                           "for step, d in events:\n"
                           "    print('event', step, len(d))\n"
                           "    for k, x in d.items():\n"
                           "        print('value', k, float(x).hex())\n";
  std::string cmd =
      std::string(MLMPI_PYTHON3) + " " + script + " " + MLMPI_TFEVENTS_DIR + " " + events + " 2>&1";
  FILE *p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr) << cmd;
  std::vector<std::string> lines;
  char line[4096];
  while (fgets(line, sizeof line, p)) lines.emplace_back(line, strcspn(line, "\n"));
  int rc = pclose(p);
  ASSERT_TRUE(WIFEXITED(rc)) << cmd;
  if (WEXITSTATUS(rc) == 77)
    GTEST_SKIP() << "python3-protobuf is not installed: " << (lines.empty() ? "" : lines[0]);
  std::string all;
  for (const auto &l : lines) all += l + "\n";
  ASSERT_EQ(WEXITSTATUS(rc), 0) << cmd << "\n" << all;

  ASSERT_EQ(lines.size(), 1u + 2 + 1 + tags.size()) << all;
  EXPECT_EQ(lines[0], "version brain.Event:2");
  EXPECT_EQ(lines[1], "event 7 1");
  EXPECT_EQ(lines[2].substr(0, 17), "value train/loss ");
  EXPECT_EQ(strtof(lines[2].c_str() + 17, nullptr), 9.5f) << lines[2];
  EXPECT_EQ(lines[3], "event 8 " + std::to_string(tags.size()));
  for (size_t i = 0; i < tags.size(); i++) {
    const std::string &l = lines[4 + i], head = "value " + tags[i] + " ";
    ASSERT_EQ(l.substr(0, head.size()), head) << all;
    float got = float(strtod(l.c_str() + head.size(), nullptr));
    if (std::isnan(v[i]))
      EXPECT_TRUE(std::isnan(got)) << l;
    else
      EXPECT_EQ(Bits(got), Bits(v[i])) << l;
  }
#endif
}

}  // namespace
