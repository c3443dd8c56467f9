/* The e-mail and payment-card detectors of masking/detectors.py, in C, the searches that
 * the digit-based detectors share (runs, positions, outside_long_runs), and the merging of
 * all detectors' findings and their replacement (resolve, splice).
 *
 * Each function gives exactly what its Python implementation gives
 * (EmailDetector.find_python, PaymentCardDetector.find_python, _Searches,
 * _outside_long_runs_python in masking/detectors.py, Scanner.merge_python there and
 * Masker.splice_python in masking/engine.py): the same results, in the same order. The
 * Python implementation is the specification and the fallback where this module is not
 * built; tests/test_masking_native.py compares the two on the evaluation set, on random
 * text and on random findings.
 *
 * `views` makes the derived forms of a text that the detectors share (`_Views`) in one pass.
 *
 * The detectors read the text through the PEP 393 accessors (any of the three kinds) and
 * allocate nothing per character; a 10 KB result with 160 values takes tens of
 * microseconds.
 */
#define _GNU_SOURCE /* memmem */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

typedef struct {
    int kind;
    const void *data;
    Py_ssize_t n;
} Text;

static inline Py_UCS4 at(const Text *t, Py_ssize_t i) {
    return PyUnicode_READ(t->kind, t->data, i);
}

static inline int is_digit(Py_UCS4 c) { return c >= '0' && c <= '9'; }
static inline int is_letter(Py_UCS4 c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }
static inline int is_alnum(Py_UCS4 c) { return is_digit(c) || is_letter(c); }
static inline int is_word(Py_UCS4 c) { return is_alnum(c) || c == '_'; }

/* A finding of `type` (the Finding named tuple): (start, end, entity, name). */
static PyObject *new_finding(PyTypeObject *type, Py_ssize_t start, Py_ssize_t end,
                             PyObject *entity, PyObject *name) {
    PyObject *finding = type->tp_alloc(type, 4);
    if (finding == NULL) return NULL;
    PyObject *s = PyLong_FromSsize_t(start), *e = PyLong_FromSsize_t(end);
    if (s == NULL || e == NULL) {
        Py_XDECREF(s);
        Py_XDECREF(e);
        Py_DECREF(finding);
        return NULL;
    }
    PyTuple_SET_ITEM(finding, 0, s);
    PyTuple_SET_ITEM(finding, 1, e);
    Py_INCREF(entity);
    PyTuple_SET_ITEM(finding, 2, entity);
    Py_INCREF(name);
    PyTuple_SET_ITEM(finding, 3, name);
    return finding;
}

static int append_finding(PyObject *list, PyTypeObject *type, Py_ssize_t start, Py_ssize_t end,
                          PyObject *entity, PyObject *name) {
    PyObject *finding = new_finding(type, start, end, entity, name);
    if (finding == NULL) return -1;
    int failed = PyList_Append(list, finding);
    Py_DECREF(finding);
    return failed;
}

static int parse_text(PyObject *object, Text *t) {
    if (!PyUnicode_Check(object)) {
        PyErr_SetString(PyExc_TypeError, "text must be a str");
        return -1;
    }
    t->kind = PyUnicode_KIND(object);
    t->data = PyUnicode_DATA(object);
    t->n = PyUnicode_GET_LENGTH(object);
    return 0;
}

