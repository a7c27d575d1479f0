/*
 * Stage one's per-output work in C: the output check and each collector's random
 * sample and one-node threshold workflow.
 *
 * `agents/routing.py` has the same logic in Python and uses it when this module is
 * not built. Both must decide alike on every event: tests/test_stage_one_native.py
 * runs them side by side. The functions read the objects that orjson built from an
 * event, the same objects that the Python code reads.
 *
 * check_output(output) -> (status_code, source_key, version_id, input_id) | None
 *     The C twin of app.models.fast_output_fields.
 *
 * route_outputs(outputs, caller_user_id, plans) -> (counts, decisions) | None
 *     Returns None when an output fails check_output. The caller then routes the
 *     whole event in Python, which also writes the dead-letter reasons.
 *     Otherwise counts is (skipped_status, unwatched), and decisions has one
 *     entry per collector that the event concerns, in the order that the Python
 *     router visits them:
 *       (plan, matched, dropped_sample, dropped_rule, survivors) for a plan that
 *       C decides, where survivors are output indices;
 *       (plan, indices) for a plan that Python decides, with the indices of the
 *       outputs of its model.
 *     plans maps a model source key to a tuple of plans, whose fields are listed
 *     in routing.py's `_plan`.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define SUCCESS_CODE 10000
#define MAX_METADATA_DEPTH 64

/* ---- SHA-256 (FIPS 180-4) ------------------------------------------------ */

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1,
    0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
    0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
    0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
    0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_blocks_portable(uint32_t state[8], const unsigned char *data,
                                   size_t blocks) {
    for (; blocks > 0; blocks--, data += 64) {
        uint32_t w[64];
        for (int i = 0; i < 16; i++) {
            w[i] = ((uint32_t)data[4 * i] << 24) | ((uint32_t)data[4 * i + 1] << 16) |
                   ((uint32_t)data[4 * i + 2] << 8) | (uint32_t)data[4 * i + 3];
        }
        for (int i = 16; i < 64; i++) {
            uint32_t s0 = ROTR(w[i - 15], 7) ^ ROTR(w[i - 15], 18) ^ (w[i - 15] >> 3);
            uint32_t s1 = ROTR(w[i - 2], 17) ^ ROTR(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }

        uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
        uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
        for (int i = 0; i < 64; i++) {
            uint32_t t1 = h + (ROTR(e, 6) ^ ROTR(e, 11) ^ ROTR(e, 25)) +
                          ((e & f) ^ (~e & g)) + K256[i] + w[i];
            uint32_t t2 = (ROTR(a, 2) ^ ROTR(a, 13) ^ ROTR(a, 22)) +
                          ((a & b) ^ (a & c) ^ (b & c));
            h = g;
            g = f;
            f = e;
            e = d + t1;
            d = c;
            c = b;
            b = a;
            a = t1 + t2;
        }

        state[0] += a;
        state[1] += b;
        state[2] += c;
        state[3] += d;
        state[4] += e;
        state[5] += f;
        state[6] += g;
        state[7] += h;
    }
}

typedef void (*BlockFunction)(uint32_t state[8], const unsigned char *data,
                              size_t blocks);

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>

/* The same transform with the x86 SHA extensions, which process four rounds in
 * two instructions. The state is kept as the lanes ABEF and CDGH, the layout that
 * sha256rnds2 works on. */
__attribute__((target("sha,sse4.1,ssse3"))) static void sha256_blocks_x86(
    uint32_t state[8], const unsigned char *data, size_t blocks) {
    const __m128i byte_swap =
        _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i low = _mm_loadu_si128((const __m128i *)&state[0]);  /* D C B A */
    __m128i high = _mm_loadu_si128((const __m128i *)&state[4]); /* H G F E */
    low = _mm_shuffle_epi32(low, 0xB1);                          /* C D A B */
    high = _mm_shuffle_epi32(high, 0x1B);                        /* E F G H */
    __m128i abef = _mm_alignr_epi8(low, high, 8);
    __m128i cdgh = _mm_blend_epi16(high, low, 0xF0);

    for (; blocks > 0; blocks--, data += 64) {
        __m128i abef_start = abef, cdgh_start = cdgh;
        __m128i words[4];
        for (int i = 0; i < 16; i++) {
            __m128i *current = &words[i % 4];
            if (i < 4) {
                __m128i loaded = _mm_loadu_si128((const __m128i *)(data + 16 * i));
                *current = _mm_shuffle_epi8(loaded, byte_swap);
            } else {
                /* W[t..t+3] from W[t-16..t-13] (the slot being replaced),
                 * W[t-12..t-9], W[t-8..t-5] and W[t-4..t-1]. */
                __m128i sigma0 = _mm_sha256msg1_epu32(*current, words[(i + 1) % 4]);
                __m128i middle =
                    _mm_alignr_epi8(words[(i + 3) % 4], words[(i + 2) % 4], 4);
                *current = _mm_sha256msg2_epu32(_mm_add_epi32(sigma0, middle),
                                                words[(i + 3) % 4]);
            }
            __m128i round_input =
                _mm_add_epi32(*current, _mm_loadu_si128((const __m128i *)&K256[4 * i]));
            cdgh = _mm_sha256rnds2_epu32(cdgh, abef, round_input);
            round_input = _mm_shuffle_epi32(round_input, 0x0E);
            abef = _mm_sha256rnds2_epu32(abef, cdgh, round_input);
        }
        abef = _mm_add_epi32(abef, abef_start);
        cdgh = _mm_add_epi32(cdgh, cdgh_start);
    }

    __m128i feba = _mm_shuffle_epi32(abef, 0x1B);
    __m128i dchg = _mm_shuffle_epi32(cdgh, 0xB1);
    _mm_storeu_si128((__m128i *)&state[0], _mm_blend_epi16(feba, dchg, 0xF0));
    _mm_storeu_si128((__m128i *)&state[4], _mm_alignr_epi8(dchg, feba, 8));
}

static BlockFunction choose_blocks(void) {
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return sha256_blocks_portable;
    int sse41 = (ecx >> 19) & 1, ssse3 = (ecx >> 9) & 1;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return sha256_blocks_portable;
    int sha = (ebx >> 29) & 1;
    return sse41 && ssse3 && sha ? sha256_blocks_x86 : sha256_blocks_portable;
}
#else
static BlockFunction choose_blocks(void) { return sha256_blocks_portable; }
#endif

static BlockFunction sha256_blocks = sha256_blocks_portable;

/* Writes the SHA-256 digest of prefix followed by rest to digest, with the block
 * function `blocks`. */
static void sha256_with(BlockFunction blocks, const char *prefix, Py_ssize_t prefix_len,
                        const char *rest, Py_ssize_t rest_len, unsigned char digest[32]) {
    uint32_t state[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                         0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    unsigned char block[64];
    size_t filled = 0;
    uint64_t total = (uint64_t)prefix_len + (uint64_t)rest_len;
    const char *parts[2] = {prefix, rest};
    Py_ssize_t lengths[2] = {prefix_len, rest_len};
    for (int p = 0; p < 2; p++) {
        const unsigned char *data = (const unsigned char *)parts[p];
        size_t left = (size_t)lengths[p];
        while (left > 0) {
            size_t take = 64 - filled;
            if (take > left) take = left;
            memcpy(block + filled, data, take);
            filled += take;
            data += take;
            left -= take;
            if (filled == 64) {
                blocks(state, block, 1);
                filled = 0;
            }
        }
    }

    block[filled++] = 0x80;
    if (filled > 56) {
        memset(block + filled, 0, 64 - filled);
        blocks(state, block, 1);
        filled = 0;
    }
    memset(block + filled, 0, 56 - filled);
    uint64_t bits = total * 8;
    for (int i = 0; i < 8; i++) block[56 + i] = (unsigned char)(bits >> (56 - 8 * i));
    blocks(state, block, 1);
    for (int i = 0; i < 8; i++) {
        digest[4 * i] = (unsigned char)(state[i] >> 24);
        digest[4 * i + 1] = (unsigned char)(state[i] >> 16);
        digest[4 * i + 2] = (unsigned char)(state[i] >> 8);
        digest[4 * i + 3] = (unsigned char)state[i];
    }
}

static void sha256_two(const char *prefix, Py_ssize_t prefix_len, const char *rest,
                       Py_ssize_t rest_len, unsigned char digest[32]) {
    sha256_with(sha256_blocks, prefix, prefix_len, rest, rest_len, digest);
}

static PyObject *py_sha256(PyObject *self, PyObject *args) {
    const char *data;
    Py_ssize_t length;
    int portable = 0;
    if (!PyArg_ParseTuple(args, "y#|p", &data, &length, &portable)) return NULL;
    unsigned char digest[32];
    sha256_with(portable ? sha256_blocks_portable : sha256_blocks, data, length, "", 0,
                digest);
    return PyBytes_FromStringAndSize((const char *)digest, 32);
}

/* ---- Interned keys ------------------------------------------------------- */

static PyObject *s_id, *s_model, *s_user_id, *s_app_id, *s_model_version, *s_input,
    *s_data, *s_status, *s_code, *s_metadata, *s_image, *s_text, *s_url, *s_base64,
    *s_raw, *s_concepts, *s_name, *s_value, *s_empty, *s_event_id, *s_created_at,
    *s_output_data, *s_top_concept;

static int intern_keys(void) {
#define INTERN(var, text)                            \
    if (!(var = PyUnicode_InternFromString(text))) { \
        return -1;                                   \
    }
    INTERN(s_id, "id");
    INTERN(s_model, "model");
    INTERN(s_user_id, "user_id");
    INTERN(s_app_id, "app_id");
    INTERN(s_model_version, "model_version");
    INTERN(s_input, "input");
    INTERN(s_data, "data");
    INTERN(s_status, "status");
    INTERN(s_code, "code");
    INTERN(s_metadata, "metadata");
    INTERN(s_image, "image");
    INTERN(s_text, "text");
    INTERN(s_url, "url");
    INTERN(s_base64, "base64");
    INTERN(s_raw, "raw");
    INTERN(s_concepts, "concepts");
    INTERN(s_name, "name");
    INTERN(s_value, "value");
    INTERN(s_empty, "");
    INTERN(s_event_id, "event_id");
    INTERN(s_created_at, "created_at");
    INTERN(s_output_data, "output_data");
    INTERN(s_top_concept, "top_concept");
#undef INTERN
    return 0;
}

/* dict.get(key) for an exact dict: a borrowed reference, or NULL when the key is
 * missing. The keys here are str, whose lookup cannot fail among str keys. An
 * error from a key of another type is cleared, and the key counts as missing. */
static PyObject *get(PyObject *dict, PyObject *key) {
    PyObject *value = PyDict_GetItemWithError(dict, key);
    if (value == NULL && PyErr_Occurred()) PyErr_Clear();
    return value;
}

static int is_non_empty_str(PyObject *value) {
    return value != NULL && PyUnicode_CheckExact(value) &&
           PyUnicode_GET_LENGTH(value) > 0;
}

/* Whether `not value.strip()` is false: the str has a non-whitespace character. */
static int has_non_space(PyObject *text) {
    Py_ssize_t length = PyUnicode_GET_LENGTH(text);
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    for (Py_ssize_t i = 0; i < length; i++) {
        if (!Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, i))) return 1;
    }
    return 0;
}

