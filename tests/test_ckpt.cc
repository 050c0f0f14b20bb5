/* test_ckpt.cc: checkpoints (trainer/ckpt.h): a save loads back bit for bit
 * (parameters, any list of named optimizer states, counters, info), the
 * files are those the format names and are read back independently with
 * core's safetensors reader, keep removes the oldest, damaged and partial
 * checkpoints are skipped and cleaned up, and every failure names its file
 * or tensor and leaves nothing half-written behind. */
#include <cjson/cJSON.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

extern "C" {
#include "ckpt.h"
}

namespace fs = std::filesystem;

namespace {

/* The warning of a skipped checkpoint is asserted on: make sure logging is
 * not turned down from the environment before the first line is logged. */
const bool log_env_cleared = [] {
  unsetenv("MLMPI_LOG_LEVEL");
  unsetenv("MLMPI_LOG_SUBSYS");
  return true;
}();

std::string ReadBytes(const std::string &path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

void WriteBytes(const std::string &path, const std::string &bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), (std::streamsize)bytes.size());
}

/* The names in a directory, "." and ".." left out. */
std::set<std::string> Entries(const std::string &dir) {
  std::set<std::string> out;
  std::error_code ec;
  for (const auto &e : fs::directory_iterator(dir, ec)) out.insert(e.path().filename().string());
  return out;
}

bool SameBits(const std::vector<float> &a, const std::vector<float> &b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

struct Shape {
  const char *name;
  std::vector<int64_t> dims;
};

/* Names as a BERT checkpoint has them, of ranks 1 to 3. */
const std::vector<Shape> kShapes = {
    {"bert.embeddings.word_embeddings.weight", {7, 5}},
    {"bert.encoder.layer.0.attention.self.query.bias", {5}},
    {"cls.predictions.transform.dense.weight", {3, 2, 4}},
    {"cls.predictions.bias", {1}},
};

void MakeTable(param_table *t, const std::vector<Shape> &shapes) {
  param_table_init(t);
  for (const auto &s : shapes)
    ASSERT_GE(param_table_add(t, s.name, (int)s.dims.size(), s.dims.data(), true, true), 0)
        << status_message();
}

class Ckpt : public testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = testing::TempDir() + "mlmpi_ckpt_XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back(0);
    ASSERT_NE(mkdtemp(buf.data()), nullptr) << strerror(errno);
    tmp_ = buf.data();
    dir_ = tmp_ + "/ckpts";
    MakeTable(&t_, kShapes);
    params_ = Values(1);
  }
  void TearDown() override {
    param_table_free(&t_);
    std::error_code ec;
    fs::remove_all(tmp_, ec);
  }

  /* Distinct values for each buffer (salt), not integers, of both signs. */
  std::vector<float> Values(int salt) const {
    std::vector<float> v(t_.total);
    for (size_t i = 0; i < v.size(); i++)
      v[i] = (float)salt * 1000.0f + (float)i * 0.375f * (i % 2 ? -1.0f : 1.0f) + 0.0625f;
    return v;
  }

  /* An optimizer state list of the given names, each with its own values. */
  ckpt_optim Optim(const std::vector<const char *> &names, std::vector<std::vector<float>> &bufs,
                   int salt) const {
    ckpt_optim o = {};
    bufs.clear();
    for (size_t k = 0; k < names.size(); k++) bufs.push_back(Values(salt + 10 * (int)k));
    o.n = (int)names.size();
    for (size_t k = 0; k < names.size(); k++) {
      o.names[k] = names[k];
      o.bufs[k] = bufs[k].data();
    }
    o.taken = 1000 + salt;
    o.skipped = 7 + (uint64_t)salt;
    return o;
  }

  /* Saves step `step` with parameters Values(step) and moments m, v. */
  status_t Save(int64_t step, int64_t keep = 3) {
    std::vector<float> p = Values((int)step);
    std::vector<std::vector<float>> bufs;
    ckpt_optim o = Optim({"m", "v"}, bufs, (int)step);
    ckpt_info info = {step, 2, 0x1234u + (uint64_t)step, 42};
    return ckpt_save(dir_.c_str(), &info, &t_, p.data(), &o, "[train]\nsteps = 5\n", keep);
  }

  std::string StepDir(int64_t step) const { return dir_ + "/step-" + std::to_string(step); }

  std::string Latest() const {
    char path[4096];
    EXPECT_EQ(ckpt_find_latest(dir_.c_str(), path, sizeof path), STATUS_OK) << status_message();
    return path;
  }

  /* Loads params only; returns the status and keeps the message. */
  status_t LoadParams(const std::string &path, std::string *msg = nullptr) {
    std::vector<float> p(t_.total);
    ckpt_info info;
    status_t st = ckpt_load(path.c_str(), &info, &t_, p.data(), nullptr);
    if (msg) *msg = status_message();
    return st;
  }

  std::string tmp_, dir_;
  param_table t_;
  std::vector<float> params_;
};

