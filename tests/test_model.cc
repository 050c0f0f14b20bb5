// test_model.cc: the model table's shared pieces (trainer/model.c): the
// registry's choice by model_type and preset, and the score histograms
// behind ELECTRA's held-out ROC AUC and prior gap.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

extern "C" {
#include "model_impl.h"
}

namespace {

// Exact AUC by counting every (positive, negative) pair; ties count half.
double exact_auc(const std::vector<float> &z, const std::vector<float> &y) {
  double wins = 0, np = 0, nn = 0;
  for (size_t i = 0; i < z.size(); i++)
    for (size_t j = 0; j < z.size(); j++)
      if (y[i] > 0 && y[j] == 0) wins += z[i] > z[j] ? 1 : z[i] == z[j] ? 0.5 : 0;
  for (float v : y) (v > 0 ? np : nn) += 1;
  return wins / (np * nn);
}

double hist_auc(const std::vector<float> &z, const std::vector<float> &y,
                const std::vector<int32_t> &mask) {
  std::vector<double> neg(MODEL_SCORE_BINS), pos(MODEL_SCORE_BINS);
  model_score_hist_add(neg.data(), pos.data(), z.data(), y.data(), mask.data(), z.size());
  return model_score_auc(neg.data(), pos.data());
}

TEST(ModelScores, HistogramAucMatchesPairCounting) {
  std::mt19937 rng(5);
  for (double shift : {0.0, 0.3, 1.0, 3.0}) {
    std::normal_distribution<float> a(0, 2), b((float)shift, 2);
    std::vector<float> z, y;
    for (int i = 0; i < 3000; i++) {
      bool pos = i % 7 == 0;  // a 14% base rate, as ELECTRA's replaced tokens
      z.push_back(pos ? b(rng) : a(rng));
      y.push_back(pos ? 1.0f : 0.0f);
    }
    std::vector<int32_t> mask(z.size(), 1);
    // Bins of 1/32 on unit-variance-scale scores: a few thousandths at most.
    EXPECT_NEAR(hist_auc(z, y, mask), exact_auc(z, y), 3e-3) << "shift " << shift;
  }
}

TEST(ModelScores, EdgeCases) {
  std::vector<int32_t> all(4, 1);
  EXPECT_DOUBLE_EQ(hist_auc({-3, -2, 2, 3}, {0, 0, 1, 1}, all), 1.0);      // separated
  EXPECT_DOUBLE_EQ(hist_auc({2, 3, -3, -2}, {0, 0, 1, 1}, all), 0.0);      // reversed
  EXPECT_DOUBLE_EQ(hist_auc({1, 1, 1, 1}, {0, 1, 0, 1}, all), 0.5);        // all tied
  EXPECT_DOUBLE_EQ(hist_auc({-99, -50, 50, 99}, {0, 0, 1, 1}, all), 1.0);  // outside the range
  EXPECT_DOUBLE_EQ(hist_auc({1, 2, 3, 4}, {0, 0, 0, 0}, all), 0.5);        // no positives
  // Masked (padding) tokens do not count: the only counted pair is separated.
  EXPECT_DOUBLE_EQ(hist_auc({5, -5, -5, 5}, {1, 0, 1, 0}, {1, 1, 0, 0}), 1.0);
}

TEST(ModelScores, BinaryEntropy) {
  EXPECT_NEAR(model_binary_entropy(0.5), std::log(2.0), 1e-15);
  EXPECT_NEAR(model_binary_entropy(0.15), -0.15 * std::log(0.15) - 0.85 * std::log(0.85), 1e-15);
  EXPECT_EQ(model_binary_entropy(0.0), 0.0);
  EXPECT_EQ(model_binary_entropy(1.0), 0.0);
}

std::string write_tmp(const std::string &name, const std::string &text) {
  std::string p = ::testing::TempDir() + "/" + name;
  FILE *f = fopen(p.c_str(), "w");
  fputs(text.c_str(), f);
  fclose(f);
  return p;
}

TEST(ModelRegistry, ChoosesByModelTypeThenPreset) {
  const model_ops *m = nullptr;
  ASSERT_EQ(
      model_lookup(write_tmp("e.json", R"({"model_type": "electra"})").c_str(), "bert-mini", &m),
      STATUS_OK);
  EXPECT_STREQ(m->name, "electra");
  ASSERT_EQ(
      model_lookup(write_tmp("b.json", R"({"hidden_size": 64})").c_str(), "electra-small", &m),
      STATUS_OK);
  EXPECT_STREQ(m->name, "bert");  // a config without model_type is BERT's
  ASSERT_EQ(model_lookup("", "electra-base", &m), STATUS_OK);
  EXPECT_STREQ(m->name, "electra");
  ASSERT_EQ(model_lookup(nullptr, "bert-tiny", &m), STATUS_OK);
  EXPECT_STREQ(m->name, "bert");
  EXPECT_EQ(model_lookup(write_tmp("g.json", R"({"model_type": "t5"})").c_str(), "", &m),
            STATUS_CONFIG);
  EXPECT_NE(std::string(status_message()).find("'t5'"), std::string::npos) << status_message();
  EXPECT_EQ(model_lookup("", "gpt-9", &m), STATUS_CONFIG);
  EXPECT_NE(std::string(status_message()).find("electra-small"), std::string::npos);
  EXPECT_EQ(model_by_name("electra"), model_at(1));
  ASSERT_EQ(model_lookup(write_tmp("p.json", R"({"model_type": "gpt2"})").c_str(), "", &m),
            STATUS_OK);
  EXPECT_STREQ(m->name, "gpt2");
  ASSERT_EQ(model_lookup("", "gpt2-tiny", &m), STATUS_OK);
  EXPECT_STREQ(m->name, "gpt2");
  EXPECT_EQ(model_by_name("gpt2"), model_at(2));
  EXPECT_EQ(model_at(5), nullptr);
}

TEST(ModelRegistry, ClassifiersByArchitectureOrTask) {
  const model_ops *m = nullptr;
  std::string bc = write_tmp("bc.json", R"({"model_type": "bert",
      "architectures": ["BertForSequenceClassification"], "id2label": {"0": "x"}})");
  ASSERT_EQ(model_lookup(bc.c_str(), "", &m), STATUS_OK);
  EXPECT_STREQ(m->name, "bert-classify");
  EXPECT_STREQ(m->task, "classify");
  std::string ec = write_tmp("ec.json", R"({"model_type": "electra",
      "architectures": ["ElectraForSequenceClassification"]})");
  ASSERT_EQ(model_lookup(ec.c_str(), "", &m), STATUS_OK);
  EXPECT_STREQ(m->name, "electra-classify");
  /* A pretraining config or a preset fine-tuned: the classifier on its encoder. */
  std::string ep = write_tmp("ep.json", R"({"model_type": "electra",
      "architectures": ["ElectraForPreTraining"]})");
  ASSERT_EQ(model_lookup_task(ep.c_str(), "", "classify", &m), STATUS_OK);
  EXPECT_STREQ(m->name, "electra-classify");
  ASSERT_EQ(model_lookup_task("", "bert-mini", "classify", &m), STATUS_OK);
  EXPECT_STREQ(m->name, "bert-classify");
  ASSERT_EQ(model_lookup_task("", "electra-small", "classify", &m), STATUS_OK);
  EXPECT_STREQ(m->name, "electra-classify");
  ASSERT_EQ(model_lookup_task(bc.c_str(), "", nullptr, &m), STATUS_OK);
  EXPECT_STREQ(m->name, "bert");
  EXPECT_EQ(model_lookup_task("", "gpt-9", "classify", &m), STATUS_CONFIG);
}