/* The arguments of the *_findings functions: (text, finding_type, entity, name, ...). */
static int finding_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t expected,
                        const char *usage, Text *t) {
    /* Findings are made as tuples of finding_type: it must be a tuple type. */
    if (nargs != expected || !PyType_Check(args[1]) ||
        !PyType_IsSubtype((PyTypeObject *)args[1], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    return parse_text(args[0], t);
}

/* ------------------------------------------------------------------------------------ */
/* e-mail                                                                               */

/* What an address's local part holds: letters, digits and ._%+- (`_LOCAL_TABLE`). */
static inline int is_local(Py_UCS4 c) {
    return is_alnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-';
}

/* `_FILE_EXTENSIONS`: TLD-shaped file extensions. */
static const char *const FILE_EXTENSIONS[] = {
    "png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "tif", "tiff", "css", "scss",
    "js", "mjs", "cjs", "jsx", "ts", "tsx", "json", "html", "htm", "xml", "yaml", "yml", "txt",
    "csv", "pdf", "zip", "gz", "tgz", "tar", "lock", "map", "woff", "woff2", "ttf", "otf",
    "eot", "wasm", NULL,
};

static int is_file_extension(const Text *t, Py_ssize_t start, Py_ssize_t end) {
    char lower[8];
    Py_ssize_t length = end - start;
    if (length > 5) return 0; /* the longest is "woff2" */
    for (Py_ssize_t i = 0; i < length; i++) {
        Py_UCS4 c = at(t, start + i);
        lower[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    }
    lower[length] = '\0';
    for (const char *const *e = FILE_EXTENSIONS; *e != NULL; e++) {
        if ((*e)[0] == lower[0] && strcmp(lower, *e) == 0) return 1;
    }
    return 0;
}

/* `_in_url_userinfo`: text[start - 3 - k : start] is "://" and k (at most 256) characters
 * without whitespace, / or @. Only the last such character before start can end the
 * "://". */
static int in_url_userinfo(const Text *t, Py_ssize_t start) {
    Py_ssize_t lowest = start - 257 > 0 ? start - 257 : 0;
    for (Py_ssize_t j = start - 1; j >= lowest; j--) {
        Py_UCS4 c = at(t, j);
        if (c == '/' || c == '@' || Py_UNICODE_ISSPACE(c)) {
            return c == '/' && j >= 2 && at(t, j - 1) == '/' && at(t, j - 2) == ':';
        }
    }
    return 0;
}

/* `_EMAIL_DOMAIN.match(text, position)`: one to eight labels of letters, digits and inner
 * dashes (at most 63), each followed by a dot, then a TLD of 2 to 24 letters not followed
 * by a letter, digit or dash. As the regex backtracks, the TLD is tried after the last label
 * first, then after each earlier one. Returns the end of the match, or -1; *tld the start
 * of its TLD. */
static Py_ssize_t email_domain(const Text *t, Py_ssize_t position, Py_ssize_t *tld) {
    Py_ssize_t ends[9];
    int labels = 0;
    Py_ssize_t p = position;
    while (labels < 8) {
        Py_ssize_t q = p;
        while (q < t->n && (is_alnum(at(t, q)) || at(t, q) == '-')) q++;
        Py_ssize_t run = q - p;
        if (run < 1 || run > 63 || q >= t->n || at(t, q) != '.' || !is_alnum(at(t, p)) ||
            !is_alnum(at(t, q - 1)))
            break;
        p = q + 1;
        ends[++labels] = p;
    }
    for (int i = labels; i >= 1; i--) {
        Py_ssize_t s = ends[i], q = s;
        while (q < t->n && is_letter(at(t, q))) q++;
        Py_ssize_t run = q - s;
        if (run < 2 || run > 24) continue;
        if (q < t->n && (is_alnum(at(t, q)) || at(t, q) == '-')) continue;
        *tld = s;
        return q;
    }
    return -1;
}

static Py_ssize_t find_char(const Text *t, Py_ssize_t from, char wanted) {
    if (from >= t->n) return -1;
    if (t->kind == PyUnicode_1BYTE_KIND) {
        const char *data = t->data;
        const char *found = memchr(data + from, wanted, t->n - from);
        return found == NULL ? -1 : found - data;
    }
    for (Py_ssize_t i = from; i < t->n; i++) {
        if (at(t, i) == (Py_UCS4)wanted) return i;
    }
    return -1;
}

/* Where "://" first occurs, or -1. */
static Py_ssize_t first_url(const Text *t) {
    for (Py_ssize_t i = find_char(t, 0, ':'); i != -1; i = find_char(t, i + 1, ':')) {
        if (i + 2 < t->n && at(t, i + 1) == '/' && at(t, i + 2) == '/') return i;
    }
    return -1;
}

static PyObject *email_findings(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    Text t;
    if (finding_args(args, nargs, 4, "email_findings(text, finding_type, entity, name)", &t) < 0)
        return NULL;
    PyTypeObject *type = (PyTypeObject *)args[1];
    PyObject *found = PyList_New(0);
    if (found == NULL) return NULL;
    /* A local part preceded by "://" may be a URL's userinfo (`_in_url_userinfo`). */
    Py_ssize_t url = first_url(&t);
    Py_ssize_t sign = find_char(&t, 0, '@');
    while (sign != -1) {
        Py_ssize_t low = sign >= 65 ? sign - 65 : 0;
        Py_ssize_t j = sign - 1;
        while (j >= low && is_local(at(&t, j))) j--;
        Py_ssize_t start = j >= low ? j + 1 : 0;
        Py_ssize_t next_from = sign + 1;
        if (start == 0 && sign - low == 65) goto next;
        while (start < sign && at(&t, start) == '.') start++;
        if (start == sign || at(&t, sign - 1) == '.') goto next;
        for (Py_ssize_t i = start; i + 1 < sign; i++) {
            if (at(&t, i) == '.' && at(&t, i + 1) == '.') goto next;
        }
        if (url != -1 && url + 3 <= start && in_url_userinfo(&t, start)) goto next;
        Py_ssize_t tld, end = email_domain(&t, sign + 1, &tld);
        if (end < 0 || is_file_extension(&t, tld, end)) goto next;
        if (append_finding(found, type, start, end, args[2], args[3]) < 0) {
            Py_DECREF(found);
            return NULL;
        }
        next_from = end;
    next:
        sign = find_char(&t, next_from, '@');
    }
    return found;
}

/* The first start of literal (m > 0 bytes) in data[from:n], or -1, for a literal whose
 * first byte is rare in data (memchr skips to each): cheaper than memmem, whose set-up on
 * every call costs more than such a search does. */
static Py_ssize_t find_literal(const char *data, Py_ssize_t n, const char *literal,
                               Py_ssize_t m, Py_ssize_t from) {
    const char first = literal[0];
    for (Py_ssize_t i = from; i + m <= n; i++) {
        const char *hit = memchr(data + i, first, n - m + 1 - i);
        if (hit == NULL) return -1;
        i = hit - data;
        if (memcmp(hit + 1, literal + 1, m - 1) == 0) return i;
    }
    return -1;
}

/* ------------------------------------------------------------------------------------ */
/* payment cards                                                                        */

/* The shape of one character (`_SHAPE_TABLE` over the ASCII view): digits 0, capitals A,
 * other ASCII as it is, anything else ?. */
static inline char shape_of(Py_UCS4 c) {
    if (is_digit(c)) return '0';
    if (c >= 'A' && c <= 'Z') return 'A';
    return c < 128 ? (char)c : '?';
}

/* shape_of for the characters of a one-byte string. */
static char SHAPES[256];

/* `_scheme_issues`: a card scheme issues numbers of length n starting with these digits. */
static int scheme_issues(const char *d, int n) {
    int p2 = (d[0] - '0') * 10 + (d[1] - '0');
    int p3 = p2 * 10 + (d[2] - '0');
    int p4 = p3 * 10 + (d[3] - '0');
    switch (d[0]) {
    case '1': return n == 15; /* UATP */
    case '2': if (n < 16 || n > 19) return 0; break;
    case '3': if (n < 14 || n > 19) return 0; break;
    case '4': return n == 13 || n == 16 || n == 19; /* Visa, Visa Electron */
    case '5': case '6': if (n < 12 || n > 19) return 0; break;
    case '8': if (n < 16 || n > 19) return 0; break;
    case '9': if (n != 16) return 0; break;
    default: return 0;
    }
    if ((p2 >= 51 && p2 <= 55) || (p4 >= 2221 && p4 <= 2720)) return n == 16; /* Mastercard */
    if (p2 == 34 || p2 == 37) return n == 15;                                   /* Amex */
    if (p4 >= 2200 && p4 <= 2204) return n >= 16 && n <= 19;                    /* Mir */
    if (p2 == 36 || p2 == 38 || p2 == 39 || (p3 >= 300 && p3 <= 305) || p4 == 3095)
        return n >= 14 && n <= 19; /* Diners Club */
    if (p4 >= 3528 && p4 <= 3589) return n >= 16 && n <= 19; /* JCB */
    if (p2 == 62 || p2 == 65 || p2 == 81 || p2 == 82 || p4 == 6011 || (p3 >= 644 && p3 <= 649))
        return n >= 16 && n <= 19; /* UnionPay, Discover, RuPay */
    if (p2 == 50 || (p2 >= 56 && p2 <= 69)) return n >= 12 && n <= 19; /* Maestro */
    if (p4 == 9792) return n == 16;                                      /* Troy */
    return 0;
}

/* `_card_digits_ok`: not one digit repeated, a scheme's prefix and length, and Luhn. */
static int card_digits_ok(const char *d, int n) {
    int same = 1;
    for (int i = 1; i < n; i++) {
        if (d[i] != d[0]) {
            same = 0;
            break;
        }
    }
    if (same || !scheme_issues(d, n)) return 0;
    int total = 0;
    for (int i = n - 1, doubled = 0; i >= 0; i--, doubled = !doubled) {
        int v = d[i] - '0';
        if (doubled) v = v * 2 > 9 ? v * 2 - 9 : v * 2;
        total += v;
    }
    return total % 10 == 0;
}

/* `_CARD_LENGTHS`: can a compact run of n digits starting with digit c be a card? */
static int card_length_possible(char c, Py_ssize_t n) {
    switch (c) {
    case '1': return n == 15;
    case '2': return n >= 16 && n <= 19;
    case '3': return n >= 14 && n <= 19;
    case '4': return n == 13 || n == 16 || n == 19;
    case '5': case '6': return n >= 12 && n <= 19;
    case '8': return n >= 16 && n <= 19;
    case '9': return n == 16;
    default: return 0;
    }
}

typedef struct {
    const char *shape;
    Py_ssize_t n;
} Shape;

static inline char sh(const Shape *s, Py_ssize_t i) { return i >= 0 && i < s->n ? s->shape[i] : '\0'; }

static inline int zeros(const Shape *s, Py_ssize_t i, int count) {
    for (int k = 0; k < count; k++) {
        if (sh(s, i + k) != '0') return 0;
    }
    return 1;
}

/* The lookahead `(?![\w\-+]|\.0)` of `_CARD` at i. */
static inline int card_may_end(const Shape *s, Py_ssize_t i) {
    char c = sh(s, i);
    if (c == '\0') return 1;
    if (is_word((unsigned char)c) || c == '-' || c == '+') return 0;
    return !(c == '.' && sh(s, i + 1) == '0');
}

/* `_CARD.match(shape, p)`: the end of the match, or -1. */
static Py_ssize_t card_match(const Shape *s, Py_ssize_t p) {
    if (!zeros(s, p, 4)) return -1;
    char before = sh(s, p - 1);
    if (p >= 1 && (is_word((unsigned char)before) || before == '.' || before == '-' ||
                   before == '+' || before == '/' || before == '$'))
        return -1;
    Py_ssize_t q = p + 4;
    char sep = sh(s, q);
    if (sep == '0') { /* 0{8,15} */
        int run = 0;
        while (run < 15 && sh(s, q + run) == '0') run++;
        for (int k = run; k >= 8; k--) {
            if (card_may_end(s, q + k)) return q + k;
        }
        return -1;
    }
    if (sep != ' ' && sep != '-') return -1;
    /* s 0000 s 0000 (?: s 0{1,4} (?: s 000)? )? */
    if (zeros(s, q + 1, 4) && sh(s, q + 5) == sep && zeros(s, q + 6, 4)) {
        Py_ssize_t q0 = q + 10;
        if (sh(s, q0) == sep) {
            int run = 0;
            while (run < 4 && sh(s, q0 + 1 + run) == '0') run++;
            for (int m = run; m >= 1; m--) {
                Py_ssize_t q1 = q0 + 1 + m;
                if (sh(s, q1) == sep && zeros(s, q1 + 1, 3) && card_may_end(s, q1 + 4))
                    return q1 + 4;
                if (card_may_end(s, q1)) return q1;
            }
        }
        if (card_may_end(s, q0)) return q0;
    }
    /* t 000000 t 0{4,5} */
    if (zeros(s, q + 1, 6) && sh(s, q + 7) == sep) {
        int run = 0;
        while (run < 5 && sh(s, q + 8 + run) == '0') run++;
        for (int k = run; k >= 4; k--) {
            if (card_may_end(s, q + 8 + k)) return q + 8 + k;
        }
    }
    return -1;
}

/* Does the joined shape (separators space, dot and dash as one) start a grouped card at p:
 * 0000-0000-0000 or 0000-000000-0000 (`_GROUPED_CARD_STARTS`)? */
static inline int joined_is(const Shape *s, Py_ssize_t i, char want) {
    char c = sh(s, i);
    if (want == '-') return c == '-' || c == ' ' || c == '.';
    return c == want;
}

static int grouped_start(const Shape *s, Py_ssize_t p) {
    static const char *const starts[] = {"0000-0000-0000", "0000-000000-0000"};
    for (int k = 0; k < 2; k++) {
        const char *want = starts[k];
        int ok = 1;
        for (int i = 0; want[i]; i++) {
            if (!joined_is(s, p + i, want[i])) {
                ok = 0;
                break;
            }
        }
        if (ok) return 1;
    }
    return 0;
}

static int call_check(PyObject *check, PyObject *text, Py_ssize_t start) {
    PyObject *position = PyLong_FromSsize_t(start);
    if (position == NULL) return -1;
    PyObject *call_args[2] = {text, position};
    PyObject *result = PyObject_Vectorcall(check, call_args, 2, NULL);
    Py_DECREF(position);
    if (result == NULL) return -1;
    int truth = PyObject_IsTrue(result);
    Py_DECREF(result);
    return truth;
}

/* card_findings(text, finding_type, entity, name, context_ok, after_account):
 * context_ok(text, start) is asked for a compact 12-digit candidate and for a grouped one
 * read without the number after it (`_CARD_CONTEXT`), and
 * after_account(text, start) for every match when the shape holds AA00
 * (`_after_grouped_account`). */
static PyObject *card_findings(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    Text t;
    PyObject *shape = NULL; /* the text's shape (`_Views.shape`), when the caller has it */
    if (nargs == 7) {
        shape = args[6];
        nargs = 6;
    }
    if (finding_args(args, nargs, 6,
                     "card_findings(text, finding_type, entity, name, context_ok, after_account"
                     "[, shape])",
                     &t) < 0)
        return NULL;
    if (shape != NULL && (!PyBytes_Check(shape) || PyBytes_GET_SIZE(shape) != t.n)) {
        PyErr_SetString(PyExc_TypeError, "card_findings: shape must be bytes as long as text");
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)args[1];
    PyObject *found = PyList_New(0);
    if (found == NULL) return NULL;
    char *buffer = NULL; /* the shape made here, when not given */
    if (shape == NULL) {
        buffer = PyMem_Malloc(t.n + 1);
        if (buffer == NULL) {
            Py_DECREF(found);
            return PyErr_NoMemory();
        }
        if (t.kind == PyUnicode_1BYTE_KIND) {
            const Py_UCS1 *data = t.data;
            for (Py_ssize_t i = 0; i < t.n; i++) buffer[i] = SHAPES[data[i]];
        } else {
            for (Py_ssize_t i = 0; i < t.n; i++) buffer[i] = shape_of(at(&t, i));
        }
    }
    const char *shaped = buffer != NULL ? buffer : PyBytes_AS_STRING(shape);
    int accounts = -1; /* `_Views.accounts`: AA00 anywhere in the shape (once needed) */
    Shape s = {shaped, t.n};
    Py_ssize_t resume = 0;
    char digits[24];
    Py_ssize_t run_start = 0;
    for (Py_ssize_t p = 0; p < t.n; p = run_start) {
        /* Candidates in order of position: the start of a run of nine or more digits whose
         * length a card may have (`_Views.long_runs`), or a grouped start. A grouped start
         * right after a digit is a candidate of the Python implementation too, but `_CARD`
         * cannot match there (its lookbehind): only the starts of runs are tried. */
        const char *digit = memchr(shaped + p, '0', t.n - p);
        if (digit == NULL) break;
        p = digit - shaped;
        Py_ssize_t q = p + 1;
        while (q < t.n && shaped[q] == '0') q++;
        run_start = q + 1; /* after the run and the character that ends it */
        Py_ssize_t run_end = 0;
        if (q - p == 4) {
            if (!grouped_start(&s, p)) continue;
        } else if (q - p < 9 || !card_length_possible((char)at(&t, p), q - p)) {
            continue;
        } else {
            run_end = q;
        }
        if (p < resume) continue;
        int n = 0;
        if (run_end) {
            for (Py_ssize_t i = p; i < run_end; i++) digits[n++] = (char)at(&t, i);
            if (!card_digits_ok(digits, n)) continue;
        }
        Py_ssize_t end = card_match(&s, p);
        if (end < 0) continue;
        /* After four digits and a space: inside a longer grouped number, unless they end a
         * card found before. */
        if (p >= 5 && shaped[p - 1] == ' ' && zeros(&s, p - 5, 4) && p - 1 != resume) continue;
        if (!run_end) {
            for (Py_ssize_t i = p; i < end && n < (int)sizeof digits; i++) {
                Py_UCS4 c = at(&t, i);
                if (c != ' ' && c != '-') digits[n++] = (char)c;
            }
            if (!card_digits_ok(digits, n)) {
                /* After a card word, the groups before the match's last space, at least
                 * three: a card and a number after it. */
                Py_ssize_t space = end - 1;
                while (space >= p + 14 && shaped[space] != ' ') space--;
                if (space < p + 14) continue;
                n -= (int)(end - space - 1);
                end = space;
                if (!card_digits_ok(digits, n)) continue;
                int context = call_check(args[4], args[0], p);
                if (context < 0) goto failed;
                if (!context) continue;
            }
        }
        if (n == 12 && end - p == 12) {
            int ok = call_check(args[4], args[0], p);
            if (ok < 0) goto failed;
            if (!ok) continue;
        }
        if (accounts == -1) {
            accounts = find_literal(shaped, t.n, "AA00", 4, 0) >= 0;
        }
        if (accounts) {
            int after = call_check(args[5], args[0], p);
            if (after < 0) goto failed;
            if (after) continue;
        }
        resume = end;
        if (append_finding(found, type, p, end, args[2], args[3]) < 0) goto failed;
    }
    PyMem_Free(buffer);
    return found;
failed:
    PyMem_Free(buffer);
    Py_DECREF(found);
    return NULL;
}

/* ------------------------------------------------------------------------------------ */
/* shared searches of `_Views`                                                          */

/* positions(data, literal): every start of literal in data, overlaps included
 * (`_Views.group_pairs`). */
static PyObject *positions(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1]) ||
        PyBytes_GET_SIZE(args[1]) == 0) {
        PyErr_SetString(PyExc_TypeError, "positions(data: bytes, literal: non-empty bytes)");
        return NULL;
    }
    const char *data = PyBytes_AS_STRING(args[0]), *literal = PyBytes_AS_STRING(args[1]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]), m = PyBytes_GET_SIZE(args[1]);
    PyObject *found = PyList_New(0);
    if (found == NULL) return NULL;
    for (Py_ssize_t i = 0; i + m <= n; i++) {
        const char *hit = memmem(data + i, n - i, literal, m);
        if (hit == NULL) break;
        i = hit - data;
        PyObject *position = PyLong_FromSsize_t(i);
        if (position == NULL || PyList_Append(found, position) < 0) {
            Py_XDECREF(position);
            Py_DECREF(found);
            return NULL;
        }
        Py_DECREF(position);
    }
    return found;
}