/* ---- Round trips ------------------------------------------------------------ */

TEST_F(Ckpt, RoundTripsParamsStatesCountersAndInfo) {
  std::vector<std::vector<float>> bufs;
  ckpt_optim o = Optim({"m", "v"}, bufs, 3);
  o.taken = 123456789012LL;
  o.skipped = 0xFFFFFFFFFFFFFFF0ull; /* the whole uint64 range */
  const ckpt_info info = {12, 3, 0xFEDCBA9876543210ull, 42};
  ASSERT_EQ(ckpt_save(dir_.c_str(), &info, &t_, params_.data(), &o, "cfg", 3), STATUS_OK)
      << status_message();

  EXPECT_EQ(Entries(dir_), std::set<std::string>{"step-12"});
  EXPECT_EQ(Entries(StepDir(12)),
            (std::set<std::string>{"model.safetensors", "optimizer.safetensors", "meta.json"}));

  std::vector<float> p(t_.total, 0), m(t_.total, 0), v(t_.total, 0);
  ckpt_optim back = {};
  back.n = 2;
  back.names[0] = "m";
  back.names[1] = "v";
  back.bufs[0] = m.data();
  back.bufs[1] = v.data();
  ckpt_info got = {};
  ASSERT_EQ(ckpt_load(StepDir(12).c_str(), &got, &t_, p.data(), &back), STATUS_OK)
      << status_message();
  EXPECT_TRUE(SameBits(p, params_));
  EXPECT_TRUE(SameBits(m, bufs[0]));
  EXPECT_TRUE(SameBits(v, bufs[1]));
  EXPECT_EQ(back.taken, o.taken);
  EXPECT_EQ(back.skipped, o.skipped);
  EXPECT_EQ(got.step, 12);
  EXPECT_EQ(got.world_size, 3);
  EXPECT_EQ(got.data_fingerprint, 0xFEDCBA9876543210ull);
  EXPECT_EQ(got.seed, 42);
}

/* The states are loaded by name, not by position. */
TEST_F(Ckpt, StatesLoadByNameWhateverTheOrder) {
  std::vector<std::vector<float>> bufs;
  ckpt_optim o = Optim({"m", "v"}, bufs, 5);
  const ckpt_info info = {1, 1, 9, 42};
  ASSERT_EQ(ckpt_save(dir_.c_str(), &info, &t_, params_.data(), &o, "", 3), STATUS_OK);
  std::vector<float> p(t_.total), a(t_.total), b(t_.total);
  ckpt_optim back = {};
  back.n = 2;
  back.names[0] = "v";
  back.names[1] = "m";
  back.bufs[0] = a.data();
  back.bufs[1] = b.data();
  ckpt_info got;
  ASSERT_EQ(ckpt_load(StepDir(1).c_str(), &got, &t_, p.data(), &back), STATUS_OK)
      << status_message();
  EXPECT_TRUE(SameBits(a, bufs[1]));
  EXPECT_TRUE(SameBits(b, bufs[0]));
}

