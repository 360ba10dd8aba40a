/* edge_clapp integer kernels; see ec_kernels.h. C99, no allocation, no floating point. */
#include "ec_kernels.h"

#include <stddef.h>

#define EC_INT32_MAX 2147483647LL
#define EC_UPDATE_ACC_MAX ((1LL << 40) - 1)
#define EC_BIAS_LIMIT (1LL << 30)

/* floor(v / 2^s) for 0 <= s < 63, without relying on >> of a negative value. */
static int64_t floor_shift(int64_t v, int32_t s) {
    if (v >= 0) return v >> s;
    return -(((-(v + 1)) >> s)) - 1;
}

static int64_t clamp64(int64_t v, int64_t lo, int64_t hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

int64_t ec_requantize(int64_t acc, int32_t m0, int32_t sh, int64_t lo, int64_t hi) {
    acc = clamp64(acc, -EC_INT32_MAX, EC_INT32_MAX);
    int64_t v = floor_shift(acc * (int64_t)m0 + (1LL << (sh - 1)), sh);
    return clamp64(v, lo, hi);
}

uint32_t ec_counter_hash(uint64_t counter) {
    return ec_hash32((uint32_t)counter ^ ec_hash32((uint32_t)(counter >> 32)));
}

uint32_t ec_hash32(uint32_t x) {
    x *= 0x9E3779B9u;
    x ^= x >> 16;
    x *= 0x85EBCA6Bu;
    x ^= x >> 13;
    x *= 0xC2B2AE35u;
    x ^= x >> 16;
    return x;
}

/* One variant per input code type: the sign test stays out of the inner loop, and the
 * loops run over the kernel taps, then the contiguous input channels of one position. */
#define EC_CONV_BODY(T)                                                                     \
    for (int32_t t = 0; t < t_out; t++) {                                                   \
        for (int32_t co = 0; co < c_out; co++) {                                            \
            int64_t acc = bias[co];                                                         \
            const int8_t *wr = w + (size_t)co * d;                                          \
            for (int32_t j = 0; j < kernel; j++) {                                          \
                const T *xr = (const T *)x + (size_t)(t * stride + j) * c_in;               \
                const int8_t *wj = wr + j;                                                  \
                for (int32_t ci = 0; ci < c_in; ci++)                                       \
                    acc += (int32_t)xr[ci] * (int32_t)wj[ci * kernel];                      \
            }                                                                               \
            out[(size_t)t * c_out + co] = (uint8_t)ec_requantize(acc, m0[co], sh[co], 0, 255); \
        }                                                                                   \
    }

int32_t ec_conv_forward(const uint8_t *x, int32_t x_signed, int32_t t_in, int32_t c_in,
                        const int8_t *w, const int32_t *bias, int32_t c_out, int32_t kernel,
                        int32_t stride, const int32_t *m0, const int32_t *sh, uint8_t *out) {
    int32_t t_out = (t_in - kernel) / stride + 1;
    int32_t d = c_in * kernel;
    if (x_signed) {
        EC_CONV_BODY(int8_t)
    } else {
        EC_CONV_BODY(uint8_t)
    }
    return t_out;
}

void ec_stochastic_round(const int64_t *acc, int64_t n, int64_t row_len, const int32_t *m0,
                         const int32_t *sh, uint64_t seed, int64_t *delta) {
    for (int64_t i = 0; i < n; i++) {
        int64_t r = i / row_len;
        int64_t a = clamp64(acc[i], -EC_UPDATE_ACC_MAX, EC_UPDATE_ACC_MAX);
        int64_t product = a * (int64_t)m0[r];
        int32_t pre = sh[r] > 32 ? sh[r] - 32 : 0;
        int32_t bits = sh[r] - pre;
        product = floor_shift(product, pre);
        uint64_t draw = ec_counter_hash(seed + (uint64_t)i);
        int64_t noise = (int64_t)(bits == 32 ? draw : (draw & ((1ULL << bits) - 1)));
        delta[i] = floor_shift(product + noise, bits);
    }
}

/* dot of frame a of z with row i of matrix m (c x c): sum_j m[i, j] * z[a, j]. */
static int64_t mat_row_dot(const int8_t *m, int32_t c, int32_t i, const uint8_t *za) {
    int64_t s = 0;
    for (int32_t j = 0; j < c; j++) s += (int64_t)m[(size_t)i * c + j] * za[j];
    return s;
}

/* column i of m (c x c) dotted with z frame: sum_j m[j, i] * z[a, j]. */
static int64_t mat_col_dot(const int8_t *m, int32_t c, int32_t i, const uint8_t *za) {
    int64_t s = 0;
    for (int32_t j = 0; j < c; j++) s += (int64_t)m[(size_t)j * c + i] * za[j];
    return s;
}

/* delta = stochastic_round(acc) for one element with counter `counter`. */
static int64_t round_one(int64_t acc, int32_t m0, int32_t sh, uint64_t counter) {
    int64_t a = clamp64(acc, -EC_UPDATE_ACC_MAX, EC_UPDATE_ACC_MAX);
    int32_t pre = sh > 32 ? sh - 32 : 0;
    int32_t bits = sh - pre;
    int64_t product = floor_shift(a * (int64_t)m0, pre);
    uint64_t draw = ec_counter_hash(counter);
    int64_t noise = (int64_t)(bits == 32 ? draw : (draw & ((1ULL << bits) - 1)));
    return floor_shift(product + noise, bits);
}

/* One hinge branch of a pair: row = m a (the dendrite), score = b . row; returns the
 * signed gate y * [y * score < threshold] * valid and counts an open gate of a valid pair. */
static int64_t hinge_branch(const int8_t *m, int32_t c, const uint8_t *a, const uint8_t *b,
                            int64_t y, int64_t v, int64_t threshold, int64_t *row,
                            int64_t *open) {
    int64_t score = 0;
    for (int32_t i = 0; i < c; i++) {
        row[i] = mat_row_dot(m, c, i, a);
        score += (int64_t)b[i] * row[i];
    }
    int64_t gate = y * score < threshold ? 1 : 0;
    *open += gate * v;
    return y * gate * v;
}

int64_t ec_clapp_update(const uint8_t *x_rows, int32_t x_signed, int32_t n_frames, int32_t d,
                        const uint8_t *z, int32_t c, int8_t *w, int32_t *bias, int8_t *pred,
                        int8_t *retro, int32_t k_offsets, int32_t m_pairs,
                        const int32_t *context, const int32_t *candidate, const int8_t *label,
                        const uint8_t *valid, const int64_t *threshold, const int32_t *w_m0,
                        const int32_t *w_sh, const int32_t *b_m0, const int32_t *b_sh,
                        int32_t p_m0, int32_t p_sh, uint64_t seed_w, uint64_t seed_b,
                        uint64_t seed_p, uint64_t seed_r, int32_t weight_bound, int64_t *err,
                        int64_t *row, int8_t *thirds) {
    int64_t open = 0;
    size_t cc = (size_t)c * c, km_total = (size_t)k_offsets * m_pairs;
    int8_t *third_p = thirds, *third_r = thirds + km_total;
    for (size_t i = 0; i < (size_t)n_frames * c; i++) err[i] = 0;

    /* 1. Scores, gates and the errors of every frame (P and R still as they were);
     * `row` holds one pair's dendrite (P_k c or R_k z') meanwhile. */
    for (int32_t k = 0; k < k_offsets; k++) {
        const int8_t *p = pred + (size_t)k * cc;
        const int8_t *r = retro != NULL ? retro + (size_t)k * cc : NULL;
        for (int32_t m = 0; m < m_pairs; m++) {
            size_t km = (size_t)k * m_pairs + m;
            const uint8_t *ctx = z + (size_t)context[km] * c;
            const uint8_t *cand = z + (size_t)candidate[km] * c;
            int64_t y = label[km], v = valid[km];
            int64_t t = hinge_branch(p, c, ctx, cand, y, v, threshold[k], row, &open);
            third_p[km] = (int8_t)t;
            if (t != 0) {
                int64_t *e = err + (size_t)candidate[km] * c;
                for (int32_t i = 0; i < c; i++) e[i] += t * row[i];
            }
            third_r[km] = 0;
            if (r == NULL) {
                if (t != 0) {
                    int64_t *e = err + (size_t)context[km] * c;
                    for (int32_t i = 0; i < c; i++) e[i] += t * mat_col_dot(p, c, i, cand);
                }
                continue;
            }
            int64_t tr = hinge_branch(r, c, cand, ctx, y, v, threshold[k], row, &open);
            third_r[km] = (int8_t)tr;
            if (tr != 0) {
                int64_t *e = err + (size_t)context[km] * c;
                for (int32_t i = 0; i < c; i++) e[i] += tr * row[i];
            }
        }
    }
    for (size_t i = 0; i < (size_t)n_frames * c; i++)
        if (z[i] == 0) err[i] = 0; /* relu' */

    /* 2. Weights and bias, one output channel at a time: row[q] = sum_n err[n, i] x[n, q]. */
    for (int32_t i = 0; i < c; i++) {
        for (int32_t q = 0; q < d; q++) row[q] = 0;
        for (int32_t n = 0; n < n_frames; n++) {
            int64_t e = err[(size_t)n * c + i];
            if (e == 0) continue;
            const uint8_t *xr = x_rows + (size_t)n * d;
            if (x_signed) {
                for (int32_t q = 0; q < d; q++) row[q] += e * (int8_t)xr[q];
            } else {
                for (int32_t q = 0; q < d; q++) row[q] += e * xr[q];
            }
        }
        for (int32_t q = 0; q < d; q++) {
            size_t at = (size_t)i * d + q;
            int64_t nw = w[at] + round_one(row[q], w_m0[i], w_sh[i], seed_w + at);
            w[at] = (int8_t)clamp64(nw, -weight_bound, weight_bound);
        }
    }
    for (int32_t i = 0; i < c; i++) {
        int64_t s = 0;
        for (int32_t n = 0; n < n_frames; n++) s += err[(size_t)n * c + i];
        int64_t nb = bias[i] + round_one(s, b_m0[i], b_sh[i], seed_b + (uint64_t)i);
        bias[i] = (int32_t)clamp64(nb, -EC_BIAS_LIMIT, EC_BIAS_LIMIT);
    }

    /* 3. Prediction and retrodiction matrices, one row at a time. */
    for (int32_t which = 0; which < (retro != NULL ? 2 : 1); which++) {
        int8_t *mat = which == 0 ? pred : retro;
        const int8_t *third = which == 0 ? third_p : third_r;
        uint64_t seed = which == 0 ? seed_p : seed_r;
        for (int32_t k = 0; k < k_offsets; k++) {
            for (int32_t i = 0; i < c; i++) {
                for (int32_t j = 0; j < c; j++) row[j] = 0;
                for (int32_t m = 0; m < m_pairs; m++) {
                    size_t km = (size_t)k * m_pairs + m;
                    int64_t t = third[km];
                    if (t == 0) continue;
                    const uint8_t *ctx = z + (size_t)context[km] * c;
                    const uint8_t *cand = z + (size_t)candidate[km] * c;
                    /* P: candidate x context; R: context x candidate. */
                    const uint8_t *a = which == 0 ? cand : ctx, *b = which == 0 ? ctx : cand;
                    for (int32_t j = 0; j < c; j++) row[j] += t * a[i] * b[j];
                }
                for (int32_t j = 0; j < c; j++) {
                    size_t at = (size_t)k * cc + (size_t)i * c + j;
                    int64_t nv = mat[at] + round_one(row[j], p_m0, p_sh, seed + at);
                    mat[at] = (int8_t)clamp64(nv, -127, 127);
                }
            }
        }
    }
    return open;
}