/* runs(data, byte, minimum): (start, end) of every maximal run of `byte` at least `minimum`
 * long (`_Views.long_runs`: what `re.finditer(b"0{9,}", shape)` gives). */
static PyObject *runs(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyBytes_Check(args[0]) || !PyLong_Check(args[1]) ||
        !PyLong_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "runs(data: bytes, byte: int, minimum: int)");
        return NULL;
    }
    long byte = PyLong_AsLong(args[1]);
    Py_ssize_t minimum = PyLong_AsSsize_t(args[2]);
    if (PyErr_Occurred()) return NULL;
    if (byte < 0 || byte > 255 || minimum < 1) {
        PyErr_SetString(PyExc_ValueError, "runs: byte must be 0-255 and minimum at least 1");
        return NULL;
    }
    const char *data = PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    PyObject *found = PyList_New(0);
    if (found == NULL) return NULL;
    const char b = (char)byte;
    for (Py_ssize_t i = 0; i + minimum <= n;) {
        const char *hit = memchr(data + i, b, n - i);
        if (hit == NULL) break;
        Py_ssize_t start = hit - data, end = start + 1;
        while (end < n && data[end] == b) end++;
        i = end;
        if (end - start < minimum) continue;
        PyObject *span = Py_BuildValue("(nn)", start, end);
        if (span == NULL || PyList_Append(found, span) < 0) {
            Py_XDECREF(span);
            Py_DECREF(found);
            return NULL;
        }
        Py_DECREF(span);
    }
    return found;
}

