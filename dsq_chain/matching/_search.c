/* The matcher's provider search, compiled: the same search as dsq_chain/matching/index.py, on C arrays.
 *
 * index.py's module docstring explains the search: a tree over the providers with per-node bounds, and one
 * resumable best-first Frontier per demand whose heaps (bucketed by rate) hold tree nodes keyed by a lower
 * bound of their providers' scores and providers keyed by their exact score. This file keeps the providers,
 * the tree and the heaps in C arrays instead of Python lists and tuples; the arithmetic of a score is the
 * Python expressions' (ProviderIndex.entries), in the same order, in double precision and built with
 * -ffp-contract=off (no fused multiply-add), so that scores agree bit for bit with scoring.score and the
 * placements are exactly the Python search's. Differences from index.py, none of which changes a result:
 *   - the node bounds are brought up to date on every placement (cheap here), not in batched refreshes;
 *   - ties between providers of equal score are broken by the rank of their address (index.py compares the
 *     address strings: the ranks are given in that order);
 *   - label signatures present under a node are not kept as bit masks: each label filter gets one flag per
 *     node (CoreIndex.node_flags).
 * Every count, capacity and price must be below 2**30 (the Python side checks, and falls back to index.py
 * otherwise), so that a rate c*pc + g*pg + (m*pm)//1024 never overflows 64 bits.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
#error "scores must be computed in plain double precision (no x87 excess precision): the build is optional"
#endif

#define NO_CHILD (-1)
#define EPS 1e-9
#define RETRY 1e-3
#define FAR 1e12
#define LIMIT ((int64_t)1 << 30)

typedef struct {
    double key;
    int32_t rank; /* address rank of a provider; -1 for a node (sorts first among equal keys, like "") */
    int32_t ref;  /* >= 0: a provider; < 0: node -1 - ref */
    uint64_t seen; /* provider version, or node-bound refresh count when pushed */
    int64_t rate;
    double price;
    double rel;
} Entry;

static inline int entry_less(const Entry *a, const Entry *b) {
    if (a->key != b->key) return a->key < b->key;
    if (a->rank != b->rank) return a->rank < b->rank;
    return a->ref < b->ref;
}

typedef struct {
    Entry *items;
    Py_ssize_t n, cap;
} Heap;

static int heap_reserve(Heap *h, Py_ssize_t need) {
    if (need <= h->cap) return 0;
    Py_ssize_t cap = h->cap ? h->cap : 16;
    while (cap < need) cap *= 2;
    Entry *items = PyMem_Realloc(h->items, (size_t)cap * sizeof(Entry));
    if (!items) { PyErr_NoMemory(); return -1; }
    h->items = items;
    h->cap = cap;
    return 0;
}

static void sift_up(Heap *h, Py_ssize_t pos) {
    Entry item = h->items[pos];
    while (pos > 0) {
        Py_ssize_t parent = (pos - 1) >> 1;
        if (!entry_less(&item, &h->items[parent])) break;
        h->items[pos] = h->items[parent];
        pos = parent;
    }
    h->items[pos] = item;
}

static void sift_down(Heap *h, Py_ssize_t pos) {
    Py_ssize_t n = h->n;
    Entry item = h->items[pos];
    for (;;) {
        Py_ssize_t child = 2 * pos + 1;
        if (child >= n) break;
        if (child + 1 < n && entry_less(&h->items[child + 1], &h->items[child])) child++;
        if (!entry_less(&h->items[child], &item)) break;
        h->items[pos] = h->items[child];
        pos = child;
    }
    h->items[pos] = item;
}

static int heap_push(Heap *h, const Entry *e) {
    if (heap_reserve(h, h->n + 1) < 0) return -1;
    h->items[h->n++] = *e;
    sift_up(h, h->n - 1);
    return 0;
}

static Entry heap_pop(Heap *h) {
    Entry top = h->items[0];
    h->n--;
    if (h->n > 0) {
        h->items[0] = h->items[h->n];
        sift_down(h, 0);
    }
    return top;
}

static void heap_replace_top(Heap *h, const Entry *e) {
    h->items[0] = *e;
    sift_down(h, 0);
}

static void heapify(Heap *h) {
    for (Py_ssize_t i = h->n / 2 - 1; i >= 0; i--) sift_down(h, i);
}

/* ------------------------------------------------------------------------------------------------ index */

/* Static node bounds (minima over the node's providers). */
typedef struct {
    int64_t pc, pg, pm;
    double rmin, nrmax, ic, ig, im, unrel;
} Static;

/* Dynamic node bounds (minima): negated free cpus/gpus/memory, used fractions, joint price terms. */
typedef struct {
    int64_t nfc, nfg, nfm;
    double uc, ug, um, umax, jc, jg;
} Dynamic;

typedef struct {
    PyObject_HEAD
    Py_ssize_t n, nodes;
    int32_t nsig;
    int64_t *tc, *tg, *tm, *fc, *fg, *fm, *pc, *pg, *pm, *disk;
    double *ic, *ig, *im, *unrel, *rel;
    int32_t *sig, *rank, *leaf_of;
    uint64_t *version;
    int32_t *lo, *hi, *left, *right, *parent;
    Static *stat;
    Dynamic *dyn;
    double wp, wl, wr, k_cpu, k_gpu;
    uint64_t refreshes;
} IndexObject;

