/*
 * pyverity.hashing._accel: an optional hot loop for fs-verity tree building.
 *
 * One function, sha256_blocks(data, block_size, padded_salt), hashes every block_size-byte
 * block of data as SHA-256(padded_salt || block) and returns the concatenated digests. It
 * uses the x86 SHA extensions (SHA-NI), hashing up to four blocks at once with their
 * instruction streams interleaved (Linux 6.18 does the same with two for fs-verity: the round
 * instruction has a long latency, so independent streams fill the pipeline), and the last
 * n % width blocks as one narrower group. Where AVX-512 runs at full width (AMD Zen 5), it
 * hashes sixteen blocks at once instead, one per 32-bit lane, which is faster still; the last
 * n % 16 blocks go to SHA-NI. The GIL is released while hashing. Which width is fastest
 * depends on the CPU (on AMD Zen 4, two SHA-NI streams beat four and sixteen lanes): the
 * Python side (pyverity.hashing.widths) measures them and passes the best one explicitly.
 *
 * sha512_blocks does the same for SHA-512 with eight 64-bit AVX-512 lanes (_accel_sha512.c);
 * it needs AVX-512 F and BW (with the OS saving their state), not SHA-NI.
 *
 * Written from FIPS 180-4 (SHA-256: constants, padding, message schedule, the round function)
 * and Intel's description of the SHA extensions (sha256rnds2 works on the state split as ABEF
 * and CDGH, two rounds per instruction; sha256msg1/sha256msg2 compute the message schedule).
 *
 * The module is optional: it builds without SHA-NI support on other CPUs/compilers and then
 * reports available() == False; the Python side falls back to hashlib.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define PV_HAVE_SHANI 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define PV_HAVE_SHANI 0
#endif

#define SHA256_DIGEST 32
#define SHA256_BLOCK 64

#if PV_HAVE_SHANI

/* FIPS 180-4 §4.2.2: first 32 bits of the fractional parts of the cube roots of the first
 * 64 primes (generated and checked by computing integer cube roots). */
static const uint32_t K256[64] __attribute__((aligned(16))) = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

