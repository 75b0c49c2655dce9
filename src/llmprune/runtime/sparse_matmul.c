/* y = x · Wᵀ for a sparse weight W, in two layouts, and for a dense one; fp32 accumulation:
 *
 * bitmask  uint8 [rows][ceil(cols/8)], little bit order (bit j of byte k is column 8k + j),
 *          the non-zeros of each row in column order, rows one after the other, and where
 *          each row's values start (llmprune's sparse folder layout);
 * indexed  the same values with a uint16 column index each, offsets [rows + 1]: for very
 *          sparse layers, where the bitmask loop spends its time on empty columns.
 *
 * Values are fp32 or bf16 (widened to fp32), followed by at least 8 padding values; x is
 * [tokens][cols] fp32, y [tokens][rows]. Output rows are split over OpenMP threads: loaded
 * into a process that has imported torch, the kernel binds to torch's own libgomp (same
 * soname), so it shares torch's threads instead of spinning against them.
 *
 * Batch-1 decode reads every weight once, so the bytes read bound the speed: 0.125 + 4d
 * (fp32 values) or 0.125 + 2d (bf16) bytes a weight at density d, against 4 or 2 dense.
 * AVX2 has no "expand" instruction, so each 8-column chunk moves its packed values to the
 * chunk's set lanes with a shuffle looked up by the mask byte: for bf16 one byte shuffle
 * places each value in the high half of its fp32 lane and zeroes the others (expand, mask
 * and widen at once); fp32 values take a lane permutation and a mask. One token: eight
 * chunks a step from one 64-bit mask word, each chunk's start from its own popcount (no
 * chain between them), four accumulators; several tokens: each expanded chunk serves all.
 */
#include <stdint.h>
#include <math.h>
#include <string.h>

#define MAX_TOKENS 8
#define PARALLEL_MIN_WEIGHTS (1 << 16) /* smaller layers: one thread beats the hand-off */

/* several tokens: T a constant in each case, so the T sums stay in registers */
#define BY_TOKENS(BODY, ARG)                                                                 \
    switch (tokens) {                                                                        \
    case 2: BODY(2, ARG) break;                                                              \
    case 3: BODY(3, ARG) break;                                                              \
    case 4: BODY(4, ARG) break;                                                              \
    case 5: BODY(5, ARG) break;                                                              \
    case 6: BODY(6, ARG) break;                                                              \
    case 7: BODY(7, ARG) break;                                                              \
    default: BODY(8, ARG) break;                                                             \
    }

#define INDEXED_TOKENS(T, WIDEN)                                                             \
    {                                                                                        \
        float acc[T] = {0};                                                                  \
        for (; i < end; i++) {                                                               \
            float w = WIDEN(values[i]);                                                      \
            for (int t = 0; t < T; t++) acc[t] += w * x[t * cols + indices[i]];              \
        }                                                                                    \
        for (int t = 0; t < T; t++) y[t * rows + r] = acc[t];                                \
    }

static inline float widen_f32(float v) { return v; }
static inline float widen_bf16(uint16_t v) {
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

static int32_t PERMUTE[256][8];  /* fp32: lane i takes packed value PERMUTE[m][i] */
static int32_t LANES[256][8];    /* fp32: -1 where bit i of m is set */
static uint8_t SHUFFLE[256][32]; /* bf16: bytes of packed value k into the high half of lane i */
/* built when the library loads, before any thread can call a kernel */
__attribute__((constructor)) static void build_tables(void) {
    for (int m = 0; m < 256; m++) {
        int next = 0;
        for (int i = 0; i < 8; i++) {
            int set = (m >> i) & 1;
            PERMUTE[m][i] = set ? next : 0;
            LANES[m][i] = set ? -1 : 0;
            SHUFFLE[m][4 * i] = SHUFFLE[m][4 * i + 1] = 0x80; /* 0x80: a zero byte */
            SHUFFLE[m][4 * i + 2] = set ? (uint8_t)(2 * next) : 0x80;
            SHUFFLE[m][4 * i + 3] = set ? (uint8_t)(2 * next + 1) : 0x80;
            next += set;
        }
    }
}

/* the packed values at v moved to the set lanes of mask byte m, zeros elsewhere */
static inline __m256 place_f32(const float *v, unsigned m) {
    __m256i order = _mm256_loadu_si256((const __m256i *)PERMUTE[m]);
    __m256 keep = _mm256_castsi256_ps(_mm256_loadu_si256((const __m256i *)LANES[m]));
    return _mm256_and_ps(_mm256_permutevar8x32_ps(_mm256_loadu_ps(v), order), keep);
}
static inline __m256 load_f32(const float *v) { return _mm256_loadu_ps(v); }
static inline __m256 load_bf16(const uint16_t *v) {
    __m128i half = _mm_loadu_si128((const __m128i *)v);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
}
static inline __m256 place_bf16(const uint16_t *v, unsigned m) {
    __m256i both = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)v));
    __m256i order = _mm256_loadu_si256((const __m256i *)SHUFFLE[m]);
    return _mm256_castsi256_ps(_mm256_shuffle_epi8(both, order));
}

