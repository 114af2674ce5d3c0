/*
 * pyverity.hashing._accel: an optional hot loop for fs-verity tree building.
 *
 * One function, sha256_blocks(data, block_size, padded_salt), hashes every block_size-byte
 * block of data as SHA-256(padded_salt || block) and returns the concatenated digests. It
 * uses the x86 SHA extensions (SHA-NI), hashing two blocks at once with their instruction
 * streams interleaved (the technique Linux 6.18 uses for fs-verity: the round instruction has
 * a long latency, so two independent streams fill the pipeline), and one block at a time for
 * an odd last block. The GIL is released while hashing.
 *
 * Written from FIPS 180-4 (SHA-256: constants, padding, message schedule) and Intel's
 * description of the SHA extensions (sha256rnds2 works on the state split as ABEF and CDGH,
 * two rounds per instruction; sha256msg1/sha256msg2 compute the message schedule).
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

/* Four rounds: two sha256rnds2, the second on the upper half of the message vector. After
 * each instruction the roles of the two state registers swap (the old ABEF is the new CDGH). */
#define FOUR_ROUNDS(s, m)                                               \
    do {                                                                \
        (s).cdgh = _mm_sha256rnds2_epu32((s).cdgh, (s).abef, (m));       \
        (s).abef = _mm_sha256rnds2_epu32((s).abef, (s).cdgh,             \
                                         _mm_shuffle_epi32((m), 0x0E)); \
    } while (0)

/* The next four message words: W[t] = s1(W[t-2]) + W[t-7] + s0(W[t-15]) + W[t-16] for four t,
 * from the previous sixteen held in four vectors (m0 oldest, m3 newest). */
#define NEXT_MSG(m0, m1, m2, m3)                                                          \
    _mm_sha256msg2_epu32(                                                                 \
        _mm_add_epi32(_mm_sha256msg1_epu32((m0), (m1)), _mm_alignr_epi8((m3), (m2), 4)), \
        (m3))

/* One message: the message schedule is computed on the fly, four words ahead, in registers. */
TARGET static void compress1(ni_state *st, const uint8_t *blk, size_t nblk)
{
    const __m128i mask = bswap_mask();
    ni_state s = *st;
    for (; nblk; nblk--, blk += SHA256_BLOCK) {
        ni_state saved = s;
        __m128i m[4];
#pragma GCC unroll 16
        for (int g = 0; g < 16; g++) {
            if (g < 4)
                m[g] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(blk + 16 * g)), mask);
            else
                m[g & 3] = NEXT_MSG(m[g & 3], m[(g + 1) & 3], m[(g + 2) & 3], m[(g + 3) & 3]);
            FOUR_ROUNDS(s, _mm_add_epi32(m[g & 3], _mm_load_si128((const __m128i *)&K256[4 * g])));
        }
        s.abef = _mm_add_epi32(s.abef, saved.abef);
        s.cdgh = _mm_add_epi32(s.cdgh, saved.cdgh);
    }
    *st = s;
}

/* Two independent messages of the same length, their instructions interleaved so that one
 * stream's round instructions run while the other's wait for their results. */
TARGET static void compress2(ni_state *st1, ni_state *st2, const uint8_t *b1, const uint8_t *b2,
                             size_t nblk)
{
    const __m128i mask = bswap_mask();
    ni_state s1 = *st1, s2 = *st2;
    for (; nblk; nblk--, b1 += SHA256_BLOCK, b2 += SHA256_BLOCK) {
        ni_state saved1 = s1, saved2 = s2;
        __m128i m1[4], m2[4];
#pragma GCC unroll 16
        for (int g = 0; g < 16; g++) {
            if (g < 4) {
                m1[g] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(b1 + 16 * g)), mask);
                m2[g] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(b2 + 16 * g)), mask);
            } else {
                m1[g & 3] = NEXT_MSG(m1[g & 3], m1[(g + 1) & 3], m1[(g + 2) & 3], m1[(g + 3) & 3]);
                m2[g & 3] = NEXT_MSG(m2[g & 3], m2[(g + 1) & 3], m2[(g + 2) & 3], m2[(g + 3) & 3]);
            }
            const __m128i k = _mm_load_si128((const __m128i *)&K256[4 * g]);
            __m128i wk1 = _mm_add_epi32(m1[g & 3], k);
            __m128i wk2 = _mm_add_epi32(m2[g & 3], k);
            s1.cdgh = _mm_sha256rnds2_epu32(s1.cdgh, s1.abef, wk1);
            s2.cdgh = _mm_sha256rnds2_epu32(s2.cdgh, s2.abef, wk2);
            s1.abef = _mm_sha256rnds2_epu32(s1.abef, s1.cdgh, _mm_shuffle_epi32(wk1, 0x0E));
            s2.abef = _mm_sha256rnds2_epu32(s2.abef, s2.cdgh, _mm_shuffle_epi32(wk2, 0x0E));
        }
        s1.abef = _mm_add_epi32(s1.abef, saved1.abef);
        s1.cdgh = _mm_add_epi32(s1.cdgh, saved1.cdgh);
        s2.abef = _mm_add_epi32(s2.abef, saved2.abef);
        s2.cdgh = _mm_add_epi32(s2.cdgh, saved2.cdgh);
    }
    *st1 = s1;
    *st2 = s2;
}

/* Hash n blocks of bs bytes (a multiple of 64) from the salted start state. Every message is
 * salt + bs bytes long, a multiple of 64, so its padding is the one constant block pad. */
TARGET static void hash_run(ni_state start, const uint8_t *pad, const uint8_t *data, size_t bs,
                            size_t n, uint8_t *out)
{
    size_t nblk = bs / SHA256_BLOCK;
    size_t i = 0;
    for (; i + 2 <= n; i += 2) {
        ni_state s1 = start, s2 = start;
        compress2(&s1, &s2, data + i * bs, data + (i + 1) * bs, nblk);
        compress2(&s1, &s2, pad, pad, 1);
        state_to_digest(s1, out + i * SHA256_DIGEST);
        state_to_digest(s2, out + (i + 1) * SHA256_DIGEST);
    }
    if (i < n) {
        ni_state s = start;
        compress1(&s, data + i * bs, nblk);
        compress1(&s, pad, 1);
        state_to_digest(s, out + i * SHA256_DIGEST);
    }
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

#endif /* PV_HAVE_SHANI */

static int have_shani = 0;

static PyObject *accel_available(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyBool_FromLong(have_shani);
}

static PyObject *accel_sha256_blocks(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer data, salt;
    Py_ssize_t bs;
    if (!PyArg_ParseTuple(args, "y*ny*:sha256_blocks", &data, &bs, &salt))
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
        ni_state start = state_from_words(H256);
        compress1(&start, salt_bytes, salt_len / SHA256_BLOCK);
        hash_run(start, pad, src, (size_t)bs, n, out);
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
    {"sha256_blocks", accel_sha256_blocks, METH_VARARGS,
     "sha256_blocks(data, block_size, padded_salt) -> bytes\n\n"
     "SHA-256(padded_salt + block) of every block_size-byte block of data, concatenated.\n"
     "block_size and len(padded_salt) must be multiples of 64; len(data) a multiple of\n"
     "block_size. Releases the GIL while hashing."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef accel_module = {
    PyModuleDef_HEAD_INIT,
    "pyverity.hashing._accel",
    "Optional SHA-NI hot loop for fs-verity tree building (see pyverity.hashing.runhash).",
    -1,
    accel_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__accel(void)
{
#if PV_HAVE_SHANI
    have_shani = cpu_has_shani();
#endif
    return PyModule_Create(&accel_module);
}
