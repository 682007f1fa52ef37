/* CPU kernels for x86 with AVX2 and FMA, built at first use by cpu_kernels.py.
 *
 * Weight-only int8 matrix product: out[m, n] = x[m, :] . w[n, :] * scale[n]. Each row of x is quantized to int16 with its own scale (relative
 * error ~3e-5, far below the int8 weights' own and below torch's kernel, which rounds x to bf16), so the
 * inner loop is vpmaddwd: 16 products per instruction, twice fp32 FMA. Weights are packed in blocks of ROWS
 * output rows whose LANES-wide slices are interleaved ([n/ROWS][k/LANES][ROWS][LANES]): one 64-byte line
 * per step, read as one sequential stream per thread, which is what keeps the memory bus busy. */

#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ROWS and LANES come from the build (cpu_kernels.py's, the one source of the packed layout); the inner
 * loop below is written for exactly these values. */
#if !defined(ROWS) || !defined(LANES) || ROWS != 4 || LANES != 16
#error "build with -DROWS=4 -DLANES=16 (cpu_kernels.py passes them)"
#endif
/* int32 sums are widened to fp32 this often: each lane adds 2 products of |x| <= 32767 and |w| <= 128 per
 * step, 2048 / LANES steps stay below 2^31. Widening every 256 left 3-6 % of the product to the epilogues. */
#define CHUNK 2048
/* Weights are requested into L2 this far ahead. The hardware prefetcher alone left the bus idle while rows
 * were being multiplied: 4 rows of x took 1.74 ms on an 8192 x 3072 layer (2 AVX2 cores) without, 1.08
 * with; one row 0.80 and 0.70. */
#define PREFETCH 16384

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __m256i widen(const int8_t *p) { return _mm256_cvtepi8_epi16(_mm_load_si128((const __m128i *)p)); }

static inline __m256i mac(__m256i acc, __m256i x, __m256i w) { return _mm256_add_epi32(acc, _mm256_madd_epi16(x, w)); }

static inline __m256 widened(__m256 sum, __m256i acc) { return _mm256_add_ps(sum, _mm256_cvtepi32_ps(acc)); }

/* One block of ROWS weight rows against x rows i (and i + 1 when `two`): the widened weights serve both.
 * Only the first pair of x rows (`fetch`) requests the weights ahead: later pairs find the block in cache,
 * and their prefetches only took load slots (a 259-row prefill product 1-4 % slower, 5 rows 20 %). */
static void block(const int16_t *xq, const float *xscale, int64_t k, int two, int fetch, const int8_t *w,
                  const float *scales, int64_t n, float *out) {
    const int16_t *x0 = xq, *x1 = two ? xq + k : xq;
    __m256 s[2][ROWS];
    for (int r = 0; r < ROWS; r++) s[0][r] = s[1][r] = _mm256_setzero_ps();
    for (int64_t c = 0; c < k; c += CHUNK) {
        int64_t end = c + CHUNK < k ? c + CHUNK : k;
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        for (int64_t j = c; j < end; j += LANES, w += ROWS * LANES) {
            if (fetch) _mm_prefetch((const char *)w + PREFETCH, _MM_HINT_T1);
            __m256i u = _mm256_loadu_si256((const __m256i *)(x0 + j));
            __m256i w0 = widen(w), w1 = widen(w + LANES), w2 = widen(w + 2 * LANES), w3 = widen(w + 3 * LANES);
            a0 = mac(a0, u, w0); a1 = mac(a1, u, w1); a2 = mac(a2, u, w2); a3 = mac(a3, u, w3);
            if (two) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(x1 + j));
                b0 = mac(b0, v, w0); b1 = mac(b1, v, w1); b2 = mac(b2, v, w2); b3 = mac(b3, v, w3);
            }
        }
        s[0][0] = widened(s[0][0], a0); s[0][1] = widened(s[0][1], a1);
        s[0][2] = widened(s[0][2], a2); s[0][3] = widened(s[0][3], a3);
        s[1][0] = widened(s[1][0], b0); s[1][1] = widened(s[1][1], b1);
        s[1][2] = widened(s[1][2], b2); s[1][3] = widened(s[1][3], b3);
    }
    for (int i = 0; i <= two; i++)
        for (int r = 0; r < ROWS; r++) out[i * n + r] = hsum(s[i][r]) * xscale[i] * scales[r];
}

