// test_service.cc: the dataset service on synthetic shards: batches through
// one or two replicas equal the in-process ones byte for byte, a replica
// killed and restarted mid-stream loses and repeats nothing, a replica stopped
// (SIGSTOP) or killed beside another is failed over, a get from a stopped only
// replica ends at its deadline, and malformed, oversized, wrong-version,
// wrong-job and unauthenticated requests are refused while the server keeps
// serving.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <future>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "service.h"
#include "service.pb-c.h"
#include "shard.h" /* writes the shards it serves */

#ifndef MLMPI_DATA_BIN
#error "MLMPI_DATA_BIN (the path of mlmpi-data) must be defined"
#endif

namespace {

const int kV = 500, kCLS = 1, kSEP = 2, kMASK = 3, kPAD = 0;
const uint64_t kGlobal = 64;

// Two shards of `docs` documents of random sentences, ids in [10, kV).
void make_corpus(const std::string &dir, int docs, uint32_t seed) {
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
  snprintf(m.split, sizeof m.split, "train");
  std::mt19937 rng(seed);
  for (int part = 0; part < 2; part++) {
    std::string p = dir + "/train-0000" + std::to_string(part) + ".mlms";
    shard_writer *w;
    ASSERT_EQ(shard_writer_open(&w, p.c_str(), &m), STATUS_OK) << status_message();
    for (int d = part; d < docs; d += 2) {
      std::vector<int32_t> ids;
      std::vector<uint32_t> ends;
      int ns = 1 + (int)(rng() % 8);
      for (int k = 0; k < ns; k++) {
        int len = 1 + (int)(rng() % 30);
        for (int i = 0; i < len; i++) ids.push_back(10 + (int32_t)(rng() % (kV - 10)));
        ends.push_back((uint32_t)ids.size());
      }
      std::vector<uint8_t> words((ids.size() + 7) / 8, 0);
      for (size_t i = 0; i < ids.size(); i++)
        if (i % 3 == 0) words[i / 8] |= (uint8_t)(1u << (i % 8));
      ASSERT_EQ(shard_writer_add(w, ids.data(), ids.size(), ends.data(), ends.size(), words.data()),
                STATUS_OK);
    }
    ASSERT_EQ(shard_writer_close(w), STATUS_OK) << status_message();
  }
}

// The corpora are made on first use and removed when the tests end.
std::vector<std::string> &made_dirs() {
  static std::vector<std::string> v;
  return v;
}

struct RemoveCorpora : ::testing::Environment {
  void TearDown() override {
    for (const std::string &d : made_dirs()) {
      for (const char *f : {"/train-00000.mlms", "/train-00001.mlms"}) unlink((d + f).c_str());
      rmdir(d.c_str());
    }
  }
};
const auto *const kRemoveCorpora = ::testing::AddGlobalTestEnvironment(new RemoveCorpora);

const std::string &make_once(std::string &dir, const char *name, int docs, uint32_t seed) {
  if (dir.empty()) {
    dir = ::testing::TempDir() + name + std::to_string(getpid());
    make_corpus(dir, docs, seed);
    made_dirs().push_back(dir);
  }
  return dir;
}

const std::string &corpus() {
  static std::string dir;
  return make_once(dir, "svc_corpus_", 120, 7);
}

const std::string &other_corpus() {
  static std::string dir;
  return make_once(dir, "svc_corpus_b_", 90, 8);
}

data_config small_config() {
  data_config c = data_config_default();
  c.seq_len = 64;
  c.max_predictions = 10;
  return c;
}

struct Batch {
  data_batch b{};
  Batch(int n, const data_config &c) {
    EXPECT_EQ(data_batch_alloc(&b, n, c.seq_len, c.max_predictions), STATUS_OK);
  }
  ~Batch() { data_batch_free(&b); }
};

// Byte-for-byte equality of the first n rows.
::testing::AssertionResult same_rows(const data_batch &a, const data_batch &b, int n) {
  size_t nt = (size_t)n * a.T * 4, np = (size_t)n * a.P * 4;
  if (a.T != b.T || a.P != b.P) return ::testing::AssertionFailure() << "shapes differ";
  const char *bad = memcmp(a.input_ids, b.input_ids, nt)       ? "input_ids"
                    : memcmp(a.input_mask, b.input_mask, nt)   ? "input_mask"
                    : memcmp(a.segment_ids, b.segment_ids, nt) ? "segment_ids"
                    : memcmp(a.masked_lm_positions, b.masked_lm_positions, np)
                        ? "masked_lm_positions"
                    : memcmp(a.masked_lm_ids, b.masked_lm_ids, np)         ? "masked_lm_ids"
                    : memcmp(a.masked_lm_weights, b.masked_lm_weights, np) ? "masked_lm_weights"
                    : memcmp(a.next_sentence_labels, b.next_sentence_labels, (size_t)n * 4)
                        ? "next_sentence_labels"
                    : memcmp(a.target_ids, b.target_ids, nt)         ? "target_ids"
                    : memcmp(a.target_weights, b.target_weights, nt) ? "target_weights"
                                                                     : nullptr;
  if (bad) return ::testing::AssertionFailure() << bad << " differ";
  return ::testing::AssertionSuccess();
}

struct Local {
  dataset *d = nullptr;
  Local(const std::string &dir, const data_config &c) {
    EXPECT_EQ(dataset_open(&d, dir.c_str(), "train", &c), STATUS_OK) << status_message();
  }
  ~Local() { dataset_free(d); }
  void get(uint64_t step, uint64_t first, int count, data_batch *out) {
    ASSERT_EQ(dataset_get_batch(d, kGlobal, step, first, count, out), STATUS_OK)
        << status_message();
  }
};

struct Server {
  svc_server *s = nullptr;
  explicit Server(const std::string &dir, const char *token = nullptr, int workers = 2) {
    svc_server_config c = svc_server_config_default();
    c.data_dir = dir.c_str();
    c.port = 0;
    c.workers = workers;
    c.token = token;
    EXPECT_EQ(svc_server_start(&s, &c), STATUS_OK) << status_message();
  }
  ~Server() { svc_server_free(s); }
  std::string addr() const { return "127.0.0.1:" + std::to_string(svc_server_port(s)); }
  uint64_t batches() const {
    uint64_t b = 0;
    svc_server_counts(s, nullptr, &b);
    return b;
  }
};

svc_client_options options(const data_config &cfg) {
  svc_client_options o = svc_client_options_default();
  o.config = cfg;
  o.global_batch = kGlobal;
  o.timeout_ms = 20000;
  o.connect_timeout_ms = 300;
  o.request_timeout_ms = 3000;
  o.backoff_ms = 20;
  return o;
}

struct Client {
  svc_client *c = nullptr;
  status_t st;
  Client(const std::string &addrs, svc_client_options o) {
    o.addresses = addrs.c_str();  // copied by svc_client_open
    st = svc_client_open(&c, &o);
  }
  ~Client() { svc_client_free(c); }
};

// ---- Determinism ---------------------------------------------------------------

void check_matches(const data_config &cfg) {
  Local local(corpus(), cfg);
  Server server(corpus());
  std::string addr = server.addr();
  Client cl(addr, options(cfg));
  ASSERT_EQ(cl.st, STATUS_OK) << status_message();
  Batch want(32, cfg), got(32, cfg);
  const int slices[][2] = {{0, 8}, {8, 8}, {3, 13}, {0, 32}, {32, 32}, {63, 1}};
  for (uint64_t step : {0ull, 1ull, 2ull, 7ull, 40ull})
    for (auto &sl : slices) {
      local.get(step, sl[0], sl[1], &want.b);
      ASSERT_EQ(svc_client_get(cl.c, step, sl[0], sl[1], &got.b), STATUS_OK) << status_message();
      EXPECT_TRUE(same_rows(want.b, got.b, sl[1])) << "step " << step << " first " << sl[0];
    }
  EXPECT_EQ(svc_client_fingerprint(cl.c), dataset_fingerprint(local.d));
}

TEST(Service, PackedBertBatchesEqualInProcess) { check_matches(small_config()); }

TEST(Service, NspElectraWholeWordBatchesEqualInProcess) {
  data_config c = small_config();
  c.instances = INST_NSP;
  c.masking = MASK_ELECTRA;
  c.whole_word = true;
  c.seed = 99;
  check_matches(c);
}

data_config clm_config() {
  data_config c = small_config();
  c.objective = OBJECTIVE_CLM;
  c.seed = 5;
  return c;
}

TEST(Service, ClmBatchesEqualInProcess) {
  check_matches(clm_config());
  // The targets really travelled: in-process rows have them.
  data_config c = clm_config();
  Local local(corpus(), c);
  Batch b(8, c);
  local.get(2, 0, 8, &b.b);
  double w = 0;
  for (int i = 0; i < 8 * c.seq_len; i++) w += b.b.target_weights[i];
  EXPECT_GT(w, 0);
  printf(
      "clm through the service: 30 slices (5 steps) equal the in-process rows byte for byte, "
      "target_ids and target_weights included\n");
}

// A job's fingerprint holds its objective: a client expecting the masked-LM
// job is refused by batches of the causal-LM one, and the other way round.
TEST(Service, MlmAndClmJobsRefuseEachOther) {
  data_config clm = clm_config(), mlm = clm_config();
  mlm.objective = OBJECTIVE_MLM;
  Local lc(corpus(), clm), lm(corpus(), mlm);
  uint64_t fc = dataset_fingerprint(lc.d), fm = dataset_fingerprint(lm.d);
  ASSERT_NE(fc, fm);
  Server server(corpus());
  std::string addr = server.addr();
  struct Case {
    data_config asks;
    uint64_t expects;
    uint64_t served;
  } cases[] = {{clm, fm, fc}, {mlm, fc, fm}};
  for (const Case &k : cases) {
    svc_client_options o = options(k.asks);
    o.fingerprint = k.expects;
    Client cl(addr, o);
    ASSERT_EQ(cl.st, STATUS_OK) << status_message();
    Batch got(8, k.asks);
    EXPECT_EQ(svc_client_get(cl.c, 0, 0, 8, &got.b), STATUS_COMM);
    std::string msg = status_message();
    char a[32], b[32];
    snprintf(a, sizeof a, "%016llx", (unsigned long long)k.expects);
    snprintf(b, sizeof b, "%016llx", (unsigned long long)k.served);
    EXPECT_NE(msg.find(a), std::string::npos) << msg;
    EXPECT_NE(msg.find(b), std::string::npos) << msg;
  }
  printf(
      "mlm job %016llx and clm job %016llx on the same shards: a client expecting either is "
      "refused by the other's batches, naming both\n",
      (unsigned long long)fm, (unsigned long long)fc);
}

TEST(Service, PlannedSequenceOfMicroBatches) {
  data_config cfg = small_config();
  Local local(corpus(), cfg);
  Server server(corpus());
  std::string addrs_ = server.addr();
  svc_client_options o = options(cfg);
  o.depth = 6;
  Client cl(addrs_, o);
  ASSERT_EQ(cl.st, STATUS_OK) << status_message();
  std::vector<svc_key> plan;
  for (uint64_t s = 0; s < 12; s++)
    for (int m = 0; m < 4; m++) plan.push_back({s, (uint64_t)(16 + 4 * m), 4});
  ASSERT_EQ(svc_client_plan(cl.c, plan.data(), plan.size()), STATUS_OK);
  Batch want(4, cfg), got(4, cfg);
  for (const svc_key &k : plan) {
    local.get(k.step, k.first, k.count, &want.b);
    ASSERT_EQ(svc_client_get(cl.c, k.step, k.first, k.count, &got.b), STATUS_OK)
        << status_message();
    EXPECT_TRUE(same_rows(want.b, got.b, 4)) << "step " << k.step << " first " << k.first;
  }
}

TEST(Service, TwoReplicasShareTheLoad) {
  data_config cfg = small_config();
  Local local(corpus(), cfg);
  Server a(corpus()), b(corpus());
  std::string addrs_ = a.addr() + "," + b.addr();
  svc_client_options o = options(cfg);
  o.ahead = 4;
  Client cl(addrs_, o);
  ASSERT_EQ(cl.st, STATUS_OK) << status_message();
  Batch want(16, cfg), got(16, cfg);
  for (uint64_t s = 0; s < 40; s++) {
    local.get(s, 16, 16, &want.b);
    ASSERT_EQ(svc_client_get(cl.c, s, 16, 16, &got.b), STATUS_OK) << status_message();
    EXPECT_TRUE(same_rows(want.b, got.b, 16)) << "step " << s;
  }
  EXPECT_GT(a.batches(), 0u);
  EXPECT_GT(b.batches(), 0u);
}

TEST(Service, ConcurrentClientsAreServedTogether) {
  data_config cfg = small_config();
  Local local(corpus(), cfg);
  Server server(corpus());
  std::string addr = server.addr();
  std::vector<std::thread> threads;
  std::vector<int> bad(4, 0);
  for (int t = 0; t < 4; t++)
    threads.emplace_back([&, t] {
      Client cl(addr, options(cfg));
      Batch want(16, cfg), got(16, cfg);
      for (uint64_t s = 0; s < 25; s++) {
        if (svc_client_get(cl.c, s, (uint64_t)t * 16, 16, &got.b) != STATUS_OK ||
            dataset_get_batch(local.d, kGlobal, s, (uint64_t)t * 16, 16, &want.b) != STATUS_OK ||
            !same_rows(want.b, got.b, 16))
          bad[t]++;
      }
    });
  for (auto &th : threads) th.join();
  for (int t = 0; t < 4; t++) EXPECT_EQ(bad[t], 0) << "client " << t;
  EXPECT_GE(server.batches(), 100u);
}

TEST(Service, ADeadReplicaIsSkipped) {
  data_config cfg = small_config();
  Local local(corpus(), cfg);
  Server a(corpus());
  // Port 1 on loopback has no listener: every attempt there fails over.
  std::string addrs = "127.0.0.1:1," + a.addr();
  Client cl(addrs, options(cfg));
  ASSERT_EQ(cl.st, STATUS_OK) << status_message();
  Batch want(8, cfg), got(8, cfg);
  for (uint64_t s = 0; s < 10; s++) {
    local.get(s, 0, 8, &want.b);
    ASSERT_EQ(svc_client_get(cl.c, s, 0, 8, &got.b), STATUS_OK) << status_message();
    EXPECT_TRUE(same_rows(want.b, got.b, 8));
  }
}

TEST(Service, NoReplicaAnswersInTimeNamesTheAddresses) {
  data_config cfg = small_config();
  svc_client_options o = options(cfg);
  o.timeout_ms = 800;
  Client cl("127.0.0.1:1,localhost:2", o);
  ASSERT_EQ(cl.st, STATUS_OK) << status_message();
  Batch got(8, cfg);
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(svc_client_get(cl.c, 0, 0, 8, &got.b), STATUS_TIMEOUT);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::string msg = status_message();
  EXPECT_NE(msg.find("tcp://127.0.0.1:1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("tcp://localhost:2"), std::string::npos) << msg;
  EXPECT_LT(s, 3.0);
}

TEST(Service, BadClientArgumentsAreRefused) {
  data_config cfg = small_config();
  svc_client *c = nullptr;
  svc_client_options o = options(cfg);
  o.addresses = "nohost";
  EXPECT_EQ(svc_client_open(&c, &o), STATUS_CONFIG);
  EXPECT_NE(std::string(status_message()).find("nohost"), std::string::npos);
  for (const char *bad : {"", "127.0.0.1:0", "127.0.0.1:x", "::1:80", "a:1,,b:2"}) {
    o.addresses = bad;
    EXPECT_EQ(svc_client_open(&c, &o), STATUS_CONFIG) << bad;
    EXPECT_EQ(c, nullptr);
  }
  Server server(corpus());
  Client cl(server.addr(), options(cfg));
  Batch small(4, cfg);
  EXPECT_EQ(svc_client_get(cl.c, 0, 0, 8, &small.b), STATUS_ARG);   // no room for 8 rows
  EXPECT_EQ(svc_client_get(cl.c, 0, 62, 4, &small.b), STATUS_ARG);  // past the global batch
}

// ---- Jobs and tokens -----------------------------------------------------------

TEST(Service, WrongFingerprintIsRefusedNamingBoth) {
  data_config cfg = small_config();
  Local local(corpus(), cfg);
  Server server(corpus());
  uint64_t fp = dataset_fingerprint(local.d);
  std::string addrs_ = server.addr();
  svc_client_options o = options(cfg);
  o.fingerprint = fp ^ 0x5a5a;
  Client bad(addrs_, o);
  ASSERT_EQ(bad.st, STATUS_OK);
  Batch got(8, cfg), want(8, cfg);
  EXPECT_EQ(svc_client_get(bad.c, 0, 0, 8, &got.b), STATUS_COMM);
  std::string msg = status_message();
  char a[32], b[32];
  snprintf(a, sizeof a, "%016llx", (unsigned long long)(fp ^ 0x5a5a));
  snprintf(b, sizeof b, "%016llx", (unsigned long long)fp);
  EXPECT_NE(msg.find(a), std::string::npos) << msg;
  EXPECT_NE(msg.find(b), std::string::npos) << msg;
  // The right fingerprint is served.
  o.fingerprint = fp;
  Client good(addrs_, o);
  ASSERT_EQ(svc_client_get(good.c, 3, 0, 8, &got.b), STATUS_OK) << status_message();
  local.get(3, 0, 8, &want.b);
  EXPECT_TRUE(same_rows(want.b, got.b, 8));
}

TEST(Service, ReplicasOfDifferentJobsAreCaught) {
  data_config cfg = small_config();
  Server a(corpus()), b(other_corpus());
  std::string addrs_ = a.addr() + "," + b.addr();
  svc_client_options o = options(cfg);
  o.ahead = 4;
  Client cl(addrs_, o);
  Batch got(8, cfg);
  int refused = 0;
  for (uint64_t s = 0; s < 30 && !refused; s++)
    if (svc_client_get(cl.c, s, 0, 8, &got.b) != STATUS_OK) {
      EXPECT_NE(std::string(status_message()).find("serves job"), std::string::npos)
          << status_message();
      refused++;
    }
  EXPECT_GT(refused, 0) << "replies from two different data sets were mixed";
}

TEST(Service, TokenIsRequiredWhenSet) {
  data_config cfg = small_config();
  Local local(corpus(), cfg);
  Server server(corpus(), "open sesame");
  Batch got(8, cfg), want(8, cfg);
  for (const char *tok : {(const char *)nullptr, "open sesamE", "open sesame!", "o"}) {
    std::string addrs_ = server.addr();
    svc_client_options o = options(cfg);
    o.token = tok;
    Client cl(addrs_, o);
    EXPECT_EQ(svc_client_get(cl.c, 0, 0, 8, &got.b), STATUS_COMM) << (tok ? tok : "(none)");
    EXPECT_NE(std::string(status_message()).find("token"), std::string::npos) << status_message();
  }
  std::string addrs_ = server.addr();
  svc_client_options o = options(cfg);
  o.token = "open sesame";
  Client cl(addrs_, o);
  ASSERT_EQ(svc_client_get(cl.c, 5, 8, 8, &got.b), STATUS_OK) << status_message();
  local.get(5, 8, 8, &want.b);
  EXPECT_TRUE(same_rows(want.b, got.b, 8));
}

TEST(Service, NonLoopbackBindNeedsAToken) {
  EXPECT_TRUE(svc_is_loopback("127.0.0.1"));
  EXPECT_TRUE(svc_is_loopback("127.1.2.3"));
  EXPECT_TRUE(svc_is_loopback("::1"));
  EXPECT_TRUE(svc_is_loopback("[::1]"));
  EXPECT_TRUE(svc_is_loopback("localhost"));
  EXPECT_FALSE(svc_is_loopback("0.0.0.0"));
  EXPECT_FALSE(svc_is_loopback("::"));
  EXPECT_FALSE(svc_is_loopback("10.1.2.3"));
  EXPECT_FALSE(svc_is_loopback("example.org"));
  svc_server_config c = svc_server_config_default();
  c.data_dir = corpus().c_str();
  c.bind = "0.0.0.0";
  c.port = 0;
  svc_server *s = nullptr;
  EXPECT_EQ(svc_server_start(&s, &c), STATUS_CONFIG);
  EXPECT_NE(std::string(status_message()).find("refusing to bind 0.0.0.0"), std::string::npos)
      << status_message();
  EXPECT_EQ(s, nullptr);
}

TEST(Service, TokenFiles) {
  std::string p = ::testing::TempDir() + "svc_token_" + std::to_string(getpid());
  FILE *f = fopen(p.c_str(), "w");
  fputs("  s3cret value \n\n", f);
  fclose(f);
  char *t = nullptr;
  ASSERT_EQ(svc_read_token(p.c_str(), &t), STATUS_OK) << status_message();
  EXPECT_STREQ(t, "  s3cret value");
  free(t);
  f = fopen(p.c_str(), "w");
  fputs(" \n", f);
  fclose(f);
  EXPECT_EQ(svc_read_token(p.c_str(), &t), STATUS_CONFIG);
  EXPECT_EQ(svc_read_token("/nonexistent/token", &t), STATUS_IO);
  EXPECT_NE(std::string(status_message()).find("/nonexistent/token"), std::string::npos);
  unlink(p.c_str());
}

// ---- Hostile requests ----------------------------------------------------------

// A raw REQ socket: sends arbitrary bodies and returns the reply (or why not).
struct Raw {
  nng_socket s = NNG_SOCKET_INITIALIZER;
  explicit Raw(const std::string &addr) {
    EXPECT_EQ(nng_req0_open(&s), 0);
    nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 1500);
    nng_socket_set_ms(s, NNG_OPT_SENDTIMEO, 1500);
    nng_socket_set_ms(s, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
    EXPECT_EQ(nng_dial(s, ("tcp://" + addr).c_str(), nullptr, 0), 0);
  }
  ~Raw() { nng_close(s); }
  // Returns the decoded reply, or nullptr with rv set.
  Mlmpi__Service__BatchReply *ask(const void *body, size_t n, int *rv) {
    *rv = nng_send(s, const_cast<void *>(body), n, 0);
    if (*rv) return nullptr;
    void *buf = nullptr;
    size_t len = 0;
    if ((*rv = nng_recv(s, &buf, &len, NNG_FLAG_ALLOC)) != 0) return nullptr;
    auto *r = mlmpi__service__batch_reply__unpack(nullptr, len, (const uint8_t *)buf);
    nng_free(buf, len);
    return r;
  }
};

std::vector<uint8_t> pack_request(uint32_t version, const data_config &c, uint64_t fp,
                                  uint64_t step, uint64_t first, uint32_t count,
                                  uint64_t global = kGlobal) {
  Mlmpi__Service__DataConfig m;
  mlmpi__service__data_config__init(&m);
  m.split = (char *)"train";
  m.seq_len = c.seq_len;
  m.max_predictions = c.max_predictions;
  m.mask_prob = c.mask_prob;
  m.short_seq_prob = c.short_seq_prob;
  m.seed = c.seed;
  Mlmpi__Service__BatchRequest q;
  mlmpi__service__batch_request__init(&q);
  q.version = version;
  q.config = &m;
  q.fingerprint = fp;
  q.global_batch = global;
  q.step = step;
  q.first = first;
  q.count = count;
  std::vector<uint8_t> out(mlmpi__service__batch_request__get_packed_size(&q));
  mlmpi__service__batch_request__pack(&q, out.data());
  return out;
}

// The server must still answer a well-behaved client correctly.
void expect_still_serving(const std::string &addr, Local &local, const data_config &cfg) {
  Client cl(addr, options(cfg));
  Batch want(8, cfg), got(8, cfg);
  ASSERT_EQ(svc_client_get(cl.c, 11, 8, 8, &got.b), STATUS_OK) << status_message();
  local.get(11, 8, 8, &want.b);
  EXPECT_TRUE(same_rows(want.b, got.b, 8));
}

void expect_error(Raw &raw, const std::vector<uint8_t> &body, int code, const char *what) {
  int rv = 0;
  Mlmpi__Service__BatchReply *r = raw.ask(body.data(), body.size(), &rv);
  ASSERT_NE(r, nullptr) << what << ": " << nng_strerror(rv);
  EXPECT_EQ((int)r->error, code) << what << ": " << r->message;
  EXPECT_EQ(r->input_ids.len, 0u) << what;
  EXPECT_EQ(r->version, SVC_PROTOCOL_VERSION);
  mlmpi__service__batch_reply__free_unpacked(r, nullptr);
}

TEST(ServiceFault, MalformedRequestsGetErrorsAndTheServerGoesOn) {
  data_config cfg = small_config();
  Local local(corpus(), cfg);
  Server server(corpus());
  std::string addr = server.addr();
  uint64_t fp = dataset_fingerprint(local.d);
  Raw raw(addr);
  std::mt19937 rng(3);
  for (int i = 0; i < 30; i++) {  // random bytes: a reply saying so, never a crash
    std::vector<uint8_t> junk(1 + rng() % 300);
    for (auto &b : junk) b = (uint8_t)rng();
    int rv = 0;
    Mlmpi__Service__BatchReply *r = raw.ask(junk.data(), junk.size(), &rv);
    ASSERT_NE(r, nullptr) << nng_strerror(rv);
    EXPECT_NE((int)r->error, 0);
    mlmpi__service__batch_reply__free_unpacked(r, nullptr);
  }
  std::vector<uint8_t> good = pack_request(SVC_PROTOCOL_VERSION, cfg, fp, 1, 0, 8);
  for (size_t cut = 1; cut < good.size(); cut += 3) {  // truncated protobufs
    std::vector<uint8_t> t(good.begin(), good.begin() + (long)cut);
    int rv = 0;
    Mlmpi__Service__BatchReply *r = raw.ask(t.data(), t.size(), &rv);
    ASSERT_NE(r, nullptr) << nng_strerror(rv);
    EXPECT_NE((int)r->error, 0) << "cut at " << cut;
    mlmpi__service__batch_reply__free_unpacked(r, nullptr);
  }
  {  // a length-delimited field claiming 2 GiB
    std::vector<uint8_t> huge = {0x12, 0x80, 0x80, 0x80, 0x80, 0x08, 'x'};
    expect_error(raw, huge, MLMPI__SERVICE__ERROR_CODE__ERROR_BAD_REQUEST, "huge field length");
  }
  expect_error(raw, {}, MLMPI__SERVICE__ERROR_CODE__ERROR_VERSION, "empty request (version 0)");
  expect_error(raw, pack_request(7, cfg, fp, 1, 0, 8), MLMPI__SERVICE__ERROR_CODE__ERROR_VERSION,
               "version 7");
  expect_error(raw, pack_request(SVC_PROTOCOL_VERSION, cfg, fp + 1, 1, 0, 8),
               MLMPI__SERVICE__ERROR_CODE__ERROR_JOB, "wrong fingerprint");
  expect_error(raw, pack_request(SVC_PROTOCOL_VERSION, cfg, 0, 1, 60, 8),
               MLMPI__SERVICE__ERROR_CODE__ERROR_BAD_REQUEST, "past the global batch");
  expect_error(raw, pack_request(SVC_PROTOCOL_VERSION, cfg, 0, 1, 0, 4000000, 1ull << 40),
               MLMPI__SERVICE__ERROR_CODE__ERROR_BAD_REQUEST, "a reply over the size limit");
  expect_error(raw, pack_request(SVC_PROTOCOL_VERSION, cfg, 0, UINT64_MAX / 2, 0, 8),
               MLMPI__SERVICE__ERROR_CODE__ERROR_BAD_REQUEST, "step overflow");
  data_config bad = cfg;
  bad.seq_len = 4;
  expect_error(raw, pack_request(SVC_PROTOCOL_VERSION, bad, 0, 1, 0, 8),
               MLMPI__SERVICE__ERROR_CODE__ERROR_BAD_REQUEST, "seq_len 4");
  {  // a split that tries to leave the data directory
    Mlmpi__Service__DataConfig m;
    mlmpi__service__data_config__init(&m);
    m.split = (char *)"../etc";
    m.seq_len = 64;
    m.max_predictions = 10;
    Mlmpi__Service__BatchRequest q;
    mlmpi__service__batch_request__init(&q);
    q.version = SVC_PROTOCOL_VERSION;
    q.config = &m;
    q.global_batch = kGlobal;
    q.count = 1;
    std::vector<uint8_t> out(mlmpi__service__batch_request__get_packed_size(&q));
    mlmpi__service__batch_request__pack(&q, out.data());
    expect_error(raw, out, MLMPI__SERVICE__ERROR_CODE__ERROR_BAD_REQUEST, "split ../etc");
  }
  {  // a split with no shards
    data_config c = cfg;
    Mlmpi__Service__DataConfig m;
    mlmpi__service__data_config__init(&m);
    m.split = (char *)"holdout";
    m.seq_len = c.seq_len;
    m.max_predictions = c.max_predictions;
    Mlmpi__Service__BatchRequest q;
    mlmpi__service__batch_request__init(&q);
    q.version = SVC_PROTOCOL_VERSION;
    q.config = &m;
    q.global_batch = kGlobal;
    q.count = 1;
    std::vector<uint8_t> out(mlmpi__service__batch_request__get_packed_size(&q));
    mlmpi__service__batch_request__pack(&q, out.data());
    expect_error(raw, out, MLMPI__SERVICE__ERROR_CODE__ERROR_DATA, "no holdout shards");
  }
  {  // the good request is answered on the same connection
    int rv = 0;
    Mlmpi__Service__BatchReply *r = raw.ask(good.data(), good.size(), &rv);
    ASSERT_NE(r, nullptr) << nng_strerror(rv);
    EXPECT_EQ((int)r->error, 0) << r->message;
    EXPECT_EQ(r->fingerprint, fp);
    EXPECT_EQ(r->input_ids.len, 8u * 64 * 4);
    mlmpi__service__batch_reply__free_unpacked(r, nullptr);
  }
  expect_still_serving(addr, local, cfg);
}

TEST(ServiceFault, OversizedMessagesCloseTheConnection) {
  data_config cfg = small_config();
  Local local(corpus(), cfg);
  Server server(corpus());
  std::string addr = server.addr();
  {
    Raw raw(addr);
    std::vector<uint8_t> big(SVC_MAX_REQUEST_BYTES + 1024, 0x08);
    int rv = 0;
    Mlmpi__Service__BatchReply *r = raw.ask(big.data(), big.size(), &rv);
    EXPECT_EQ(r, nullptr) << "an oversized request was answered";
    if (r) mlmpi__service__batch_reply__free_unpacked(r, nullptr);
  }
  expect_still_serving(addr, local, cfg);
}

// Plain TCP connections that do not speak the SP protocol, or announce a
// huge frame, are dropped by the transport.
TEST(ServiceFault, RawTcpGarbageIsDropped) {
  data_config cfg = small_config();
  Local local(corpus(), cfg);
  Server server(corpus());
  std::string addr = server.addr();
  std::mt19937 rng(5);
  for (int kind = 0; kind < 3; kind++) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    sockaddr_in sa = {};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)svc_server_port(server.s));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(connect(fd, (sockaddr *)&sa, sizeof sa), 0);
    std::vector<uint8_t> bytes;
    if (kind == 0) {  // random bytes
      bytes.resize(4096);
      for (auto &b : bytes) b = (uint8_t)rng();
    } else {  // a valid REQ header (SP, version 0, protocol 48), then a frame
      bytes = {0, 'S', 'P', 0, 0, 48, 0, 0};
      if (kind == 1)  // of 2^62 bytes
        for (uint8_t b : {0x40, 0, 0, 0, 0, 0, 0, 0}) bytes.push_back(b);
      else  // of 12 bytes, cut short before its end
        for (uint8_t b : {0, 0, 0, 0, 0, 0, 0, 12, 0x80, 0, 0, 1}) bytes.push_back(b);
    }
    ssize_t w = send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    EXPECT_GT(w, 0);
    if (kind == 0 || kind == 1) {  // the server hangs up
      timeval tv = {3, 0};
      setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      char buf[64];
      ssize_t n;
      while ((n = recv(fd, buf, sizeof buf, 0)) > 0) {
      }
      EXPECT_EQ(n, 0) << "connection not closed (kind " << kind << ")";
    }
    close(fd);  // kind 2: the half-sent frame is abandoned mid-message
  }
  expect_still_serving(addr, local, cfg);
}

