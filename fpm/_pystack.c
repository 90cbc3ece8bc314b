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
 *
 * What the offsets were compiled for is exported (BUILT_FOR, BUILT_DEBUG, BUILT_TRACE_REFS) so
 * that fpm/trace.py refuses a build made for another interpreter. setup.py defines
 * FPM_BUILD_HEXVERSION, the version of the Python running the build: headers of another
 * version fail the build here rather than the slowlog later.
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

#if defined(FPM_BUILD_HEXVERSION) && defined(FPM_BUILD_VERSION)
_Static_assert(PY_VERSION_HEX == FPM_BUILD_HEXVERSION,
               "fpm/_pystack.c: these are the headers of Python " PY_VERSION ", but Python "
               FPM_BUILD_VERSION " is building it: its struct offsets would not be that "
               "interpreter's; build with the headers of the Python that runs pyfpm");
#endif

#ifdef Py_DEBUG
#define FPM_DEBUG 1
#else
#define FPM_DEBUG 0
#endif
#ifdef Py_TRACE_REFS
#define FPM_TRACE_REFS 1
#else
#define FPM_TRACE_REFS 0
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
/* Strings and line tables are read with their headers and this many bytes after, so that
 * most need no second syscall; a longer one costs one more. */
#define STR_SPAN (sizeof(PyCompactUnicodeObject) + 192)
#define TABLE_SPAN (offsetof(PyBytesObject, ob_sval) + 1024)
/* The innermost frames of a thread sit together just below its data stack's top: this much
 * of it is read in one go, and frames found inside need no syscall of their own. */
#define WINDOW (16 * 1024)
/* Frames walked per round beyond the depth asked for, to make up for skipped ones. */
#define SLACK 16
/* Code objects a walk may stop at (the worker's frames that call the application). */
#define MAX_STOPS 8
#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

#define CODE_HEAD offsetof(PyCodeObject, co_code_adaptive)
#define FRAME_HEAD offsetof(_PyInterpreterFrame, localsplus)
#define MAX_OFFSET(a, b) ((a) > (b) ? (a) : (b))
/* The thread state up to the last field used: its thread id and data stack. */
#define TSTATE_HEAD MAX_OFFSET(offsetof(PyThreadState, native_thread_id) + sizeof(unsigned long), \
                               offsetof(PyThreadState, datastack_limit) + sizeof(PyObject **))

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

/* Scattered reads: remote[i] into local[i] (same lengths), IOV_MAX at a time. got[i] is set
 * to the bytes each received: the kernel stops at the first unreadable byte, and the regions
 * after it are asked for again. Returns -1 (errno set) only when the process cannot be read
 * at all (ESRCH, EPERM...). */
static int
remote_readv(pid_t pid, struct iovec *local, struct iovec *remote, size_t n, size_t *got)
{
    for (size_t i = 0; i < n; i++)
        got[i] = 0;
    for (size_t start = 0; start < n; ) {
        size_t count = n - start < IOV_MAX ? n - start : IOV_MAX;
        ssize_t total = process_vm_readv(pid, local + start, count, remote + start, count, 0);
        if (total < 0 && errno == EFAULT) {
            start++;  /* nothing of the first region could be read */
            continue;
        }
        if (total < 0)
            return -1;
        size_t i = start;
        for (; i < start + count && total > 0; i++) {
            got[i] = (size_t)total < remote[i].iov_len ? (size_t)total : remote[i].iov_len;
            total -= got[i];
            if (got[i] < remote[i].iov_len)
                break;
        }
        if (i < start + count && got[i] < remote[i].iov_len) {
            start = i + 1;  /* the region that stopped the kernel; carry on after it */
            continue;
        }
        start += count;
    }
    return 0;
}

static PyObject *
os_error(void)
{
    return PyErr_SetFromErrno(PyExc_OSError);
}

/* The str at addr, given the first `got` bytes of it already read into buf (STR_SPAN long);
 * NULL with no exception set when it is not a compact str. */
