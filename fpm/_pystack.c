/* Reads a stopped forked worker's Python stack from the master (the slowlog).
 *
 * The worker is a fork of the master without exec, so _PyRuntime and every type object sit at
 * the same addresses in both: the walk starts at this process's own &_PyRuntime and checks
 * remote objects' ob_type against this process's type objects.
 *
 * Where each field sits is one table, `L`, filled when the module is imported:
 * - on 3.13 and later from the running interpreter's own _Py_DebugOffsets (the first field of
 *   _PyRuntime, kept by CPython for out-of-process readers), so that the numbers are those
 *   of the interpreter that runs, whatever patch release the headers were;
 * - on 3.11 and 3.12, which have no such table, from the internal headers (offsetof);
 * - in either case the few fields the debug offsets lack (the data stack's top, a code
 *   object's first traceable instruction, a compact str's header) from the public headers.
 * fpm/trace.py then reads a forked child's known stack with it before the first use: a
 * layout that does not read it right is never used.
 *
 * fpm/trace.py calls read_stack() while the worker is in a ptrace stop, so that function does
 * only process_vm_readv calls and copies: one syscall per frame (the code header of a frame
 * and the next frame are fetched together), plus the strings and line table of code objects
 * not yet in the caller's cache. Line numbers are decoded by line_at() after the detach.
 *
 * What the build was for is exported (BUILT_FOR, BUILT_DEBUG, BUILT_TRACE_REFS): the
 * headers of another minor version lay objects out otherwise, so fpm/trace.py refuses a
 * build made for one. setup.py defines FPM_BUILD_HEXVERSION, the version of the Python
 * running the build: another minor's headers fail the build here rather than the slowlog later.
 */
#define PY_SSIZE_T_CLEAN
#define Py_BUILD_CORE_MODULE
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030F0000 && !defined(Py_GIL_DISABLED)
#define FPM_LAYOUT_KNOWN 1
#include "internal/pycore_runtime.h"
#if PY_VERSION_HEX >= 0x030E0000
#include "internal/pycore_interpframe_structs.h"   /* the frame owners */
#include "internal/pycore_stackref.h"              /* Py_TAG_BITS */
#else
#include "internal/pycore_frame.h"
#include "internal/pycore_interp.h"
#endif
#else
#define FPM_LAYOUT_KNOWN 0
#endif

#if defined(FPM_BUILD_HEXVERSION) && defined(FPM_BUILD_VERSION)
_Static_assert(PY_VERSION_HEX >> 16 == FPM_BUILD_HEXVERSION >> 16,
               "fpm/_pystack.c: these are the headers of Python " PY_VERSION ", but Python "
               FPM_BUILD_VERSION " is building it: another minor version lays out its frames "
               "otherwise; build with the headers of the Python that runs pyfpm");
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

/* ---- where each field sits ---- */

typedef struct {
    size_t interpreters_head;                       /* in _PyRuntime */
    size_t interp_next, interp_threads_head;
    size_t ts_next, ts_native_thread_id, ts_datastack_chunk, ts_datastack_top, ts_head;
    size_t ts_frame;        /* the current frame (3.13+), or the _PyCFrame holding it */
    size_t cframe_frame;    /* 3.11, 3.12: the current frame's offset in _PyCFrame; else NONE */
    size_t fr_code, fr_previous, fr_instr, fr_owner, fr_head;
    uintptr_t code_tags;    /* low bits of a frame's code pointer that are tags (3.14) */
    int owned_by_generator; /* a generator's frame is always complete */
    int owned_by_c;         /* owners from this value on are C or interpreter shims, no code */
    size_t co_filename, co_qualname, co_linetable, co_firstlineno, co_firsttraceable, co_head;
    size_t ob_type;
    size_t bytes_size, bytes_sval;
    size_t str_state, str_length, str_ascii, str_compact;
    const char *source;     /* where the offsets came from */
} layout;

#define NONE ((size_t)-1)
#define MAX_OFFSET(a, b) ((a) > (b) ? (a) : (b))

static layout L;