// ---- A replica process killed and restarted -----------------------------------

struct Child {
  pid_t pid = -1;
  int port = 0;
  std::string err;
  // Starts `mlmpi-data serve` and reads the port it prints.
  bool start(const std::vector<std::string> &args) {
    int out[2];
    if (pipe(out) != 0) return false;
    pid = fork();
    if (pid == 0) {
      dup2(out[1], 1);
      close(out[0]);
      close(out[1]);
      std::vector<char *> argv;
      argv.push_back((char *)MLMPI_DATA_BIN);
      for (auto &a : args) argv.push_back((char *)a.c_str());
      argv.push_back(nullptr);
      execv(MLMPI_DATA_BIN, argv.data());
      _exit(127);
    }
    close(out[1]);
    FILE *f = fdopen(out[0], "r");
    char line[256] = "";
    bool ok = fgets(line, sizeof line, f) != nullptr;
    fclose(f);
    const char *colon = strrchr(line, ':');
    if (!ok || strncmp(line, "listening on tcp://", 19) != 0 || !colon) {
      err = line;
      return false;
    }
    port = atoi(colon + 1);
    return port > 0;
  }
  int stop(int sig) {
    int status = -1;
    if (pid > 0) {
      kill(pid, sig);
      waitpid(pid, &status, 0);
      pid = -1;
    }
    return status;
  }
  ~Child() { stop(SIGKILL); }
};

