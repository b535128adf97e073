/*
 * transformer: one provider chain, kube-apiserver's prefix transformer list (spec 2.1-2.3).
 *
 * A chain is an array of entries, each an outer prefix and a provider. What a provider does is
 * given by its kind's ops table (provider_kind): identity stores plaintext under the empty
 * prefix; the keyed kinds (aesgcm, aescbc, secretbox) share one implementation that walks an
 * inner ordered list of "<keyname>:" prefixes and calls the kind's cipher_ops; a kms entry's
 * prefix is "k8s:enc:kms:vN:<name>:" and it delegates to a crypto_kms_provider, its own or one
 * shared by every chain of a transformer set (kube-apiserver keys kms providers by name, so
 * caches and the v2 write state are per provider, not per chain).
 *
 * Writes: the first entry, and its first key, prepend their prefixes and seal into the output
 * buf, which is grown once. Reads: every entry whose prefix is a byte prefix of the stored
 * value is tried in order; the first success wins and is stale unless it came from the first
 * entry and first key. Failures are remembered in a fixed-size, allocation-free read_errors
 * (deduplicated and flattened like Go's aggregate errors), except those of an empty-prefix
 * entry, which are rolled back: that is what lets "identity first" chains read ciphertext
 * through a later provider. Out of memory ends the walk at once: it says nothing about the
 * value. So does EP_ERR_AGAIN from a kms entry (its DEK is being fetched, the calls are in the
 * caller's pending set): it is not a verdict on the value, and trying later entries would only
 * report a misleading error; the caller reruns the whole read once the calls are done.
 *
 * Invariants: a transformer is immutable after crypto_transformer_new(), so it may be shared by
 * any number of threads; key material lives only in the cipher modules' key objects.
 */
#include "crypto/transformer.h"

#include <string.h>

#include "common/alloc.h"
#include "crypto/aescbc.h"
#include "crypto/aesgcm.h"
#include "crypto/kms_provider.h"
#include "crypto/kmsv2.h"
#include "crypto/secretbox.h"

#define ENC_MARKER "k8s:enc:"
#define MAX_REMEMBERED 16

typedef struct {
    char *name;
    char *prefix; /* name + ":" */
    size_t prefix_len;
    void *key; /* the cipher module's key object */
} tr_key;

typedef struct provider_kind provider_kind;

typedef struct {
    const provider_kind *kind;
    str prefix;   /* outer prefix, e.g. "k8s:enc:aesgcm:v1:"; empty for identity */
    tr_key *keys; /* keyed kinds: in config order, first key writes */
    size_t nkeys;
    crypto_kms_provider *kms; /* kms kind */
    bool owns_kms;            /* false when a transformer set shares it */
} tr_provider;

struct crypto_transformer {
    tr_provider *providers; /* in config order, first writes */
    size_t nproviders;
};

/* Errors remembered during one read, flattened and deduplicated by message. */
typedef struct {
    int code;
    size_t n; /* distinct messages */
    size_t len;
    char text[EP_ERR_MSG_MAX]; /* "msg1, msg2, ..." */
    size_t starts[MAX_REMEMBERED];
} read_errors;

typedef struct {
    bool stale;           /* the provider itself said stale (e.g. a non-first key) */
    const char *key_name; /* what read the value */
    read_errors errors;
    ep_err scratch;              /* message of the operation being tried */
    crypto_kms_pending *pending; /* where kms entries record plugin calls; may be NULL */
} read_state;

/* How a cipher module plugs into the keyed-provider implementation. */
typedef struct {
    int (*key_new)(str key_bytes, void **key, ep_err *err);
    void (*key_free)(void *key);
    int (*seal)(const void *key, str etcd_key, str plain, buf *out, ep_err *err);
    int (*open)(const void *key, str etcd_key, str body, buf *out, ep_err *err);
    size_t overhead;     /* nonce/IV + tag + maximum padding */
    const char *nomatch; /* when no inner key prefix matched */
} cipher_ops;