/* app.models._nests_deeper */
static int nests_deeper(PyObject *container, int levels_left) {
    if (levels_left < 0) return 1;
    if (PyDict_Check(container)) {
        Py_ssize_t pos = 0;
        PyObject *key, *child;
        while (PyDict_Next(container, &pos, &key, &child)) {
            if ((PyDict_Check(child) || PyList_Check(child)) &&
                nests_deeper(child, levels_left - 1))
                return 1;
        }
    } else {
        Py_ssize_t size = PyList_GET_SIZE(container);
        for (Py_ssize_t i = 0; i < size; i++) {
            PyObject *child = PyList_GET_ITEM(container, i);
            if ((PyDict_Check(child) || PyList_Check(child)) &&
                nests_deeper(child, levels_left - 1))
                return 1;
        }
    }
    return 0;
}

/* Checks a str field of an image or text part, "" when missing. Returns 0 when
 * it is not a str, and sets *non_empty when it is a non-empty one. */
static int part_field(PyObject *part, PyObject *key, int *non_empty) {
    PyObject *value = get(part, key);
    if (value == NULL) return 1;
    if (!PyUnicode_CheckExact(value)) return 0;
    if (PyUnicode_GET_LENGTH(value) > 0) *non_empty = 1;
    return 1;
}

/* app.models._is_plain_input_data */
static int is_plain_input_data(PyObject *data) {
    if (data == NULL || !PyDict_CheckExact(data)) return 0;
    PyObject *metadata = get(data, s_metadata);
    if (metadata != NULL && metadata != Py_None) {
        if (!PyDict_CheckExact(metadata)) return 0;
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(metadata, &pos, &key, &value)) {
            if (!PyUnicode_CheckExact(key)) return 0;
        }
        if (nests_deeper(metadata, MAX_METADATA_DEPTH - 1)) return 0;
    }
    int has_content = 0;
    PyObject *parts[2][3] = {{s_image, s_url, s_base64}, {s_text, s_raw, s_url}};
    for (int i = 0; i < 2; i++) {
        PyObject *part = get(data, parts[i][0]);
        if (part == NULL || part == Py_None) continue;
        if (!PyDict_CheckExact(part)) return 0;
        if (!part_field(part, parts[i][1], &has_content)) return 0;
        if (!part_field(part, parts[i][2], &has_content)) return 0;
    }
    return has_content;
}

/* Returns the value of a concept that passed the check, as a double. */
static double concept_value(PyObject *concept) {
    PyObject *value = get(concept, s_value);
    if (PyFloat_CheckExact(value)) return PyFloat_AS_DOUBLE(value);
    return (double)PyLong_AsLong(value); /* 0 or 1, checked */
}

/* app.models._are_plain_concepts */
static int are_plain_concepts(PyObject *data) {
    if (!PyDict_CheckExact(data)) return 0;
    PyObject *concepts = get(data, s_concepts);
    if (concepts == NULL) return 1;
    if (!PyList_CheckExact(concepts)) return 0;
    Py_ssize_t size = PyList_GET_SIZE(concepts);
    for (Py_ssize_t i = 0; i < size; i++) {
        PyObject *concept = PyList_GET_ITEM(concepts, i);
        if (!PyDict_CheckExact(concept)) return 0;
        if (!is_non_empty_str(get(concept, s_id))) return 0;
        PyObject *name = get(concept, s_name);
        if (name != NULL && !PyUnicode_CheckExact(name)) return 0;
        PyObject *value = get(concept, s_value);
        if (value == NULL) return 0;
        if (PyFloat_CheckExact(value)) {
            double number = PyFloat_AS_DOUBLE(value);
            if (!(0.0 <= number && number <= 1.0)) return 0;
        } else if (PyLong_CheckExact(value)) {
            int overflow = 0;
            long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
            if (overflow || number < 0 || number > 1) return 0;
        } else {
            return 0;
        }
    }
    return 1;
}

typedef struct {
    PyObject *output;     /* borrowed */
    PyObject *source_key; /* new reference */
    PyObject *version_id; /* borrowed */
    PyObject *input_id;   /* borrowed */
    PyObject *data;       /* borrowed, NULL when empty */
    int failed;
    int has_data;
    int group;
} Candidate;

/* app.models.fast_output_fields, filling `candidate`. Returns 1 when the output
 * passes, 0 when it does not, -1 on a memory error. */
static int check(PyObject *output, Candidate *candidate) {
    if (!PyDict_CheckExact(output)) return 0;
    PyObject *output_id = get(output, s_id);
    if (output_id != NULL && !PyUnicode_CheckExact(output_id)) return 0;
    PyObject *model = get(output, s_model);
    if (model == NULL || !PyDict_CheckExact(model)) return 0;
    PyObject *model_id = get(model, s_id);
    PyObject *user_id = get(model, s_user_id);
    PyObject *app_id = get(model, s_app_id);
    if (!is_non_empty_str(model_id) || !is_non_empty_str(user_id) ||
        !is_non_empty_str(app_id))
        return 0;
    PyObject *version = get(model, s_model_version);
    PyObject *version_id = s_empty;
    if (version != NULL && version != Py_None) {
        if (!PyDict_CheckExact(version)) return 0;
        version_id = get(version, s_id);
        if (version_id == NULL) version_id = s_empty;
        if (!PyUnicode_CheckExact(version_id)) return 0;
    }

    PyObject *input = get(output, s_input);
    if (input == NULL || !PyDict_CheckExact(input)) return 0;
    PyObject *input_id = get(input, s_id);
    if (input_id == NULL || !PyUnicode_CheckExact(input_id) || !has_non_space(input_id))
        return 0;
    if (!is_plain_input_data(get(input, s_data))) return 0;
    PyObject *data = get(output, s_data);
    if (data != NULL && !are_plain_concepts(data)) return 0;

    int failed = 0;
    PyObject *status = get(output, s_status);
    if (status != NULL) {
        if (!PyDict_CheckExact(status)) return 0;
        PyObject *code = get(status, s_code);
        if (code != NULL) {
            if (!PyLong_CheckExact(code)) return 0;
            int overflow = 0;
            long long number = PyLong_AsLongLongAndOverflow(code, &overflow);
            failed = overflow || number != SUCCESS_CODE;
        }
    }

    PyObject *source_key = PyUnicode_FromFormat("%U/%U/%U", user_id, app_id, model_id);
    if (source_key == NULL) return -1;

    /* output.get("data") or {} and any(data.values()) */
    int has_data = 0;
    if (data != NULL) {
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(data, &pos, &key, &value)) {
            /* Only exact JSON types, whose truth test runs no Python code that
             * could free the objects this function has borrowed. */
            if (!(value == Py_None || PyBool_Check(value) || PyLong_CheckExact(value) ||
                  PyFloat_CheckExact(value) || PyUnicode_CheckExact(value) ||
                  PyList_CheckExact(value) || PyDict_CheckExact(value))) {
                Py_DECREF(source_key);
                return 0;
            }
            int truth = PyObject_IsTrue(value);
            if (truth < 0) {
                Py_DECREF(source_key);
                return -1;
            }
            if (truth) {
                has_data = 1;
                break;
            }
        }
        if (PyDict_GET_SIZE(data) == 0) data = NULL;
    }
    candidate->output = output;
    candidate->source_key = source_key;
    candidate->version_id = version_id;
    candidate->input_id = input_id;
    candidate->data = data;
    candidate->failed = failed;
    candidate->has_data = has_data;
    candidate->group = -1;
    return 1;
}

static PyObject *py_check_output(PyObject *self, PyObject *output) {
    Candidate candidate;
    int ok = check(output, &candidate);
    if (ok < 0) return NULL;
    if (ok == 0) Py_RETURN_NONE;
    PyObject *code = PyLong_FromLong(SUCCESS_CODE);
    PyObject *status = get(output, s_status);
    if (status != NULL && get(status, s_code) != NULL) {
        Py_DECREF(code);
        code = get(status, s_code);
        Py_INCREF(code);
    }
    return Py_BuildValue("(NNOO)", code, candidate.source_key, candidate.version_id,
                         candidate.input_id);
}

/* ---- Plans ----------------------------------------------------------------- */

/* Indices into a plan tuple; routing.py's `_plan` builds them. */
enum {
    P_VIEW,
    P_PYTHON,
    P_ACTIVE,
    P_CALLER,
    P_VERSION,
    P_COLLECT_FAILED,
    P_BROKEN,
    P_SAMPLES,
    P_SEED_PREFIX,
    P_LIMIT,
    P_RULE,
    P_THRESHOLD,
    P_COMPARATOR,
    P_THRESHOLDS,
    P_NODE_ID,
    P_PAIRS,
    P_KEY,
    P_KEY_SLASH,
    P_COLLECT_OUTPUTS,
    P_COUNTS,
    P_SIZE
};

/* The counters of a plan's P_COUNTS bytearray, which route_event adds to. */
enum { C_MATCHED, C_DROPPED_SAMPLE, C_DROPPED_RULE, C_ENQUEUED, C_SIZE };

enum { RULE_NONE = 0, RULE_MAX_BELOW = 1, RULE_MIN_ABOVE = 2, RULE_THRESHOLDER = 3 };

static int is_close(double a, double b) {
    /* math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) */
    const double rel_tol = 1e-9, abs_tol = 1e-9;
    if (a == b) return 1;
    if (isinf(a) || isinf(b)) return 0;
    double diff = fabs(b - a);
    return diff <= fabs(rel_tol * b) || diff <= fabs(rel_tol * a) || diff <= abs_tol;
}

static int compare(int comparator, double value, double threshold) {
    switch (comparator) {
        case 1: return value > threshold;
        case 2: return value >= threshold;
        case 3: return value < threshold;
        case 4: return value <= threshold;
        default: return is_close(value, threshold);
    }
}

/* Runs the plan's one-node workflow on data with content (the caller checks
 * has_data first). */
static int rule_passes(PyObject *plan, PyObject *data) {
    long rule = PyLong_AsLong(PyTuple_GET_ITEM(plan, P_RULE));
    PyObject *concepts = get(data, s_concepts);
    if (concepts == NULL || PyList_GET_SIZE(concepts) == 0) return 0;
    Py_ssize_t size = PyList_GET_SIZE(concepts);
    if (rule == RULE_THRESHOLDER) {
        PyObject *thresholds = PyTuple_GET_ITEM(plan, P_THRESHOLDS);
        int comparator = (int)PyLong_AsLong(PyTuple_GET_ITEM(plan, P_COMPARATOR));
        for (Py_ssize_t i = 0; i < size; i++) {
            PyObject *concept = PyList_GET_ITEM(concepts, i);
            PyObject *threshold = get(thresholds, get(concept, s_id));
            if (threshold == NULL) {
                PyObject *name = get(concept, s_name);
                if (name != NULL) threshold = get(thresholds, name);
            }
            if (threshold != NULL &&
                compare(comparator, concept_value(concept), PyFloat_AS_DOUBLE(threshold)))
                return 1;
        }
        return 0;
    }

    double threshold = PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(plan, P_THRESHOLD));
    for (Py_ssize_t i = 0; i < size; i++) {
        double value = concept_value(PyList_GET_ITEM(concepts, i));
        if (rule == RULE_MAX_BELOW ? value >= threshold : value <= threshold) return 0;
    }
    return 1;
}

