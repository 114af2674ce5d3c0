/*
 * SHA-512 for pyverity.hashing._accel: eight messages at once with AVX-512, one message per
 * 64-bit lane of each zmm register (the SHA-256 path in _accel.c does the same with sixteen
 * 32-bit lanes). hashlib hashes one block at a time; SHA-512 has no instruction of its own on
 * the x86 CPUs this runs on, so its rounds are a long serial chain of scalar operations, and
 * eight independent chains in vector lanes go several times faster per core.
 *
 * Written from FIPS 180-4: the constants (§4.2.3, §5.3.5, generated from the cube and square
 * roots of the first primes with integer arithmetic), the functions (§4.1.3), padding (§5.1.2)
 * and the computation (§6.4.2). The caller (_accel.c) checks that the CPU and the OS support
 * AVX-512 F and BW before calling pv_sha512_x8; this file only holds code compiled for it.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define SHA512_DIGEST 64
#define SHA512_BLOCK 128
#define LANES 8

static const uint64_t K512[80] = {
    0x428a2f98d728ae22ULL, 0x7137449123ef65cdULL, 0xb5c0fbcfec4d3b2fULL, 0xe9b5dba58189dbbcULL,
    0x3956c25bf348b538ULL, 0x59f111f1b605d019ULL, 0x923f82a4af194f9bULL, 0xab1c5ed5da6d8118ULL,
    0xd807aa98a3030242ULL, 0x12835b0145706fbeULL, 0x243185be4ee4b28cULL, 0x550c7dc3d5ffb4e2ULL,
    0x72be5d74f27b896fULL, 0x80deb1fe3b1696b1ULL, 0x9bdc06a725c71235ULL, 0xc19bf174cf692694ULL,
    0xe49b69c19ef14ad2ULL, 0xefbe4786384f25e3ULL, 0x0fc19dc68b8cd5b5ULL, 0x240ca1cc77ac9c65ULL,
    0x2de92c6f592b0275ULL, 0x4a7484aa6ea6e483ULL, 0x5cb0a9dcbd41fbd4ULL, 0x76f988da831153b5ULL,
    0x983e5152ee66dfabULL, 0xa831c66d2db43210ULL, 0xb00327c898fb213fULL, 0xbf597fc7beef0ee4ULL,
    0xc6e00bf33da88fc2ULL, 0xd5a79147930aa725ULL, 0x06ca6351e003826fULL, 0x142929670a0e6e70ULL,
    0x27b70a8546d22ffcULL, 0x2e1b21385c26c926ULL, 0x4d2c6dfc5ac42aedULL, 0x53380d139d95b3dfULL,
    0x650a73548baf63deULL, 0x766a0abb3c77b2a8ULL, 0x81c2c92e47edaee6ULL, 0x92722c851482353bULL,
    0xa2bfe8a14cf10364ULL, 0xa81a664bbc423001ULL, 0xc24b8b70d0f89791ULL, 0xc76c51a30654be30ULL,
    0xd192e819d6ef5218ULL, 0xd69906245565a910ULL, 0xf40e35855771202aULL, 0x106aa07032bbd1b8ULL,
    0x19a4c116b8d2d0c8ULL, 0x1e376c085141ab53ULL, 0x2748774cdf8eeb99ULL, 0x34b0bcb5e19b48a8ULL,
    0x391c0cb3c5c95a63ULL, 0x4ed8aa4ae3418acbULL, 0x5b9cca4f7763e373ULL, 0x682e6ff3d6b2b8a3ULL,
    0x748f82ee5defb2fcULL, 0x78a5636f43172f60ULL, 0x84c87814a1f0ab72ULL, 0x8cc702081a6439ecULL,
    0x90befffa23631e28ULL, 0xa4506cebde82bde9ULL, 0xbef9a3f7b2c67915ULL, 0xc67178f2e372532bULL,
    0xca273eceea26619cULL, 0xd186b8c721c0c207ULL, 0xeada7dd6cde0eb1eULL, 0xf57d4f7fee6ed178ULL,
    0x06f067aa72176fbaULL, 0x0a637dc5a2c898a6ULL, 0x113f9804bef90daeULL, 0x1b710b35131c471bULL,
    0x28db77f523047d84ULL, 0x32caab7b40c72493ULL, 0x3c9ebe0a15c9bebcULL, 0x431d67c49c100d4cULL,
    0x4cc5d4becb3e42b6ULL, 0x597f299cfc657e2aULL, 0x5fcb6fab3ad6faecULL, 0x6c44198c4a475817ULL,
};

static const uint64_t H512[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

#define AVX512 __attribute__((target("avx512f,avx512bw")))
#define ALWAYS_INLINE inline __attribute__((always_inline))
#define ROR _mm512_ror_epi64
#define SHR _mm512_srli_epi64
#define ADD _mm512_add_epi64
#define XOR3(x, y, z) _mm512_ternarylogic_epi64((x), (y), (z), 0x96)
#define CH(x, y, z) _mm512_ternarylogic_epi64((x), (y), (z), 0xCA)  /* x ? y : z */
#define MAJ(x, y, z) _mm512_ternarylogic_epi64((x), (y), (z), 0xE8) /* majority */