struct provider_kind {
    const char *name;       /* "aesgcm", ...: crypto_read_info.provider */
    const char *prefix;     /* the outer prefix, or NULL when build() sets it per provider */
    const cipher_ops *ciph; /* keyed kinds only */
    /* Fills |p| from |cfg|. Returns 0, EP_ERR_CONFIG, or EP_ERR_NOMEM. */
    int (*build)(tr_provider *p, const config_provider *cfg, ep_err *err);
    void (*destroy)(tr_provider *p);
    /* Appends prefixes and sealed form. Returns 0 or EP_ERR_* (EP_ERR_AGAIN: calls added to
     * |pending|); the caller truncates |out|. */
    int (*encrypt)(const tr_provider *p, str etcd_key, str plain, buf *out,
                   crypto_kms_pending *pending, ep_err *err);
    /* Appends the plaintext of |body| (outer prefix removed). Returns 0, EP_ERR_NOMEM or
     * EP_ERR_AGAIN (message in rs->scratch), or another EP_ERR_* after recording its reasons in
     * rs->errors. */
    int (*decrypt)(const tr_provider *p, str etcd_key, str body, buf *out, read_state *rs);
    size_t (*overhead)(const tr_provider *p);
};

/* ---- remembered errors ---- */

static bool errors_seen(const read_errors *e, const char *msg, size_t len) {
    for (size_t i = 0; i < e->n && i < MAX_REMEMBERED; i++) {
        size_t end = i + 1 < e->n && i + 1 < MAX_REMEMBERED ? e->starts[i + 1] - 2 : e->len;
        if (end - e->starts[i] == len && memcmp(e->text + e->starts[i], msg, len) == 0) {
            return true;
        }
    }
    return false;
}

/* A specific failure (auth, malformed) says more than "this key is not configured". */
static int merge_code(int have, int add) {
    return have == EP_OK || (have == EP_ERR_NOMATCH && add != EP_ERR_NOMATCH) ? add : have;
}

static void errors_add(read_errors *e, int code, const char *msg) {
    size_t len = strlen(msg);
    if (errors_seen(e, msg, len)) {
        return;
    }
    e->code = merge_code(e->code, code);
    if (e->n > 0 && e->len + 2 < sizeof(e->text)) {
        memcpy(e->text + e->len, ", ", 2);
        e->len += 2;
    }
    if (e->n < MAX_REMEMBERED) {
        e->starts[e->n] = e->len;
    }
    size_t room = sizeof(e->text) - 1 - e->len;
    len = len < room ? len : room;
    memcpy(e->text + e->len, msg, len);
    e->len += len;
    e->text[e->len] = '\0';
    e->n++;
}

/* Writes the aggregate to |err|. Returns its code. */
static int errors_report(const read_errors *e, ep_err *err) {
    if (e->n == 1) {
        return ep_err_set(err, e->code, "%s", e->text);
    }
    return ep_err_set(err, e->code, "[%s]", e->text);
}

/* ---- keyed providers: aesgcm, aescbc, secretbox ---- */

static void keyed_destroy(tr_provider *p) {
    for (size_t i = 0; i < p->nkeys; i++) {
        if (p->keys[i].key != NULL) {
            p->kind->ciph->key_free(p->keys[i].key);
        }
        ep_free(p->keys[i].name);
        ep_free(p->keys[i].prefix);
    }
    ep_free(p->keys);
    p->keys = NULL;
    p->nkeys = 0;
}

/* Fills |k| from |ck|. Returns 0, EP_ERR_CONFIG (bad key) or EP_ERR_NOMEM. */
static int key_build(const provider_kind *kind, tr_key *k, const config_key *ck, ep_err *err) {
    size_t name_len = strlen(ck->name);
    k->name = ep_strdup(ck->name);
    k->prefix = ep_malloc(name_len + 2);
    if (k->name == NULL || k->prefix == NULL) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory for key \"%s\"", ck->name);
    }
    memcpy(k->prefix, ck->name, name_len);
    memcpy(k->prefix + name_len, ":", 2);
    k->prefix_len = name_len + 1;
    int rv = kind->ciph->key_new(secret_str(&ck->secret), &k->key, err);
    if (rv == EP_ERR_NOMEM) {
        return rv;
    }
    if (rv != EP_OK) {
        return ep_err_wrap(err, EP_ERR_CONFIG, "%s key \"%s\"", kind->name, ck->name);
    }
    return EP_OK;
}

