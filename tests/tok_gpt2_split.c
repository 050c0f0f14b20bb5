/* tok_gpt2_split.c: a helper of tests/reference/test_gpt2.js that exposes
 * the GPT-2 pre-tokenizer alone, so its splits can be compared with the
 * reference encoders' regular expression.
 *   tok_gpt2_split DIR < text    per input line, the byte lengths of its
 *                                pre-tokens separated by spaces
 *   tok_gpt2_split --unassigned  PCRE2's Unicode version, then the ranges of
 *                                code points it has as unassigned (hex) */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok_gpt2.h"

static void print_len(void *ctx, const char *piece, size_t n) {
  (void)piece;
  int *first = ctx;
  printf(*first ? "%zu" : " %zu", n);
  *first = 0;
}

static int split_lines(const char *dir) {
  void *impl;
  const tok_ops *ops;
  if (tok_gpt2_load(dir, &impl, &ops) != STATUS_OK) {
    fprintf(stderr, "tok_gpt2_split: %s\n", status_message());
    return 1;
  }
  char *line = NULL;
  size_t cap = 0;
  int rc = 0;
  for (ssize_t r; rc == 0 && (r = getline(&line, &cap, stdin)) >= 0;) {
    size_t n = (size_t)r - (r > 0 && line[r - 1] == '\n');
    int first = 1;
    if (tok_gpt2_pretokenize(impl, line, n, print_len, &first) != STATUS_OK) {
      fprintf(stderr, "tok_gpt2_split: %s\n", status_message());
      rc = 1;
    }
    putchar('\n');
  }
  free(line);
  ops->free(impl);
  return rc;
}

static int print_unassigned(void) {
  char version[32];
  pcre2_config(PCRE2_CONFIG_UNICODE_VERSION, version);
  printf("unicode %s\n", version);
  int err;
  PCRE2_SIZE at;
  pcre2_code *re =
      pcre2_compile((PCRE2_SPTR) "^\\p{Cn}$", PCRE2_ZERO_TERMINATED, PCRE2_UTF, &err, &at, NULL);
  pcre2_match_data *md = re ? pcre2_match_data_create_from_pattern(re, NULL) : NULL;
  if (!md) return fprintf(stderr, "tok_gpt2_split: cannot compile \\p{Cn}\n"), 1;
  long lo = -1;
  for (long c = 0; c <= 0x110000; c++) {
    int cn = 0;
    if (c < 0x110000 && (c < 0xD800 || c > 0xDFFF)) {
      unsigned char u[4];
      size_t k = c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
      static const unsigned char lead[] = {0, 0, 0xC0, 0xE0, 0xF0};
      for (size_t i = k - 1; i > 0; i--)
        u[i] = (unsigned char)(0x80 | ((c >> (6 * (k - 1 - i))) & 0x3F));
      u[0] = (unsigned char)(k == 1 ? c : lead[k] | (c >> (6 * (k - 1))));
      cn = pcre2_match(re, u, k, 0, 0, md, NULL) >= 0;
    }
    if (cn && lo < 0) lo = c;
    if (!cn && lo >= 0) {
      printf("%lx %lx\n", lo, c - 1);
      lo = -1;
    }
  }
  pcre2_match_data_free(md);
  pcre2_code_free(re);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 2 && !strcmp(argv[1], "--unassigned")) return print_unassigned();
  if (argc == 2 && argv[1][0] != '-') return split_lines(argv[1]);
  fputs("usage: tok_gpt2_split DIR < text | tok_gpt2_split --unassigned\n", stderr);
  return 2;
}