AVX512 static inline __m512i bswap64_mask(void)
{
    /* Reverse the bytes of each 64-bit lane: message words are big-endian. */
    return _mm512_broadcast_i32x4(
        _mm_set_epi8(8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
}

/* Eight rows of eight 64-bit words (r[i] = words of message i) into columns (w[j] = word j of
 * every message, message i in lane i). In each 128-bit lane q, t[2k] and t[2k+1] pair rows 2k
 * and 2k+1 (words 2q and 2q+1); then the 128-bit lanes are regrouped (a 4x4 lane transpose). */
AVX512 static ALWAYS_INLINE void transpose8(__m512i w[8], const __m512i r[8])
{
    __m512i t[8];
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) {
        t[2 * k] = _mm512_unpacklo_epi64(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_epi64(r[2 * k], r[2 * k + 1]);
    }
#pragma GCC unroll 2
    for (int p = 0; p < 2; p++) {
        /* 0x44: lanes 0,1 of each source; 0xEE: lanes 2,3; 0x88: lanes 0,2; 0xDD: 1,3. */
        __m512i a = _mm512_shuffle_i64x2(t[p], t[2 + p], 0x44);
        __m512i b = _mm512_shuffle_i64x2(t[4 + p], t[6 + p], 0x44);
        __m512i c = _mm512_shuffle_i64x2(t[p], t[2 + p], 0xEE);
        __m512i d = _mm512_shuffle_i64x2(t[4 + p], t[6 + p], 0xEE);
        w[p] = _mm512_shuffle_i64x2(a, b, 0x88);
        w[2 + p] = _mm512_shuffle_i64x2(a, b, 0xDD);
        w[4 + p] = _mm512_shuffle_i64x2(c, d, 0x88);
        w[6 + p] = _mm512_shuffle_i64x2(c, d, 0xDD);
    }
}

/* w[t] = big-endian word t of the block at p[l], in lane l; p == NULL: the block at one for
 * every lane (the salt or the padding). */
AVX512 static ALWAYS_INLINE void load_words8(__m512i w[16], const uint8_t *const *p,
                                             const uint8_t *one)
{
    if (!p) {
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) {
            uint64_t x;
            memcpy(&x, one + 8 * i, 8);
            w[i] = _mm512_set1_epi64((long long)__builtin_bswap64(x));
        }
        return;
    }
    const __m512i mask = bswap64_mask();
    __m512i lo[8], hi[8];
#pragma GCC unroll 8
    for (int i = 0; i < LANES; i++) {
        lo[i] = _mm512_shuffle_epi8(_mm512_loadu_si512((const void *)p[i]), mask);
        hi[i] = _mm512_shuffle_epi8(_mm512_loadu_si512((const void *)(p[i] + 64)), mask);
    }
    transpose8(w, lo);
    transpose8(w + 8, hi);
}

/* nblk blocks of each message (at p[l], or the one block at one for all) into the states v. */
AVX512 static ALWAYS_INLINE void compress8(__m512i v[8], const uint8_t *const *p,
                                           const uint8_t *one, size_t nblk)
{
    const uint8_t *q[LANES];
    if (p)
        memcpy(q, p, sizeof(q));
    for (; nblk; nblk--) {
        __m512i w[16], x[8];
        load_words8(w, p ? q : NULL, one);
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++)
            x[i] = v[i];
        /* Round t: the working variables a..h are x[(0 - t) & 7] .. x[(7 - t) & 7]; grouped
         * as in the SHA-256 path, so that the chain from e to the new e is three operations
         * and from a to the new a four. */
#pragma GCC unroll 80
        for (int t = 0; t < 80; t++) {
            if (t >= 16) {
                __m512i w15 = w[(t - 15) & 15], w2 = w[(t - 2) & 15];
                __m512i s0 = XOR3(ROR(w15, 1), ROR(w15, 8), SHR(w15, 7));
                __m512i s1 = XOR3(ROR(w2, 19), ROR(w2, 61), SHR(w2, 6));
                w[t & 15] = ADD(ADD(w[t & 15], s0), ADD(w[(t - 7) & 15], s1));
            }
            __m512i a = x[(0 - t) & 7], b = x[(1 - t) & 7], c = x[(2 - t) & 7];
            __m512i d = x[(3 - t) & 7], e = x[(4 - t) & 7], f = x[(5 - t) & 7];
            __m512i g = x[(6 - t) & 7], h = x[(7 - t) & 7];
            __m512i wk = ADD(w[t & 15], _mm512_set1_epi64((long long)K512[t]));
            __m512i rest = ADD(CH(e, f, g), ADD(h, wk));
            __m512i s1 = XOR3(ROR(e, 14), ROR(e, 18), ROR(e, 41));
            __m512i t2 = ADD(XOR3(ROR(a, 28), ROR(a, 34), ROR(a, 39)), MAJ(a, b, c));
            x[(3 - t) & 7] = ADD(s1, ADD(rest, d)); /* the new e */
            x[(7 - t) & 7] = ADD(ADD(s1, rest), t2); /* the new a */
        }
        /* After 80 rounds (a multiple of 8) the variables are back in place. */
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++)
            v[i] = ADD(v[i], x[i]);
        if (p) {
#pragma GCC unroll 8
            for (int l = 0; l < LANES; l++)
                q[l] += SHA512_BLOCK;
        }
    }
}

