/* encoder.h: the pieces BERT and ELECTRA share: the embeddings block (word,
 * position and token-type embeddings, LayerNorm, dropout) and a stack of
 * post-LN Transformer encoder layers as Hugging Face's BertLayer defines
 * them, composed into one network (embeddings, optional projection,
 * encoder), forward and backward over the flat parameter and gradient buffers.
 * Sizes are per stack, so one model can hold stacks of different widths.
 * Private to trainer/. Not thread-safe; the calls use OpenMP inside. */
#ifndef MLMPI_ENCODER_H
#define MLMPI_ENCODER_H

#include "compute.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Dropout sites within one layer's stream group (rng_stream(layer, site)). */
enum { SITE_EMB = 0, SITE_ATTN_PROBS = 1, SITE_ATTN_OUT = 2, SITE_FFN_OUT = 3 };

/* carve() hands out 16-float (64-byte) aligned pieces of an arena: run a
 * layout once with base NULL to count the floats, once more to assign. */
static inline float *arena_carve(float *base, size_t *used, size_t n) {
  float *p = base ? base + *used : NULL;
  *used += (n + 15) & ~(size_t)15;
  return p;
}

/* What one forward or backward call needs besides the stack itself. The
 * buffers are the model's; none is kept. */
typedef struct {
  const param_table *table;
  float *params, *grads;     /* table layout */
  const compute *cx;         /* the model's compute backend */
  int B, T;                  /* this batch: N = B*T rows */
  const int32_t *input_mask; /* [B,T] attention mask over keys */
  bool train;                /* dropout on */
  uint64_t seed;             /* dropout key */
  uint32_t step, sample_base;
  float *scratch;    /* nthreads * max(2*T*T, 3*C) floats for every width C used */
  const float *ones; /* >= every row count used, all 1 */
  int nthreads;
  bert_grad_ready_fn ready; /* may be NULL */
  void *ready_ctx;
} enc_ctx;

/* The dropout of (layer, site) with probability p (0 when not training). */
dropout_desc enc_dropout(const enc_ctx *c, uint32_t layer, uint32_t site, float p);
/* Announces tensors last..first (descending) as final, if c->ready is set. */
void enc_announce(const enc_ctx *c, int first, int last);
/* Adds a tensor with BERT's flags (decay and adapt on matrices only: d1 > 0)
 * named by a printf format; returns its index or -1 (status set). */