/* Compares like Python's `digest < limit` on bytes. */
static int digest_below(const unsigned char digest[32], PyObject *limit) {
    Py_ssize_t limit_len = PyBytes_GET_SIZE(limit);
    Py_ssize_t common = limit_len < 32 ? limit_len : 32;
    int order = memcmp(digest, PyBytes_AS_STRING(limit), (size_t)common);
    if (order != 0) return order < 0;
    return 32 < limit_len;
}

static int plan_error(PyObject *plan, const char *problem) {
    PyErr_Format(PyExc_TypeError, "invalid plan: %s, got %.200R", problem, plan);
    return 0;
}

/* Whether a plan has the fields and types that routing._plan builds. Raises
 * TypeError when it has not. */
static int plan_is_valid(PyObject *plan) {
    if (!PyTuple_CheckExact(plan) || PyTuple_GET_SIZE(plan) != P_SIZE)
        return plan_error(plan, "expected a tuple of PLAN_SIZE fields");
    PyObject *caller = PyTuple_GET_ITEM(plan, P_CALLER);
    if (caller != Py_None && !PyUnicode_Check(caller))
        return plan_error(plan, "the caller user id must be a str or None");
    if (!PyUnicode_Check(PyTuple_GET_ITEM(plan, P_VERSION)))
        return plan_error(plan, "the model version id must be a str");
    if (!PyUnicode_Check(PyTuple_GET_ITEM(plan, P_KEY)) ||
        !PyBytes_Check(PyTuple_GET_ITEM(plan, P_KEY_SLASH)))
        return plan_error(plan, "the key must be a str and the key prefix bytes");
    PyObject *counts = PyTuple_GET_ITEM(plan, P_COUNTS);
    if (!PyByteArray_CheckExact(counts) ||
        PyByteArray_GET_SIZE(counts) != (Py_ssize_t)(C_SIZE * sizeof(int64_t)))
        return plan_error(plan, "the counts must be a bytearray of 4 int64");
    if (!PyBytes_Check(PyTuple_GET_ITEM(plan, P_SEED_PREFIX)) ||
        !PyBytes_Check(PyTuple_GET_ITEM(plan, P_LIMIT)))
        return plan_error(plan, "the seed prefix and digest limit must be bytes");
    PyObject *rule_object = PyTuple_GET_ITEM(plan, P_RULE);
    if (!PyLong_CheckExact(rule_object))
        return plan_error(plan, "the rule code must be an int");
    long rule = PyLong_AsLong(rule_object);
    if (rule < RULE_NONE || rule > RULE_THRESHOLDER)
        return plan_error(plan, "the rule code must be 0 to 3");
    if (!PyFloat_CheckExact(PyTuple_GET_ITEM(plan, P_THRESHOLD)))
        return plan_error(plan, "the threshold must be a float");
    if (rule != RULE_THRESHOLDER) return 1;

    if (!PyLong_CheckExact(PyTuple_GET_ITEM(plan, P_COMPARATOR)))
        return plan_error(plan, "the comparator code must be an int");
    PyObject *thresholds = PyTuple_GET_ITEM(plan, P_THRESHOLDS);
    if (!PyDict_CheckExact(thresholds))
        return plan_error(plan, "the thresholds must be a dict");
    Py_ssize_t position = 0;
    PyObject *key, *value;
    while (PyDict_Next(thresholds, &position, &key, &value)) {
        if (!PyUnicode_CheckExact(key) || !PyFloat_CheckExact(value))
            return plan_error(plan, "the thresholds must map str to float");
    }

    PyObject *pairs = PyTuple_GET_ITEM(plan, P_PAIRS);
    if (!PyTuple_CheckExact(pairs))
        return plan_error(plan, "the threshold pairs must be a tuple");
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(pairs); i++) {
        PyObject *pair = PyTuple_GET_ITEM(pairs, i);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            !PyBytes_Check(PyTuple_GET_ITEM(pair, 0)) ||
            !PyFloat_CheckExact(PyTuple_GET_ITEM(pair, 1)))
            return plan_error(plan, "each threshold pair must be (bytes, float)");
    }
    return 1;
}

/* Whether `views`, a value of the plans dict, is a tuple of valid plans. Raises
 * TypeError when it is not. */
static int views_are_valid(PyObject *views) {
    if (!PyTuple_CheckExact(views)) {
        PyErr_Format(PyExc_TypeError,
                     "plans must map a source key to a tuple of plans, got %.200R",
                     views);
        return 0;
    }
    for (Py_ssize_t v = 0; v < PyTuple_GET_SIZE(views); v++) {
        if (!plan_is_valid(PyTuple_GET_ITEM(views, v))) return 0;
    }
    return 1;
}

/* Sets *group to the index of the candidate's model in `group_plans`, adding the
 * model when it is met first. A model that no collector watches gets -1, and
 * the candidate counts as skipped (failed) or unwatched. Returns -1, with a
 * TypeError, when the model's plans are invalid. */
static int assign_group(PyObject *plans, PyObject *source_key, int failed,
                        PyObject **group_plans, Py_ssize_t *groups, int *group,
                        Py_ssize_t *skipped_status, Py_ssize_t *unwatched) {
    PyObject *views = get(plans, source_key);
    *group = -1;
    if (views != NULL) {
        for (Py_ssize_t g = 0; g < *groups; g++) {
            if (group_plans[g] == views) {
                *group = (int)g;
                return 0;
            }
        }
        if (!views_are_valid(views)) return -1;
        if (PyTuple_GET_SIZE(views) > 0) {
            *group = (int)*groups;
            group_plans[(*groups)++] = views;
            return 0;
        }
    }
    if (failed)
        (*skipped_status)++;
    else
        (*unwatched)++;
    return 0;
}

static int caller_matches(PyObject *plan, PyObject *caller_user_id) {
    if (PyTuple_GET_ITEM(plan, P_ACTIVE) != Py_True) return 0;
    PyObject *required = PyTuple_GET_ITEM(plan, P_CALLER);
    if (required == Py_None) return 1;
    return PyUnicode_Compare(required, caller_user_id) == 0;
}

/* The fields of a plan that a decision reads for every candidate. */
typedef struct {
    int collect_failed;
    int broken;
    int samples;
    long rule;
    PyObject *prefix;
    PyObject *limit;
} PlanFields;

static void read_plan(PyObject *plan, PlanFields *fields) {
    fields->collect_failed = PyTuple_GET_ITEM(plan, P_COLLECT_FAILED) == Py_True;
    fields->broken = PyTuple_GET_ITEM(plan, P_BROKEN) == Py_True;
    fields->samples = PyTuple_GET_ITEM(plan, P_SAMPLES) == Py_True;
    fields->rule = PyLong_AsLong(PyTuple_GET_ITEM(plan, P_RULE));
    fields->prefix = PyTuple_GET_ITEM(plan, P_SEED_PREFIX);
    fields->limit = PyTuple_GET_ITEM(plan, P_LIMIT);
}

/* Whether the plan's random sample keeps an input id given in UTF-8. */
static int sample_keeps(PlanFields *fields, const char *input_id, Py_ssize_t length) {
    unsigned char digest[32];
    sha256_two(PyBytes_AS_STRING(fields->prefix), PyBytes_GET_SIZE(fields->prefix),
               input_id, length, digest);
    return digest_below(digest, fields->limit);
}

/* Appends (plan, matched, dropped_sample, dropped_rule, survivors) to decisions
 * when any candidate matched, and releases survivors. Returns -1 on error. */
static int append_decision(PyObject *decisions, PyObject *plan, Py_ssize_t matched,
                           Py_ssize_t dropped_sample, Py_ssize_t dropped_rule,
                           PyObject *survivors) {
    if (matched == 0) {
        Py_DECREF(survivors);
        return 0;
    }
    PyObject *entry = Py_BuildValue("(OnnnN)", plan, matched, dropped_sample,
                                    dropped_rule, survivors);
    if (entry == NULL) return -1;
    int status = PyList_Append(decisions, entry);
    Py_DECREF(entry);
    return status;
}

/* Appends the decision of one native plan on one group of candidates, if any
 * candidate matches. Returns -1 on error. */
static int decide(PyObject *plan, Candidate *candidates, Py_ssize_t count, int group,
                  PyObject *decisions) {
    PyObject *version_id = PyTuple_GET_ITEM(plan, P_VERSION);
    int any_version = PyUnicode_GET_LENGTH(version_id) == 0;
    PlanFields fields;
    read_plan(plan, &fields);
    Py_ssize_t matched = 0, dropped_sample = 0, dropped_rule = 0;
    PyObject *survivors = PyList_New(0);
    if (survivors == NULL) return -1;
    for (Py_ssize_t i = 0; i < count; i++) {
        Candidate *candidate = &candidates[i];
        if (candidate->group != group) continue;
        if (candidate->failed && !fields.collect_failed) continue;
        if (!any_version && PyUnicode_Compare(candidate->version_id, version_id) != 0)
            continue;
        matched++;
        if (fields.broken) continue;
        if (fields.samples) {
            Py_ssize_t id_len;
            const char *id_utf8 = PyUnicode_AsUTF8AndSize(candidate->input_id, &id_len);
            if (id_utf8 == NULL) goto error;
            if (!sample_keeps(&fields, id_utf8, id_len)) {
                dropped_sample++;
                continue;
            }
        }
        if (fields.rule != RULE_NONE && !candidate->failed) {
            if (!candidate->has_data || !rule_passes(plan, candidate->data)) {
                dropped_rule++;
                continue;
            }
        }
        PyObject *index = PyLong_FromSsize_t(i);
        if (index == NULL || PyList_Append(survivors, index) < 0) {
            Py_XDECREF(index);
            goto error;
        }
        Py_DECREF(index);
    }
    return append_decision(decisions, plan, matched, dropped_sample, dropped_rule,
                           survivors);
error:
    Py_DECREF(survivors);
    return -1;
}

static int python_decision(PyObject *plan, Candidate *candidates, Py_ssize_t count,
                           int group, PyObject *decisions) {
    PyObject *indices = PyList_New(0);
    if (indices == NULL) return -1;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (candidates[i].group != group) continue;
        PyObject *index = PyLong_FromSsize_t(i);
        if (index == NULL || PyList_Append(indices, index) < 0) {
            Py_XDECREF(index);
            Py_DECREF(indices);
            return -1;
        }
        Py_DECREF(index);
    }
    PyObject *entry = Py_BuildValue("(ON)", plan, indices);
    if (entry == NULL) return -1;
    int status = PyList_Append(decisions, entry);
    Py_DECREF(entry);
    return status;
}

