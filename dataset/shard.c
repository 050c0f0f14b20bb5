/* shard.c: writing and reading mlmpi shards (see shard.h). */
#include "shard.h"

#include <stdlib.h>
#include <string.h>

#include "shard.pb-c.h"

struct shard_writer {
  tfr_writer w;
  uint64_t *offsets;
  size_t n, cap;
  uint64_t tokens;
  uint8_t *buf;
  size_t buf_cap;
};

static status_t ensure(uint8_t **buf, size_t *cap, size_t need) {
  if (need <= *cap) return STATUS_OK;
  size_t c = *cap ? *cap : 4096;
  while (c < need) c *= 2;
  uint8_t *b = realloc(*buf, c);
  if (!b) return status_set(STATUS_NOMEM, "out of memory encoding a shard record");
  *buf = b;
  *cap = c;
  return STATUS_OK;
}

/* Packs a protobuf-c message into w->buf and writes it as one record. */
static status_t write_msg(shard_writer *w, const ProtobufCMessage *m, uint64_t *at) {
  size_t n = protobuf_c_message_get_packed_size(m);
  if (ensure(&w->buf, &w->buf_cap, n + 1)) return STATUS_NOMEM;
  protobuf_c_message_pack(m, w->buf);
  return tfr_write(&w->w, w->buf, n, at);
}

status_t shard_writer_open(shard_writer **out, const char *path, const shard_meta *meta) {
  *out = NULL;
  shard_writer *w = calloc(1, sizeof *w);
  if (!w) return status_set(STATUS_NOMEM, "out of memory opening %s", path);
  status_t st = tfr_writer_open(&w->w, path);
  if (st) {
    free(w);
    return st;
  }
  Mlmpi__Shard__ShardHeader h = MLMPI__SHARD__SHARD_HEADER__INIT;
  h.magic = SHARD_MAGIC;
  h.format_version = SHARD_VERSION;
  h.tokenizer_fingerprint = meta->tokenizer_fingerprint;
  h.vocab_size = meta->vocab_size;
  h.cls_id = meta->cls_id;
  h.sep_id = meta->sep_id;
  h.mask_id = meta->mask_id;
  h.pad_id = meta->pad_id;
  h.unk_id = meta->unk_id;
  h.tokenizer_kind = (char *)meta->tokenizer_kind;
  h.split = (char *)meta->split;
  if ((st = write_msg(w, &h.base, NULL))) {
    shard_writer_abort(w);
    return st;
  }
  *out = w;
  return STATUS_OK;
}

status_t shard_writer_add(shard_writer *w, const int32_t *ids, size_t n_ids,
                          const uint32_t *sentence_ends, size_t n_sentences,
                          const uint8_t *word_starts) {
  if (w->n == w->cap) {
    size_t c = w->cap ? 2 * w->cap : 1024;
    uint64_t *o = realloc(w->offsets, c * sizeof *o);
    if (!o) return status_set(STATUS_NOMEM, "out of memory writing a shard index");
    w->offsets = o;
    w->cap = c;
  }
  Mlmpi__Shard__Document d = MLMPI__SHARD__DOCUMENT__INIT;
  d.n_ids = n_ids;
  d.ids = (int32_t *)ids;
  d.n_sentence_ends = n_sentences;
  d.sentence_ends = (uint32_t *)sentence_ends;
  if (word_starts) {
    d.word_starts.data = (uint8_t *)word_starts;
    d.word_starts.len = (n_ids + 7) / 8;
  }
  status_t st = write_msg(w, &d.base, &w->offsets[w->n]);
  if (st == STATUS_OK) {
    w->n++;
    w->tokens += n_ids;
  }
  return st;
}

uint64_t shard_writer_bytes(const shard_writer *w) { return w->w.offset; }
uint64_t shard_writer_docs(const shard_writer *w) { return w->n; }

static void writer_free(shard_writer *w) {
  free(w->offsets);
  free(w->buf);
  free(w);
}

status_t shard_writer_close(shard_writer *w) {
  Mlmpi__Shard__ShardIndex ix = MLMPI__SHARD__SHARD_INDEX__INIT;
  ix.n_offsets = w->n;
  ix.offsets = w->offsets;
  ix.document_count = w->n;
  ix.token_count = w->tokens;
  uint64_t at = 0;
  status_t st = write_msg(w, &ix.base, &at);
  if (st == STATUS_OK) {
    uint8_t trailer[16];
    for (int i = 0; i < 8; i++) {
      trailer[i] = (uint8_t)(at >> (8 * i));
      trailer[8 + i] = (uint8_t)(SHARD_TRAILER_MAGIC >> (8 * i));
    }
    st = tfr_write(&w->w, trailer, sizeof trailer, NULL);
  }
  if (st == STATUS_OK)
    st = tfr_writer_close(&w->w);
  else
    tfr_writer_abort(&w->w);
  writer_free(w);
  return st;
}