static inline float horizontal_sum(__m256 v) {
    __m128 low = _mm256_castps256_ps128(v), high = _mm256_extractf128_ps(v, 1);
    __m128 s = _mm_add_ps(low, high);
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

/* packed values before chunk q of a 64-bit mask word */
static inline int before(uint64_t word, int q) {
#ifdef __BMI2__
    return q ? __builtin_popcountll(_bzhi_u64(word, 8 * q)) : 0;
#else
    return q ? __builtin_popcountll(word & ((1ull << (8 * q)) - 1)) : 0;
#endif
}

#define CHUNK(q, acc, PLACE)                                                                 \
    acc = _mm256_fmadd_ps(PLACE(v + before(word, q), mask[k + q]), _mm256_loadu_ps(x + 8 * (k + q)), acc);

#define SPARSE_TOKENS(T, PLACE)                                                              \
    {                                                                                        \
        __m256 sums[T];                                                                      \
        for (int t = 0; t < T; t++) sums[t] = _mm256_setzero_ps();                           \
        for (; k < full_bytes; k++) {                                                        \
            __m256 w = PLACE(v, mask[k]);                                                    \
            v += __builtin_popcount(mask[k]);                                                \
            for (int t = 0; t < T; t++)                                                      \
                sums[t] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + t * cols + 8 * k), sums[t]); \
        }                                                                                    \
        for (int t = 0; t < T; t++) acc[t] = horizontal_sum(sums[t]);                        \
    }
#define DENSE_TOKENS(T, LOAD)                                                                \
    {                                                                                        \
        __m256 sums[T];                                                                      \
        for (int t = 0; t < T; t++) sums[t] = _mm256_setzero_ps();                           \
        for (; c + 8 <= cols; c += 8) {                                                      \
            __m256 chunk = LOAD(w + c);                                                      \
            for (int t = 0; t < T; t++)                                                      \
                sums[t] = _mm256_fmadd_ps(chunk, _mm256_loadu_ps(x + t * cols + c), sums[t]); \
        }                                                                                    \
        for (int t = 0; t < T; t++) acc[t] = horizontal_sum(sums[t]);                        \
    }

/* full mask bytes of row r from k on; v, k and c advanced past what was done */
#define SIMD_ROW(TYPE, PLACE)                                                                \
    if (simd && tokens == 1) {                                                               \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                          \
        for (; k + 8 <= full_bytes; k += 8) {                                                \
            uint64_t word;                                                                   \
            memcpy(&word, mask + k, 8);                                                      \
            CHUNK(0, a0, PLACE) CHUNK(1, a1, PLACE) CHUNK(2, a2, PLACE) CHUNK(3, a3, PLACE)  \
            CHUNK(4, a0, PLACE) CHUNK(5, a1, PLACE) CHUNK(6, a2, PLACE) CHUNK(7, a3, PLACE)  \
            v += __builtin_popcountll(word);                                                 \
        }                                                                                    \
        for (; k < full_bytes; k++) {                                                        \
            a0 = _mm256_fmadd_ps(PLACE(v, mask[k]), _mm256_loadu_ps(x + 8 * k), a0);        \
            v += __builtin_popcount(mask[k]);                                                \
        }                                                                                    \
        acc[0] = horizontal_sum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))); \
    } else if (simd) {                                                                       \
        BY_TOKENS(SPARSE_TOKENS, PLACE)                                                      \
    }                                                                                        \
    c = 8 * k;

/* dense row r's full 8-column chunks; c advanced past them */
#define DENSE_SIMD_ROW(LOAD)                                                                 \
    if (tokens == 1) {                                                                       \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                          \
        for (; c + 32 <= cols; c += 32) {                                                    \
            a0 = _mm256_fmadd_ps(LOAD(w + c), _mm256_loadu_ps(x + c), a0);                   \
            a1 = _mm256_fmadd_ps(LOAD(w + c + 8), _mm256_loadu_ps(x + c + 8), a1);           \
            a2 = _mm256_fmadd_ps(LOAD(w + c + 16), _mm256_loadu_ps(x + c + 16), a2);         \
            a3 = _mm256_fmadd_ps(LOAD(w + c + 24), _mm256_loadu_ps(x + c + 24), a3);         \
        }                                                                                    \
        for (; c + 8 <= cols; c += 8) a0 = _mm256_fmadd_ps(LOAD(w + c), _mm256_loadu_ps(x + c), a0); \
        acc[0] = horizontal_sum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))); \
    } else {                                                                                 \
        BY_TOKENS(DENSE_TOKENS, LOAD)                                                        \
    }
