/* numbeam.tensors._ctensor: the Tensor object as a C type, an optional speed-up.
 *
 * A Python class with slots is always tracked by the garbage collector, which costs a
 * program holding many small tensors about as much again as making them. This type holds the
 * same seven fields and is not tracked: it cannot be part of a reference cycle, because
 * nothing its fields refer to (a segment, a bytes object, an arena chunk, a block token, a
 * shape tuple, a numpy dtype) ever refers back to a tensor, and it cannot be subclassed.
 * Its methods and properties are Python functions, set on the type by numbeam.tensors._tensor;
 * without a C compiler the pure-Python class there is used instead, with the same behaviour.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

typedef struct {
    PyObject_HEAD
    PyObject *mem;
    PyObject *off;
    PyObject *shape;
    PyObject *dt;
    PyObject *nbytes;
    PyObject *chunk;
    PyObject *tok;
} TensorObject;

static PyTypeObject *Tensor_Type = NULL;

static void
Tensor_dealloc(TensorObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    Py_XDECREF(self->mem);
    Py_XDECREF(self->off);
    Py_XDECREF(self->shape);
    Py_XDECREF(self->dt);
    Py_XDECREF(self->nbytes);
    Py_XDECREF(self->chunk);
    Py_XDECREF(self->tok);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp); /* instances of heap types hold a reference to their type */
}

static PyMemberDef Tensor_members[] = {
    {"_mem", T_OBJECT, offsetof(TensorObject, mem), READONLY, NULL},
    {"_off", T_OBJECT, offsetof(TensorObject, off), READONLY, NULL},
    {"_shape", T_OBJECT, offsetof(TensorObject, shape), READONLY, NULL},
    {"_dt", T_OBJECT, offsetof(TensorObject, dt), READONLY, NULL},
    {"_nbytes", T_OBJECT, offsetof(TensorObject, nbytes), READONLY, NULL},
    {"_chunk", T_OBJECT, offsetof(TensorObject, chunk), READONLY, NULL},
    {"_tok", T_OBJECT, offsetof(TensorObject, tok), READONLY, NULL},
    {NULL}
};

static PyType_Slot Tensor_slots[] = {
    {Py_tp_dealloc, (void *)Tensor_dealloc},
    {Py_tp_members, Tensor_members},
    {0, NULL},
};

/* No Py_TPFLAGS_HAVE_GC (see above), no Py_TPFLAGS_BASETYPE, and not immutable: the Python
 * side sets the methods on it. Only make() creates tensors. */
static PyType_Spec Tensor_spec = {
    .name = "numbeam.tensors.Tensor",
    .basicsize = sizeof(TensorObject),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = Tensor_slots,
};

/* make(mem, off, shape, dt, nbytes, chunk=None, tok=None) -> Tensor */
static PyObject *
make(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 && nargs != 7) {
        PyErr_Format(PyExc_TypeError, "make() takes 5 or 7 arguments (%zd given)", nargs);
        return NULL;
    }
    TensorObject *t = PyObject_New(TensorObject, Tensor_Type);
    if (t == NULL) {
        return NULL;
    }
    /* (PyObject_New took a reference to the heap type; dealloc gives it back) */
    t->mem = Py_NewRef(args[0]);
    t->off = Py_NewRef(args[1]);
    t->shape = Py_NewRef(args[2]);
    t->dt = Py_NewRef(args[3]);
    t->nbytes = Py_NewRef(args[4]);
    t->chunk = Py_NewRef(nargs == 7 ? args[5] : Py_None);
    t->tok = Py_NewRef(nargs == 7 ? args[6] : Py_None);
    return (PyObject *)t;
}