static inline double dmin(double a, double b) { return b < a ? b : a; }
static inline int64_t imin(int64_t a, int64_t b) { return b < a ? b : a; }

static Dynamic derive(const IndexObject *x, Py_ssize_t i) {
    Dynamic d;
    int64_t fc = x->fc[i], fg = x->fg[i], fm = x->fm[i];
    double uc = (double)(x->tc[i] - fc) * x->ic[i];
    double ug = (double)(x->tg[i] - fg) * x->ig[i];
    double um = (double)(x->tm[i] - fm) * x->im[i];
    double umax = uc;
    if (ug > umax) umax = ug;
    if (um > umax) umax = um;
    double base = x->wl * umax + x->unrel[i];
    d.nfc = -fc; d.nfg = -fg; d.nfm = -fm;
    d.uc = uc; d.ug = ug; d.um = um; d.umax = umax;
    d.jc = x->k_cpu * (double)x->pc[i] + base;
    d.jg = x->tg[i] > 0 ? x->k_gpu * (double)x->pg[i] + base : FAR;
    return d;
}

static void dyn_min(Dynamic *a, const Dynamic *b) {
    a->nfc = imin(a->nfc, b->nfc); a->nfg = imin(a->nfg, b->nfg); a->nfm = imin(a->nfm, b->nfm);
    a->uc = dmin(a->uc, b->uc); a->ug = dmin(a->ug, b->ug); a->um = dmin(a->um, b->um);
    a->umax = dmin(a->umax, b->umax); a->jc = dmin(a->jc, b->jc); a->jg = dmin(a->jg, b->jg);
}

static int dyn_equal(const Dynamic *a, const Dynamic *b) {
    return a->nfc == b->nfc && a->nfg == b->nfg && a->nfm == b->nfm && a->uc == b->uc && a->ug == b->ug
        && a->um == b->um && a->umax == b->umax && a->jc == b->jc && a->jg == b->jg;
}

static Dynamic leaf_dynamic(const IndexObject *x, int32_t node) {
    Dynamic d = derive(x, x->lo[node]);
    for (int32_t i = x->lo[node] + 1; i < x->hi[node]; i++) {
        Dynamic r = derive(x, i);
        dyn_min(&d, &r);
    }
    return d;
}

static int32_t make_node(IndexObject *x, int32_t lo, int32_t hi, int32_t parent, int32_t leaf_size) {
    int32_t node = (int32_t)x->nodes++;
    x->lo[node] = lo; x->hi[node] = hi; x->parent[node] = parent;
    x->left[node] = x->right[node] = NO_CHILD;
    if (hi - lo <= leaf_size) {
        for (int32_t i = lo; i < hi; i++) x->leaf_of[i] = node;
    } else {
        int32_t mid = lo + (hi - lo) / 2;
        x->left[node] = make_node(x, lo, mid, node, leaf_size);
        x->right[node] = make_node(x, mid, hi, node, leaf_size);
    }
    return node;
}

static void index_free(IndexObject *x) {
    void **arrays[] = {(void **)&x->tc, (void **)&x->tg, (void **)&x->tm, (void **)&x->fc, (void **)&x->fg,
                       (void **)&x->fm, (void **)&x->pc, (void **)&x->pg, (void **)&x->pm, (void **)&x->disk,
                       (void **)&x->ic, (void **)&x->ig, (void **)&x->im, (void **)&x->unrel, (void **)&x->rel,
                       (void **)&x->sig, (void **)&x->rank, (void **)&x->leaf_of, (void **)&x->version,
                       (void **)&x->lo, (void **)&x->hi, (void **)&x->left, (void **)&x->right,
                       (void **)&x->parent, (void **)&x->stat, (void **)&x->dyn};
    for (size_t k = 0; k < sizeof(arrays) / sizeof(arrays[0]); k++) {
        PyMem_Free(*arrays[k]);
        *arrays[k] = NULL;
    }
}

static void Index_dealloc(IndexObject *self) {
    index_free(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Copy a C-contiguous buffer of `rows` x n items of `itemsize` bytes and format `fmt` into fresh arrays. */
static int copy_rows(PyObject *obj, const char *what, const char *fmt, Py_ssize_t itemsize, Py_ssize_t rows,
                     Py_ssize_t n, void **out[]) {
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    const char *format = view.format ? view.format : "";
    if (format[0] == '<' || format[0] == '=' || format[0] == '@') format++;
    /* int64 is 'q' where a long is 32 bits, 'l' where it is 64 */
    int same = strcmp(format, fmt) == 0
               || (fmt[0] == 'l' && (strcmp(format, "q") == 0 || (sizeof(long) == 8 && strcmp(format, "l") == 0)));
    int ok = view.itemsize == itemsize && view.len == rows * n * itemsize && same;
    if (!ok) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd x %zd items of format '%s', got format '%s', %zd bytes",
                     what, rows, n, fmt, view.format ? view.format : "?", view.len);
        PyBuffer_Release(&view);
        return -1;
    }
    for (Py_ssize_t r = 0; r < rows; r++) {
        void *p = PyMem_Malloc((size_t)(n ? n : 1) * (size_t)itemsize);
        if (!p) { PyBuffer_Release(&view); PyErr_NoMemory(); return -1; }
        memcpy(p, (char *)view.buf + r * n * itemsize, (size_t)(n * itemsize));
        *out[r] = p;
    }
    PyBuffer_Release(&view);
    return 0;
}

