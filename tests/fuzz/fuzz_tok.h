/* fuzz_tok.h: what the tokenizer targets do with a loaded tokenizer: encode
 * text, encode it to pieces, decode the ids back, and decode ids that are
 * out of range. */
#ifndef MLMPI_FUZZ_TOK_H
#define MLMPI_FUZZ_TOK_H

#include "fuzz_util.h"
#include "tokenizer.h"

static inline void fuzz_tok_exercise(tokenizer *t, const char *text, size_t n) {
  tok_ids ids = {0}, scratch = {0};
  tok_str s = {0}, pieces = {0};
  if (tok_encode(t, text, n, &ids) == STATUS_OK) {
    int32_t V = tok_vocab_size(t);
    for (size_t i = 0; i < ids.n; i++)
      if (ids.v[i] < 0 || ids.v[i] >= V) abort(); /* an id outside the vocabulary */
    (void)tok_decode(t, ids.v, ids.n, &s);
  }
  (void)tok_encode_pieces(t, text, n, &scratch, &pieces);
  tok_ids_free(&ids);
  tok_ids_free(&scratch);
  tok_str_free(&s);
  tok_str_free(&pieces);
}

/* Loads path and runs every fixed text through it, and ids at and past the
 * vocabulary's ends through decode. */
static inline void fuzz_tok_load_and_use(const char *path) {
  tokenizer *t = NULL;
  if (tok_load(path, &t) != STATUS_OK) return;
  for (int i = 0; i < FUZZ_N_TEXTS; i++) fuzz_tok_exercise(t, fuzz_texts[i], strlen(fuzz_texts[i]));
  int32_t V = tok_vocab_size(t);
  int32_t odd[] = {0, V - 1, V, -1, INT32_MAX};
  tok_str s = {0};
  (void)tok_decode(t, odd, 5, &s);
  tok_str_free(&s);
  size_t len;
  for (int32_t i = 0; i < V && i < 64; i++) (void)tok_piece(t, i, &len);
  (void)tok_piece(t, V, &len);
  (void)tok_piece(t, -1, &len);
  (void)tok_fingerprint(t);
  (void)tok_add_specials(t);
  tok_free(t);
}

#endif