#else
#define SIMD_ROW(TYPE, PLACE)
#define DENSE_SIMD_ROW(LOAD)
#endif

/* one bitmask function per value type: SIMD chunks, then the last columns one by one */
#define BITMASK(NAME, TYPE, PLACE, WIDEN)                                                    \
    int NAME(const uint8_t *bitmask, const TYPE *values, const int64_t *offsets,             \
             const float *x, float *y, int64_t rows, int64_t cols, int64_t tokens, int simd) { \
        if (tokens < 1 || tokens > MAX_TOKENS) return 1;                                     \
        int64_t bytes_per_row = (cols + 7) / 8, full_bytes = cols / 8;                       \
        _Pragma("omp parallel for schedule(static) if (rows * cols >= PARALLEL_MIN_WEIGHTS)") \
        for (int64_t r = 0; r < rows; r++) {                                                 \
            const uint8_t *mask = bitmask + r * bytes_per_row;                               \
            const TYPE *v = values + offsets[r];                                             \
            float acc[MAX_TOKENS] = {0};                                                     \
            int64_t k = 0, c = 0;                                                            \
            (void)k, (void)full_bytes; /* unused without AVX2 */                            \
            SIMD_ROW(TYPE, PLACE)                                                            \
            for (; c < cols; c++) {                                                          \
                if ((mask[c >> 3] >> (c & 7)) & 1) {                                         \
                    float w = WIDEN(*v);                                                     \
                    v++;                                                                     \
                    for (int64_t t = 0; t < tokens; t++) acc[t] += w * x[t * cols + c];      \
                }                                                                            \
            }                                                                                \
            for (int64_t t = 0; t < tokens; t++) y[t * rows + r] = acc[t];                   \
        }                                                                                    \
        return 0;                                                                            \
    }

BITMASK(bitmask_matmul_f32, float, place_f32, widen_f32)
BITMASK(bitmask_matmul_bf16, uint16_t, place_bf16, widen_bf16)

/* indexed: eight independent sums a token (no FMA waits on the one before) */
#define INDEXED(NAME, TYPE, WIDEN)                                                           \
    int NAME(const uint16_t *indices, const TYPE *values, const int64_t *offsets,            \
             const float *x, float *y, int64_t rows, int64_t cols, int64_t tokens) {          \
        if (tokens < 1 || tokens > MAX_TOKENS) return 1;                                     \
        _Pragma("omp parallel for schedule(static) if (rows * cols >= PARALLEL_MIN_WEIGHTS)") \
        for (int64_t r = 0; r < rows; r++) {                                                 \
            int64_t i = offsets[r], end = offsets[r + 1];                                    \
            if (tokens == 1) {                                                               \
                float s[8] = {0};                                                            \
                for (; i + 8 <= end; i += 8)                                                 \
                    for (int q = 0; q < 8; q++) s[q] += WIDEN(values[i + q]) * x[indices[i + q]]; \
                float total = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])); \
                for (; i < end; i++) total += WIDEN(values[i]) * x[indices[i]];              \
                y[r] = total;                                                                \
            } else {                                                                         \
                BY_TOKENS(INDEXED_TOKENS, WIDEN)                                             \
            }                                                                                \
        }                                                                                    \
        return 0;                                                                            \
    }

INDEXED(indexed_matmul_f32, float, widen_f32)
INDEXED(indexed_matmul_bf16, uint16_t, widen_bf16)

#define DENSE(NAME, TYPE, LOAD, WIDEN)                                                       \
    int NAME(const TYPE *weight, const float *x, float *y, int64_t rows, int64_t cols,        \
             int64_t tokens) {                                                               \
        if (tokens < 1 || tokens > MAX_TOKENS) return 1;                                     \
        _Pragma("omp parallel for schedule(static) if (rows * cols >= PARALLEL_MIN_WEIGHTS)") \
        for (int64_t r = 0; r < rows; r++) {                                                 \
            const TYPE *w = weight + r * cols;                                               \
            float acc[MAX_TOKENS] = {0};                                                     \
            int64_t c = 0;                                                                   \
            DENSE_SIMD_ROW(LOAD)                                                             \
            for (; c < cols; c++)                                                            \
                for (int64_t t = 0; t < tokens; t++) acc[t] += WIDEN(w[c]) * x[t * cols + c]; \
            for (int64_t t = 0; t < tokens; t++) y[t * rows + r] = acc[t];                   \
        }                                                                                    \
        return 0;                                                                            \
    }