static PyObject *Index_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"ints", "floats", "sig", "rank", "nsig", "leaf_size", "weights", "k_cpu", "k_gpu",
                             NULL};
    PyObject *ints, *floats, *sig, *rank;
    int nsig, leaf_size;
    double wp, wl, wr, k_cpu, k_gpu;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOii(ddd)dd", kwlist, &ints, &floats, &sig, &rank, &nsig,
                                     &leaf_size, &wp, &wl, &wr, &k_cpu, &k_gpu))
        return NULL;
    if (leaf_size < 1) { PyErr_SetString(PyExc_ValueError, "leaf_size must be >= 1"); return NULL; }
    Py_buffer view;
    if (PyObject_GetBuffer(sig, &view, PyBUF_SIMPLE) < 0) return NULL;
    Py_ssize_t n = view.len / 4;
    PyBuffer_Release(&view);
    if (n > (INT32_MAX - 1) / 2) { PyErr_SetString(PyExc_OverflowError, "too many providers"); return NULL; }
    IndexObject *x = (IndexObject *)type->tp_alloc(type, 0);
    if (!x) return NULL;
    x->n = n; x->nsig = nsig;
    x->wp = wp; x->wl = wl; x->wr = wr; x->k_cpu = k_cpu; x->k_gpu = k_gpu;
    void **int_rows[] = {(void **)&x->tc, (void **)&x->tg, (void **)&x->tm, (void **)&x->fc, (void **)&x->fg,
                         (void **)&x->fm, (void **)&x->pc, (void **)&x->pg, (void **)&x->pm, (void **)&x->disk};
    void **float_rows[] = {(void **)&x->ic, (void **)&x->ig, (void **)&x->im, (void **)&x->unrel, (void **)&x->rel};
    void **sig_row[] = {(void **)&x->sig};
    void **rank_row[] = {(void **)&x->rank};
    if (copy_rows(ints, "ints", "l", 8, 10, n, int_rows) < 0 || copy_rows(floats, "floats", "d", 8, 5, n, float_rows) < 0
        || copy_rows(sig, "sig", "i", 4, 1, n, sig_row) < 0 || copy_rows(rank, "rank", "i", 4, 1, n, rank_row) < 0)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t values[] = {x->tc[i], x->tg[i], x->tm[i], x->fc[i], x->fg[i], x->fm[i], x->pc[i], x->pg[i], x->pm[i]};
        for (size_t k = 0; k < 9; k++) {
            if (values[k] < 0 || values[k] >= LIMIT) {
                PyErr_SetString(PyExc_ValueError, "counts and prices must be in [0, 2**30)");
                goto fail;
            }
        }
        if (x->fc[i] > x->tc[i] || x->fg[i] > x->tg[i] || x->fm[i] > x->tm[i] || x->sig[i] < 0
            || x->sig[i] >= nsig) {
            PyErr_SetString(PyExc_ValueError, "inconsistent provider row");
            goto fail;
        }
    }
    Py_ssize_t max_nodes = n ? 2 * n : 1;
    x->version = PyMem_Calloc((size_t)(n ? n : 1), sizeof(uint64_t));
    x->leaf_of = PyMem_Calloc((size_t)(n ? n : 1), sizeof(int32_t));
    x->lo = PyMem_Malloc((size_t)max_nodes * sizeof(int32_t));
    x->hi = PyMem_Malloc((size_t)max_nodes * sizeof(int32_t));
    x->left = PyMem_Malloc((size_t)max_nodes * sizeof(int32_t));
    x->right = PyMem_Malloc((size_t)max_nodes * sizeof(int32_t));
    x->parent = PyMem_Malloc((size_t)max_nodes * sizeof(int32_t));
    if (!x->version || !x->leaf_of || !x->lo || !x->hi || !x->left || !x->right || !x->parent) {
        PyErr_NoMemory();
        goto fail;
    }
    x->nodes = 0;
    if (n) make_node(x, 0, (int32_t)n, NO_CHILD, leaf_size);
    x->stat = PyMem_Malloc((size_t)(x->nodes ? x->nodes : 1) * sizeof(Static));
    x->dyn = PyMem_Malloc((size_t)(x->nodes ? x->nodes : 1) * sizeof(Dynamic));
    if (!x->stat || !x->dyn) { PyErr_NoMemory(); goto fail; }
    /* children are numbered after their parent: fill the bounds from the last node to the first */
    for (Py_ssize_t node = x->nodes - 1; node >= 0; node--) {
        Static *s = &x->stat[node];
        if (x->left[node] == NO_CHILD) {
            int32_t lo = x->lo[node];
            *s = (Static){x->pc[lo], x->pg[lo], x->pm[lo], x->rel[lo], -x->rel[lo], x->ic[lo], x->ig[lo], x->im[lo],
                          x->unrel[lo]};
            for (int32_t i = lo + 1; i < x->hi[node]; i++) {
                s->pc = imin(s->pc, x->pc[i]); s->pg = imin(s->pg, x->pg[i]); s->pm = imin(s->pm, x->pm[i]);
                s->rmin = dmin(s->rmin, x->rel[i]); s->nrmax = dmin(s->nrmax, -x->rel[i]);
                s->ic = dmin(s->ic, x->ic[i]); s->ig = dmin(s->ig, x->ig[i]); s->im = dmin(s->im, x->im[i]);
                s->unrel = dmin(s->unrel, x->unrel[i]);
            }
            x->dyn[node] = leaf_dynamic(x, (int32_t)node);
        } else {
            const Static *a = &x->stat[x->left[node]], *b = &x->stat[x->right[node]];
            *s = (Static){imin(a->pc, b->pc), imin(a->pg, b->pg), imin(a->pm, b->pm), dmin(a->rmin, b->rmin),
                          dmin(a->nrmax, b->nrmax), dmin(a->ic, b->ic), dmin(a->ig, b->ig), dmin(a->im, b->im),
                          dmin(a->unrel, b->unrel)};
            x->dyn[node] = x->dyn[x->left[node]];
            dyn_min(&x->dyn[node], &x->dyn[x->right[node]]);
        }
    }
    return (PyObject *)x;