static PyObject *
str_from(pid_t pid, uintptr_t addr, char *buf, size_t got)
{
    if (addr == 0)
        return NULL;
    if (got < sizeof(PyCompactUnicodeObject)) {
        if (remote_read(pid, addr, buf, sizeof(PyCompactUnicodeObject)) < 0)
            return NULL;
        got = sizeof(PyCompactUnicodeObject);
    }
    PyASCIIObject head;
    memcpy(&head, buf, sizeof head);
    if (head.ob_base.ob_type != &PyUnicode_Type || !head.state.compact)
        return NULL;
    int kind = head.state.kind;
    size_t start = head.state.ascii ? sizeof(PyASCIIObject) : sizeof(PyCompactUnicodeObject);
    Py_ssize_t length = head.length;
    if (kind < 1 || kind > 4 || length < 0 || (size_t)length * kind > MAX_STRING_BYTES)
        return NULL;
    size_t nbytes = (size_t)length * kind;
    if (start + nbytes <= got)
        return PyUnicode_FromKindAndData(kind, buf + start, length);
    char *data = PyMem_Malloc(nbytes);
    if (data == NULL)
        return PyErr_NoMemory();
    PyObject *s = NULL;
    if (remote_read(pid, addr + start, data, nbytes) == 0)
        s = PyUnicode_FromKindAndData(kind, data, length);
    PyMem_Free(data);
    return s;
}

/* The bytes at addr, given its first `got` bytes in buf (TABLE_SPAN long); NULL with no
 * exception set when it is not a bytes object. */
static PyObject *
bytes_from(pid_t pid, uintptr_t addr, char *buf, size_t got)
{
    const size_t start = offsetof(PyBytesObject, ob_sval);
    if (addr == 0)
        return NULL;
    if (got < start) {
        if (remote_read(pid, addr, buf, start) < 0)
            return NULL;
        got = start;
    }
    PyBytesObject head;
    memcpy(&head, buf, start);
    if (head.ob_base.ob_base.ob_type != &PyBytes_Type)
        return NULL;
    Py_ssize_t size = head.ob_base.ob_size;
    if (size < 0 || size > MAX_TABLE_BYTES)
        return NULL;
    if (start + (size_t)size <= got)
        return PyBytes_FromStringAndSize(buf + start, size);
    PyObject *b = PyBytes_FromStringAndSize(NULL, size);
    if (b == NULL)
        return NULL;
    if (remote_read(pid, addr + start, PyBytes_AS_STRING(b), size) < 0) {
        Py_DECREF(b);
        return NULL;
    }
    return b;
}

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

/* A stack being read: the frames walked, their code headers, the code objects to fetch. */
typedef struct {
    pid_t pid;
    uintptr_t window_start;     /* the data stack window read up front */
    size_t window_len;
    char *window;
    uintptr_t *frame_addr;      /* frames walked, innermost first */
    _PyInterpreterFrame *frames;
    size_t nframes, capacity;
    PyCodeObject *codes;        /* frames[i]'s code header in codes[i] */
    size_t *todo;               /* indexes (into frames) of code objects to fetch */
    size_t ntodo;
} walk;