/* FIPS 180-4 §5.3.3: square roots of the first 8 primes. */
static const uint32_t H256[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

#define TARGET __attribute__((target("sha,sse4.1,ssse3")))

/* The state as the round instruction wants it: lanes (high to low) A,B,E,F and C,D,G,H. */
typedef struct {
    __m128i abef;
    __m128i cdgh;
} ni_state;

TARGET static inline __m128i bswap_mask(void)
{
    /* Reverse the bytes of each 32-bit lane: message words are big-endian. */
    return _mm_set_epi8(12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3);
}

TARGET static ni_state state_from_words(const uint32_t h[8])
{
    __m128i dcba = _mm_loadu_si128((const __m128i *)&h[0]); /* lanes 0..3 = A,B,C,D */
    __m128i hgfe = _mm_loadu_si128((const __m128i *)&h[4]); /* lanes 0..3 = E,F,G,H */
    __m128i badc = _mm_shuffle_epi32(dcba, 0xB1);           /* lanes 0..3 = B,A,D,C */
    __m128i efgh = _mm_shuffle_epi32(hgfe, 0x1B);           /* lanes 0..3 = H,G,F,E */
    ni_state s;
    s.abef = _mm_alignr_epi8(badc, efgh, 8);     /* lanes 0..3 = F,E,B,A */
    s.cdgh = _mm_blend_epi16(efgh, badc, 0xF0);  /* lanes 0..3 = H,G,D,C */
    return s;
}

TARGET static void state_to_digest(ni_state s, uint8_t *out)
{
    __m128i feba = _mm_shuffle_epi32(s.abef, 0x1B); /* lanes 0..3 = A,B,E,F */
    __m128i hgdc = _mm_shuffle_epi32(s.cdgh, 0xB1); /* lanes 0..3 = G,H,C,D */
    __m128i abcd = _mm_blend_epi16(feba, hgdc, 0xF0);
    __m128i efgh = _mm_alignr_epi8(hgdc, feba, 8);
    const __m128i mask = bswap_mask();
    _mm_storeu_si128((__m128i *)out, _mm_shuffle_epi8(abcd, mask));
    _mm_storeu_si128((__m128i *)(out + 16), _mm_shuffle_epi8(efgh, mask));
}

/* The next four message words: W[t] = s1(W[t-2]) + W[t-7] + s0(W[t-15]) + W[t-16] for four t,
 * from the previous sixteen held in four vectors (m0 oldest, m3 newest). */
#define NEXT_MSG(m0, m1, m2, m3)                                                          \
    _mm_sha256msg2_epu32(                                                                 \
        _mm_add_epi32(_mm_sha256msg1_epu32((m0), (m1)), _mm_alignr_epi8((m3), (m2), 4)), \
        (m3))

/* Widest interleave: four streams use 8 state and 16 message registers, more than the 16 xmm
 * registers the legacy-encoded SHA instructions can name, so a few values live in L1; still
 * the fastest on the machine this was measured on (see hash_run). */
#define MAX_WIDTH 4
#define ALWAYS_INLINE inline __attribute__((always_inline))

/* W independent messages of nblk 64-byte blocks each (W a constant after inlining, 1..4): the
 * message schedule is computed on the fly, four words ahead, in registers, and the streams'
 * instructions are interleaved so that one stream's round instructions run while the others
 * wait for their results (sha256rnds2 has a latency of several times its issue interval). */
TARGET static ALWAYS_INLINE void compress_w(const int W, ni_state *st, const uint8_t *const *b,
                                            size_t nblk)
{
    const __m128i mask = bswap_mask();
    ni_state s[MAX_WIDTH], saved[MAX_WIDTH];
    const uint8_t *p[MAX_WIDTH];
#pragma GCC unroll 4
    for (int l = 0; l < W; l++) {
        s[l] = st[l];
        p[l] = b[l];
    }
    for (; nblk; nblk--) {
        __m128i m[MAX_WIDTH][4];
#pragma GCC unroll 4
        for (int l = 0; l < W; l++)
            saved[l] = s[l];
#pragma GCC unroll 16
        for (int g = 0; g < 16; g++) {
            const __m128i k = _mm_load_si128((const __m128i *)&K256[4 * g]);
            __m128i wk[MAX_WIDTH];
#pragma GCC unroll 4
            for (int l = 0; l < W; l++) {
                if (g < 4)
                    m[l][g] = _mm_shuffle_epi8(
                        _mm_loadu_si128((const __m128i *)(p[l] + 16 * g)), mask);
                else
                    m[l][g & 3] = NEXT_MSG(m[l][g & 3], m[l][(g + 1) & 3], m[l][(g + 2) & 3],
                                           m[l][(g + 3) & 3]);
                wk[l] = _mm_add_epi32(m[l][g & 3], k);
            }
            /* Four rounds per stream: two sha256rnds2, the second on the upper half of the
             * message vector. After each instruction the roles of the two state registers
             * swap (the old ABEF is the new CDGH). */
#pragma GCC unroll 4
            for (int l = 0; l < W; l++)
                s[l].cdgh = _mm_sha256rnds2_epu32(s[l].cdgh, s[l].abef, wk[l]);
#pragma GCC unroll 4
            for (int l = 0; l < W; l++)
                s[l].abef = _mm_sha256rnds2_epu32(s[l].abef, s[l].cdgh,
                                                  _mm_shuffle_epi32(wk[l], 0x0E));
        }
#pragma GCC unroll 4
        for (int l = 0; l < W; l++) {
            s[l].abef = _mm_add_epi32(s[l].abef, saved[l].abef);
            s[l].cdgh = _mm_add_epi32(s[l].cdgh, saved[l].cdgh);
            p[l] += SHA256_BLOCK;
        }
    }
#pragma GCC unroll 4
    for (int l = 0; l < W; l++)
        st[l] = s[l];
}

/* W messages (blocks data[0..W) of bs bytes, then the shared padding block) from the salted
 * start state, each digest written to out. One instance per width, so that W is a constant. */
TARGET static ALWAYS_INLINE void hash_group(const int W, ni_state start, const uint8_t *pad,
                                            const uint8_t *data, size_t bs, uint8_t *out)
{
    ni_state s[MAX_WIDTH];
    const uint8_t *blk[MAX_WIDTH], *pads[MAX_WIDTH];
#pragma GCC unroll 4
    for (int l = 0; l < W; l++) {
        s[l] = start;
        blk[l] = data + (size_t)l * bs;
        pads[l] = pad;
    }
    compress_w(W, s, blk, bs / SHA256_BLOCK);
    compress_w(W, s, pads, 1);
#pragma GCC unroll 4
    for (int l = 0; l < W; l++)
        state_to_digest(s[l], out + (size_t)l * SHA256_DIGEST);
}

#define GROUP_FN(W)                                                                          \
    TARGET __attribute__((noinline)) static void hash_group##W(                              \
        ni_state start, const uint8_t *pad, const uint8_t *data, size_t bs, uint8_t *out)    \
    {                                                                                        \
        hash_group(W, start, pad, data, bs, out);                                            \
    }