fail:
    Py_DECREF(x);
    return NULL;
}

static PyObject *Index_place(IndexObject *self, PyObject *args) {
    Py_ssize_t i;
    long long c, g, m;
    if (!PyArg_ParseTuple(args, "nLLL", &i, &c, &g, &m)) return NULL;
    if (i < 0 || i >= self->n) { PyErr_SetString(PyExc_IndexError, "provider index out of range"); return NULL; }
    if (c < 0 || g < 0 || m < 0 || c > self->fc[i] || g > self->fg[i] || m > self->fm[i]) {
        PyErr_SetString(PyExc_ValueError, "placement exceeds the provider's free capacity");
        return NULL;
    }
    self->version[i]++;
    self->fc[i] -= c; self->fg[i] -= g; self->fm[i] -= m;
    /* bring the bounds of the provider's leaf and its ancestors up to date, while they change */
    int32_t node = self->leaf_of[i];
    Dynamic fresh = leaf_dynamic(self, node);
    int changed = 0;
    while (!dyn_equal(&fresh, &self->dyn[node])) {
        self->dyn[node] = fresh;
        changed = 1;
        node = self->parent[node];
        if (node == NO_CHILD) break;
        fresh = self->dyn[self->left[node]];
        dyn_min(&fresh, &self->dyn[self->right[node]]);
    }
    if (changed) self->refreshes++;
    Py_RETURN_NONE;
}

static PyObject *Index_could_take(IndexObject *self, PyObject *args) {
    long long c, g, m, cap;
    if (!PyArg_ParseTuple(args, "LLLL", &c, &g, &m, &cap)) return NULL;
    if (c < 0 || g < 0 || m < 0) { PyErr_SetString(PyExc_ValueError, "counts must be >= 0"); return NULL; }
    if (!self->n) Py_RETURN_FALSE;
    const Dynamic *most = &self->dyn[0];
    const Static *cheapest = &self->stat[0];
    if (-most->nfc < c || -most->nfg < g || -most->nfm < m) Py_RETURN_FALSE;
    if (c >= LIMIT || g >= LIMIT || m >= LIMIT) Py_RETURN_FALSE;  /* cannot fit: every capacity is below */
    int64_t rate = c * cheapest->pc + g * cheapest->pg + (m * cheapest->pm) / 1024;
    return PyBool_FromLong(rate <= cap);
}

static PyObject *Index_node_flags(IndexObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    if (view.len != self->nsig) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "one flag per label signature expected");
        return NULL;
    }
    const uint8_t *allowed = view.buf;
    PyObject *out = PyBytes_FromStringAndSize(NULL, self->nodes);
    if (!out) { PyBuffer_Release(&view); return NULL; }
    uint8_t *flags = (uint8_t *)PyBytes_AS_STRING(out);
    for (Py_ssize_t node = self->nodes - 1; node >= 0; node--) {
        uint8_t ok = 0;
        if (self->left[node] == NO_CHILD) {
            for (int32_t i = self->lo[node]; i < self->hi[node] && !ok; i++) ok = allowed[self->sig[i]] != 0;
        } else {
            ok = flags[self->left[node]] | flags[self->right[node]];
        }
        flags[node] = ok;
    }
    PyBuffer_Release(&view);
    return out;
}

static PyObject *Index_free_of(IndexObject *self, PyObject *args) {
    Py_ssize_t i;
    if (!PyArg_ParseTuple(args, "n", &i)) return NULL;
    if (i < 0 || i >= self->n) { PyErr_SetString(PyExc_IndexError, "provider index out of range"); return NULL; }
    return Py_BuildValue("LLL", (long long)self->fc[i], (long long)self->fg[i], (long long)self->fm[i]);
}

static PyMethodDef Index_methods[] = {
    {"place", (PyCFunction)Index_place, METH_VARARGS, "place(i, cpus, gpus, mem_mb): take them from provider i."},
    {"could_take", (PyCFunction)Index_could_take, METH_VARARGS,
     "could_take(cpus, gpus, mem_mb, cap): False when no provider can, by the root's bounds."},
    {"node_flags", (PyCFunction)Index_node_flags, METH_O,
     "node_flags(allowed): one flag per node, set where a provider under it has an allowed signature."},
    {"free_of", (PyCFunction)Index_free_of, METH_VARARGS, "free_of(i): provider i's free (cpus, gpus, mem_mb)."},
    {NULL, NULL, 0, NULL}};