static int keyed_build(tr_provider *p, const config_provider *cfg, ep_err *err) {
    if (cfg->nkeys == 0) {
        return ep_err_set(err, EP_ERR_CONFIG, "%s provider has no keys", p->kind->name);
    }
    p->keys = ep_calloc(cfg->nkeys, sizeof(*p->keys));
    if (p->keys == NULL) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory for %s keys", p->kind->name);
    }
    p->nkeys = cfg->nkeys;
    for (size_t i = 0; i < cfg->nkeys; i++) {
        int rv = key_build(p->kind, &p->keys[i], &cfg->keys[i], err);
        if (rv != EP_OK) {
            return rv;
        }
    }
    return EP_OK;
}

static int keyed_encrypt(const tr_provider *p, str etcd_key, str plain, buf *out,
                         crypto_kms_pending *pending, ep_err *err) {
    const tr_key *k = &p->keys[0];
    size_t fixed = p->prefix.len + k->prefix_len + p->kind->ciph->overhead;
    if (plain.len > SIZE_MAX - fixed || buf_reserve(out, fixed + plain.len) != EP_OK) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory encrypting %zu bytes", plain.len);
    }
    buf_append_str(out, p->prefix); /* cannot fail: reserved */
    buf_append(out, k->prefix, k->prefix_len);
    int rv = p->kind->ciph->seal(k->key, etcd_key, plain, out, err);
    if (rv != EP_OK) {
        return ep_err_wrap(err, rv, "%s key \"%s\"", p->kind->name, k->name);
    }
    return EP_OK;
}

static int keyed_decrypt(const tr_provider *p, str etcd_key, str body, buf *out, read_state *rs) {
    bool matched = false;
    for (size_t i = 0; i < p->nkeys; i++) {
        const tr_key *k = &p->keys[i];
        if (!str_has_prefix(body, str_make(k->prefix, k->prefix_len))) {
            continue;
        }
        matched = true;
        int rv =
            p->kind->ciph->open(k->key, etcd_key, str_skip(body, k->prefix_len), out, &rs->scratch);
        if (rv == EP_OK) {
            rs->stale = i > 0;
            rs->key_name = k->name;
            return EP_OK;
        }
        if (rv == EP_ERR_NOMEM) {
            return rv;
        }
        rs->key_name = k->name; /* the key that refused, for metrics */
        errors_add(&rs->errors, rv, rs->scratch.msg);
    }
    if (!matched) {
        errors_add(&rs->errors, EP_ERR_NOMATCH, p->kind->ciph->nomatch);
        return EP_ERR_NOMATCH;
    }
    return rs->errors.code;
}

static size_t keyed_overhead(const tr_provider *p) {
    return p->prefix.len + p->keys[0].prefix_len + p->kind->ciph->overhead;
}

/* Adapters from the cipher modules' typed APIs to cipher_ops. */

static int gcm_key_new(str key_bytes, void **key, ep_err *err) {
    return crypto_aesgcm_key_new(key_bytes, (crypto_aesgcm_key **)key, err);
}
static void gcm_key_free(void *key) {
    crypto_aesgcm_key_free(key);
}
static int gcm_seal(const void *key, str etcd_key, str plain, buf *out, ep_err *err) {
    return crypto_aesgcm_seal(key, etcd_key, plain, out, err);
}
static int gcm_open(const void *key, str etcd_key, str body, buf *out, ep_err *err) {
    return crypto_aesgcm_open(key, etcd_key, body, out, err);
}

/* aescbc and secretbox authenticate nothing beyond their ciphertext: the etcd key is unused. */
static int cbc_key_new(str key_bytes, void **key, ep_err *err) {
    return crypto_aescbc_key_new(key_bytes, (crypto_aescbc_key **)key, err);
}
static void cbc_key_free(void *key) {
    crypto_aescbc_key_free(key);
}
static int cbc_seal(const void *key, str etcd_key, str plain, buf *out, ep_err *err) {
    return crypto_aescbc_encrypt(key, plain, out, err);
}
static int cbc_open(const void *key, str etcd_key, str body, buf *out, ep_err *err) {
    return crypto_aescbc_decrypt(key, body, out, err);
}

