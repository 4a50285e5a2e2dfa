/* Our matrix-vector kernel for decoding on the CPU: y = (x W^T) * scale + bias, W float32, bfloat16 or int8.

   Built by gpt2_scratch/gemv.py (cc -O3 -march=native -fopenmp, once per CPU, cached) and called through
   ctypes. Decoding one token streams every weight from memory once, so the product is as fast as the
   weights are read: each thread reads its own contiguous run of output rows, four rows at a time,
   and asks for the bytes 8 KB ahead of where it reads (the hardware prefetcher alone left a third
   of the bandwidth unused at 2 threads; docs/performance.md). Several rows of x (a batch, a prompt)
   are summed against the four weight rows together, X_AT_ONCE at a time and the rest in one smaller
   tile, so each weight read from the cache serves them all. Activations are widened to float32 and
   every product is summed in float32.

   Invariant: a row of x gets the same bits whatever other rows share its call and wherever its
   output lies among the threads: each (row, output) pair is summed in the same order (one
   accumulator of LANES lanes over steps of LANES inputs, a fixed tree, then the tail), whether
   its x row is summed alone or beside others (X_AT_ONCE shares the weight reads, not the sums).
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#if defined(__AVX2__) /* where a vector of LANES floats is one register */
/* Keeps v in a register: else the compiler folds its load into each multiply, reading it once a row. */
#define IN_REGISTER(v) __asm__("" : "+v"(v))
#else
#define IN_REGISTER(v) (void)0
#endif

#if defined(__AVX512F__)
#define LANES 16 /* one AVX-512 register of float32 */
#else
#define LANES 8 /* one AVX2 register (elsewhere: what the compiler makes of 8 lanes) */
#endif
typedef float vf __attribute__((vector_size(LANES * 4)));

#define ROWS_AT_ONCE 4      /* output rows summed together (sum4 adds up four) */
#if LANES == 16
#define X_AT_ONCE 6 /* rows of x summed together: each weight read serves them all (24 accumulators, of 32 registers) */
#else
#define X_AT_ONCE 2 /* AVX2 has half the registers */
#endif
#define STEP LANES /* inputs per step: one accumulator per (x row, output row) */
#define PREFETCH_BYTES 8192 /* how far ahead of the read the weights are asked for */

static inline vf load_f32(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }

static inline vf load_bf16(const uint16_t *p) { /* bfloat16 is the top half of a float32 */
#if defined(__AVX512F__)
  __m512i r = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16);
#elif defined(__AVX2__)
  __m256i r = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16);
#else
  uint32_t r[LANES];
  for (int i = 0; i < LANES; i++) r[i] = (uint32_t)p[i] << 16;
#endif
  vf v; memcpy(&v, &r, sizeof v); return v;
}

static inline vf load_i8(const int8_t *p) {
#if defined(__AVX512F__)
  __m512 r = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
#elif defined(__AVX2__)
  __m256 r = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
#else
  float r[LANES];
  for (int i = 0; i < LANES; i++) r[i] = p[i];
#endif
  vf v; memcpy(&v, &r, sizeof v); return v;
}

static inline float from_bf16(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }

static inline uint16_t to_bf16(float f) { /* round to nearest even, as torch does */
  uint32_t u; memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));
typedef int v8i __attribute__((vector_size(32)));
#if defined(__clang__) || (__GNUC__ >= 12 && !defined(GEMV_OLD_SHUFFLE))
#define SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else /* GCC before 12 */
#define SHUFFLE(a, b, ...) __builtin_shuffle(a, b, (v8i){__VA_ARGS__})
#endif

static inline v8 halves(vf a) { /* LANES -> 8 lanes: the two halves added (AVX2: as it is) */
  v8 lo, hi;
  memcpy(&lo, &a, 32);
  if (LANES == 8) return lo;
  memcpy(&hi, (const char *)&a + 32, 32);
  return lo + hi;
}