#if defined(__GNUC__) && !defined(__clang__)
/* GCC vectorizes loops such as the one below at -O2 only when their length is known. */
#define VECTORIZED __attribute__((optimize("O3")))
#else
#define VECTORIZED
#endif

/* What `_SHAPE_TABLE`, `_JOINED_TABLE` (after the shape), `bytes.lower` and `_LOCAL_TABLE`
 * make of each byte, as comparisons and masks that the compiler turns into vector
 * instructions (16 bytes at a time) rather than four table lookups per byte. */
VECTORIZED static void
derive_views(const unsigned char *restrict in, Py_ssize_t n, unsigned char *restrict shape,
             unsigned char *restrict joined, unsigned char *restrict lower,
             unsigned char *restrict local) {
    for (Py_ssize_t i = 0; i < n; i++) {
        /* Masks: 0xFF where the byte is a digit, a capital... and 0 elsewhere. */
        unsigned char c = in[i];
        unsigned char digit = -(unsigned char)((unsigned char)(c - '0') < 10);
        unsigned char upper = -(unsigned char)((unsigned char)(c - 'A') < 26);
        unsigned char small = -(unsigned char)((unsigned char)(c - 'a') < 26);
        unsigned char dot = -(unsigned char)(c == '.');
        unsigned char gap = -(unsigned char)(c == ' ') | dot;
        unsigned char mark = dot | -(unsigned char)(c == '_') | -(unsigned char)(c == '%') |
                             -(unsigned char)(c == '+') | -(unsigned char)(c == '-');
        unsigned char s = (digit & '0') | (upper & 'A') | (~(digit | upper) & c);
        shape[i] = s;
        joined[i] = (gap & '-') | (~gap & s);
        lower[i] = c + (upper & 32);
        unsigned char in_local = digit | upper | small | mark;
        local[i] = (in_local & 'L') | (~in_local & ' ');
    }
}

