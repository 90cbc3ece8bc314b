/* Reads a stopped forked worker's Python stack from the master (the slowlog).
 *
 * The worker is a fork of the master without exec, so _PyRuntime and every type object sit at
 * the same addresses in both: the walk starts at this process's own &_PyRuntime and checks
 * remote objects' ob_type against this process's type objects. Struct layouts come from the
 * interpreter's internal headers at build time (offsetof/sizeof), never from constants.
 *
 * fpm/trace.py calls read_stack() while the worker is in a ptrace stop, so that function does
 * only process_vm_readv calls and copies: one syscall per frame (the code header of a frame
 * and the next frame are fetched together), plus the strings and line table of code objects
 * not yet in the caller's cache. Line numbers are decoded by line_at() after the detach.
 */
#define PY_SSIZE_T_CLEAN
#define Py_BUILD_CORE_MODULE
#include <Python.h>

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
#define FPM_LAYOUT_KNOWN 1
#include "internal/pycore_frame.h"
#include "internal/pycore_interp.h"
#include "internal/pycore_runtime.h"
#else
#define FPM_LAYOUT_KNOWN 0
#endif

/* ---- line tables (Objects/locations.md), independent of the frame layout ---- */

typedef struct {
    const uint8_t *p, *end;
    int line;           /* the running line: entries without a location leave it unchanged */
} table_scan;

typedef struct {
    int units;          /* code units this entry covers */
    int line, end_line, col, end_col;   /* -1 where the entry has no such value */
} table_entry;

static int
scan_varint(table_scan *s, unsigned int *out)
{
    unsigned int value = 0;
    for (int shift = 0; s->p < s->end && shift <= 30; shift += 6) {
        uint8_t b = *s->p++;
        value |= (unsigned int)(b & 63) << shift;
        if (!(b & 64)) {
            *out = value;
            return 0;
        }
    }
    return -1;
}

static int
scan_svarint(table_scan *s, int *out)
{
    unsigned int u;
    if (scan_varint(s, &u) < 0)
        return -1;
    *out = (u & 1) ? -(int)(u >> 1) : (int)(u >> 1);
    return 0;
}

/* The next entry; 0 at the end, -1 on a malformed table. */
static int
scan_next(table_scan *s, table_entry *e)
{
    if (s->p >= s->end)
        return 0;
    uint8_t first = *s->p++;
    if (!(first & 128))
        return -1;
    int code = (first >> 3) & 15;
    e->units = (first & 7) + 1;
    int delta;
    unsigned int u, v;
    switch (code) {
    case 15:    /* no location */
        e->line = e->end_line = e->col = e->end_col = -1;
        return 1;
    case 14:    /* long form: line delta, end line delta, column + 1, end column + 1 */
        if (scan_svarint(s, &delta) < 0 || scan_varint(s, &u) < 0)
            return -1;
        s->line += delta;
        e->line = s->line;
        e->end_line = s->line + (int)u;
        if (scan_varint(s, &u) < 0 || scan_varint(s, &v) < 0)
            return -1;
        e->col = (int)u - 1;
        e->end_col = (int)v - 1;
        return 1;
    case 13:    /* line delta, no columns */
        if (scan_svarint(s, &delta) < 0)
            return -1;
        s->line += delta;
        e->line = e->end_line = s->line;
        e->col = e->end_col = -1;
        return 1;
    case 10: case 11: case 12:  /* one-line form: line delta in the code, two column bytes */
        if (s->end - s->p < 2)
            return -1;
        s->line += code - 10;
        e->line = e->end_line = s->line;
        e->col = s->p[0];
        e->end_col = s->p[1];
        s->p += 2;
        return 1;
    default:    /* short form: same line, column group in the code, one byte of columns */
        if (s->p >= s->end)
            return -1;
        e->line = e->end_line = s->line;
        e->col = code * 8 + ((s->p[0] >> 4) & 7);
        e->end_col = e->col + (s->p[0] & 15);
        s->p++;
        return 1;
    }
}