/* The four sums of a[0..3], always by the same tree (a row's sum does not depend on its neighbours'
   values, only on its own lanes): halves, then quarters of pairs, then eighths, then the last pair. */
static inline v4 sum4(const vf a[4]) {
  const v8 t0 = halves(a[0]), t1 = halves(a[1]), t2 = halves(a[2]), t3 = halves(a[3]);
  const v8 u01 = SHUFFLE(t0, t1, 0, 1, 2, 3, 8, 9, 10, 11) + SHUFFLE(t0, t1, 4, 5, 6, 7, 12, 13, 14, 15);
  const v8 u23 = SHUFFLE(t2, t3, 0, 1, 2, 3, 8, 9, 10, 11) + SHUFFLE(t2, t3, 4, 5, 6, 7, 12, 13, 14, 15);
  const v8 w = SHUFFLE(u01, u23, 0, 1, 4, 5, 8, 9, 12, 13) + SHUFFLE(u01, u23, 2, 3, 6, 7, 10, 11, 14, 15);
  const v8 odd = SHUFFLE(w, w, 1, 3, 5, 7, 0, 0, 0, 0);
  const v8 even = SHUFFLE(w, w, 0, 2, 4, 6, 0, 0, 0, 0);
  const v8 r = even + odd;
  return (v4){r[0], r[1], r[2], r[3]};
}

/* One tile: xs rows of x (1 to X_AT_ONCE; a constant where inlined) against ROWS_AT_ONCE weight rows wr.
   The weights are held in registers (IN_REGISTER) so that each is read once for all xs rows.
   Each (x row, weight row) pair is summed the same way in any tile: the invariant. */
#define TILE(NAME, WT, LOAD, SCALAR)                                                                          \
  static inline __attribute__((always_inline)) void NAME(const WT *const *wr, const float *x, int64_t K,      \
                                                         const char *ahead, float out[][ROWS_AT_ONCE], int xs) {    \
    const int64_t KS = K - K % STEP;                                                                          \
    vf acc[X_AT_ONCE][ROWS_AT_ONCE];                                                                          \
    memset(acc, 0, sizeof acc);                                                                               \
    for (int64_t k = 0; k < KS; k += STEP) {                                                                  \
      if (ahead) /* this step's share of the block, PREFETCH_BYTES on (a prefetch past the end is harmless) */ \
        for (int p = 0; p < ROWS_AT_ONCE * STEP * (int)sizeof(WT); p += 64)                                   \
          __builtin_prefetch(ahead + k * ROWS_AT_ONCE * (int64_t)sizeof(WT) + p);                             \
      vf w[ROWS_AT_ONCE];                                                                                     \
      for (int r = 0; r < ROWS_AT_ONCE; r++) { w[r] = LOAD(wr[r] + k); IN_REGISTER(w[r]); }           \
      for (int j = 0; j < xs; j++) {                                                                          \
        const vf xv = load_f32(x + j * K + k);                                                                \
        for (int r = 0; r < ROWS_AT_ONCE; r++) acc[j][r] += w[r] * xv;                                        \
      }                                                                                                       \
    }                                                                                                         \
    for (int j = 0; j < xs; j++) {                                                                            \
      const v4 sums = sum4(acc[j]);                                                                           \
      for (int r = 0; r < ROWS_AT_ONCE; r++) {                                                                \
        float s = sums[r];                                                                                    \
        for (int64_t k = KS; k < K; k++) s += SCALAR(wr[r][k]) * x[j * K + k];                                \
        out[j][r] = s;                                                                                        \
      }                                                                                                       \
    }                                                                                                         \
  }

/* A switch's cases for every tile size, 1 to X_AT_ONCE. */
#if X_AT_ONCE == 6
#define TILE_CASES(T, ...) case 6: T(__VA_ARGS__, 6); break; case 5: T(__VA_ARGS__, 5); break; \
  case 4: T(__VA_ARGS__, 4); break; case 3: T(__VA_ARGS__, 3); break; TILE_CASES2(T, __VA_ARGS__)
