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
#include <math.h>
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

/* ---- int4: GPT-2's weights in 4 bits, as llama.cpp's q4_0 (blocks of 32 inputs, w = (q - 8) * d, q in 0..15),
   multiplied by activations rounded to int8 per block of 32 (as its q8_0), the block sums in integers.
   Layout (gemv.py's pack_int4): a row is K / 64 pairs of blocks A, B; a pair is 32 bytes, A's and B's 16 bytes
   interleaved 4 by 4 (A0-3 B0-3 A4-7 ...), and byte u of a block holds its input u (low 4 bits) and u + 16
   (high 4 bits). So position pos of a pair (0-31 the low halves of its bytes, 32-63 the high halves) is
   block (pos / 4) % 2, and four positions side by side belong to one block. A step reads STEP_PAIRS pairs
   (two where a vector holds 64 bytes: one load, one mask and one shift serve 128 weights); its activation
   bytes are in the order of the weights' halves (the low halves of its pairs, then the high ones), so byte b
   of a step meets the weight half that vector byte b % 64 (b % 32 on AVX2) holds, and lane (b / 4) % LANES
   sums it. d: K / 32 floats a row. The same invariant: each (x row, output row) is summed in the same order
   in any tile (a last odd pair is a step of one pair, in every tile alike). */
#define PAIR 64 /* inputs a pair of blocks */
#if defined(__AVX512BW__) && LANES == 16
#define STEP_PAIRS 2
#else
#define STEP_PAIRS 1
#endif

/* Byte b of a step of n pairs: the step's input it multiplies (pair i's input, 64 * i + 0..63). */
static inline int step_input(int n, int b) {
  const int half = b / (32 * n), i = (b % (32 * n)) / 32, t = b % 32, blk = (t / 4) % 2;
  return 64 * i + 32 * blk + (t / 8) * 4 + t % 4 + 16 * half;
}

/* The pair (0 to n - 1) whose block lane l sums in a step of n pairs; the block is l % 2. */
static inline int lane_pair(int n, int l) { return (4 * l % (32 * n)) / 32; }

/* One x row's step of n pairs prepared: its 64 n inputs rounded to int8 in the step's byte order (xq), each
   lane's -8 * sum (corr: the q - 8 offset, taken once for all output rows) and each lane's block scale (dx). */
static void prepare_step(const float *x, int n, int8_t *xq, int32_t *corr, float *dx) {
  float scale[2 * STEP_PAIRS];
  for (int b = 0; b < 2 * n; b++) { /* block b: inputs 32 b to 32 b + 31 */
    float m = 0.0f;
    int finite = 1;
    for (int i = 0; i < 32; i++) {
      m = fabsf(x[32 * b + i]) > m ? fabsf(x[32 * b + i]) : m;
      finite &= isfinite(x[32 * b + i]);
    }
    scale[b] = finite ? m / 127.0f : NAN; /* a NaN or infinity makes its row's outputs NaN, as in the other formats */
  }
  for (int l = 0; l < LANES; l++) {
    corr[l] = 0;
    dx[l] = scale[2 * lane_pair(n, l) + l % 2];
  }
  for (int b = 0; b < PAIR * n; b++) {
    const int input = step_input(n, b);
    const float s = scale[input / 32];
    const float v = s > 0.0f ? x[input] / s : 0.0f; /* in [-127, 127] */
    xq[b] = (int8_t)(int)((v + 12582912.0f) - 12582912.0f); /* to nearest, ties to even (1.5 * 2^23 rounds) */
    corr[(b / 4) % LANES] -= 8 * xq[b];
  }
}

/* One step's sums, as floats: lane l gets corr[l] + the q * xq of its bytes ((b / 4) % LANES == l), summed in
   integers (exact). n: the step's pairs, a constant where inlined. */
static inline __attribute__((always_inline)) vf step_sums(const uint8_t *w, const int8_t *xq, const int32_t *corr, int n) {
  vf f;
#if defined(__AVX512BW__) && LANES == 16
  __m512i lo, hi;
  const __m512i m4 = _mm512_set1_epi8(15);
  if (n == 2) { /* 64 bytes: the low halves of both pairs, then the high halves */
    const __m512i v = _mm512_loadu_si512(w);
    lo = _mm512_and_si512(v, m4);
    hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
  } else { /* one pair: its low halves and its high halves in one vector */
    const __m256i v = _mm256_loadu_si256((const __m256i *)w), m = _mm256_set1_epi8(15);
    lo = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(v, m)), _mm256_and_si256(_mm256_srli_epi16(v, 4), m), 1);
    hi = _mm512_setzero_si512();
  }