/* views(data): (shape, joined, lower, local) of the ASCII view, in one pass: what
 * `data.translate(_SHAPE_TABLE)`, its `.translate(_JOINED_TABLE)`, `data.lower()` and
 * `data.translate(_LOCAL_TABLE)` give (`_Views`). */
static PyObject *views(PyObject *module, PyObject *data) {
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "views(data: bytes)");
        return NULL;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    const unsigned char *in = (const unsigned char *)PyBytes_AS_STRING(data);
    PyObject *shape = PyBytes_FromStringAndSize(NULL, n);
    PyObject *joined = PyBytes_FromStringAndSize(NULL, n);
    PyObject *lower = PyBytes_FromStringAndSize(NULL, n);
    PyObject *local = PyBytes_FromStringAndSize(NULL, n);
    if (shape == NULL || joined == NULL || lower == NULL || local == NULL) {
        Py_XDECREF(shape);
        Py_XDECREF(joined);
        Py_XDECREF(lower);
        Py_XDECREF(local);
        return NULL;
    }
    char *s = PyBytes_AS_STRING(shape), *j = PyBytes_AS_STRING(joined);
    char *w = PyBytes_AS_STRING(lower), *l = PyBytes_AS_STRING(local);
    derive_views(in, n, (unsigned char *)s, (unsigned char *)j, (unsigned char *)w,
                 (unsigned char *)l);
    return Py_BuildValue("(NNNN)", shape, joined, lower, local);
}

