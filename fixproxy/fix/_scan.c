/*
 * The FIX frame scanner in C: an optional accelerator for fixproxy.fix.framer.
 *
 * scan(buf, pos, max_frame_size, max_digits) looks at one frame starting at buf[pos] and
 * returns (end, type_start, type_end) when it is complete and passes every check the Python
 * framer makes: the 8=FIXT.1.1|9= prefix, BodyLength digits ending in SOH, the frame within
 * max_frame_size, 35= as the third field, a non-empty MsgType, SOH before 10=, three CheckSum
 * digits, a closing SOH, and the byte sum. Anything else (an incomplete frame, any fault)
 * returns None, and the Python framer, which stays the reference, decides what it is and
 * words the error. So this code only ever says yes to what the reference says yes to; the
 * differential property test and the fuzz target hold the two to that.
 *
 * No OpenSSL, no allocation but the result tuple, no state: the buffer is read through the
 * buffer protocol (bytes or bytearray) and released before returning.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static const char PREFIX[] = "8=FIXT.1.1\x01" "9=";
#define PREFIX_LEN 13
#define TRAILER_LEN 7 /* "10=ddd" SOH */
#define MIN_BODY 5    /* "35=x" SOH */

/* One complete valid frame at buf[pos]: 1 with *end, *type_start, *type_end set, else 0. */
static int
check_frame(const unsigned char *buf, Py_ssize_t have, Py_ssize_t pos, Py_ssize_t max_frame,
            Py_ssize_t max_digits, Py_ssize_t *end_out, Py_ssize_t *type_start_out,
            Py_ssize_t *type_end_out)
{
    if (pos < 0 || max_digits < 1 || max_digits > 9 || pos > have - PREFIX_LEN)
        goto none;
    if (memcmp(buf + pos, PREFIX, PREFIX_LEN) != 0)
        goto none;

    Py_ssize_t digits_at = pos + PREFIX_LEN;
    Py_ssize_t limit = digits_at + max_digits + 1;
    if (limit > have)
        limit = have;
    Py_ssize_t soh = -1;
    for (Py_ssize_t i = digits_at; i < limit; i++) {
        if (buf[i] == 1) {
            soh = i;
            break;
        }
    }
    if (soh <= digits_at)
        goto none; /* no SOH in reach, or no digits */
    long long body_len = 0;
    for (Py_ssize_t i = digits_at; i < soh; i++) {
        unsigned char c = buf[i];
        if (c < '0' || c > '9')
            goto none;
        body_len = body_len * 10 + (c - '0');
    }
    Py_ssize_t body_at = soh + 1;
    long long checksum_at = (long long)body_at + body_len;
    long long end = checksum_at + TRAILER_LEN;
    if (end - pos > max_frame || body_len < MIN_BODY || end > have)
        goto none;
    if (buf[body_at] != '3' || buf[body_at + 1] != '5' || buf[body_at + 2] != '=')
        goto none;
    if (buf[checksum_at - 1] != 1 || buf[checksum_at] != '1' || buf[checksum_at + 1] != '0'
            || buf[checksum_at + 2] != '=' || buf[end - 1] != 1)
        goto none;
    Py_ssize_t type_start = body_at + 3;
    Py_ssize_t type_end = -1;
    for (Py_ssize_t i = type_start; i < (Py_ssize_t)checksum_at; i++) {
        if (buf[i] == 1) {
            type_end = i;
            break;
        }
    }
    if (type_end <= type_start)
        goto none;
    unsigned int stated = 0;
    for (int i = 0; i < 3; i++) {
        unsigned char c = buf[checksum_at + 3 + i];
        if (c < '0' || c > '9')
            goto none;
        stated = stated * 10 + (c - '0');
    }
    unsigned long sum = 0;
    for (Py_ssize_t i = pos; i < (Py_ssize_t)checksum_at; i++)
        sum += buf[i];
    if ((sum & 0xFF) != stated)
        goto none;

    *end_out = (Py_ssize_t)end;
    *type_start_out = type_start;
    *type_end_out = type_end;
    return 1;

none:
    return 0;
}

static PyObject *
scan(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t pos, max_frame, max_digits, end, type_start, type_end;
    PyObject *result;

    if (!PyArg_ParseTuple(args, "y*nnn", &view, &pos, &max_frame, &max_digits))
        return NULL;
    if (check_frame((const unsigned char *)view.buf, view.len, pos, max_frame, max_digits,
                    &end, &type_start, &type_end))
        result = Py_BuildValue("(nnn)", end, type_start, type_end);
    else
        result = Py_NewRef(Py_None);
    PyBuffer_Release(&view);
    return result;
}

/* MsgSeqNum (34) of the frame buf[pos:end], as the Python reference reads it
 * (fixproxy.session.sequence.read_seq_num): the value after the first SOH "34=", ASCII digits
 * only, 1 to 18 of them; -1 when there is none or it is not such a number. */
static long long
frame_seq_num(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t end)
{
    for (Py_ssize_t i = pos; i + 4 <= end; i++) {
        if (buf[i] != 1 || buf[i + 1] != '3' || buf[i + 2] != '4' || buf[i + 3] != '=')
            continue;
        long long value = 0;
        Py_ssize_t at = i + 4, digits = 0;
        for (; at < end && buf[at] != 1; at++, digits++) {
            unsigned char c = buf[at];
            if (c < '0' || c > '9' || digits >= 18)
                return -1;
            value = value * 10 + (c - '0');
        }
        return digits > 0 && at < end ? value : -1;
    }
    return -1;
}