static PyObject *py_route_outputs(PyObject *self, PyObject *args) {
    PyObject *outputs, *caller_user_id, *plans;
    if (!PyArg_ParseTuple(args, "O!UO!", &PyList_Type, &outputs, &caller_user_id,
                          &PyDict_Type, &plans))
        return NULL;
    PyObject *items = PyList_AsTuple(outputs);
    if (items == NULL) return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(items);
    Candidate *candidates = PyMem_Calloc(count > 0 ? (size_t)count : 1, sizeof(Candidate));
    if (candidates == NULL) {
        Py_DECREF(items);
        return PyErr_NoMemory();
    }
    /* Groups by source key, in order of first appearance. */
    PyObject **group_plans = PyMem_Calloc(count > 0 ? (size_t)count : 1, sizeof(PyObject *));
    PyObject *result = NULL, *decisions = NULL;
    Py_ssize_t checked = 0, groups = 0, skipped_status = 0, unwatched = 0;
    if (group_plans == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        int ok = check(PyTuple_GET_ITEM(items, i), &candidates[i]);
        if (ok < 0) goto done;
        if (ok == 0) {
            result = Py_None;
            Py_INCREF(result);
            goto done;
        }
        checked++;
    }

    for (Py_ssize_t i = 0; i < count; i++) {
        Candidate *candidate = &candidates[i];
        if (assign_group(plans, candidate->source_key, candidate->failed, group_plans,
                         &groups, &candidate->group, &skipped_status, &unwatched) < 0)
            goto done;
    }

    decisions = PyList_New(0);
    if (decisions == NULL) goto done;
    for (Py_ssize_t g = 0; g < groups; g++) {
        PyObject *views = group_plans[g];
        Py_ssize_t size = PyTuple_GET_SIZE(views);
        for (Py_ssize_t v = 0; v < size; v++) {
            PyObject *plan = PyTuple_GET_ITEM(views, v);
            if (!caller_matches(plan, caller_user_id)) continue;
            int status = PyTuple_GET_ITEM(plan, P_PYTHON) == Py_True
                             ? python_decision(plan, candidates, count, (int)g, decisions)
                             : decide(plan, candidates, count, (int)g, decisions);
            if (status < 0) goto done;
        }
    }
    result = Py_BuildValue("((nn)O)", skipped_status, unwatched, decisions);
done:
    for (Py_ssize_t i = 0; i < checked; i++) Py_XDECREF(candidates[i].source_key);
    PyMem_Free(candidates);
    PyMem_Free(group_plans);
    Py_XDECREF(decisions);
    Py_DECREF(items);
    return result;
}

/* ---- Raw events ------------------------------------------------------------
 *
 * route_event(value, plans, touched) -> (count, skipped_status, unwatched,
 *                                        batches) | None
 *     does what orjson.loads, PredictionEvent and route_outputs do, on the
 *     event's bytes, and also builds the queue items (routing.queue_item) of the
 *     outputs that collectors keep: batches lists (collector key, items) pairs.
 *     It builds Python objects only for the event id and for the kept outputs.
 *     Each plan's funnel counts are added to its P_COUNTS bytearray, and a plan
 *     whose counts were zero is appended to `touched`; Router.settle moves them
 *     to the stats. It parses a subset of JSON: strings that the check reads
 *     must have no backslash escapes, integers must fit in 64 bits, and objects
 *     and arrays may nest 128 levels. It returns None, before counting
 *     anything, outside that subset, for an envelope that PredictionEvent may
 *     reject (see raw_envelope), and wherever route_outputs would return None
 *     or a plan is decided in Python. The caller then takes the orjson path,
 *     which decides for itself. */

#define MAX_DEPTH 128

enum { J_NULL, J_FALSE, J_TRUE, J_INT, J_FLOAT, J_STRING, J_ARRAY, J_OBJECT };

/* A parsed JSON value. Containers list their children through `first` and each
 * child's `next`. An object's children alternate key and value. */
typedef struct {
    int32_t type;
    int32_t escaped; /* a string with backslash escapes */
    /* Node indexes, counts and lengths fit in 32 bits, because each node takes
     * at least a byte and parse_document rejects documents of 2**31 - 1 bytes or
     * more. */
    int32_t next; /* the next sibling, or -1 */
    int32_t first;
    int32_t count; /* elements, or members of an object */
    int32_t length;
    const char *start; /* a string's content, a number's text, or a container's text from its
                        * opening bracket to its closing one (`length` bytes) */
    long long integer;
    double number;
} JNode;

typedef struct {
    const char *at;
    const char *end;
    JNode *nodes;
    Py_ssize_t used;
    Py_ssize_t capacity;
    int depth;
} Parser;

/* Whether `data` is valid UTF-8 (no overlong forms, surrogates or code points
 * above U+10FFFF), as orjson requires. */
static int valid_utf8(const unsigned char *data, Py_ssize_t length) {
    Py_ssize_t i = 0;
    while (i < length) {
#ifdef __SSE2__
        /* Sixteen ASCII bytes at a time. */
        while (i + 16 <= length &&
               _mm_movemask_epi8(_mm_loadu_si128((const __m128i *)(data + i))) == 0)
            i += 16;
        if (i >= length) break;
#endif
        /* Eight ASCII bytes at a time. */
        if (i + 8 <= length) {
            uint64_t word;
            memcpy(&word, data + i, 8);
            if ((word & 0x8080808080808080ULL) == 0) {
                i += 8;
                continue;
            }
        }
        unsigned char c = data[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int extra;
        uint32_t code;
        if (c >= 0xC2 && c <= 0xDF) {
            extra = 1;
            code = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            extra = 2;
            code = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            extra = 3;
            code = c & 0x07;
        } else {
            return 0;
        }
        if (i + extra >= length) return 0;
        for (int k = 1; k <= extra; k++) {
            unsigned char next = data[i + k];
            if ((next & 0xC0) != 0x80) return 0;
            code = (code << 6) | (next & 0x3F);
        }
        if ((extra == 2 && (code < 0x800 || (code >= 0xD800 && code <= 0xDFFF))) ||
            (extra == 3 && (code < 0x10000 || code > 0x10FFFF)))
            return 0;
        i += extra + 1;
    }
    return 1;
}

static int grow_nodes(Parser *parser) {
    Py_ssize_t capacity = parser->capacity ? parser->capacity * 2 : 256;
    JNode *nodes = PyMem_Realloc(parser->nodes, (size_t)capacity * sizeof(JNode));
    if (nodes == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    parser->nodes = nodes;
    parser->capacity = capacity;
    return 0;
}

/* Appends a node for a value that starts at `start` and returns its index. */
static inline Py_ssize_t new_node(Parser *parser, int type, const char *start) {
    if (parser->used == parser->capacity && grow_nodes(parser) < 0) return -1;
    JNode *node = &parser->nodes[parser->used];
    node->type = type;
    node->escaped = 0;
    node->next = -1;
    node->first = -1;
    node->count = 0;
    node->length = 0;
    node->start = start;
    return parser->used++;
}

static inline void skip_space(Parser *parser) {
    const char *at = parser->at, *end = parser->end;
    /* Compact JSON has no whitespace, so the first test usually ends the loop. */
    while (at < end && (unsigned char)*at <= ' ') {
        char c = *at;
        if (c != ' ' && c != '\n' && c != '\r' && c != '\t') break;
        at++;
    }
    parser->at = at;
}

static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Reads \uXXXX at `at`, or returns -1. */
static long read_u_escape(const char *at, const char *end) {
    if (end - at < 6 || at[0] != '\\' || at[1] != 'u') return -1;
    long code = 0;
    for (int k = 2; k < 6; k++) {
        int digit = hex_value(at[k]);
        if (digit < 0) return -1;
        code = code * 16 + digit;
    }
    return code;
}

static Py_ssize_t parse_value(Parser *parser);

/* The bytes that end a run of plain string content: the quote, the backslash and
 * the control characters. */
static unsigned char STRING_STOPS[256];

static void init_string_stops(void) {
    for (int c = 0; c < 0x20; c++) STRING_STOPS[c] = 1;
    STRING_STOPS['"'] = 1;
    STRING_STOPS['\\'] = 1;
}

/* Parses the string whose opening quote is at parser->at. */
static Py_ssize_t parse_string(Parser *parser) {
    const char *at = parser->at + 1, *end = parser->end;
    const char *start = at;
    int escaped = 0;
    for (;;) {
#ifdef __SSE2__
        /* Skips plain content 16 bytes at a time, to the first stop byte. */
        const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'),
                      control_max = _mm_set1_epi8(0x1F);
        while (end - at >= 16) {
            __m128i chunk = _mm_loadu_si128((const __m128i *)at);
            /* max(c, 0x1F) equals 0x1F exactly when c is a control character. */
            __m128i stops = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(chunk, quote), _mm_cmpeq_epi8(chunk, backslash)),
                _mm_cmpeq_epi8(_mm_max_epu8(chunk, control_max), control_max));
            int mask = _mm_movemask_epi8(stops);
            if (mask != 0) {
                at += __builtin_ctz((unsigned)mask);
                goto stop;
            }
            at += 16;
        }
#endif
        while (at < end && !STRING_STOPS[(unsigned char)*at]) at++;
        if (at >= end) return -1;
#ifdef __SSE2__
    stop:
#endif
        if (*at == '"') break;
        if ((unsigned char)*at < 0x20) return -1;
        /* A backslash. */
        escaped = 1;
        if (end - at < 2) return -1;
        char kind = at[1];
        if (kind != '\0' && strchr("\"\\/bfnrt", kind) != NULL) {
            at += 2;
            continue;
        }
        long code = read_u_escape(at, end);
        if (code < 0 || (code >= 0xDC00 && code <= 0xDFFF)) return -1;
        if (code >= 0xD800 && code <= 0xDBFF) {
            long low = read_u_escape(at + 6, end);
            if (low < 0xDC00 || low > 0xDFFF) return -1;
            at += 12;
        } else {
            at += 6;
        }
    }
    Py_ssize_t index = new_node(parser, J_STRING, start);
    if (index < 0) return -1;
    JNode *node = &parser->nodes[index];
    node->length = (int32_t)(at - start);
    node->escaped = escaped;
    parser->at = at + 1;
    return index;
}