/* outside_long_runs(joined, positions): the positions (ascending, on digits of the joined
 * shape) that are not in a run of thirteen or more digits (`_outside_long_runs`). A run is
 * the digits reached from the position by `(?:-?0)+`, plus, where those are fewer than 13,
 * those of the longest `(?:0-?)+` that ends at the position and starts at most 24
 * characters before it. */
static PyObject *outside_long_runs(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "outside_long_runs(joined: bytes, positions: list)");
        return NULL;
    }
    const char *s = PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    PyObject *positions = args[1];
    PyObject *kept = PyList_New(0);
    if (kept == NULL) return NULL;
    Py_ssize_t run_end = -1;
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(positions); k++) {
        PyObject *item = PyList_GET_ITEM(positions, k);
        Py_ssize_t position = PyLong_AsSsize_t(item);
        if (position == -1 && PyErr_Occurred()) goto failed;
        if (position < 0 || position > n) {
            PyErr_SetString(PyExc_ValueError, "outside_long_runs: a position outside the data");
            goto failed;
        }
        if (position < run_end) continue;
        /* (?:-?0)+ from the position */
        Py_ssize_t q = position;
        int digits = 0;
        for (;;) {
            if (q < n && s[q] == '0') {
                q += 1;
            } else if (q + 1 < n && s[q] == '-' && s[q + 1] == '0') {
                q += 2;
            } else {
                break;
            }
            digits++;
        }
        if (digits < 13) {
            /* The longest (?:0-?)+ ending at the position, starting at low or later: zeros
             * and single dashes, starting with a zero. */
            Py_ssize_t low = position - 24 > 0 ? position - 24 : 0;
            Py_ssize_t p = position;
            while (p > low && (s[p - 1] == '0' || (s[p - 1] == '-' && !(p < position && s[p] == '-'))))
                p--;
            for (Py_ssize_t i = p; i < position; i++) digits += s[i] == '0';
        }
        if (digits >= 13) {
            run_end = q > position ? q : position;
        } else if (PyList_Append(kept, item) < 0) {
            goto failed;
        }
    }
    return kept;
failed:
    Py_DECREF(kept);
    return NULL;
}

/* -- merging the detectors' findings, and replacing them -------------------------------- */

typedef struct {
    Py_ssize_t start, end, index, order;
    PyObject *finding; /* borrowed from the detectors' lists */
} Span;

static int by_start(const void *a, const void *b) {
    const Span *x = a, *y = b;
    if (x->start != y->start) return x->start < y->start ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order;
}

/* Longer spans first, then the earlier detector, then the earlier start. */
static int by_precedence(const void *a, const void *b) {
    const Span *x = a, *y = b;
    Py_ssize_t lx = x->start - x->end, ly = y->start - y->end;
    if (lx != ly) return lx < ly ? -1 : 1;
    if (x->index != y->index) return x->index < y->index ? -1 : 1;
    if (x->start != y->start) return x->start < y->start ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order;
}

/* A finding's start or end: item 0 or 1 of its tuple. */
static int span_bound(PyObject *finding, Py_ssize_t item, Py_ssize_t *value) {
    *value = PyLong_AsSsize_t(PyTuple_GET_ITEM(finding, item));
    return *value == -1 && PyErr_Occurred() ? -1 : 0;
}

