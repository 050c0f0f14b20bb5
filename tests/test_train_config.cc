/* test_train_config.cc: unit tests of the training run's configuration
 * (trainer/train_config.h): every key set through train_config_set and seen
 * in the struct and in the dump, the defaults against the --help text,
 * unknown keys and bad values refused naming the key (and leaving the config
 * as it was), INI files (sections, comments, errors naming the file and the
 * line), the cross-key check and the dump read back giving the same dump. */
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <vector>

extern "C" {
#include "train_config.h"
}

namespace {

/* ---- Helpers ---------------------------------------------------------------- */

train_config Default() {
  train_config c;
  train_config_default(&c);
  return c;
}

/* The dump as key -> value, and the keys in the order printed. */
struct Dump {
  std::map<std::string, std::string> kv;
  std::vector<std::string> order;
  std::string text;
};

Dump DumpOf(const train_config &c) {
  Dump d;
  char *s = train_config_dump(&c);
  EXPECT_NE(s, nullptr);
  if (!s) return d;
  d.text = s;
  free(s);
  size_t at = 0;
  while (at < d.text.size()) {
    size_t nl = d.text.find('\n', at);
    EXPECT_NE(nl, std::string::npos) << "the dump does not end in a newline";
    if (nl == std::string::npos) nl = d.text.size();
    std::string line = d.text.substr(at, nl - at);
    size_t eq = line.find(" = ");
    EXPECT_NE(eq, std::string::npos) << "not 'key = value': " << line;
    if (eq != std::string::npos) {
      std::string k = line.substr(0, eq);
      EXPECT_EQ(d.kv.count(k), 0u) << k << " printed twice";
      d.kv[k] = line.substr(eq + 3);
      d.order.push_back(k);
    }
    at = nl + 1;
  }
  return d;
}

bool Contains(const std::string &hay, const std::string &needle) {
  return hay.find(needle) != std::string::npos;
}

/* A private directory for this process's files, removed at the end. */
const std::string &TmpDir() {
  static std::string dir = [] {
    std::string tmpl = testing::TempDir() + "mlmpi_train_config_XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back(0);
    if (!mkdtemp(buf.data())) abort();
    return std::string(buf.data());
  }();
  return dir;
}
class TmpDirCleanup : public testing::Environment {
 public:
  void TearDown() override { std::filesystem::remove_all(TmpDir()); }
};
testing::Environment *const tmp_cleanup = testing::AddGlobalTestEnvironment(new TmpDirCleanup);

std::string WriteTmp(const std::string &name, const std::string &text) {
  std::string path = TmpDir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

/* ---- Every key ----------------------------------------------------------------
 * A non-default valid value for each key, what the dump prints for it, and
 * the struct field it must land in. */
struct KeyCase {
  const char *key, *value, *dump;
  std::function<bool(const train_config &)> field;
};

bool Str(const char *field, const char *want) { return !strcmp(field, want); }

const std::vector<KeyCase> &AllKeys() {
  using C = const train_config &;
  static const std::vector<KeyCase> keys = {
      {"model.config", "/m/config.json", "/m/config.json",
       [](C c) { return Str(c.model_config, "/m/config.json"); }},
      {"model.preset", "bert-base", "bert-base",
       [](C c) { return Str(c.model_preset, "bert-base"); }},
      {"model.precision", "bf16", "bf16", [](C c) { return Str(c.model_precision, "bf16"); }},
      {"data.path", "/data/shards", "/data/shards",
       [](C c) { return Str(c.data_path, "/data/shards"); }},
      {"data.service", "h1:5555,h2:5555", "h1:5555,h2:5555",
       [](C c) { return Str(c.data_service, "h1:5555,h2:5555"); }},
      {"data.token_file", "/etc/token", "/etc/token",
       [](C c) { return Str(c.data_token_file, "/etc/token"); }},
      {"data.seq_len", "512", "512", [](C c) { return c.data.seq_len == 512; }},
      {"data.max_predictions", "76", "76", [](C c) { return c.data.max_predictions == 76; }},
      {"data.mask_prob", "0.25", "0.25", [](C c) { return c.data.mask_prob == 0.25f; }},
      {"data.masking", "electra", "electra", [](C c) { return c.data.masking == MASK_ELECTRA; }},
      {"data.whole_word", "true", "true", [](C c) { return c.data.whole_word; }},
      {"data.instances", "nsp", "nsp", [](C c) { return c.data.instances == INST_NSP; }},
      {"data.short_seq_prob", "0.5", "0.5", [](C c) { return c.data.short_seq_prob == 0.5f; }},
      {"data.seed", "7", "7", [](C c) { return c.data.seed == 7; }},
      {"train.global_batch", "256", "256", [](C c) { return c.global_batch == 256; }},
      {"train.micro_batch", "8", "8", [](C c) { return c.micro_batch == 8; }},
      {"train.steps", "1000", "1000", [](C c) { return c.steps == 1000; }},
      {"train.seed", "1234", "1234", [](C c) { return c.seed == 1234; }},
      {"train.eval_every", "50", "50", [](C c) { return c.eval_every == 50; }},
      {"train.eval_batches", "16", "16", [](C c) { return c.eval_batches == 16; }},
      {"train.log_every", "10", "10", [](C c) { return c.log_every == 10; }},
      {"train.threads", "3", "3", [](C c) { return c.threads == 3; }},
      {"train.time_limit_s", "3600.5", "3600.5", [](C c) { return c.time_limit_s == 3600.5; }},
      {"optim.name", "adamw", "adamw", [](C c) { return c.optim.kind == OPTIM_ADAMW; }},
      {"optim.lr", "0.0005", "0.0005", [](C c) { return c.sched.lr == 0.0005; }},
      {"optim.schedule", "constant", "constant",
       [](C c) { return c.sched.kind == SCHED_CONSTANT; }},
      {"optim.warmup", "0.1", "0.1", [](C c) { return c.sched.warmup == 0.1; }},
      {"optim.decay_power", "0.5", "0.5", [](C c) { return c.sched.power == 0.5; }},
      {"optim.end_lr", "1e-05", "1e-05", [](C c) { return c.sched.end_lr == 1e-5; }},
      {"optim.total_steps", "900", "900", [](C c) { return c.sched.total_steps == 900; }},
      {"optim.beta1", "0.8", "0.8", [](C c) { return c.optim.beta1 == 0.8f; }},
      {"optim.beta2", "0.98", "0.98", [](C c) { return c.optim.beta2 == 0.98f; }},
      {"optim.eps", "1e-08", "1e-08", [](C c) { return c.optim.eps == 1e-8f; }},
      {"optim.weight_decay", "0.02", "0.02", [](C c) { return c.optim.weight_decay == 0.02f; }},
      {"optim.bias_correction", "false", "false", [](C c) { return !c.optim.bias_correction; }},
      {"optim.adapt_all", "true", "true", [](C c) { return c.optim.adapt_all; }},
      {"optim.trust_min", "0.01", "0.01", [](C c) { return c.optim.trust_min == 0.01f; }},
      {"optim.trust_max", "10", "10", [](C c) { return c.optim.trust_max == 10.0f; }},
      {"optim.max_grad_norm", "2", "2", [](C c) { return c.optim.max_grad_norm == 2.0f; }},
      {"optim.zero", "1", "1", [](C c) { return c.zero == 1; }},
      {"comm.backend", "nccl", "nccl", [](C c) { return Str(c.comm_backend, "nccl"); }},
      {"comm.bucket_mb", "50", "50", [](C c) { return c.bucket_mb == 50; }},
      {"comm.first_bucket_mb", "0.5", "0.5", [](C c) { return c.first_bucket_mb == 0.5; }},
      {"comm.timeout_s", "60", "60", [](C c) { return c.timeout_s == 60; }},
      {"comm.shared_memory", "false", "false", [](C c) { return !c.shared_memory; }},
      {"ckpt.dir", "/ckpt", "/ckpt", [](C c) { return Str(c.ckpt_dir, "/ckpt"); }},
      {"ckpt.every_steps", "100", "100", [](C c) { return c.ckpt_every == 100; }},
      {"ckpt.keep", "5", "5", [](C c) { return c.ckpt_keep == 5; }},
      {"ckpt.resume", "auto", "auto", [](C c) { return Str(c.ckpt_resume, "auto"); }},
      {"log.dir", "/logs", "/logs", [](C c) { return Str(c.log_dir, "/logs"); }},
  };
  return keys;
}

/* Every key of AllKeys set on one config. */
train_config AllNonDefault() {
  train_config c = Default();
  for (const KeyCase &k : AllKeys())
    EXPECT_EQ(train_config_set(&c, k.key, k.value), STATUS_OK) << k.key << ": " << status_message();
  return c;
}

/* The --help text cut into sections: "model" -> its lines. */
std::map<std::string, std::string> HelpSections() {
  std::map<std::string, std::string> out;
  std::string text = train_config_help(), section;
  std::regex head(R"(^\[(\w+)\](.*)$)");
  size_t at = 0;
  while (at < text.size()) {
    size_t nl = text.find('\n', at);
    if (nl == std::string::npos) nl = text.size();
    std::string line = text.substr(at, nl - at);
    std::smatch m;
    if (std::regex_match(line, m, head)) {
      section = m[1];
      line = m[2];
    }
    out[section] += line + "\n";
    at = nl + 1;
  }
  return out;
}

/* Equal as numbers when both are, else as text. */
bool SameValue(const std::string &a, const std::string &b) {
  char *ea, *eb;
  double x = strtod(a.c_str(), &ea), y = strtod(b.c_str(), &eb);
  if (!a.empty() && !b.empty() && !*ea && !*eb)
    return std::fabs(x - y) <= 1e-6 * std::fmax(1.0, std::fabs(x));
  return a == b;
}

/* ---- Keys and defaults -------------------------------------------------------- */

TEST(TrainConfig, DumpListsExactlyTheKnownKeys) {
  Dump d = DumpOf(Default());
  std::set<std::string> dumped(d.order.begin(), d.order.end()), known;
  for (const KeyCase &k : AllKeys()) known.insert(k.key);
  EXPECT_EQ(dumped, known);
  EXPECT_EQ(d.order.size(), AllKeys().size());
}

TEST(TrainConfig, EveryKeySetsItsFieldAndItsDumpLine) {
  const Dump before = DumpOf(Default());
  for (const KeyCase &k : AllKeys()) {
    SCOPED_TRACE(k.key);
    train_config c = Default();
    ASSERT_FALSE(k.field(c)) << "the test value is the default";
    ASSERT_EQ(train_config_set(&c, k.key, k.value), STATUS_OK) << status_message();
    EXPECT_TRUE(k.field(c));
    Dump after = DumpOf(c);
    EXPECT_TRUE(Contains("\n" + after.text, std::string("\n") + k.key + " = " + k.dump + "\n"))
        << after.text;
    EXPECT_NE(before.kv.at(k.key), k.dump);
    /* Nothing else moved. */
    std::map<std::string, std::string> rest_before = before.kv, rest_after = after.kv;
    rest_before.erase(k.key);
    rest_after.erase(k.key);
    EXPECT_EQ(rest_after, rest_before);
  }
}

TEST(TrainConfig, BooleansTakeTheirSpellings) {
  struct {
    const char *v;
    bool want;
  } cases[] = {{"true", true},   {"1", true},  {"yes", true},
               {"false", false}, {"0", false}, {"no", false}};
  for (const char *key :
       {"comm.shared_memory", "data.whole_word", "optim.bias_correction", "optim.adapt_all"})
    for (const auto &b : cases) {
      SCOPED_TRACE(std::string(key) + " = " + b.v);
      train_config c = Default();
      ASSERT_EQ(train_config_set(&c, key, b.v), STATUS_OK) << status_message();
      EXPECT_EQ(DumpOf(c).kv.at(key), b.want ? "true" : "false");
    }
}

TEST(TrainConfig, DefaultsAreTheDocumentedOnes) {
  train_config c = Default();
  EXPECT_EQ(c.global_batch, 32);
  EXPECT_EQ(c.micro_batch, 0);
  EXPECT_EQ(c.steps, 100);
  EXPECT_EQ(c.seed, 42);
  EXPECT_EQ(c.eval_every, 0);
  EXPECT_EQ(c.eval_batches, 4);
  EXPECT_EQ(c.log_every, 1);
  EXPECT_EQ(c.threads, 0);
  EXPECT_EQ(c.time_limit_s, 0);
  EXPECT_EQ(c.zero, 0);
  EXPECT_STREQ(c.comm_backend, "mpi");
  EXPECT_EQ(c.bucket_mb, 25);
  EXPECT_EQ(c.first_bucket_mb, 1);
  EXPECT_EQ(c.timeout_s, 300);
  EXPECT_TRUE(c.shared_memory);
  EXPECT_EQ(c.ckpt_every, 0);
  EXPECT_EQ(c.ckpt_keep, 3);
  EXPECT_STREQ(c.ckpt_resume, "none");
  EXPECT_STREQ(c.ckpt_dir, "");
  EXPECT_STREQ(c.log_dir, "");
  EXPECT_STREQ(c.model_preset, "bert-mini");
  EXPECT_STREQ(c.model_config, "");
  EXPECT_STREQ(c.data_path, "");
  EXPECT_STREQ(c.data_service, "");
  EXPECT_STREQ(c.data_token_file, "");
  EXPECT_EQ(c.data.seq_len, 128);
  EXPECT_EQ(c.data.max_predictions, 20);
  EXPECT_EQ(c.data.mask_prob, 0.15f);
  EXPECT_EQ(c.data.masking, MASK_BERT);
  EXPECT_FALSE(c.data.whole_word);
  EXPECT_EQ(c.data.instances, INST_PACKED);
  EXPECT_EQ(c.data.short_seq_prob, 0.1f);
  EXPECT_EQ(c.data.seed, 12345u);
  EXPECT_EQ(c.optim.kind, OPTIM_LAMB);
  EXPECT_EQ(c.sched.kind, SCHED_POLY);
  EXPECT_EQ(c.sched.lr, 1e-3);
  EXPECT_EQ(c.sched.warmup, 0);
  EXPECT_EQ(c.sched.power, 1.0);
  EXPECT_EQ(c.sched.end_lr, 0);
  EXPECT_EQ(c.sched.total_steps, 0);
  EXPECT_EQ(c.optim.beta1, 0.9f);
  EXPECT_EQ(c.optim.beta2, 0.999f);
  EXPECT_EQ(c.optim.eps, 1e-6f);
  EXPECT_EQ(c.optim.weight_decay, 0.01f);
  EXPECT_TRUE(c.optim.bias_correction);
  EXPECT_FALSE(c.optim.adapt_all);
  EXPECT_EQ(c.optim.trust_min, 0);
  EXPECT_EQ(c.optim.trust_max, 0);
  EXPECT_EQ(c.optim.max_grad_norm, 1.0f);
}

TEST(TrainConfig, HelpNamesEveryKeyInItsSection) {
  std::map<std::string, std::string> help = HelpSections();
  for (const KeyCase &k : AllKeys()) {
    std::string key = k.key, section = key.substr(0, key.find('.')),
                name = key.substr(key.find('.') + 1);
    ASSERT_EQ(help.count(section), 1u) << "no [" << section << "] in --help";
    EXPECT_TRUE(std::regex_search(help[section], std::regex("\\b" + name + "\\b")))
        << key << " is not in --help's [" << section << "]:\n"
        << help[section];
  }
}

TEST(TrainConfig, HelpDefaultsMatchTheDefaults) {
  /* Every "name = <number|true|false>" of --help is the default's dump. */
  Dump d = DumpOf(Default());
  std::regex pair(R"(\b(\w+) = ([0-9][0-9.eE+-]*|true|false)\b)");
  int checked = 0;
  for (const auto &[section, text] : HelpSections())
    for (std::sregex_iterator it(text.begin(), text.end(), pair), end; it != end; ++it) {
      std::string key = section + "." + (*it)[1].str(), want = (*it)[2];
      ASSERT_EQ(d.kv.count(key), 1u) << "--help documents " << key << ", which the dump lacks";
      EXPECT_TRUE(SameValue(d.kv[key], want))
          << key << ": --help says " << want << ", the default is " << d.kv[key];
      checked++;
    }
  EXPECT_GE(checked, 20);
  /* The symbolic ones, as --help words them. */
  EXPECT_EQ(d.kv["model.preset"], "bert-mini");
  EXPECT_TRUE(Contains(train_config_help(), "(bert-mini)"));
  EXPECT_EQ(d.kv["comm.backend"], "mpi");
  EXPECT_EQ(d.kv["ckpt.resume"], "none");
  EXPECT_EQ(d.kv["data.masking"], "bert");
  EXPECT_EQ(d.kv["data.instances"], "packed");
  /* And optim's own table: "  optim.name = lamb   ...". */
  std::string optim = optim_keys_help();
  const std::regex line(R"((?:^|\n)  (optim\.\w+) = (\S+))");
  int lines = 0;
  for (std::sregex_iterator it(optim.begin(), optim.end(), line), end; it != end; ++it) {
    std::string key = (*it)[1], want = (*it)[2];
    ASSERT_EQ(d.kv.count(key), 1u) << key;
    EXPECT_TRUE(SameValue(d.kv[key], want))
        << key << ": optim's help says " << want << ", the default is " << d.kv[key];
    lines++;
  }
  EXPECT_EQ(lines, 16);
}

/* ---- Refusals ------------------------------------------------------------------- */

TEST(TrainConfig, UnknownKeysAreRefusedNamingTheKey) {
  const std::string before = DumpOf(Default()).text;
  for (const char *key :
       {"train.stepz", "foo.bar", "optim.nope", "data.nope", "comm.nope", "ckpt.nope", "log.nope",
        "model.nope", "train", "Train.steps", "train.steps ", "optim.", "data."}) {
    SCOPED_TRACE(std::string("'") + key + "'");
    train_config c = Default();
    EXPECT_EQ(train_config_set(&c, key, "1"), STATUS_CONFIG);
    EXPECT_TRUE(Contains(status_message(), std::string("'") + key + "'")) << status_message();
    EXPECT_EQ(DumpOf(c).text, before);
  }
}

TEST(TrainConfig, BadValuesAreRefusedNamingTheKey) {
  const std::string long_path(CFG_PATH, 'p'), long_preset(40, 'b');
  struct {
    const char *key;
    std::string value;
  } cases[] = {
      {"train.global_batch", "0"},
      {"train.global_batch", "-1"},
      {"train.global_batch", "12abc"},
      {"train.global_batch", ""},
      {"train.global_batch", "abc"},
      {"train.global_batch", "1.5"},
      {"train.micro_batch", "-1"},
      {"train.steps", "-5"},
      {"train.seed", "-1"},
      {"train.eval_every", "x"},
      {"train.eval_batches", "0"},
      {"train.log_every", "0"},
      {"train.threads", "-1"},
      {"train.threads", "two"},
      {"train.time_limit_s", "-1"},
      {"train.time_limit_s", "soon"},
      {"train.time_limit_s", ""},
      {"optim.zero", "2"},
      {"optim.zero", "-1"},
      {"optim.name", "sgd"},
      {"optim.schedule", "cosine"},
      {"optim.lr", "-1"},
      {"optim.lr", "fast"},
      {"optim.lr", "inf"},
      {"optim.lr", ""},
      {"optim.warmup", "-2"},
      {"optim.beta1", "abc"},
      {"optim.eps", "1e-6x"},
      {"optim.total_steps", "1.5"},
      {"optim.total_steps", "-1"},
      {"optim.bias_correction", "maybe"},
      {"optim.adapt_all", ""},
      {"comm.backend", "gloo"},
      {"model.precision", "fp16"},
      {"model.precision", "BF16"},
      {"model.precision", ""},
      {"train.threads", "4294967297"},
      {"train.seed", "99999999999999999999"},
      {"train.steps", "-99999999999999999999"},
      {"comm.timeout_s", "inf"},
      {"train.time_limit_s", "1e999"},
      {"comm.backend", ""},
      {"comm.backend", "MPI"},
      {"comm.bucket_mb", "-1"},
      {"comm.bucket_mb", "1MB"},
      {"comm.first_bucket_mb", ""},
      {"comm.timeout_s", "nan"},
      {"comm.shared_memory", "maybe"},
      {"comm.shared_memory", ""},
      {"ckpt.every_steps", "-1"},
      {"ckpt.keep", "0"},
      {"data.masking", "foo"},
      {"data.instances", "sop"},
      {"data.whole_word", "maybe"},
      {"data.seq_len", "0"},
      {"data.seq_len", "65537"},
      {"data.seq_len", "-1"},
      {"data.seq_len", "12abc"},
      {"data.max_predictions", "0"},
      {"data.mask_prob", "1.5"},
      {"data.mask_prob", "-0.1"},
      {"data.short_seq_prob", "x"},
      {"data.seed", "-1"},
      {"data.seed", ""},
      {"model.preset", long_preset},
      {"data.path", long_path},
      {"ckpt.dir", long_path},
  };
  const std::string before = DumpOf(Default()).text;
  for (const auto &b : cases) {
    SCOPED_TRACE(std::string(b.key) + " = '" + b.value.substr(0, 20) + "'");
    train_config c = Default();
    EXPECT_EQ(train_config_set(&c, b.key, b.value.c_str()), STATUS_CONFIG);
    EXPECT_TRUE(Contains(status_message(), b.key)) << status_message();
    EXPECT_EQ(DumpOf(c).text, before) << "a refused value changed the config";
  }
}

/* ---- INI files ------------------------------------------------------------------ */

TEST(TrainConfig, IniFileWithSectionsAndCommentsLoads) {
  std::string path = WriteTmp("ok.ini",
                              "; a comment\n"
                              "# another comment\n"
                              "\n"
                              "[model]\n"
                              "preset = bert-tiny\n"
                              "\n"
                              "[data]\n"
                              "path = /data/shards\n"
                              "seq_len=256\n"
                              "masking = electra\n"
                              "[train]\n"
                              "  global_batch   =   64  \n"
                              "steps = 10\n"
                              "[optim]\n"
                              "; the learning rate\n"
                              "name = adamw\n"
                              "lr = 2e-4\n"
                              "zero = 1\n"
                              "[comm]\n"
                              "backend = nccl\n"
                              "shared_memory = no\n"
                              "[ckpt]\n"
                              "resume = auto\n");
  train_config c = Default();
  ASSERT_EQ(train_config_set(&c, "train.seed", "99"), STATUS_OK);
  ASSERT_EQ(train_config_load(&c, path.c_str()), STATUS_OK) << status_message();
  EXPECT_STREQ(c.model_preset, "bert-tiny");
  EXPECT_STREQ(c.data_path, "/data/shards");
  EXPECT_EQ(c.data.seq_len, 256);
  EXPECT_EQ(c.data.masking, MASK_ELECTRA);
  EXPECT_EQ(c.global_batch, 64);
  EXPECT_EQ(c.steps, 10);
  EXPECT_EQ(c.optim.kind, OPTIM_ADAMW);
  EXPECT_EQ(c.sched.lr, 2e-4);
  EXPECT_EQ(c.zero, 1);
  EXPECT_STREQ(c.comm_backend, "nccl");
  EXPECT_FALSE(c.shared_memory);
  EXPECT_STREQ(c.ckpt_resume, "auto");
  /* Loaded on top: what was set before and what the file leaves alone stay. */
  EXPECT_EQ(c.seed, 99);
  EXPECT_EQ(c.eval_batches, 4);
  EXPECT_EQ(c.bucket_mb, 25);
  EXPECT_EQ(train_config_check(&c), STATUS_OK) << status_message();
}

TEST(TrainConfig, ShippedExampleLoads) {
  std::string path = std::string(MLMPI_SOURCE_DIR) + "/launch/examples/kjv-bert-mini.ini";
  train_config c = Default();
  ASSERT_EQ(train_config_load(&c, path.c_str()), STATUS_OK) << status_message();
  EXPECT_EQ(c.global_batch, 64);
  EXPECT_EQ(c.steps, 3000);
  EXPECT_EQ(c.sched.lr, 0.002);
  EXPECT_STREQ(c.ckpt_resume, "auto");
  EXPECT_EQ(train_config_check(&c), STATUS_OK) << status_message();
}

TEST(TrainConfig, IniUnknownKeyNamesFileAndKey) {
  std::string path = WriteTmp("unknown.ini", "[train]\nsteps = 5\nstepz = 5\n");
  train_config c = Default();
  EXPECT_EQ(train_config_load(&c, path.c_str()), STATUS_CONFIG);
  EXPECT_TRUE(Contains(status_message(), path)) << status_message();
  EXPECT_TRUE(Contains(status_message(), "train.stepz")) << status_message();
  /* A key before any section is no key either. */
  path = WriteTmp("nosection.ini", "steps = 5\n");
  EXPECT_EQ(train_config_load(&c, path.c_str()), STATUS_CONFIG);
  EXPECT_TRUE(Contains(status_message(), path)) << status_message();
}

TEST(TrainConfig, IniBadValueNamesFileAndKey) {
  std::string path = WriteTmp("badvalue.ini", "[optim]\nlr = 0.1\nzero = 2\n");
  train_config c = Default();
  EXPECT_EQ(train_config_load(&c, path.c_str()), STATUS_CONFIG);
  EXPECT_TRUE(Contains(status_message(), path)) << status_message();
  EXPECT_TRUE(Contains(status_message(), "optim.zero")) << status_message();
}

TEST(TrainConfig, IniLineNotKeyValueNamesFileAndLine) {
  std::string path = WriteTmp("badline.ini", "[train]\nsteps = 5\n\njust some words\nseed = 1\n");
  train_config c = Default();
  EXPECT_EQ(train_config_load(&c, path.c_str()), STATUS_CONFIG);
  EXPECT_TRUE(Contains(status_message(), path + ":4")) << status_message();
}

TEST(TrainConfig, IniOverlongLineIsNotTruncatedSilently) {
  /* inih reads lines of a fixed size (200 bytes in Debian's build): a longer
   * value must load whole or fail, never load cut short. */
  std::string longpath = "/" + std::string(300, 'x');
  std::string path = WriteTmp("long.ini", "[data]\npath = " + longpath + "\n");
  train_config c = Default();
  status_t st = train_config_load(&c, path.c_str());
  if (st == STATUS_OK) {
    EXPECT_EQ(c.data_path, longpath);
  } else {
    EXPECT_EQ(st, STATUS_CONFIG);
    EXPECT_TRUE(Contains(status_message(), path)) << status_message();
  }
}

TEST(TrainConfig, IniMissingFileCannotBeOpened) {
  std::string path = TmpDir() + "/no_such.ini";
  train_config c = Default();
  EXPECT_EQ(train_config_load(&c, path.c_str()), STATUS_IO);
  EXPECT_TRUE(Contains(status_message(), "cannot open")) << status_message();
  EXPECT_TRUE(Contains(status_message(), path)) << status_message();
}

/* ---- Cross-key checks and the dump ----------------------------------------------- */

TEST(TrainConfig, CheckWantsDataPathOrService) {
  train_config c = Default();
  EXPECT_EQ(train_config_check(&c), STATUS_CONFIG);
  EXPECT_TRUE(Contains(status_message(), "data.path")) << status_message();
  EXPECT_TRUE(Contains(status_message(), "data.service")) << status_message();
  ASSERT_EQ(train_config_set(&c, "data.path", "/shards"), STATUS_OK);
  EXPECT_EQ(train_config_check(&c), STATUS_OK) << status_message();
  c = Default();
  ASSERT_EQ(train_config_set(&c, "data.service", "localhost:5555"), STATUS_OK);
  EXPECT_EQ(train_config_check(&c), STATUS_OK) << status_message();
}

TEST(TrainConfig, DumpReadBackGivesTheSameDump) {
  for (const train_config &start : {Default(), AllNonDefault()}) {
    Dump d = DumpOf(start);
    train_config c = Default();
    for (const std::string &k : d.order)
      EXPECT_EQ(train_config_set(&c, k.c_str(), d.kv[k].c_str()), STATUS_OK)
          << k << " = " << d.kv[k] << ": " << status_message();
    EXPECT_EQ(DumpOf(c).text, d.text);
  }
}

// The dump gives every number back exactly: %g where six digits suffice,
// more where they do not (it was %g throughout, so lr 0.000123456789 was
// stored and compared across ranks as 0.000123457).
TEST(TrainConfig, DumpNumbersReadBackExactly) {
  train_config c = Default();
  ASSERT_EQ(train_config_set(&c, "optim.lr", "0.000123456789"), STATUS_OK);
  ASSERT_EQ(train_config_set(&c, "optim.beta2", "0.99951"), STATUS_OK);
  ASSERT_EQ(train_config_set(&c, "comm.timeout_s", "1234567.5"), STATUS_OK);
  Dump d = DumpOf(c);
  EXPECT_EQ(d.kv["optim.lr"], "0.000123456789");
  EXPECT_EQ(d.kv["optim.beta2"], "0.99951");  // a float: its shortest, not 0.999509990215
  EXPECT_EQ(d.kv["comm.timeout_s"], "1234567.5");
  EXPECT_EQ(d.kv["optim.beta1"], "0.9");
  EXPECT_EQ(d.kv["data.mask_prob"], "0.15");
  train_config back = Default();
  for (const std::string &k : d.order)
    ASSERT_EQ(train_config_set(&back, k.c_str(), d.kv[k].c_str()), STATUS_OK) << k;
  EXPECT_EQ(back.sched.lr, c.sched.lr);
  EXPECT_EQ(back.optim.beta2, c.optim.beta2);
  EXPECT_EQ(back.timeout_s, c.timeout_s);
}

TEST(TrainConfig, DumpAsIniFileGivesTheSameDump) {
  Dump d = DumpOf(AllNonDefault());
  std::string ini, section;
  for (const std::string &k : d.order) {
    std::string s = k.substr(0, k.find('.'));
    if (s != section) ini += "[" + (section = s) + "]\n";
    ini += k.substr(k.find('.') + 1) + " = " + d.kv[k] + "\n";
  }
  std::string path = WriteTmp("dump.ini", ini);
  train_config c = Default();
  ASSERT_EQ(train_config_load(&c, path.c_str()), STATUS_OK) << status_message();
  EXPECT_EQ(DumpOf(c).text, d.text);
}

}  // namespace

/* ---- Fine-tuning ------------------------------------------------------------ */
namespace {
train_config Finetune() {
  train_config c;
  train_config_default_finetune(&c);
  return c;
}
}  // namespace

TEST(FinetuneConfig, KeysAreRefusedOutsideFineTuning) {
  for (const char *k : {"model.init", "task.type", "task.train", "task.dev", "task.text_field",
                        "task.pair_field", "task.label_field", "data.tokenizer", "train.epochs"}) {
    train_config c = Default();
    EXPECT_EQ(train_config_set(&c, k, "1"), STATUS_CONFIG) << k;
    EXPECT_NE(std::string(status_message()).find(k), std::string::npos) << status_message();
    EXPECT_NE(std::string(status_message()).find("finetune"), std::string::npos);
  }
}

TEST(FinetuneConfig, DefaultsAreTheUsualRecipe) {
  train_config c = Finetune();
  EXPECT_TRUE(c.finetune);
  EXPECT_EQ(c.optim.kind, OPTIM_ADAMW);
  EXPECT_DOUBLE_EQ(c.sched.lr, 1e-4);
  EXPECT_DOUBLE_EQ(c.sched.warmup, 0.1);
  EXPECT_EQ(c.sched.kind, SCHED_POLY);
  EXPECT_DOUBLE_EQ(c.sched.power, 1.0);
  EXPECT_DOUBLE_EQ(c.sched.end_lr, 0.0);
  EXPECT_EQ(c.epochs, 3);
  EXPECT_EQ(c.data.max_predictions, 0);
  EXPECT_STREQ(c.task_type, "classify");
  EXPECT_STREQ(c.task_text_field, "text");
  EXPECT_STREQ(c.task_label_field, "label");
  EXPECT_STREQ(c.task_pair_field, "");
}

TEST(FinetuneConfig, KeysSetTheirFieldsAndDumpLines) {
  train_config c = Finetune();
  ASSERT_EQ(train_config_set(&c, "model.init", "/ck/step-9"), STATUS_OK);
  ASSERT_EQ(train_config_set(&c, "task.train", "tr.jsonl"), STATUS_OK);
  ASSERT_EQ(train_config_set(&c, "task.dev", "dev.jsonl"), STATUS_OK);
  ASSERT_EQ(train_config_set(&c, "task.pair_field", "hypothesis"), STATUS_OK);
  ASSERT_EQ(train_config_set(&c, "task.text_field", "premise"), STATUS_OK);
  ASSERT_EQ(train_config_set(&c, "task.label_field", "gold"), STATUS_OK);
  ASSERT_EQ(train_config_set(&c, "data.tokenizer", "spm.model"), STATUS_OK);
  ASSERT_EQ(train_config_set(&c, "train.epochs", "5"), STATUS_OK);
  EXPECT_EQ(c.epochs, 5);
  char *d = train_config_dump(&c);
  std::string dump(d);
  free(d);
  for (const char *line :
       {"model.init = /ck/step-9\n", "task.train = tr.jsonl\n", "task.dev = dev.jsonl\n",
        "task.pair_field = hypothesis\n", "task.text_field = premise\n",
        "task.label_field = gold\n", "data.tokenizer = spm.model\n", "train.epochs = 5\n",
        "task.type = classify\n", "optim.name = adamw\n"})
    EXPECT_NE(dump.find(line), std::string::npos) << line << dump;
  /* A pretraining dump has none of them. */
  train_config p = Default();
  d = train_config_dump(&p);
  EXPECT_EQ(std::string(d).find("task."), std::string::npos);
  free(d);
}

TEST(FinetuneConfig, BadValuesAreRefused) {
  train_config c = Finetune();
  EXPECT_EQ(train_config_set(&c, "task.type", "regress"), STATUS_CONFIG);
  EXPECT_NE(std::string(status_message()).find("task.type"), std::string::npos);
  EXPECT_EQ(train_config_set(&c, "train.epochs", "0"), STATUS_CONFIG);
  EXPECT_EQ(train_config_set(&c, "task.text_field", ""), STATUS_CONFIG);
  EXPECT_EQ(train_config_set(&c, "task.foo", "x"), STATUS_CONFIG);
  EXPECT_NE(std::string(status_message()).find("task.foo"), std::string::npos);
}

/* Arguments in writable storage, as a process gets them (--set writes into them). */
struct Argv {
  std::vector<std::string> s;
  std::vector<char *> p;
  explicit Argv(std::initializer_list<const char *> a) : s(a.begin(), a.end()) {
    for (auto &x : s) p.push_back(x.data());
  }
  int argc() const { return (int)p.size(); }
  char **argv() { return p.data(); }
};

TEST(FinetuneConfig, ArgsNeedATrainingFileAndATokenizer) {
  train_config c;
  bool help;
  Argv a1{"finetune", "--set", "data.tokenizer=x.model"};
  EXPECT_EQ(finetune_config_from_args(a1.argc(), a1.argv(), &c, &help), STATUS_CONFIG);
  EXPECT_NE(std::string(status_message()).find("task.train"), std::string::npos);
  Argv a2{"finetune", "--set", "task.train=t.jsonl"};
  EXPECT_EQ(finetune_config_from_args(a2.argc(), a2.argv(), &c, &help), STATUS_CONFIG);
  EXPECT_NE(std::string(status_message()).find("data.tokenizer"), std::string::npos);
  Argv a3{"finetune", "--set", "task.train=t.jsonl", "--set", "model.init=ck"};
  EXPECT_EQ(finetune_config_from_args(a3.argc(), a3.argv(), &c, &help), STATUS_OK);
  EXPECT_EQ(c.data.max_predictions, 0);
  Argv a4{"finetune", "--set", "task.train=t.jsonl", "--init-from", "ck", "--set", "model.init=ck"};
  EXPECT_EQ(finetune_config_from_args(a4.argc(), a4.argv(), &c, &help), STATUS_ARG);
}

TEST(FinetuneConfig, PretrainingRefusesAClassifierConfig) {
  std::string dir = ::testing::TempDir() + "/ftcfg";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json")
      << R"({"model_type": "bert", "architectures": ["BertForSequenceClassification"],
             "id2label": {"0": "a", "1": "b"}})";
  std::string set = "model.config=" + dir + "/config.json";
  Argv a{"mlmpi-train", "--set", set.c_str(), "--set", "data.path=x"};
  train_config c;
  const char *init;
  bool help;
  EXPECT_EQ(train_config_from_args(a.argc(), a.argv(), &c, &init, &help), STATUS_CONFIG);
  EXPECT_NE(std::string(status_message()).find("finetune"), std::string::npos) << status_message();
}
