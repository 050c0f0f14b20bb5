// test_electra.cc: the ELECTRA model's plumbing: config.json parsing and
// presets, the parameter table's names (shared embeddings stored once,
// projections only where widths differ), batch validation, the gradient
// announcements the reducer relies on, and sampling and dropout as pure
// functions of (seed, step, sample) so split batches equal whole ones.
// (Numerics against PyTorch: tests/reference/test_electra_step.py.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "electra.h"

namespace {

std::string write_tmp(const std::string &name, const std::string &text) {
  std::string path = ::testing::TempDir() + name;
  FILE *f = fopen(path.c_str(), "w");
  fputs(text.c_str(), f);
  fclose(f);
  return path;
}

electra_config tiny_config() {
  electra_config c = electra_config_default();
  c.vocab_size = 41;
  c.embedding_size = 10;
  c.max_position_embeddings = 12;
  c.disc = {12, 2, 3, 20};
  c.gen = {6, 1, 2, 8};
  c.hidden_dropout_prob = c.attention_probs_dropout_prob = 0.0f;
  return c;
}

struct Batch {
  int B, T, P;
  std::vector<int32_t> ids, mask, seg, pos, mids, samp;
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
        samp(B * P),
        w(B * P, 1.0f) {
    for (int i = 0; i < B * T; i++) ids[i] = (i * 7 + 3) % V;
    for (int b = 0; b < B; b++)
      for (int j = 0; j < P; j++) {
        int i = b * P + j;
        pos[i] = 1 + j * 2;
        mids[i] = (i * 11 + 5) % V;
        samp[i] = j == 0 ? mids[i] : (i * 5 + 2) % V;
      }
    for (int t = T - 2; t < T; t++) mask[(B - 1) * T + t] = 0;  // padding
  }
  electra_batch view(bool with_samples) const {
    return electra_batch{
        B,          T,          P,           ids.data(), mask.data(),
        seg.data(), pos.data(), mids.data(), w.data(),   with_samples ? samp.data() : nullptr};
  }
};

electra_batch half_of(electra_batch v, int half, int nb) {
  v.B = nb;
  v.input_ids += half * nb * v.T;
  v.input_mask += half * nb * v.T;
  v.segment_ids += half * nb * v.T;
  v.masked_lm_positions += half * nb * v.P;
  v.masked_lm_ids += half * nb * v.P;
  v.masked_lm_weights += half * nb * v.P;
  if (v.sampled_ids) v.sampled_ids += half * nb * v.P;
  return v;
}

TEST(ElectraConfig, ReadsNestedGeneratorAndWeights) {
  std::string p = write_tmp("electra_cfg.json", R"({
    "model_type": "electra", "vocab_size": 100, "embedding_size": 16, "hidden_size": 32,
    "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 64,
    "hidden_act": "gelu_new", "max_position_embeddings": 40, "layer_norm_eps": 1e-5,
    "generator": {"hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "intermediate_size": 12, "embedding_size": 16},
    "gen_weight": 2.0, "disc_weight": 30, "summary_type": "first"})");
  EXPECT_TRUE(electra_config_is_electra(p.c_str()));
  electra_config c;
  ASSERT_EQ(electra_config_load(p.c_str(), &c), STATUS_OK) << status_message();
  EXPECT_EQ(c.vocab_size, 100);
  EXPECT_EQ(c.embedding_size, 16);
  EXPECT_EQ(c.disc.hidden_size, 32);
  EXPECT_EQ(c.disc.num_hidden_layers, 3);
  EXPECT_EQ(c.gen.hidden_size, 8);
  EXPECT_EQ(c.gen.num_hidden_layers, 2);
  EXPECT_EQ(c.gen.num_attention_heads, 2);
  EXPECT_EQ(c.gen.intermediate_size, 12);
  EXPECT_EQ(c.hidden_act, ACT_GELU_TANH);
  EXPECT_EQ(c.gen_weight, 2.0f);
  EXPECT_EQ(c.disc_weight, 30.0f);
  // Without the generator object: a quarter of the discriminator.
  p = write_tmp("electra_cfg2.json", R"({"model_type": "electra", "hidden_size": 256,
    "num_attention_heads": 4, "intermediate_size": 1024})");
  ASSERT_EQ(electra_config_load(p.c_str(), &c), STATUS_OK) << status_message();
  EXPECT_EQ(c.gen.hidden_size, 64);
  EXPECT_EQ(c.gen.num_attention_heads, 1);
  EXPECT_EQ(c.gen.intermediate_size, 256);
  EXPECT_EQ(c.gen.num_hidden_layers, 12);
  EXPECT_EQ(c.gen_weight, 1.0f);
  EXPECT_EQ(c.disc_weight, 50.0f);
  p = write_tmp("bert_cfg.json", R"({"model_type": "bert", "hidden_size": 64})");
  EXPECT_FALSE(electra_config_is_electra(p.c_str()));
  EXPECT_FALSE(electra_config_is_electra("/nonexistent/config.json"));
}

