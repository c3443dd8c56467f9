/* JSON encodings in C: the audit trail's canonical encoding of ordinary JSON values, and
 * the compact encoding of the messages the gateway sends.
 *
 * canonical(value) gives the RFC 8785 bytes of a value of the "plain" subset that
 * audit/canonical.py encodes with the C JSON encoder (see `_plain` there): strings
 * without lone surrogates, None, True, False, ints within +-(2^53 - 1), floats from 1e-4
 * to 1e16 that are not whole numbers, and lists and dicts of those, the dicts with string
 * keys below U+E000. It returns None for any other value, which audit/canonical.py then
 * encodes itself (RFC 8785's number formatting, key order by UTF-16 code unit, its
 * errors). For values of the subset the bytes are those of
 *     json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
 * encoded as UTF-8, which are RFC 8785's (audit/canonical.py says why); tests compare them
 * with the reference implementation.
 *
 * compact(value) gives the bytes of json.dumps(value, separators=(",", ":"),
 * ensure_ascii=False), keys in the dicts' own order, for the JSON-RPC messages the gateway
 * sends (gateway/jsonrpc.py `dumps`): the same encoder with dict items in order, any int
 * that fits in 64 bits and any finite float written as its repr. Values it does not cover
 * (subclasses of dict and list, tuples, other keys than strings, lone surrogates, NaN, the
 * infinities, larger ints) give None, and json.dumps encodes them.
 *
 * stored_as_is(value) says whether `storable` (audit/canonical.py) would return the value
 * unchanged: a JSON value of dicts with string keys, lists, strings without NUL or lone
 * surrogates (str, dict and list exactly, not subclasses, which it makes exact), None,
 * booleans, ints within +-(2^53 - 1) and finite floats within as much.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

#define SAFE_INTEGER 9007199254740991LL
/* Deeper values are left to Python, whose recursion limit then applies as before. */
#define MAX_DEPTH 200

typedef struct {
    char *data;
    Py_ssize_t length;
    Py_ssize_t capacity;
    /* 0: canonical(), RFC 8785; 1: compact(), json.dumps's compact form. */
    int compact;
} Buffer;