static PyTypeObject IndexType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dsq_chain.matching._search.Index",
    .tp_basicsize = sizeof(IndexObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The providers (in tree order) and the tree with its bounds.",
    .tp_new = Index_new,
    .tp_dealloc = (destructor)Index_dealloc,
    .tp_methods = Index_methods,
};

/* ------------------------------------------------------------------------------------------------ frontier */

typedef struct {
    PyObject_HEAD
    IndexObject *index;
    int64_t c, g, m;
    double inv_ref, fair;
    double kp, slope, lam_c, spare_c, lam_g, spare_g;
    int use_min_rel;
    uint8_t *allowed;  /* one flag per label signature */
    uint8_t *node_ok;  /* one flag per node */
    int64_t *edges;
    Py_ssize_t nedges;
    Heap *heaps;       /* nedges + 1 */
    int busy;          /* in best(): an `excluded` element's __eq__ may call back into Python */
} FrontierObject;

static PyTypeObject FrontierType;

static inline Py_ssize_t bucket_of(const FrontierObject *f, int64_t rate) {
    /* bisect_right(edges, rate) */
    Py_ssize_t lo = 0, hi = f->nedges;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (rate < f->edges[mid]) hi = mid; else lo = mid + 1;
    }
    return lo;
}

static int push(FrontierObject *f, const Entry *e) { return heap_push(&f->heaps[bucket_of(f, e->rate)], e); }

/* A node's (score lower bound, rate lower bound); 0 when no provider under it can take the demand. */
static int bound(const FrontierObject *f, int32_t node, double *key, int64_t *rate) {
    const IndexObject *x = f->index;
    const Dynamic *d = &x->dyn[node];
    int64_t c = f->c, g = f->g, m = f->m;
    if (-d->nfc < c || -d->nfg < g || -d->nfm < m || !f->node_ok[node]) return 0;
    const Static *s = &x->stat[node];
    int64_t mem_rate = (m * s->pm) / 1024;
    int64_t r = c * s->pc + g * s->pg + mem_rate;
    double wl = x->wl, kp = f->kp;
    double load = d->uc + (double)c * s->ic;
    double other = d->um + (double)m * s->im;
    if (other > load) load = other;
    other = d->ug + (double)g * s->ig;
    if (other > load) load = other;
    double lb = kp * (double)r + wl * load + x->wr + (f->use_min_rel ? s->rmin : -s->nrmax) * f->slope;
    double rest = (1.0 - f->lam_c) * (wl * d->umax + s->unrel) + f->fair * s->rmin;
    double joint = f->lam_c * d->jc + f->spare_c * (double)s->pc + kp * (double)(g * s->pg + mem_rate) + rest;
    if (g) {
        rest = (1.0 - f->lam_g) * (wl * d->umax + s->unrel) + f->fair * s->rmin;
        double joint_g = f->lam_g * d->jg + f->spare_g * (double)s->pg + kp * (double)(c * s->pc + mem_rate) + rest;
        if (joint_g > joint) joint = joint_g;
    }
    /* the bound adds the score's terms in another order: a few ulps off, so the slack grows with it */
    double top = joint > lb ? joint : lb;
    *key = top - (EPS + 1e-12 * (fabs(top) + x->wr + f->fair));
    *rate = r;
    return 1;
}

/* Provider i's exact score for the demand, as ProviderIndex.entries computes it; 0 when it cannot take it. */
static int score(const FrontierObject *f, int32_t i, Entry *e) {
    const IndexObject *x = f->index;
    int64_t c = f->c, g = f->g, m = f->m;
    int64_t fc = x->fc[i], fg = x->fg[i], fm = x->fm[i];
    if (fc < c || fg < g || fm < m || !f->allowed[x->sig[i]]) return 0;
    int64_t rate = c * x->pc[i] + g * x->pg[i] + (m * x->pm[i]) / 1024;
    double load = (double)(x->tc[i] - fc + c) * x->ic[i];
    double other = (double)(x->tm[i] - fm + m) * x->im[i];
    if (other > load) load = other;
    other = (double)(x->tg[i] - fg + g) * x->ig[i];
    if (other > load) load = other;
    double price = x->wp * ((double)rate * f->inv_ref);
    double reliability = x->unrel[i] + f->fair * x->rel[i];
    e->key = price + x->wl * load + reliability;
    e->rank = x->rank[i];
    e->ref = i;
    e->seen = x->version[i];
    e->rate = rate;
    e->price = price;
    e->rel = reliability;
    return 1;
}

static int push_node(FrontierObject *f, int32_t node) {
    Entry e = {0};
    if (!bound(f, node, &e.key, &e.rate)) return 0;
    e.rank = -1;
    e.ref = -1 - node;
    e.seen = f->index->refreshes;
    return push(f, &e);
}

