// test_bert.cc: the BERT model's plumbing: config.json parsing and its
// errors, the parameter table's names and flags, BERT initialisation, batch
// validation, and gradient accumulation across calls. (Numerics against
// PyTorch: tests/reference/test_bert_step.py; layer backward: test_kernels.)
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "trainer.h"

namespace {

std::string write_tmp(const std::string &name, const std::string &text) {
  std::string path = ::testing::TempDir() + name;
  FILE *f = fopen(path.c_str(), "w");
  fputs(text.c_str(), f);
  fclose(f);
  return path;
}

bert_config tiny_config() {
  bert_config c = bert_config_default();
  c.vocab_size = 53;
  c.hidden_size = 12;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 3;
  c.intermediate_size = 20;
  c.max_position_embeddings = 16;
  c.hidden_dropout_prob = c.attention_probs_dropout_prob = 0.0f;
  return c;
}

TEST(BertConfig, ReadsHuggingFaceFieldsAndIgnoresOthers) {
  std::string p = write_tmp("cfg_ok.json", R"({
    "architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": 101,
    "hidden_size": 24, "num_hidden_layers": 3, "num_attention_heads": 4,
    "intermediate_size": 50, "hidden_act": "gelu_new", "hidden_dropout_prob": 0.2,
    "attention_probs_dropout_prob": 0.05, "max_position_embeddings": 40,
    "type_vocab_size": 3, "layer_norm_eps": 1e-5, "initializer_range": 0.05,
    "use_cache": true, "classifier_dropout": null, "torch_dtype": "float32"})");
  bert_config c;
  ASSERT_EQ(bert_config_load(p.c_str(), &c), STATUS_OK) << status_message();
  EXPECT_EQ(c.vocab_size, 101);
  EXPECT_EQ(c.hidden_size, 24);
  EXPECT_EQ(c.num_hidden_layers, 3);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.intermediate_size, 50);
  EXPECT_EQ(c.hidden_act, ACT_GELU_TANH);
  EXPECT_FLOAT_EQ(c.hidden_dropout_prob, 0.2f);
  EXPECT_FLOAT_EQ(c.attention_probs_dropout_prob, 0.05f);
  EXPECT_EQ(c.max_position_embeddings, 40);
  EXPECT_EQ(c.type_vocab_size, 3);
  EXPECT_FLOAT_EQ(c.layer_norm_eps, 1e-5f);
  EXPECT_FLOAT_EQ(c.initializer_range, 0.05f);
  EXPECT_FALSE(c.nsp);
}

TEST(BertConfig, DefaultsAreBertBaseWithNsp) {
  std::string p = write_tmp("cfg_empty.json", "{}");
  bert_config c;
  ASSERT_EQ(bert_config_load(p.c_str(), &c), STATUS_OK);
  EXPECT_EQ(c.hidden_size, 768);
  EXPECT_EQ(c.vocab_size, 30522);
  EXPECT_FLOAT_EQ(c.layer_norm_eps, 1e-12f);
  EXPECT_TRUE(c.nsp);
  p = write_tmp("cfg_nsp_off.json", R"({"use_nsp": false})");
  ASSERT_EQ(bert_config_load(p.c_str(), &c), STATUS_OK);
  EXPECT_FALSE(c.nsp);
}

struct BadConfig {
  const char *json, *needle;
};

TEST(BertConfig, BadFilesNameTheProblem) {
  const BadConfig cases[] = {
      {R"({"hidden_size": "768"})", "hidden_size"},
      {R"({"hidden_size": 768.5})", "hidden_size"},
      {R"({"hidden_size": 100, "num_attention_heads": 12})", "num_attention_heads"},
      {R"({"hidden_act": "swish"})", "swish"},
      {R"({"vocab_size": 0})", "vocab_size"},
      {R"({"hidden_dropout_prob": 1.0})", "hidden_dropout_prob"},
      {R"({"position_embedding_type": "relative_key"})", "relative_key"},
      {R"({"use_nsp": "yes"})", "use_nsp"},
      {R"([1, 2])", "not a JSON object"},
      {R"({"vocab_size": 5)", "not a JSON object"},
  };
  int i = 0;
  for (const BadConfig &b : cases) {
    std::string p = write_tmp("cfg_bad" + std::to_string(i++) + ".json", b.json);
    bert_config c;
    EXPECT_NE(bert_config_load(p.c_str(), &c), STATUS_OK) << b.json;
    EXPECT_NE(std::string(status_message()).find(b.needle), std::string::npos)
        << b.json << " -> " << status_message();
  }
  bert_config c;
  EXPECT_EQ(bert_config_load("/nonexistent/config.json", &c), STATUS_IO);
  EXPECT_NE(std::string(status_message()).find("/nonexistent/config.json"), std::string::npos);
}