TEST(ServiceFault, KilledAndRestartedReplicaLosesAndRepeatsNothing) {
  data_config cfg = small_config();
  Local local(corpus(), cfg);
  Child child;
  ASSERT_TRUE(child.start({"serve", "--data", corpus(), "--port", "0", "--workers", "2"}))
      << child.err;
  int port = child.port;
  std::string addrs_ = "127.0.0.1:" + std::to_string(port);
  svc_client_options o = options(cfg);
  o.depth = 8;
  Client cl(addrs_, o);
  ASSERT_EQ(cl.st, STATUS_OK) << status_message();
  // The trainer's sequence: 30 steps of two micro-batches.
  std::vector<svc_key> plan;
  for (uint64_t s = 0; s < 30; s++)
    for (uint64_t m = 0; m < 2; m++) plan.push_back({s, 32 + 16 * m, 16});
  ASSERT_EQ(svc_client_plan(cl.c, plan.data(), plan.size()), STATUS_OK);
  Batch want(16, cfg), got(16, cfg);
  size_t i = 0;
  for (; i < 20; i++) {
    const svc_key &k = plan[i];
    ASSERT_EQ(svc_client_get(cl.c, k.step, k.first, k.count, &got.b), STATUS_OK)
        << status_message();
    local.get(k.step, k.first, k.count, &want.b);
    ASSERT_TRUE(same_rows(want.b, got.b, 16)) << "key " << i;
  }
  child.stop(SIGKILL);
  // While it is down, a get waits (the prefetched batches drain first).
  std::thread restart([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(700));
    ASSERT_TRUE(child.start(
        {"serve", "--data", corpus(), "--port", std::to_string(port), "--workers", "2"}))
        << child.err;
  });
  for (; i < plan.size(); i++) {
    const svc_key &k = plan[i];
    ASSERT_EQ(svc_client_get(cl.c, k.step, k.first, k.count, &got.b), STATUS_OK)
        << status_message();
    local.get(k.step, k.first, k.count, &want.b);
    ASSERT_TRUE(same_rows(want.b, got.b, 16)) << "key " << i;
  }
  restart.join();
  // SIGTERM stops the service cleanly.
  int status = child.stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
}