/* Replace a popped node by its children (or, for a leaf, its providers' exact scores). */
static int expand(FrontierObject *f, int32_t node, double key, uint64_t seen) {
    IndexObject *x = f->index;
    if (seen != x->refreshes) {
        Entry e = {0};
        if (!bound(f, node, &e.key, &e.rate)) return 0;
        if (e.key > key + RETRY) {  /* placements since it was pushed raised the bound: revisit it later */
            e.rank = -1; e.ref = -1 - node; e.seen = x->refreshes;
            return push(f, &e);
        }
    }
    if (x->left[node] == NO_CHILD) {
        Entry e;
        for (int32_t i = x->lo[node]; i < x->hi[node]; i++)
            if (score(f, i, &e) && push(f, &e) < 0) return -1;
        return 0;
    }
    if (push_node(f, x->left[node]) < 0 || push_node(f, x->right[node]) < 0) return -1;
    return 0;
}

static void Frontier_dealloc(FrontierObject *self) {
    if (self->heaps) {
        for (Py_ssize_t b = 0; b <= self->nedges; b++) PyMem_Free(self->heaps[b].items);
        PyMem_Free(self->heaps);
    }
    PyMem_Free(self->allowed);
    PyMem_Free(self->node_ok);
    PyMem_Free(self->edges);
    Py_XDECREF(self->index);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static uint8_t *copy_flags(PyObject *obj, Py_ssize_t expected, const char *what) {
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0) return NULL;
    if (view.len != expected) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd flags, got %zd", what, expected, view.len);
        PyBuffer_Release(&view);
        return NULL;
    }
    uint8_t *out = PyMem_Malloc((size_t)(expected ? expected : 1));
    if (!out) { PyErr_NoMemory(); PyBuffer_Release(&view); return NULL; }
    memcpy(out, view.buf, (size_t)expected);
    PyBuffer_Release(&view);
    return out;
}

/* A frontier without entries or demand yet (the caller fills them in). */
static FrontierObject *frontier_alloc(IndexObject *index, Py_ssize_t nedges) {
    FrontierObject *f = PyObject_New(FrontierObject, &FrontierType);
    if (!f) return NULL;
    f->allowed = f->node_ok = NULL;
    f->edges = NULL;
    f->heaps = NULL;
    f->busy = 0;
    f->nedges = nedges;
    Py_INCREF(index);
    f->index = index;
    f->edges = PyMem_Malloc((size_t)(nedges ? nedges : 1) * sizeof(int64_t));
    f->heaps = PyMem_Calloc((size_t)nedges + 1, sizeof(Heap));
    if (!f->edges || !f->heaps) { Py_DECREF(f); PyErr_NoMemory(); return NULL; }
    return f;
}

static PyObject *Frontier_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"index", "cpus", "gpus", "mem_mb", "inv_ref", "fair", "allowed", "node_ok", "edges",
                             "root", NULL};
    PyObject *index, *allowed, *node_ok, *edges;
    long long c, g, m;
    double inv_ref, fair;
    int root = 1;
    (void)type;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!LLLddOOO|p", kwlist, &IndexType, &index, &c, &g, &m, &inv_ref,
                                     &fair, &allowed, &node_ok, &edges, &root))
        return NULL;
    if (c < 0 || g < 0 || m < 0 || c >= LIMIT || g >= LIMIT || m >= LIMIT) {
        PyErr_SetString(PyExc_ValueError, "demand counts must be in [0, 2**30)");
        return NULL;
    }
    IndexObject *x = (IndexObject *)index;
    PyObject *seq = PySequence_Fast(edges, "edges must be a sequence of ints");
    if (!seq) return NULL;
    Py_ssize_t nedges = PySequence_Fast_GET_SIZE(seq);
    FrontierObject *f = frontier_alloc(x, nedges);
    if (!f) { Py_DECREF(seq); return NULL; }
    for (Py_ssize_t k = 0; k < nedges; k++) {
        int overflow = 0;
        long long e = PyLong_AsLongLongAndOverflow(PySequence_Fast_GET_ITEM(seq, k), &overflow);
        if (e == -1 && PyErr_Occurred()) { Py_DECREF(seq); Py_DECREF(f); return NULL; }
        /* every rate is in [0, 2**62): an edge beyond 64 bits sorts them as INT64_MAX (INT64_MIN) does */
        f->edges[k] = overflow > 0 ? INT64_MAX : overflow < 0 ? INT64_MIN : e;
    }
    Py_DECREF(seq);
    f->c = c; f->g = g; f->m = m; f->inv_ref = inv_ref; f->fair = fair;
    /* as ProviderIndex.bound_fn */
    double kp = x->wp * inv_ref;
    f->kp = kp;
    f->slope = fair - x->wr;
    f->use_min_rel = f->slope >= 0;
    f->lam_c = x->k_cpu > 0 ? ((kp * (double)c / x->k_cpu) < 1.0 ? kp * (double)c / x->k_cpu : 1.0) : 0.0;
    f->spare_c = kp * (double)c - f->lam_c * x->k_cpu;
    f->lam_g = (x->k_gpu > 0 && g > 0) ? ((kp * (double)g / x->k_gpu) < 1.0 ? kp * (double)g / x->k_gpu : 1.0) : 0.0;
    f->spare_g = kp * (double)g - f->lam_g * x->k_gpu;
    f->allowed = copy_flags(allowed, x->nsig, "allowed");
    if (!f->allowed) { Py_DECREF(f); return NULL; }
    f->node_ok = copy_flags(node_ok, x->nodes, "node_ok");
    if (!f->node_ok) { Py_DECREF(f); return NULL; }
    if (root && x->n && push_node(f, 0) < 0) { Py_DECREF(f); return NULL; }
    return (PyObject *)f;
}

