/* Compiled core of the KV indexer's radix tree (dynamo.kv_router.indexer.PyRadixTree, same semantics).
 *
 * Why C: at 1,024 workers the router applies ~16 blocks per stored event, and in CPython each block is a
 * list allocation plus dict insertions (~0.6 us); issue 17 asks for >= 100k events/s on one core.
 *
 * Layout: a node holds its parent, its local (tokens) hash, its children (none, one child pointer, or a
 * u64 -> node hash map from two children on, tagged by the low pointer bit) and the sorted slot numbers
 * of the workers holding it (inline up to two: most nodes belong to one worker). Each (worker, dp_rank)
 * has a u64 -> node map from its external block hashes, and a node -> count map of extra hashes that
 * point at a node it already holds (only with inconsistent engine hashes). Memory comes from
 * PyMem_Malloc so that tracemalloc (benchmarks/router_scale.py's bytes per block) sees it.
 *
 * Nodes pruned during an operation go to a graveyard freed when the operation ends: like the Python
 * version, a walk may still reach a node pruned a moment ago (a worker's table can point at the same
 * node through two hashes) and must see it as detached (parent NULL), not as freed memory.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#if PY_VERSION_HEX < 0x030B0000
#include <longintrepr.h> /* the digits of an int (Python.h includes it from 3.11 on) */
#endif
#if defined(Py_AUDIT_READ)
#define RADIX_AUDIT_READ Py_AUDIT_READ
#elif defined(PY_AUDIT_READ)
#define RADIX_AUDIT_READ PY_AUDIT_READ
#else
#define RADIX_AUDIT_READ 0
#endif
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------ u64 -> pointer hash map */

typedef struct {
    uint64_t key;
    void *val; /* NULL: empty slot */
} Entry;

typedef struct {
    Entry *e; /* NULL while empty */
    uint32_t bits;
    size_t len;
} Map;

#define MAP_MIN_BITS 3

static inline size_t map_cap(const Map *m) { return m->e ? ((size_t)1 << m->bits) : 0; }

static inline size_t map_home(uint64_t key, uint32_t bits)
{
    /* Fibonacci hashing: keys may be small sequential ints (tests) or pointers, not only xxh3 output. */
    return (size_t)((key * 0x9E3779B97F4A7C15ULL) >> (64 - bits));
}

static inline void *map_get(const Map *m, uint64_t key)
{
    if (!m->e)
        return NULL;
    size_t mask = ((size_t)1 << m->bits) - 1;
    size_t i = map_home(key, m->bits);
    for (;;) {
        Entry *en = &m->e[i];
        if (!en->val)
            return NULL;
        if (en->key == key)
            return en->val;
        i = (i + 1) & mask;
    }
}

static int map_resize(Map *m, uint32_t bits)
{
    size_t cap = (size_t)1 << bits, mask = cap - 1;
    Entry *ne = PyMem_Calloc(cap, sizeof(Entry));
    if (!ne) {
        PyErr_NoMemory();
        return -1;
    }
    Entry *old = m->e;
    size_t oldcap = map_cap(m);
    for (size_t j = 0; j < oldcap; j++) {
        if (!old[j].val)
            continue;
        size_t i = map_home(old[j].key, bits);
        while (ne[i].val)
            i = (i + 1) & mask;
        ne[i] = old[j];
    }
    PyMem_Free(old);
    m->e = ne;
    m->bits = bits;
    return 0;
}

/* Insert or replace; *prev gets the value replaced (NULL if the key was new). */
static int map_put(Map *m, uint64_t key, void *val, void **prev)
{
    if (!m->e) {
        if (map_resize(m, MAP_MIN_BITS) < 0)
            return -1;
    }
    else if ((m->len + 1) * 4 > map_cap(m) * 3) {
        if (map_resize(m, m->bits + 1) < 0)
            return -1;
    }
    size_t mask = map_cap(m) - 1;
    size_t i = map_home(key, m->bits);
    for (;;) {
        Entry *en = &m->e[i];
        if (!en->val) {
            en->key = key;
            en->val = val;
            m->len++;
            if (prev)
                *prev = NULL;
            return 0;
        }
        if (en->key == key) {
            if (prev)
                *prev = en->val;
            en->val = val;
            return 0;
        }
        i = (i + 1) & mask;
    }
}

static void map_free(Map *m)
{
    PyMem_Free(m->e);
    m->e = NULL;
    m->bits = 0;
    m->len = 0;
}

/* Remove a key (backward-shift deletion: no tombstones); returns its value or NULL. */
static void *map_pop(Map *m, uint64_t key)
{
    if (!m->e)
        return NULL;
    size_t mask = map_cap(m) - 1;
    size_t i = map_home(key, m->bits);
    for (;;) {
        if (!m->e[i].val)
            return NULL;
        if (m->e[i].key == key)
            break;
        i = (i + 1) & mask;
    }
    void *val = m->e[i].val;
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!m->e[j].val)
            break;
        size_t k = map_home(m->e[j].key, m->bits);
        /* The entry at j may move into the hole at i unless its home lies cyclically in (i, j]. */
        int stays = (i <= j) ? (i < k && k <= j) : (i < k || k <= j);
        if (!stays) {
            m->e[i] = m->e[j];
            i = j;
        }
    }
    m->e[i].val = NULL;
    m->len--;
    if (m->len == 0)
        map_free(m);
    else if (m->bits > MAP_MIN_BITS && m->len * 8 < map_cap(m) && map_resize(m, m->bits - 1) < 0)
        PyErr_Clear(); /* shrinking is best effort: the map stays valid at its size */
    return val;
}

/* ------------------------------------------------------------------ nodes */

typedef struct Node {
    struct Node *parent; /* NULL for the root and for a pruned node */
    uint64_t tokens_hash;
    uintptr_t kids; /* 0, a Node *, or a Map * | 1 */
    uint32_t n, cap; /* holders; cap 0: stored inline (n <= 2) */
    union {
        uint32_t in[2];
        uint32_t *arr;
    } m;
} Node;

static inline uint32_t *holders(Node *nd) { return nd->cap ? nd->m.arr : nd->m.in; }