static int
walk_grow(walk *w, size_t need)
{
    if (need <= w->capacity)
        return 0;
    size_t cap = need * 2;
    uintptr_t *a = PyMem_Realloc(w->frame_addr, cap * sizeof *a);
    if (a != NULL)
        w->frame_addr = a;
    _PyInterpreterFrame *f = PyMem_Realloc(w->frames, cap * sizeof *f);
    if (f != NULL)
        w->frames = f;
    PyCodeObject *c = PyMem_Realloc(w->codes, cap * sizeof *c);
    if (c != NULL)
        w->codes = c;
    size_t *t = PyMem_Realloc(w->todo, cap * sizeof *t);
    if (t != NULL)
        w->todo = t;
    if (a == NULL || f == NULL || c == NULL || t == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    w->capacity = cap;
    return 0;
}

static void
walk_free(walk *w)
{
    PyMem_Free(w->window);
    PyMem_Free(w->frame_addr);
    PyMem_Free(w->frames);
    PyMem_Free(w->codes);
    PyMem_Free(w->todo);
}

/* Up to `count` more frames from `next` on, then their code headers in one scattered read.
 * Returns the address after the last frame walked (0 at the chain's end), or -1. */
static intptr_t
walk_more(walk *w, uintptr_t next, size_t count)
{
    size_t first = w->nframes;
    if (walk_grow(w, first + count) < 0)
        return -1;
    while (next != 0 && w->nframes < first + count) {
        if (w->nframes >= MAX_STEPS) {
            errno = ELOOP;
            os_error();
            return -1;
        }
        _PyInterpreterFrame *f = &w->frames[w->nframes];
        if (next >= w->window_start && next + FRAME_HEAD <= w->window_start + w->window_len)
            memcpy(f, w->window + (next - w->window_start), FRAME_HEAD);
        else if (remote_read(w->pid, next, f, FRAME_HEAD) < 0) {
            os_error();
            return -1;
        }
        w->frame_addr[w->nframes++] = next;
        next = (uintptr_t)f->previous;
    }
    size_t n = w->nframes - first;
    struct iovec *local = PyMem_Malloc(2 * n * sizeof(struct iovec) + 1);
    size_t *got = PyMem_Malloc(n * sizeof(size_t) + 1);
    if (local == NULL || got == NULL) {
        PyMem_Free(local);
        PyMem_Free(got);
        PyErr_NoMemory();
        return -1;
    }
    struct iovec *remote = local + n;
    for (size_t i = 0; i < n; i++) {
        local[i] = (struct iovec){&w->codes[first + i], CODE_HEAD};
        remote[i] = (struct iovec){(void *)w->frames[first + i].f_code, CODE_HEAD};
    }
    int rc = remote_readv(w->pid, local, remote, n, got);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (got[i] != CODE_HEAD) {
            errno = EFAULT;
            rc = -1;
        }
        else if (w->codes[first + i].ob_base.ob_base.ob_type != &PyCode_Type) {
            errno = EINVAL;
            rc = -1;
        }
    }
    PyMem_Free(local);
    PyMem_Free(got);
    if (rc < 0) {
        os_error();
        return -1;
    }
    return (intptr_t)next;
}

/* Whether frame i is one to show, and if so, queue its code object for fetching unless the
 * cache `known` or the queue has it under the same key. */
static int
walk_note(walk *w, size_t i, PyObject *known, PyObject *queued, PyObject *rows)
{
    const _PyInterpreterFrame *f = &w->frames[i];
    const PyCodeObject *c = &w->codes[i];
    uintptr_t code_addr = (uintptr_t)f->f_code;
    uintptr_t first = code_addr + CODE_HEAD;
    /* CPython's _PyFrame_IsIncomplete: a frame still in its prologue (before
     * _co_firsttraceable) is not shown by CPython either. */
    if (f->owner != FRAME_OWNED_BY_GENERATOR &&
        (uintptr_t)f->prev_instr < first + (uintptr_t)c->_co_firsttraceable * sizeof(_Py_CODEUNIT))
        return 0;
    long long offset = (long long)(uintptr_t)f->prev_instr - (long long)first;
    PyObject *row = Py_BuildValue("(KKL)", (unsigned long long)w->frame_addr[i],
                                  (unsigned long long)code_addr, offset);
    if (row == NULL || PyList_Append(rows, row) < 0) {
        Py_XDECREF(row);
        return -1;
    }
    Py_DECREF(row);

    PyObject *addr = PyTuple_GET_ITEM(row, 1);  /* still alive: the list holds row */
    int pending = PySet_Contains(queued, addr);
    if (pending != 0)
        return pending < 0 ? -1 : 0;
    PyObject *key = code_key(c);
    if (key == NULL)
        return -1;
    PyObject *seen = PyDict_GetItemWithError(known, addr);
    int same = 0;
    if (seen != NULL && PyTuple_Check(seen) && PyTuple_GET_SIZE(seen) > 0)
        same = PyObject_RichCompareBool(PyTuple_GET_ITEM(seen, 0), key, Py_EQ);
    Py_DECREF(key);
    if (same < 0 || PyErr_Occurred())
        return -1;
    if (same)
        return 0;
    if (PySet_Add(queued, addr) < 0)
        return -1;
    w->todo[w->ntodo++] = i;
    return 0;
}

static PyObject *
str_or_unknown(PyObject *s)
{
    if (s != NULL || PyErr_Occurred())
        return s;
    return PyUnicode_FromString("?");
}

/* The queued code objects' qualname, filename and line table, read in one scattered read:
 * code address -> (key, qualname, filename, linetable, firstlineno). */