/* Up to eight messages (blocks p[0..count) of bs bytes each, then the padding block) from the
 * start state; digest l to out + 64 l. Lanes count..7 hash p[0] again and are not written. */
AVX512 __attribute__((noinline)) static void hash_group8(const __m512i start[8],
                                                         const uint8_t *pad,
                                                         const uint8_t *const *p, size_t bs,
                                                         int count, uint8_t *out)
{
    __m512i v[8];
    uint64_t words[8][LANES] __attribute__((aligned(64)));
    for (int i = 0; i < 8; i++)
        v[i] = start[i];
    compress8(v, p, NULL, bs / SHA512_BLOCK);
    compress8(v, NULL, pad, 1);
    const __m512i mask = bswap64_mask();
    for (int i = 0; i < 8; i++)
        _mm512_store_si512((void *)words[i], _mm512_shuffle_epi8(v[i], mask));
    for (int l = 0; l < count; l++)
        for (int i = 0; i < 8; i++)
            memcpy(out + SHA512_DIGEST * l + 8 * i, &words[i][l], 8);
}

/* SHA-512(salt || block) of n blocks of bs bytes (a multiple of 128) at data, each digest to
 * out + 64 i; salt_len is a multiple of 128 (the padded salt). */
AVX512 void pv_sha512_x8(const uint8_t *salt, size_t salt_len, const uint8_t *data, size_t bs,
                         size_t n, uint8_t *out)
{
    __m512i start[8];
    for (int i = 0; i < 8; i++)
        start[i] = _mm512_set1_epi64((long long)H512[i]);
    for (size_t o = 0; o < salt_len; o += SHA512_BLOCK)
        compress8(start, NULL, salt + o, 1);
    /* FIPS 180-4 §5.1.2: 0x80, zeros, then the length in bits as 128 bits, big-endian. Every
     * message is salt_len + bs bytes, a multiple of 128, so one padding block serves all. */
    uint8_t pad[SHA512_BLOCK] = {0x80};
    uint64_t bits = ((uint64_t)salt_len + (uint64_t)bs) * 8u;
    for (int k = 0; k < 8; k++)
        pad[SHA512_BLOCK - 1 - k] = (uint8_t)(bits >> (8 * k));
    for (size_t i = 0; i < n; i += LANES) {
        const uint8_t *p[LANES];
        int count = n - i < LANES ? (int)(n - i) : LANES;
        for (int l = 0; l < LANES; l++)
            p[l] = data + (i + (size_t)(l < count ? l : 0)) * bs;
        hash_group8(start, pad, p, bs, count, out + i * SHA512_DIGEST);
    }
}

#else
void pv_sha512_x8(const uint8_t *salt, size_t salt_len, const uint8_t *data, size_t bs, size_t n,
                  uint8_t *out)
{
    (void)salt, (void)salt_len, (void)data, (void)bs, (void)n, (void)out;
}
#endif