TEST(ElectraConfig, BadFilesNameTheKey) {
  struct {
    const char *json, *needle;
  } bad[] = {
      {R"({"model_type": "electra", "embedding_size": 0})", "embedding_size"},
      {R"({"model_type": "electra", "generator": {"hidden_size": 10, "num_attention_heads": 4}})",
       "generator.hidden_size"},
      {R"({"model_type": "electra", "generator": {"vocab_size": 7}})", "generator.vocab_size"},
      {R"({"model_type": "electra", "generator": {"hidden_act": "relu"}})", "generator.hidden_act"},
      {R"({"model_type": "electra", "generator": 3})", "generator"},
      {R"({"model_type": "electra", "disc_weight": -1})", "disc_weight"},
      {R"({"model_type": "electra", "gen_weight": "x"})", "gen_weight"},
      {R"({"model_type": "electra", "hidden_act": "swish"})", "swish"},
      {R"({"model_type": "electra", "vocab_size": 30522, "max_position_embeddings": 200000})",
       "max_position_embeddings"},
  };
  for (const auto &b : bad) {
    std::string p = write_tmp("electra_bad.json", b.json);
    electra_config c;
    EXPECT_EQ(electra_config_load(p.c_str(), &c), STATUS_CONFIG) << b.json;
    EXPECT_NE(std::string(status_message()).find(b.needle), std::string::npos) << status_message();
  }
  electra_config c;
  EXPECT_EQ(electra_config_load("/nonexistent/config.json", &c), STATUS_IO);
}

TEST(ElectraConfig, PresetsFollowThePaper) {
  electra_config c;
  ASSERT_EQ(electra_preset("electra-small", &c), STATUS_OK);
  EXPECT_EQ(c.embedding_size, 128);
  EXPECT_EQ(c.disc.hidden_size, 256);
  EXPECT_EQ(c.disc.num_attention_heads, 4);
  EXPECT_EQ(c.disc.intermediate_size, 1024);
  EXPECT_EQ(c.gen.hidden_size, 64);
  EXPECT_EQ(c.gen.num_attention_heads, 1);
  EXPECT_EQ(c.gen.intermediate_size, 256);
  EXPECT_EQ(c.sample_temperature, 2.0f);  // mlmpi's short-run recipe (docs/electra.md)
  ASSERT_EQ(electra_preset("electra-base", &c), STATUS_OK);
  EXPECT_EQ(c.sample_temperature, 1.0f);
  EXPECT_EQ(c.embedding_size, 768);
  EXPECT_EQ(c.disc.hidden_size, 768);
  EXPECT_EQ(c.disc.num_attention_heads, 12);
  EXPECT_EQ(c.gen.hidden_size, 256);
  EXPECT_EQ(c.gen.num_attention_heads, 4);
  EXPECT_EQ(c.gen.intermediate_size, 1024);
  EXPECT_EQ(electra_preset("electra-huge", &c), STATUS_CONFIG);
}