TEST(BertModel, TableHasHuggingFaceNamesAndFlags) {
  bert_config c = tiny_config();
  bert_model *m;
  ASSERT_EQ(bert_init(&m, &c, 2, 8, 3, 0), STATUS_OK) << status_message();
  const param_table *t = bert_params(m);
  // 5 embedding tensors, 16 per layer, pooler 2, MLM head 5, NSP 2.
  EXPECT_EQ(t->n, 5 + 16 * 2 + 2 + 5 + 2);
  struct {
    const char *name;
    bool flag;
  } want[] = {{"bert.embeddings.word_embeddings.weight", true},
              {"bert.embeddings.LayerNorm.weight", false},
              {"bert.encoder.layer.1.attention.self.key.weight", true},
              {"bert.encoder.layer.1.attention.self.key.bias", false},
              {"bert.encoder.layer.0.output.LayerNorm.bias", false},
              {"bert.pooler.dense.weight", true},
              {"cls.predictions.bias", false},
              {"cls.predictions.transform.LayerNorm.weight", false},
              {"cls.seq_relationship.weight", true}};
  for (const auto &w : want) {
    int i = param_table_find(t, w.name);
    ASSERT_GE(i, 0) << w.name;
    EXPECT_EQ(t->p[i].decay, w.flag) << w.name;
    EXPECT_EQ(t->p[i].adapt, w.flag) << w.name;
  }
  EXPECT_LT(param_table_find(t, "cls.predictions.decoder.weight"), 0);  // tied
  int q = param_table_find(t, "bert.encoder.layer.0.attention.intermediate.dense.weight");
  EXPECT_LT(q, 0);
  int i = param_table_find(t, "bert.encoder.layer.0.intermediate.dense.weight");
  EXPECT_EQ(t->p[i].shape[0], 20);  // [out, in]
  EXPECT_EQ(t->p[i].shape[1], 12);
  bert_free(m);
  c.nsp = false;
  ASSERT_EQ(bert_init(&m, &c, 2, 8, 3, 0), STATUS_OK);
  EXPECT_LT(param_table_find(bert_params(m), "bert.pooler.dense.weight"), 0);
  EXPECT_LT(param_table_find(bert_params(m), "cls.seq_relationship.bias"), 0);
  bert_free(m);
}

TEST(BertModel, InitialisationIsTruncatedNormalAndDeterministic) {
  bert_config c = tiny_config();
  c.vocab_size = 4000;
  c.initializer_range = 0.02f;
  bert_model *a, *b;
  ASSERT_EQ(bert_init(&a, &c, 1, 4, 1, 0), STATUS_OK);
  ASSERT_EQ(bert_init(&b, &c, 1, 4, 1, 0), STATUS_OK);
  bert_init_weights(a, 7);
  bert_init_weights(b, 7);
  const param_table *t = bert_params(a);
  EXPECT_EQ(0, memcmp(bert_param_buf(a), bert_param_buf(b), t->total * sizeof(float)));
  bert_init_weights(b, 8);
  EXPECT_NE(0, memcmp(bert_param_buf(a), bert_param_buf(b), t->total * sizeof(float)));
  const param_info &we = t->p[param_table_find(t, "bert.embeddings.word_embeddings.weight")];
  const float *w = bert_param_buf(a) + we.offset;
  double s = 0, s2 = 0, mx = 0;
  for (size_t i = 0; i < we.numel; i++) {
    s += w[i];
    s2 += (double)w[i] * w[i];
    mx = std::max(mx, (double)std::fabs(w[i]));
  }
  double mean = s / we.numel, sd = std::sqrt(s2 / we.numel - mean * mean);
  // A normal truncated at ±2σ has standard deviation 0.8796σ.
  EXPECT_NEAR(mean, 0.0, 3 * 0.02 / std::sqrt((double)we.numel) * 2);
  EXPECT_NEAR(sd, 0.8796 * 0.02, 0.01 * 0.02);
  EXPECT_LE(mx, 2 * 0.02 + 1e-7);
  EXPECT_GT(mx, 1.9 * 0.02);
  for (int i = 0; i < t->n; i++) {
    const param_info &p = t->p[i];
    if (p.ndim != 1) continue;
    bool gamma = std::string(p.name).find("LayerNorm.weight") != std::string::npos;
    for (size_t e = 0; e < p.numel; e++)
      ASSERT_EQ(bert_param_buf(a)[p.offset + e], gamma ? 1.0f : 0.0f) << p.name;
  }
  bert_free(a);
  bert_free(b);
}