static int box_key_new(str key_bytes, void **key, ep_err *err) {
    return crypto_secretbox_key_new(key_bytes, (crypto_secretbox_key **)key, err);
}
static void box_key_free(void *key) {
    crypto_secretbox_key_free(key);
}
static int box_seal(const void *key, str etcd_key, str plain, buf *out, ep_err *err) {
    return crypto_secretbox_encrypt(key, plain, out, err);
}
static int box_open(const void *key, str etcd_key, str body, buf *out, ep_err *err) {
    return crypto_secretbox_decrypt(key, body, out, err);
}

#define AES_NOMATCH "no matching key was found for the provided AES transformer"

static const cipher_ops gcm_ops = {
    gcm_key_new, gcm_key_free, gcm_seal, gcm_open, CRYPTO_AESGCM_NONCE_LEN + CRYPTO_AESGCM_TAG_LEN,
    AES_NOMATCH};
static const cipher_ops cbc_ops = {
    cbc_key_new, cbc_key_free, cbc_seal, cbc_open, 2 * CRYPTO_AESCBC_BLOCK_LEN, AES_NOMATCH};
static const cipher_ops box_ops = {
    box_key_new,
    box_key_free,
    box_seal,
    box_open,
    CRYPTO_SECRETBOX_NONCE_LEN + CRYPTO_SECRETBOX_TAG_LEN,
    "no matching key was found for the provided Secretbox transformer"};

/* ---- identity ---- */

static int identity_build(tr_provider *p, const config_provider *cfg, ep_err *err) {
    return EP_OK;
}

static void identity_destroy(tr_provider *p) {}

static int identity_encrypt(const tr_provider *p, str etcd_key, str plain, buf *out,
                            crypto_kms_pending *pending, ep_err *err) {
    if (buf_append_str(out, plain) != EP_OK) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory copying %zu bytes", plain.len);
    }
    return EP_OK;
}

static int identity_decrypt(const tr_provider *p, str etcd_key, str body, buf *out,
                            read_state *rs) {
    if (str_has_prefix(body, STR_LIT(ENC_MARKER))) {
        errors_add(&rs->errors, EP_ERR_NOMATCH,
                   "identity transformer tried to read encrypted data");
        return EP_ERR_NOMATCH;
    }
    if (buf_append_str(out, body) != EP_OK) {
        ep_err_set(&rs->scratch, EP_ERR_NOMEM, "out of memory copying %zu bytes", body.len);
        return EP_ERR_NOMEM;
    }
    rs->key_name = "";
    return EP_OK;
}

static size_t identity_overhead(const tr_provider *p) {
    return 0;
}

/* ---- kms: delegated to crypto_kms_provider ---- */

/* A shared provider was set by provider_build; otherwise the entry makes its own. */
static int kms_build(tr_provider *p, const config_provider *cfg, ep_err *err) {
    if (p->kms == NULL) {
        int rv = crypto_kms_provider_new(cfg, &p->kms, err);
        if (rv != EP_OK) {
            return rv;
        }
        p->owns_kms = true;
    }
    p->prefix = crypto_kms_provider_prefix(p->kms);
    return EP_OK;
}

static void kms_destroy(tr_provider *p) {
    if (p->owns_kms) {
        crypto_kms_provider_free(p->kms);
    }
    p->kms = NULL;
}

static int kms_encrypt(const tr_provider *p, str etcd_key, str plain, buf *out,
                       crypto_kms_pending *pending, ep_err *err) {
    return crypto_kms_provider_encrypt(p->kms, etcd_key, plain, out, pending, err);
}

static int kms_decrypt(const tr_provider *p, str etcd_key, str body, buf *out, read_state *rs) {
    bool stale = false;
    int rv =
        crypto_kms_provider_decrypt(p->kms, etcd_key, body, out, &stale, rs->pending, &rs->scratch);
    if (rv == EP_OK) {
        rs->stale = stale;
        rs->key_name = crypto_kms_provider_name(p->kms);
    } else if (rv != EP_ERR_NOMEM && rv != EP_ERR_AGAIN) {
        errors_add(&rs->errors, rv, rs->scratch.msg);
    }
    return rv;
}