/* Counts of one call by MsgType, added to the caller's dict once per type at the end. */
#define TALLY_SLOTS 8
typedef struct {
    PyObject *key[TALLY_SLOTS]; /* borrowed: the type's bytes (held by a live frame) or other */
    PyObject *owned[TALLY_SLOTS];
    Py_ssize_t n[TALLY_SLOTS];
    int used;
} tally_t;

static int
tally_flush(tally_t *t, PyObject *counts)
{
    int ok = 1;
    for (int i = 0; i < t->used; i++) {
        if (ok) {
            PyObject *old = PyDict_GetItemWithError(counts, t->key[i]);
            long long before = 0;
            if (old != NULL) {
                before = PyLong_AsLongLong(old);
                if (before == -1 && PyErr_Occurred())
                    ok = 0;
            } else if (PyErr_Occurred()) {
                ok = 0;
            }
            if (ok) {
                PyObject *after = PyLong_FromLongLong(before + t->n[i]);
                if (after == NULL || PyDict_SetItem(counts, t->key[i], after) < 0)
                    ok = 0;
                Py_XDECREF(after);
            }
        }
        Py_DECREF(t->owned[i]);
    }
    t->used = 0;
    return ok;
}

/* Add one frame counted under ``key`` to the tally; the slot it went to, or -1 on error. */
static int
tally_add(tally_t *t, PyObject *counts, PyObject *key)
{
    for (int i = 0; i < t->used; i++) {
        if (t->key[i] == key || (PyBytes_GET_SIZE(t->key[i]) == PyBytes_GET_SIZE(key)
                && memcmp(PyBytes_AS_STRING(t->key[i]), PyBytes_AS_STRING(key),
                          PyBytes_GET_SIZE(key)) == 0)) {
            t->n[i]++;
            return i;
        }
    }
    if (t->used == TALLY_SLOTS && !tally_flush(t, counts))
        return -1;
    Py_INCREF(key);
    t->key[t->used] = key;
    t->owned[t->used] = key;
    t->n[t->used] = 1;
    return t->used++;
}

/*
 * scan_count(buf, pos, max_frame_size, max_digits, counts, known, other, stop)
 *     -> (end, last_start, count, last_seq)
 *
 * Consecutive complete valid frames from buf[pos], each counted in the dict ``counts`` by its
 * MsgType (types not in the set ``known`` count as ``other``), up to the first frame that is
 * incomplete, invalid, or of a MsgType in the set ``stop``, which is left uncounted for the
 * Python framer. Returns where the counted frames end, where the last of them starts (pos when
 * none), how many there were, and the MsgSeqNum of the last one (-1: none, or not a number).
 * The counts are added to the dict once per MsgType at the end, not once per frame.
 */
static PyObject *
scan_count(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t pos, max_frame, max_digits, end, type_start, type_end;
    PyObject *counts, *known, *other, *stop;
    Py_ssize_t count = 0, last_start;
    tally_t tally;
    tally.used = 0;

    if (!PyArg_ParseTuple(args, "y*nnnO!O!SO!", &view, &pos, &max_frame, &max_digits,
                          &PyDict_Type, &counts, &PyFrozenSet_Type, &known, &other,
                          &PyFrozenSet_Type, &stop))
        return NULL;
    const unsigned char *buf = (const unsigned char *)view.buf;
    last_start = pos;
    /* A run of one MsgType (the usual traffic) is tallied without a lookup per frame: a
     * frame of the same MsgType as the one before goes to the same slot. */
    Py_ssize_t prev_start = 0, prev_len = -1;
    int prev_slot = -1;
    while (check_frame(buf, view.len, pos, max_frame, max_digits, &end, &type_start,
                       &type_end)) {
        if (type_end - type_start == prev_len
                && memcmp(buf + type_start, buf + prev_start, (size_t)prev_len) == 0) {
            tally.n[prev_slot]++;
            last_start = pos;
            pos = end;
            count++;
            continue;
        }
        PyObject *type = PyBytes_FromStringAndSize((const char *)buf + type_start,
                                                   type_end - type_start);
        if (type == NULL)
            goto error;
        int stopping = PySet_Contains(stop, type);
        int is_known = stopping ? 0 : PySet_Contains(known, type);
        if (stopping < 0 || is_known < 0) {
            Py_DECREF(type);
            goto error;
        }
        if (stopping) {
            Py_DECREF(type);
            break;
        }
        int slot = tally_add(&tally, counts, is_known ? type : other);
        Py_DECREF(type);
        if (slot < 0)
            goto error;
        prev_start = type_start;
        prev_len = type_end - type_start;
        prev_slot = slot;
        last_start = pos;
        pos = end;
        count++;
    }
    if (!tally_flush(&tally, counts))
        goto error;
    long long last_seq = count ? frame_seq_num(buf, last_start, pos) : -1;
    PyBuffer_Release(&view);
    return Py_BuildValue("(nnnL)", pos, last_start, count, last_seq);

error:
    tally_flush(&tally, counts);
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(buf, pos, max_frame_size, max_digits) -> (end, type_start, type_end) or None\n\n"
     "One complete, valid FIX frame at buf[pos], or None: ask the Python framer."},
    {"scan_count", scan_count, METH_VARARGS,
     "scan_count(buf, pos, max_frame_size, max_digits, counts, known, other, stop)\n"
     "    -> (end, last_start, count, last_seq)\n\n"
     "Count consecutive valid frames by MsgType, stopping before one of a type in stop."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "fixproxy.fix._scan",
    "The optional C frame scanner of fixproxy.fix.framer.", -1, methods,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    return PyModule_Create(&module);
}