static int reserve(Buffer *b, Py_ssize_t more) {
    if (b->length + more <= b->capacity) return 0;
    Py_ssize_t capacity = b->capacity ? b->capacity : 256;
    while (capacity < b->length + more) {
        if (capacity > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        capacity *= 2;
    }
    char *data = PyMem_Realloc(b->data, (size_t)capacity);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->capacity = capacity;
    return 0;
}

static int put(Buffer *b, const char *s, Py_ssize_t n) {
    if (reserve(b, n) < 0) return -1;
    memcpy(b->data + b->length, s, (size_t)n);
    b->length += n;
    return 0;
}

/* Results of the encoder's steps: written, not of the subset (the caller returns None),
 * or an error set (the caller raises it). */
enum { WRITTEN = 0, NOT_PLAIN = 1, FAILED = -1 };

static const char HEX[] = "0123456789abcdef";

/* The ASCII characters that a JSON string escapes: the controls, `"` and `\`. */
static char ESCAPED[128];

/* The escape of `"`, `\` or a control character, written at out; returns its end. */
static char *escape(char *out, unsigned int c) {
    *out++ = '\\';
    switch (c) {
    case '"': *out++ = '"'; break;
    case '\\': *out++ = '\\'; break;
    case '\b': *out++ = 'b'; break;
    case '\t': *out++ = 't'; break;
    case '\n': *out++ = 'n'; break;
    case '\f': *out++ = 'f'; break;
    case '\r': *out++ = 'r'; break;
    default:
        *out++ = 'u';
        *out++ = '0';
        *out++ = '0';
        *out++ = HEX[c >> 4];
        *out++ = HEX[c & 0xf];
    }
    return out;
}

/* A string as JSON: `"`, `\` and the controls escaped (\b \t \n \f \r short, the others as
 * \u00xx), everything else as UTF-8. A lone surrogate is not of the subset. */
static int write_string(Buffer *b, PyObject *text) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    if (PyUnicode_IS_ASCII(text)) {
        /* The common case: copied as it is between the characters that need escapes. */
        const char *ascii = (const char *)data;
        if (reserve(b, n + 2) < 0) return FAILED;
        b->data[b->length++] = '"';
        Py_ssize_t i = 0;
        while (i < n) {
            Py_ssize_t span = i;
            while (span < n && !ESCAPED[(unsigned char)ascii[span]]) span++;
            memcpy(b->data + b->length, ascii + i, (size_t)(span - i));
            b->length += span - i;
            if (span == n) break;
            /* An escape is at most five bytes longer than its character. */
            if (reserve(b, 6 + (n - span - 1) + 1) < 0) return FAILED;
            b->length = escape(b->data + b->length, (unsigned char)ascii[span]) - b->data;
            i = span + 1;
        }
        b->data[b->length++] = '"';
        return WRITTEN;
    }
    /* At most six bytes per character (a control's escape), plus the quotes. */
    if (n > (PY_SSIZE_T_MAX - 2) / 6) {
        PyErr_NoMemory();
        return FAILED;
    }
    if (reserve(b, 6 * n + 2) < 0) return FAILED;
    char *out = b->data + b->length;
    *out++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c < 0x80) {
            if (c >= 0x20 && c != '"' && c != '\\')
                *out++ = (char)c;
            else
                out = escape(out, c);
        } else if (c < 0x800) {
            *out++ = (char)(0xc0 | (c >> 6));
            *out++ = (char)(0x80 | (c & 0x3f));
        } else if (c < 0x10000) {
            if (c >= 0xd800 && c <= 0xdfff) return NOT_PLAIN;
            *out++ = (char)(0xe0 | (c >> 12));
            *out++ = (char)(0x80 | ((c >> 6) & 0x3f));
            *out++ = (char)(0x80 | (c & 0x3f));
        } else {
            *out++ = (char)(0xf0 | (c >> 18));
            *out++ = (char)(0x80 | ((c >> 12) & 0x3f));
            *out++ = (char)(0x80 | ((c >> 6) & 0x3f));
            *out++ = (char)(0x80 | (c & 0x3f));
        }
    }
    *out++ = '"';
    b->length = out - b->data;
    return WRITTEN;
}

static int write_value(Buffer *b, PyObject *value, int depth);

static int write_dict(Buffer *b, PyObject *dict, int depth) {
    PyObject *keys = PyDict_Keys(dict);
    if (keys == NULL) return FAILED;
    Py_ssize_t n = PyList_GET_SIZE(keys);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = PyList_GET_ITEM(keys, i);
        if (!PyUnicode_Check(key)) {
            Py_DECREF(keys);
            return NOT_PLAIN;
        }
        /* Below U+E000, code point order (Python's) is UTF-16 code unit order (RFC 8785's). */
        int kind = PyUnicode_KIND(key);
        if (kind != PyUnicode_1BYTE_KIND) {
            const void *data = PyUnicode_DATA(key);
            for (Py_ssize_t j = 0; j < PyUnicode_GET_LENGTH(key); j++) {
                if (PyUnicode_READ(kind, data, j) >= 0xe000) {
                    Py_DECREF(keys);
                    return NOT_PLAIN;
                }
            }
        }
    }
    if (PyList_Sort(keys) < 0) {
        Py_DECREF(keys);
        return FAILED;
    }
    int status = put(b, "{", 1);
    for (Py_ssize_t i = 0; status == WRITTEN && i < n; i++) {
        PyObject *key = PyList_GET_ITEM(keys, i);
        PyObject *item = PyDict_GetItemWithError(dict, key);
        if (item == NULL) {
            /* The dict changed while it was written (a key's comparison ran Python). */
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_RuntimeError, "dictionary changed during encoding");
            status = FAILED;
            break;
        }
        Py_INCREF(item);
        if (i > 0) status = put(b, ",", 1);
        if (status == WRITTEN) status = write_string(b, key);
        if (status == WRITTEN) status = put(b, ":", 1);
        if (status == WRITTEN) status = write_value(b, item, depth + 1);
        Py_DECREF(item);
    }
    Py_DECREF(keys);
    return status == WRITTEN ? put(b, "}", 1) : status;
}