void shard_writer_abort(shard_writer *w) {
  if (!w) return;
  tfr_writer_abort(&w->w);
  writer_free(w);
}

/* ---- Reader --------------------------------------------------------------- */
static status_t read_header(shard_reader *r) {
  uint64_t o = 0;
  const uint8_t *p;
  size_t n;
  status_t st = tfr_read_at(&r->file, &o, &p, &n);
  if (st) return st;
  Mlmpi__Shard__ShardHeader *h = mlmpi__shard__shard_header__unpack(NULL, n, p);
  if (!h || h->magic != SHARD_MAGIC) {
    if (h) mlmpi__shard__shard_header__free_unpacked(h, NULL);
    return status_set(STATUS_FORMAT, "%s: not an mlmpi shard (bad header record at byte 0)",
                      r->file.path);
  }
  if (h->format_version != SHARD_VERSION) {
    st = status_set(STATUS_FORMAT, "%s: shard format version %u (this build reads %u)",
                    r->file.path, h->format_version, SHARD_VERSION);
  } else {
    shard_meta *m = &r->meta;
    m->tokenizer_fingerprint = h->tokenizer_fingerprint;
    m->vocab_size = h->vocab_size;
    m->cls_id = h->cls_id;
    m->sep_id = h->sep_id;
    m->mask_id = h->mask_id;
    m->pad_id = h->pad_id;
    m->unk_id = h->unk_id;
    snprintf(m->tokenizer_kind, sizeof m->tokenizer_kind, "%s", h->tokenizer_kind);
    snprintf(m->split, sizeof m->split, "%s", h->split);
  }
  mlmpi__shard__shard_header__free_unpacked(h, NULL);
  return st;
}

static status_t read_index(shard_reader *r) {
  const tfr_file *f = &r->file;
  if (f->size < 32) return status_set(STATUS_FORMAT, "%s: truncated (no trailer)", f->path);
  uint64_t o = f->size - 32;
  const uint8_t *p;
  size_t n;
  status_t st = tfr_read_at(f, &o, &p, &n);
  uint64_t at = 0, magic = 0;
  if (st == STATUS_OK && n == 16)
    for (int i = 7; i >= 0; i--) {
      at = at << 8 | p[i];
      magic = magic << 8 | p[8 + i];
    }
  if (st || n != 16 || magic != SHARD_TRAILER_MAGIC)
    return status_set(STATUS_FORMAT, "%s: bad or missing trailer at byte %llu (truncated file?)",
                      f->path, (unsigned long long)(f->size - 32));
  o = at;
  if ((st = tfr_read_at(f, &o, &p, &n))) return st;
  Mlmpi__Shard__ShardIndex *ix = mlmpi__shard__shard_index__unpack(NULL, n, p);
  if (!ix || ix->n_offsets != ix->document_count) {
    if (ix) mlmpi__shard__shard_index__free_unpacked(ix, NULL);
    return status_set(STATUS_FORMAT, "%s: bad index record at byte %llu", f->path,
                      (unsigned long long)at);
  }
  r->n_docs = ix->document_count;
  r->n_tokens = ix->token_count;
  r->offsets = malloc((ix->n_offsets + 1) * sizeof *r->offsets);
  if (r->offsets && ix->n_offsets)
    memcpy(r->offsets, ix->offsets, ix->n_offsets * sizeof *r->offsets);
  for (size_t i = 0; r->offsets && i < ix->n_offsets; i++)
    if (ix->offsets[i] >= at)
      st = status_set(STATUS_FORMAT, "%s: index entry %zu points past the documents", f->path, i);
  mlmpi__shard__shard_index__free_unpacked(ix, NULL);
  if (!r->offsets) return status_set(STATUS_NOMEM, "out of memory reading %s", f->path);
  return st;
}