/* set_mem(t, mem): a Builder's inline tensor gets its bytes when frozen. */
static PyObject *
set_mem(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || Py_TYPE(args[0]) != Tensor_Type) {
        PyErr_SetString(PyExc_TypeError, "set_mem(tensor, mem)");
        return NULL;
    }
    TensorObject *t = (TensorObject *)args[0];
    Py_XSETREF(t->mem, Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

/* ---- the hot path of nb.tensor(array) for small tensors ------------------------------------
 *
 * The same steps as numbeam.tensors._tensor.tensor() for a C-contiguous numpy array of a tensor
 * dtype whose bytes go to the arena, with what takes Python ~0.6 us (attribute lookups, a list
 * pop, numpy's slice assignment) done here; anything else returns None, and the Python code
 * handles it. setup() hands over the objects it reads (all owned by _tensor and _memory).
 */

static PyObject *ndarray_type, *by_bits, *shapes, *settings;
static PyObject *fast_dtypes[32];
static Py_ssize_t n_fast_dtypes, arena_max;
static PyObject *s_dtype, *s_shape, *s_current, *s_free, *s_seg, *s_addr, *s_bsize, *s_threshold;

/* setup(ndarray, by_bits, dtypes, shapes, settings, arena_max) */
static PyObject *
setup_fast(PyObject *module, PyObject *args)
{
    PyObject *dtypes;
    if (!PyArg_ParseTuple(args, "OO!O!O!On", &ndarray_type, &PyList_Type, &by_bits,
                          &PyTuple_Type, &dtypes, &PyDict_Type, &shapes, &settings, &arena_max)) {
        return NULL;
    }
    if (PyTuple_GET_SIZE(dtypes) > 32) {
        PyErr_SetString(PyExc_ValueError, "too many dtypes");
        return NULL;
    }
    Py_INCREF(ndarray_type);
    Py_INCREF(by_bits);
    Py_INCREF(shapes);
    Py_INCREF(settings);
    n_fast_dtypes = PyTuple_GET_SIZE(dtypes);
    for (Py_ssize_t i = 0; i < n_fast_dtypes; i++) {
        fast_dtypes[i] = Py_NewRef(PyTuple_GET_ITEM(dtypes, i));
    }
    Py_RETURN_NONE;
}

static int
get_ssize(PyObject *obj, PyObject *name, Py_ssize_t *out)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL) {
        return -1;
    }
    *out = PyLong_AsSsize_t(v);
    Py_DECREF(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* small(array) -> a new Tensor in an arena block, or None: not a case handled here. */
static PyObject *
small(PyObject *module, PyObject *data)
{
    if (ndarray_type == NULL || (PyObject *)Py_TYPE(data) != ndarray_type) {
        Py_RETURN_NONE;
    }
    PyObject *dt = PyObject_GetAttr(data, s_dtype), *result = NULL;
    PyObject *cls = NULL, *chunk = NULL, *free = NULL, *tok = NULL, *seg = NULL, *shape = NULL;
    Py_buffer view = {0};
    if (dt == NULL) {
        return NULL;
    }
    Py_ssize_t i, threshold, bsize, idx;
    for (i = 0; i < n_fast_dtypes && fast_dtypes[i] != dt; i++) {
    }
    if (i == n_fast_dtypes) { /* another dtype object (e.g. non-native order): Python's path */
        Py_DECREF(dt);
        Py_RETURN_NONE;
    }
    if (PyObject_GetBuffer(data, &view, PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Clear(); /* not contiguous: Python's path copes with any layout */
        Py_DECREF(dt);
        Py_RETURN_NONE;
    }
    if (get_ssize(settings, s_threshold, &threshold) < 0) {
        goto done;
    }
    if (view.len <= threshold || view.len > arena_max) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    /* (nbytes - 1).bit_length(), as _memory._BY_BITS is indexed */
    int bits = view.len == 1 ? 0 : 64 - __builtin_clzll((unsigned long long)(view.len - 1));
    cls = PyList_GetItem(by_bits, bits); /* borrowed */
    if (cls == NULL) {
        goto done;
    }
    Py_INCREF(cls);
    chunk = PyObject_GetAttr(cls, s_current);
    if (chunk == NULL) {
        goto done;
    }
    free = chunk == Py_None ? NULL : PyObject_GetAttr(chunk, s_free);
    if (free == NULL || !PyList_Check(free) || PyList_GET_SIZE(free) == 0) {
        PyErr_Clear();
        result = Py_NewRef(Py_None); /* no chunk yet, or it ran dry: Python refills */
        goto done;
    }
    Py_ssize_t n = PyList_GET_SIZE(free);
    tok = Py_NewRef(PyList_GET_ITEM(free, n - 1));
    if (PyList_SetSlice(free, n - 1, n, NULL) < 0) { /* the pop; the GIL is held throughout */
        goto done;
    }
    idx = PyLong_AsSsize_t(PyTuple_GetItem(tok, 0));
    if ((idx == -1 && PyErr_Occurred()) || get_ssize(cls, s_bsize, &bsize) < 0) {
        goto done;
    }
    seg = PyObject_GetAttr(chunk, s_seg);
    if (seg == NULL) {
        goto done;
    }
    PyObject *addr_obj = PyObject_GetAttr(seg, s_addr);
    if (addr_obj == NULL) {
        goto done;
    }
    char *addr = (char *)PyLong_AsVoidPtr(addr_obj);
    Py_DECREF(addr_obj);
    if (addr == NULL && PyErr_Occurred()) {
        goto done;
    }
    memcpy(addr + idx * bsize, view.buf, (size_t)view.len);
    shape = PyObject_GetAttr(data, s_shape);
    if (shape == NULL) {
        goto done;
    }
    /* One shape tuple for all tensors of a shape, as the Python path does. */
    PyObject *known = PyDict_GetItemWithError(shapes, shape);
    if (known != NULL) {
        Py_SETREF(shape, Py_NewRef(known));
    }
    else if (PyErr_Occurred() ||
             (PyDict_GET_SIZE(shapes) < 4096 && PyDict_SetItem(shapes, shape, shape) < 0)) {
        goto done;
    }
    PyObject *off = PyLong_FromSsize_t(idx * bsize), *nbytes = PyLong_FromSsize_t(view.len);
    if (off != NULL && nbytes != NULL) {
        PyObject *fields[7] = {seg, off, shape, dt, nbytes, chunk, tok};
        result = make(module, fields, 7);
    }
    Py_XDECREF(off);
    Py_XDECREF(nbytes);
done:
    PyBuffer_Release(&view);
    Py_XDECREF(shape);
    Py_XDECREF(seg);
    Py_XDECREF(tok); /* (if no tensor was made, its block is free again) */
    Py_XDECREF(free);
    Py_XDECREF(chunk);
    Py_XDECREF(cls);
    Py_DECREF(dt);
    return result;
}

static PyMethodDef module_methods[] = {
    {"setup", setup_fast, METH_VARARGS,
     "setup(ndarray, by_bits, dtypes, shapes, settings, arena_max): what small() reads"},
    {"small", small, METH_O, "small(array) -> a new Tensor in an arena block, or None"},
    {"make", (PyCFunction)(void (*)(void))make, METH_FASTCALL,
     "make(mem, off, shape, dt, nbytes, chunk=None, tok=None) -> Tensor"},
    {"set_mem", (PyCFunction)(void (*)(void))set_mem, METH_FASTCALL,
     "set_mem(tensor, mem): set the bytes of a tensor not handed out yet"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_ctensor", "The Tensor object as a C type (optional).", -1,
    module_methods,
};

PyMODINIT_FUNC
PyInit__ctensor(void)
{
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL) {
        return NULL;
    }
#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL
    INTERN(s_dtype, "dtype");
    INTERN(s_shape, "shape");
    INTERN(s_current, "current");
    INTERN(s_free, "free");
    INTERN(s_seg, "seg");
    INTERN(s_addr, "addr");
    INTERN(s_bsize, "bsize");
    INTERN(s_threshold, "threshold");
#undef INTERN
    Tensor_Type = (PyTypeObject *)PyType_FromSpec(&Tensor_spec);
    if (Tensor_Type == NULL || PyModule_AddObjectRef(m, "Tensor", (PyObject *)Tensor_Type) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