/* Seeds are int64 (train.seed takes any non-negative one): every bit comes
 * back, not a double's 53. */
TEST_F(Ckpt, LargeSeedAndStepComeBackExactly) {
  std::vector<std::vector<float>> bufs;
  ckpt_optim o = Optim({"m", "v"}, bufs, 1);
  const int64_t seed = (INT64_C(1) << 53) + 1, step = (INT64_C(1) << 40) + 3;
  const ckpt_info info = {step, 1, UINT64_MAX, seed};
  ASSERT_EQ(ckpt_save(dir_.c_str(), &info, &t_, params_.data(), &o, "", 3), STATUS_OK)
      << status_message();
  std::vector<float> p(t_.total);
  ckpt_info got = {};
  ASSERT_EQ(ckpt_load(StepDir(step).c_str(), &got, &t_, p.data(), nullptr), STATUS_OK)
      << status_message();
  EXPECT_EQ(got.step, step);
  EXPECT_EQ(got.data_fingerprint, UINT64_MAX);
  EXPECT_EQ(got.seed, seed) << "seed " << seed << " came back as " << got.seed;
}

/* The files read back with core's safetensors reader, not ckpt_load. */
TEST_F(Ckpt, FilesHoldTheNamedTensors) {
  std::vector<std::vector<float>> bufs;
  ckpt_optim o = Optim({"m", "v"}, bufs, 2);
  const ckpt_info info = {4, 1, 1, 42};
  ASSERT_EQ(ckpt_save(dir_.c_str(), &info, &t_, params_.data(), &o, "", 3), STATUS_OK)
      << status_message();

  st_file *f = nullptr;
  std::string model = StepDir(4) + "/model.safetensors";
  ASSERT_EQ(st_read(model.c_str(), &f), STATUS_OK) << status_message();
  EXPECT_EQ(f->n, t_.n);
  for (int i = 0; i < t_.n; i++) {
    const param_info *pi = &t_.p[i];
    const st_tensor *x = st_find(f, pi->name);
    ASSERT_NE(x, nullptr) << pi->name;
    EXPECT_EQ(x->dtype, DTYPE_F32);
    ASSERT_EQ(x->ndim, pi->ndim) << pi->name;
    for (int d = 0; d < pi->ndim; d++) EXPECT_EQ(x->shape[d], pi->shape[d]) << pi->name;
    ASSERT_EQ(x->numel, pi->numel);
    EXPECT_EQ(std::memcmp(x->data, params_.data() + pi->offset, pi->numel * sizeof(float)), 0)
        << pi->name;
  }
  st_free(f);

  std::string optim = StepDir(4) + "/optimizer.safetensors";
  ASSERT_EQ(st_read(optim.c_str(), &f), STATUS_OK) << status_message();
  EXPECT_EQ(f->n, 2 * t_.n) << "only m.* and v.*";
  for (int k = 0; k < 2; k++)
    for (int i = 0; i < t_.n; i++) {
      const param_info *pi = &t_.p[i];
      std::string name = std::string(o.names[k]) + "." + pi->name;
      const st_tensor *x = st_find(f, name.c_str());
      ASSERT_NE(x, nullptr) << name;
      EXPECT_EQ(x->dtype, DTYPE_F32);
      ASSERT_EQ(x->numel, pi->numel) << name;
      EXPECT_EQ(std::memcmp(x->data, bufs[k].data() + pi->offset, pi->numel * sizeof(float)), 0)
          << name;
    }
  st_free(f);

  /* meta.json is JSON with the info the loader reads. */
  cJSON *j = cJSON_Parse(ReadBytes(StepDir(4) + "/meta.json").c_str());
  ASSERT_NE(j, nullptr);
  EXPECT_EQ(cJSON_GetObjectItem(j, "step")->valuedouble, 4);
  EXPECT_NE(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "crc32c"), "model.safetensors"), nullptr);
  cJSON_Delete(j);
}

