/* y = x · Wᵀ for a weight stored as row bitmasks + packed non-zeros (llmprune's sparse
 * folder layout): bitmask uint8 [rows][ceil(cols/8)], little bit order (bit j of byte k is
 * column 8k + j); values: the non-zeros of each row in column order, rows one after the
 * other, followed by at least 8 padding values; offsets: where each row's values start.
 * Values are fp32 or bf16 (widened to fp32); x is [tokens][cols] fp32, y [tokens][rows];
 * fp32 accumulation. One call computes output rows [row_begin, row_end): the caller runs
 * row ranges on its own threads (no OpenMP here: a second OpenMP runtime beside torch's
 * would spin against it).
 *
 * Batch-1 decode reads every weight once, so the bytes read bound the speed: 0.125 + 4d
 * (fp32 values) or 0.125 + 2d (bf16) bytes a weight at density d. AVX2 has no "expand"
 * instruction, so each 8-column chunk loads 8 packed values and moves them to the chunk's
 * set lanes with a permutation looked up by the mask byte. One token: four chunks a step
 * with four accumulators (no FMA waits for the one before) and offsets from independent
 * popcounts; several tokens: one accumulator each, every expanded chunk used by all.
 */
#include <stdint.h>
#include <string.h>

#define MAX_TOKENS 8

static inline float widen_f32(float v) { return v; }
static inline float widen_bf16(uint16_t v) {
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

#ifdef __AVX2__
#include <immintrin.h>

static int32_t PERMUTE[256][8]; /* lane i takes packed value PERMUTE[m][i] */
static int32_t LANES[256][8];   /* -1 where bit i of m is set: the lanes that keep */
static volatile int tables_ready = 0;

static void build_tables(void) { /* idempotent: threads racing here write the same bytes */
    for (int m = 0; m < 256; m++) {
        int next = 0;
        for (int i = 0; i < 8; i++) {
            int set = (m >> i) & 1;
            PERMUTE[m][i] = set ? next : 0;
            LANES[m][i] = set ? -1 : 0;
            next += set;
        }
    }
    tables_ready = 1;
}

static inline __m256 load_f32(const float *v) { return _mm256_loadu_ps(v); }
static inline __m256 load_bf16(const uint16_t *v) {
    __m128i half = _mm_loadu_si128((const __m128i *)v);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
}

/* the 8 packed values moved to the set lanes of mask byte m, zeros elsewhere */
static inline __m256 place(__m256 packed, unsigned m) {
    __m256i order = _mm256_loadu_si256((const __m256i *)PERMUTE[m]);
    __m256 keep = _mm256_castsi256_ps(_mm256_loadu_si256((const __m256i *)LANES[m]));
    return _mm256_and_ps(_mm256_permutevar8x32_ps(packed, order), keep);
}

static inline float horizontal_sum(__m256 v) {
    __m128 low = _mm256_castps256_ps128(v), high = _mm256_extractf128_ps(v, 1);
    __m128 s = _mm_add_ps(low, high);
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

#define SIMD_ROW(TYPE, LOAD)                                                                 \
    if (simd && tokens == 1) {                                                               \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                          \
        for (; c + 32 <= cols; c += 32) {                                                    \
            uint32_t m4;                                                                     \
            memcpy(&m4, mask + (c >> 3), 4);                                                 \
            unsigned m0 = m4 & 255, m1 = (m4 >> 8) & 255, m2 = (m4 >> 16) & 255;             \
            unsigned m3 = m4 >> 24;                                                          \
            const TYPE *v1 = v + __builtin_popcount(m0);                                     \
            const TYPE *v2 = v1 + __builtin_popcount(m1);                                    \
            const TYPE *v3 = v2 + __builtin_popcount(m2);                                    \
            a0 = _mm256_fmadd_ps(place(LOAD(v), m0), _mm256_loadu_ps(x + c), a0);           \
            a1 = _mm256_fmadd_ps(place(LOAD(v1), m1), _mm256_loadu_ps(x + c + 8), a1);       \
            a2 = _mm256_fmadd_ps(place(LOAD(v2), m2), _mm256_loadu_ps(x + c + 16), a2);      \
            a3 = _mm256_fmadd_ps(place(LOAD(v3), m3), _mm256_loadu_ps(x + c + 24), a3);      \
            v += __builtin_popcount(m4);                                                     \
        }                                                                                    \
        y[r] = horizontal_sum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));  \
    } else if (simd) {                                                                       \
        __m256 acc[MAX_TOKENS];                                                              \
        for (int64_t t = 0; t < tokens; t++) acc[t] = _mm256_setzero_ps();                   \
        for (; c + 8 <= cols; c += 8) {                                                      \
            unsigned m = mask[c >> 3];                                                       \
            __m256 w = place(LOAD(v), m);                                                    \
            v += __builtin_popcount(m);                                                      \
            for (int64_t t = 0; t < tokens; t++)                                             \
                acc[t] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + t * cols + c), acc[t]);      \
        }                                                                                    \
        for (int64_t t = 0; t < tokens; t++) y[t * rows + r] = horizontal_sum(acc[t]);      \
    }
#define PREPARE if (simd && !tables_ready) build_tables();
#else
#define SIMD_ROW(TYPE, LOAD)
#define PREPARE
#endif

/* one function per value type: SIMD chunks, then the remaining columns one by one */
#define MATMUL(NAME, TYPE, LOAD, WIDEN)                                                      \
    int NAME(const uint8_t *bitmask, const TYPE *values, const int64_t *offsets,             \
             const float *x, float *y, int64_t rows, int64_t cols, int64_t tokens,           \
             int64_t row_begin, int64_t row_end, int simd) {                                 \
        if (tokens < 1 || tokens > MAX_TOKENS) return 1;                                     \
        int64_t bytes_per_row = (cols + 7) / 8;                                              \
        PREPARE                                                                              \
        for (int64_t r = row_begin; r < row_end; r++) {                                      \
            const uint8_t *mask = bitmask + r * bytes_per_row;                               \
            const TYPE *v = values + offsets[r];                                             \
            for (int64_t t = 0; t < tokens; t++) y[t * rows + r] = 0.0f;                     \
            int64_t c = 0;                                                                   \
            SIMD_ROW(TYPE, LOAD)                                                             \
            float acc[MAX_TOKENS] = {0};                                                     \
            for (; c < cols; c++) {                                                          \
                if ((mask[c >> 3] >> (c & 7)) & 1) {                                         \
                    float w = WIDEN(*v);                                                     \
                    v++;                                                                     \
                    for (int64_t t = 0; t < tokens; t++) acc[t] += w * x[t * cols + c];      \
                }                                                                            \
            }                                                                                \
            for (int64_t t = 0; t < tokens; t++) y[t * rows + r] += acc[t];                  \
        }                                                                                    \
        return 0;                                                                            \
    }

MATMUL(bitmask_matmul_f32, float, load_f32, widen_f32)
MATMUL(bitmask_matmul_bf16, uint16_t, load_bf16, widen_bf16)

int bitmask_matmul_has_simd(void) {
#ifdef __AVX2__
    return 1;
#else
    return 0;
#endif
}
