/* core.h: the shared base of mlmpi: status codes and messages, rank-tagged
 * logging, checked allocation, the Philox counter-based RNG, CRC32C,
 * safetensors read/write and the parameter table over flat fp32 buffers.
 * Everything here is plain C11 and depends on nothing but libc and cJSON. */
#ifndef MLMPI_CORE_H
#define MLMPI_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Status ---------------------------------------------------------------
 * Errors the outside world can cause are returned as a status_t; the text
 * that names the problem is kept per thread and read with status_message().
 * Programming errors are CORE_ASSERT, which aborts with file and line. */
typedef enum {
  STATUS_OK = 0,
  STATUS_IO,      /* a file could not be opened, read or written */
  STATUS_FORMAT,  /* a file's contents are malformed */
  STATUS_CONFIG,  /* a config key or value is wrong */
  STATUS_ARG,     /* a bad argument or input tensor */
  STATUS_NOMEM,   /* an allocation failed */
  STATUS_COMM,    /* a communication error */
  STATUS_TIMEOUT, /* a deadline passed */
} status_t;

/* Records msg (printf format) as this thread's last error and returns code.
 * Thread-safe (the message is thread-local). */
status_t status_set(status_t code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Puts "prefix: " (printf format) in front of this thread's last message,
 * e.g. to add a file name or line number on the way up. */
void status_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The last message set on this thread ("" when none). Valid until the next
 * status_set on this thread. */
const char *status_message(void);
/* A fixed English name for a code ("I/O error", ...). */
const char *status_name(status_t code);
/* A config value as a boolean: true/1/yes or false/0/no, else false. */
bool core_parse_bool(const char *v, bool *out);

#define CORE_ASSERT(cond)                               \
  do {                                                  \
    if (!(cond)) core_panic(__FILE__, __LINE__, #cond); \
  } while (0)
__attribute__((noreturn)) void core_panic(const char *file, int line, const char *what);

/* ---- Small helpers --------------------------------------------------------
 * Used all over mlmpi; written once here. Thread-safe. */
#define CORE_FNV_OFFSET 0xcbf29ce484222325ull
/* 64-bit FNV-1a of n bytes, continuing from h (start with CORE_FNV_OFFSET). */
static inline uint64_t core_fnv1a(uint64_t h, const void *data, size_t n) {
  const unsigned char *p = (const unsigned char *)data;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}
/* FNV-1a of a NUL-terminated string (NULL hashes as ""). */
uint64_t core_fnv1a_str(const char *s);
/* Seconds on the monotonic clock (for intervals only). */
double core_now_s(void);
/* Reads a whole file into *out (malloc'd, owned by the caller, with a NUL
 * after the *len bytes). Files over max_bytes (0: no limit) are refused.
 * Errors read "<what> <path>: <reason>" (what may be "", then "<path>: ..."). */
status_t core_read_file(const char *what, const char *path, size_t max_bytes, char **out,
                        size_t *len);
/* Creates directory path and any missing parents (mode 0755); an existing
 * directory is fine. STATUS_IO naming the path otherwise. */
status_t core_mkdir_p(const char *path);

/* ---- Logging --------------------------------------------------------------
 * Lines go to stderr as "[mlmpi r<rank> <subsys>] message". The subsystem
 * mask comes from MLMPI_LOG_SUBSYS (comma list of names, or "all"; default
 * all) and the level from MLMPI_LOG_LEVEL (error, warn, info, debug;
 * default info). Thread-safe: each line is one write. */
typedef enum {
  LOG_SUB_CORE = 1 << 0,
  LOG_SUB_TRAINER = 1 << 1,
  LOG_SUB_COMM = 1 << 2,
  LOG_SUB_OPTIM = 1 << 3,
  LOG_SUB_DATASET = 1 << 4,
  LOG_SUB_LAUNCH = 1 << 5,
} log_subsys;
typedef enum { LOG_LEVEL_ERROR, LOG_LEVEL_WARN, LOG_LEVEL_INFO, LOG_LEVEL_DEBUG } log_level;

/* Sets the rank printed in every line (-1 prints no rank). Call once at
 * start-up, before threads log. */
void log_set_rank(int rank);
void log_write(log_level level, log_subsys sub, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#define LOG_ERROR(sub, ...) log_write(LOG_LEVEL_ERROR, LOG_SUB_##sub, __VA_ARGS__)
#define LOG_WARN(sub, ...) log_write(LOG_LEVEL_WARN, LOG_SUB_##sub, __VA_ARGS__)
#define LOG_INFO(sub, ...) log_write(LOG_LEVEL_INFO, LOG_SUB_##sub, __VA_ARGS__)
#define LOG_DEBUG(sub, ...) log_write(LOG_LEVEL_DEBUG, LOG_SUB_##sub, __VA_ARGS__)

/* ---- Memory ---------------------------------------------------------------
 * 64-byte aligned allocation. On failure returns NULL and sets STATUS_NOMEM
 * with a message naming `what` and the size. Thread-safe. */
void *mem_alloc(size_t bytes, const char *what);
void *mem_calloc(size_t bytes, const char *what); /* zero-filled */
void mem_free(void *p);                           /* mem_free(NULL) is a no-op */

/* ---- Philox4x32-10 counter-based RNG --------------------------------------
 * Random numbers are a pure function of (seed, step, sample, stream, index):
 * the same value results whichever rank, thread or micro-batch draws it.
 * counter = {index, stream, sample, step}, key = {seed low, seed high}. */
void philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

typedef struct {
  uint64_t seed;
  uint32_t step;   /* global optimizer step */
  uint32_t sample; /* global index of the sample in the step's batch */
  uint32_t stream; /* what draws: layer and site (see rng_stream) */
} rng_key;

/* Stream ids: one per (layer, site) so that no two uses share numbers. */
static inline uint32_t rng_stream(uint32_t layer, uint32_t site) { return layer * 16u + site; }

/* Fills out[0..n) with uniforms in [0,1) for elements first..first+n of the
 * keyed stream; element e's value does not depend on first or n.
 * Thread-safe (pure). */
void rng_uniform(rng_key key, uint32_t first, size_t n, float *out);
/* 24-bit uniform in [0,1) from one 32-bit word. */
static inline float rng_u32_to_float(uint32_t x) { return (float)(x >> 8) * (1.0f / 16777216.0f); }

/* ---- CRC32C (Castagnoli) --------------------------------------------------
 * crc32c_update(0, buf, n) is the CRC of buf; chaining continues a CRC.
 * Uses SSE4.2 where the processor has it. Thread-safe. */
uint32_t crc32c_update(uint32_t crc, const void *buf, size_t n);
/* TFRecord's masked CRC: ((c >> 15) | (c << 17)) + 0xa282ead8. */
static inline uint32_t crc32c_mask(uint32_t c) { return ((c >> 15) | (c << 17)) + 0xa282ead8u; }

/* ---- Tensors and safetensors ---------------------------------------------- */
typedef enum {
  DTYPE_F32,
  DTYPE_F64,
  DTYPE_F16,
  DTYPE_BF16,
  DTYPE_I64,
  DTYPE_I32,
  DTYPE_I16,
  DTYPE_I8,
  DTYPE_U8,
  DTYPE_BOOL,
  DTYPE_COUNT
} dtype_t;
const char *dtype_name(dtype_t t); /* "F32", ... as safetensors spells it */
size_t dtype_size(dtype_t t);

#define TENSOR_MAX_DIMS 8
typedef struct {
  char *name;
  dtype_t dtype;
  int ndim;
  int64_t shape[TENSOR_MAX_DIMS];
  size_t numel;
  size_t nbytes;
  const void *data; /* points into the owning st_file */
} st_tensor;

/* A safetensors file read whole into memory and validated: header size,
 * JSON, dtypes, shapes against byte ranges, ranges inside the data and not
 * overlapping. */
typedef struct {
  int n;
  st_tensor *tensors;
  char *metadata_json; /* the "__metadata__" object as JSON text, or NULL */
  void *blob;          /* the file's bytes */
  size_t blob_size;
} st_file;

/* Reads and validates path. On success *out owns everything (st_free).
 * Errors name the file and what is wrong. */
status_t st_read(const char *path, st_file **out);
void st_free(st_file *f);
const st_tensor *st_find(const st_file *f, const char *name); /* NULL if absent */
/* Checks that `name` exists with dtype and shape (ndim dims); the message
 * names the tensor and the file's path. */
status_t st_expect(const st_file *f, const char *path, const char *name, dtype_t dtype, int ndim,
                   const int64_t *shape, const st_tensor **out);

/* Collects tensors, then writes them in one go: to path.tmp, fsync, rename,
 * so a reader never sees a half-written file. Names are copied; the data
 * pointers are kept (not copied) until st_writer_free: keep them alive. */
typedef struct st_writer st_writer;
st_writer *st_writer_init(void); /* NULL when out of memory (status set) */
status_t st_writer_add(st_writer *w, const char *name, dtype_t dtype, int ndim,
                       const int64_t *shape, const void *data);
/* Adds a string pair to "__metadata__". Copies both. */
status_t st_writer_meta(st_writer *w, const char *key, const char *value);
status_t st_writer_write(st_writer *w, const char *path);
void st_writer_free(st_writer *w);

/* ---- Parameter table ------------------------------------------------------
 * Every parameter lives in one contiguous fp32 buffer; gradients and
 * optimizer moments in further buffers of the same layout. Tensors follow
 * each other without padding, in the order they were added, so a model can
 * treat adjacent tensors (query, key, value) as one matrix. */
#define PARAM_NAME_MAX 128
#define PARAM_MAX_DIMS 4
typedef struct {
  char name[PARAM_NAME_MAX]; /* Hugging Face name */
  int ndim;
  int64_t shape[PARAM_MAX_DIMS]; /* linear weights are [out, in] */
  size_t offset;                 /* in floats from the buffer start */
  size_t numel;
  bool decay; /* weight decay applies */
  bool adapt; /* LAMB trust ratio applies */
} param_info;

typedef struct {
  int n, cap;
  param_info *p;
  size_t total; /* floats in a buffer of this layout */
} param_table;

void param_table_init(param_table *t);
void param_table_free(param_table *t);
/* Appends a tensor; returns its index, or -1 with status set when out of
 * memory or the name is too long or already present. */
int param_table_add(param_table *t, const char *name, int ndim, const int64_t *shape, bool decay,
                    bool adapt);
int param_table_find(const param_table *t, const char *name); /* -1 if absent */
/* A 64-bit FNV-1a hash of names, shapes, offsets and flags: equal layouts
 * hash equal on every rank. */
uint64_t param_table_hash(const param_table *t);

/* Copies every table tensor from f into buf. Every tensor must be present as
 * F32 with the table's shape; when strict, a tensor of f absent from the
 * table is an error too. Messages name the tensor and path. */
status_t param_load_safetensors(const param_table *t, float *buf, const st_file *f,
                                const char *path, bool strict);
/* Adds every table tensor of buf to w under prefix+name (prefix may be "").
 * buf must outlive w. */
status_t param_add_to_writer(const param_table *t, const float *buf, const char *prefix,
                             st_writer *w);

#ifdef __cplusplus
}
#endif
#endif