/* compact(): the items in the dict's own order, as json.dumps writes them. No Python code
 * runs while they are written, so the dict cannot change under the iteration. */
static int write_dict_in_order(Buffer *b, PyObject *dict, int depth) {
    int status = put(b, "{", 1);
    Py_ssize_t position = 0;
    PyObject *key, *item;
    int first = 1;
    while (status == WRITTEN && PyDict_Next(dict, &position, &key, &item)) {
        /* json.dumps makes int, float, bool and None keys strings: left to it. */
        if (!PyUnicode_Check(key)) return NOT_PLAIN;
        if (!first) status = put(b, ",", 1);
        first = 0;
        if (status == WRITTEN) status = write_string(b, key);
        if (status == WRITTEN) status = put(b, ":", 1);
        if (status == WRITTEN) status = write_value(b, item, depth + 1);
    }
    return status == WRITTEN ? put(b, "}", 1) : status;
}

static int write_list(Buffer *b, PyObject *list, int depth) {
    int status = put(b, "[", 1);
    /* The list's size is read on every turn: it cannot change here (no Python runs), but
     * reading it costs nothing. */
    for (Py_ssize_t i = 0; status == WRITTEN && i < PyList_GET_SIZE(list); i++) {
        PyObject *item = PyList_GET_ITEM(list, i);
        Py_INCREF(item);
        if (i > 0) status = put(b, ",", 1);
        if (status == WRITTEN) status = write_value(b, item, depth + 1);
        Py_DECREF(item);
    }
    return status == WRITTEN ? put(b, "]", 1) : status;
}

/* An exact int's digits: any that fits in 64 bits for compact(), as json.dumps writes it;
 * within +-(2^53 - 1) for canonical(). */
static int write_int(Buffer *b, PyObject *value) {
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (v == -1 && PyErr_Occurred()) return FAILED;
    if (overflow || (!b->compact && (v > SAFE_INTEGER || v < -SAFE_INTEGER))) return NOT_PLAIN;
    char digits[24];
    int n = snprintf(digits, sizeof digits, "%lld", v);
    return put(b, digits, n);
}

/* A float as Python's repr writes it: for compact(), any finite one (json.dumps writes NaN
 * and the infinities as NaN and Infinity: left to it); for canonical(), only between 1e-4
 * and 1e16, where Python's repr and ECMAScript's number formatting agree, except on whole
 * numbers (12.0 against 12). */