/* Fills L; NULL, or why this interpreter cannot be read. */
static const char *
layout_fill(void)
{
    L.ts_datastack_top = offsetof(PyThreadState, datastack_top);
    L.co_firsttraceable = offsetof(PyCodeObject, _co_firsttraceable);
    L.str_compact = sizeof(PyCompactUnicodeObject);
    L.owned_by_generator = FRAME_OWNED_BY_GENERATOR;
#if PY_VERSION_HEX < 0x030D0000
    L.source = "headers";
    L.interpreters_head = offsetof(_PyRuntimeState, interpreters.head);
    L.interp_next = offsetof(PyInterpreterState, next);
    L.interp_threads_head = offsetof(PyInterpreterState, threads.head);
    L.ts_next = offsetof(PyThreadState, next);
    L.ts_native_thread_id = offsetof(PyThreadState, native_thread_id);
    L.ts_datastack_chunk = offsetof(PyThreadState, datastack_chunk);
    L.ts_frame = offsetof(PyThreadState, cframe);
    L.cframe_frame = offsetof(_PyCFrame, current_frame);
    L.fr_code = offsetof(_PyInterpreterFrame, f_code);
    L.fr_previous = offsetof(_PyInterpreterFrame, previous);
    L.fr_instr = offsetof(_PyInterpreterFrame, prev_instr);
    L.fr_owner = offsetof(_PyInterpreterFrame, owner);
    L.fr_head = offsetof(_PyInterpreterFrame, localsplus);
    L.code_tags = 0;
#if PY_VERSION_HEX >= 0x030C0000
    L.owned_by_c = FRAME_OWNED_BY_CSTACK;
#else
    L.owned_by_c = INT_MAX;  /* 3.11's entry frames are ordinary frames */
#endif
    L.co_filename = offsetof(PyCodeObject, co_filename);
    L.co_qualname = offsetof(PyCodeObject, co_qualname);
    L.co_linetable = offsetof(PyCodeObject, co_linetable);
    L.co_firstlineno = offsetof(PyCodeObject, co_firstlineno);
    L.co_head = offsetof(PyCodeObject, co_code_adaptive);
    L.ob_type = offsetof(PyObject, ob_type);
    L.bytes_size = offsetof(PyVarObject, ob_size);
    L.bytes_sval = offsetof(PyBytesObject, ob_sval);
    L.str_state = offsetof(PyASCIIObject, state);
    L.str_length = offsetof(PyASCIIObject, length);
    L.str_ascii = sizeof(PyASCIIObject);
#else
    const _Py_DebugOffsets *d = &_PyRuntime.debug_offsets;
    if (memcmp(d->cookie, "xdebugpy", 8) != 0)
        return "the interpreter's _Py_DebugOffsets has no cookie";
    if (d->version >> 16 != PY_VERSION_HEX >> 16)
        return "the interpreter's _Py_DebugOffsets are of another minor version";
    if (d->free_threaded)
        return "a free-threaded interpreter's frames are not read";
    L.source = "_Py_DebugOffsets";
    L.interpreters_head = d->runtime_state.interpreters_head;
    L.interp_next = d->interpreter_state.next;
    L.interp_threads_head = d->interpreter_state.threads_head;
    L.ts_next = d->thread_state.next;
    L.ts_native_thread_id = d->thread_state.native_thread_id;
    L.ts_datastack_chunk = d->thread_state.datastack_chunk;
    L.ts_frame = d->thread_state.current_frame;
    L.cframe_frame = NONE;
    L.fr_code = d->interpreter_frame.executable;
    L.fr_previous = d->interpreter_frame.previous;
    L.fr_instr = d->interpreter_frame.instr_ptr;
    L.fr_owner = d->interpreter_frame.owner;
    L.fr_head = d->interpreter_frame.localsplus;
#if PY_VERSION_HEX >= 0x030E0000
    L.code_tags = Py_TAG_BITS;  /* f_executable is a _PyStackRef */
    L.owned_by_c = FRAME_OWNED_BY_INTERPRETER;
#else
    L.code_tags = 0;
    L.owned_by_c = FRAME_OWNED_BY_CSTACK;
#endif
    L.co_filename = d->code_object.filename;
    L.co_qualname = d->code_object.qualname;
    L.co_linetable = d->code_object.linetable;
    L.co_firstlineno = d->code_object.firstlineno;
    L.co_head = d->code_object.co_code_adaptive;
    L.ob_type = d->pyobject.ob_type;
    L.bytes_size = d->bytes_object.ob_size;
    L.bytes_sval = d->bytes_object.ob_sval;
    L.str_state = d->unicode_object.state;
    L.str_length = d->unicode_object.length;
    L.str_ascii = d->unicode_object.asciiobject_size;
#endif
    /* The thread state up to the last field used. */
    size_t head = MAX_OFFSET(L.ts_next, L.ts_native_thread_id);
    head = MAX_OFFSET(head, MAX_OFFSET(L.ts_datastack_chunk, L.ts_datastack_top));
    L.ts_head = MAX_OFFSET(head, L.ts_frame) + sizeof(uintptr_t);
    if (L.fr_head > 4096 || L.co_head > 4096 || L.ts_head > 65536 || L.str_ascii > 1024 ||
        L.str_compact > 1024 || L.bytes_sval > 1024)
        return "the interpreter's offsets are out of any plausible range";
    return NULL;
}