static size_t kms_overhead(const tr_provider *p) {
    return crypto_kms_provider_overhead(p->kms);
}

/* ---- kinds ---- */

static const provider_kind kinds[] = {
    [CONFIG_PROVIDER_IDENTITY] = {"identity", "", NULL, identity_build, identity_destroy,
                                  identity_encrypt, identity_decrypt, identity_overhead},
    [CONFIG_PROVIDER_AESGCM] = {"aesgcm", ENC_MARKER "aesgcm:v1:", &gcm_ops, keyed_build,
                                keyed_destroy, keyed_encrypt, keyed_decrypt, keyed_overhead},
    [CONFIG_PROVIDER_AESCBC] = {"aescbc", ENC_MARKER "aescbc:v1:", &cbc_ops, keyed_build,
                                keyed_destroy, keyed_encrypt, keyed_decrypt, keyed_overhead},
    [CONFIG_PROVIDER_SECRETBOX] = {"secretbox", ENC_MARKER "secretbox:v1:", &box_ops, keyed_build,
                                   keyed_destroy, keyed_encrypt, keyed_decrypt, keyed_overhead},
    [CONFIG_PROVIDER_KMS] = {"kms", NULL, NULL, kms_build, kms_destroy, kms_encrypt, kms_decrypt,
                             kms_overhead},
};

static tr_provider bare_identity_provider = {
    &kinds[CONFIG_PROVIDER_IDENTITY], {NULL, 0}, NULL, 0, NULL, false};
static crypto_transformer bare_identity = {&bare_identity_provider, 1};

/* ---- public ---- */

const crypto_transformer *crypto_transformer_bare_identity(void) {
    return &bare_identity;
}

void crypto_transformer_free(crypto_transformer *t) {
    if (t == NULL || t == &bare_identity) {
        return;
    }
    for (size_t i = 0; i < t->nproviders; i++) {
        if (t->providers[i].kind != NULL) {
            t->providers[i].kind->destroy(&t->providers[i]);
        }
    }
    ep_free(t->providers);
    ep_free(t);
}

/* The provider of |shared| a kms entry for |cfg| uses: same version and name. */
static crypto_kms_provider *shared_kms(const config_provider *cfg,
                                       crypto_kms_provider *const *shared, size_t nshared) {
    for (size_t i = 0; cfg->type == CONFIG_PROVIDER_KMS && i < nshared; i++) {
        if (crypto_kms_provider_api_version(shared[i]) == cfg->kms.api_version &&
            cfg->kms.name != NULL &&
            strcmp(crypto_kms_provider_name(shared[i]), cfg->kms.name) == 0) {
            return shared[i];
        }
    }
    return NULL;
}

/* Sets up entry |p| for |cfg|. Returns 0, EP_ERR_CONFIG or EP_ERR_NOMEM. */
static int provider_build(tr_provider *p, const config_provider *cfg,
                          crypto_kms_provider *const *shared, size_t nshared, ep_err *err) {
    if ((unsigned)cfg->type >= sizeof(kinds) / sizeof(kinds[0])) {
        return ep_err_set(err, EP_ERR_CONFIG, "unknown provider type %d", (int)cfg->type);
    }
    p->kind = &kinds[cfg->type];
    p->kms = shared_kms(cfg, shared, nshared);
    if (p->kind->prefix != NULL) {
        p->prefix = str_cstr(p->kind->prefix);
    }
    return p->kind->build(p, cfg, err);
}

int crypto_transformer_new(const config_provider *const *providers, size_t n,
                           crypto_transformer **out, ep_err *err) {
    return crypto_transformer_new_shared(providers, n, NULL, 0, out, err);
}

int crypto_transformer_new_shared(const config_provider *const *providers, size_t n,
                                  crypto_kms_provider *const *kms, size_t nkms,
                                  crypto_transformer **out, ep_err *err) {
    if (n == 0) {
        return ep_err_set(err, EP_ERR_CONFIG, "a provider list needs at least one provider");
    }
    crypto_transformer *t = ep_calloc(1, sizeof(*t));
    tr_provider *entries = ep_calloc(n, sizeof(*entries));
    if (t == NULL || entries == NULL) {
        ep_free(t);
        ep_free(entries);
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory building a transformer");
    }
    t->providers = entries;
    t->nproviders = n;
    for (size_t i = 0; i < n; i++) {
        int rv = provider_build(&entries[i], providers[i], kms, nkms, err);
        if (rv != EP_OK) {
            crypto_transformer_free(t);
            return rv;
        }
    }
    *out = t;
    return EP_OK;
}