TEST(ElectraModel, TableStoresSharedEmbeddingsOnce) {
  electra_config c = tiny_config();
  electra_model *m;
  ASSERT_EQ(electra_init(&m, &c, 2, 8, 3, 0), STATUS_OK) << status_message();
  const param_table *t = electra_params(m);
  const char *present[] = {
      "discriminator.electra.embeddings.word_embeddings.weight",
      "discriminator.electra.embeddings.LayerNorm.bias",
      "generator.electra.embeddings_project.weight",
      "discriminator.electra.embeddings_project.bias",
      "generator.electra.encoder.layer.0.attention.self.query.weight",
      "discriminator.electra.encoder.layer.1.output.LayerNorm.weight",
      "generator.generator_predictions.dense.weight",
      "generator.generator_predictions.LayerNorm.weight",
      "generator.generator_lm_head.bias",
      "discriminator.discriminator_predictions.dense.weight",
      "discriminator.discriminator_predictions.dense_prediction.weight",
      "discriminator.discriminator_predictions.dense_prediction.bias",
  };
  for (const char *n : present) EXPECT_GE(param_table_find(t, n), 0) << n;
  const char *absent[] = {"generator.electra.embeddings.word_embeddings.weight",
                          "generator.generator_lm_head.weight",
                          "generator.electra.encoder.layer.1.output.dense.weight"};
  for (const char *n : absent) EXPECT_LT(param_table_find(t, n), 0) << n;
  int i = param_table_find(t, "discriminator.discriminator_predictions.dense_prediction.weight");
  EXPECT_EQ(t->p[i].shape[0], 1);
  EXPECT_EQ(t->p[i].shape[1], 12);
  EXPECT_TRUE(t->p[i].decay && t->p[i].adapt);
  i = param_table_find(t, "generator.generator_predictions.dense.weight");
  EXPECT_EQ(t->p[i].shape[0], 10);  // [E, Hg]
  EXPECT_EQ(t->p[i].shape[1], 6);
  i = param_table_find(t, "generator.generator_lm_head.bias");
  EXPECT_FALSE(t->p[i].decay || t->p[i].adapt);
  electra_free(m);
  c.embedding_size = c.disc.hidden_size;  // no projection into the discriminator
  ASSERT_EQ(electra_init(&m, &c, 2, 8, 3, 0), STATUS_OK);
  EXPECT_LT(param_table_find(electra_params(m), "discriminator.electra.embeddings_project.weight"),
            0);
  EXPECT_GE(param_table_find(electra_params(m), "generator.electra.embeddings_project.weight"), 0);
  electra_free(m);
}

TEST(ElectraModel, CheckBatchNamesTheBadTensor) {
  electra_config c = tiny_config();
  electra_model *m;
  ASSERT_EQ(electra_init(&m, &c, 2, 8, 3, 0), STATUS_OK);
  Batch ok(2, 8, 3, c.vocab_size);
  electra_batch v = ok.view(true);
  EXPECT_EQ(electra_check_batch(m, &v), STATUS_OK) << status_message();
  struct {
    void (*spoil)(Batch &);
    const char *needle;
  } cases[] = {
      {[](Batch &b) { b.ids[5] = 41; }, "input_ids"},
      {[](Batch &b) { b.mask[3] = 2; }, "input_mask"},
      {[](Batch &b) { b.pos[2] = 8; }, "masked_lm_positions"},
      {[](Batch &b) { b.pos[1] = b.pos[0]; }, "masked_lm_positions"},
      {[](Batch &b) { b.mids[4] = -1; }, "masked_lm_ids"},
      {[](Batch &b) { b.w[0] = -1.0f; }, "masked_lm_weights"},
      {[](Batch &b) { b.samp[4] = 41; }, "sampled_ids"},
  };
  for (const auto &cs : cases) {
    Batch bad = ok;
    cs.spoil(bad);
    electra_batch bv = bad.view(true);
    EXPECT_EQ(electra_check_batch(m, &bv), STATUS_ARG) << cs.needle;
    EXPECT_NE(std::string(status_message()).find(cs.needle), std::string::npos) << status_message();
  }
  // A repeated position is fine where one of the two slots is unused.
  Batch rep = ok;
  rep.pos[1] = rep.pos[0];
  rep.w[1] = 0.0f;
  v = rep.view(true);
  EXPECT_EQ(electra_check_batch(m, &v), STATUS_OK) << status_message();
  electra_free(m);
}

struct Announced {
  std::vector<int> order;
  std::vector<std::vector<float>> at;  // each tensor's gradient when announced
  electra_model *m;
};

void record(void *ctx, int i) {
  Announced *a = static_cast<Announced *>(ctx);
  const param_info &p = electra_params(a->m)->p[i];
  const float *g = electra_grad_buf(a->m) + p.offset;
  a->order.push_back(i);
  a->at[i].assign(g, g + p.numel);
}