/* Fields of a copied object, by offset: a copy has no alignment to rely on. */
#define FPM_FIELD_READER(name, type)                        \
    static inline type                                      \
    name(const char *base, size_t offset)                   \
    {                                                       \
        type v;                                             \
        memcpy(&v, base + offset, sizeof v);                \
        return v;                                           \
    }
FPM_FIELD_READER(at_ptr, uintptr_t)
FPM_FIELD_READER(at_int, int)
FPM_FIELD_READER(at_ssize, Py_ssize_t)

/* ---- reading the stopped worker ---- */

/* Bounds against a corrupt chain or object: a frame walk of this many steps, strings and
 * line tables of this many bytes are not what a live interpreter holds. */
#define MAX_STEPS 100000
#define MAX_STRING_BYTES (64 * 1024)
#define MAX_TABLE_BYTES (16 * 1024 * 1024)
/* Strings and line tables are read with their headers and this many bytes after, so that
 * most need no second syscall; a longer one costs one more. */
#define STR_SPAN (L.str_compact + 192)
#define TABLE_SPAN (L.bytes_sval + 1024)
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
#define CODE_UNIT 2  /* sizeof(_Py_CODEUNIT) */

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
    if (got < L.str_compact) {
        if (remote_read(pid, addr, buf, L.str_compact) < 0)
            return NULL;
        got = L.str_compact;
    }
    PyASCIIObject head;
    memcpy(&head.state, buf + L.str_state, sizeof head.state);
    if (at_ptr(buf, L.ob_type) != (uintptr_t)&PyUnicode_Type || !head.state.compact)
        return NULL;
    int kind = head.state.kind;
    size_t start = head.state.ascii ? L.str_ascii : L.str_compact;
    Py_ssize_t length = at_ssize(buf, L.str_length);
    if (kind < 1 || kind > 4 || length < 0 || (size_t)length * kind > MAX_STRING_BYTES)
        return NULL;
    size_t nbytes = (size_t)length * kind;
    if (start + nbytes <= got)
        return PyUnicode_FromKindAndData(kind, buf + start, length);
    char *data = PyMem_Malloc(nbytes + 1);
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
    const size_t start = L.bytes_sval;
    if (addr == 0)
        return NULL;
    if (got < start) {
        if (remote_read(pid, addr, buf, start) < 0)
            return NULL;
        got = start;
    }
    if (at_ptr(buf, L.ob_type) != (uintptr_t)&PyBytes_Type)
        return NULL;
    Py_ssize_t size = at_ssize(buf, L.bytes_size);
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
    char *t = PyMem_Malloc(L.ts_head);
    if (t == NULL)
        return PyErr_NoMemory();
    PyObject *found = NULL;
    uintptr_t interp;
    if (remote_read(pid, (uintptr_t)&_PyRuntime + L.interpreters_head, &interp, sizeof interp) < 0)
        goto fail;
    for (int steps = 0; interp != 0 && steps < MAX_STEPS; steps++) {
        uintptr_t ts;
        if (remote_read(pid, interp + L.interp_threads_head, &ts, sizeof ts) < 0)
            goto fail;
        for (; ts != 0 && steps < MAX_STEPS; steps++) {
            if (remote_read(pid, ts, t, L.ts_head) < 0)
                goto fail;
            unsigned long native;
            memcpy(&native, t + L.ts_native_thread_id, sizeof native);
            if (native == tid) {
                found = PyLong_FromUnsignedLongLong(ts);
                goto done;
            }
            ts = at_ptr(t, L.ts_next);
        }
        if (remote_read(pid, interp + L.interp_next, &interp, sizeof interp) < 0)
            goto fail;
    }
    found = PyLong_FromLong(0);