static const double POWERS_OF_TEN[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                       1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                       1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

static Py_ssize_t parse_number(Parser *parser) {
    const char *start = parser->at, *at = parser->at, *end = parser->end;
    int is_float = 0, negative = 0;
    /* The digits as an integer, while it stays exact, and the power of ten. */
    uint64_t mantissa = 0;
    int digits = 0, exponent = 0;
    if (at < end && *at == '-') {
        negative = 1;
        at++;
    }
    if (at >= end) return -1;
    if (*at == '0') {
        at++;
    } else if (*at >= '1' && *at <= '9') {
        while (at < end && *at >= '0' && *at <= '9') {
            if (digits < 19) mantissa = mantissa * 10 + (uint64_t)(*at - '0');
            digits++;
            at++;
        }
    } else {
        return -1;
    }
    if (at < end && *at == '.') {
        is_float = 1;
        at++;
        if (at >= end || *at < '0' || *at > '9') return -1;
        while (at < end && *at >= '0' && *at <= '9') {
            if (digits < 19) {
                mantissa = mantissa * 10 + (uint64_t)(*at - '0');
                exponent--;
            }
            if (digits > 0 || *at != '0') digits++;
            at++;
        }
    }
    int exponent_digits = 0, exponent_value = 0, exponent_negative = 0;
    if (at < end && (*at == 'e' || *at == 'E')) {
        is_float = 1;
        at++;
        if (at < end && (*at == '+' || *at == '-')) exponent_negative = *at++ == '-';
        if (at >= end || *at < '0' || *at > '9') return -1;
        while (at < end && *at >= '0' && *at <= '9') {
            if (exponent_value < 10000) exponent_value = exponent_value * 10 + (*at - '0');
            exponent_digits++;
            at++;
        }
    }
    Py_ssize_t index = new_node(parser, is_float ? J_FLOAT : J_INT, start);
    if (index < 0) return -1;
    JNode *node = &parser->nodes[index];
    node->length = at - start;
    parser->at = at;

    if (!is_float) {
        /* Integers beyond 64 bits become floats in orjson; they take its path. */
        if (digits > 18) return -1;
        node->integer = negative ? -(long long)mantissa : (long long)mantissa;
        return index;
    }
    exponent += exponent_negative ? -exponent_value : exponent_value;
    if (digits <= 15 && exponent >= -22 && exponent <= 22) {
        /* Both operands are exact doubles, so the one rounding of the product or
         * quotient gives the correctly rounded value, as a full parse would. */
        double value = (double)mantissa;
        value = exponent < 0 ? value / POWERS_OF_TEN[-exponent]
                             : value * POWERS_OF_TEN[exponent];
        node->number = negative ? -value : value;
        return index;
    }
    char text[64];
    if (node->length >= (Py_ssize_t)sizeof(text)) return -1;
    memcpy(text, start, (size_t)node->length);
    text[node->length] = '\0';
    char *parsed_end = NULL;
    double number = PyOS_string_to_double(text, &parsed_end, NULL);
    if (number == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    if (parsed_end != text + node->length || isinf(number) || isnan(number)) return -1;
    node->number = number;
    return index;
}

static Py_ssize_t parse_literal(Parser *parser, const char *word, int type) {
    size_t length = strlen(word);
    if ((size_t)(parser->end - parser->at) < length ||
        memcmp(parser->at, word, length) != 0)
        return -1;
    Py_ssize_t index = new_node(parser, type, parser->at);
    parser->at += length;
    return index;
}

static Py_ssize_t parse_container(Parser *parser, int type) {
    if (++parser->depth > MAX_DEPTH) return -1;
    const char *open = parser->at;
    Py_ssize_t index = new_node(parser, type, open);
    if (index < 0) return -1;
    parser->at++;
    char closing = type == J_OBJECT ? '}' : ']';
    Py_ssize_t last = -1, count = 0;

    skip_space(parser);
    if (parser->at < parser->end && *parser->at == closing) {
        parser->at++;
        parser->nodes[index].length = (int32_t)(parser->at - open);
        parser->depth--;
        return index;
    }
    while (1) {
        skip_space(parser);
        Py_ssize_t child;
        if (type == J_OBJECT) {
            if (parser->at >= parser->end || *parser->at != '"') return -1;
            Py_ssize_t key = parse_string(parser);
            if (key < 0) return -1;
            skip_space(parser);
            if (parser->at >= parser->end || *parser->at != ':') return -1;
            parser->at++;
            child = parse_value(parser);
            if (child < 0) return -1;
            parser->nodes[key].next = child;
            if (last < 0)
                parser->nodes[index].first = key;
            else
                parser->nodes[last].next = key;
        } else {
            child = parse_value(parser);
            if (child < 0) return -1;
            if (last < 0)
                parser->nodes[index].first = child;
            else
                parser->nodes[last].next = child;
        }
        last = child;
        count++;

        skip_space(parser);
        if (parser->at >= parser->end) return -1;
        if (*parser->at == ',') {
            parser->at++;
            continue;
        }
        if (*parser->at != closing) return -1;
        parser->at++;
        break;
    }
    parser->nodes[index].count = (int32_t)count;
    parser->nodes[index].length = (int32_t)(parser->at - open);
    parser->depth--;
    return index;
}

static Py_ssize_t parse_value(Parser *parser) {
    skip_space(parser);
    if (parser->at >= parser->end) return -1;
    switch (*parser->at) {
        case '{': return parse_container(parser, J_OBJECT);
        case '[': return parse_container(parser, J_ARRAY);
        case '"': return parse_string(parser);
        case 't': return parse_literal(parser, "true", J_TRUE);
        case 'f': return parse_literal(parser, "false", J_FALSE);
        case 'n': return parse_literal(parser, "null", J_NULL);
        default: return parse_number(parser);
    }
}

/* Parses a whole document into `parser`, returning the root's index, or -1 when
 * it is outside the subset (no Python error) or memory ran out (MemoryError). */
/* A node array kept from one document to the next, so that each parse does not
 * grow its array from nothing again (the copies of those reallocations cost about
 * a sixth of route_event's instructions). One parse holds it at a time, under the
 * GIL; a parse that finds it taken starts an array of its own. */
#define SPARE_NODES_MAX 65536 /* nodes, 4 MiB: a larger array is freed */
static JNode *spare_nodes = NULL;
static Py_ssize_t spare_capacity = 0;

static void parser_release(Parser *parser) {
    if (parser->nodes != NULL && spare_nodes == NULL &&
        parser->capacity <= SPARE_NODES_MAX) {
        spare_nodes = parser->nodes;
        spare_capacity = parser->capacity;
    } else {
        PyMem_Free(parser->nodes);
    }
    parser->nodes = NULL;
    parser->capacity = 0;
}

static Py_ssize_t parse_document(Parser *parser, const char *data, Py_ssize_t length) {
    parser->at = data;
    parser->end = data + length;
    parser->nodes = spare_nodes;
    parser->capacity = spare_capacity;
    spare_nodes = NULL;
    spare_capacity = 0;
    parser->used = 0;
    parser->depth = 0;
    /* Nodes keep lengths and indexes in 32 bits (see JNode). */
    if (length >= INT32_MAX) return -1;
    if (!valid_utf8((const unsigned char *)data, length)) return -1;
    Py_ssize_t root = parse_value(parser);
    if (root < 0) return -1;
    skip_space(parser);
    return parser->at == parser->end ? root : -1;
}

/* Returns the index of the last member of an object named `key`, -1 when there
 * is none, or -2 when a key has escapes and so cannot be compared as bytes. */
static Py_ssize_t member(Parser *parser, Py_ssize_t object, const char *key,
                         size_t key_length) {
    Py_ssize_t found = -1;
    for (Py_ssize_t k = parser->nodes[object].first; k >= 0;) {
        JNode *name = &parser->nodes[k];
        if (name->escaped) return -2;
        Py_ssize_t value = name->next;
        if ((size_t)name->length == key_length &&
            memcmp(name->start, key, key_length) == 0)
            found = value;
        k = parser->nodes[value].next;
    }
    return found;
}

#define MEMBER(parser, object, literal) \
    member((parser), (object), (literal), sizeof(literal) - 1)

/* Looks up several keys in one pass over an object's members, as `member` does
 * for each: found[i] gets the index of the last member named keys[i], or -1.
 * Returns 0, or -2 when a key has escapes. */
typedef struct {
    const char *text;
    int32_t length;
} Key;

#define KEY(literal) {(literal), (int32_t)sizeof(literal) - 1}

static int members(Parser *parser, Py_ssize_t object, const Key *keys, int count,
                   Py_ssize_t *found) {
    for (int i = 0; i < count; i++) found[i] = -1;
    for (Py_ssize_t k = parser->nodes[object].first; k >= 0;) {
        JNode *name = &parser->nodes[k];
        if (name->escaped) return -2;
        Py_ssize_t value = name->next;
        for (int i = 0; i < count; i++) {
            if (keys[i].length != name->length) continue;
            int32_t j = 0;
            while (j < name->length && keys[i].text[j] == name->start[j]) j++;
            if (j == name->length) {
                found[i] = value;
                break;
            }
        }
        k = parser->nodes[value].next;
    }
    return 0;
}

/* Decodes a string node into a new str. */
static PyObject *string_object(Parser *parser, Py_ssize_t index) {
    JNode *node = &parser->nodes[index];
    if (!node->escaped) return PyUnicode_DecodeUTF8(node->start, node->length, NULL);
    /* Escapes only shorten the text, and \u escapes become at most 4 bytes of
     * UTF-8 from 6 (or 12 for a surrogate pair) of text. */
    char *buffer = PyMem_Malloc(node->length > 0 ? (size_t)node->length : 1);
    if (buffer == NULL) return PyErr_NoMemory();
    Py_ssize_t out = 0;
    const char *at = node->start, *end = node->start + node->length;
    while (at < end) {
        if (*at != '\\') {
            buffer[out++] = *at++;
            continue;
        }
        char kind = at[1];
        const char *simple = "\"\\/bfnrt", *meaning = "\"\\/\b\f\n\r\t";
        const char *found = strchr(simple, kind);
        if (kind != 'u' && found != NULL) {
            buffer[out++] = meaning[found - simple];
            at += 2;
            continue;
        }
        long code = read_u_escape(at, end);
        at += 6;
        if (code >= 0xD800 && code <= 0xDBFF) {
            long low = read_u_escape(at, end);
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
            at += 6;
        }
        if (code < 0x80) {
            buffer[out++] = (char)code;
        } else if (code < 0x800) {
            buffer[out++] = (char)(0xC0 | (code >> 6));
            buffer[out++] = (char)(0x80 | (code & 0x3F));
        } else if (code < 0x10000) {
            buffer[out++] = (char)(0xE0 | (code >> 12));
            buffer[out++] = (char)(0x80 | ((code >> 6) & 0x3F));
            buffer[out++] = (char)(0x80 | (code & 0x3F));
        } else {
            buffer[out++] = (char)(0xF0 | (code >> 18));
            buffer[out++] = (char)(0x80 | ((code >> 12) & 0x3F));
            buffer[out++] = (char)(0x80 | ((code >> 6) & 0x3F));
            buffer[out++] = (char)(0x80 | (code & 0x3F));
        }
    }
    PyObject *text = PyUnicode_DecodeUTF8(buffer, out, NULL);
    PyMem_Free(buffer);
    return text;
}

/* Builds the Python object of a node, as orjson.loads would. */
static PyObject *node_object(Parser *parser, Py_ssize_t index) {
    JNode *node = &parser->nodes[index];
    switch (node->type) {
        case J_NULL: Py_RETURN_NONE;
        case J_FALSE: Py_RETURN_FALSE;
        case J_TRUE: Py_RETURN_TRUE;
        case J_INT: return PyLong_FromLongLong(node->integer);
        case J_FLOAT: return PyFloat_FromDouble(node->number);
        case J_STRING: return string_object(parser, index);
        case J_ARRAY: {
            PyObject *list = PyList_New(node->count);
            if (list == NULL) return NULL;
            Py_ssize_t position = 0;
            for (Py_ssize_t k = node->first; k >= 0; k = parser->nodes[k].next) {
                PyObject *item = node_object(parser, k);
                if (item == NULL) {
                    Py_DECREF(list);
                    return NULL;
                }
                PyList_SET_ITEM(list, position++, item);
            }
            return list;
        }
        default: {
            PyObject *dict = PyDict_New();
            if (dict == NULL) return NULL;
            for (Py_ssize_t k = node->first; k >= 0;) {
                Py_ssize_t value_index = parser->nodes[k].next;
                PyObject *key = string_object(parser, k);
                PyObject *value = key ? node_object(parser, value_index) : NULL;
                if (value == NULL || PyDict_SetItem(dict, key, value) < 0) {
                    Py_XDECREF(key);
                    Py_XDECREF(value);
                    Py_DECREF(dict);
                    return NULL;
                }
                Py_DECREF(key);
                Py_DECREF(value);
                k = parser->nodes[value_index].next;
            }
            return dict;
        }
    }
}

static PyObject *py_loads(PyObject *self, PyObject *arg) {
    char *data;
    Py_ssize_t length;
    if (PyBytes_AsStringAndSize(arg, &data, &length) < 0) return NULL;
    Parser parser;
    Py_ssize_t root = parse_document(&parser, data, length);
    PyObject *result = NULL;
    if (root >= 0) {
        PyObject *value = node_object(&parser, root);
        if (value != NULL) result = PyTuple_Pack(1, value);
        Py_XDECREF(value);
    } else if (!PyErr_Occurred()) {
        result = Py_NewRef(Py_None);
    }
    parser_release(&parser);
    return result;
}

/* ---- Routing a raw event ---- */

typedef struct {
    Py_ssize_t data;  /* the output's data, or -1 when missing or empty */
    Py_ssize_t input; /* the input object */
    const char *user, *app, *model, *version, *input_id;
    Py_ssize_t user_length, app_length, model_length, version_length, input_id_length;
    PyObject *source_key; /* new reference */
    /* Built when a plan first keeps the output (new references): the input, the
     * output's data (only for a plan that collects outputs) and the id of the top
     * concept (Py_None when it has none). */
    PyObject *input_object, *data_object, *top_object;
    int failed;
    int has_data;
    int group;
} RawCandidate;

/* Reads a string member without escapes into (*text, *length). Returns 1 when
 * it is one, 0 otherwise; `missing` is what a missing member returns, with an
 * empty text. */
static int plain_string(Parser *parser, Py_ssize_t index, int missing, const char **text,
                        Py_ssize_t *length) {
    if (index == -1) {
        *text = "";
        *length = 0;
        return missing;
    }
    if (index < 0) return 0;
    JNode *node = &parser->nodes[index];
    if (node->type != J_STRING || node->escaped) return 0;
    *text = node->start;
    *length = node->length;
    return 1;
}

static int node_truthy(JNode *node) {
    switch (node->type) {
        case J_NULL:
        case J_FALSE: return 0;
        case J_TRUE: return 1;
        case J_INT: return node->integer != 0;
        case J_FLOAT: return node->number != 0.0;
        case J_STRING: return node->length > 0;
        default: return node->count > 0;
    }
}

static int raw_nests_deeper(Parser *parser, Py_ssize_t index, int levels_left) {
    if (levels_left < 0) return 1;
    JNode *node = &parser->nodes[index];
    for (Py_ssize_t k = node->first; k >= 0;) {
        Py_ssize_t child = node->type == J_OBJECT ? parser->nodes[k].next : k;
        int type = parser->nodes[child].type;
        if ((type == J_OBJECT || type == J_ARRAY) &&
            raw_nests_deeper(parser, child, levels_left - 1))
            return 1;
        k = parser->nodes[child].next;
    }
    return 0;
}

/* Whether an object has two members with the same key (compared as bytes, which
 * misses only keys spelled with escapes, and those fail `member` first). */
static int has_duplicate_keys(Parser *parser, Py_ssize_t object) {
    /* The pairwise comparison is quadratic, so larger objects count as having
     * duplicates and take the orjson path. */
    if (parser->nodes[object].count > 16) return 1;
    for (Py_ssize_t a = parser->nodes[object].first; a >= 0;
         a = parser->nodes[parser->nodes[a].next].next) {
        JNode *first = &parser->nodes[a];
        if (first->escaped) return 1;
        for (Py_ssize_t b = parser->nodes[first->next].next; b >= 0;
             b = parser->nodes[parser->nodes[b].next].next) {
            JNode *second = &parser->nodes[b];
            if (second->length == first->length &&
                memcmp(second->start, first->start, (size_t)first->length) == 0)
                return 1;
        }
    }
    return 0;
}

static int raw_plain_input_data(Parser *parser, Py_ssize_t data) {
    if (data < 0 || parser->nodes[data].type != J_OBJECT) return 0;
    Py_ssize_t metadata = MEMBER(parser, data, "metadata");
    if (metadata == -2) return 0;
    if (metadata >= 0 && parser->nodes[metadata].type != J_NULL) {
        if (parser->nodes[metadata].type != J_OBJECT) return 0;
        if (raw_nests_deeper(parser, metadata, MAX_METADATA_DEPTH - 1)) return 0;
    }
    int has_content = 0;
    const char *names[2][3] = {{"image", "url", "base64"}, {"text", "raw", "url"}};
    for (int i = 0; i < 2; i++) {
        Py_ssize_t part = member(parser, data, names[i][0], strlen(names[i][0]));
        if (part == -2) return 0;
        if (part == -1 || parser->nodes[part].type == J_NULL) continue;
        if (parser->nodes[part].type != J_OBJECT) return 0;
        for (int f = 1; f <= 2; f++) {
            Py_ssize_t field = member(parser, part, names[i][f], strlen(names[i][f]));
            if (field == -2) return 0;
            if (field == -1) continue;
            if (parser->nodes[field].type != J_STRING) return 0;
            if (parser->nodes[field].length > 0) has_content = 1;
        }
    }
    return has_content;
}

/* Whether a concept is exactly {"id": ..., "name": ..., "value": ...}, the form
 * that predictions have, and if so sets found[] to its three values, as
 * `members` would. */
static int concept_in_order(Parser *parser, Py_ssize_t concept, Py_ssize_t found[3]) {
    JNode *nodes = parser->nodes;
    if (nodes[concept].count != 3) return 0;
    JNode *id = &nodes[nodes[concept].first];
    JNode *name = &nodes[nodes[id->next].next];
    JNode *value = &nodes[nodes[name->next].next];
    /* The lengths are constants, so that the compiler inlines the comparisons. */
    if (id->escaped || id->length != 2 || memcmp(id->start, "id", 2) != 0 ||
        name->escaped || name->length != 4 || memcmp(name->start, "name", 4) != 0 ||
        value->escaped || value->length != 5 || memcmp(value->start, "value", 5) != 0)
        return 0;
    found[0] = id->next;
    found[1] = name->next;
    found[2] = value->next;
    return 1;
}

/* Checks an output's data and its concepts. On the way it notes, in fields that
 * object nodes leave unused, what every plan's rule and the survivor look up
 * again: the data's `integer` is its concepts node (-1 when absent), and each
 * concept's `integer` its id node, `length` its name node (-1 when absent) and
 * `number` its value. */
static int raw_plain_concepts(Parser *parser, Py_ssize_t data) {
    if (parser->nodes[data].type != J_OBJECT) return 0;
    Py_ssize_t concepts = MEMBER(parser, data, "concepts");
    if (concepts == -1) {
        parser->nodes[data].integer = -1;
        return 1;
    }
    if (concepts < 0 || parser->nodes[concepts].type != J_ARRAY) return 0;
    for (Py_ssize_t k = parser->nodes[concepts].first; k >= 0; k = parser->nodes[k].next) {
        if (parser->nodes[k].type != J_OBJECT) return 0;
        const char *text;
        Py_ssize_t length;
        Py_ssize_t found[3];
        if (!concept_in_order(parser, k, found)) {
            static const Key concept_keys[] = {KEY("id"), KEY("name"), KEY("value")};
            if (members(parser, k, concept_keys, 3, found) < 0) return 0;
        }
        Py_ssize_t id = found[0], name = found[1], value = found[2];
        if (!plain_string(parser, id, 0, &text, &length) || length == 0) return 0;
        if (!plain_string(parser, name, 1, &text, &length)) return 0;
        if (value < 0) return 0;
        JNode *number = &parser->nodes[value];
        double as_double;
        if (number->type == J_FLOAT) {
            if (!(0.0 <= number->number && number->number <= 1.0)) return 0;
            as_double = number->number;
        } else if (number->type == J_INT) {
            if (number->integer < 0 || number->integer > 1) return 0;
            as_double = (double)number->integer;
        } else {
            return 0;
        }
        JNode *concept = &parser->nodes[k];
        concept->integer = id;
        concept->length = name;
        concept->number = as_double;
    }
    parser->nodes[data].integer = concepts;
    return 1;
}

/* A checked concept's value (see raw_plain_concepts). */
static double raw_concept_value(Parser *parser, Py_ssize_t concept) {
    return parser->nodes[concept].number;
}

static int is_ascii_space(unsigned char c) {
    return c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F);
}

/* The twin of `check` on a parsed output. Returns 1, 0 or -1 as `check` does. */
static int raw_check(Parser *parser, Py_ssize_t output, RawCandidate *candidate,
                     RawCandidate *previous) {
    if (parser->nodes[output].type != J_OBJECT) return 0;
    static const Key output_keys[] = {KEY("id"), KEY("model"), KEY("input"), KEY("data"),
                                      KEY("status")};
    Py_ssize_t fields[5];
    if (members(parser, output, output_keys, 5, fields) < 0) return 0;
    Py_ssize_t output_id = fields[0], model = fields[1], input = fields[2],
               data = fields[3], status = fields[4];
    if (output_id >= 0 && parser->nodes[output_id].type != J_STRING) return 0;

    if (model < 0 || parser->nodes[model].type != J_OBJECT) return 0;
    static const Key model_keys[] = {KEY("id"), KEY("user_id"), KEY("app_id"),
                                     KEY("model_version")};
    Py_ssize_t model_fields[4];
    if (members(parser, model, model_keys, 4, model_fields) < 0) return 0;
    if (!plain_string(parser, model_fields[0], 0, &candidate->model,
                      &candidate->model_length) ||
        !plain_string(parser, model_fields[1], 0, &candidate->user,
                      &candidate->user_length) ||
        !plain_string(parser, model_fields[2], 0, &candidate->app,
                      &candidate->app_length))
        return 0;
    if (!candidate->model_length || !candidate->user_length || !candidate->app_length)
        return 0;
    Py_ssize_t version = model_fields[3];
    candidate->version = "";
    candidate->version_length = 0;
    if (version >= 0 && parser->nodes[version].type != J_NULL) {
        if (parser->nodes[version].type != J_OBJECT) return 0;
        if (!plain_string(parser, MEMBER(parser, version, "id"), 1, &candidate->version,
                          &candidate->version_length))
            return 0;
    }

    if (input < 0 || parser->nodes[input].type != J_OBJECT) return 0;
    if (!plain_string(parser, MEMBER(parser, input, "id"), 0, &candidate->input_id,
                      &candidate->input_id_length))
        return 0;
    int non_space = 0, ascii = 1;
    for (Py_ssize_t i = 0; i < candidate->input_id_length; i++) {
        unsigned char c = (unsigned char)candidate->input_id[i];
        if (c >= 0x80) ascii = 0;
        else if (!is_ascii_space(c)) non_space = 1;
    }
    if (!non_space && !ascii) {
        PyObject *text = PyUnicode_DecodeUTF8(candidate->input_id,
                                              candidate->input_id_length, NULL);
        if (text == NULL) return -1;
        non_space = has_non_space(text);
        Py_DECREF(text);
    }
    if (!non_space) return 0;
    Py_ssize_t input_data = MEMBER(parser, input, "data");
    if (!raw_plain_input_data(parser, input_data)) return 0;

    if (data >= 0 && !raw_plain_concepts(parser, data)) return 0;

    int failed = 0;
    if (status >= 0) {
        if (parser->nodes[status].type != J_OBJECT) return 0;
        Py_ssize_t code = MEMBER(parser, status, "code");
        if (code == -2) return 0;
        if (code >= 0) {
            if (parser->nodes[code].type != J_INT) return 0;
            failed = parser->nodes[code].integer != SUCCESS_CODE;
        }
    }

    /* output.get("data") or {} and any(data.values()) */
    int has_data = 0;
    if (data >= 0) {
        if (has_duplicate_keys(parser, data)) return 0;
        for (Py_ssize_t k = parser->nodes[data].first; k >= 0;) {
            Py_ssize_t value = parser->nodes[k].next;
            if (node_truthy(&parser->nodes[value])) has_data = 1;
            k = parser->nodes[value].next;
        }
        if (parser->nodes[data].count == 0) data = -1;
    }

    if (previous != NULL && previous->user_length == candidate->user_length &&
        previous->app_length == candidate->app_length &&
        previous->model_length == candidate->model_length &&
        memcmp(previous->user, candidate->user, (size_t)candidate->user_length) == 0 &&
        memcmp(previous->app, candidate->app, (size_t)candidate->app_length) == 0 &&
        memcmp(previous->model, candidate->model, (size_t)candidate->model_length) == 0) {
        candidate->source_key = Py_NewRef(previous->source_key);
    } else {
        Py_ssize_t length =
            candidate->user_length + candidate->app_length + candidate->model_length + 2;
        char *key = PyMem_Malloc((size_t)length);
        if (key == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        char *at = key;
        memcpy(at, candidate->user, (size_t)candidate->user_length);
        at += candidate->user_length;
        *at++ = '/';
        memcpy(at, candidate->app, (size_t)candidate->app_length);
        at += candidate->app_length;
        *at++ = '/';
        memcpy(at, candidate->model, (size_t)candidate->model_length);
        candidate->source_key = PyUnicode_DecodeUTF8(key, length, NULL);
        PyMem_Free(key);
        if (candidate->source_key == NULL) return -1;
    }
    candidate->data = data;
    candidate->input = input;
    candidate->failed = failed;
    candidate->has_data = has_data;
    candidate->group = -1;
    candidate->input_object = candidate->data_object = candidate->top_object = NULL;
    return 1;
}

/* Finds a concept's threshold among the plan's (key bytes, threshold) pairs. */
static PyObject *pair_threshold(PyObject *pairs, const char *key, Py_ssize_t length) {
    Py_ssize_t size = PyTuple_GET_SIZE(pairs);
    for (Py_ssize_t i = 0; i < size; i++) {
        PyObject *pair = PyTuple_GET_ITEM(pairs, i);
        PyObject *name = PyTuple_GET_ITEM(pair, 0);
        if (PyBytes_GET_SIZE(name) == length &&
            memcmp(PyBytes_AS_STRING(name), key, (size_t)length) == 0)
            return PyTuple_GET_ITEM(pair, 1);
    }
    return NULL;
}

static int raw_rule_passes(Parser *parser, PyObject *plan, Py_ssize_t data) {
    long rule = PyLong_AsLong(PyTuple_GET_ITEM(plan, P_RULE));
    Py_ssize_t concepts = (Py_ssize_t)parser->nodes[data].integer;
    if (concepts < 0 || parser->nodes[concepts].count == 0) return 0;
    if (rule == RULE_THRESHOLDER) {
        PyObject *pairs = PyTuple_GET_ITEM(plan, P_PAIRS);
        int comparator = (int)PyLong_AsLong(PyTuple_GET_ITEM(plan, P_COMPARATOR));
        for (Py_ssize_t k = parser->nodes[concepts].first; k >= 0;
             k = parser->nodes[k].next) {
            JNode *id = &parser->nodes[parser->nodes[k].integer];
            PyObject *threshold = pair_threshold(pairs, id->start, id->length);
            if (threshold == NULL) {
                Py_ssize_t name = parser->nodes[k].length;
                if (name >= 0)
                    threshold = pair_threshold(pairs, parser->nodes[name].start,
                                               parser->nodes[name].length);
            }
            if (threshold != NULL &&
                compare(comparator, raw_concept_value(parser, k),
                        PyFloat_AS_DOUBLE(threshold)))
                return 1;
        }
        return 0;
    }
    double threshold = PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(plan, P_THRESHOLD));
    for (Py_ssize_t k = parser->nodes[concepts].first; k >= 0; k = parser->nodes[k].next) {
        double value = raw_concept_value(parser, k);
        if (rule == RULE_MAX_BELOW ? value >= threshold : value <= threshold) return 0;
    }
    return 1;
}

/* Builds the candidate's input object and top concept id, once. Returns -1 on
 * error. */
static int survivor_parts(Parser *parser, RawCandidate *candidate) {
    if (candidate->input_object != NULL) return 0;
    PyObject *top = NULL;
    Py_ssize_t concepts =
        candidate->data >= 0 ? (Py_ssize_t)parser->nodes[candidate->data].integer : -1;
    /* max(concepts, key=value): the first concept with the largest value */
    Py_ssize_t best = -1;
    double best_value = 0.0;
    if (concepts >= 0) {
        for (Py_ssize_t k = parser->nodes[concepts].first; k >= 0;
             k = parser->nodes[k].next) {
            double value = raw_concept_value(parser, k);
            if (best < 0 || value > best_value) {
                best = k;
                best_value = value;
            }
        }
    }
    if (best >= 0) {
        top = string_object(parser, (Py_ssize_t)parser->nodes[best].integer);
        if (top == NULL) return -1;
    } else {
        top = Py_NewRef(Py_None);
    }
    PyObject *input = node_object(parser, candidate->input);
    if (input == NULL) {
        Py_DECREF(top);
        return -1;
    }
    candidate->input_object = input;
    candidate->top_object = top;
    return 0;
}

/* The output's data as queue items carry it: `output.get("data") or {}`. */
static PyObject *survivor_data(Parser *parser, RawCandidate *candidate) {
    if (candidate->data_object == NULL)
        candidate->data_object = candidate->data >= 0
                                     ? node_object(parser, candidate->data)
                                     : PyDict_New();
    return candidate->data_object;
}

/* routing.destination_input_id: the first 32 hex digits of the SHA-256 of
 * `<collector key>/<event id>/<input id>`. */
static PyObject *destination_id(PyObject *key_slash, const char *event_id,
                                Py_ssize_t event_id_length, const char *input_id,
                                Py_ssize_t input_id_length) {
    Py_ssize_t prefix_length = PyBytes_GET_SIZE(key_slash);
    Py_ssize_t length = prefix_length + event_id_length + 1 + input_id_length;
    char small[512];
    char *seed = length <= (Py_ssize_t)sizeof(small) ? small : PyMem_Malloc((size_t)length);
    if (seed == NULL) return PyErr_NoMemory();
    char *at = seed;
    memcpy(at, PyBytes_AS_STRING(key_slash), (size_t)prefix_length);
    at += prefix_length;
    memcpy(at, event_id, (size_t)event_id_length);
    at += event_id_length;
    *at++ = '/';
    memcpy(at, input_id, (size_t)input_id_length);
    unsigned char digest[32];
    sha256_two(seed, length, "", 0, digest);
    if (seed != small) PyMem_Free(seed);
    PyObject *text = PyUnicode_New(32, 127);
    if (text == NULL) return NULL;
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(text);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        out[2 * i] = (Py_UCS1)hex[digest[i] >> 4];
        out[2 * i + 1] = (Py_UCS1)hex[digest[i] & 15];
    }
    return text;
}