// ---- Replicas stalled (SIGSTOP) or killed mid-stream ----------------------------

bool start_replica(Child &c) {
  return c.start({"serve", "--data", corpus(), "--port", "0", "--workers", "2"});
}

std::string addr_of(const Child &c) { return "127.0.0.1:" + std::to_string(c.port); }

// SIGSTOP takes every thread of the process only when each next runs: wait
// until the whole process is stopped (waitpid reports the group stop).
bool stop_replica(const Child &c) {
  int st = 0;
  return kill(c.pid, SIGSTOP) == 0 && waitpid(c.pid, &st, WUNTRACED) == c.pid && WIFSTOPPED(st);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// A trainer's sequence: `steps` steps of two micro-batches of 16 rows.
std::vector<svc_key> micro_batch_plan(uint64_t steps) {
  std::vector<svc_key> plan;
  for (uint64_t s = 0; s < steps; s++)
    for (uint64_t m = 0; m < 2; m++) plan.push_back({s, 32 + 16 * m, 16});
  return plan;
}

// Gets key k through the client and compares it with the in-process batch;
// *secs (when given) is how long the get took.
::testing::AssertionResult fetch_equal(Client &cl, Local &local, const svc_key &k, Batch &want,
                                       Batch &got, double *secs = nullptr) {
  auto t0 = std::chrono::steady_clock::now();
  status_t st = svc_client_get(cl.c, k.step, k.first, k.count, &got.b);
  if (secs) *secs = seconds_since(t0);
  if (st != STATUS_OK)
    return ::testing::AssertionFailure() << status_name(st) << ": " << status_message();
  if (dataset_get_batch(local.d, kGlobal, k.step, k.first, k.count, &want.b) != STATUS_OK)
    return ::testing::AssertionFailure() << "in process: " << status_message();
  return same_rows(want.b, got.b, k.count);
}

// The consumer's side of a replica fault: gets keys [from, to) of the plan,
// each equal to the in-process batch, counting the gets that had to wait.
struct Consumer {
  Client &cl;
  Local &local;
  const std::vector<svc_key> &plan;
  Batch want, got;
  size_t next = 0;
  int waited = 0;        // gets that took over 0.2 s
  double longest = 0.0;  // the longest get, seconds
  Consumer(Client &c, Local &l, const std::vector<svc_key> &p, const data_config &cfg)
      : cl(c), local(l), plan(p), want(16, cfg), got(16, cfg) {}
  ::testing::AssertionResult run_to(size_t to) {
    for (; next < to; next++) {
      double secs = 0;
      ::testing::AssertionResult r = fetch_equal(cl, local, plan[next], want, got, &secs);
      if (!r) return r << " (key " << next << ", step " << plan[next].step << ")";
      waited += secs > 0.2;
      longest = std::max(longest, secs);
    }
    return ::testing::AssertionSuccess();
  }
};

TEST(ServiceFault, StalledReplicaFailsOver) {
  data_config cfg = small_config();
  Local local(corpus(), cfg);
  Child a, b;
  ASSERT_TRUE(start_replica(a)) << a.err;
  ASSERT_TRUE(start_replica(b)) << b.err;
  svc_client_options o = options(cfg);
  o.depth = 8;
  o.request_timeout_ms = 400;  // a request the stopped replica holds fails over after this
  o.timeout_ms = 8000;
  Client cl(addr_of(a) + "," + addr_of(b), o);
  ASSERT_EQ(cl.st, STATUS_OK) << status_message();
  std::vector<svc_key> plan = micro_batch_plan(40);
  ASSERT_EQ(svc_client_plan(cl.c, plan.data(), plan.size()), STATUS_OK);
  Consumer run(cl, local, plan, cfg);
  ASSERT_TRUE(run.run_to(20));
  ASSERT_TRUE(stop_replica(a));  // with requests in flight to it
  ASSERT_TRUE(run.run_to(60));
  const int waited = run.waited;
  const double longest = run.longest;
  uint64_t retries = 0;
  svc_client_counts(cl.c, nullptr, &retries);
  ASSERT_EQ(kill(a.pid, SIGCONT), 0);
  ASSERT_TRUE(run.run_to(plan.size()));
  EXPECT_GE(retries, 1u) << "no attempt failed while a replica was stopped: the stall was not felt";
  EXPECT_LT(longest, 3.0) << "a get waited longer than failing over takes";
  for (Child *c : {&a, &b}) {
    int status = c->stop(SIGTERM);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  }
  printf(
      "fault injected: 1 of 2 `mlmpi-data serve` replicas stopped (SIGSTOP) after 20 of %zu "
      "keys, continued (SIGCONT) after 60; checked: all %zu batches equal the in-process ones "
      "in order (%llu attempts failed over, %d gets waited, longest %.2f s), both replicas exit "
      "0\n",
      plan.size(), plan.size(), (unsigned long long)retries, waited, longest);
}

TEST(ServiceFault, StalledOnlyReplicaEndsWithDeadline) {
  data_config cfg = small_config();
  Local local(corpus(), cfg);
  Child a;
  ASSERT_TRUE(start_replica(a)) << a.err;
  svc_client_options o = options(cfg);
  o.timeout_ms = 1500;          // the get's deadline
  o.request_timeout_ms = 5000;  // longer than the stalls: a continued replica answers
  Client cl(addr_of(a), o);
  ASSERT_EQ(cl.st, STATUS_OK) << status_message();
  Batch want(8, cfg), got(8, cfg);
  ASSERT_TRUE(fetch_equal(cl, local, {0, 0, 8}, want, got));
  ASSERT_TRUE(stop_replica(a));
  // The only replica is stopped: the get ends at its deadline, saying so.
  auto t0 = std::chrono::steady_clock::now();
  auto pending = std::async(std::launch::async, [&] {
    status_t st = svc_client_get(cl.c, 5, 0, 8, &got.b);
    return std::make_pair(st, std::string(status_message()));
  });
  if (pending.wait_for(std::chrono::milliseconds(o.timeout_ms + 2500)) !=
      std::future_status::ready) {
    ADD_FAILURE() << "the get did not end within its " << o.timeout_ms << " ms deadline";
    kill(a.pid, SIGCONT);  // lets it end
  }
  auto [st, msg] = pending.get();
  const double ended = seconds_since(t0);
  EXPECT_EQ(st, STATUS_TIMEOUT) << msg;
  EXPECT_GE(ended, 1.4);
  EXPECT_LT(ended, 2.5);
  EXPECT_NE(msg.find("tcp://" + addr_of(a)), std::string::npos) << msg;
  EXPECT_NE(msg.find("within 1.5 s"), std::string::npos) << msg;
  // Continued before the deadline: the get succeeds with the right batch.
  std::thread cont([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(600));
    kill(a.pid, SIGCONT);
  });
  double secs = 0;
  ::testing::AssertionResult r = fetch_equal(cl, local, {6, 0, 8}, want, got, &secs);
  cont.join();
  EXPECT_TRUE(r);
  EXPECT_GE(secs, 0.5) << "the get did not wait for the stopped replica";
  EXPECT_LT(secs, 1.5);
  int status = a.stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  printf(
      "fault injected: the only replica stopped (SIGSTOP) under a 1.5 s get deadline, then "
      "continued (SIGCONT) 0.6 s into a second get; checked: the first get ended after %.2f s "
      "(%s, naming tcp://%s and the wait), the second got the in-process batch (%s) after "
      "%.2f s\n",
      ended, status_name(st), addr_of(a).c_str(), r ? "equal" : "not equal", secs);
}