// The reducer needs every tensor announced once, in descending index order,
// and only when its gradient is final.
TEST(ElectraModel, BackwardAnnouncesEveryTensorOnceWhenFinal) {
  electra_config c = tiny_config();
  electra_model *m;
  ASSERT_EQ(electra_init(&m, &c, 2, 8, 3, 0), STATUS_OK);
  electra_init_weights(m, 3);
  const param_table *t = electra_params(m);
  Announced a{{}, std::vector<std::vector<float>>(t->n), m};
  electra_set_grad_ready(m, record, &a);
  Batch b(2, 8, 3, c.vocab_size);
  electra_batch v = b.view(false);
  electra_run run = electra_run_default();
  electra_losses ls;
  electra_zero_grad(m);
  electra_forward(m, &v, &run, &ls);
  electra_backward(m);
  ASSERT_EQ((int)a.order.size(), t->n);
  for (int k = 0; k < t->n; k++) EXPECT_EQ(a.order[k], t->n - 1 - k);
  for (int i = 0; i < t->n; i++) {
    const float *g = electra_grad_buf(m) + t->p[i].offset;
    for (size_t e = 0; e < t->p[i].numel; e++) ASSERT_EQ(a.at[i][e], g[e]) << t->p[i].name;
  }
  electra_free(m);
}

// Losses and statistics: the total is the weighted sum; the counts are
// consistent; given samples equal to the originals are "not replaced".
TEST(ElectraModel, LossesAndCountsAreConsistent) {
  electra_config c = tiny_config();
  c.gen_weight = 0.5f;
  c.disc_weight = 7.0f;
  electra_model *m;
  ASSERT_EQ(electra_init(&m, &c, 2, 8, 3, 0), STATUS_OK);
  electra_init_weights(m, 11);
  Batch b(2, 8, 3, c.vocab_size);
  electra_batch v = b.view(true);
  electra_run run = electra_run_default();
  electra_losses ls;
  electra_forward(m, &v, &run, &ls);
  EXPECT_NEAR(ls.loss, 0.5 * ls.mlm_loss + 7.0 * ls.disc_loss, 1e-9 * ls.loss);
  EXPECT_EQ(ls.disc_tokens, 14.0);  // 16 tokens, 2 padding
  EXPECT_EQ(ls.mlm_weight_sum, 6.0);
  // Slot 0 of each sequence samples the original, the others differ.
  EXPECT_EQ(ls.replaced, 4.0);
  EXPECT_LE(ls.true_positive, std::min(ls.replaced, ls.predicted));
  EXPECT_EQ(ls.disc_correct, ls.disc_tokens - ls.replaced - ls.predicted + 2 * ls.true_positive);
  for (int i = 0; i < 6; i++) EXPECT_EQ(electra_sampled_ids(m)[i], b.samp[i]);
  electra_free(m);
}

// electra_use_grad_buf: as bert_use_grad_buf, the caller's buffer is zeroed
// and then receives the same gradient, generator and discriminator alike.
TEST(ElectraModel, UseGradBufTakesTheCallersBuffer) {
  electra_config c = tiny_config();
  electra_model *m;
  ASSERT_EQ(electra_init(&m, &c, 2, 8, 3, 0), STATUS_OK);
  electra_init_weights(m, 13);
  const size_t n = electra_params(m)->total;
  Batch x(2, 8, 3, c.vocab_size);
  electra_batch v = x.view(true);
  electra_run run = electra_run_default();
  electra_losses ls;
  std::vector<float> grads[2];
  std::vector<float> mine(n, -3.0f);
  for (int k = 0; k < 2; k++) {
    if (k == 1) {
      electra_use_grad_buf(m, mine.data());
      ASSERT_EQ(electra_grad_buf(m), mine.data());
      for (size_t i = 0; i < n; i++) ASSERT_EQ(mine[i], 0.0f) << i;
    }
    electra_forward(m, &v, &run, &ls);
    electra_backward(m);
    grads[k].assign(electra_grad_buf(m), electra_grad_buf(m) + n);
  }
  EXPECT_EQ(grads[0], grads[1]);
  electra_free(m);
  EXPECT_EQ(mine, grads[1]);  // still the caller's
}