GROUP_FN(1)
GROUP_FN(2)
GROUP_FN(3)
GROUP_FN(4)

typedef void (*group_fn)(ni_state, const uint8_t *, const uint8_t *, size_t, uint8_t *);
static group_fn const GROUPS[MAX_WIDTH + 1] = {NULL, hash_group1, hash_group2, hash_group3,
                                               hash_group4};

/* Sixteen messages at once with AVX-512: one message per 32-bit lane of each zmm register,
 * the rounds and the message schedule of FIPS 180-4 §6.2.2 written out with vector rotates,
 * three-input logic (vpternlogd) and adds. Each 64-byte block of the sixteen messages (at data,
 * data + stride, ...) is loaded as sixteen rows and transposed so that vector t holds word t of
 * every message; stride 0 means one block shared by all (the padding block). */
#define AVX512 __attribute__((target("avx512f,avx512bw")))
#define ROR _mm512_ror_epi32
#define ADD _mm512_add_epi32
#define XOR3(x, y, z) _mm512_ternarylogic_epi32((x), (y), (z), 0x96)
#define CH(x, y, z) _mm512_ternarylogic_epi32((x), (y), (z), 0xCA)  /* x ? y : z */
#define MAJ(x, y, z) _mm512_ternarylogic_epi32((x), (y), (z), 0xE8) /* majority */

AVX512 static inline __m512i bswap_mask512(void)
{
    return _mm512_broadcast_i32x4(
        _mm_set_epi8(12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3));
}

/* w[t] = big-endian word t of the block at data + l * stride, in lane l. */
AVX512 static ALWAYS_INLINE void load_words16(__m512i w[16], const uint8_t *data, size_t stride)
{
    const __m512i mask = bswap_mask512();
    __m512i r[16], t[16], u[16];
    if (!stride) {
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) {
            uint32_t x;
            memcpy(&x, data + 4 * i, 4);
            w[i] = _mm512_set1_epi32((int)__builtin_bswap32(x));
        }
        return;
    }
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) /* r[i] = message i's 16 words */
        r[i] = _mm512_shuffle_epi8(_mm512_loadu_si512((const void *)(data + i * stride)), mask);
    /* 16x16 transpose of 32-bit words. In each 128-bit lane q: t[2k], t[2k+1] interleave rows
     * 2k and 2k+1 (words 4q, 4q+1 and 4q+2, 4q+3); then u[4m+p] holds word 4q+p of rows
     * 4m..4m+3; finally the 128-bit lanes are regrouped (a 4x4 transpose of lanes). */