/* The format is not tied to LAMB's two moments. */
TEST_F(Ckpt, ThreeStatesOfOtherNames) {
  std::vector<std::vector<float>> bufs;
  ckpt_optim o = Optim({"a", "b", "c"}, bufs, 4);
  const ckpt_info info = {6, 1, 2, 42};
  ASSERT_EQ(ckpt_save(dir_.c_str(), &info, &t_, params_.data(), &o, "", 3), STATUS_OK)
      << status_message();

  st_file *f = nullptr;
  std::string optim = StepDir(6) + "/optimizer.safetensors";
  ASSERT_EQ(st_read(optim.c_str(), &f), STATUS_OK) << status_message();
  EXPECT_EQ(f->n, 3 * t_.n);
  for (const char *n : {"a", "b", "c"})
    for (int i = 0; i < t_.n; i++)
      EXPECT_NE(st_find(f, (std::string(n) + "." + t_.p[i].name).c_str()), nullptr) << n;
  st_free(f);

  std::vector<std::vector<float>> back(3, std::vector<float>(t_.total));
  std::vector<float> p(t_.total);
  ckpt_optim bo = {};
  bo.n = 3;
  const char *names[] = {"a", "b", "c"};
  for (int k = 0; k < 3; k++) bo.names[k] = names[k], bo.bufs[k] = back[k].data();
  ckpt_info got;
  ASSERT_EQ(ckpt_load(StepDir(6).c_str(), &got, &t_, p.data(), &bo), STATUS_OK) << status_message();
  for (int k = 0; k < 3; k++) EXPECT_TRUE(SameBits(back[k], bufs[k])) << names[k];
  EXPECT_EQ(bo.taken, o.taken);
  EXPECT_EQ(bo.skipped, o.skipped);

  /* Asking for a state the checkpoint lacks names the missing tensor. */
  bo.names[2] = "m";
  EXPECT_EQ(ckpt_load(StepDir(6).c_str(), &got, &t_, p.data(), &bo), STATUS_ARG);
  EXPECT_NE(std::string(status_message()).find(std::string("m.") + t_.p[0].name), std::string::npos)
      << status_message();
}

TEST_F(Ckpt, NullOptimizerLoadsOnlyTheParams) {
  ASSERT_EQ(Save(8), STATUS_OK) << status_message();
  std::vector<float> p(t_.total, 0);
  ckpt_info got = {};
  ASSERT_EQ(ckpt_load(StepDir(8).c_str(), &got, &t_, p.data(), nullptr), STATUS_OK)
      << status_message();
  EXPECT_TRUE(SameBits(p, Values(8)));
  EXPECT_EQ(got.step, 8);
  EXPECT_EQ(got.world_size, 2);
  EXPECT_EQ(got.data_fingerprint, 0x1234u + 8u);
}

/* A step saved again (a retry) replaces the earlier one. */
TEST_F(Ckpt, SavingAStepAgainReplacesIt) {
  ASSERT_EQ(Save(3), STATUS_OK) << status_message();
  std::vector<std::vector<float>> bufs;
  ckpt_optim o = Optim({"m", "v"}, bufs, 77);
  std::vector<float> p2 = Values(77);
  const ckpt_info info = {3, 4, 5, 6};
  ASSERT_EQ(ckpt_save(dir_.c_str(), &info, &t_, p2.data(), &o, "", 3), STATUS_OK)
      << status_message();
  std::vector<float> p(t_.total);
  ckpt_info got;
  ASSERT_EQ(ckpt_load(StepDir(3).c_str(), &got, &t_, p.data(), nullptr), STATUS_OK)
      << status_message();
  EXPECT_TRUE(SameBits(p, p2));
  EXPECT_EQ(got.world_size, 4);
}