/* What a raw event's queue items share. */
typedef struct {
    PyObject *id;        /* the event id */
    const char *id_utf8; /* the same in UTF-8 */
    Py_ssize_t id_length;
    PyObject *created_at; /* its creation time, in seconds since the epoch */
} EventFields;

/* routing.queue_item for a raw candidate that a plan keeps. */
static PyObject *raw_queue_item(Parser *parser, PyObject *plan, RawCandidate *candidate,
                                EventFields *event) {
    if (survivor_parts(parser, candidate) < 0) return NULL;
    PyObject *item = PyDict_New();
    if (item == NULL) return NULL;
    PyObject *id = destination_id(PyTuple_GET_ITEM(plan, P_KEY_SLASH), event->id_utf8,
                                  event->id_length, candidate->input_id,
                                  candidate->input_id_length);
    if (id == NULL || PyDict_SetItem(item, s_id, id) < 0) goto error;
    Py_CLEAR(id);
    if (PyDict_SetItem(item, s_event_id, event->id) < 0 ||
        PyDict_SetItem(item, s_created_at, event->created_at) < 0 ||
        PyDict_SetItem(item, s_input, candidate->input_object) < 0)
        goto error;
    if (PyTuple_GET_ITEM(plan, P_COLLECT_OUTPUTS) == Py_True) {
        PyObject *data = survivor_data(parser, candidate);
        if (data == NULL || PyDict_SetItem(item, s_output_data, data) < 0) goto error;
    }
    if (candidate->top_object != Py_None &&
        PyDict_SetItem(item, s_top_concept, candidate->top_object) < 0)
        goto error;
    return item;
error:
    Py_XDECREF(id);
    Py_DECREF(item);
    return NULL;
}