#pragma GCC unroll 8
    for (int k = 0; k < 8; k++) {
        t[2 * k] = _mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
    }
#pragma GCC unroll 4
    for (int m = 0; m < 4; m++) {
        u[4 * m] = _mm512_unpacklo_epi64(t[4 * m], t[4 * m + 2]);
        u[4 * m + 1] = _mm512_unpackhi_epi64(t[4 * m], t[4 * m + 2]);
        u[4 * m + 2] = _mm512_unpacklo_epi64(t[4 * m + 1], t[4 * m + 3]);
        u[4 * m + 3] = _mm512_unpackhi_epi64(t[4 * m + 1], t[4 * m + 3]);
    }
#pragma GCC unroll 4
    for (int p = 0; p < 4; p++) {
        /* 0x44: lanes 0,1 of each source; 0xEE: lanes 2,3; 0x88: lanes 0,2; 0xDD: 1,3. */
        __m512i lo01 = _mm512_shuffle_i32x4(u[p], u[4 + p], 0x44);
        __m512i hi01 = _mm512_shuffle_i32x4(u[8 + p], u[12 + p], 0x44);
        __m512i lo23 = _mm512_shuffle_i32x4(u[p], u[4 + p], 0xEE);
        __m512i hi23 = _mm512_shuffle_i32x4(u[8 + p], u[12 + p], 0xEE);
        w[p] = _mm512_shuffle_i32x4(lo01, hi01, 0x88);
        w[4 + p] = _mm512_shuffle_i32x4(lo01, hi01, 0xDD);
        w[8 + p] = _mm512_shuffle_i32x4(lo23, hi23, 0x88);
        w[12 + p] = _mm512_shuffle_i32x4(lo23, hi23, 0xDD);
    }
}

/* nblk blocks of each of the sixteen messages into the states v (word i of message l in lane
 * l of v[i]); inlined so that the padding call (stride 0) gets its own copy. */
AVX512 static ALWAYS_INLINE void compress16(__m512i v[8], const uint8_t *data, size_t stride,
                                            size_t nblk)
{
    for (; nblk; nblk--, data += SHA256_BLOCK) {
        __m512i w[16], x[8];
        load_words16(w, data, stride);
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++)
            x[i] = v[i];
        /* Round t: the working variables a..h are x[(0 - t) & 7] .. x[(7 - t) & 7], so that
         * only the two new values are written. */
#pragma GCC unroll 64
        for (int t = 0; t < 64; t++) {
            if (t >= 16) {
                __m512i w15 = w[(t - 15) & 15], w2 = w[(t - 2) & 15];
                __m512i s0 = XOR3(ROR(w15, 7), ROR(w15, 18), _mm512_srli_epi32(w15, 3));
                __m512i s1 = XOR3(ROR(w2, 17), ROR(w2, 19), _mm512_srli_epi32(w2, 10));
                w[t & 15] = ADD(ADD(w[t & 15], s0), ADD(w[(t - 7) & 15], s1));
            }
            __m512i a = x[(0 - t) & 7], b = x[(1 - t) & 7], c = x[(2 - t) & 7];
            __m512i d = x[(3 - t) & 7], e = x[(4 - t) & 7], f = x[(5 - t) & 7];
            __m512i g = x[(6 - t) & 7], h = x[(7 - t) & 7];
            /* T1 = h + S1(e) + Ch(e,f,g) + K[t] + W[t], T2 = S0(a) + Maj(a,b,c); new e = d + T1,
             * new a = T1 + T2. The sums are grouped so that the chain from e to the new e is
             * three operations (rotate, xor, add) and from a to the new a four: the loop is
             * bound by that latency (grouped as T1 first: 4.7 GB/s; like this: 5.7). */
            __m512i wk = ADD(w[t & 15], _mm512_set1_epi32((int)K256[t]));
            __m512i rest = ADD(CH(e, f, g), ADD(h, wk));
            __m512i s1 = XOR3(ROR(e, 6), ROR(e, 11), ROR(e, 25));
            __m512i t2 = ADD(XOR3(ROR(a, 2), ROR(a, 13), ROR(a, 22)), MAJ(a, b, c));
            x[(3 - t) & 7] = ADD(s1, ADD(rest, d)); /* the new e */
            x[(7 - t) & 7] = ADD(ADD(s1, rest), t2); /* the new a */
        }
        /* After 64 rounds (a multiple of 8) the variables are back in place. */
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++)
            v[i] = ADD(v[i], x[i]);
    }
}