/* w: n x k plain; packed: the same weights in the packed layout (n % ROWS == 0, k % LANES == 0). */
void int8_pack(const int8_t *w, int64_t n, int64_t k, int8_t *packed, int threads) {
    int64_t slices = k / LANES;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < n / ROWS; b++)
        for (int64_t s = 0; s < slices; s++)
            for (int r = 0; r < ROWS; r++)
                memcpy(packed + ((b * slices + s) * ROWS + r) * LANES, w + (b * ROWS + r) * k + s * LANES, LANES);
}

/* The inverse of int8_pack, widened to bf16 (exact: every int8 is a bf16) for a dense matmul. */
void int8_unpack_bf16(const int8_t *packed, int64_t n, int64_t k, uint16_t *w, int threads) {
    int64_t slices = k / LANES;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < n / ROWS; b++)
        for (int64_t s = 0; s < slices; s++)
            for (int r = 0; r < ROWS; r++) {
                const int8_t *src = packed + ((b * slices + s) * ROWS + r) * LANES;
                uint16_t *dst = w + (b * ROWS + r) * k + s * LANES;
                for (int l = 0; l < LANES; l++) {
                    float f = src[l];
                    uint32_t bits;
                    memcpy(&bits, &f, sizeof bits);
                    dst[l] = (uint16_t)(bits >> 16);
                }
            }
}

/* x (k % LANES == 0) rounded to int16 with its own scale (returned): the largest |x| maps to 32767. Rounds
 * to nearest even, as lrintf does: the scalar loop this replaced gave the same int16s 27x slower (2 % of a
 * 300-row product). */
static float quantize_row(const float *x, int64_t k, int16_t *q) {
    const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 top = _mm256_setzero_ps();
    for (int64_t j = 0; j < k; j += 8) top = _mm256_max_ps(top, _mm256_and_ps(_mm256_loadu_ps(x + j), magnitude));
    __m128 t = _mm_max_ps(_mm256_castps256_ps128(top), _mm256_extractf128_ps(top, 1));
    t = _mm_max_ps(t, _mm_movehl_ps(t, t));
    float peak = _mm_cvtss_f32(_mm_max_ss(t, _mm_movehdup_ps(t)));
    __m256 inverse = _mm256_set1_ps(peak > 0 ? 32767.0f / peak : 0);
    for (int64_t j = 0; j < k; j += LANES) {
        __m256i lo = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + j), inverse));
        __m256i hi = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + j + 8), inverse));
        /* packs works within 128-bit halves: put the four 64-bit quarters back in order */
        _mm256_storeu_si256((__m256i *)(q + j), _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xd8));
    }
    return peak / 32767.0f;
}

/* Per calling thread, reused: the int16 copy of x and its row scales. */
static __thread int16_t *xq_buffer;
static __thread float *xscale_buffer;
static __thread int64_t xq_capacity, xscale_capacity;

/* x: m x k fp32; w: n x k packed (n % ROWS == 0, k % LANES == 0, 32-byte aligned); out: m x n fp32.
 * Returns 0, or -1 when the scratch buffers cannot be allocated. */
int int8_matmul(const float *x, int64_t m, int64_t k, const int8_t *w, const float *scales, int64_t n,
                float *out, int threads) {
    if (m * k > xq_capacity) {
        free(xq_buffer);
        xq_buffer = aligned_alloc(32, (m * k * sizeof(int16_t) + 31) / 32 * 32);
        xq_capacity = xq_buffer ? m * k : 0;
    }
    if (m > xscale_capacity) {
        free(xscale_buffer);
        xscale_buffer = malloc(m * sizeof(float));
        xscale_capacity = xscale_buffer ? m : 0;
    }
    if (!xq_buffer || !xscale_buffer) return -1;
    int16_t *xq = xq_buffer;
    float *xscale = xscale_buffer;
    #pragma omp parallel num_threads(threads)
    {
        #pragma omp for schedule(static)
        for (int64_t i = 0; i < m; i++) xscale[i] = quantize_row(x + i * k, k, xq + i * k);
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < n; r += ROWS)
            for (int64_t i = 0; i < m; i += 2)
                block(xq + i * k, xscale + i, k, i + 1 < m, i == 0, w + r * k, scales + r, n, out + i * n + r);
    }
    return 0;
}