bool crypto_transformer_writes_plaintext(const crypto_transformer *t) {
    return t->providers[0].kind == &kinds[CONFIG_PROVIDER_IDENTITY];
}

void crypto_transformer_write_info(const crypto_transformer *t, crypto_read_info *info) {
    const tr_provider *p = &t->providers[0];
    info->stale = false;
    info->provider = p->kind->name;
    info->key_name = p->nkeys > 0     ? p->keys[0].name
                     : p->kms != NULL ? crypto_kms_provider_name(p->kms)
                                      : "";
    info->prefix = p->prefix.len > 0 ? (const char *)p->prefix.ptr : "";
}

size_t crypto_transformer_overhead(const crypto_transformer *t) {
    return t->providers[0].kind->overhead(&t->providers[0]);
}

int crypto_transformer_encrypt(const crypto_transformer *t, str etcd_key, str plain, buf *out,
                               crypto_kms_pending *pending, ep_err *err) {
    const tr_provider *p = &t->providers[0];
    size_t start = out->len;
    int rv = p->kind->encrypt(p, etcd_key, plain, out, pending, err);
    if (rv != EP_OK) {
        out->len = start;
    }
    return rv;
}

static void fill_info(crypto_read_info *info, const tr_provider *p, size_t index,
                      const read_state *rs) {
    if (info == NULL) {
        return;
    }
    info->stale = index > 0 || rs->stale;
    info->provider = p->kind->name;
    info->key_name = rs->key_name;
    info->prefix = p->prefix.len > 0 ? (const char *)p->prefix.ptr : ""; /* NUL-terminated */
}

size_t crypto_transformer_kms_providers(const crypto_transformer *t, crypto_kms_provider **out,
                                        size_t cap) {
    size_t n = 0;
    for (size_t i = 0; i < t->nproviders; i++) {
        crypto_kms_provider *k = t->providers[i].kms;
        bool seen = false;
        for (size_t j = 0; k != NULL && j < i; j++) {
            seen = seen || t->providers[j].kms == k;
        }
        if (k == NULL || seen) {
            continue;
        }
        if (n < cap) {
            out[n] = k;
        }
        n++;
    }
    return n;
}

int crypto_transformer_decrypt(const crypto_transformer *t, str etcd_key, str stored, buf *out,
                               crypto_read_info *info, crypto_kms_pending *pending, ep_err *err) {
    read_state rs;
    rs.errors.code = EP_OK;
    rs.errors.n = rs.errors.len = 0;
    rs.errors.text[0] = '\0';
    rs.scratch.msg[0] = '\0'; /* a provider answering EP_ERR_AGAIN may leave it unset */
    rs.pending = pending;
    size_t start = out->len;
    if (info != NULL) {
        info->prefix = NULL; /* stays NULL when no prefix matched */
    }
    for (size_t i = 0; i < t->nproviders; i++) {
        const tr_provider *p = &t->providers[i];
        if (!str_has_prefix(stored, p->prefix)) {
            continue;
        }
        int mark_code = rs.errors.code; /* to roll back an empty-prefix entry's refusal */
        size_t mark_n = rs.errors.n, mark_len = rs.errors.len;
        rs.stale = false;
        rs.key_name = "";
        int rv = p->kind->decrypt(p, etcd_key, str_skip(stored, p->prefix.len), out, &rs);
        if (rv == EP_OK) {
            fill_info(info, p, i, &rs);
            return EP_OK;
        }
        out->len = start;
        if (rv == EP_ERR_NOMEM) {
            return ep_err_set(err, rv, "%s: %s", p->kind->name, rs.scratch.msg);
        }
        if (rv == EP_ERR_AGAIN) {
            return ep_err_set(err, rv, "%s", rs.scratch.msg);
        }
        if (info != NULL && p->prefix.len > 0) { /* metrics name the provider that refused */
            info->provider = p->kind->name;
            info->key_name = rs.key_name; /* the inner key that refused; "" when none matched */
            info->prefix = (const char *)p->prefix.ptr;
        }
        if (p->prefix.len == 0) { /* an empty-prefix entry's refusal is not an error */
            rs.errors.code = mark_code;
            rs.errors.n = mark_n;
            rs.errors.len = mark_len;
            rs.errors.text[rs.errors.len] = '\0';
        }
    }
    if (rs.errors.n == 0) {
        return ep_err_set(err, EP_ERR_NOMATCH, "no matching prefix found");
    }
    return errors_report(&rs.errors, err);
}