#elif X_AT_ONCE == 2
#define TILE_CASES(T, ...) TILE_CASES2(T, __VA_ARGS__)
#else
#error "TILE_CASES has no cases for this X_AT_ONCE"
#endif
#define TILE_CASES2(T, ...) case 2: T(__VA_ARGS__, 2); break; default: T(__VA_ARGS__, 1); break;

/* x: (M, K) float32 or bfloat16 (x_bf16); w: (N, K); scale, bias: N float32 or NULL; y: (M, N) float32 or
   bfloat16 (y_bf16). Returns 1 when out of memory, else 0. Threads split the output rows in contiguous runs. */
#define GEMV(NAME, WT, LOAD, SCALAR)                                                                           \
  TILE(NAME##_tile, WT, LOAD, SCALAR)                                                                           \
  int NAME(const void *x_in, int x_bf16, const WT *w, const float *scale, const float *bias, void *y_out,       \
           int y_bf16, int64_t M, int64_t K, int64_t N, int threads) {                                          \
    const float *x = (const float *)x_in;                                                                       \
    float *widened = NULL;                                                                                      \
    if (x_bf16) { /* the activations once in float32 */                                                         \
      widened = (float *)malloc((size_t)(M * K) * sizeof(float));                                               \
      if (!widened) return 1;                                                                                   \
      for (int64_t i = 0; i < M * K; i++) widened[i] = from_bf16(((const uint16_t *)x_in)[i]);                  \
      x = widened;                                                                                              \
    }                                                                                                           \
    const int64_t blocks = (N + ROWS_AT_ONCE - 1) / ROWS_AT_ONCE;                                               \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                                          \
    for (int64_t b = 0; b < blocks; b++) {                                                                      \
      const int64_t n0 = b * ROWS_AT_ONCE, rows = N - n0 < ROWS_AT_ONCE ? N - n0 : ROWS_AT_ONCE;                \
      const WT *wr[ROWS_AT_ONCE];                                                                               \
      for (int r = 0; r < ROWS_AT_ONCE; r++) wr[r] = w + (n0 + (r < rows ? r : 0)) * K; /* past N: row n0 again, unused */ \
      const char *ahead = (const char *)(w + n0 * K) + PREFETCH_BYTES;                                          \
      for (int64_t m = 0; m < M;) {                                                                             \
        float out[X_AT_ONCE][ROWS_AT_ONCE];                                                                     \
        const int xs = M - m >= X_AT_ONCE ? X_AT_ONCE : (int)(M - m);                                          \
        const char *pf = m == 0 ? ahead : NULL;                                                                 \
        switch (xs) { /* each count a constant in its own inlined copy: the accumulators stay in registers */   \
        TILE_CASES(NAME##_tile, wr, x + m * K, K, pf, out)                                                      \
        }                                                                                                       \
        for (int j = 0; j < xs; j++)                                                                            \
          for (int r = 0; r < rows; r++) {                                                                      \
            float s = out[j][r];                                                                                \
            if (scale) s *= scale[n0 + r];                                                                      \
            if (bias) s += bias[n0 + r];                                                                        \
            if (y_bf16) ((uint16_t *)y_out)[(m + j) * N + n0 + r] = to_bf16(s);                                 \
            else ((float *)y_out)[(m + j) * N + n0 + r] = s;                                                    \
          }                                                                                                     \
        m += xs;                                                                                                \
      }                                                                                                         \
    }                                                                                                           \
    free(widened);                                                                                              \
    return 0;                                                                                                   \
  }

#define AS_FLOAT(v) ((float)(v))
GEMV(gemv_float32, float, load_f32, AS_FLOAT)
GEMV(gemv_bfloat16, uint16_t, load_bf16, from_bf16)
GEMV(gemv_int8, int8_t, load_i8, AS_FLOAT)