/* resolve(lists): the findings of each detector's list (in the detectors' order) with the
 * empty ones left out, sorted by start, overlaps resolved: the longer span wins, and on a
 * tie the earlier detector (`_resolve_overlaps` in masking/detectors.py, with the list
 * building of `Scanner.scan` before it). */
static PyObject *resolve(PyObject *module, PyObject *lists) {
    if (!PyList_Check(lists)) {
        PyErr_SetString(PyExc_TypeError, "resolve(lists): a list of lists of findings");
        return NULL;
    }
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(lists); i++) {
        PyObject *list = PyList_GET_ITEM(lists, i);
        if (!PyList_Check(list)) {
            PyErr_SetString(PyExc_TypeError, "resolve(lists): a list of lists of findings");
            return NULL;
        }
        total += PyList_GET_SIZE(list);
    }
    Span *spans = PyMem_Malloc(sizeof(Span) * (size_t)(total ? total : 1));
    if (spans == NULL) return PyErr_NoMemory();
    /* The lists are held for as long as spans borrow their findings. */
    PyObject *held = PyList_GetSlice(lists, 0, PyList_GET_SIZE(lists));
    PyObject *result = NULL;
    Py_ssize_t n = 0;
    if (held == NULL) goto done;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(held); i++) {
        PyObject *list = PyList_GET_ITEM(held, i);
        for (Py_ssize_t k = 0; k < PyList_GET_SIZE(list) && n < total; k++) {
            PyObject *finding = PyList_GET_ITEM(list, k);
            if (!PyTuple_Check(finding) || PyTuple_GET_SIZE(finding) < 4) {
                PyErr_SetString(PyExc_TypeError, "a finding is a tuple (start, end, entity, detector)");
                goto done;
            }
            Span *span = &spans[n];
            if (span_bound(finding, 0, &span->start) < 0 || span_bound(finding, 1, &span->end) < 0)
                goto done;
            if (span->end <= span->start) continue;
            span->index = i;
            span->order = n;
            span->finding = finding;
            n++;
        }
    }
    Py_ssize_t kept = n;
    if (n >= 2) {
        qsort(spans, (size_t)n, sizeof(Span), by_start);
        int overlap = 0;
        for (Py_ssize_t i = 1; i < n && !overlap; i++) overlap = spans[i].start < spans[i - 1].end;
        if (overlap) {
            /* Greedy by precedence, into `spans[0..kept)` sorted by start: each span is
             * kept unless it overlaps one kept before it. */
            Span *order = PyMem_Malloc(sizeof(Span) * (size_t)n);
            if (order == NULL) {
                PyErr_NoMemory();
                goto done;
            }
            memcpy(order, spans, sizeof(Span) * (size_t)n);
            qsort(order, (size_t)n, sizeof(Span), by_precedence);
            kept = 0;
            for (Py_ssize_t k = 0; k < n; k++) {
                Span span = order[k];
                Py_ssize_t lo = 0, hi = kept; /* bisect_left on the kept spans' starts */
                while (lo < hi) {
                    Py_ssize_t mid = (lo + hi) / 2;
                    if (spans[mid].start < span.start) lo = mid + 1;
                    else hi = mid;
                }
                if (lo > 0 && spans[lo - 1].end > span.start) continue;
                if (lo < kept && spans[lo].start < span.end) continue;
                memmove(&spans[lo + 1], &spans[lo], sizeof(Span) * (size_t)(kept - lo));
                spans[lo] = span;
                kept++;
            }
            PyMem_Free(order);
        }
    }
    result = PyList_New(kept);
    if (result == NULL) goto done;
    for (Py_ssize_t i = 0; i < kept; i++) PyList_SET_ITEM(result, i, Py_NewRef(spans[i].finding));
done:
    Py_XDECREF(held);
    PyMem_Free(spans);
    return result;
}

/* The replacement of a value that a rule of the "partial" style masks (`Masker.replacement`):
 * "****" and its last four letters or digits; "****" alone below eight characters. */
static PyObject *partial(PyObject *text, Py_ssize_t start, Py_ssize_t end) {
    static const char STARS[] = "****";
    Py_ssize_t n = end - start;
    if (n < 8) return PyUnicode_FromString(STARS);
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    Py_UCS4 tail[4];
    int found = 0;
    int last_all = 1;
    for (Py_ssize_t i = end - 4; i < end; i++) last_all &= Py_UNICODE_ISALNUM(PyUnicode_READ(kind, data, i)) != 0;
    if (last_all) {
        for (int k = 0; k < 4; k++) tail[k] = PyUnicode_READ(kind, data, end - 4 + k);
        found = 4;
    } else {
        /* The last four letters or digits of the whole value, fewer if it has fewer. */
        for (Py_ssize_t i = end - 1; i >= start && found < 4; i--) {
            Py_UCS4 c = PyUnicode_READ(kind, data, i);
            if (Py_UNICODE_ISALNUM(c)) {
                memmove(tail + 1, tail, sizeof(Py_UCS4) * (size_t)found);
                tail[0] = c;
                found++;
            }
        }
    }
    Py_UCS4 widest = 127;
    for (int k = 0; k < found; k++) widest = tail[k] > widest ? tail[k] : widest;
    PyObject *out = PyUnicode_New(4 + found, widest);
    if (out == NULL) return NULL;
    for (int k = 0; k < 4; k++) PyUnicode_WRITE(PyUnicode_KIND(out), PyUnicode_DATA(out), k, '*');
    for (int k = 0; k < found; k++)
        PyUnicode_WRITE(PyUnicode_KIND(out), PyUnicode_DATA(out), 4 + k, tail[k]);
    return out;
}