#if defined(__AVX512VNNI__)
  __m512i sums = _mm512_dpbusd_epi32(_mm512_loadu_si512(corr), lo, _mm512_loadu_si512(xq));
  if (n == 2) sums = _mm512_dpbusd_epi32(sums, hi, _mm512_loadu_si512(xq + 64));
#else /* pairs of products in 16 bits (at most 2 * 15 * 127), then fours in 32 */
  const __m512i ones = _mm512_set1_epi16(1);
  __m512i sums = _mm512_add_epi32(_mm512_madd_epi16(_mm512_maddubs_epi16(lo, _mm512_loadu_si512(xq)), ones),
                                  _mm512_loadu_si512(corr));
  if (n == 2) sums = _mm512_add_epi32(sums, _mm512_madd_epi16(_mm512_maddubs_epi16(hi, _mm512_loadu_si512(xq + 64)), ones));
#endif
  const __m512 r = _mm512_cvtepi32_ps(sums);
  memcpy(&f, &r, sizeof f);
#elif defined(__AVX2__) && LANES == 8
  (void)n; /* one pair a step */
  const __m256i v = _mm256_loadu_si256((const __m256i *)w), m4 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
  const __m256i lo = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_and_si256(v, m4), _mm256_loadu_si256((const __m256i *)xq)), ones);
  const __m256i hi = _mm256_madd_epi16(
      _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4), _mm256_loadu_si256((const __m256i *)(xq + 32))), ones);
  const __m256 r = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_add_epi32(lo, hi), _mm256_loadu_si256((const __m256i *)corr)));
  memcpy(&f, &r, sizeof f);
#else
  (void)n; /* one pair a step */
  int32_t sums[LANES];
  for (int l = 0; l < LANES; l++) sums[l] = corr[l];
  for (int t = 0; t < 32; t++) { /* byte t of the pair: its low half meets xq[t], its high half xq[t + 32] */
    sums[t / 4] += (w[t] & 15) * xq[t];
    sums[(t / 4 + 8) % LANES] += (w[t] >> 4) * xq[t + 32];
  }
  for (int l = 0; l < LANES; l++) f[l] = (float)sums[l];
#endif
  return f;
}

/* Each lane's weight scale for a step of n pairs starting at d2 (the step's 2 n block scales). */
static inline __attribute__((always_inline)) vf step_scales(const float *d2, int n) {
  vf f;
#if defined(__AVX512F__)
  if (n == 2) { /* lanes 0-7 the first pair's A, B, A, B ..., lanes 8-15 the second's */
    const __m512 r = _mm512_permutexvar_ps(_mm512_set_epi32(3, 2, 3, 2, 3, 2, 3, 2, 1, 0, 1, 0, 1, 0, 1, 0),
                                           _mm512_castps128_ps512(_mm_loadu_ps(d2)));
    memcpy(&f, &r, sizeof f);
    return f;
  }
#endif
  double both; /* the pair's two scales in alternate lanes */
  memcpy(&both, d2, sizeof both);
  double r[LANES / 2];
  for (int i = 0; i < LANES / 2; i++) r[i] = both;
  memcpy(&f, &r, sizeof f);
  return f;
}

/* One step of n pairs (p: its first) for xs rows of x and ROWS_AT_ONCE weight rows. */
static inline __attribute__((always_inline)) void int4_step(const uint8_t *const *wr, const float *const *dr,
                                                            const int8_t *xq, const int32_t *corr, const float *dx,
                                                            int64_t K, int64_t steps, int64_t s, int64_t p, int n,
                                                            vf acc[][ROWS_AT_ONCE], int xs) {
  vf d[ROWS_AT_ONCE];
  for (int r = 0; r < ROWS_AT_ONCE; r++) d[r] = step_scales(dr[r] + 2 * p, n);
  for (int j = 0; j < xs; j++) {
    const vf sx = load_f32(dx + (j * steps + s) * LANES);
    const int8_t *xj = xq + j * K + p * PAIR;
    const int32_t *cj = corr + (j * steps + s) * LANES;
    for (int r = 0; r < ROWS_AT_ONCE; r++) acc[j][r] += step_sums(wr[r] + p * 32, xj, cj, n) * d[r] * sx;
  }
}

/* One tile: xs rows of x against ROWS_AT_ONCE weight rows (their scales dr), as TILE does for the other formats;
   ahead, scales_ahead: where to ask for the block's bytes and scales ahead of the reads (first tile only), or NULL. */