static int write_float(Buffer *b, double v) {
    if (b->compact) {
        if (!isfinite(v)) return NOT_PLAIN;
    } else {
        double magnitude = fabs(v);
        if (!(magnitude >= 1e-4 && magnitude < 1e16) || floor(v) == v) return NOT_PLAIN;
    }
    char *repr = PyOS_double_to_string(v, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (repr == NULL) return FAILED;
    int status = put(b, repr, (Py_ssize_t)strlen(repr));
    PyMem_Free(repr);
    return status;
}

static int write_value(Buffer *b, PyObject *value, int depth) {
    if (depth > MAX_DEPTH) return NOT_PLAIN;
    if (PyUnicode_Check(value)) return write_string(b, value);
    if (value == Py_None) return put(b, "null", 4);
    if (value == Py_True) return put(b, "true", 4);
    if (value == Py_False) return put(b, "false", 5);
    if (b->compact) {
        /* Subclasses are left to json.dumps, which may call their own methods. */
        if (PyDict_CheckExact(value)) return write_dict_in_order(b, value, depth);
        if (PyList_CheckExact(value)) return write_list(b, value, depth);
    } else {
        if (PyDict_Check(value)) return write_dict(b, value, depth);
        if (PyList_Check(value)) return write_list(b, value, depth);
    }
    if (PyLong_CheckExact(value)) return write_int(b, value);
    if (PyFloat_CheckExact(value)) return write_float(b, PyFloat_AS_DOUBLE(value));
    return NOT_PLAIN;
}

static PyObject *encode(PyObject *value, int compact) {
    Buffer b = {NULL, 0, 0, compact};
    int status = write_value(&b, value, 0);
    PyObject *result = NULL;
    if (status == WRITTEN) {
        result = PyBytes_FromStringAndSize(b.data, b.length);
    } else if (status == NOT_PLAIN) {
        result = Py_NewRef(Py_None);
    }
    PyMem_Free(b.data);
    return result;
}

static PyObject *canonical(PyObject *module, PyObject *value) { return encode(value, 0); }

static PyObject *compact(PyObject *module, PyObject *value) { return encode(value, 1); }

/* Whether a str holds neither NUL nor a lone surrogate (`_text` would change it). */
static int text_as_is(PyObject *text) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    if (kind == PyUnicode_1BYTE_KIND) return memchr(data, 0, (size_t)n) == NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c == 0 || (c >= 0xd800 && c <= 0xdfff)) return 0;
    }
    return 1;
}

/* 1: storable() returns the value unchanged; 0: it changes it; -1: too deep to say. */
static int as_is(PyObject *value, int depth) {
    if (depth > MAX_DEPTH) return -1;
    /* storable() makes subclasses of str, dict and list exact ones. */
    if (PyUnicode_CheckExact(value)) return text_as_is(value);
    if (value == Py_None || value == Py_True || value == Py_False) return 1;
    if (PyDict_CheckExact(value)) {
        Py_ssize_t position = 0;
        PyObject *key, *item;
        while (PyDict_Next(value, &position, &key, &item)) {
            if (!PyUnicode_CheckExact(key) || !text_as_is(key)) return 0;
            int found = as_is(item, depth + 1);
            if (found != 1) return found;
        }
        return 1;
    }
    if (PyList_CheckExact(value)) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(value); i++) {
            int found = as_is(PyList_GET_ITEM(value, i), depth + 1);
            if (found != 1) return found;
        }
        return 1;
    }
    /* storable() keeps ints and floats, subclasses too, that it need not make strings. */
    if (PyLong_Check(value)) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (v == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        return !overflow && v <= SAFE_INTEGER && v >= -SAFE_INTEGER;
    }
    if (PyFloat_Check(value)) {
        double v = PyFloat_AS_DOUBLE(value);
        return v == v && fabs(v) <= (double)SAFE_INTEGER;
    }
    return 0;
}

static PyObject *stored_as_is(PyObject *module, PyObject *value) {
    return PyBool_FromLong(as_is(value, 0) == 1);
}

static PyMethodDef methods[] = {
    {"canonical", canonical, METH_O,
     "canonical(value): RFC 8785 bytes of a plain JSON value, None for any other value."},
    {"compact", compact, METH_O,
     "compact(value): json.dumps(value, separators=(',', ':'), ensure_ascii=False) as UTF-8 "
     "for a value of exact dicts with str keys, lists, strings without lone surrogates, "
     "None, booleans, 64-bit ints and finite floats; None for any other value."},
    {"stored_as_is", stored_as_is, METH_O,
     "stored_as_is(value): whether audit.canonical.storable would return value unchanged."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "audit_native",
    .m_doc = "JSON encodings in C: the audit trail's canonical one and the compact one of messages.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit_audit_native(void) {
    for (int c = 0; c < 128; c++) ESCAPED[c] = c < 0x20 || c == '"' || c == '\\';
    return PyModule_Create(&module);
}