TEST(ServiceFault, KilledReplicaFailsOver) {
  data_config cfg = small_config();
  Local local(corpus(), cfg);
  Child a, b;
  ASSERT_TRUE(start_replica(a)) << a.err;
  ASSERT_TRUE(start_replica(b)) << b.err;
  svc_client_options o = options(cfg);
  o.depth = 8;
  o.request_timeout_ms = 1000;
  o.timeout_ms = 8000;
  Client cl(addr_of(a) + "," + addr_of(b), o);
  ASSERT_EQ(cl.st, STATUS_OK) << status_message();
  std::vector<svc_key> plan = micro_batch_plan(40);
  ASSERT_EQ(svc_client_plan(cl.c, plan.data(), plan.size()), STATUS_OK);
  Consumer run(cl, local, plan, cfg);
  ASSERT_TRUE(run.run_to(20));
  a.stop(SIGKILL);  // at once after a get: the prefetch queue is refilling
  ASSERT_TRUE(run.run_to(plan.size()));
  uint64_t batches = 0, retries = 0;
  svc_client_counts(cl.c, &batches, &retries);
  EXPECT_GE(retries, 1u) << "no attempt failed after a replica was killed: the kill was not felt";
  int status = b.stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  printf(
      "fault injected: 1 of 2 `mlmpi-data serve` replicas killed (SIGKILL) after 20 of %zu "
      "keys with up to %d prefetched; checked: all %zu batches equal the in-process ones in "
      "order, none lost or repeated (%llu attempts failed over, %d gets waited, longest %.2f s)\n",
      plan.size(), o.depth, plan.size(), (unsigned long long)retries, run.waited, run.longest);
}

