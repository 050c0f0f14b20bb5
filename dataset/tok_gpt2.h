/* tok_gpt2.h: private to dataset/ and its tests: the GPT-2 pre-tokenizer on
 * its own, so that a test can compare its splits with the reference
 * encoders' regular expression code point by code point. */
#ifndef MLMPI_TOK_GPT2_H
#define MLMPI_TOK_GPT2_H

#include "tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Called once per pre-token with its bytes (valid UTF-8; they point into
 * the caller's text or, where that was not valid UTF-8, into a repaired copy
 * that lives until the call returns). */
typedef void (*tok_gpt2_piece_fn)(void *ctx, const char *piece, size_t n);

/* Splits text[0..n) as encode does before merging: invalid UTF-8 replaced
 * by U+FFFD, then the pre-tokenizer's matches in order. impl comes from
 * tok_gpt2_load. Thread-safe. */
status_t tok_gpt2_pretokenize(const void *impl, const char *text, size_t n, tok_gpt2_piece_fn fn,
                              void *ctx);

#ifdef __cplusplus
}
#endif
#endif