TEST(ModelRegistry, ClassifierNeedsItsLabels) {
  std::string nolab = write_tmp("nl.json", R"({"model_type": "bert", "hidden_size": 32,
      "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
      "vocab_size": 50, "architectures": ["BertForSequenceClassification"]})");
  model_spec spec = {};
  spec.config_path = nolab.c_str();
  spec.nsp = -1;
  model *m = nullptr;
  model_shape shape = {2, 8, 0, 1};
  EXPECT_EQ(model_create(&m, &spec, &shape), STATUS_CONFIG);
  EXPECT_NE(std::string(status_message()).find("id2label"), std::string::npos) << status_message();
  const char *names[] = {"neg", "pos", "mixed"};
  spec.num_labels = 3;
  spec.labels = names;
  ASSERT_EQ(model_create(&m, &spec, &shape), STATUS_OK) << status_message();
  const char *const *got;
  EXPECT_EQ(classify_labels(m, &got), 3);
  EXPECT_STREQ(got[2], "mixed");
  const param_table *t = m->ops->params(m);
  EXPECT_GE(param_table_find(t, "bert.pooler.dense.weight"), 0);
  int w = param_table_find(t, "classifier.weight");
  ASSERT_GE(w, 0);
  EXPECT_EQ(t->p[w].shape[0], 3);
  EXPECT_TRUE(classify_is_head(m, w));
  EXPECT_FALSE(classify_is_head(m, param_table_find(t, "bert.embeddings.word_embeddings.weight")));
  model_free(m);
}

}  // namespace