/* Decode attention, one query per stream, grouped heads (GROUP query heads share a key/value head), fp32.
 * torch runs it as two batched matmuls of (GROUP x d) by (d x kv_len) per stream and key/value head, and
 * spends most of its time on each small product's set-up: 11 ms of a 110 ms full-size step for one stream,
 * 34 of 177 for four, where reading the keys and values takes about 1 (2 AVX2 cores). */

/* x rotated by RoPE: x * cos + roll(x, d / 2) * sin, where sin carries rotate_half's sign (transformer.py). */
static inline void rotate(const float *x, const float *cos, const float *sin, int64_t d, float *out) {
    int64_t half = d / 2;
    for (int64_t j = 0; j < d; j++) out[j] = x[j] * cos[j] + x[(j + half) % d] * sin[j];
}

/* One decode step's scores from the fused q/k/v projection: qkv[b] holds stream b's heads queries, then its
 * kv_heads keys and values (d each). Its keys (rotated) and values are stored at slot pos[b] of the caches k
 * and v, then scores[b, h, l] = scale * rotated q[b, h, :] . k[b, h / group, l, :] for l < kv_len; d % 8 == 0,
 * d <= 1024. One (stream, key/value head) per task: it stores what its own scores then read. */
void attention_step(const float *qkv, const float *cos, const float *sin, const int64_t *pos, int64_t streams,
                    int64_t heads, int64_t group, int64_t d, float *k, float *v, int64_t k_stream, int64_t k_head,
                    int64_t v_stream, int64_t v_head, int64_t kv_len, float scale, float *scores, int threads) {
    int64_t kv_heads = heads / group, row = (heads + 2 * kv_heads) * d;
    #pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
    for (int64_t b = 0; b < streams; b++)
        for (int64_t kh = 0; kh < kv_heads; kh++) {
            const float *x = qkv + b * row, *c = cos + b * d, *s = sin + b * d;
            float *keys = k + b * k_stream + kh * k_head;
            rotate(x + (heads + kh) * d, c, s, d, keys + pos[b] * d);
            memcpy(v + b * v_stream + kh * v_head + pos[b] * d, x + (heads + kv_heads + kh) * d, d * sizeof(float));
            float q[1024];
            for (int64_t g = 0; g < group; g++) {
                rotate(x + (kh * group + g) * d, c, s, d, q);
                float *out = scores + (b * heads + kh * group + g) * kv_len;
                for (int64_t l = 0; l < kv_len; l++) {
                    const float *key = keys + l * d;
                    __m256 acc = _mm256_setzero_ps();
                    for (int64_t j = 0; j < d; j += 8)
                        acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + j), _mm256_loadu_ps(key + j), acc);
                    out[l] = hsum(acc) * scale;
                }
            }
        }
}

/* out[b, h, :] = sum over l < kv_len of probs[b, h, l] * v[b, h / group, l, :]; d % 8 == 0. */
void attention_values(const float *probs, int64_t streams, int64_t heads, int64_t group, int64_t d,
                      const float *v, int64_t v_stream, int64_t v_head, int64_t kv_len, float *out, int threads) {
    int64_t kv_heads = heads / group;
    #pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
    for (int64_t b = 0; b < streams; b++)
        for (int64_t kh = 0; kh < kv_heads; kh++) {
            const float *values = v + b * v_stream + kh * v_head;
            for (int64_t g = 0; g < group; g++) {
                const float *p = probs + (b * heads + kh * group + g) * kv_len;
                float *o = out + (b * heads + kh * group + g) * d;
                int64_t j = 0;
                for (; j + 32 <= d; j += 32) {
                    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
                    for (int64_t l = 0; l < kv_len; l++) {
                        const float *row = values + l * d + j;
                        __m256 w = _mm256_broadcast_ss(p + l);
                        a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(row), a0);
                        a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(row + 8), a1);
                        a2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(row + 16), a2);
                        a3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(row + 24), a3);
                    }
                    _mm256_storeu_ps(o + j, a0); _mm256_storeu_ps(o + j + 8, a1);
                    _mm256_storeu_ps(o + j + 16, a2); _mm256_storeu_ps(o + j + 24, a3);
                }
                for (; j < d; j += 8) {
                    __m256 a = _mm256_setzero_ps();
                    for (int64_t l = 0; l < kv_len; l++)
                        a = _mm256_fmadd_ps(_mm256_broadcast_ss(p + l), _mm256_loadu_ps(values + l * d + j), a);
                    _mm256_storeu_ps(o + j, a);
                }
            }
        }
}