done:
    PyMem_Free(t);
    return found;
fail:
    PyMem_Free(t);
    return os_error();
}

/* A stack being read: the frames walked, their code headers, the code objects to fetch. */
typedef struct {
    pid_t pid;
    uintptr_t window_start;     /* the data stack window read up front */
    size_t window_len;
    char *window;
    uintptr_t *frame_addr;      /* frames walked, innermost first */
    char *frames;               /* frame i's first L.fr_head bytes at i * L.fr_head */
    char *codes;                /* its code object's first L.co_head bytes at i * L.co_head */
    char *is_code;              /* whether codes[i] is a code object's (else: a shim's frame) */
    size_t nframes, capacity;
    size_t *todo;               /* indexes (into frames) of code objects to fetch */
    size_t ntodo;
} walk;

#define FRAME(w, i) ((w)->frames + (i) * L.fr_head)
#define CODE(w, i) ((w)->codes + (i) * L.co_head)

static inline uintptr_t
frame_code(const char *frame)
{
    return at_ptr(frame, L.fr_code) & ~L.code_tags;
}

static inline int
frame_owner(const char *frame)
{
    return (int)(signed char)frame[L.fr_owner];
}

static int
walk_grow(walk *w, size_t need)
{
    if (need <= w->capacity)
        return 0;
    size_t cap = need * 2;
    uintptr_t *a = PyMem_Realloc(w->frame_addr, cap * sizeof *a);
    if (a != NULL)
        w->frame_addr = a;
    char *f = PyMem_Realloc(w->frames, cap * L.fr_head);
    if (f != NULL)
        w->frames = f;
    char *c = PyMem_Realloc(w->codes, cap * L.co_head);
    if (c != NULL)
        w->codes = c;
    char *k = PyMem_Realloc(w->is_code, cap);
    if (k != NULL)
        w->is_code = k;
    size_t *t = PyMem_Realloc(w->todo, cap * sizeof *t);
    if (t != NULL)
        w->todo = t;
    if (a == NULL || f == NULL || c == NULL || k == NULL || t == NULL) {
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
    PyMem_Free(w->is_code);
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
        char *f = FRAME(w, w->nframes);
        if (next >= w->window_start && next + L.fr_head <= w->window_start + w->window_len)
            memcpy(f, w->window + (next - w->window_start), L.fr_head);
        else if (remote_read(w->pid, next, f, L.fr_head) < 0) {
            os_error();
            return -1;
        }
        w->frame_addr[w->nframes++] = next;
        next = at_ptr(f, L.fr_previous);
    }
    size_t n = w->nframes - first, asked = 0;
    struct iovec *local = PyMem_Malloc(2 * n * sizeof(struct iovec) + 1);
    size_t *got = PyMem_Malloc(n * sizeof(size_t) + 1), *which = PyMem_Malloc(n * sizeof(size_t) + 1);
    if (local == NULL || got == NULL || which == NULL) {
        PyMem_Free(local);
        PyMem_Free(got);
        PyMem_Free(which);
        PyErr_NoMemory();
        return -1;
    }
    struct iovec *remote = local + n;
    for (size_t i = first; i < w->nframes; i++) {
        w->is_code[i] = 0;
        if (frame_owner(FRAME(w, i)) >= L.owned_by_c)
            continue;  /* an entry shim: no code object of the application's */
        which[asked] = i;
        local[asked] = (struct iovec){CODE(w, i), L.co_head};
        remote[asked++] = (struct iovec){(void *)frame_code(FRAME(w, i)), L.co_head};
    }
    int rc = remote_readv(w->pid, local, remote, asked, got);
    for (size_t j = 0; rc == 0 && j < asked; j++) {
        size_t i = which[j];
        if (got[j] != L.co_head) {
            errno = EFAULT;
            rc = -1;
        }
        else
            w->is_code[i] = at_ptr(CODE(w, i), L.ob_type) == (uintptr_t)&PyCode_Type;
    }
    PyMem_Free(local);
    PyMem_Free(got);
    PyMem_Free(which);
    if (rc < 0) {
        os_error();
        return -1;
    }
    return (intptr_t)next;
}