static int excluded_has(PyObject *excluded, int32_t ref) {
    PyObject *key = PyLong_FromLong(ref);
    if (!key) return -1;
    /* `ref in excluded`, with the fast path for exact sets */
    int found = PyAnySet_CheckExact(excluded) ? PySet_Contains(excluded, key) : PySequence_Contains(excluded, key);
    Py_DECREF(key);
    return found;
}

static int restore(Heap *heap, Heap *aside) {
    for (Py_ssize_t k = 0; k < aside->n; k++)
        if (heap_push(heap, &aside->items[k]) < 0) return -1;
    aside->n = 0;
    return 0;
}

static PyObject *Frontier_best(FrontierObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"cap", "excluded", "disk", "narrow", "budget", NULL};
    PyObject *cap_obj, *excluded = NULL, *disk_obj = NULL, *narrow = Py_None;
    Py_ssize_t budget = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|OOOn", kwlist, &cap_obj, &excluded, &disk_obj, &narrow, &budget))
        return NULL;
    int overflow = 0;
    long long cap = PyLong_AsLongLongAndOverflow(cap_obj, &overflow);
    if (cap == -1 && PyErr_Occurred()) return NULL;
    if (overflow > 0) cap = INT64_MAX;
    if (overflow < 0 || cap < 0) return Py_BuildValue("(OnO)", Py_None, (Py_ssize_t)0, Py_True);
    long long disk = 0;
    if (disk_obj) {
        disk = PyLong_AsLongLongAndOverflow(disk_obj, &overflow);
        if (disk == -1 && PyErr_Occurred()) return NULL;
        if (overflow > 0) disk = INT64_MAX;
    }
    if (excluded == Py_None || (excluded && PyAnySet_CheckExact(excluded) && PySet_GET_SIZE(excluded) == 0))
        excluded = NULL;
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Frontier.best() re-entered during its own search");
        return NULL;
    }
    const uint8_t *narrow_allowed = NULL, *narrow_nodes = NULL;
    Py_buffer va = {0}, vn = {0};
    int have_narrow = 0;
    if (narrow != Py_None) {
        if (!PyTuple_Check(narrow) || PyTuple_GET_SIZE(narrow) != 2) {
            PyErr_SetString(PyExc_TypeError, "narrow must be a (flags, node flags) tuple");
            return NULL;
        }
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(narrow, 0), &va, PyBUF_SIMPLE) < 0) return NULL;
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(narrow, 1), &vn, PyBUF_SIMPLE) < 0) {
            PyBuffer_Release(&va);
            return NULL;
        }
        have_narrow = 1;
        if (va.len != self->index->nsig || vn.len != self->index->nodes) {
            PyBuffer_Release(&va); PyBuffer_Release(&vn);
            PyErr_SetString(PyExc_ValueError, "narrow: one flag per signature and one per node expected");
            return NULL;
        }
        narrow_allowed = va.buf;
        narrow_nodes = vn.buf;
    }
    self->busy = 1;
    IndexObject *x = self->index;
    int64_t c = self->c, g = self->g, m = self->m;
    double wl = x->wl;
    Py_ssize_t nbuckets = bucket_of(self, cap) + 1;
    Entry best = {0};
    int has_best = 0;
    Py_ssize_t skips = 0;
    Heap aside = {0};
    Heap *heap = NULL;
    PyObject *result = NULL;
    for (Py_ssize_t b = 0; b < nbuckets; b++) {
        heap = &self->heaps[b];
        while (heap->n) {
            Entry *top = &heap->items[0];
            if (has_best && !entry_less(top, &best)) break;
            if (top->ref < 0) {
                int32_t node = -1 - top->ref;
                if (top->rate > cap || (narrow_nodes && !narrow_nodes[node])) {
                    Entry e = heap_pop(heap);
                    if (heap_push(&aside, &e) < 0) goto done;
                    if (skips + aside.n == budget) {
                        if (restore(heap, &aside) < 0) goto done;
                        result = Py_BuildValue("(OnO)", Py_None, budget, Py_False);
                        goto done;
                    }
                } else {
                    Entry e = heap_pop(heap);
                    if (expand(self, node, e.key, e.seen) < 0) goto done;
                }
                continue;
            }
            int32_t ref = top->ref;
            if (top->seen != x->version[ref]) {  /* capacity changed since scored: re-score (load only) */
                int64_t fc = x->fc[ref], fg = x->fg[ref], fm = x->fm[ref];
                if (fc < c || fg < g || fm < m) {
                    heap_pop(heap);  /* no longer fits: capacity only shrinks during a batch */
                    continue;
                }
                double load = (double)(x->tc[ref] - fc + c) * x->ic[ref];
                double other = (double)(x->tm[ref] - fm + m) * x->im[ref];
                if (other > load) load = other;
                other = (double)(x->tg[ref] - fg + g) * x->ig[ref];
                if (other > load) load = other;
                Entry e = *top;
                e.key = e.price + wl * load + e.rel;
                e.seen = x->version[ref];
                heap_replace_top(heap, &e);
                continue;
            }
            Entry current = *top;  /* before the `excluded` lookup, which may run Python code */
            int unusable = current.rate > cap || x->disk[ref] < disk
                           || (narrow_allowed && !narrow_allowed[x->sig[ref]]);
            if (!unusable && excluded) {
                int found = excluded_has(excluded, ref);
                if (found < 0) goto done;
                unusable = found;
            }
            if (unusable) {
                Entry e = heap_pop(heap);
                if (heap_push(&aside, &e) < 0) goto done;
                if (skips + aside.n == budget) {
                    if (restore(heap, &aside) < 0) goto done;
                    result = Py_BuildValue("(OnO)", Py_None, budget, Py_False);
                    goto done;
                }
                continue;
            }
            best = current;
            has_best = 1;
            break;
        }
        if (aside.n) {
            skips += aside.n;
            if (restore(heap, &aside) < 0) goto done;
        }
    }
    if (has_best)
        result = Py_BuildValue("((iL)nO)", best.ref, (long long)best.rate, skips, Py_True);
    else
        result = Py_BuildValue("(OnO)", Py_None, skips, Py_True);