status_t shard_open(const char *path, shard_reader **out) {
  *out = NULL;
  shard_reader *r = calloc(1, sizeof *r);
  if (!r) return status_set(STATUS_NOMEM, "out of memory opening %s", path);
  status_t st = tfr_open(path, &r->file);
  if (st == STATUS_OK) st = read_header(r);
  if (st == STATUS_OK) st = read_index(r);
  if (st) {
    shard_close(r);
    return st;
  }
  *out = r;
  return STATUS_OK;
}

void shard_close(shard_reader *r) {
  if (!r) return;
  tfr_close(&r->file);
  free(r->offsets);
  free(r);
}

void shard_doc_free(shard_doc *d) {
  free(d->ids);
  free(d->sentence_ends);
  free(d->word_starts);
  memset(d, 0, sizeof *d);
}

status_t shard_read_doc(const shard_reader *r, uint64_t i, shard_doc *out) {
  memset(out, 0, sizeof *out);
  if (i >= r->n_docs)
    return status_set(STATUS_ARG, "%s: document %llu of %llu", r->file.path, (unsigned long long)i,
                      (unsigned long long)r->n_docs);
  uint64_t o = r->offsets[i];
  const uint8_t *p;
  size_t n;
  status_t st = tfr_read_at(&r->file, &o, &p, &n);
  if (st) return st;
  Mlmpi__Shard__Document *d = mlmpi__shard__document__unpack(NULL, n, p);
  if (!d)
    return status_set(STATUS_FORMAT, "%s: document record at byte %llu is not a Document",
                      r->file.path, (unsigned long long)r->offsets[i]);
  bool ok = d->word_starts.len == 0 || d->word_starts.len == (d->n_ids + 7) / 8;
  for (size_t s = 0; ok && s < d->n_sentence_ends; s++)
    ok = d->sentence_ends[s] <= d->n_ids &&
         (s == 0 || d->sentence_ends[s] > d->sentence_ends[s - 1]);
  if (!ok) {
    mlmpi__shard__document__free_unpacked(d, NULL);
    return status_set(STATUS_FORMAT, "%s: document at byte %llu is inconsistent", r->file.path,
                      (unsigned long long)r->offsets[i]);
  }
  out->n_ids = d->n_ids;
  out->n_sentences = d->n_sentence_ends;
  out->ids = malloc(d->n_ids * sizeof(int32_t) + 1);
  out->sentence_ends = malloc(d->n_sentence_ends * sizeof(uint32_t) + 1);
  if (d->word_starts.len) out->word_starts = malloc(d->word_starts.len);
  if (!out->ids || !out->sentence_ends || (d->word_starts.len && !out->word_starts)) {
    mlmpi__shard__document__free_unpacked(d, NULL);
    shard_doc_free(out);
    return status_set(STATUS_NOMEM, "out of memory reading %s", r->file.path);
  }
  /* An empty list unpacks as NULL, which memcpy may not be given. */
  if (d->n_ids) memcpy(out->ids, d->ids, d->n_ids * sizeof(int32_t));
  if (d->n_sentence_ends)
    memcpy(out->sentence_ends, d->sentence_ends, d->n_sentence_ends * sizeof(uint32_t));
  if (d->word_starts.len) memcpy(out->word_starts, d->word_starts.data, d->word_starts.len);
  mlmpi__shard__document__free_unpacked(d, NULL);
  for (size_t k = 0; k < out->n_ids; k++)
    if (out->ids[k] < 0 || (uint32_t)out->ids[k] >= r->meta.vocab_size) {
      shard_doc_free(out);
      return status_set(STATUS_FORMAT, "%s: document at byte %llu has id outside the vocabulary",
                        r->file.path, (unsigned long long)r->offsets[i]);
    }
  return STATUS_OK;
}

status_t shard_verify(const shard_reader *r) {
  uint64_t o = 0, docs = 0, end = r->file.size;
  const uint8_t *p;
  size_t n;
  status_t st = STATUS_OK;
  while (o < end && st == STATUS_OK) {
    uint64_t at = o;
    st = tfr_read_at(&r->file, &o, &p, &n);
    if (st == STATUS_OK && at > 0 && docs < r->n_docs) {
      if (r->offsets[docs] != at)
        st =
            status_set(STATUS_FORMAT, "%s: index entry %llu does not match the record at byte %llu",
                       r->file.path, (unsigned long long)docs, (unsigned long long)at);
      docs++;
    }
  }
  if (st == STATUS_OK) {
    for (uint64_t i = 0; i < r->n_docs && st == STATUS_OK; i++) {
      shard_doc d;
      st = shard_read_doc(r, i, &d);
      shard_doc_free(&d);
    }
  }
  return st;
}