/* What identifies a cached code object's strings and table: if a code object at the same
 * address still points at the same objects, the cached copies are still right. */
static PyObject *
code_key(const char *c)
{
    return Py_BuildValue("(KKKii)",
        (unsigned long long)at_ptr(c, L.co_filename),
        (unsigned long long)at_ptr(c, L.co_qualname),
        (unsigned long long)at_ptr(c, L.co_linetable),
        at_int(c, L.co_firstlineno), at_int(c, L.co_firsttraceable));
}

/* Whether frame i is one to show, and if so, queue its code object for fetching unless the
 * cache `known` or the queue has it under the same key. */
static int
walk_note(walk *w, size_t i, PyObject *known, PyObject *queued, PyObject *rows)
{
    if (!w->is_code[i])
        return 0;
    const char *f = FRAME(w, i), *c = CODE(w, i);
    uintptr_t code_addr = frame_code(f);
    uintptr_t first = code_addr + L.co_head, instr = at_ptr(f, L.fr_instr);
    /* CPython's _PyFrame_IsIncomplete: a frame still in its prologue (before
     * _co_firsttraceable) is not shown by CPython either. */
    if (frame_owner(f) != L.owned_by_generator &&
        instr < first + (uintptr_t)at_int(c, L.co_firsttraceable) * CODE_UNIT)
        return 0;
    long long offset = (long long)instr - (long long)first;
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
        const char *c = CODE(w, w->todo[j]);
        char *b = buf + j * span;
        local[3 * j] = (struct iovec){b, STR_SPAN};
        local[3 * j + 1] = (struct iovec){b + STR_SPAN, STR_SPAN};
        local[3 * j + 2] = (struct iovec){b + 2 * STR_SPAN, TABLE_SPAN};
        remote[3 * j] = (struct iovec){(void *)at_ptr(c, L.co_qualname), STR_SPAN};
        remote[3 * j + 1] = (struct iovec){(void *)at_ptr(c, L.co_filename), STR_SPAN};
        remote[3 * j + 2] = (struct iovec){(void *)at_ptr(c, L.co_linetable), TABLE_SPAN};
    }
    if (remote_readv(w->pid, local, remote, 3 * n, got) < 0) {
        os_error();
        goto fail;
    }
    for (size_t j = 0; j < n; j++) {
        const char *c = CODE(w, w->todo[j]);
        char *b = buf + j * span;
        PyObject *qualname = str_or_unknown(
            str_from(w->pid, at_ptr(c, L.co_qualname), b, got[3 * j]));
        PyObject *filename = str_or_unknown(
            str_from(w->pid, at_ptr(c, L.co_filename), b + STR_SPAN, got[3 * j + 1]));
        PyObject *table = bytes_from(w->pid, at_ptr(c, L.co_linetable), b + 2 * STR_SPAN,
                                     got[3 * j + 2]);
        if (table == NULL && !PyErr_Occurred())
            table = PyBytes_FromStringAndSize(NULL, 0);
        PyObject *key = code_key(c);
        PyObject *addr = PyLong_FromUnsignedLongLong(frame_code(FRAME(w, w->todo[j])));
        PyObject *entry = NULL;
        if (qualname != NULL && filename != NULL && table != NULL && key != NULL && addr != NULL)
            entry = Py_BuildValue("(OOOOi)", key, qualname, filename, table,
                                  at_int(c, L.co_firstlineno));
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
"(frame address, code address, byte offset of the current instruction); fresh maps code\n"
"addresses missing from, or changed since, the cache `known` to (key, qualname, filename,\n"
"linetable, firstlineno). None when tstate no longer belongs to thread tid (a stale cache).\n"
"OSError when the memory cannot be read.\n\n"
"System calls: one for the thread state, one for the current frame pointer (3.11, 3.12)\n"
"and the top of the data stack (where the innermost frames are), one for the frames' code\n"
"headers, one for the strings and line tables of code objects not in `known`; plus one per\n"
"frame outside that window (generators, deep stacks) and per string or table longer than\n"
"read ahead.");