/* Index of the first holder >= slot. */
static inline uint32_t holder_pos(Node *nd, uint32_t slot)
{
    uint32_t *a = holders(nd);
    uint32_t lo = 0, hi = nd->n;
    while (lo < hi) {
        uint32_t mid = (lo + hi) >> 1;
        if (a[mid] < slot)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static inline int holds(Node *nd, uint32_t slot)
{
    uint32_t i = holder_pos(nd, slot);
    return i < nd->n && holders(nd)[i] == slot;
}

static int holder_add(Node *nd, uint32_t slot)
{
    uint32_t i = holder_pos(nd, slot);
    uint32_t *a = holders(nd);
    if (i < nd->n && a[i] == slot)
        return 0;
    if (nd->cap == 0 && nd->n == 2) {
        uint32_t *arr = PyMem_Malloc(4 * sizeof(uint32_t));
        if (!arr) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(arr, nd->m.in, 2 * sizeof(uint32_t));
        nd->m.arr = arr;
        nd->cap = 4;
        a = arr;
    }
    else if (nd->cap && nd->n == nd->cap) {
        uint32_t *arr = PyMem_Realloc(nd->m.arr, (size_t)nd->cap * 2 * sizeof(uint32_t));
        if (!arr) {
            PyErr_NoMemory();
            return -1;
        }
        nd->m.arr = arr;
        nd->cap *= 2;
        a = arr;
    }
    memmove(a + i + 1, a + i, (size_t)(nd->n - i) * sizeof(uint32_t));
    a[i] = slot;
    nd->n++;
    return 0;
}

static void holder_del(Node *nd, uint32_t slot)
{
    uint32_t i = holder_pos(nd, slot);
    uint32_t *a = holders(nd);
    if (i >= nd->n || a[i] != slot)
        return;
    memmove(a + i, a + i + 1, (size_t)(nd->n - i - 1) * sizeof(uint32_t));
    nd->n--;
    if (nd->cap && nd->n <= 2) {
        uint32_t keep[2] = {a[0], a[1]};
        PyMem_Free(a);
        nd->cap = 0;
        nd->m.in[0] = keep[0];
        nd->m.in[1] = keep[1];
    }
}

#define KIDS_IS_MAP(k) ((k) & 1)
#define KIDS_MAP(k) ((Map *)((k) & ~(uintptr_t)1))

static inline Node *kid_of(uintptr_t kids, uint64_t tokens_hash)
{
    if (!kids)
        return NULL;
    if (!KIDS_IS_MAP(kids)) {
        Node *c = (Node *)kids;
        return c->tokens_hash == tokens_hash ? c : NULL;
    }
    return map_get(KIDS_MAP(kids), tokens_hash);
}

static int kid_add(Node *nd, Node *child)
{
    if (!nd->kids) {
        nd->kids = (uintptr_t)child;
        return 0;
    }
    if (!KIDS_IS_MAP(nd->kids)) {
        Map *m = PyMem_Calloc(1, sizeof(Map));
        if (!m) {
            PyErr_NoMemory();
            return -1;
        }
        Node *only = (Node *)nd->kids;
        if (map_put(m, only->tokens_hash, only, NULL) < 0 || map_put(m, child->tokens_hash, child, NULL) < 0) {
            map_free(m);
            PyMem_Free(m);
            return -1;
        }
        nd->kids = (uintptr_t)m | 1;
        return 0;
    }
    return map_put(KIDS_MAP(nd->kids), child->tokens_hash, child, NULL);
}

static void kid_del(Node *nd, Node *child)
{
    if (!KIDS_IS_MAP(nd->kids)) {
        nd->kids = 0;
        return;
    }
    Map *m = KIDS_MAP(nd->kids);
    map_pop(m, child->tokens_hash);
    if (m->len == 1) {
        /* Back to a single child pointer (most nodes are links of unshared chains). */
        size_t cap = map_cap(m);
        for (size_t i = 0; i < cap; i++) {
            if (m->e[i].val) {
                nd->kids = (uintptr_t)m->e[i].val;
                break;
            }
        }
        map_free(m);
        PyMem_Free(m);
    }
    else if (m->len == 0) { /* not reached (a map has >= 2 children), kept for safety */
        map_free(m);
        PyMem_Free(m);
        nd->kids = 0;
    }
}

/* ------------------------------------------------------------------ the tree object */

typedef struct {
    Map table;   /* external block hash -> Node * */
    Map aliases; /* (uintptr_t)Node * -> extra hashes of this worker pointing at it (count) */
    PyObject *key; /* the (worker_id, dp_rank) tuple; NULL while the slot is free */
} Worker;

typedef struct {
    PyObject_HEAD
    Node root;
    Py_ssize_t num_nodes;
    Worker *workers;
    Py_ssize_t nslots, slots_cap;
    uint32_t *free_slots;
    Py_ssize_t nfree, free_cap;
    Node **grave;
    Py_ssize_t ngrave, grave_cap;
    PyObject *slot_of;  /* dict: key -> slot */
    PyObject *sizes;    /* dict: key -> blocks in its table (handed out as OverlapScores.tree_sizes) */
    PyObject *last_ids; /* dict: key -> highest event_id seen */
    long long counts[6];
} Tree;

/* Bound once from Python (_bind): the protocol classes, OverlapScores and the status strings. */
static PyObject *T_STORED, *T_REMOVED, *T_CLEARED, *T_SCORES, *T_BLOCK, *T_ROUTER_EVENT, *T_CACHE_EVENT;
/* Byte offsets of the protocol structs' fields when they are plain object slots (msgspec Structs), else
 * -1: reading them directly skips a generic attribute lookup each (two per block, seven per event). */
static Py_ssize_t OFF_BLOCK_HASH = -1, OFF_TOKENS_HASH = -1, OFF_WORKER_ID = -1, OFF_EVENT = -1,
                  OFF_EVENT_ID = -1, OFF_DP_RANK = -1, OFF_DATA = -1, OFF_PARENT_HASH = -1, OFF_BLOCKS = -1,
                  OFF_BLOCK_HASHES = -1;

/* obj.name as a new reference, from its slot when obj is exactly of the bound type. */
static inline PyObject *field(PyObject *obj, PyObject *type, Py_ssize_t off, PyObject *name)
{
    if ((PyObject *)Py_TYPE(obj) == type && off >= 0) {
        PyObject *v = *(PyObject **)((char *)obj + off);
        if (v)
            return Py_NewRef(v);
    }
    return PyObject_GetAttr(obj, name);
}
static PyObject *S_OK, *S_PARENT_NF, *S_BLOCK_NF, *S_INVALID;
static PyObject *A_WORKER_ID, *A_EVENT, *A_EVENT_ID, *A_DP_RANK, *A_DATA, *A_PARENT_HASH, *A_BLOCKS,
    *A_BLOCK_HASH, *A_TOKENS_HASH, *A_BLOCK_HASHES;

enum { C_STORED_OK, C_STORED_PARENT, C_STORED_INVALID, C_REMOVED_OK, C_REMOVED_NF, C_CLEARED_OK };

static int grave_push(Tree *t, Node *nd)
{
    if (t->ngrave == t->grave_cap) {
        Py_ssize_t cap = t->grave_cap ? t->grave_cap * 2 : 64;
        Node **g = PyMem_Realloc(t->grave, (size_t)cap * sizeof(Node *));
        if (!g) {
            PyErr_NoMemory();
            return -1;
        }
        t->grave = g;
        t->grave_cap = cap;
    }
    t->grave[t->ngrave++] = nd;
    return 0;
}

static void grave_flush(Tree *t)
{
    for (Py_ssize_t i = 0; i < t->ngrave; i++) {
        Node *nd = t->grave[i];
        if (nd->cap)
            PyMem_Free(nd->m.arr);
        PyMem_Free(nd);
    }
    t->ngrave = 0;
    if (t->grave_cap > 4096) {
        PyMem_Free(t->grave);
        t->grave = NULL;
        t->grave_cap = 0;
    }
}

/* Detach a node left with no holders and no children, and every ancestor that this empties. */
static int prune(Tree *t, Node *nd)
{
    while (nd->n == 0 && nd->kids == 0) {
        Node *parent = nd->parent;
        if (!parent) /* the root, or a node already pruned */
            return 0;
        kid_del(parent, nd);
        nd->parent = NULL;
        if (grave_push(t, nd) < 0)
            return -1;
        t->num_nodes--;
        nd = parent;
    }
    return 0;
}

static int drop_membership(Tree *t, Node *nd, uint32_t slot)
{
    holder_del(nd, slot);
    return prune(t, nd);
}

static int release(Tree *t, Worker *w, uint32_t slot, Node *nd)
{
    if (w->aliases.len) {
        uintptr_t extra = (uintptr_t)map_get(&w->aliases, (uint64_t)(uintptr_t)nd);
        if (extra) {
            if (extra == 1)
                map_pop(&w->aliases, (uint64_t)(uintptr_t)nd);
            else
                map_put(&w->aliases, (uint64_t)(uintptr_t)nd, (void *)(extra - 1), NULL);
            return 0;
        }
    }
    return drop_membership(t, nd, slot);
}

static int set_size(Tree *t, Worker *w)
{
    PyObject *n = PyLong_FromSize_t(w->table.len);
    if (!n)
        return -1;
    int rc = PyDict_SetItem(t->sizes, w->key, n);
    Py_DECREF(n);
    return rc;
}

/* The slot of key, creating the worker (empty table, size 0) if it is new; -1 on error. */
static Py_ssize_t ensure_worker(Tree *t, PyObject *key)
{
    PyObject *s = PyDict_GetItemWithError(t->slot_of, key);
    if (s)
        return PyLong_AsSsize_t(s);
    if (PyErr_Occurred())
        return -1;
    if (!PyTuple_Check(key) || PyTuple_GET_SIZE(key) != 2) {
        PyErr_Format(PyExc_TypeError, "a worker key is a (worker_id, dp_rank) tuple, got %R", key);
        return -1;
    }
    Py_ssize_t slot;
    if (t->nfree) {
        slot = t->free_slots[--t->nfree];
    }
    else {
        if (t->nslots == t->slots_cap) {
            Py_ssize_t cap = t->slots_cap ? t->slots_cap * 2 : 16;
            Worker *ws = PyMem_Realloc(t->workers, (size_t)cap * sizeof(Worker));
            if (!ws) {
                PyErr_NoMemory();
                return -1;
            }
            t->workers = ws;
            t->slots_cap = cap;
        }
        slot = t->nslots++;
    }
    if (slot > (Py_ssize_t)UINT32_MAX - 1) {
        PyErr_SetString(PyExc_OverflowError, "too many workers for the compiled KV indexer");
        return -1;
    }
    Worker *w = &t->workers[slot];
    memset(w, 0, sizeof(Worker));
    Py_INCREF(key);
    w->key = key;
    PyObject *so = PyLong_FromSsize_t(slot);
    if (!so)
        return -1;
    int rc = PyDict_SetItem(t->slot_of, key, so);
    Py_DECREF(so);
    if (rc < 0 || set_size(t, w) < 0)
        return -1;
    return slot;
}

/* A hash argument: 1 and *out on a u64 int, 0 for anything else (it cannot be in the index). */
static inline int as_u64(PyObject *o, uint64_t *out)
{
    if (!PyLong_Check(o))
        return 0;
#if PY_VERSION_HEX < 0x030C0000
    /* Up to 3.11 an int is a signed count of 30-bit digits: read u64-sized ones directly (the generic
     * converter goes through a byte array, a fifth of an event's cost at fleet scale). */
    if (PyLong_CheckExact(o) && PyLong_SHIFT == 30) {
        Py_ssize_t size = Py_SIZE(o);
        const digit *d = ((PyLongObject *)o)->ob_digit;
        switch (size) {
        case 0:
            *out = 0;
            return 1;
        case 1:
            *out = d[0];
            return 1;
        case 2:
            *out = (uint64_t)d[0] | ((uint64_t)d[1] << 30);
            return 1;
        case 3:
            if (d[2] >> 4)
                return 0; /* >= 2**64 */
            *out = (uint64_t)d[0] | ((uint64_t)d[1] << 30) | ((uint64_t)d[2] << 60);
            return 1;
        default:
            if (size < 0 || size > 3)
                return 0;
        }
    }
#endif
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    *out = (uint64_t)v;
    return 1;
}

static int need_u64(PyObject *o, uint64_t *out)
{
    if (as_u64(o, out))
        return 0;
    PyErr_Format(PyExc_ValueError, "KV block hashes must be ints in [0, 2**64), got %R", o);
    return -1;
}

typedef struct {
    uint64_t bh, th;
} Pair;

/* 1 if a block hash repeats or equals the parent (an invalid event), 0 if not, -1 on error. */
static int has_unique_violation(const Pair *p, Py_ssize_t n, int has_parent, uint64_t parent)
{
    if (n <= 16) { /* the common event: pairwise is cheapest */
        for (Py_ssize_t i = 0; i < n; i++) {
            if (has_parent && p[i].bh == parent)
                return 1;
            for (Py_ssize_t j = 0; j < i; j++)
                if (p[j].bh == p[i].bh)
                    return 1;
        }
        return 0;
    }
    size_t cap = 64;
    while (cap < (size_t)n * 2)
        cap <<= 1;
    uint64_t kstack[256];
    unsigned char ustack[256];
    uint64_t *keys = cap <= 256 ? kstack : PyMem_Malloc(cap * sizeof(uint64_t));
    unsigned char *used = cap <= 256 ? ustack : PyMem_Calloc(cap, 1);
    if (!keys || !used) {
        if (keys != kstack)
            PyMem_Free(keys);
        if (used != ustack)
            PyMem_Free(used);
        PyErr_NoMemory();
        return -1;
    }
    if (used == ustack)
        memset(ustack, 0, cap);
    uint32_t bits = 0;
    while (((size_t)1 << bits) < cap)
        bits++;
    int bad = 0;
    for (Py_ssize_t i = 0; i <= n && !bad; i++) {
        uint64_t k;
        if (i == n) {
            if (!has_parent)
                break;
            k = parent;
        }
        else
            k = p[i].bh;
        size_t j = map_home(k, bits);
        for (;;) {
            if (!used[j]) {
                used[j] = 1;
                keys[j] = k;
                break;
            }
            if (keys[j] == k) {
                bad = 1;
                break;
            }
            j = (j + 1) & (cap - 1);
        }
    }
    if (keys != kstack)
        PyMem_Free(keys);
    if (used != ustack)
        PyMem_Free(used);
    return bad;
}

/* stored: all or nothing (unknown parent, a repeated hash or the parent among the blocks reject it). */
static PyObject *do_store(Tree *t, PyObject *key, PyObject *parent_obj, Pair *p, Py_ssize_t n)
{
    Py_ssize_t s = ensure_worker(t, key);
    if (s < 0)
        return NULL;
    uint32_t slot = (uint32_t)s;
    Worker *w = &t->workers[slot];
    Node *node = &t->root;
    int has_parent = parent_obj != Py_None;
    uint64_t parent = 0;
    if (has_parent) {
        if (!as_u64(parent_obj, &parent) || !(node = map_get(&w->table, parent)))
            return Py_NewRef(S_PARENT_NF);
    }
    if (n > 1 || has_parent) {
        int bad = has_unique_violation(p, n, has_parent, parent);
        if (bad < 0)
            return NULL;
        if (bad)
            return Py_NewRef(S_INVALID);
    }
    Py_ssize_t created = 0;
    PyObject *result = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        Node *child = kid_of(node->kids, p[i].th);
        void *prev;
        if (!child) {
            child = PyMem_Malloc(sizeof(Node));
            if (!child) {
                PyErr_NoMemory();
                goto done;
            }
            child->parent = node;
            child->tokens_hash = p[i].th;
            child->kids = 0;
            child->n = 1;
            child->cap = 0;
            child->m.in[0] = slot;
            child->m.in[1] = 0;
            if (kid_add(node, child) < 0) {
                PyMem_Free(child);
                goto done;
            }
            created++;
            if (map_put(&w->table, p[i].bh, child, &prev) < 0)
                goto done;
            if (prev && release(t, w, slot, prev) < 0)
                goto done;
        }
        else {
            prev = map_get(&w->table, p[i].bh);
            if (prev != child) {
                if (holds(child, slot)) {
                    uint64_t k = (uint64_t)(uintptr_t)child;
                    uintptr_t extra = (uintptr_t)map_get(&w->aliases, k);
                    if (map_put(&w->aliases, k, (void *)(extra + 1), NULL) < 0)
                        goto done;
                }
                else if (holder_add(child, slot) < 0)
                    goto done;
                if (map_put(&w->table, p[i].bh, child, NULL) < 0)
                    goto done;
                /* The worker re-stored this hash elsewhere (inconsistent engine hashes). */
                if (prev && release(t, w, slot, prev) < 0)
                    goto done;
            }
        }
        node = child;
    }
    result = Py_NewRef(S_OK);
done:
    t->num_nodes += created;
    grave_flush(t);
    if (set_size(t, w) < 0)
        Py_CLEAR(result);
    return result;
}

static PyObject *do_remove(Tree *t, PyObject *key, PyObject *hashes)
{
    PyObject *s = PyDict_GetItemWithError(t->slot_of, key);
    if (!s) {
        if (PyErr_Occurred())
            return NULL;
        int truth = PyObject_IsTrue(hashes);
        if (truth < 0)
            return NULL;
        return Py_NewRef(truth ? S_BLOCK_NF : S_OK);
    }
    uint32_t slot = (uint32_t)PyLong_AsSsize_t(s);
    Worker *w = &t->workers[slot];
    PyObject *seq = PySequence_Fast(hashes, "block_hashes must be a sequence");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *status = S_OK;
    int err = 0;
    for (Py_ssize_t i = 0; i < n && !err; i++) {
        uint64_t h;
        Node *nd = as_u64(items[i], &h) ? map_pop(&w->table, h) : NULL;
        if (!nd) {
            status = S_BLOCK_NF;
            continue;
        }
        err = release(t, w, slot, nd) < 0;
    }
    Py_DECREF(seq);
    grave_flush(t);
    if (set_size(t, w) < 0 || err)
        return NULL;
    return Py_NewRef(status);
}

static int drop_all(Tree *t, uint32_t slot)
{
    Worker *w = &t->workers[slot];
    map_free(&w->aliases);
    size_t cap = map_cap(&w->table);
    int err = 0;
    for (size_t i = 0; i < cap && !err; i++) {
        Node *nd = w->table.e[i].val;
        if (nd)
            err = drop_membership(t, nd, slot) < 0;
    }
    map_free(&w->table);
    grave_flush(t);
    if (err)
        return -1;
    return set_size(t, w);
}

/* The keys of worker_id (every dp rank), in the order the workers became known. */
static PyObject *keys_of(Tree *t, PyObject *worker_id)
{
    PyObject *out = PyList_New(0);
    if (!out)
        return NULL;
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    while (PyDict_Next(t->sizes, &pos, &k, &v)) {
        int eq = PyObject_RichCompareBool(PyTuple_GET_ITEM(k, 0), worker_id, Py_EQ);
        if (eq < 0 || (eq && PyList_Append(out, k) < 0)) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

static int do_clear(Tree *t, PyObject *worker_id)
{
    PyObject *keys = keys_of(t, worker_id);
    if (!keys)
        return -1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(keys); i++) {
        PyObject *s = PyDict_GetItemWithError(t->slot_of, PyList_GET_ITEM(keys, i));
        if (!s || drop_all(t, (uint32_t)PyLong_AsSsize_t(s)) < 0) {
            Py_DECREF(keys);
            return -1;
        }
    }
    Py_DECREF(keys);
    return 0;
}

/* ------------------------------------------------------------------ Python methods */

static PyObject *Tree_apply_event(Tree *t, PyObject *event)
{
    PyObject *wid = NULL, *ev = NULL, *eid = NULL, *dp = NULL, *data = NULL, *key = NULL, *status = NULL;
    PyObject *parent = NULL, *blocks = NULL, *seq = NULL, *hashes = NULL;
    Pair stack[64], *pairs = stack;
    if (!(wid = field(event, T_ROUTER_EVENT, OFF_WORKER_ID, A_WORKER_ID)) ||
        !(ev = field(event, T_ROUTER_EVENT, OFF_EVENT, A_EVENT)) ||
        !(eid = field(ev, T_CACHE_EVENT, OFF_EVENT_ID, A_EVENT_ID)) ||
        !(dp = field(ev, T_CACHE_EVENT, OFF_DP_RANK, A_DP_RANK)) ||
        !(data = field(ev, T_CACHE_EVENT, OFF_DATA, A_DATA)) || !(key = PyTuple_Pack(2, wid, dp)))
        goto out;
    PyObject *last = PyDict_GetItemWithError(t->last_ids, key);
    if (!last && PyErr_Occurred())
        goto out;
    int newer = 1;
    if (last && (newer = PyObject_RichCompareBool(eid, last, Py_GT)) < 0)
        goto out;
    if (newer && PyDict_SetItem(t->last_ids, key, eid) < 0)
        goto out;
    PyTypeObject *tp = Py_TYPE(data);
    if ((PyObject *)tp == T_STORED) {
        if (!(parent = field(data, T_STORED, OFF_PARENT_HASH, A_PARENT_HASH)) ||
            !(blocks = field(data, T_STORED, OFF_BLOCKS, A_BLOCKS)) ||
            !(seq = PySequence_Fast(blocks, "blocks must be a sequence")))
            goto out;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
        PyObject **items = PySequence_Fast_ITEMS(seq);
        if (n > 64 && !(pairs = PyMem_Malloc((size_t)n * sizeof(Pair)))) {
            pairs = stack;
            PyErr_NoMemory();
            goto out;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *it = items[i];
            if ((PyObject *)Py_TYPE(it) == T_BLOCK && OFF_BLOCK_HASH >= 0) {
                PyObject *bh = *(PyObject **)((char *)it + OFF_BLOCK_HASH);
                PyObject *th = *(PyObject **)((char *)it + OFF_TOKENS_HASH);
                if (bh && th && as_u64(bh, &pairs[i].bh) && as_u64(th, &pairs[i].th))
                    continue;
            }
            PyObject *bh = PyObject_GetAttr(it, A_BLOCK_HASH);
            if (!bh)
                goto out;
            int rc = need_u64(bh, &pairs[i].bh);
            Py_DECREF(bh);
            if (rc < 0)
                goto out;
            PyObject *th = PyObject_GetAttr(it, A_TOKENS_HASH);
            if (!th)
                goto out;
            rc = need_u64(th, &pairs[i].th);
            Py_DECREF(th);
            if (rc < 0)
                goto out;
        }
        if (!(status = do_store(t, key, parent, pairs, n)))
            goto out;
        t->counts[status == S_OK ? C_STORED_OK : status == S_PARENT_NF ? C_STORED_PARENT : C_STORED_INVALID]++;
    }
    else if ((PyObject *)tp == T_REMOVED) {
        if (!(hashes = field(data, T_REMOVED, OFF_BLOCK_HASHES, A_BLOCK_HASHES)) ||
            !(status = do_remove(t, key, hashes)))
            goto out;
        t->counts[status == S_OK ? C_REMOVED_OK : C_REMOVED_NF]++;
    }
    else if ((PyObject *)tp == T_CLEARED) {
        if (do_clear(t, wid) < 0)
            goto out;
        status = Py_NewRef(S_OK);
        t->counts[C_CLEARED_OK]++;
    }
    else {
        PyErr_Format(PyExc_TypeError, "unknown KV event data %R", data);
    }
out:
    if (pairs != stack)
        PyMem_Free(pairs);
    Py_XDECREF(wid);
    Py_XDECREF(ev);
    Py_XDECREF(eid);
    Py_XDECREF(dp);
    Py_XDECREF(data);
    Py_XDECREF(key);
    Py_XDECREF(parent);
    Py_XDECREF(blocks);
    Py_XDECREF(seq);
    Py_XDECREF(hashes);
    return status;
}

static PyObject *Tree_store_blocks(Tree *t, PyObject *args)
{
    PyObject *key, *parent, *blocks;
    if (!PyArg_ParseTuple(args, "OOO:store_blocks", &key, &parent, &blocks))
        return NULL;
    PyObject *seq = PySequence_Fast(blocks, "blocks must be a sequence of (block_hash, tokens_hash)");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    Pair stack[64], *pairs = n <= 64 ? stack : PyMem_Malloc((size_t)n * sizeof(Pair));
    PyObject *status = NULL;
    if (!pairs) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PySequence_Fast(items[i], "a block must be a (block_hash, tokens_hash) pair");
        if (!pair)
            goto out;
        int bad = PySequence_Fast_GET_SIZE(pair) != 2 ||
                  need_u64(PySequence_Fast_GET_ITEM(pair, 0), &pairs[i].bh) < 0 ||
                  need_u64(PySequence_Fast_GET_ITEM(pair, 1), &pairs[i].th) < 0;
        Py_DECREF(pair);
        if (bad) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "a block must be a (block_hash, tokens_hash) pair");
            goto out;
        }
    }
    status = do_store(t, key, parent, pairs, n);