/* The twin of `decide` for raw candidates. Adds the plan's counts to its P_COUNTS
 * (and the plan to `touched` when they were all zero), and appends (collector
 * key, queue items) to `batches` when the plan keeps any candidate. Returns -1 on
 * error. */
static int raw_decide(Parser *parser, PyObject *plan, RawCandidate *candidates,
                      Py_ssize_t count, int group, EventFields *event,
                      PyObject *batches, PyObject *touched) {
    Py_ssize_t version_length;
    const char *version =
        PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(plan, P_VERSION), &version_length);
    if (version == NULL) return -1;
    PlanFields fields;
    read_plan(plan, &fields);
    Py_ssize_t matched = 0, dropped_sample = 0, dropped_rule = 0;
    PyObject *items = NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        RawCandidate *candidate = &candidates[i];
        if (candidate->group != group) continue;
        if (candidate->failed && !fields.collect_failed) continue;
        if (version_length > 0 &&
            (candidate->version_length != version_length ||
             memcmp(candidate->version, version, (size_t)version_length) != 0))
            continue;
        matched++;
        if (fields.broken) continue;
        if (fields.samples &&
            !sample_keeps(&fields, candidate->input_id, candidate->input_id_length)) {
            dropped_sample++;
            continue;
        }
        if (fields.rule != RULE_NONE && !candidate->failed) {
            if (!candidate->has_data || !raw_rule_passes(parser, plan, candidate->data)) {
                dropped_rule++;
                continue;
            }
        }
        if (items == NULL && (items = PyList_New(0)) == NULL) return -1;
        PyObject *item = raw_queue_item(parser, plan, candidate, event);
        if (item == NULL || PyList_Append(items, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(items);
            return -1;
        }
        Py_DECREF(item);
    }
    if (matched == 0) return 0;
    int64_t *counts = (int64_t *)PyByteArray_AS_STRING(PyTuple_GET_ITEM(plan, P_COUNTS));
    if (counts[C_MATCHED] == 0 && PyList_Append(touched, plan) < 0) {
        Py_XDECREF(items);
        return -1;
    }
    counts[C_MATCHED] += matched;
    counts[C_DROPPED_SAMPLE] += dropped_sample;
    counts[C_DROPPED_RULE] += dropped_rule;
    if (items == NULL) return 0;
    counts[C_ENQUEUED] += PyList_GET_SIZE(items);
    PyObject *entry = PyTuple_Pack(2, PyTuple_GET_ITEM(plan, P_KEY), items);
    Py_DECREF(items);
    if (entry == NULL) return -1;
    int status = PyList_Append(batches, entry);
    Py_DECREF(entry);
    return status;
}