/* ---- Keep and find -------------------------------------------------------------- */

TEST_F(Ckpt, KeepLeavesTheNewest) {
  for (int64_t s = 1; s <= 5; s++) ASSERT_EQ(Save(s, 2), STATUS_OK) << status_message();
  EXPECT_EQ(Entries(dir_), (std::set<std::string>{"step-4", "step-5"}));
  EXPECT_EQ(Latest(), StepDir(5));
  /* Newest by number, not by name: step-10 sorts before step-9 as text. */
  ASSERT_EQ(Save(9, 2), STATUS_OK);
  ASSERT_EQ(Save(10, 2), STATUS_OK);
  EXPECT_EQ(Entries(dir_), (std::set<std::string>{"step-9", "step-10"}));
  EXPECT_EQ(Latest(), StepDir(10));
}

TEST_F(Ckpt, NothingToFind) {
  EXPECT_EQ(Latest(), "") << "a directory that does not exist";
  ASSERT_EQ(mkdir(dir_.c_str(), 0755), 0);
  EXPECT_EQ(Latest(), "") << "an empty directory";
}

/* ---- Damage ------------------------------------------------------------------- */

TEST_F(Ckpt, FlippedByteInModelIsSkippedAndRefused) {
  for (int64_t s = 1; s <= 5; s++) ASSERT_EQ(Save(s, 2), STATUS_OK) << status_message();
  /* The last byte is tensor data: the file still parses, only the checksum
   * can tell. */
  std::string model = StepDir(5) + "/model.safetensors", bytes = ReadBytes(model);
  ASSERT_FALSE(bytes.empty());
  bytes.back() ^= 0x01;
  WriteBytes(model, bytes);
  st_file *f = nullptr;
  ASSERT_EQ(st_read(model.c_str(), &f), STATUS_OK) << "the damage should parse";
  st_free(f);

  testing::internal::CaptureStderr();
  std::string latest = Latest();
  std::string log = testing::internal::GetCapturedStderr();
  EXPECT_EQ(latest, StepDir(4));
  EXPECT_NE(log.find(StepDir(5)), std::string::npos) << log;
  EXPECT_NE(log.find("model.safetensors is damaged"), std::string::npos) << log;

  std::string msg;
  EXPECT_EQ(LoadParams(StepDir(5), &msg), STATUS_FORMAT);
  EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("damaged"), std::string::npos) << msg;
  EXPECT_EQ(LoadParams(StepDir(4)), STATUS_OK) << status_message();
}

TEST_F(Ckpt, TruncatedOptimizerIsSkippedAndRefused) {
  for (int64_t s = 1; s <= 5; s++) ASSERT_EQ(Save(s, 2), STATUS_OK) << status_message();
  std::string optim = StepDir(5) + "/optimizer.safetensors";
  fs::resize_file(optim, fs::file_size(optim) / 2);
  testing::internal::CaptureStderr();
  std::string latest = Latest();
  std::string log = testing::internal::GetCapturedStderr();
  EXPECT_EQ(latest, StepDir(4));
  EXPECT_NE(log.find("optimizer.safetensors"), std::string::npos) << log;
  std::string msg;
  EXPECT_NE(LoadParams(StepDir(5), &msg), STATUS_OK);
  EXPECT_NE(msg.find("optimizer.safetensors"), std::string::npos) << msg;
}

TEST_F(Ckpt, AllDamagedFindsNone) {
  ASSERT_EQ(Save(1), STATUS_OK);
  std::string model = StepDir(1) + "/model.safetensors", bytes = ReadBytes(model);
  bytes.back() ^= 0x80;
  WriteBytes(model, bytes);
  testing::internal::CaptureStderr();
  EXPECT_EQ(Latest(), "");
  testing::internal::GetCapturedStderr();
}

