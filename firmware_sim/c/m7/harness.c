/* Runs the kernels of ../ec_kernels.c on the cases in a vector file and writes their
 * results, with the SysTick ticks each call took (semihosting file I/O).
 *
 *   harness IN OUT (paths fixed at build time: vectors.bin, results.bin in QEMU's folder)
 *
 * Record format (little-endian), repeated until kind 0:
 *   u32 kind: 1 conv_forward, 3 stochastic_round, 4 calibration,
 *             5 clapp_update (fused, in place)
 *   then the sizes and arrays in the order firmware_sim/qemu.py writes them.
 * Output per record: the result arrays, then u64 ticks.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "../ec_kernels.h"

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)

extern volatile uint32_t systick_wraps;

static FILE *in, *out;

static void fail(const char *what) {
    fprintf(stderr, "harness: %s\n", what);
    exit(3);
}

static void *take(size_t n) {
    void *p = malloc(n ? n : 1);
    if (p == NULL) fail("out of memory");
    if (n && fread(p, 1, n, in) != n) fail("vector file ends early");
    return p;
}

static int32_t take_i32(void) {
    int32_t v;
    if (fread(&v, 4, 1, in) != 1) fail("vector file ends early");
    return v;
}

static void give(const void *p, size_t n) {
    if (fwrite(p, 1, n, out) != n) fail("cannot write results");
}

static uint64_t now(void) {
    uint32_t w1, v, w2;
    do {
        w1 = systick_wraps;
        v = SYST_CVR;
        w2 = systick_wraps;
    } while (w1 != w2);
    return (uint64_t)w1 * 0x1000000u + (0xFFFFFFu - v);
}

static void ticks_since(uint64_t start) {
    uint64_t t = now() - start;
    give(&t, 8);
}

static void calibration(void) {
    int32_t n = take_i32();
    uint64_t start = now();
    /* n iterations of two instructions: subs, bne. */
    __asm__ volatile("1: subs %0, %0, #1\n bne 1b\n" : "+r"(n) : : "cc");
    ticks_since(start);
}

static void conv(void) {
    int32_t t_in = take_i32(), c_in = take_i32(), c_out = take_i32();
    int32_t kernel = take_i32(), stride = take_i32(), x_signed = take_i32();
    int32_t d = c_in * kernel, t_out = (t_in - kernel) / stride + 1;
    uint8_t *x = take((size_t)t_in * c_in);
    int8_t *w = take((size_t)c_out * d);
    int32_t *bias = take(4u * c_out), *m0 = take(4u * c_out), *sh = take(4u * c_out);
    uint8_t *y = take(0);
    y = realloc(y, (size_t)t_out * c_out);
    uint64_t start = now();
    ec_conv_forward(x, x_signed, t_in, c_in, w, bias, c_out, kernel, stride, m0, sh, y);
    uint64_t t = now() - start;
    give(y, (size_t)t_out * c_out);
    give(&t, 8);
    free(x), free(w), free(bias), free(m0), free(sh), free(y);
}

static void round_update(void) {
    int32_t n = take_i32(), row_len = take_i32(), rows = take_i32();
    uint64_t seed;
    if (fread(&seed, 8, 1, in) != 1) fail("vector file ends early");
    int64_t *acc = take(8u * n);
    int32_t *m0 = take(4u * rows), *sh = take(4u * rows);
    int64_t *delta = malloc(8u * n);
    if (delta == NULL) fail("out of memory");
    uint64_t start = now();
    ec_stochastic_round(acc, n, row_len, m0, sh, seed, delta);
    uint64_t t = now() - start;
    give(delta, 8u * n);
    give(&t, 8);
    free(acc), free(m0), free(sh), free(delta);
}

static uint64_t take_u64(void) {
    uint64_t v;
    if (fread(&v, 8, 1, in) != 1) fail("vector file ends early");
    return v;
}

static void update(void) {
    int32_t n = take_i32(), d = take_i32(), c = take_i32(), k = take_i32(), m = take_i32();
    int32_t x_signed = take_i32(), has_retro = take_i32(), bound = take_i32();
    uint8_t *x = take((size_t)n * d), *z = take((size_t)n * c);
    int8_t *w = take((size_t)c * d);
    int32_t *bias = take(4u * c);
    int8_t *pred = take((size_t)k * c * c);
    int8_t *retro = has_retro ? take((size_t)k * c * c) : NULL;
    int32_t *ctx = take(4u * k * m), *cand = take(4u * k * m);
    int8_t *label = take((size_t)k * m);
    uint8_t *valid = take((size_t)k * m);
    int64_t *thr = take(8u * k);
    int32_t *w_m0 = take(4u * c), *w_sh = take(4u * c), *b_m0 = take(4u * c);
    int32_t *b_sh = take(4u * c);
    int32_t p_m0 = take_i32(), p_sh = take_i32();
    uint64_t seed_w = take_u64(), seed_b = take_u64(), seed_p = take_u64(), seed_r = take_u64();
    int64_t *err = malloc(8u * n * c), *row = malloc(8u * (d > c ? d : c));
    int8_t *thirds = malloc(2u * k * m);
    if (!err || !row || !thirds) fail("out of memory");
    uint64_t start = now();
    int64_t open = ec_clapp_update(x, x_signed, n, d, z, c, w, bias, pred, retro, k, m, ctx,
                                   cand, label, valid, thr, w_m0, w_sh, b_m0, b_sh, p_m0, p_sh,
                                   seed_w, seed_b, seed_p, seed_r, bound, err, row, thirds);
    uint64_t t = now() - start;
    give(w, (size_t)c * d);
    give(bias, 4u * c);
    give(pred, (size_t)k * c * c);
    if (has_retro) give(retro, (size_t)k * c * c);
    give(&open, 8);
    give(&t, 8);
    free(x), free(z), free(w), free(bias), free(pred), free(retro), free(ctx), free(cand);
    free(label), free(valid), free(thr), free(w_m0), free(w_sh), free(b_m0), free(b_sh);
    free(err), free(row), free(thirds);
}

int main(void) {
    in = fopen("vectors.bin", "rb");
    out = fopen("results.bin", "wb");
    if (in == NULL || out == NULL) fail("cannot open vectors.bin / results.bin");
    SYST_RVR = 0xFFFFFFu;
    SYST_CVR = 0;
    SYST_CSR = 7u; /* enable, interrupt on wrap, processor clock */
    for (;;) {
        int32_t kind = take_i32();
        if (kind == 0) break;
        if (kind == 1) conv();
        else if (kind == 3) round_update();
        else if (kind == 4) calibration();
        else if (kind == 5) update();
        else fail("unknown record kind");
    }
    fclose(out);
    fclose(in);
    return 0;
}