// Samples and dropout masks are pure functions of (seed, step, sample): the
// same call twice agrees; another step draws differently; a batch split in
// halves (sample_base and the whole batch's normalisers set) gives the whole
// batch's samples, loss and gradient.
TEST(ElectraModel, SamplingAndDropoutAreIndependentOfSplitting) {
  electra_config c = tiny_config();
  c.vocab_size = 997;  // draws then rarely coincide by chance
  c.hidden_dropout_prob = 0.2f;
  c.attention_probs_dropout_prob = 0.1f;
  electra_model *m;
  ASSERT_EQ(electra_init(&m, &c, 4, 8, 3, 0), STATUS_OK);
  electra_init_weights(m, 5);
  const size_t n = electra_params(m)->total;
  Batch whole(4, 8, 3, c.vocab_size);
  electra_batch v = whole.view(false);
  electra_run run = electra_run_default();
  run.seed = 99;
  run.step = 4;
  electra_losses a, b;
  electra_forward(m, &v, &run, &a);
  std::vector<int32_t> s0(electra_sampled_ids(m), electra_sampled_ids(m) + 12);
  electra_forward(m, &v, &run, &b);
  EXPECT_EQ(a.loss, b.loss);
  EXPECT_EQ(s0, std::vector<int32_t>(electra_sampled_ids(m), electra_sampled_ids(m) + 12));
  run.step = 5;
  electra_forward(m, &v, &run, &b);
  EXPECT_NE(a.loss, b.loss);
  EXPECT_NE(s0, std::vector<int32_t>(electra_sampled_ids(m), electra_sampled_ids(m) + 12));
  run.step = 4;
  electra_zero_grad(m);
  electra_forward(m, &v, &run, &a);
  electra_backward(m);
  std::vector<float> whole_grad(electra_grad_buf(m), electra_grad_buf(m) + n);
  electra_zero_grad(m);
  double parts = 0;
  for (int half = 0; half < 2; half++) {
    electra_batch h = half_of(v, half, 2);
    electra_run r = run;
    r.mlm_denominator = a.mlm_weight_sum;
    r.disc_denominator = a.disc_tokens;
    r.sample_base = (uint32_t)(half * 2);
    electra_losses lh;
    electra_forward(m, &h, &r, &lh);
    electra_backward(m);
    parts += lh.loss;
    for (int i = 0; i < 6; i++) EXPECT_EQ(electra_sampled_ids(m)[i], s0[half * 6 + i]);
  }
  EXPECT_NEAR(parts, a.loss, 1e-5 * a.loss);
  double mx = 0;
  for (float g : whole_grad) mx = std::max(mx, (double)std::fabs(g));
  for (size_t i = 0; i < n; i++) ASSERT_NEAR(electra_grad_buf(m)[i], whole_grad[i], 1e-5 * mx) << i;
  electra_free(m);
}

// A model whose generator logits at every slot are `bias` exactly: every
// weight 0 but the generator's decoder bias (the head's LayerNorm then
// outputs its beta, 0, so the tied decoder adds nothing).
electra_model *fixed_logits_model(const electra_config &c, int B, int T, int P,
                                  const std::vector<float> &bias) {
  electra_model *m = nullptr;
  EXPECT_EQ(electra_init(&m, &c, B, T, P, 1), STATUS_OK);
  const param_table *t = electra_params(m);
  float *w = electra_param_buf(m);
  std::fill(w, w + t->total, 0.0f);
  int k = param_table_find(t, "generator.generator_lm_head.bias");
  EXPECT_GE(k, 0);
  std::copy(bias.begin(), bias.end(), w + t->p[k].offset);
  return m;
}

// The generator's samples follow softmax(logits / sample_temperature): a
// chi-square goodness-of-fit
// test over 24,000 draws (41 classes, 40 degrees of freedom) at a false-alarm
// rate of 1e-4 (critical value 82.06). Draws come from many steps, sequences
// and slots, so the test also covers the keying.
class ElectraSamplingT : public ::testing::TestWithParam<float> {};