// ---- The command line ------------------------------------------------------------

std::string run(const std::string &cmd, int *rc) {
  std::string out;
  FILE *p = popen(cmd.c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int st = pclose(p);
  *rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}

TEST(ServiceCli, BatchesThroughTheServiceEqualInProcess) {
  Server server(corpus());
  std::string common =
      " --seq-len 64 --max-predictions 10 --global-batch 64 --world 4 --rank 2"
      " --step 5 --count 3 --seed 17";
  int rc1, rc2;
  std::string local =
      run(std::string(MLMPI_DATA_BIN) + " batches --data " + corpus() + common, &rc1);
  std::string remote = run(
      std::string(MLMPI_DATA_BIN) + " batches --service " + server.addr() + common + " 2>&1", &rc2);
  EXPECT_EQ(rc1, 0);
  EXPECT_EQ(rc2, 0) << remote;
  EXPECT_GT(local.size(), 1000u);
  EXPECT_EQ(local, remote);
}

TEST(ServiceCli, ServeRefusesBadSetups) {
  int rc;
  std::string out = run(
      std::string(MLMPI_DATA_BIN) + " serve --data " + corpus() + " --bind 0.0.0.0 --port 0 2>&1",
      &rc);
  EXPECT_EQ(rc, 2);
  EXPECT_NE(out.find("refusing to bind 0.0.0.0 without --token-file"), std::string::npos) << out;
  out = run(std::string(MLMPI_DATA_BIN) + " serve --data /nonexistent --port 0 2>&1", &rc);
  EXPECT_EQ(rc, 1);
  EXPECT_NE(out.find("/nonexistent"), std::string::npos) << out;
  out = run(std::string(MLMPI_DATA_BIN) + " serve --data " + corpus() + " --port 70000 2>&1", &rc);
  EXPECT_EQ(rc, 2);
  EXPECT_NE(out.find("--port"), std::string::npos) << out;
}

}  // namespace
