/* edge_clapp integer kernels: the device path of firmware_sim, in C99.
 *
 * Normative reference: firmware_sim/kernels.py (numpy). Every function here must give
 * the same integers, bit for bit (tests/test_firmware.py, on the host and under QEMU).
 * Codes are 8-bit: uint8 buffers, read as int8 where a `signed` flag says so.
 * Accumulators are int64; (m0, sh) is the multiplier m0 * 2^-sh, with 1 <= sh <= 62 and
 * 0 <= m0 < 2^31 (forward) or < 2^22 (updates): kernels.py checks these ranges, the C
 * assumes them (outside them a shift or a product overflows).
 */
#ifndef EC_KERNELS_H
#define EC_KERNELS_H

#include <stdint.h>

/* acc saturated to +-(2^31 - 1), then (acc * m0 + 2^(sh-1)) >> sh, saturated to [lo, hi]. */
int64_t ec_requantize(int64_t acc, int32_t m0, int32_t sh, int64_t lo, int64_t hi);

/* The counter times 0x9E3779B9, then murmur3's 32-bit finaliser. */
uint32_t ec_hash32(uint32_t counter);

/* The PRNG of the stochastic rounding: ec_hash32(low ^ ec_hash32(high)) of a 64-bit
 * counter. */
uint32_t ec_counter_hash(uint64_t counter);

/* out[t, c] = requantize(sum_i patch[t, i] * w[c, i] + bias[c]) in [0, 255], relu codes,
 * patch t = x[t * stride .. t * stride + kernel - 1, :] channel-major (i = ci * kernel + j).
 * x: t_in rows of c_in codes (int8 if x_signed, else uint8). Returns t_out. */
int32_t ec_conv_forward(const uint8_t *x, int32_t x_signed, int32_t t_in, int32_t c_in,
                        const int8_t *w, const int32_t *bias, int32_t c_out, int32_t kernel,
                        int32_t stride, const int32_t *m0, const int32_t *sh, uint8_t *out);

/* delta[i] = floor((acc[i] * m0[r] + r_i) / 2^sh[r]), r = i / row_len, r_i uniform in
 * [0, 2^sh) from ec_counter_hash(seed + i); for sh > 32 the product is first floored by
 * 2^(sh - 32) and r_i has 32 bits. acc saturates to +-(2^40 - 1). */
void ec_stochastic_round(const int64_t *acc, int64_t n, int64_t row_len, const int32_t *m0,
                         const int32_t *sh, uint64_t seed, int64_t *delta);

/* One whole CLAPP update of a layer in place, fused so that no full-size accumulator is
 * held: the pair errors (err, n_frames * c int64), then row by row the weight, bias,
 * prediction and retrodiction accumulators (row: max(d, c) int64), each stochastically
 * rounded (weight row r: w_m0[r], w_sh[r], counters seed_w + element; bias likewise;
 * P and R: p_m0, p_sh) and added with saturation (weights to +-weight_bound, P and R to
 * +-127, bias to +-2^30). thirds: 2 * k * m int8 scratch. Equals clapp_accumulate then
 * clapp_update in kernels.py (the scores, gates, errors and accumulators of the CLAPP
 * rule for one layer with one position per frame). Returns the number of open gates. */
int64_t ec_clapp_update(const uint8_t *x_rows, int32_t x_signed, int32_t n_frames, int32_t d,
                        const uint8_t *z, int32_t c, int8_t *w, int32_t *bias, int8_t *pred,
                        int8_t *retro, int32_t k_offsets, int32_t m_pairs,
                        const int32_t *context, const int32_t *candidate, const int8_t *label,
                        const uint8_t *valid, const int64_t *threshold, const int32_t *w_m0,
                        const int32_t *w_sh, const int32_t *b_m0, const int32_t *b_sh,
                        int32_t p_m0, int32_t p_sh, uint64_t seed_w, uint64_t seed_b,
                        uint64_t seed_p, uint64_t seed_r, int32_t weight_bound, int64_t *err,
                        int64_t *row, int8_t *thirds);

#endif