/* splice(text, findings, labels, partials, replace): the text with each finding (sorted,
 * not overlapping) replaced (`Masker.mask_text`): by its detector's label where `labels`
 * has one, by the partial style's replacement where its detector is in `partials`, else
 * by replace(detector, value). */
static PyObject *splice(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyUnicode_Check(args[0]) || !PyList_Check(args[1]) ||
        !PyDict_Check(args[2]) || !PyAnySet_Check(args[3]) || !PyCallable_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "splice(text: str, findings: list, labels: dict, partials: set, replace)");
        return NULL;
    }
    PyObject *text = args[0], *labels = args[2], *partials = args[3], *replace = args[4];
    Py_ssize_t length = PyUnicode_GET_LENGTH(text);
    PyObject *findings = PyList_GetSlice(args[1], 0, PyList_GET_SIZE(args[1]));
    if (findings == NULL) return NULL;
    Py_ssize_t count = PyList_GET_SIZE(findings);
    PyObject *parts = PyList_New(0);
    PyObject *result = NULL;
    if (parts == NULL) goto done;
    Py_ssize_t position = 0;
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *finding = PyList_GET_ITEM(findings, k);
        Py_ssize_t start, end;
        if (!PyTuple_Check(finding) || PyTuple_GET_SIZE(finding) < 4) {
            PyErr_SetString(PyExc_TypeError, "a finding is a tuple (start, end, entity, detector)");
            goto done;
        }
        if (span_bound(finding, 0, &start) < 0 || span_bound(finding, 1, &end) < 0) goto done;
        if (start < position || end < start || end > length) {
            PyErr_SetString(PyExc_ValueError, "splice: findings must be sorted, apart and in the text");
            goto done;
        }
        PyObject *detector = PyTuple_GET_ITEM(finding, 3);
        PyObject *before = PyUnicode_Substring(text, position, start);
        if (before == NULL || PyList_Append(parts, before) < 0) {
            Py_XDECREF(before);
            goto done;
        }
        Py_DECREF(before);
        PyObject *replacement = PyDict_GetItemWithError(labels, detector);
        if (replacement != NULL) {
            Py_INCREF(replacement);
        } else if (PyErr_Occurred()) {
            goto done;
        } else {
            int is_partial = PySet_Contains(partials, detector);
            if (is_partial < 0) goto done;
            if (is_partial) {
                replacement = partial(text, start, end);
            } else {
                PyObject *value = PyUnicode_Substring(text, start, end);
                if (value == NULL) goto done;
                replacement = PyObject_CallFunctionObjArgs(replace, detector, value, NULL);
                Py_DECREF(value);
                if (replacement != NULL && !PyUnicode_Check(replacement)) {
                    Py_DECREF(replacement);
                    PyErr_SetString(PyExc_TypeError, "splice: a replacement must be a str");
                    goto done;
                }
            }
            if (replacement == NULL) goto done;
        }
        int failed = PyList_Append(parts, replacement);
        Py_DECREF(replacement);
        if (failed < 0) goto done;
        position = end;
    }
    PyObject *rest = PyUnicode_Substring(text, position, length);
    if (rest == NULL || PyList_Append(parts, rest) < 0) {
        Py_XDECREF(rest);
        goto done;
    }
    Py_DECREF(rest);
    PyObject *empty = PyUnicode_New(0, 0);
    if (empty == NULL) goto done;
    result = PyUnicode_Join(empty, parts);
    Py_DECREF(empty);
done:
    Py_XDECREF(parts);
    Py_DECREF(findings);
    return result;
}

static PyMethodDef methods[] = {
    {"email_findings", (PyCFunction)(void (*)(void))email_findings, METH_FASTCALL,
     "email_findings(text, finding_type, entity, name): EmailDetector's findings."},
    {"card_findings", (PyCFunction)(void (*)(void))card_findings, METH_FASTCALL,
     "card_findings(text, finding_type, entity, name, context_ok, after_account): "
     "PaymentCardDetector's findings."},
    {"positions", (PyCFunction)(void (*)(void))positions, METH_FASTCALL,
     "positions(data, literal): every start of literal in data, overlaps included."},
    {"outside_long_runs", (PyCFunction)(void (*)(void))outside_long_runs, METH_FASTCALL,
     "outside_long_runs(joined, positions): the positions not in a run of 13 or more digits."},
    {"resolve", resolve, METH_O,
     "resolve(lists): the detectors' findings merged, sorted by start, overlaps resolved."},
    {"splice", (PyCFunction)(void (*)(void))splice, METH_FASTCALL,
     "splice(text, findings, labels, partials, replace): the text with the findings replaced."},
    {"views", views, METH_O,
     "views(data): (shape, joined, lower, local) of the ASCII view of a text, in one pass."},
    {"runs", (PyCFunction)(void (*)(void))runs, METH_FASTCALL,
     "runs(data, byte, minimum): (start, end) of every maximal run of byte at least minimum long."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "masking_native",
    .m_doc = "The e-mail and payment-card detectors of masking.detectors, in C, and the "
             "searches the digit-based detectors share.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit_masking_native(void) {
    for (int c = 0; c < 256; c++) SHAPES[c] = shape_of((Py_UCS4)c);
    return PyModule_Create(&module);
}
