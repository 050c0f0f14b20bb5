/* crc32c.c: CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) as used by
 * TFRecord framing; SSE4.2's crc32 instruction when present, else tables. */
#include <pthread.h>
#include <string.h>

#include "core.h"

#if defined(__x86_64__)
#include <nmmintrin.h>
#define HAVE_X86 1
#endif

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;
static int crc_hw;

static void crc_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
    crc_table[0][i] = c;
  }
  for (int t = 1; t < 8; t++)
    for (int i = 0; i < 256; i++)
      crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
#ifdef HAVE_X86
  crc_hw = __builtin_cpu_supports("sse4.2");
#endif
}

static uint32_t crc_soft(uint32_t c, const uint8_t *p, size_t n) {
  while (n >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    w ^= c;
    c = crc_table[7][w & 0xff] ^ crc_table[6][(w >> 8) & 0xff] ^ crc_table[5][(w >> 16) & 0xff] ^
        crc_table[4][(w >> 24) & 0xff] ^ crc_table[3][(w >> 32) & 0xff] ^
        crc_table[2][(w >> 40) & 0xff] ^ crc_table[1][(w >> 48) & 0xff] ^ crc_table[0][w >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xff];
  return c;
}

#ifdef HAVE_X86
__attribute__((target("sse4.2"))) static uint32_t crc_hard(uint32_t c, const uint8_t *p, size_t n) {
  uint64_t c64 = c;
  while (n >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    c64 = _mm_crc32_u64(c64, w);
    p += 8;
    n -= 8;
  }
  c = (uint32_t)c64;
  while (n--) c = _mm_crc32_u8(c, *p++);
  return c;
}
#endif

uint32_t crc32c_update(uint32_t crc, const void *buf, size_t n) {
  pthread_once(&crc_once, crc_init);
  uint32_t c = ~crc;
#ifdef HAVE_X86
  if (crc_hw) return ~crc_hard(c, buf, n);
#endif
  return ~crc_soft(c, buf, n);
}

/* For tests: the table path regardless of the processor. */
uint32_t crc32c_update_soft(uint32_t crc, const void *buf, size_t n) {
  pthread_once(&crc_once, crc_init);
  return ~crc_soft(~crc, buf, n);
}