static PyObject *
walk_fetch(walk *w)
{
    size_t n = w->ntodo, span = 2 * STR_SPAN + TABLE_SPAN;
    PyObject *fresh = PyDict_New();
    char *buf = PyMem_Malloc(n * span + 1);
    struct iovec *local = PyMem_Malloc(6 * n * sizeof(struct iovec) + 1);
    size_t *got = PyMem_Malloc(3 * n * sizeof(size_t) + 1);
    if (fresh == NULL || buf == NULL || local == NULL || got == NULL) {
        if (fresh != NULL)
            PyErr_NoMemory();
        goto fail;
    }
    struct iovec *remote = local + 3 * n;
    for (size_t j = 0; j < n; j++) {
        const PyCodeObject *c = &w->codes[w->todo[j]];
        char *b = buf + j * span;
        local[3 * j] = (struct iovec){b, STR_SPAN};
        local[3 * j + 1] = (struct iovec){b + STR_SPAN, STR_SPAN};
        local[3 * j + 2] = (struct iovec){b + 2 * STR_SPAN, TABLE_SPAN};
        remote[3 * j] = (struct iovec){c->co_qualname, STR_SPAN};
        remote[3 * j + 1] = (struct iovec){c->co_filename, STR_SPAN};
        remote[3 * j + 2] = (struct iovec){c->co_linetable, TABLE_SPAN};
    }
    if (remote_readv(w->pid, local, remote, 3 * n, got) < 0) {
        os_error();
        goto fail;
    }
    for (size_t j = 0; j < n; j++) {
        const PyCodeObject *c = &w->codes[w->todo[j]];
        char *b = buf + j * span;
        PyObject *qualname = str_or_unknown(str_from(w->pid, (uintptr_t)c->co_qualname, b, got[3 * j]));
        PyObject *filename = str_or_unknown(
            str_from(w->pid, (uintptr_t)c->co_filename, b + STR_SPAN, got[3 * j + 1]));
        PyObject *table = bytes_from(w->pid, (uintptr_t)c->co_linetable, b + 2 * STR_SPAN,
                                     got[3 * j + 2]);
        if (table == NULL && !PyErr_Occurred())
            table = PyBytes_FromStringAndSize(NULL, 0);
        PyObject *key = code_key(c);
        PyObject *addr = PyLong_FromUnsignedLongLong((uintptr_t)w->frames[w->todo[j]].f_code);
        PyObject *entry = NULL;
        if (qualname != NULL && filename != NULL && table != NULL && key != NULL && addr != NULL)
            entry = Py_BuildValue("(OOOOi)", key, qualname, filename, table, c->co_firstlineno);
        int rc = entry == NULL ? -1 : PyDict_SetItem(fresh, addr, entry);
        Py_XDECREF(qualname);
        Py_XDECREF(filename);
        Py_XDECREF(table);
        Py_XDECREF(key);
        Py_XDECREF(addr);
        Py_XDECREF(entry);
        if (rc < 0)
            goto fail;
    }
    PyMem_Free(buf);
    PyMem_Free(local);
    PyMem_Free(got);
    return fresh;
fail:
    Py_XDECREF(fresh);
    PyMem_Free(buf);
    PyMem_Free(local);
    PyMem_Free(got);
    return NULL;
}

/* Whether the code object at addr is one of the n in stops. */
static int
is_stop(const uintptr_t *stops, Py_ssize_t n, uintptr_t addr)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if (stops[i] == addr)
            return 1;
    return 0;
}

PyDoc_STRVAR(read_stack_doc,
"read_stack(pid, tstate, tid, depth, known, stop=()) -> (frames, fresh) or None\n\n"
"The innermost `depth` complete frames of the thread state at `tstate` in the stopped\n"
"process pid, up to the first frame running one of the code objects at the addresses in\n"
"the tuple `stop` (that frame and those below it are left out): frames is a list of\n"
"(frame address, code address, byte offset of the last instruction); fresh maps code\n"
"addresses missing from, or changed since, the cache `known` to (key, qualname, filename,\n"
"linetable, firstlineno). None when tstate no longer belongs to thread tid (a stale cache).\n"
"OSError when the memory cannot be read.\n\n"
"System calls: one for the thread state, one for the current frame pointer and the top of\n"
"the data stack (where the innermost frames are), one for the frames' code headers, one for\n"
"the strings and line tables of code objects not in `known`; plus one per frame outside\n"
"that window (generators, deep stacks) and per string or table longer than read ahead.");