/* The stop list from a tuple of addresses; -1 with an exception set. */
static Py_ssize_t
stop_list(PyObject *stop, uintptr_t *stops)
{
    Py_ssize_t n = stop == NULL ? 0 : PyTuple_GET_SIZE(stop);
    if (n > MAX_STOPS) {
        PyErr_Format(PyExc_ValueError, "read_stack: %zd stop code objects, more than %d",
                     n, MAX_STOPS);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        stops[i] = (uintptr_t)PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(stop, i));
        if (PyErr_Occurred())
            return -1;
    }
    return n;
}

/* The current frame's address and, in w, the data stack's window, from the thread state
 * copied into t. -1 with an exception set. */
static int
read_top(walk *w, const char *t, uintptr_t *current)
{
    uintptr_t top = at_ptr(t, L.ts_datastack_top), chunk = at_ptr(t, L.ts_datastack_chunk);
    uintptr_t start = top > chunk + WINDOW ? top - WINDOW : chunk;
    size_t span = chunk != 0 && top > start ? top - start : 0;
    w->window = PyMem_Malloc(span + 1);
    if (w->window == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    struct iovec local[2] = {{w->window, span}, {current, sizeof *current}};
    struct iovec remote[2] = {{(void *)start, span}, {NULL, sizeof *current}};
    size_t got[2], n = 1;
    if (L.cframe_frame == NONE)
        *current = at_ptr(t, L.ts_frame);
    else {
        remote[1].iov_base = (char *)at_ptr(t, L.ts_frame) + L.cframe_frame;
        n = 2;
    }
    if (remote_readv(w->pid, local, remote, n, got) < 0) {
        os_error();
        return -1;
    }
    if (n == 2 && got[1] != sizeof *current) {
        errno = EFAULT;
        os_error();
        return -1;
    }
    w->window_start = start;
    w->window_len = span ? got[0] : 0;
    return 0;
}

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
    Py_ssize_t nstops = stop_list(stop, stops);
    if (nstops < 0)
        return NULL;

    walk w = {.pid = pid};
    PyObject *rows = NULL, *queued = NULL, *fresh = NULL;
    char *t = PyMem_Malloc(L.ts_head);
    if (t == NULL)
        return PyErr_NoMemory();
    if (remote_read(pid, (uintptr_t)tstate_addr, t, L.ts_head) < 0) {
        PyMem_Free(t);
        return os_error();
    }
    unsigned long native;
    memcpy(&native, t + L.ts_native_thread_id, sizeof native);
    if (native != tid || (L.cframe_frame != NONE && at_ptr(t, L.ts_frame) == 0)) {
        PyMem_Free(t);
        Py_RETURN_NONE;
    }
    uintptr_t next = 0;
    rows = PyList_New(0);
    queued = PySet_New(NULL);
    if (rows == NULL || queued == NULL || read_top(&w, t, &next) < 0)
        goto fail;

    size_t done = 0;
    while (PyList_GET_SIZE(rows) < depth && (next != 0 || done < w.nframes)) {
        if (done == w.nframes) {
            intptr_t after = walk_more(&w, next, (size_t)(depth - PyList_GET_SIZE(rows)) + SLACK);
            if (after < 0)
                goto fail;
            next = (uintptr_t)after;
        }
        if (w.is_code[done] && is_stop(stops, nstops, frame_code(FRAME(&w, done))))
            break;
        if (walk_note(&w, done++, known, queued, rows) < 0)
            goto fail;
    }
    fresh = w.ntodo ? walk_fetch(&w) : PyDict_New();
    if (fresh == NULL)
        goto fail;
    walk_free(&w);
    PyMem_Free(t);
    Py_DECREF(queued);
    return Py_BuildValue("(NN)", rows, fresh);
fail:
    walk_free(&w);
    PyMem_Free(t);
    Py_XDECREF(rows);
    Py_XDECREF(queued);
    return NULL;
}