static int
table_start(table_scan *s, PyObject *table, int firstlineno)
{
    if (!PyBytes_Check(table)) {
        PyErr_SetString(PyExc_TypeError, "line table must be bytes");
        return -1;
    }
    s->p = (const uint8_t *)PyBytes_AS_STRING(table);
    s->end = s->p + PyBytes_GET_SIZE(table);
    s->line = firstlineno;
    return 0;
}

PyDoc_STRVAR(line_at_doc,
"line_at(linetable, firstlineno, offset) -> int\n\n"
"The line of the instruction at byte offset `offset`, as PyCode_Addr2Line: firstlineno for a\n"
"negative offset (a frame not started), -1 where the table has no location or ends.");

static PyObject *
line_at(PyObject *self, PyObject *args)
{
    PyObject *table;
    int firstlineno;
    long long offset;
    if (!PyArg_ParseTuple(args, "SiL:line_at", &table, &firstlineno, &offset))
        return NULL;
    if (offset < 0)
        return PyLong_FromLong(firstlineno);
    table_scan s;
    table_entry e;
    if (table_start(&s, table, firstlineno) < 0)
        return NULL;
    long long unit = offset / 2, start = 0;
    int more;
    while ((more = scan_next(&s, &e)) > 0) {
        start += e.units;
        if (unit < start)
            return PyLong_FromLong(e.line);
    }
    return PyLong_FromLong(-1);
}

PyDoc_STRVAR(positions_doc,
"positions(linetable, firstlineno) -> list\n\n"
"(line, end_line, col, end_col) per code unit, None where absent: what co_positions() yields,\n"
"so the decoder can be checked against CPython's own.");