DENSE(dense_matmul_f32, float, load_f32, widen_f32)
DENSE(dense_matmul_bf16, uint16_t, load_bf16, widen_bf16)

/* the lean decode loop's residual + RMSNorm: hidden += delta (when given), then
 * out = weight * hidden / sqrt(mean(hidden²) + eps), row by row, all fp32 */
void add_rms_norm_f32(float *hidden, const float *delta, const float *weight, float *out,
                      int64_t rows, int64_t dim, float eps) {
    for (int64_t r = 0; r < rows; r++) {
        float *h = hidden + r * dim;
        double squares = 0.0;
        for (int64_t i = 0; i < dim; i++) {
            if (delta) h[i] += delta[r * dim + i];
            squares += (double)h[i] * h[i];
        }
        float scale = 1.0f / sqrtf((float)(squares / dim) + eps);
        for (int64_t i = 0; i < dim; i++) out[r * dim + i] = weight[i] * (h[i] * scale);
    }
}

/* the lean decode loop's rotary step: qkv [batch][length][heads + 2 kv_heads][head_dim] with
 * q and k rows in (x_i, x_(i+d/2)) pairs; cos, sin [batch][length][head_dim / 2]. Writes
 * rotated q to q_out [batch][heads][length][head_dim], rotated k and plain v into the caches
 * [batch][kv_heads][capacity][head_dim] at positions start .. start + length - 1. */
void rope_cache_f32(const float *qkv, const float *cos, const float *sin, float *q_out,
                    float *keys, float *values, int64_t batch, int64_t length, int64_t heads,
                    int64_t kv_heads, int64_t head_dim, int64_t start, int64_t capacity) {
    int64_t half = head_dim / 2, width = heads + 2 * kv_heads;
    for (int64_t b = 0; b < batch; b++)
        for (int64_t l = 0; l < length; l++) {
            const float *row = qkv + (b * length + l) * width * head_dim;
            const float *c = cos + (b * length + l) * half, *s = sin + (b * length + l) * half;
            for (int64_t h = 0; h < heads + 2 * kv_heads; h++) {
                const float *x = row + h * head_dim;
                float *out;
                if (h < heads) out = q_out + ((b * heads + h) * length + l) * head_dim;
                else if (h < heads + kv_heads)
                    out = keys + ((b * kv_heads + h - heads) * capacity + start + l) * head_dim;
                else {
                    out = values + ((b * kv_heads + h - heads - kv_heads) * capacity + start + l) * head_dim;
                    memcpy(out, x, head_dim * sizeof(float));
                    continue;
                }
                for (int64_t i = 0; i < half; i++) {
                    float x0 = x[2 * i], x1 = x[2 * i + 1];
                    out[2 * i] = x0 * c[i] - x1 * s[i];
                    out[2 * i + 1] = x1 * c[i] + x0 * s[i];
                }
            }
        }
}

/* the dense fp32 matrix [rows][cols] of a bitmask or indexed layer: prompts of many
 * tokens are compute-bound and run as one dense matmul, so the weight is rebuilt for them */
#define DENSIFY(NAME, TYPE, WIDEN)                                                           \
    void NAME(const void *structure, const TYPE *values, const int64_t *offsets, float *out,  \
              int64_t rows, int64_t cols, int indexed) {                                      \
        int64_t bytes_per_row = (cols + 7) / 8;                                              \
        _Pragma("omp parallel for schedule(static) if (rows * cols >= PARALLEL_MIN_WEIGHTS)") \
        for (int64_t r = 0; r < rows; r++) {                                                 \
            float *row = out + r * cols;                                                     \
            memset(row, 0, cols * sizeof(float));                                            \
            if (indexed) {                                                                   \
                const uint16_t *columns = (const uint16_t *)structure;                       \
                for (int64_t i = offsets[r]; i < offsets[r + 1]; i++)                        \
                    row[columns[i]] = WIDEN(values[i]);                                      \
                continue;                                                                    \
            }                                                                                \
            const uint8_t *mask = (const uint8_t *)structure + r * bytes_per_row;            \
            const TYPE *v = values + offsets[r];                                             \
            for (int64_t c = 0; c < cols; c++)                                               \
                if ((mask[c >> 3] >> (c & 7)) & 1) row[c] = WIDEN(*v++);                     \
        }                                                                                    \
    }

DENSIFY(densify_f32, float, widen_f32)
DENSIFY(densify_bf16, uint16_t, widen_bf16)

int sparse_matmul_has_simd(void) {
#if defined(__AVX2__) && defined(__FMA__)
    return 1;
#else
    return 0;
#endif
}