/* Sixteen blocks of bs bytes at data from the start state h (salt absorbed), then the padding
 * block; digest l goes to out + 32 l. */
AVX512 static void hash_group16(const uint32_t h[8], const uint8_t *pad, const uint8_t *data,
                                size_t bs, uint8_t *out)
{
    __m512i v[8];
    uint32_t words[8][16] __attribute__((aligned(64)));
    for (int i = 0; i < 8; i++)
        v[i] = _mm512_set1_epi32((int)h[i]);
    compress16(v, data, bs, bs / SHA256_BLOCK);
    compress16(v, pad, 0, 1);
    const __m512i mask = bswap_mask512();
    for (int i = 0; i < 8; i++)
        _mm512_store_si512((void *)words[i], _mm512_shuffle_epi8(v[i], mask));
    for (int l = 0; l < 16; l++)
        for (int i = 0; i < 8; i++)
            memcpy(out + SHA256_DIGEST * l + 4 * i, &words[i][l], 4);
}

/* The path used when the caller does not choose one (width 0): a static guess from cpuid,
 * which pyverity.hashing.widths replaces by measuring every width. CPU time per core on 4 KiB
 * blocks, AMD EPYC (Zen 5, family 0x1a), where sha256rnds2 issues every 2 cycles with a
 * latency of 4: SHA-NI with 1 stream 2.1 GB/s, 2 streams 3.0, 3 streams 3.5, 4 streams 3.6
 * (the SHA unit's ceiling there, one sha256rnds2 every 2 cycles, is about 4.2 GB/s); AVX-512
 * with 16 lanes 5.4-5.7 GB/s (two sets of 16 interleaved, 32 blocks a group, gained about 8 %
 * in a standalone test, spilling registers: not kept). Zen 5 executes 512-bit operations at
 * full width; earlier AMD cores split them in two halves, and Intel cores were not measured,
 * so AVX-512 is the default only on AMD family 0x1a and later. */
#define AVX512_WIDTH 16
#define SHANI_WIDTH 4

/* Hash n blocks of bs bytes (a multiple of 64), each prefixed by the salt (a multiple of 64
 * bytes, absorbed once into a start state), width at a time (1-4: SHA-NI streams; 16: AVX-512
 * lanes), the last n % width blocks as narrower groups. Every message is salt + bs bytes long,
 * a multiple of 64, so its padding is the one constant block pad. */
TARGET static void hash_run(const uint8_t *salt, size_t salt_len, const uint8_t *pad,
                            const uint8_t *data, size_t bs, size_t n, int width, uint8_t *out)
{
    ni_state start = state_from_words(H256);
    compress_w(1, &start, &salt, salt_len / SHA256_BLOCK);
    size_t i = 0;
    if (width == AVX512_WIDTH) {
        uint8_t be[SHA256_DIGEST];
        uint32_t h[8];
        state_to_digest(start, be);
        for (int k = 0; k < 8; k++)
            h[k] = (uint32_t)be[4 * k] << 24 | (uint32_t)be[4 * k + 1] << 16 |
                   (uint32_t)be[4 * k + 2] << 8 | be[4 * k + 3];
        for (; i + AVX512_WIDTH <= n; i += AVX512_WIDTH)
            hash_group16(h, pad, data + i * bs, bs, out + i * SHA256_DIGEST);
        width = SHANI_WIDTH;
    }
    size_t w = (size_t)width;
    for (; i + w <= n; i += w)
        GROUPS[w](start, pad, data + i * bs, bs, out + i * SHA256_DIGEST);
    if (i < n)
        GROUPS[n - i](start, pad, data + i * bs, bs, out + i * SHA256_DIGEST);
}