TEST_F(Ckpt, MissingMetaIsAnErrorNamingTheCheckpoint) {
  ASSERT_EQ(Save(1), STATUS_OK);
  ASSERT_EQ(Save(2), STATUS_OK);
  ASSERT_EQ(unlink((StepDir(2) + "/meta.json").c_str()), 0);
  std::string msg;
  EXPECT_NE(LoadParams(StepDir(2), &msg), STATUS_OK);
  EXPECT_NE(msg.find(StepDir(2)), std::string::npos) << msg;
  EXPECT_NE(msg.find("meta.json"), std::string::npos) << msg;
  testing::internal::CaptureStderr();
  EXPECT_EQ(Latest(), StepDir(1));
  testing::internal::GetCapturedStderr();
}

/* Each field the loader needs, taken out in turn; and text that is not JSON. */
TEST_F(Ckpt, MetaMissingAFieldIsFormatError) {
  ASSERT_EQ(Save(1), STATUS_OK);
  const std::string meta = StepDir(1) + "/meta.json", good = ReadBytes(meta);
  ASSERT_EQ(LoadParams(StepDir(1)), STATUS_OK) << status_message();
  const char *fields[] = {"step",
                          "world_size",
                          "data_fingerprint",
                          "seed",
                          "crc32c",
                          "crc32c/model.safetensors",
                          "crc32c/optimizer.safetensors"};
  for (const char *field : fields) {
    cJSON *j = cJSON_Parse(good.c_str());
    ASSERT_NE(j, nullptr);
    const char *slash = strchr(field, '/');
    if (slash)
      cJSON_DeleteItemFromObject(cJSON_GetObjectItem(j, "crc32c"), slash + 1);
    else
      cJSON_DeleteItemFromObject(j, field);
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    WriteBytes(meta, text);
    free(text);
    std::string msg;
    EXPECT_EQ(LoadParams(StepDir(1), &msg), STATUS_FORMAT) << "without " << field << ": " << msg;
    EXPECT_NE(msg.find(StepDir(1)), std::string::npos) << msg;
  }
  WriteBytes(meta, "{\"step\": 1, ");
  EXPECT_EQ(LoadParams(StepDir(1)), STATUS_FORMAT) << "cut-off JSON";
  WriteBytes(meta, good);
  EXPECT_EQ(LoadParams(StepDir(1)), STATUS_OK) << status_message();
}

/* ---- Partial directories ------------------------------------------------------ */

/* The partial directories hold complete, valid files: only their name says
 * they are unfinished. */
TEST_F(Ckpt, PartialDirectoryIsNeverFoundAndIsRemovedBySave) {
  ASSERT_EQ(Save(1), STATUS_OK);
  const std::string partial = dir_ + "/.step-7.tmp123";
  fs::copy(StepDir(1), partial);
  ASSERT_EQ(LoadParams(partial), STATUS_OK) << status_message();
  EXPECT_EQ(Latest(), StepDir(1));
  ASSERT_EQ(Save(2), STATUS_OK) << status_message();
  EXPECT_FALSE(fs::exists(partial));
  EXPECT_EQ(Entries(dir_), (std::set<std::string>{"step-1", "step-2"}));
}

TEST_F(Ckpt, OnlyAPartialDirectoryFindsNone) {
  ASSERT_EQ(Save(7), STATUS_OK);
  ASSERT_EQ(rename(StepDir(7).c_str(), (dir_ + "/.step-7.tmp123").c_str()), 0);
  EXPECT_EQ(Latest(), "");
}

/* ---- Loading into another layout ------------------------------------------------ */