struct Batch {
  int B, T, P;
  std::vector<int32_t> ids, mask, seg, pos, mids, nsp;
  std::vector<float> w;
  Batch(int B_, int T_, int P_, int V)
      : B(B_),
        T(T_),
        P(P_),
        ids(B * T),
        mask(B * T, 1),
        seg(B * T, 0),
        pos(B * P),
        mids(B * P),
        nsp(B),
        w(B * P, 1.0f) {
    for (int i = 0; i < B * T; i++) ids[i] = (i * 7 + 3) % V;
    for (int i = 0; i < B * P; i++) {
      pos[i] = (i * 3 + 1) % T;
      mids[i] = (i * 11 + 5) % V;
    }
    for (int b = 0; b < B; b++) nsp[b] = b % 2;
  }
  bert_batch view() const {
    return bert_batch{B,          T,          P,           ids.data(), mask.data(),
                      seg.data(), pos.data(), mids.data(), w.data(),   nsp.data()};
  }
};

TEST(BertModel, CheckBatchNamesTheBadTensor) {
  bert_config c = tiny_config();
  bert_model *m;
  ASSERT_EQ(bert_init(&m, &c, 2, 8, 3, 0), STATUS_OK);
  Batch ok(2, 8, 3, c.vocab_size);
  bert_batch v = ok.view();
  EXPECT_EQ(bert_check_batch(m, &v), STATUS_OK) << status_message();
  struct {
    void (*spoil)(Batch &);
    const char *needle;
  } cases[] = {
      {[](Batch &b) { b.ids[5] = 53; }, "input_ids"},
      {[](Batch &b) { b.ids[0] = -1; }, "input_ids"},
      {[](Batch &b) { b.mask[3] = 2; }, "input_mask"},
      {[](Batch &b) { b.seg[1] = 2; }, "segment_ids"},
      {[](Batch &b) { b.pos[2] = 8; }, "masked_lm_positions"},
      {[](Batch &b) { b.mids[4] = 1000; }, "masked_lm_ids"},
      {[](Batch &b) { b.w[0] = NAN; }, "masked_lm_weights"},
      {[](Batch &b) { b.nsp[1] = 2; }, "next_sentence_labels"},
  };
  for (const auto &cs : cases) {
    Batch bad = ok;
    cs.spoil(bad);
    bert_batch bv = bad.view();
    EXPECT_EQ(bert_check_batch(m, &bv), STATUS_ARG) << cs.needle;
    EXPECT_NE(std::string(status_message()).find(cs.needle), std::string::npos) << status_message();
  }
  Batch big(3, 8, 3, c.vocab_size);  // more sequences than the arena holds
  bert_batch bv = big.view();
  EXPECT_EQ(bert_check_batch(m, &bv), STATUS_ARG);
  bert_free(m);
}

// Backward adds into the gradient buffer: two calls give twice one call, and
// a batch split in two halves (with the whole batch's loss normalisers)
// gives the whole batch's gradient — what accumulation and data parallelism
// rely on.
TEST(BertModel, GradientsAccumulateAndSplitBatchesAddUp) {
  bert_config c = tiny_config();
  bert_model *m;
  ASSERT_EQ(bert_init(&m, &c, 4, 8, 3, 0), STATUS_OK);
  bert_init_weights(m, 3);
  const size_t n = bert_params(m)->total;
  Batch whole(4, 8, 3, c.vocab_size);
  whole.w[1] = 0.0f;
  whole.w[7] = 0.5f;
  bert_batch v = whole.view();
  bert_run run = bert_run_default();
  bert_losses ls;
  bert_zero_grad(m);
  bert_forward(m, &v, &run, &ls);
  bert_backward(m);
  std::vector<float> once(bert_grad_buf(m), bert_grad_buf(m) + n);
  bert_forward(m, &v, &run, &ls);
  bert_backward(m);
  for (size_t i = 0; i < n; i++) ASSERT_FLOAT_EQ(bert_grad_buf(m)[i], 2 * once[i]) << i;
  double wsum = 0;
  for (float x : whole.w) wsum += x;
  bert_zero_grad(m);
  double loss_parts = 0;
  for (int half = 0; half < 2; half++) {
    bert_batch h = v;
    h.B = 2;
    h.input_ids += half * 2 * 8;
    h.input_mask += half * 2 * 8;
    h.segment_ids += half * 2 * 8;
    h.masked_lm_positions += half * 2 * 3;
    h.masked_lm_ids += half * 2 * 3;
    h.masked_lm_weights += half * 2 * 3;
    h.next_sentence_labels += half * 2;
    bert_run r = run;
    r.mlm_denominator = wsum;
    r.nsp_denominator = 4;
    r.sample_base = (uint32_t)(half * 2);
    bert_losses lh;
    bert_forward(m, &h, &r, &lh);
    bert_backward(m);
    loss_parts += lh.loss;
  }
  bert_forward(m, &v, &run, &ls);  // the whole batch's loss, for comparison
  EXPECT_NEAR(loss_parts, ls.loss, 1e-5 * ls.loss);
  double mx = 0;
  for (size_t i = 0; i < n; i++) mx = std::max(mx, (double)std::fabs(once[i]));
  for (size_t i = 0; i < n; i++) ASSERT_NEAR(bert_grad_buf(m)[i], once[i], 1e-5 * mx) << i;
  bert_free(m);
}