/* XCR0 (the register state the OS saves) when the OS enabled XSAVE (OSXSAVE), else 0. XGETBV
 * is executed only when cpuid says OSXSAVE, so it cannot fault. */
static unsigned int os_xcr0(void)
{
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) /* OSXSAVE */
        return 0;
    unsigned int xlo, xhi;
    __asm__("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    return xlo;
}

/* AVX-512 F and BW, with the OS saving the SSE, AVX, opmask and zmm state (XCR0 bits 1, 2,
 * 5-7). */
static int cpu_has_avx512(void)
{
    unsigned int a, b, c, d;
    if ((os_xcr0() & 0xE6) != 0xE6 || __get_cpuid_max(0, NULL) < 7)
        return 0;
    __cpuid_count(7, 0, a, b, c, d);
    return ((b >> 16) & 1) && ((b >> 30) & 1);
}

/* What identifies this CPU model for the width calibration's cache: vendor, brand string,
 * family/model/stepping, the feature bits of leaves 1 and 7 and XCR0 (not the APIC id, which
 * differs between cores of one machine). */
static void cpu_signature(char *buf, size_t size)
{
    unsigned int a = 0, b = 0, c = 0, d = 0, r[12] = {0};
    unsigned int vendor[3] = {0}, f1[3] = {0}, f7[3] = {0};
    if (__get_cpuid(0, &a, &b, &c, &d)) {
        vendor[0] = b, vendor[1] = d, vendor[2] = c;
    }
    if (__get_cpuid(1, &a, &b, &c, &d)) {
        f1[0] = a, f1[1] = c, f1[2] = d;
    }
    if (__get_cpuid_max(0, NULL) >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        f7[0] = b, f7[1] = c, f7[2] = d;
    }
    if (__get_cpuid_max(0x80000000u, NULL) >= 0x80000004u)
        for (unsigned int i = 0; i < 3; i++)
            __get_cpuid(0x80000002u + i, &r[4 * i], &r[4 * i + 1], &r[4 * i + 2], &r[4 * i + 3]);
    char vend[13] = {0}, brand[49] = {0};
    memcpy(vend, vendor, 12);
    memcpy(brand, r, 48);
    for (int i = 0; i < 48; i++)
        if (brand[i] && (brand[i] < 0x20 || brand[i] > 0x7e || brand[i] == '|'))
            brand[i] = '?';
    snprintf(buf, size, "%s|%s|%08x|%08x.%08x|%08x.%08x.%08x|%08x", vend, brand, f1[0], f1[1],
             f1[2], f7[0], f7[1], f7[2], os_xcr0());
}

/* AMD family 0x1a (Zen 5) or later: 512-bit operations at full width. */
static int cpu_prefers_avx512(void)
{
    unsigned int a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d) || b != 0x68747541u) /* "Auth"enticAMD */
        return 0;
    __get_cpuid(1, &a, &b, &c, &d);
    unsigned int family = (a >> 8) & 0xF;
    if (family == 0xF)
        family += (a >> 20) & 0xFF;
    return family >= 0x1A;
}

static int cpu_has_shani(void)
{
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    if (!(c & (1u << 9)) || !(c & (1u << 19))) /* SSSE3, SSE4.1 */
        return 0;
    if (__get_cpuid_max(0, NULL) < 7)
        return 0;
    __cpuid_count(7, 0, a, b, c, d);
    return (b >> 29) & 1; /* SHA */
}

/* _accel_sha512.c, compiled for AVX-512; called only when cpu_has_avx512(). */
void pv_sha512_x8(const uint8_t *salt, size_t salt_len, const uint8_t *data, size_t bs, size_t n,
                  uint8_t *out);

#endif /* PV_HAVE_SHANI */