static inline __attribute__((always_inline)) void int4_tile(const uint8_t *const *wr, const float *const *dr,
                                                            const int8_t *xq, const int32_t *corr, const float *dx,
                                                            int64_t K, float out[][ROWS_AT_ONCE],
                                                            const char *ahead, const char *scales_ahead, int xs) {
  const int64_t pairs = K / PAIR, steps = (pairs + STEP_PAIRS - 1) / STEP_PAIRS, full = pairs / STEP_PAIRS;
  vf acc[X_AT_ONCE][ROWS_AT_ONCE];
  memset(acc, 0, sizeof acc);
  for (int64_t s = 0; s < full; s++) {
    const int64_t p = s * STEP_PAIRS;
    if (ahead) /* this step's share: 4 rows x 32 bytes a pair, and 4 rows x 2 scales a pair */
      for (int q = 0; q < STEP_PAIRS; q++) {
        __builtin_prefetch(ahead + (p + q) * ROWS_AT_ONCE * 32);
        __builtin_prefetch(ahead + (p + q) * ROWS_AT_ONCE * 32 + 64);
        if ((p + q) % 2 == 0) __builtin_prefetch(scales_ahead + (p + q) * ROWS_AT_ONCE * 8);
      }
    int4_step(wr, dr, xq, corr, dx, K, steps, s, p, STEP_PAIRS, acc, xs);
  }
  if (full < steps) int4_step(wr, dr, xq, corr, dx, K, steps, full, full * STEP_PAIRS, 1, acc, xs); /* a last odd pair */
  for (int j = 0; j < xs; j++) {
    const v4 sums = sum4(acc[j]);
    for (int r = 0; r < ROWS_AT_ONCE; r++) out[j][r] = sums[r];
  }
}

/* As the GEMV functions, w: (N, K / 2) bytes (the layout above), d: (N, K / 32) float32. K must be a multiple of
   64 (returns 2 otherwise); 1 when out of memory. */
int gemv_int4(const void *x_in, int x_bf16, const uint8_t *w, const float *d, const float *bias, void *y_out,
              int y_bf16, int64_t M, int64_t K, int64_t N, int threads) {
  if (K % PAIR) return 2;
  const int64_t pairs = K / PAIR, steps = (pairs + STEP_PAIRS - 1) / STEP_PAIRS;
  int8_t *xq = (int8_t *)malloc((size_t)(M * K) + (size_t)(M * steps * LANES) * 8);
  if (!xq) return 1;
  int32_t *corr = (int32_t *)(xq + M * K);
  float *dx = (float *)(corr + M * steps * LANES);
  for (int64_t m = 0; m < M; m++)
    for (int64_t s = 0; s < steps; s++) {
      const int64_t p = s * STEP_PAIRS;
      const int n = pairs - p < STEP_PAIRS ? (int)(pairs - p) : STEP_PAIRS;
      float x[PAIR * STEP_PAIRS];
      for (int i = 0; i < PAIR * n; i++) {
        const int64_t k = m * K + p * PAIR + i;
        x[i] = x_bf16 ? from_bf16(((const uint16_t *)x_in)[k]) : ((const float *)x_in)[k];
      }
      const int64_t at = m * steps + s;
      prepare_step(x, n, xq + m * K + p * PAIR, corr + at * LANES, dx + at * LANES);
    }
  const int64_t blocks = (N + ROWS_AT_ONCE - 1) / ROWS_AT_ONCE;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t b = 0; b < blocks; b++) {
    const int64_t n0 = b * ROWS_AT_ONCE, rows = N - n0 < ROWS_AT_ONCE ? N - n0 : ROWS_AT_ONCE;
    const uint8_t *wr[ROWS_AT_ONCE];
    const float *dr[ROWS_AT_ONCE];
    for (int r = 0; r < ROWS_AT_ONCE; r++) {
      const int64_t n = n0 + (r < rows ? r : 0); /* past N: row n0 again, unused */
      wr[r] = w + n * (K / 2);
      dr[r] = d + n * (K / 32);
    }
    for (int64_t m = 0; m < M;) {
      float out[X_AT_ONCE][ROWS_AT_ONCE];
      const int xs = M - m >= X_AT_ONCE ? X_AT_ONCE : (int)(M - m);
      switch (xs) {
      TILE_CASES(int4_tile, wr, dr, xq + m * K, corr + m * steps * LANES, dx + m * steps * LANES, K, out,
                 m == 0 ? (const char *)(w + n0 * (K / 2)) + PREFETCH_BYTES : NULL,
                 (const char *)(d + n0 * (K / 32)) + PREFETCH_BYTES / 4)
      }
      for (int j = 0; j < xs; j++)
        for (int r = 0; r < rows; r++) {
          float s = out[j][r];
          if (bias) s += bias[n0 + r];
          if (y_bf16) ((uint16_t *)y_out)[(m + j) * N + n0 + r] = to_bf16(s);
          else ((float *)y_out)[(m + j) * N + n0 + r] = s;
        }
      m += xs;
    }
  }
  free(xq);
  return 0;
}
