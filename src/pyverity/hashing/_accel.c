/*
 * pyverity.hashing._accel: an optional hot loop for fs-verity tree building.
 *
 * One function, sha256_blocks(data, block_size, padded_salt), hashes every block_size-byte
 * block of data as SHA-256(padded_salt || block) and returns the concatenated digests. It
 * uses the x86 SHA extensions (SHA-NI), hashing up to four blocks at once with their
 * instruction streams interleaved (Linux 6.18 does the same with two for fs-verity: the round
 * instruction has a long latency, so independent streams fill the pipeline), and the last
 * n % width blocks as one narrower group. The GIL is released while hashing.
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

/* The interleave width used when the caller does not choose one. CPU time per core on 4 KiB
 * blocks, AMD EPYC (Zen 5, family 0x1a), where sha256rnds2 issues every 2 cycles with a
 * latency of 4: 1 stream 2.1 GB/s, 2 streams 3.0, 3 streams 3.4, 4 streams 3.5 (the SHA unit's
 * ceiling there, one sha256rnds2 every 2 cycles, is about 4.2 GB/s). */
#define DEFAULT_WIDTH 4

/* Hash n blocks of bs bytes (a multiple of 64), each prefixed by the salt (a multiple of 64
 * bytes, absorbed once into a start state), width at a time, the last n % width blocks as one
 * narrower group. Every message is salt + bs bytes long, a multiple of 64, so its padding is
 * the one constant block pad. */
TARGET static void hash_run(const uint8_t *salt, size_t salt_len, const uint8_t *pad,
                            const uint8_t *data, size_t bs, size_t n, int width, uint8_t *out)
{
    ni_state start = state_from_words(H256);
    compress_w(1, &start, &salt, salt_len / SHA256_BLOCK);
    size_t w = (size_t)width, i = 0;
    for (; i + w <= n; i += w)
        GROUPS[w](start, pad, data + i * bs, bs, out + i * SHA256_DIGEST);
    if (i < n)
        GROUPS[n - i](start, pad, data + i * bs, bs, out + i * SHA256_DIGEST);
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
    if (width < 0 || width > 4) {
        PyErr_SetString(PyExc_ValueError, "width must be 0 (the default) or 1 to 4");
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
        hash_run(salt_bytes, salt_len, pad, src, (size_t)bs, n, width ? width : DEFAULT_WIDTH,
                 out);
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
     "sha256_blocks(data, block_size, padded_salt, width=0) -> bytes\n\n"
     "SHA-256(padded_salt + block) of every block_size-byte block of data, concatenated.\n"
     "block_size and len(padded_salt) must be multiples of 64; len(data) a multiple of\n"
     "block_size. width: how many blocks are hashed interleaved (1 to 4; 0, the default,\n"
     "picks the fastest). Releases the GIL while hashing."},
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