#define SHA512_DIGEST 64
#define SHA512_BLOCK 128
#define SHA512_WIDTH 8

static int have_shani = 0;
static int have_avx512 = 0;
static int default_width = 0;

static PyObject *accel_available(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(unused))
{
    return PyBool_FromLong(have_shani);
}

static PyObject *accel_widths(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(unused))
{
    if (!have_shani)
        return PyTuple_New(0);
    return have_avx512 ? Py_BuildValue("(iiiii)", 1, 2, 3, 4, 16)
                       : Py_BuildValue("(iiii)", 1, 2, 3, 4);
}

static PyObject *accel_sha512_widths(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(unused))
{
    return have_avx512 ? Py_BuildValue("(i)", SHA512_WIDTH) : PyTuple_New(0);
}

static PyObject *accel_cpu_signature(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(unused))
{
    char buf[256] = "";
#if PV_HAVE_SHANI
    cpu_signature(buf, sizeof(buf));
#endif
    return PyUnicode_FromString(buf);
}

static PyObject *accel_default_width(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(unused))
{
    return PyLong_FromLong(default_width);
}

static PyObject *accel_sha256_blocks(PyObject *Py_UNUSED(self), PyObject *args)
{
    Py_buffer data, salt;
    Py_ssize_t bs;
    int width = 0;
    if (!PyArg_ParseTuple(args, "y*ny*|i:sha256_blocks", &data, &bs, &salt, &width))
        return NULL;
    PyObject *result = NULL;
    if (!have_shani) {
        PyErr_SetString(PyExc_RuntimeError, "SHA-NI is not available on this CPU");
        goto done;
    }
    if (bs < SHA256_BLOCK || bs % SHA256_BLOCK || data.len % bs || salt.len % SHA256_BLOCK) {
        PyErr_SetString(PyExc_ValueError,
                        "block_size must be a multiple of 64 dividing len(data), and the "
                        "padded salt a multiple of 64 bytes");
        goto done;
    }
    if (width < 0 || (width > 4 && width != 16) || (width == 16 && !have_avx512)) {
        PyErr_SetString(PyExc_ValueError,
                        "width must be 0 (the default), 1 to 4, or 16 where AVX-512 is available");
        goto done;
    }
#if PV_HAVE_SHANI
    {
        size_t n = (size_t)(data.len / bs);
        result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n * SHA256_DIGEST));
        if (!result)
            goto done;
        uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
        const uint8_t *src = (const uint8_t *)data.buf;
        const uint8_t *salt_bytes = (const uint8_t *)salt.buf;
        size_t salt_len = (size_t)salt.len;
        /* FIPS 180-4 §5.1.1: 0x80, zeros, then the message length in bits, big-endian. */
        uint8_t pad[SHA256_BLOCK] = {0x80};
        uint64_t bits = ((uint64_t)salt_len + (uint64_t)bs) * 8u;
        for (int k = 0; k < 8; k++)
            pad[SHA256_BLOCK - 1 - k] = (uint8_t)(bits >> (8 * k));
        Py_BEGIN_ALLOW_THREADS
        hash_run(salt_bytes, salt_len, pad, src, (size_t)bs, n, width ? width : default_width,
                 out);
        Py_END_ALLOW_THREADS
    }
#endif
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&salt);
    return result;
}