static int
add_offsets(PyObject *m)
{
    struct { const char *name; size_t value; } table[] = {
        {"runtime.interpreters.head", L.interpreters_head},
        {"interp.next", L.interp_next},
        {"interp.threads.head", L.interp_threads_head},
        {"tstate.next", L.ts_next},
        {"tstate.native_thread_id", L.ts_native_thread_id},
        {"tstate.current_frame", L.ts_frame},
        {"tstate.datastack_chunk", L.ts_datastack_chunk},
        {"tstate.datastack_top", L.ts_datastack_top},
        {"iframe.code", L.fr_code},
        {"iframe.previous", L.fr_previous},
        {"iframe.instr", L.fr_instr},
        {"iframe.owner", L.fr_owner},
        {"iframe.localsplus", L.fr_head},
        {"code.co_firstlineno", L.co_firstlineno},
        {"code.co_filename", L.co_filename},
        {"code.co_qualname", L.co_qualname},
        {"code.co_linetable", L.co_linetable},
        {"code._co_firsttraceable", L.co_firsttraceable},
        {"code.co_code_adaptive", L.co_head},
        {"bytes.ob_sval", L.bytes_sval},
        {"sizeof.PyASCIIObject", L.str_ascii},
        {"sizeof.PyCompactUnicodeObject", L.str_compact},
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
    if (L.cframe_frame != NONE) {
        PyObject *v = PyLong_FromSize_t(L.cframe_frame);
        if (v == NULL || PyDict_SetItemString(d, "cframe.current_frame", v) < 0) {
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
    if (PyModule_AddStringConstant(m, "LAYOUT_FROM", L.source) < 0)
        return -1;
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
    if (PyModule_AddIntConstant(m, "BUILT_FOR", PY_VERSION_HEX) < 0 ||
        PyModule_AddIntConstant(m, "BUILT_DEBUG", FPM_DEBUG) < 0 ||
        PyModule_AddIntConstant(m, "BUILT_TRACE_REFS", FPM_TRACE_REFS) < 0)
        return -1;
#if FPM_LAYOUT_KNOWN
    const char *why = layout_fill();
    if (why != NULL)
        return PyModule_AddIntConstant(m, "SUPPORTED", 0) < 0 ||
               PyModule_AddStringConstant(m, "UNSUPPORTED", why) < 0 ? -1 : 0;
    if (PyModule_AddIntConstant(m, "SUPPORTED", 1) < 0 || add_offsets(m) < 0)
        return -1;
    return PyModule_AddObject(m, "UNSUPPORTED", Py_NewRef(Py_None));
#else
    return PyModule_AddIntConstant(m, "SUPPORTED", 0) < 0 ||
           PyModule_AddStringConstant(m, "UNSUPPORTED",
               "fpm._pystack reads the frames of CPython 3.11 to 3.14 (with the GIL) only")
           < 0 ? -1 : 0;
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
             "SUPPORTED is 0 where no layout is known (UNSUPPORTED says why); OFFSETS and "
             "LAYOUT_FROM say where the fields read are and where that came from; "
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
