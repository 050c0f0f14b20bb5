/* tokenizer.h: one interface over the tokenizers mlmpi reads as they are:
 * SentencePiece `.model` files (unigram and BPE), GPT-2 byte-level BPE
 * (`vocab.json` + `merges.txt`) and BERT WordPiece (`vocab.txt`). Private
 * to dataset/; the public entry points are re-exported by dataset.h. */
#ifndef MLMPI_TOKENIZER_H
#define MLMPI_TOKENIZER_H

#include "core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Growable buffers the encoders append to. Owned by the caller; reuse them
 * across calls to avoid allocation (tok_ids_free / tok_str_free at the end). */
typedef struct {
  int32_t *v;
  size_t n, cap;
} tok_ids;
typedef struct {
  char *s; /* NUL-terminated after every append */
  size_t n, cap;
} tok_str;
status_t tok_ids_push(tok_ids *a, int32_t id);
status_t tok_str_append(tok_str *s, const char *p, size_t n);
void tok_ids_free(tok_ids *a);
void tok_str_free(tok_str *s);

typedef enum { TOK_SPM, TOK_GPT2, TOK_WORDPIECE } tok_kind;

/* Special-token ids resolved from the vocabulary (-1 where the vocabulary
 * has none, unless tok_add_specials appended it): [CLS]/[SEP]/[MASK]/[PAD]/[UNK]
 * or <s>/</s>/<mask>/<pad>/<unk>. */
typedef struct {
  int32_t cls, sep, mask, pad, unk;
} tok_specials;

/* A backend: the functions behind one kind of tokenizer. `impl` is the
 * backend's loaded model. encode and decode must be thread-safe (any caches
 * per thread or locked). */
typedef struct {
  const char *name;
  /* Appends the ids of text[0..n) (not NUL-terminated; may be invalid UTF-8). */
  status_t (*encode)(const void *impl, const char *text, size_t n, tok_ids *out);
  /* Appends the text of ids. */
  status_t (*decode)(const void *impl, const int32_t *ids, size_t n, tok_str *out);
  /* The piece string of id (as spm_encode --output_format=piece prints it). */
  const char *(*piece)(const void *impl, int32_t id, size_t *len);
  int32_t (*piece_id)(const void *impl, const char *piece); /* -1 if absent */
  int32_t (*vocab_size)(const void *impl);
  void (*free)(void *impl);
  /* Optional (NULL: each id's piece string is printed). Appends the pieces of
   * text[0..n) separated by spaces, where a piece's printed text is not its
   * vocabulary string: SentencePiece prints an unknown piece as the text it
   * covers. Thread-safe like encode. */
  status_t (*encode_pieces)(const void *impl, const char *text, size_t n, tok_str *out);
} tok_ops;

typedef struct tokenizer tokenizer;

/* Loads by path: a `.model` file (SentencePiece), a directory holding
 * vocab.json + merges.txt (GPT-2 BPE) or a `vocab.txt` (WordPiece; also a
 * directory holding one). Errors name the file and what is wrong. */
status_t tok_load(const char *path, tokenizer **out);
void tok_free(tokenizer *t); /* NULL is a no-op */
tok_kind tok_get_kind(const tokenizer *t);
int32_t tok_vocab_size(const tokenizer *t);
const char *tok_piece(const tokenizer *t, int32_t id, size_t *len);
int32_t tok_piece_id(const tokenizer *t, const char *piece);
tok_specials tok_get_specials(const tokenizer *t);
/* The piece that ends a document for a causal LM: "<|endoftext|>" (GPT-2),
 * "</s>" (SentencePiece); NULL for WordPiece, whose end of text is [SEP]. */
const char *tok_eot_piece(tok_kind k);
/* Writes the names of the [CLS] [SEP] [MASK] [PAD] tokens the vocabulary
 * lacks in every spelling (BERT's, as "[MASK], [PAD]"; "" when none) to
 * names[0..cap) and returns how many there are. */
int tok_missing_specials(const tokenizer *t, char *names, size_t cap);
/* STATUS_ARG naming the [CLS] [SEP] [MASK] [PAD] tokens the vocabulary lacks. */
status_t tok_require_specials(const tokenizer *t);
/* Appends the missing [CLS] [SEP] [MASK] [PAD] (tok_missing_specials), in
 * that order, as ids V, V+1, ... after the V pieces read from the files:
 * tok_vocab_size and tok_get_specials then count them, tok_piece and
 * tok_piece_id know them by their names, and tok_decode gives their names.
 * Text never encodes to them, so every encoding stays as the files give it.
 * Returns how many were appended (0 when none was missing, as on a second
 * call). Not thread-safe: call it before t is shared. */
int tok_add_specials(tokenizer *t);
/* A 64-bit fingerprint of the vocabulary and of the bytes of the files it
 * was read from (model, merges, vocabulary, tokenizer_config.json) and of
 * any appended specials: the same files give the same fingerprint; other
 * normalisation, merges or casing give another. */
uint64_t tok_fingerprint(const tokenizer *t);
/* Thread-safe. */
status_t tok_encode(const tokenizer *t, const char *text, size_t n, tok_ids *out);
/* Appends the pieces of text[0..n) separated by spaces, as
 * `spm_encode --output_format=piece` prints them (no newline); ids is scratch.
 * Thread-safe. */
status_t tok_encode_pieces(const tokenizer *t, const char *text, size_t n, tok_ids *ids,
                           tok_str *out);
status_t tok_decode(const tokenizer *t, const int32_t *ids, size_t n, tok_str *out);

/* Backend loaders (one per file: tok_spm.c, tok_gpt2.c, tok_wordpiece.c). */
status_t tok_spm_load(const char *path, void **impl, const tok_ops **ops);
status_t tok_gpt2_load(const char *dir, void **impl, const tok_ops **ops);
status_t tok_wordpiece_load(const char *vocab_txt, void **impl, const tok_ops **ops);

#ifdef __cplusplus
}
#endif
#endif