done:
    if (!result && heap && aside.n) {  /* an error: put back what was set aside, keeping the exception */
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        (void)restore(heap, &aside);
        PyErr_Restore(type, value, traceback);
    }
    PyMem_Free(aside.items);
    if (have_narrow) { PyBuffer_Release(&va); PyBuffer_Release(&vn); }
    self->busy = 0;
    return result;
}

static PyObject *Frontier_narrowed(FrontierObject *self, PyObject *args) {
    PyObject *allowed, *node_ok;
    if (!PyArg_ParseTuple(args, "OO", &allowed, &node_ok)) return NULL;
    IndexObject *x = self->index;
    FrontierObject *f = frontier_alloc(x, self->nedges);
    if (!f) return NULL;
    memcpy(f->edges, self->edges, (size_t)self->nedges * sizeof(int64_t));
    f->c = self->c; f->g = self->g; f->m = self->m; f->inv_ref = self->inv_ref; f->fair = self->fair;
    f->kp = self->kp; f->slope = self->slope; f->use_min_rel = self->use_min_rel;
    f->lam_c = self->lam_c; f->spare_c = self->spare_c; f->lam_g = self->lam_g; f->spare_g = self->spare_g;
    f->allowed = copy_flags(allowed, x->nsig, "allowed");
    if (!f->allowed) { Py_DECREF(f); return NULL; }
    f->node_ok = copy_flags(node_ok, x->nodes, "node_ok");
    if (!f->node_ok) { Py_DECREF(f); return NULL; }
    for (Py_ssize_t b = 0; b <= self->nedges; b++) {
        const Heap *src = &self->heaps[b];
        Heap *dst = &f->heaps[b];
        if (heap_reserve(dst, src->n) < 0) { Py_DECREF(f); return NULL; }
        for (Py_ssize_t k = 0; k < src->n; k++) {
            const Entry *e = &src->items[k];
            if (e->ref >= 0 ? f->allowed[x->sig[e->ref]] : f->node_ok[-1 - e->ref]) dst->items[dst->n++] = *e;
        }
        heapify(dst);
    }
    return (PyObject *)f;
}

static PyObject *Frontier_score_of(FrontierObject *self, PyObject *args) {
    Py_ssize_t i;
    if (!PyArg_ParseTuple(args, "n", &i)) return NULL;
    if (i < 0 || i >= self->index->n) { PyErr_SetString(PyExc_IndexError, "provider index out of range"); return NULL; }
    Entry e;
    if (!score(self, (int32_t)i, &e)) Py_RETURN_NONE;
    return Py_BuildValue("(dL)", e.key, (long long)e.rate);
}

static Py_ssize_t Frontier_len(FrontierObject *self) {
    Py_ssize_t total = 0;
    for (Py_ssize_t b = 0; b <= self->nedges; b++) total += self->heaps[b].n;
    return total;
}

static PySequenceMethods Frontier_as_sequence = {.sq_length = (lenfunc)Frontier_len};

static PyMethodDef Frontier_methods[] = {
    {"best", (PyCFunction)(void (*)(void))Frontier_best, METH_VARARGS | METH_KEYWORDS,
     "best(cap, excluded=None, disk=0, narrow=None, budget=-1) -> ((i, rate) | None, skips, complete)"},
    {"narrowed", (PyCFunction)Frontier_narrowed, METH_VARARGS,
     "narrowed(allowed, node_ok): a frontier for narrower labels, starting where this one is."},
    {"score_of", (PyCFunction)Frontier_score_of, METH_VARARGS,
     "score_of(i): (score, rate) of provider i for the demand now, or None when it cannot take it."},
    {NULL, NULL, 0, NULL}};

static PyTypeObject FrontierType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dsq_chain.matching._search.Frontier",
    .tp_basicsize = sizeof(FrontierObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A resumable best-first search for one demand.",
    .tp_new = Frontier_new,
    .tp_dealloc = (destructor)Frontier_dealloc,
    .tp_methods = Frontier_methods,
    .tp_as_sequence = &Frontier_as_sequence,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_search",
    .m_doc = "The matcher's provider search, compiled (see index.py).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__search(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddType(m, &IndexType) < 0 || PyModule_AddType(m, &FrontierType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