// A gradient buffer the caller provides is zeroed, becomes the model's, and
// receives exactly the gradient the model's own buffer did; the model does
// not free it.
TEST(BertModel, UseGradBufTakesTheCallersBuffer) {
  bert_config c = tiny_config();
  bert_model *m;
  ASSERT_EQ(bert_init(&m, &c, 2, 8, 3, 0), STATUS_OK);
  bert_init_weights(m, 11);
  const size_t n = bert_params(m)->total;
  Batch x(2, 8, 3, c.vocab_size);
  bert_batch v = x.view();
  bert_run run = bert_run_default();
  bert_losses ls;
  bert_forward(m, &v, &run, &ls);
  bert_backward(m);
  std::vector<float> own(bert_grad_buf(m), bert_grad_buf(m) + n);
  std::vector<float> mine(n, 7.0f);
  bert_use_grad_buf(m, mine.data());
  EXPECT_EQ(bert_grad_buf(m), mine.data());
  for (size_t i = 0; i < n; i++) ASSERT_EQ(mine[i], 0.0f) << i;
  bert_forward(m, &v, &run, &ls);
  bert_backward(m);
  for (size_t i = 0; i < n; i++) ASSERT_EQ(mine[i], own[i]) << i;
  bert_free(m);
  EXPECT_EQ(mine[0], own[0]);  // still the caller's
}

// With dropout, the masks are a pure function of (seed, step, sample):
// the same call twice gives the same loss, another step another loss, and a
// batch split in halves (sample_base set) gives the same loss as the whole.
TEST(BertModel, DropoutIsReproducibleAndIndependentOfSplitting) {
  bert_config c = tiny_config();
  c.hidden_dropout_prob = 0.2f;
  c.attention_probs_dropout_prob = 0.1f;
  bert_model *m;
  ASSERT_EQ(bert_init(&m, &c, 4, 8, 3, 0), STATUS_OK);
  bert_init_weights(m, 5);
  Batch whole(4, 8, 3, c.vocab_size);
  bert_batch v = whole.view();
  bert_run run = bert_run_default();
  run.seed = 99;
  run.step = 4;
  bert_losses a, b, d;
  bert_forward(m, &v, &run, &a);
  bert_forward(m, &v, &run, &b);
  EXPECT_EQ(a.loss, b.loss);
  run.step = 5;
  bert_forward(m, &v, &run, &d);
  EXPECT_NE(a.loss, d.loss);
  run.step = 4;
  run.train = false;
  bert_forward(m, &v, &run, &d);
  EXPECT_NE(a.loss, d.loss);
  run.train = true;
  double wsum = 12, parts = 0;
  for (int half = 0; half < 2; half++) {
    bert_batch h = v;
    h.B = 2;
    h.input_ids += half * 16;
    h.input_mask += half * 16;
    h.segment_ids += half * 16;
    h.masked_lm_positions += half * 6;
    h.masked_lm_ids += half * 6;
    h.masked_lm_weights += half * 6;
    h.next_sentence_labels += half * 2;
    bert_run r = run;
    r.mlm_denominator = wsum;
    r.nsp_denominator = 4;
    r.sample_base = (uint32_t)(half * 2);
    bert_losses lh;
    bert_forward(m, &h, &r, &lh);
    parts += lh.loss;
  }
  EXPECT_NEAR(parts, a.loss, 1e-5 * a.loss);
  bert_free(m);
}

}  // namespace