TEST_P(ElectraSamplingT, SamplesFollowTheSoftmaxOfTheLogits) {
  electra_config c = tiny_config();
  const float tau = GetParam();  // sample_temperature: softmax(logits / tau)
  c.sample_temperature = tau;
  const int V = c.vocab_size, B = 8, T = 12, P = 5;
  std::vector<float> bias(V);
  for (int v = 0; v < V; v++) bias[v] = 0.35f * (float)(v % 9) - 0.02f * (float)v;
  electra_model *m = fixed_logits_model(c, B, T, P, bias);
  Batch b(B, T, P, V);
  electra_batch view = b.view(false);
  electra_run run = electra_run_default();
  run.train = false;
  run.seed = 2024;
  std::vector<double> count(V, 0.0);
  int draws = 0;
  for (uint32_t step = 0; step < 600; step++) {
    run.step = step;
    electra_losses ls;
    electra_forward(m, &view, &run, &ls);
    if (step == 0) {  // the generator's logits are the bias, so the test means what it says
      for (int v = 0; v < V; v++) ASSERT_NEAR(electra_generator_logits(m)[v], bias[v], 1e-6);
    }
    for (int i = 0; i < B * P; i++, draws++) count[electra_sampled_ids(m)[i]] += 1;
  }
  double zmax = *std::max_element(bias.begin(), bias.end()), norm = 0;
  for (float z : bias) norm += std::exp((z - zmax) / tau);
  double chi2 = 0;
  for (int v = 0; v < V; v++) {
    double expect = draws * std::exp((bias[v] - zmax) / tau) / norm;
    ASSERT_GT(expect, 50.0);
    chi2 += (count[v] - expect) * (count[v] - expect) / expect;
  }
  EXPECT_LT(chi2, 82.06) << "chi-square " << chi2 << " over " << draws << " draws";
  // And not uniform (which the same test at these logits must reject).
  double chi2_uniform = 0;
  for (int v = 0; v < V; v++) {
    double expect = draws / (double)V;
    chi2_uniform += (count[v] - expect) * (count[v] - expect) / expect;
  }
  EXPECT_GT(chi2_uniform, 82.06);
  electra_free(m);
}
INSTANTIATE_TEST_SUITE_P(Temperatures, ElectraSamplingT, ::testing::Values(1.0f, 2.0f));

// A sample is keyed by (seed, step, global sample index, position): the same
// position of the same sequence draws the same token whichever slot holds it
// and whatever else is in the batch; another position, sequence, step or seed
// draws independently.
TEST(ElectraSampling, SamplesAreKeyedBySeedStepSampleAndPosition) {
  electra_config c = tiny_config();
  c.vocab_size = 997;  // independent draws then rarely coincide
  const int V = c.vocab_size, B = 2, T = 12, P = 3;
  std::vector<float> bias(V, 0.0f);
  electra_model *m = fixed_logits_model(c, B, T, P, bias);
  Batch b(B, T, P, V);  // positions 1, 3, 5 in each sequence
  electra_run run = electra_run_default();
  run.train = false;
  run.seed = 7;
  run.step = 3;
  electra_losses ls;
  electra_batch view = b.view(false);
  electra_forward(m, &view, &run, &ls);
  std::vector<int32_t> s0(electra_sampled_ids(m), electra_sampled_ids(m) + B * P);
  // The slots in reverse order: each position keeps its sample.
  Batch r = b;
  for (int s = 0; s < B; s++)
    for (int j = 0; j < P; j++) {
      r.pos[s * P + j] = b.pos[s * P + (P - 1 - j)];
      r.mids[s * P + j] = b.mids[s * P + (P - 1 - j)];
    }
  electra_batch rv = r.view(false);
  electra_forward(m, &rv, &run, &ls);
  for (int s = 0; s < B; s++)
    for (int j = 0; j < P; j++)
      EXPECT_EQ(electra_sampled_ids(m)[s * P + j], s0[s * P + (P - 1 - j)]) << s << "," << j;
  // Sequence 1 alone as global sample 1: the same draws as in the batch.
  electra_batch second = half_of(view, 1, 1);
  electra_run r1 = run;
  r1.sample_base = 1;
  electra_forward(m, &second, &r1, &ls);
  for (int j = 0; j < P; j++) EXPECT_EQ(electra_sampled_ids(m)[j], s0[P + j]);
  // As global sample 0 it is another sequence's key: other draws.
  r1.sample_base = 0;
  electra_forward(m, &second, &r1, &ls);
  int same = 0;
  for (int j = 0; j < P; j++) same += electra_sampled_ids(m)[j] == s0[P + j];
  EXPECT_LT(same, P);
  // Another step, another seed: other draws.
  for (int change = 0; change < 2; change++) {
    electra_run o = run;
    if (change)
      o.seed = 8;
    else
      o.step = 4;
    electra_forward(m, &view, &o, &ls);
    same = 0;
    for (int i = 0; i < B * P; i++) same += electra_sampled_ids(m)[i] == s0[i];
    EXPECT_LT(same, 2) << (change ? "seed" : "step");
  }
  // Two positions of one sequence draw independently.
  EXPECT_FALSE(s0[0] == s0[1] && s0[1] == s0[2]);
  electra_free(m);
}

}  // namespace