out:
    if (pairs != stack)
        PyMem_Free(pairs);
    Py_DECREF(seq);
    return status;
}

static PyObject *Tree_remove_blocks(Tree *t, PyObject *args)
{
    PyObject *key, *hashes;
    if (!PyArg_ParseTuple(args, "OO:remove_blocks", &key, &hashes))
        return NULL;
    return do_remove(t, key, hashes);
}

static PyObject *Tree_clear_worker(Tree *t, PyObject *worker_id)
{
    if (do_clear(t, worker_id) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Tree_remove_worker(Tree *t, PyObject *worker_id)
{
    PyObject *keys = keys_of(t, worker_id);
    if (!keys)
        return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(keys); i++) {
        PyObject *key = PyList_GET_ITEM(keys, i);
        PyObject *s = PyDict_GetItemWithError(t->slot_of, key);
        if (!s)
            goto fail;
        uint32_t slot = (uint32_t)PyLong_AsSsize_t(s);
        if (drop_all(t, slot) < 0 || PyDict_DelItem(t->sizes, key) < 0 || PyDict_DelItem(t->slot_of, key) < 0)
            goto fail;
        Worker *w = &t->workers[slot];
        Py_CLEAR(w->key);
        if (t->nfree == t->free_cap) {
            Py_ssize_t cap = t->free_cap ? t->free_cap * 2 : 16;
            uint32_t *f = PyMem_Realloc(t->free_slots, (size_t)cap * sizeof(uint32_t));
            if (!f) {
                PyErr_NoMemory();
                goto fail;
            }
            t->free_slots = f;
            t->free_cap = cap;
        }
        t->free_slots[t->nfree++] = slot;
        PyObject *last = PyDict_GetItemWithError(t->last_ids, key);
        if ((!last && PyErr_Occurred()) || (last && PyDict_DelItem(t->last_ids, key) < 0))
            goto fail;
    }
    Py_DECREF(keys);
    Py_RETURN_NONE;
fail:
    Py_DECREF(keys);
    return NULL;
}

static int emit_score(Tree *t, PyObject *scores, uint32_t slot, PyObject *depth)
{
    return PyDict_SetItem(scores, t->workers[slot].key, depth);
}

static PyObject *Tree_find_matches(Tree *t, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"local_hashes", "early_exit", NULL};
    PyObject *hashes;
    int early_exit = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|p:find_matches", kwlist, &hashes, &early_exit))
        return NULL;
    PyObject *seq = PySequence_Fast(hashes, "local_hashes must be a sequence");
    if (!seq)
        return NULL;
    PyObject *scores = PyDict_New();
    uint32_t stack[256], *active = stack;
    uint32_t na = 0;
    Py_ssize_t depth = 0;
    PyObject *result = NULL, *dobj = NULL;
    if (!scores)
        goto out;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    uintptr_t kids = t->root.kids;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t h;
        Node *child;
        if (!kids || !as_u64(items[i], &h) || !(child = kid_of(kids, h)))
            break;
        uint32_t *mem = holders(child);
        uint32_t nm = child->n;
        if (depth == 0) {
            if (nm > 256 && !(active = PyMem_Malloc((size_t)nm * sizeof(uint32_t)))) {
                active = stack;
                PyErr_NoMemory();
                goto out;
            }
            memcpy(active, mem, (size_t)nm * sizeof(uint32_t));
            na = nm;
        }
        else {
            /* active &= holders; the ones dropped score the depth reached (in slot order). */
            uint32_t kept = 0, j = 0;
            for (uint32_t a = 0; a < na; a++) {
                uint32_t s = active[a];
                while (j < nm && mem[j] < s)
                    j++;
                if (j < nm && mem[j] == s) {
                    active[kept++] = s;
                }
                else {
                    if (!dobj && !(dobj = PyLong_FromSsize_t(depth)))
                        goto out;
                    if (emit_score(t, scores, s, dobj) < 0)
                        goto out;
                }
            }
            na = kept;
            Py_CLEAR(dobj);
        }
        if (!na)
            break;
        depth++;
        if (early_exit && na == 1)
            break;
        kids = child->kids;
    }
    if (na) {
        if (!(dobj = PyLong_FromSsize_t(depth)))
            goto out;
        for (uint32_t a = 0; a < na; a++)
            if (emit_score(t, scores, active[a], dobj) < 0)
                goto out;
    }
    result = PyObject_CallFunctionObjArgs(T_SCORES, scores, t->sizes, NULL);