static PyObject *
positions(PyObject *self, PyObject *args)
{
    PyObject *table;
    int firstlineno;
    if (!PyArg_ParseTuple(args, "Si:positions", &table, &firstlineno))
        return NULL;
    table_scan s;
    table_entry e;
    if (table_start(&s, table, firstlineno) < 0)
        return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    int more;
    while ((more = scan_next(&s, &e)) > 0) {
        PyObject *item = Py_BuildValue("(NNNN)",
            e.line < 0 ? Py_NewRef(Py_None) : PyLong_FromLong(e.line),
            e.end_line < 0 ? Py_NewRef(Py_None) : PyLong_FromLong(e.end_line),
            e.col < 0 ? Py_NewRef(Py_None) : PyLong_FromLong(e.col),
            e.end_col < 0 ? Py_NewRef(Py_None) : PyLong_FromLong(e.end_col));
        if (item == NULL)
            goto fail;
        for (int i = 0; i < e.units; i++) {
            if (PyList_Append(out, item) < 0) {
                Py_DECREF(item);
                goto fail;
            }
        }
        Py_DECREF(item);
    }
    if (more < 0) {
        PyErr_SetString(PyExc_ValueError, "malformed line table");
        goto fail;
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

#if FPM_LAYOUT_KNOWN

/* ---- reading the stopped worker ---- */

/* Bounds against a corrupt chain or object: a frame walk of this many steps, strings and
 * line tables of this many bytes are not what a live interpreter holds. */
#define MAX_STEPS 100000
#define MAX_STRING_BYTES (64 * 1024)
#define MAX_TABLE_BYTES (16 * 1024 * 1024)
/* Strings and line tables are read with this much extra in one go, so that most need a
 * single syscall; a short read at a page boundary just costs a second one. */
#define SPECULATE 256

/* Reads exactly n bytes, or fails with errno set (EFAULT for a short read). */
static int
remote_read(pid_t pid, uintptr_t addr, void *buf, size_t n)
{
    struct iovec local = {buf, n}, remote = {(void *)addr, n};
    ssize_t got = process_vm_readv(pid, &local, 1, &remote, 1, 0);
    if (got == (ssize_t)n)
        return 0;
    if (got >= 0)
        errno = EFAULT;
    return -1;
}

/* Reads up to n bytes, at least `need`; returns the count or -1. */
static ssize_t
remote_read_some(pid_t pid, uintptr_t addr, void *buf, size_t n, size_t need)
{
    struct iovec local = {buf, n}, remote = {(void *)addr, n};
    ssize_t got = process_vm_readv(pid, &local, 1, &remote, 1, 0);
    if (got < 0 || (size_t)got >= need)
        return got;
    if (remote_read(pid, addr + got, (char *)buf + got, need - got) < 0)
        return -1;
    return (ssize_t)need;
}

static PyObject *
os_error(void)
{
    return PyErr_SetFromErrno(PyExc_OSError);
}

/* The str at addr, or NULL with no exception set when it is not a compact str. */
static PyObject *
read_str(pid_t pid, uintptr_t addr)
{
    union {
        PyASCIIObject ascii;
        PyCompactUnicodeObject compact;
        char raw[sizeof(PyCompactUnicodeObject) + SPECULATE];
    } head;
    if (addr == 0)
        return NULL;
    ssize_t got = remote_read_some(pid, addr, &head, sizeof head, sizeof(PyCompactUnicodeObject));
    if (got < 0 || head.ascii.ob_base.ob_type != &PyUnicode_Type || !head.ascii.state.compact)
        return NULL;
    int kind = head.ascii.state.kind;
    size_t start = head.ascii.state.ascii ? sizeof(PyASCIIObject) : sizeof(PyCompactUnicodeObject);
    Py_ssize_t length = head.ascii.length;
    if (kind < 1 || kind > 4 || length < 0 || (size_t)length * kind > MAX_STRING_BYTES)
        return NULL;
    size_t nbytes = (size_t)length * kind;
    if (start + nbytes <= (size_t)got)
        return PyUnicode_FromKindAndData(kind, head.raw + start, length);
    char *data = PyMem_Malloc(nbytes ? nbytes : 1);
    if (data == NULL)
        return PyErr_NoMemory();
    PyObject *s = NULL;
    if (remote_read(pid, addr + start, data, nbytes) == 0)
        s = PyUnicode_FromKindAndData(kind, data, length);
    PyMem_Free(data);
    return s;
}

/* The bytes at addr, or NULL with no exception set when it is not a bytes object. */
static PyObject *
read_bytes(pid_t pid, uintptr_t addr)
{
    union {
        PyBytesObject bytes;
        char raw[offsetof(PyBytesObject, ob_sval) + SPECULATE];
    } head;
    const size_t start = offsetof(PyBytesObject, ob_sval);
    if (addr == 0)
        return NULL;
    ssize_t got = remote_read_some(pid, addr, &head, sizeof head, start);
    if (got < 0 || head.bytes.ob_base.ob_base.ob_type != &PyBytes_Type)
        return NULL;
    Py_ssize_t size = head.bytes.ob_base.ob_size;
    if (size < 0 || size > MAX_TABLE_BYTES)
        return NULL;
    if (start + (size_t)size <= (size_t)got)
        return PyBytes_FromStringAndSize(head.raw + start, size);
    PyObject *b = PyBytes_FromStringAndSize(NULL, size);
    if (b == NULL)
        return NULL;
    if (remote_read(pid, addr + start, PyBytes_AS_STRING(b), size) < 0) {
        Py_DECREF(b);
        return NULL;
    }
    return b;
}

/* The part of a code object before its bytecode: every field the walk needs. */
#define CODE_HEAD offsetof(PyCodeObject, co_code_adaptive)
#define FRAME_HEAD offsetof(_PyInterpreterFrame, localsplus)
#define TSTATE_HEAD (offsetof(PyThreadState, native_thread_id) + sizeof(unsigned long))

PyDoc_STRVAR(find_tstate_doc,
"find_tstate(pid, tid) -> int\n\n"
"Address of the thread state whose native_thread_id is tid in process pid (a fork of this\n"
"one), walking _PyRuntime's interpreters and their threads; 0 if there is none.");

static PyObject *
find_tstate(PyObject *self, PyObject *args)
{
    int pid;
    unsigned long tid;
    if (!PyArg_ParseTuple(args, "ik:find_tstate", &pid, &tid))
        return NULL;
    uintptr_t interp;
    if (remote_read(pid, (uintptr_t)&_PyRuntime + offsetof(_PyRuntimeState, interpreters.head),
                    &interp, sizeof interp) < 0)
        return os_error();
    for (int steps = 0; interp != 0 && steps < MAX_STEPS; steps++) {
        uintptr_t ts;
        if (remote_read(pid, interp + offsetof(PyInterpreterState, threads.head), &ts, sizeof ts) < 0)
            return os_error();
        for (; ts != 0 && steps < MAX_STEPS; steps++) {
            PyThreadState t;
            if (remote_read(pid, ts, &t, TSTATE_HEAD) < 0)
                return os_error();
            if (t.native_thread_id == tid)
                return PyLong_FromUnsignedLongLong(ts);
            ts = (uintptr_t)t.next;
        }
        if (remote_read(pid, interp + offsetof(PyInterpreterState, next), &interp, sizeof interp) < 0)
            return os_error();
    }
    return PyLong_FromLong(0);
}

/* What identifies a cached code object's strings and table: if a code object at the same
 * address still points at the same objects, the cached copies are still right. */
static PyObject *
code_key(const PyCodeObject *c)
{
    return Py_BuildValue("(KKKii)",
        (unsigned long long)(uintptr_t)c->co_filename,
        (unsigned long long)(uintptr_t)c->co_qualname,
        (unsigned long long)(uintptr_t)c->co_linetable,
        c->co_firstlineno, c->_co_firsttraceable);
}

static PyObject *
str_or_unknown(PyObject *s)
{
    if (s != NULL || PyErr_Occurred())
        return s;
    return PyUnicode_FromString("?");
}

/* Adds code_addr -> (key, qualname, filename, linetable, firstlineno) to fresh, unless known
 * (the caller's cache) or fresh already has it under the same key. */
static int
note_code(pid_t pid, uintptr_t addr, const PyCodeObject *c, PyObject *known, PyObject *fresh)
{
    PyObject *addr_obj = PyLong_FromUnsignedLongLong(addr);
    PyObject *key = code_key(c);
    PyObject *entry = NULL;
    int rc = -1;
    if (addr_obj == NULL || key == NULL)
        goto done;
    PyObject *seen = PyDict_GetItemWithError(fresh, addr_obj);
    if (seen == NULL && !PyErr_Occurred())
        seen = PyDict_GetItemWithError(known, addr_obj);
    if (seen == NULL && PyErr_Occurred())
        goto done;
    if (seen != NULL && PyTuple_Check(seen) && PyTuple_GET_SIZE(seen) > 0) {
        int same = PyObject_RichCompareBool(PyTuple_GET_ITEM(seen, 0), key, Py_EQ);
        if (same < 0)
            goto done;
        if (same) {
            rc = 0;
            goto done;
        }
    }
    PyObject *qualname = str_or_unknown(read_str(pid, (uintptr_t)c->co_qualname));
    PyObject *filename = str_or_unknown(read_str(pid, (uintptr_t)c->co_filename));
    PyObject *table = read_bytes(pid, (uintptr_t)c->co_linetable);
    if (qualname == NULL || filename == NULL || (table == NULL && PyErr_Occurred())) {
        Py_XDECREF(qualname);
        Py_XDECREF(filename);
        Py_XDECREF(table);
        goto done;
    }
    if (table == NULL)
        table = PyBytes_FromStringAndSize(NULL, 0);
    entry = Py_BuildValue("(ONNNi)", key, qualname, filename, table, c->co_firstlineno);
    if (entry != NULL)
        rc = PyDict_SetItem(fresh, addr_obj, entry);
done:
    Py_XDECREF(addr_obj);
    Py_XDECREF(key);
    Py_XDECREF(entry);
    return rc;
}

PyDoc_STRVAR(read_stack_doc,
"read_stack(pid, tstate, tid, depth, known) -> (frames, fresh) or None\n\n"
"The innermost `depth` complete frames of the thread state at `tstate` in the stopped\n"
"process pid: frames is a list of (frame address, code address, byte offset of the last\n"
"instruction); fresh maps code addresses missing from, or changed since, the cache `known`\n"
"to (key, qualname, filename, linetable, firstlineno). None when tstate no longer belongs to\n"
"thread tid (a stale cache). OSError when the memory cannot be read.");

static PyObject *
read_stack(PyObject *self, PyObject *args)
{
    int pid, depth;
    unsigned long long tstate_addr;
    unsigned long tid;
    PyObject *known;
    if (!PyArg_ParseTuple(args, "iKkiO!:read_stack", &pid, &tstate_addr, &tid, &depth,
                          &PyDict_Type, &known))
        return NULL;

    PyThreadState t;
    if (remote_read(pid, (uintptr_t)tstate_addr, &t, TSTATE_HEAD) < 0)
        return os_error();
    if (t.native_thread_id != tid)
        Py_RETURN_NONE;

    PyObject *frames = PyList_New(0), *fresh = PyDict_New();
    if (frames == NULL || fresh == NULL)
        goto fail;

    uintptr_t current = 0;
    if (t.cframe != NULL &&
        remote_read(pid, (uintptr_t)t.cframe + offsetof(_PyCFrame, current_frame),
                    &current, sizeof current) < 0)
        goto fail_os;

    _PyInterpreterFrame frame;
    if (current != 0 && remote_read(pid, current, &frame, FRAME_HEAD) < 0)
        goto fail_os;
    for (int steps = 0; current != 0 && PyList_GET_SIZE(frames) < depth; steps++) {
        if (steps >= MAX_STEPS) {
            errno = ELOOP;
            goto fail_os;
        }
        /* This frame's code header and the next frame, in one syscall. */
        PyCodeObject code;
        _PyInterpreterFrame next;
        uintptr_t code_addr = (uintptr_t)frame.f_code, next_addr = (uintptr_t)frame.previous;
        struct iovec local[2] = {{&code, CODE_HEAD}, {&next, FRAME_HEAD}};
        struct iovec remote[2] = {{(void *)code_addr, CODE_HEAD}, {(void *)next_addr, FRAME_HEAD}};
        int n = next_addr ? 2 : 1;
        size_t want = CODE_HEAD + (n == 2 ? FRAME_HEAD : 0);
        ssize_t got = process_vm_readv(pid, local, n, remote, n, 0);
        if (got != (ssize_t)want) {
            if (got >= 0)
                errno = EFAULT;
            goto fail_os;
        }
        if (code.ob_base.ob_base.ob_type != &PyCode_Type) {
            errno = EINVAL;
            goto fail_os;
        }
        uintptr_t first = code_addr + CODE_HEAD;
        long long offset = ((long long)(uintptr_t)frame.prev_instr - (long long)first);
        /* CPython's _PyFrame_IsIncomplete: a frame still running its prologue (before
         * _co_firsttraceable) is not shown by CPython either. */
        int incomplete = frame.owner != FRAME_OWNED_BY_GENERATOR &&
            (uintptr_t)frame.prev_instr < first + (uintptr_t)code._co_firsttraceable * sizeof(_Py_CODEUNIT);
        if (!incomplete) {
            PyObject *row = Py_BuildValue("(KKL)", (unsigned long long)current,
                                          (unsigned long long)code_addr, offset);
            if (row == NULL || PyList_Append(frames, row) < 0) {
                Py_XDECREF(row);
                goto fail;
            }
            Py_DECREF(row);
            if (note_code(pid, code_addr, &code, known, fresh) < 0)
                goto fail;
        }
        current = next_addr;
        frame = next;
    }
    return Py_BuildValue("(NN)", frames, fresh);
fail_os:
    os_error();
fail:
    Py_XDECREF(frames);
    Py_XDECREF(fresh);
    return NULL;
}

static int
add_offsets(PyObject *m)
{
    struct { const char *name; size_t value; } table[] = {
        {"runtime.interpreters.head", offsetof(_PyRuntimeState, interpreters.head)},
        {"interp.next", offsetof(PyInterpreterState, next)},
        {"interp.threads.head", offsetof(PyInterpreterState, threads.head)},
        {"tstate.next", offsetof(PyThreadState, next)},
        {"tstate.cframe", offsetof(PyThreadState, cframe)},
        {"tstate.native_thread_id", offsetof(PyThreadState, native_thread_id)},
        {"cframe.current_frame", offsetof(_PyCFrame, current_frame)},
        {"iframe.f_code", offsetof(_PyInterpreterFrame, f_code)},
        {"iframe.previous", offsetof(_PyInterpreterFrame, previous)},
        {"iframe.prev_instr", offsetof(_PyInterpreterFrame, prev_instr)},
        {"iframe.owner", offsetof(_PyInterpreterFrame, owner)},
        {"iframe.localsplus", offsetof(_PyInterpreterFrame, localsplus)},
        {"code.co_firstlineno", offsetof(PyCodeObject, co_firstlineno)},
        {"code.co_filename", offsetof(PyCodeObject, co_filename)},
        {"code.co_name", offsetof(PyCodeObject, co_name)},
        {"code.co_qualname", offsetof(PyCodeObject, co_qualname)},
        {"code.co_linetable", offsetof(PyCodeObject, co_linetable)},
        {"code._co_firsttraceable", offsetof(PyCodeObject, _co_firsttraceable)},
        {"code.co_code_adaptive", offsetof(PyCodeObject, co_code_adaptive)},
        {"bytes.ob_sval", offsetof(PyBytesObject, ob_sval)},
        {"sizeof.PyASCIIObject", sizeof(PyASCIIObject)},
        {"sizeof.PyCompactUnicodeObject", sizeof(PyCompactUnicodeObject)},
    };
    PyObject *d = PyDict_New();
    if (d == NULL)
        return -1;
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        PyObject *v = PyLong_FromSize_t(table[i].value);
        if (v == NULL || PyDict_SetItemString(d, table[i].name, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return -1;
        }
        Py_DECREF(v);
    }
    if (PyModule_AddObject(m, "OFFSETS", d) < 0) {
        Py_DECREF(d);
        return -1;
    }
    return PyModule_AddObject(m, "RUNTIME", PyLong_FromVoidPtr(&_PyRuntime));
}

#endif  /* FPM_LAYOUT_KNOWN */

static PyMethodDef methods[] = {
    {"line_at", line_at, METH_VARARGS, line_at_doc},
    {"positions", positions, METH_VARARGS, positions_doc},
#if FPM_LAYOUT_KNOWN
    {"find_tstate", find_tstate, METH_VARARGS, find_tstate_doc},
    {"read_stack", read_stack, METH_VARARGS, read_stack_doc},
#endif
    {NULL, NULL, 0, NULL},
};

static int
exec_module(PyObject *m)
{
    if (PyModule_AddIntConstant(m, "SUPPORTED", FPM_LAYOUT_KNOWN) < 0 ||
        PyModule_AddIntConstant(m, "BUILT_FOR", PY_VERSION_HEX) < 0)
        return -1;
#if FPM_LAYOUT_KNOWN
    return add_offsets(m);
#else
    return 0;
#endif
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "fpm._pystack",
    .m_doc = "Reads a stopped forked worker's Python stack; decodes line tables. "
             "SUPPORTED is 0 on interpreters whose frame layout this build does not know; "
             "BUILT_FOR is the PY_VERSION_HEX of the headers it was compiled against.",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit__pystack(void)
{
    return PyModuleDef_Init(&module);
}