int enc_add_param(param_table *t, int64_t d0, int64_t d1, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* BERT initialisation over a whole table: truncated normal (±2 std) with
 * the given std for every matrix, LayerNorm weights 1, other vectors 0; a
 * pure function of seed and the table (tensor i draws from stream i). */
void enc_init_weights(const param_table *t, float *params, float std, uint64_t seed);
/* STATUS_ARG naming the batch tensor and [row,col] of the first value of
 * x[0..n) outside [lo,hi); cols is the tensor's row length. */
status_t enc_check_range(const char *what, const int32_t *x, size_t n, int lo, int hi, int cols);

/* ---- Embeddings ---------------------------------------------------------------
 * out[n] = dropout(LayerNorm(word[ids[n]] + position[n % T] + type[seg[n]])),
 * rows of width C; matches Hugging Face's BertEmbeddings / ElectraEmbeddings
 * with absolute positions. */
typedef struct {
  int we, pe, te, ln_g, ln_b; /* table indices */
  int C;                      /* embedding width */
  float eps, dropout;
  uint32_t layer; /* dropout stream group (site SITE_EMB) */
} emb_block;

/* Adds the five tensors "<prefix>.word_embeddings.weight", ... . */
status_t emb_add_params(emb_block *e, param_table *t, const char *prefix, int vocab, int max_pos,
                        int type_vocab);

typedef struct {
  float *sum, *mean, *rstd; /* (N, C) pre-LayerNorm sum, (N), (N) */
} emb_acts;
void emb_carve(emb_acts *a, const emb_block *e, float *base, size_t *used, size_t N);

void emb_forward(const enc_ctx *c, const emb_block *e, emb_acts *a, const int32_t *ids,
                 const int32_t *seg, float *out);
/* Backward: dout (N, C) is overwritten; dtmp is (N, C) scratch. ADDS into
 * the gradients of the five tensors and announces nothing (a shared block
 * is final only after every user's backward). */
void emb_backward(const enc_ctx *c, const emb_block *e, const emb_acts *a, const int32_t *ids,
                  const int32_t *seg, float *dout, float *dtmp);

/* ---- Encoder layers ----------------------------------------------------------- */
/* Indices into the parameter table. q, k, v weights (and biases) are added
 * one after the other, so they form one [3H,H] matrix ([3H] vector). */
typedef struct {
  int q_w, k_w, v_w, q_b, k_b, v_b;
  int ao_w, ao_b, ln1_g, ln1_b;
  int i_w, i_b, o_w, o_b, ln2_g, ln2_b;
} enc_layer_idx;

typedef struct {
  float *qkv;                  /* (N, 3H) */
  float *probs;                /* (B, NH, T, T) softmax output, before dropout */
  float *ctx;                  /* (N, H) */
  float *sum1, *mean1, *rstd1; /* attention residual sum (N, H), LN stats (N) */
  float *x1;                   /* (N, H) attention block output */
  float *pre, *act;            /* (N, I) intermediate before/after activation */
  float *sum2, *mean2, *rstd2; /* (N, H), (N) */
} enc_layer_acts;

typedef struct {
  int H, I, NH, L;
  act_kind act;
  float hidden_dropout, attn_dropout, eps;
  uint32_t layer0;    /* layer l's dropout streams are group layer0 + l */
  enc_layer_idx *li;  /* L */
  enc_layer_acts *la; /* L */
  float **hs;         /* L+1 of (N, H): hs[0] the input, hs[L] the output */
  /* Scratch of forward and backward. */
  float *proj;                            /* (N, H) a projection before bias/LN */
  float *dx1, *dtmp, *dctx, *dqkv, *dbig; /* (N,H) x3, (N,3H), (N,I) */
} encoder;

/* Sets the sizes and allocates the index and pointer arrays (encoder_free). */
status_t encoder_init(encoder *e, int H, int I, int NH, int L, act_kind act, float hidden_dropout,
                      float attn_dropout, float eps, uint32_t layer0);
void encoder_free(encoder *e); /* frees the arrays, not the arena; NULL-safe */
/* Adds layer l's 16 tensors as "<prefix>.<l>.attention.self.query.weight", ... */
status_t encoder_add_params(encoder *e, param_table *t, const char *prefix);
/* Carves activations and scratch for up to B x T rows from the arena. */
void encoder_carve(encoder *e, float *base, size_t *used, size_t B, size_t T);

/* Runs the layers on hs[0] (filled by the caller) into hs[1..L]. */
void encoder_forward(encoder *e, const enc_ctx *c);
/* On entry dh (N, H) holds the gradient of hs[L]; on exit that of hs[0].
 * ADDS the layers' gradients and announces each layer's tensors. */
void encoder_backward(encoder *e, const enc_ctx *c, float *dh);

/* ---- A network: embeddings, projection, encoder -------------------------------
 * The embeddings (width E), when E != H ELECTRA's embeddings_project (a
 * linear map to the encoder width H), and the encoder stack. BERT is the
 * case E == H without projection. */
typedef struct {
  emb_block emb;
  emb_acts ea;
  encoder enc;
  int proj_w, proj_b; /* table indices, -1 without projection */
  float *emb_out;     /* (N, E) the embeddings' output; enc.hs[0] without projection */
  float *dh;          /* (N, H) gradient flowing down the encoder */
  float *de;          /* (N, E) gradient of emb_out; dh without projection */
} enc_net;

/* Sets the embeddings (width E, dropout stream group `group`) and the
 * encoder (groups group+1 ...), without projection; the caller adds the
 * tensors and sets proj_w, proj_b where it has one. enc_net_free undoes it. */
status_t enc_net_init(enc_net *n, int E, int H, int I, int NH, int L, act_kind act,
                      float hidden_dropout, float attn_dropout, float eps, uint32_t group);
void enc_net_free(enc_net *n); /* NULL-safe */
/* Carves the embeddings', encoder's and network's buffers for B x T rows. */
void enc_net_carve(enc_net *n, float *base, size_t *used, size_t B, size_t T);
/* Embeddings of (ids, seg), the projection, the encoder: output in
 * enc.hs[L]. */
void enc_net_forward(const enc_ctx *c, enc_net *n, const int32_t *ids, const int32_t *seg);
/* On entry n->dh holds the gradient of enc.hs[L]. ADDS the encoder's and
 * projection's gradients and announces them, then ADDS the embeddings'
 * without announcing (they may be shared). dtmp is (N, E) scratch. */
void enc_net_backward(const enc_ctx *c, enc_net *n, const int32_t *ids, const int32_t *seg,
                      float *dtmp);

#ifdef __cplusplus
}
#endif
#endif
