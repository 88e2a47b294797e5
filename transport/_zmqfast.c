/* numbeam.transport._zmqfast: the hot calls of a node's ZeroMQ sockets, without pyzmq's
 * per-call overhead. An optional speed-up: without a C compiler, numbeam calls pyzmq.
 *
 * pyzmq turns every getsockopt option into an enum and raises an exception for EAGAIN, which
 * costs a node more per message than the rest of its receive path. These functions call
 * libzmq directly, on the socket pyzmq made (its `Socket.underlying` address), through the
 * very libzmq pyzmq loaded (setup() looks its functions up with dlopen(RTLD_NOLOAD)). They
 * are only called from the node's event-loop thread, which owns the sockets.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <errno.h>
#include <string.h>

#define ZMQ_DONTWAIT 1
#define ZMQ_SNDMORE 2

typedef union { unsigned char _[64]; void *p; } zmq_msg_t; /* as zmq.h: 64 bytes, opaque */

static int (*p_msg_init)(zmq_msg_t *);
static int (*p_msg_recv)(zmq_msg_t *, void *, int);
static int (*p_msg_close)(zmq_msg_t *);
static void *(*p_msg_data)(zmq_msg_t *);
static size_t (*p_msg_size)(const zmq_msg_t *);
static int (*p_msg_more)(const zmq_msg_t *);
static int (*p_send)(void *, const void *, size_t, int);
static int (*p_errno)(void);
static const char *(*p_strerror)(int);
static int ready = 0;

/* setup(path): find libzmq's functions in the library at `path`, already loaded by pyzmq. */
static PyObject *
setup(PyObject *module, PyObject *arg)
{
    const char *path = PyUnicode_AsUTF8(arg);
    if (path == NULL) {
        return NULL;
    }
    void *lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (lib == NULL) {
        PyErr_Format(PyExc_OSError, "libzmq is not loaded from %s", path);
        return NULL;
    }
#define FIND(var, name)                                                                        \
    if ((*(void **)(&var) = dlsym(lib, name)) == NULL) {                                      \
        PyErr_Format(PyExc_OSError, "%s has no %s", path, name);                              \
        return NULL;                                                                          \
    }
    FIND(p_msg_init, "zmq_msg_init");
    FIND(p_msg_recv, "zmq_msg_recv");
    FIND(p_msg_close, "zmq_msg_close");
    FIND(p_msg_data, "zmq_msg_data");
    FIND(p_msg_size, "zmq_msg_size");
    FIND(p_msg_more, "zmq_msg_more");
    FIND(p_send, "zmq_send");
    FIND(p_errno, "zmq_errno");
    FIND(p_strerror, "zmq_strerror");
#undef FIND
    ready = 1; /* (the handle stays open: libzmq is never unloaded while pyzmq is) */
    Py_RETURN_NONE;
}

static void *
socket_of(PyObject *handle)
{
    if (!ready) {
        PyErr_SetString(PyExc_RuntimeError, "_zmqfast.setup() was not called");
        return NULL;
    }
    void *s = PyLong_AsVoidPtr(handle);
    if (s == NULL && !PyErr_Occurred()) {
        PyErr_SetString(PyExc_ValueError, "a closed socket");
    }
    return s;
}

static PyObject *
zmq_error(int err)
{
    PyErr_Format(PyExc_OSError, "libzmq: %s (errno %d)", p_strerror(err), err);
    return NULL;
}

/* Receive one frame into a new bytes object; *more set from it. NULL with errno in *err and
 * no Python error for EAGAIN. */
static PyObject *
recv_frame(void *sock, int *more, int *err)
{
    zmq_msg_t msg;
    p_msg_init(&msg);
    if (p_msg_recv(&msg, sock, ZMQ_DONTWAIT) < 0) {
        *err = p_errno();
        p_msg_close(&msg);
        return NULL;
    }
    PyObject *b = PyBytes_FromStringAndSize(p_msg_data(&msg), (Py_ssize_t)p_msg_size(&msg));
    *more = p_msg_more(&msg);
    p_msg_close(&msg);
    if (b == NULL) {
        *err = 0;
    }
    return b;
}

/* recv_router(handle, limit) -> [(identity, body, more), ...]
 *
 * Up to `limit` messages of two frames or more from a ROUTER, without waiting: it stops when
 * none is left (which also re-arms the socket's edge-triggered FD, as reading EVENTS does) or
 * after a message whose body has more frames, which the caller then receives itself. */
static PyObject *
recv_router(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "recv_router(handle, limit)");
        return NULL;
    }
    void *sock = socket_of(args[0]);
    Py_ssize_t limit = PyLong_AsSsize_t(args[1]);
    if (sock == NULL || (limit == -1 && PyErr_Occurred())) {
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    while (PyList_GET_SIZE(out) < limit) {
        int more = 0, err = 0;
        PyObject *ident = recv_frame(sock, &more, &err);
        if (ident == NULL) {
            if (err == EAGAIN) {
                break;
            }
            Py_DECREF(out);
            return err ? zmq_error(err) : NULL;
        }
        PyObject *body;
        if (more) {
            body = recv_frame(sock, &more, &err); /* the rest of a message is there already */
            if (body == NULL) {
                Py_DECREF(ident);
                Py_DECREF(out);
                return err ? zmq_error(err) : NULL;
            }
        }
        else {
            body = PyBytes_FromStringAndSize("", 0);
        }
        PyObject *item = Py_BuildValue("(NNO)", ident, body, more ? Py_True : Py_False);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(item);
        if (more) {
            break; /* its further frames are the caller's to take */
        }
    }
    return out;
}

/* send(handle, data) -> True, or False if ZeroMQ's queue is full (EAGAIN). */
static PyObject *
send(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "send(handle, data: bytes)");
        return NULL;
    }
    void *sock = socket_of(args[0]);
    if (sock == NULL) {
        return NULL;
    }
    if (p_send(sock, PyBytes_AS_STRING(args[1]), (size_t)PyBytes_GET_SIZE(args[1]),
               ZMQ_DONTWAIT) < 0) {
        int err = p_errno();
        if (err == EAGAIN) {
            Py_RETURN_FALSE;
        }
        return zmq_error(err);
    }
    Py_RETURN_TRUE;
}

static PyMethodDef methods[] = {
    {"setup", setup, METH_O, "setup(libzmq_path): use the libzmq pyzmq loaded from there"},
    {"recv_router", (PyCFunction)(void (*)(void))recv_router, METH_FASTCALL,
     "recv_router(handle, limit) -> [(identity, body, more), ...]"},
    {"send", (PyCFunction)(void (*)(void))send, METH_FASTCALL,
     "send(handle, data) -> False if ZeroMQ's queue is full"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_zmqfast", "A node's hot ZeroMQ calls, in C (optional).", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__zmqfast(void)
{
    return PyModule_Create(&module_def);
}