static PyObject *accel_sha512_blocks(PyObject *Py_UNUSED(self), PyObject *args)
{
    Py_buffer data, salt;
    Py_ssize_t bs;
    int width = 0;
    if (!PyArg_ParseTuple(args, "y*ny*|i:sha512_blocks", &data, &bs, &salt, &width))
        return NULL;
    PyObject *result = NULL;
    if (!have_avx512) {
        PyErr_SetString(PyExc_RuntimeError, "AVX-512 is not available on this CPU");
        goto done;
    }
    if (bs < SHA512_BLOCK || bs % SHA512_BLOCK || data.len % bs || salt.len % SHA512_BLOCK) {
        PyErr_SetString(PyExc_ValueError,
                        "block_size must be a multiple of 128 dividing len(data), and the "
                        "padded salt a multiple of 128 bytes");
        goto done;
    }
    if (width != 0 && width != SHA512_WIDTH) {
        PyErr_SetString(PyExc_ValueError, "width must be 0 (the default) or 8");
        goto done;
    }
#if PV_HAVE_SHANI
    {
        size_t n = (size_t)(data.len / bs);
        result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n * SHA512_DIGEST));
        if (!result)
            goto done;
        uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
        const uint8_t *src = (const uint8_t *)data.buf;
        const uint8_t *salt_bytes = (const uint8_t *)salt.buf;
        size_t salt_len = (size_t)salt.len;
        Py_BEGIN_ALLOW_THREADS
        pv_sha512_x8(salt_bytes, salt_len, src, (size_t)bs, n, out);
        Py_END_ALLOW_THREADS
    }
#endif
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&salt);
    return result;
}

static PyMethodDef accel_methods[] = {
    {"available", accel_available, METH_NOARGS,
     "available() -> bool\n\nTrue when this CPU has the SHA extensions sha256_blocks needs."},
    {"widths", accel_widths, METH_NOARGS,
     "widths() -> tuple[int, ...]\n\nThe interleave widths sha256_blocks accepts here: 1 to 4\n"
     "(SHA-NI streams) and 16 (AVX-512 lanes) when the CPU and OS support AVX-512."},
    {"default_width", accel_default_width, METH_NOARGS,
     "default_width() -> int\n\nThe width sha256_blocks uses when given 0, a static guess: 16 on\n"
     "AMD Zen 5 and later with AVX-512, else 4 (pyverity.hashing.widths measures instead)."},
    {"sha512_widths", accel_sha512_widths, METH_NOARGS,
     "sha512_widths() -> tuple[int, ...]\n\nThe widths sha512_blocks accepts here: (8,) (AVX-512\n"
     "lanes) when the CPU and OS support AVX-512 F and BW, else () (sha512_blocks unusable)."},
    {"cpu_signature", accel_cpu_signature, METH_NOARGS,
     "cpu_signature() -> str\n\nThe CPU's vendor, brand, family/model/stepping, feature bits and\n"
     "XCR0, from cpuid (the key of the width calibration's cache)."},
    {"sha256_blocks", accel_sha256_blocks, METH_VARARGS,
     "sha256_blocks(data, block_size, padded_salt, width=0) -> bytes\n\n"
     "SHA-256(padded_salt + block) of every block_size-byte block of data, concatenated.\n"
     "block_size and len(padded_salt) must be multiples of 64; len(data) a multiple of\n"
     "block_size. width: how many blocks are hashed at once (see widths(); 0, the default,\n"
     "is default_width()). Releases the GIL while hashing."},
    {"sha512_blocks", accel_sha512_blocks, METH_VARARGS,
     "sha512_blocks(data, block_size, padded_salt, width=0) -> bytes\n\n"
     "SHA-512(padded_salt + block) of every block_size-byte block of data, concatenated, eight\n"
     "blocks at once in AVX-512 lanes. block_size and len(padded_salt) must be multiples of\n"
     "128; len(data) a multiple of block_size; width 0 or 8. Releases the GIL while hashing."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef accel_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pyverity.hashing._accel",
    .m_doc = "Optional SHA-NI/AVX-512 hot loop for fs-verity tree building (see "
             "pyverity.hashing.runhash).",
    .m_size = -1,
    .m_methods = accel_methods,
};

PyMODINIT_FUNC PyInit__accel(void)
{
#if PV_HAVE_SHANI
    have_shani = cpu_has_shani();
    have_avx512 = cpu_has_avx512();
    default_width = have_avx512 && cpu_prefers_avx512() ? AVX512_WIDTH : SHANI_WIDTH;
#endif
    return PyModule_Create(&accel_module);
}