out:
    if (active != stack)
        PyMem_Free(active);
    Py_XDECREF(dobj);
    Py_XDECREF(scores);
    Py_DECREF(seq);
    return result;
}

static PyObject *Tree_block_hashes(Tree *t, PyObject *key)
{
    PyObject *out = PySet_New(NULL);
    if (!out)
        return NULL;
    PyObject *s = PyDict_GetItemWithError(t->slot_of, key);
    if (!s)
        return PyErr_Occurred() ? (Py_DECREF(out), NULL) : out;
    Map *m = &t->workers[PyLong_AsSsize_t(s)].table;
    size_t cap = map_cap(m);
    for (size_t i = 0; i < cap; i++) {
        if (!m->e[i].val)
            continue;
        PyObject *h = PyLong_FromUnsignedLongLong(m->e[i].key);
        if (!h || PySet_Add(out, h) < 0) {
            Py_XDECREF(h);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(h);
    }
    return out;
}

/* (tables, nodes) for dump_events: tables = [(key, [(block_hash, node_id, held)])] in worker order,
 * nodes = {node_id: (parent_id, tokens_hash)}; node ids are addresses, the root is 0. */
static PyObject *node_id(Tree *t, Node *nd)
{
    return PyLong_FromVoidPtr(nd == &t->root ? NULL : (void *)nd);
}

static PyObject *Tree_export(Tree *t, PyObject *Py_UNUSED(ignored))
{
    PyObject *tables = PyList_New(0), *nodes = PyDict_New(), *result = NULL;
    Node **stack = NULL;
    Py_ssize_t sp = 0, scap = 0;
    if (!tables || !nodes)
        goto out;
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    while (PyDict_Next(t->sizes, &pos, &k, &v)) {
        uint32_t slot = (uint32_t)PyLong_AsSsize_t(PyDict_GetItem(t->slot_of, k));
        Map *m = &t->workers[slot].table;
        PyObject *items = PyList_New(0);
        if (!items)
            goto out;
        PyObject *row = Py_BuildValue("(ON)", k, items);
        if (!row || PyList_Append(tables, row) < 0) {
            Py_XDECREF(row);
            goto out;
        }
        Py_DECREF(row);
        size_t cap = map_cap(m);
        for (size_t i = 0; i < cap; i++) {
            Node *nd = m->e[i].val;
            if (!nd)
                continue;
            PyObject *item = Py_BuildValue("(KNO)", (unsigned long long)m->e[i].key, node_id(t, nd),
                                           holds(nd, slot) ? Py_True : Py_False);
            if (!item || PyList_Append(items, item) < 0) {
                Py_XDECREF(item);
                goto out;
            }
            Py_DECREF(item);
        }
    }
    /* Every node reachable from the root, iteratively (chains are thousands of blocks deep). */
    Node *cur = &t->root;
    for (;;) {
        uintptr_t kids = cur->kids;
        Py_ssize_t need = kids ? (KIDS_IS_MAP(kids) ? (Py_ssize_t)KIDS_MAP(kids)->len : 1) : 0;
        if (sp + need > scap) {
            scap = (sp + need) * 2 + 64;
            Node **ns = PyMem_Realloc(stack, (size_t)scap * sizeof(Node *));
            if (!ns) {
                PyErr_NoMemory();
                goto out;
            }
            stack = ns;
        }
        if (kids && !KIDS_IS_MAP(kids))
            stack[sp++] = (Node *)kids;
        else if (kids) {
            Map *m = KIDS_MAP(kids);
            for (size_t i = 0; i < map_cap(m); i++)
                if (m->e[i].val)
                    stack[sp++] = m->e[i].val;
        }
        if (!sp)
            break;
        cur = stack[--sp];
        PyObject *id = node_id(t, cur);
        PyObject *info = id ? Py_BuildValue("(NK)", node_id(t, cur->parent), (unsigned long long)cur->tokens_hash)
                            : NULL;
        int rc = info ? PyDict_SetItem(nodes, id, info) : -1;
        Py_XDECREF(id);
        Py_XDECREF(info);
        if (rc < 0)
            goto out;
    }
    result = PyTuple_Pack(2, tables, nodes);
out:
    PyMem_Free(stack);
    Py_XDECREF(tables);
    Py_XDECREF(nodes);
    return result;
}

static PyObject *Tree_counts(Tree *t, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("(LLLLLL)", t->counts[0], t->counts[1], t->counts[2], t->counts[3], t->counts[4],
                         t->counts[5]);
}

static void free_subtree(Node *root)
{
    /* Iterative: reuse each node's parent field as the stack link once it is detached. */
    Node *stack = NULL;
    uintptr_t kids = root->kids;
    root->kids = 0;
    for (;;) {
        if (kids) {
            if (!KIDS_IS_MAP(kids)) {
                Node *c = (Node *)kids;
                c->parent = stack;
                stack = c;
            }
            else {
                Map *m = KIDS_MAP(kids);
                for (size_t i = 0; i < map_cap(m); i++) {
                    Node *c = m->e[i].val;
                    if (c) {
                        c->parent = stack;
                        stack = c;
                    }
                }
                map_free(m);
                PyMem_Free(m);
            }
        }
        if (!stack)
            return;
        Node *nd = stack;
        stack = nd->parent;
        kids = nd->kids;
        if (nd->cap)
            PyMem_Free(nd->m.arr);
        PyMem_Free(nd);
    }
}

static void Tree_dealloc(Tree *t)
{
    free_subtree(&t->root);
    if (t->root.cap)
        PyMem_Free(t->root.m.arr);
    for (Py_ssize_t i = 0; i < t->nslots; i++) {
        map_free(&t->workers[i].table);
        map_free(&t->workers[i].aliases);
        Py_XDECREF(t->workers[i].key);
    }
    PyMem_Free(t->workers);
    PyMem_Free(t->free_slots);
    PyMem_Free(t->grave);
    Py_XDECREF(t->slot_of);
    Py_XDECREF(t->sizes);
    Py_XDECREF(t->last_ids);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static PyObject *Tree_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwargs))
{
    if (!T_SCORES) {
        PyErr_SetString(PyExc_RuntimeError, "dynamo.kv_router._radix used before _bind()");
        return NULL;
    }
    Tree *t = (Tree *)type->tp_alloc(type, 0);
    if (!t)
        return NULL;
    /* tp_alloc zeroes the object: an empty root, no workers. */
    t->slot_of = PyDict_New();
    t->sizes = PyDict_New();
    t->last_ids = PyDict_New();
    if (!t->slot_of || !t->sizes || !t->last_ids) {
        Py_DECREF(t);
        return NULL;
    }
    return (PyObject *)t;
}

