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

static PyObject *
scan(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t pos, max_frame, max_digits;
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "y*nnn", &view, &pos, &max_frame, &max_digits))
        return NULL;
    const unsigned char *buf = (const unsigned char *)view.buf;
    Py_ssize_t have = view.len;

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

    result = Py_BuildValue("(nnn)", (Py_ssize_t)end, type_start, type_end);
    PyBuffer_Release(&view);
    return result;

none:
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(buf, pos, max_frame_size, max_digits) -> (end, type_start, type_end) or None\n\n"
     "One complete, valid FIX frame at buf[pos], or None: ask the Python framer."},
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