/* ---- The envelope ---- */

static int digits(const char *at, int count, int *value) {
    int result = 0;
    for (int i = 0; i < count; i++) {
        if (at[i] < '0' || at[i] > '9') return 0;
        result = result * 10 + (at[i] - '0');
    }
    *value = result;
    return 1;
}

/* Days from 1970-01-01 to a date of the proleptic Gregorian calendar. */
static int64_t days_from_civil(int64_t year, int month, int day) {
    year -= month <= 2;
    int64_t era = (year >= 0 ? year : year - 399) / 400;
    int64_t year_of_era = year - era * 400;
    int64_t day_of_year = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1;
    int64_t day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    return era * 146097 + day_of_era - 719468;
}

/* Reads a UTC time `YYYY-MM-DDTHH:MM:SS[.ffffff](Z|+00:00)` of the years 1970 to
 * 2199 as `PredictionEvent.created_at.timestamp()` would give it: whole
 * microseconds divided by 10**6, exact in a double for those years. Returns 0
 * for any other text, which pydantic then reads (or rejects). */
static int utc_timestamp(const char *text, Py_ssize_t length, double *seconds) {
    int year, month, day, hour, minute, second, micro = 0;

    if (length < 20 || text[4] != '-' || text[7] != '-' || text[10] != 'T' ||
        text[13] != ':' || text[16] != ':')
        return 0;
    if (!digits(text, 4, &year) || !digits(text + 5, 2, &month) ||
        !digits(text + 8, 2, &day) || !digits(text + 11, 2, &hour) ||
        !digits(text + 14, 2, &minute) || !digits(text + 17, 2, &second))
        return 0;

    Py_ssize_t at = 19;
    if (text[at] == '.') {
        int fraction_digits = 0;
        at++;
        while (at < length && text[at] >= '0' && text[at] <= '9') {
            if (++fraction_digits > 6) return 0;
            micro = micro * 10 + (text[at] - '0');
            at++;
        }
        if (fraction_digits == 0) return 0;
        for (int i = fraction_digits; i < 6; i++) micro *= 10;
    }
    if (!((length - at == 1 && text[at] == 'Z') ||
          (length - at == 6 && memcmp(text + at, "+00:00", 6) == 0)))
        return 0;

    static const int month_days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (year < 1970 || year > 2199 || month < 1 || month > 12 || hour > 23 ||
        minute > 59 || second > 59 || day < 1)
        return 0;
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (day > month_days[month - 1] + (month == 2 && leap)) return 0;

    int64_t whole = days_from_civil(year, month, day) * 86400 + hour * 3600 +
                    minute * 60 + second;
    *seconds = (double)(whole * 1000000 + micro) / 1e6;
    return 1;
}

/* Checks the envelope as PredictionEvent would, for the forms it is sure to
 * accept: a string id of 1 to 256 characters, a UTC time of `utc_timestamp`, and
 * a caller object with a non-empty user id and a string app id, if any. Fills
 * `event` and returns 1, returns 0 for anything else (pydantic decides then), or
 * -1 on error. */
static int raw_envelope(Parser *parser, Py_ssize_t root, Py_ssize_t caller,
                        EventFields *event) {
    Py_ssize_t event_id = MEMBER(parser, root, "id");
    Py_ssize_t created_at = MEMBER(parser, root, "created_at");
    if (event_id < 0 || parser->nodes[event_id].type != J_STRING) return 0;
    if (created_at < 0 || parser->nodes[created_at].type != J_STRING ||
        parser->nodes[created_at].escaped)
        return 0;
    Py_ssize_t app_id = MEMBER(parser, caller, "app_id");
    if (app_id == -2 || (app_id >= 0 && parser->nodes[app_id].type != J_STRING))
        return 0;
    double seconds;
    if (!utc_timestamp(parser->nodes[created_at].start, parser->nodes[created_at].length,
                       &seconds))
        return 0;
    PyObject *id = string_object(parser, event_id);
    if (id == NULL) return -1;
    Py_ssize_t characters = PyUnicode_GET_LENGTH(id);
    if (characters < 1 || characters > 256) {
        Py_DECREF(id);
        return 0;
    }
    event->id_utf8 = PyUnicode_AsUTF8AndSize(id, &event->id_length);
    event->created_at = event->id_utf8 ? PyFloat_FromDouble(seconds) : NULL;
    if (event->created_at == NULL) {
        Py_DECREF(id);
        return -1;
    }
    event->id = id;
    return 1;
}

static PyObject *py_route_event(PyObject *self, PyObject *args) {
    const char *data;
    Py_ssize_t length;
    PyObject *plans, *touched;
    if (!PyArg_ParseTuple(args, "y#O!O!", &data, &length, &PyDict_Type, &plans,
                          &PyList_Type, &touched))
        return NULL;
    Parser parser;
    RawCandidate *candidates = NULL;
    PyObject **group_plans = NULL;
    PyObject *result = NULL, *batches = NULL, *caller_user_id = NULL;
    EventFields event = {NULL, NULL, 0, NULL};
    Py_ssize_t count = 0, checked = 0, groups = 0, skipped_status = 0, unwatched = 0;

    Py_ssize_t root = parse_document(&parser, data, length);
    if (root < 0 || parser.nodes[root].type != J_OBJECT) goto fall_back;
    Py_ssize_t caller = MEMBER(&parser, root, "caller");
    Py_ssize_t outputs = MEMBER(&parser, root, "outputs");
    if (caller < 0 || outputs < 0) goto fall_back;
    if (parser.nodes[outputs].type != J_ARRAY || parser.nodes[caller].type != J_OBJECT)
        goto fall_back;
    count = parser.nodes[outputs].count;
    if (count < 1 || count > 128) goto fall_back;
    Py_ssize_t user_id = MEMBER(&parser, caller, "user_id");
    if (user_id < 0 || parser.nodes[user_id].type != J_STRING ||
        parser.nodes[user_id].length == 0)
        goto fall_back;
    int envelope = raw_envelope(&parser, root, caller, &event);
    if (envelope < 0) goto done;
    if (envelope == 0) goto fall_back;

    candidates = PyMem_Calloc((size_t)count, sizeof(RawCandidate));
    group_plans = PyMem_Calloc((size_t)count, sizeof(PyObject *));
    if (candidates == NULL || group_plans == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t position = 0;
    for (Py_ssize_t k = parser.nodes[outputs].first; k >= 0; k = parser.nodes[k].next) {
        RawCandidate *previous = position > 0 ? &candidates[position - 1] : NULL;
        int ok = raw_check(&parser, k, &candidates[position], previous);
        if (ok < 0) goto done;
        if (ok == 0) goto fall_back;
        checked++;
        position++;
    }

    for (Py_ssize_t i = 0; i < count; i++) {
        RawCandidate *candidate = &candidates[i];
        if (assign_group(plans, candidate->source_key, candidate->failed, group_plans,
                         &groups, &candidate->group, &skipped_status, &unwatched) < 0)
            goto done;
    }

    caller_user_id = string_object(&parser, user_id);
    if (caller_user_id == NULL) goto done;
    /* Nothing is counted before every plan is known to be decided here. */
    for (Py_ssize_t g = 0; g < groups; g++) {
        PyObject *views = group_plans[g];
        for (Py_ssize_t v = 0; v < PyTuple_GET_SIZE(views); v++) {
            PyObject *plan = PyTuple_GET_ITEM(views, v);
            if (PyTuple_GET_ITEM(plan, P_PYTHON) == Py_True &&
                caller_matches(plan, caller_user_id))
                goto fall_back;
        }
    }
    batches = PyList_New(0);
    if (batches == NULL) goto done;
    for (Py_ssize_t g = 0; g < groups; g++) {
        PyObject *views = group_plans[g];
        for (Py_ssize_t v = 0; v < PyTuple_GET_SIZE(views); v++) {
            PyObject *plan = PyTuple_GET_ITEM(views, v);
            if (!caller_matches(plan, caller_user_id)) continue;
            if (raw_decide(&parser, plan, candidates, count, (int)g, &event, batches,
                           touched) < 0)
                goto done;
        }
    }
    result = Py_BuildValue("(nnnO)", count, skipped_status, unwatched, batches);
    goto done;

fall_back:
    if (!PyErr_Occurred()) result = Py_NewRef(Py_None);
done:
    for (Py_ssize_t i = 0; i < checked; i++) {
        Py_XDECREF(candidates[i].source_key);
        Py_XDECREF(candidates[i].input_object);
        Py_XDECREF(candidates[i].data_object);
        Py_XDECREF(candidates[i].top_object);
    }
    PyMem_Free(candidates);
    PyMem_Free(group_plans);
    parser_release(&parser);
    Py_XDECREF(event.id);
    Py_XDECREF(event.created_at);
    Py_XDECREF(batches);
    Py_XDECREF(caller_user_id);
    return result;
}

static PyMethodDef methods[] = {
    {"check_output", py_check_output, METH_O,
     "The routing fields of an output that PredictionOutput is sure to accept."},
    {"route_outputs", py_route_outputs, METH_VARARGS,
     "Stage one's decisions for the outputs of one event."},
    {"route_event", py_route_event, METH_VARARGS,
     "Stage one's decisions for one raw event, or None for the orjson path."},
    {"loads", py_loads, METH_O,
     "The JSON value of bytes as a 1-tuple, or None outside the parsed subset."},
    {"sha256", py_sha256, METH_VARARGS,
     "sha256(data, portable=False): the SHA-256 digest of bytes, computed without the"
     " CPU's SHA instructions when portable is true."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_stage_one",
                                    "Stage one's per-output work in C.", -1, methods};

PyMODINIT_FUNC PyInit__stage_one(void) {
    if (intern_keys() < 0) return NULL;
    sha256_blocks = choose_blocks();
    init_string_stops();
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "PLAN_SIZE", P_SIZE) < 0 ||
        PyModule_AddIntConstant(m, "SHA_INSTRUCTIONS",
                                sha256_blocks != sha256_blocks_portable) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