static PyObject *
read_stack(PyObject *self, PyObject *args)
{
    int pid, depth;
    unsigned long long tstate_addr;
    unsigned long tid;
    PyObject *known, *stop = NULL;
    if (!PyArg_ParseTuple(args, "iKkiO!|O!:read_stack", &pid, &tstate_addr, &tid, &depth,
                          &PyDict_Type, &known, &PyTuple_Type, &stop))
        return NULL;
    uintptr_t stops[MAX_STOPS];
    Py_ssize_t nstops = stop == NULL ? 0 : PyTuple_GET_SIZE(stop);
    if (nstops > MAX_STOPS) {
        PyErr_Format(PyExc_ValueError, "read_stack: %zd stop code objects, more than %d",
                     nstops, MAX_STOPS);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nstops; i++) {
        stops[i] = (uintptr_t)PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(stop, i));
        if (PyErr_Occurred())
            return NULL;
    }

    PyThreadState t;
    if (remote_read(pid, (uintptr_t)tstate_addr, &t, TSTATE_HEAD) < 0)
        return os_error();
    if (t.native_thread_id != tid || t.cframe == NULL)
        Py_RETURN_NONE;

    walk w = {.pid = pid};
    PyObject *rows = PyList_New(0), *queued = PySet_New(NULL), *fresh = NULL;
    if (rows == NULL || queued == NULL)
        goto fail;

    /* The current frame pointer, and the top of the data stack, in one syscall. */
    uintptr_t current = 0;
    uintptr_t top = (uintptr_t)t.datastack_top, chunk = (uintptr_t)t.datastack_chunk;
    uintptr_t start = top > chunk + WINDOW ? top - WINDOW : chunk;
    size_t span = chunk != 0 && top > start ? top - start : 0;
    w.window = PyMem_Malloc(span + 1);
    if (w.window == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    struct iovec local[2] = {{&current, sizeof current}, {w.window, span}};
    struct iovec remote[2] = {
        {(char *)t.cframe + offsetof(_PyCFrame, current_frame), sizeof current},
        {(void *)start, span}};
    size_t got[2];
    if (remote_readv(pid, local, remote, span ? 2 : 1, got) < 0)
        goto fail_os;
    if (got[0] != sizeof current) {
        errno = EFAULT;
        goto fail_os;
    }
    w.window_start = start;
    w.window_len = span ? got[1] : 0;

    uintptr_t next = current;
    size_t done = 0;
    while (PyList_GET_SIZE(rows) < depth && (next != 0 || done < w.nframes)) {
        if (done == w.nframes) {
            intptr_t after = walk_more(&w, next, (size_t)(depth - PyList_GET_SIZE(rows)) + SLACK);
            if (after < 0)
                goto fail;
            next = (uintptr_t)after;
        }
        if (is_stop(stops, nstops, (uintptr_t)w.frames[done].f_code))
            break;
        if (walk_note(&w, done++, known, queued, rows) < 0)
            goto fail;
    }
    fresh = w.ntodo ? walk_fetch(&w) : PyDict_New();
    if (fresh == NULL)
        goto fail;
    walk_free(&w);
    Py_DECREF(queued);
    return Py_BuildValue("(NN)", rows, fresh);
fail_os:
    os_error();
fail:
    walk_free(&w);
    Py_XDECREF(rows);
    Py_XDECREF(queued);
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
        PyModule_AddIntConstant(m, "BUILT_FOR", PY_VERSION_HEX) < 0 ||
        PyModule_AddIntConstant(m, "BUILT_DEBUG", FPM_DEBUG) < 0 ||
        PyModule_AddIntConstant(m, "BUILT_TRACE_REFS", FPM_TRACE_REFS) < 0)
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
             "BUILT_FOR is the PY_VERSION_HEX of the headers it was compiled against, "
             "BUILT_DEBUG and BUILT_TRACE_REFS whether they were a Py_DEBUG or "
             "Py_TRACE_REFS build's.",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit__pystack(void)
{
    return PyModuleDef_Init(&module);
}