TEST_F(Ckpt, OtherShapeNamesTheTensor) {
  ASSERT_EQ(Save(1), STATUS_OK);
  std::vector<Shape> shapes = kShapes;
  shapes[2].dims = {3, 4, 2};
  param_table other;
  MakeTable(&other, shapes);
  std::vector<float> p(other.total);
  ckpt_info got;
  EXPECT_NE(ckpt_load(StepDir(1).c_str(), &got, &other, p.data(), nullptr), STATUS_OK);
  EXPECT_NE(std::string(status_message()).find(kShapes[2].name), std::string::npos)
      << status_message();
  param_table_free(&other);
}

TEST_F(Ckpt, TensorMissingFromTheCheckpointIsNamed) {
  ASSERT_EQ(Save(1), STATUS_OK);
  std::vector<Shape> shapes = kShapes;
  shapes.push_back({"bert.pooler.dense.bias", {5}});
  param_table other;
  MakeTable(&other, shapes);
  std::vector<float> p(other.total);
  ckpt_info got;
  EXPECT_NE(ckpt_load(StepDir(1).c_str(), &got, &other, p.data(), nullptr), STATUS_OK);
  EXPECT_NE(std::string(status_message()).find("bert.pooler.dense.bias"), std::string::npos)
      << status_message();
  param_table_free(&other);
}

TEST_F(Ckpt, TensorMissingFromTheTableIsNamed) {
  ASSERT_EQ(Save(1), STATUS_OK);
  std::vector<Shape> shapes = kShapes;
  shapes.erase(shapes.begin() + 1);
  param_table other;
  MakeTable(&other, shapes);
  std::vector<float> p(other.total);
  ckpt_info got;
  EXPECT_NE(ckpt_load(StepDir(1).c_str(), &got, &other, p.data(), nullptr), STATUS_OK);
  EXPECT_NE(std::string(status_message()).find(kShapes[1].name), std::string::npos)
      << status_message();
  param_table_free(&other);
}

/* ---- Failed saves ------------------------------------------------------------- */

/* As root, permissions would not stop the writer: a path through a regular
 * file does. */
TEST_F(Ckpt, SaveUnderARegularFileFailsNamingThePath) {
  const std::string file = tmp_ + "/not-a-dir";
  WriteBytes(file, "x");
  dir_ = file + "/ckpts";
  std::string msg;
  EXPECT_EQ(Save(1), STATUS_IO);
  msg = status_message();
  EXPECT_NE(msg.find(dir_), std::string::npos) << msg;
  EXPECT_EQ(ReadBytes(file), "x");
  EXPECT_EQ(Entries(tmp_), std::set<std::string>{"not-a-dir"});
}

TEST_F(Ckpt, SaveIntoARegularFileFailsNamingThePath) {
  WriteBytes(dir_, "x");
  EXPECT_EQ(Save(1), STATUS_IO);
  std::string msg = status_message();
  EXPECT_NE(msg.find(dir_), std::string::npos) << msg;
  EXPECT_EQ(ReadBytes(dir_), "x");
  EXPECT_EQ(Entries(tmp_), std::set<std::string>{"ckpts"});
}

/* A failure after the files are written (the step's directory cannot be
 * replaced: it holds a folder) leaves no temporary directory behind. */
// A directory in the way of step-3 (an earlier attempt's, with anything in
// it) is moved aside and removed only once the new step-3 is in place.
TEST_F(Ckpt, SaveOverAStaleStepDirectoryReplacesIt) {
  ASSERT_EQ(Save(1), STATUS_OK);
  ASSERT_EQ(mkdir(StepDir(3).c_str(), 0755), 0);
  ASSERT_EQ(mkdir((StepDir(3) + "/sub").c_str(), 0755), 0);
  EXPECT_EQ(Save(3), STATUS_OK) << status_message();
  EXPECT_EQ(Entries(dir_), (std::set<std::string>{"step-1", "step-3"}));
  EXPECT_EQ(Entries(StepDir(3)),
            (std::set<std::string>{"meta.json", "model.safetensors", "optimizer.safetensors"}));
  EXPECT_EQ(Latest(), StepDir(3));
}

}  // namespace