static PyObject *Tree_get_num_nodes(Tree *t, void *Py_UNUSED(c)) { return PyLong_FromSsize_t(t->num_nodes); }
static PyObject *Tree_get_sizes(Tree *t, void *Py_UNUSED(c)) { return Py_NewRef(t->sizes); }
static PyObject *Tree_get_last_ids(Tree *t, void *Py_UNUSED(c)) { return Py_NewRef(t->last_ids); }

static PyMethodDef Tree_methods[] = {
    {"apply_event", (PyCFunction)Tree_apply_event, METH_O, "Apply one RouterEvent; returns its status."},
    {"store_blocks", (PyCFunction)Tree_store_blocks, METH_VARARGS, "store_blocks(key, parent_hash, blocks)"},
    {"remove_blocks", (PyCFunction)Tree_remove_blocks, METH_VARARGS, "remove_blocks(key, block_hashes)"},
    {"clear_worker", (PyCFunction)Tree_clear_worker, METH_O, "Drop every block of worker_id (all dp ranks)."},
    {"remove_worker", (PyCFunction)Tree_remove_worker, METH_O, "Drop and forget worker_id (all dp ranks)."},
    {"find_matches", (PyCFunction)(void (*)(void))Tree_find_matches, METH_VARARGS | METH_KEYWORDS,
     "find_matches(local_hashes, early_exit=False) -> OverlapScores"},
    {"_block_hashes", (PyCFunction)Tree_block_hashes, METH_O, "The block hashes in key's table (a set)."},
    {"_export", (PyCFunction)Tree_export, METH_NOARGS, "(tables, nodes) for dump_events."},
    {"_counts", (PyCFunction)Tree_counts, METH_NOARGS, "Event counts by (kind, status), fixed order."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Tree_getset[] = {
    {"num_nodes", (getter)Tree_get_num_nodes, NULL, "Tree nodes excluding the root.", NULL},
    {"_sizes", (getter)Tree_get_sizes, NULL, "key -> blocks held (live dict).", NULL},
    {"_last_ids", (getter)Tree_get_last_ids, NULL, "key -> highest event_id seen (live dict).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject TreeType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "dynamo.kv_router._radix.RadixCore",
    .tp_basicsize = sizeof(Tree),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Compiled radix tree of the KV indexer (see dynamo.kv_router.native_indexer).",
    .tp_new = Tree_new,
    .tp_dealloc = (destructor)Tree_dealloc,
    .tp_methods = Tree_methods,
    .tp_getset = Tree_getset,
};

static Py_ssize_t slot_offset(PyObject *type, PyObject *name)
{
    PyObject *d = PyObject_GetAttr(type, name);
    Py_ssize_t off = -1;
    if (!d) {
        PyErr_Clear();
        return -1;
    }
    if (Py_IS_TYPE(d, &PyMemberDescr_Type)) {
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if ((m->type == T_OBJECT_EX || m->type == T_OBJECT) && !(m->flags & RADIX_AUDIT_READ))
            off = m->offset;
    }
    Py_DECREF(d);
    return off;
}

static PyObject *mod_bind(PyObject *Py_UNUSED(m), PyObject *args)
{
    PyObject *a[11];
    if (!PyArg_ParseTuple(args, "OOOOOOOUUUU:_bind", &a[0], &a[1], &a[2], &a[3], &a[4], &a[5], &a[6], &a[7],
                          &a[8], &a[9], &a[10]))
        return NULL;
    PyObject **dst[11] = {&T_ROUTER_EVENT, &T_CACHE_EVENT, &T_STORED,    &T_REMOVED,  &T_CLEARED, &T_BLOCK,
                          &T_SCORES,       &S_OK,          &S_PARENT_NF, &S_BLOCK_NF, &S_INVALID};
    for (int i = 0; i < 11; i++) {
        Py_INCREF(a[i]);
        Py_XSETREF(*dst[i], a[i]);
    }
    struct {
        Py_ssize_t *off;
        PyObject *type, *name;
    } fields[] = {{&OFF_WORKER_ID, T_ROUTER_EVENT, A_WORKER_ID},   {&OFF_EVENT, T_ROUTER_EVENT, A_EVENT},
                  {&OFF_EVENT_ID, T_CACHE_EVENT, A_EVENT_ID},      {&OFF_DP_RANK, T_CACHE_EVENT, A_DP_RANK},
                  {&OFF_DATA, T_CACHE_EVENT, A_DATA},              {&OFF_PARENT_HASH, T_STORED, A_PARENT_HASH},
                  {&OFF_BLOCKS, T_STORED, A_BLOCKS},               {&OFF_BLOCK_HASHES, T_REMOVED, A_BLOCK_HASHES},
                  {&OFF_BLOCK_HASH, T_BLOCK, A_BLOCK_HASH},        {&OFF_TOKENS_HASH, T_BLOCK, A_TOKENS_HASH}};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        *fields[i].off = slot_offset(fields[i].type, fields[i].name);
    if (OFF_BLOCK_HASH < 0 || OFF_TOKENS_HASH < 0)
        OFF_BLOCK_HASH = OFF_TOKENS_HASH = -1;
    Py_RETURN_NONE;
}

static PyMethodDef mod_methods[] = {
    {"_bind", mod_bind, METH_VARARGS,
     "_bind(RouterEvent, KvCacheEvent, KvStored, KvRemoved, KvCleared, StoredBlock, OverlapScores, ok, "
     "parent_not_found, block_not_found, invalid)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_radix", "Compiled core of the KV indexer.", -1,
                                    mod_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__radix(void)
{
    struct {
        PyObject **dst;
        const char *name;
    } names[] = {{&A_WORKER_ID, "worker_id"},     {&A_EVENT, "event"},
                 {&A_EVENT_ID, "event_id"},       {&A_DP_RANK, "dp_rank"},
                 {&A_DATA, "data"},               {&A_PARENT_HASH, "parent_hash"},
                 {&A_BLOCKS, "blocks"},           {&A_BLOCK_HASH, "block_hash"},
                 {&A_TOKENS_HASH, "tokens_hash"}, {&A_BLOCK_HASHES, "block_hashes"}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (!*names[i].dst && !(*names[i].dst = PyUnicode_InternFromString(names[i].name)))
            return NULL;
    }
    if (PyType_Ready(&TreeType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (!m)
        return NULL;
    Py_INCREF(&TreeType);
    if (PyModule_AddObject(m, "RadixCore", (PyObject *)&TreeType) < 0) {
        Py_DECREF(&TreeType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