/* ---- classification ---- */

/* Whether entry |index| (|p|) would try |body| (the value after its outer prefix) and how it
 * reads. Returns 0 when it claims the value, EP_ERR_NOMATCH when not, EP_ERR_INVALID for a kms
 * v2 object that does not decode. */
static int classify_entry(const tr_provider *p, size_t index, str body, crypto_stored_class *out,
                          ep_err *err) {
    out->provider = p->kind->name;
    out->key_name = "";
    out->stale = index > 0;
    if (p->kind == &kinds[CONFIG_PROVIDER_IDENTITY]) {
        return out->plaintext ? EP_OK : EP_ERR_NOMATCH;
    }
    for (size_t i = 0; i < p->nkeys; i++) {
        if (str_has_prefix(body, str_make(p->keys[i].prefix, p->keys[i].prefix_len))) {
            out->key_name = p->keys[i].name;
            out->stale = out->stale || i > 0;
            return EP_OK;
        }
    }
    if (p->kms == NULL) { /* the read walk's words for a key name it does not have */
        return ep_err_set(err, EP_ERR_NOMATCH, "%s", p->kind->ciph->nomatch);
    }
    out->key_name = crypto_kms_provider_name(p->kms);
    out->kms_api_version = crypto_kms_provider_api_version(p->kms);
    if (out->kms_api_version == 1) {
        return EP_OK;
    }
    crypto_kmsv2_annotation scratch[8];
    crypto_kmsv2_object o;
    int rv = crypto_kmsv2_decode_view(body, &o, scratch, 8, err);
    if (rv == EP_OK) {
        out->key_id_len = o.key_id.len; /* validated: fits */
        if (o.key_id.len > 0) {
            memcpy(out->key_id, o.key_id.ptr, o.key_id.len);
        }
        out->stale = out->stale || crypto_kms_provider_v2_is_current(p->kms, o.key_id, o.type) == 0;
    }
    crypto_kmsv2_object_free(&o);
    return rv == EP_ERR_NOMEM ? EP_ERR_INVALID : rv;
}

int crypto_transformer_classify(const crypto_transformer *t, str stored, crypto_stored_class *out,
                                ep_err *err) {
    out->provider = NULL;
    out->key_id_len = 0;
    bool plaintext = !str_has_prefix(stored, STR_LIT(ENC_MARKER));
    int last = EP_ERR_NOMATCH;
    bool said = false; /* |err| holds the first refusal's reason */
    ep_err entry;
    for (size_t i = 0; i < t->nproviders; i++) {
        const tr_provider *p = &t->providers[i];
        if (!str_has_prefix(stored, p->prefix)) {
            continue;
        }
        out->plaintext = plaintext;
        out->kms_api_version = 0;
        out->key_id_len = 0;
        entry.msg[0] = '\0';
        int rv = classify_entry(p, i, str_skip(stored, p->prefix.len), out, &entry);
        if (rv == EP_OK) {
            return EP_OK;
        }
        if ((rv == EP_ERR_INVALID && last != EP_ERR_INVALID) || (!said && entry.msg[0] != '\0')) {
            last = rv == EP_ERR_INVALID ? rv : last;
            ep_err_set(err, rv, "%s", entry.msg);
            said = true;
        }
    }
    out->provider = NULL;
    out->key_name = "";
    out->kms_api_version = 0;
    out->key_id_len = 0;
    out->stale = false;
    out->plaintext = plaintext;
    if (last == EP_ERR_NOMATCH && !said) {
        return ep_err_set(err, EP_ERR_NOMATCH, "no matching prefix found");
    }
    return last;
}
