/*
 * kek_pkcs11: PKCS#11 token KEKs (selection rules and key_id in kek_pkcs11.h).
 *
 * The module is loaded with dlopen and driven through its function list; the plugin is
 * single-threaded, so one session serves every call and C_Initialize gets no locking
 * arguments. A kek holds only its object handle and a pointer to the token, which therefore
 * outlives every kek loaded from it.
 */
#include "kmsplugin/kek_pkcs11.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

#include "common/alloc.h"
#include "crypto/random.h"
#include "kmsplugin/kek_file.h"

#define ID_LABEL "etcd-encrypt-kms-plugin/pkcs11/v1"
#define MAX_PIN 256
#define MAX_ATTR 256
#define MAX_KEYS 64

struct kek_pkcs11_token {
    void *module;
    CK_FUNCTION_LIST_PTR fl;
    CK_SESSION_HANDLE session;
    bool initialized, open, logged_in;
    kek_pkcs11_config cfg;
};

typedef struct {
    kek base;
    kek_pkcs11_token *token;
    CK_OBJECT_HANDLE handle;
} p11_kek;

static int ckr_fail(ep_err *err, const char *call, CK_RV rv) {
    return ep_err_set(err, EP_ERR_PROVIDER, "PKCS#11 %s failed: CKR 0x%lx", call,
                      (unsigned long)rv);
}

static CK_MECHANISM gcm_mechanism(CK_GCM_PARAMS *p, const uint8_t *nonce, str aad) {
    memset(p, 0, sizeof(*p));
    p->pIv = (CK_BYTE_PTR)nonce;
    p->ulIvLen = KEK_NONCE_LEN;
    p->ulIvBits = KEK_NONCE_LEN * 8;
    p->pAAD = (CK_BYTE_PTR)aad.ptr;
    p->ulAADLen = aad.len;
    p->ulTagBits = KEK_TAG_LEN * 8;
    CK_MECHANISM m = {CKM_AES_GCM, p, sizeof(*p)};
    return m;
}

static int p11_seal(kek *k, str aad, str plain, buf *out, ep_err *err) {
    p11_kek *pk = (p11_kek *)k;
    CK_FUNCTION_LIST_PTR fl = pk->token->fl;
    if (buf_reserve(out, KEK_NONCE_LEN + plain.len + KEK_TAG_LEN) != 0) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory wrapping a key");
    }
    uint8_t *nonce = out->data + out->len;
    if (crypto_random_bytes(nonce, KEK_NONCE_LEN) != 0) {
        return ep_err_set(err, EP_ERR_PROVIDER, "random source failed");
    }
    CK_GCM_PARAMS params;
    CK_MECHANISM m = gcm_mechanism(&params, nonce, aad);
    CK_ULONG len = plain.len + KEK_TAG_LEN;
    CK_RV rv = fl->C_EncryptInit(pk->token->session, &m, pk->handle);
    if (rv != CKR_OK) {
        return ckr_fail(err, "C_EncryptInit(CKM_AES_GCM)", rv);
    }
    rv = fl->C_Encrypt(pk->token->session, (CK_BYTE_PTR)plain.ptr, plain.len, nonce + KEK_NONCE_LEN,
                       &len);
    if (rv != CKR_OK || len != plain.len + KEK_TAG_LEN) {
        return ckr_fail(err, "C_Encrypt(CKM_AES_GCM)", rv);
    }
    out->len += KEK_NONCE_LEN + len;
    return 0;
}

static int p11_open(kek *k, str aad, str sealed, buf *out, ep_err *err) {
    p11_kek *pk = (p11_kek *)k;
    CK_FUNCTION_LIST_PTR fl = pk->token->fl;
    if (sealed.len < KEK_NONCE_LEN + KEK_TAG_LEN) {
        return ep_err_set(err, EP_ERR_INVALID, "ciphertext too short");
    }
    if (buf_reserve(out, sealed.len) != 0) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory unwrapping a key");
    }
    CK_GCM_PARAMS params;
    CK_MECHANISM m = gcm_mechanism(&params, sealed.ptr, aad);
    CK_ULONG len = sealed.len;
    CK_RV rv = fl->C_DecryptInit(pk->token->session, &m, pk->handle);
    if (rv != CKR_OK) {
        return ckr_fail(err, "C_DecryptInit(CKM_AES_GCM)", rv);
    }
    rv = fl->C_Decrypt(pk->token->session, (CK_BYTE_PTR)sealed.ptr + KEK_NONCE_LEN,
                       sealed.len - KEK_NONCE_LEN, out->data + out->len, &len);
    /* SoftHSM2 reports a bad GCM tag as CKR_GENERAL_ERROR, not CKR_ENCRYPTED_DATA_INVALID: once
     * C_DecryptInit accepted key and parameters, a failing C_Decrypt is taken as a ciphertext
     * that does not authenticate (a broken token shows in Status's probe instead). */
    if (rv == CKR_ENCRYPTED_DATA_INVALID || rv == CKR_ENCRYPTED_DATA_LEN_RANGE ||
        rv == CKR_GENERAL_ERROR) {
        return ep_err_set(err, EP_ERR_AUTH, "message authentication failed (CKR 0x%lx)",
                          (unsigned long)rv);
    }
    if (rv != CKR_OK) {
        return ckr_fail(err, "C_Decrypt(CKM_AES_GCM)", rv);
    }
    out->len += len;
    return 0;
}

static void p11_free(kek *k) {
    ep_free(k);
}

static const kek_ops p11_ops = {p11_seal, p11_open, p11_free};

/* ---- opening the token ---- */

/* PKCS#11 labels are 32 bytes padded with blanks. */
static bool label_is(const CK_UTF8CHAR label[32], const char *want) {
    size_t n = strlen(want);
    if (n > 32 || memcmp(label, want, n) != 0) {
        return false;
    }
    for (size_t i = n; i < 32; i++) {
        if (label[i] != ' ') {
            return false;
        }
    }
    return true;
}

/* Returns 0, EP_ERR_CONFIG (no token with the label), EP_ERR_NOMEM or EP_ERR_PROVIDER. */
static int find_slot(kek_pkcs11_token *t, CK_SLOT_ID *slot, ep_err *err) {
    CK_ULONG n = 0;
    CK_RV rv = t->fl->C_GetSlotList(CK_TRUE, NULL, &n);
    if (rv != CKR_OK) {
        return ckr_fail(err, "C_GetSlotList", rv);
    }
    CK_SLOT_ID *slots = ep_calloc(n ? n : 1, sizeof(*slots));
    if (!slots) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory listing PKCS#11 slots");
    }
    rv = t->fl->C_GetSlotList(CK_TRUE, slots, &n);
    int result = rv == CKR_OK ? EP_ERR_CONFIG : ckr_fail(err, "C_GetSlotList", rv);
    for (CK_ULONG i = 0; rv == CKR_OK && i < n; i++) {
        CK_TOKEN_INFO info;
        if (t->fl->C_GetTokenInfo(slots[i], &info) == CKR_OK &&
            label_is(info.label, t->cfg.token_label)) {
            *slot = slots[i];
            result = 0;
            break;
        }
    }
    ep_free(slots);
    if (result == EP_ERR_CONFIG) {
        ep_err_set(err, EP_ERR_CONFIG, "no PKCS#11 token labelled \"%s\" in %s", t->cfg.token_label,
                   t->cfg.module_path);
    }
    return result;
}

/* Reads the first line of the PIN file. Returns 0, EP_ERR_IO or EP_ERR_CONFIG. */
static int read_pin(const char *path, char pin[MAX_PIN], ep_err *err) {
    int rv = kek_file_check_private(path, "PIN file", err);
    if (rv != 0) {
        return rv;
    }
    FILE *f = fopen(path, "re");
    if (!f) {
        return ep_err_set(err, EP_ERR_IO, "PIN file %s: %s", path, strerror(errno));
    }
    bool ok = fgets(pin, MAX_PIN, f) != NULL;
    fclose(f);
    if (ok) {
        pin[strcspn(pin, "\r\n")] = '\0';
    }
    if (!ok || pin[0] == '\0') {
        return ep_err_set(err, EP_ERR_CONFIG, "PIN file %s is empty", path);
    }
    return 0;
}

/* Returns 0, EP_ERR_IO, EP_ERR_CONFIG or EP_ERR_PROVIDER. */
static int login(kek_pkcs11_token *t, ep_err *err) {
    char pin[MAX_PIN];
    int rv = read_pin(t->cfg.pin_file, pin, err);
    if (rv != 0) {
        return rv;
    }
    CK_RV ck = t->fl->C_Login(t->session, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
    explicit_bzero(pin, sizeof(pin));
    if (ck != CKR_OK && ck != CKR_USER_ALREADY_LOGGED_IN) {
        return ckr_fail(err, "C_Login (check the PIN file)", ck);
    }
    t->logged_in = ck == CKR_OK;
    return 0;
}

/* Returns 0, EP_ERR_IO or EP_ERR_PROVIDER. */
static int load_module(kek_pkcs11_token *t, ep_err *err) {
    t->module = dlopen(t->cfg.module_path, RTLD_NOW | RTLD_LOCAL);
    if (!t->module) {
        return ep_err_set(err, EP_ERR_IO, "cannot load PKCS#11 module %s: %s", t->cfg.module_path,
                          dlerror());
    }
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(t->module, "C_GetFunctionList");
    if (!get) {
        return ep_err_set(err, EP_ERR_IO, "%s is not a PKCS#11 module (no C_GetFunctionList)",
                          t->cfg.module_path);
    }
    CK_RV rv = get(&t->fl);
    if (rv != CKR_OK) {
        return ckr_fail(err, "C_GetFunctionList", rv);
    }
    rv = t->fl->C_Initialize(NULL);
    if (rv != CKR_OK) {
        return ckr_fail(err, "C_Initialize", rv);
    }
    t->initialized = true;
    return 0;
}

int kek_pkcs11_open(const kek_pkcs11_config *cfg, kek_pkcs11_token **out, ep_err *err) {
    kek_pkcs11_token *t = ep_calloc(1, sizeof(*t));
    if (!t) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory for a PKCS#11 token");
    }
    t->cfg = *cfg;
    CK_SLOT_ID slot = 0;
    int rv = load_module(t, err);
    if (rv == 0) {
        rv = find_slot(t, &slot, err);
    }
    if (rv == 0) {
        CK_RV ck = t->fl->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &t->session);
        rv = ck == CKR_OK ? 0 : ckr_fail(err, "C_OpenSession", ck);
        t->open = ck == CKR_OK;
    }
    if (rv == 0) {
        rv = login(t, err);
    }
    if (rv != 0) {
        kek_pkcs11_close(t);
        return rv;
    }
    *out = t;
    return 0;
}

void kek_pkcs11_close(kek_pkcs11_token *t) {
    if (!t) {
        return;
    }
    if (t->logged_in) {
        t->fl->C_Logout(t->session);
    }
    if (t->open) {
        t->fl->C_CloseSession(t->session);
    }
    if (t->initialized) {
        t->fl->C_Finalize(NULL);
    }
    if (t->module) {
        dlclose(t->module);
    }
    ep_free(t);
}

/* ---- finding keys ---- */

/* Reads attribute |type| of |obj| into |value| (MAX_ATTR bytes); an attribute the token does
 * not have reads as empty. Returns 0 or EP_ERR_PROVIDER. */
static int get_attr(kek_pkcs11_token *t, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type,
                    uint8_t *value, size_t *len, ep_err *err) {
    CK_ATTRIBUTE a = {type, NULL, 0};
    CK_RV rv = t->fl->C_GetAttributeValue(t->session, obj, &a, 1);
    *len = 0;
    if (rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_ATTRIBUTE_SENSITIVE ||
        a.ulValueLen == CK_UNAVAILABLE_INFORMATION) {
        return 0;
    }
    if (rv != CKR_OK || a.ulValueLen > MAX_ATTR) {
        return ckr_fail(err, "C_GetAttributeValue", rv);
    }
    a.pValue = value;
    rv = t->fl->C_GetAttributeValue(t->session, obj, &a, 1);
    if (rv != CKR_OK) {
        return ckr_fail(err, "C_GetAttributeValue", rv);
    }
    *len = a.ulValueLen;
    return 0;
}

/* Appends a 2-byte length and |s|: the id's hash input cannot be re-split differently. */
static int put_part(buf *b, str s) {
    uint8_t len[2] = {(uint8_t)(s.len >> 8), (uint8_t)s.len};
    return buf_append(b, len, 2) || buf_append_str(b, s) ? EP_ERR_NOMEM : 0;
}

typedef struct {
    uint8_t id[MAX_ATTR];
    size_t id_len;
} key_order;

/* Makes the kek for |obj| and reads its CKA_ID into |order|. Returns 0, EP_ERR_CONFIG (not a
 * 32-byte key), EP_ERR_PROVIDER or EP_ERR_NOMEM. */
static int make_kek(kek_pkcs11_token *t, CK_OBJECT_HANDLE obj, p11_kek **out, key_order *order,
                    ep_err *err) {
    uint8_t check[MAX_ATTR], value_len[MAX_ATTR];
    size_t check_len = 0, value_len_len = 0;
    CK_ULONG key_len = 0;
    int rv = get_attr(t, obj, CKA_VALUE_LEN, value_len, &value_len_len, err);
    if (rv == 0 && value_len_len == sizeof(key_len)) {
        memcpy(&key_len, value_len, sizeof(key_len));
    }
    if (rv == 0 && key_len != 32) {
        rv = ep_err_set(err, EP_ERR_CONFIG, "PKCS#11 key \"%s\" is not an AES-256 key (%lu bytes)",
                        t->cfg.key_label, (unsigned long)key_len);
    }
    if (rv == 0) {
        rv = get_attr(t, obj, CKA_ID, order->id, &order->id_len, err);
    }
    if (rv == 0) {
        rv = get_attr(t, obj, CKA_CHECK_VALUE, check, &check_len, err);
    }
    if (rv != 0) {
        return rv;
    }
    buf material = BUF_INIT;
    p11_kek *pk = ep_calloc(1, sizeof(*pk));
    if (!pk || put_part(&material, str_cstr(t->cfg.token_label)) ||
        put_part(&material, str_cstr(t->cfg.key_label)) ||
        put_part(&material, str_make(order->id, order->id_len)) ||
        put_part(&material, str_make(check, check_len))) {
        rv = ep_err_set(err, EP_ERR_NOMEM, "out of memory for a PKCS#11 KEK");
    } else {
        pk->base.ops = &p11_ops;
        pk->token = t;
        pk->handle = obj;
        rv = kek_derive_id(&pk->base, "p11-", STR_LIT(ID_LABEL "\0"), buf_str(&material), err);
    }
    buf_free(&material);
    if (rv != 0) {
        ep_free(pk);
        return rv;
    }
    *out = pk;
    return 0;
}

static bool sorts_after(const key_order *a, const key_order *b) {
    return str_cmp(str_make(a->id, a->id_len), str_make(b->id, b->id_len)) >= 0;
}

/* Adds the keys in |objs| to |ring| and makes the one with the highest CKA_ID current.
 * Returns 0 or the first failure. */
static int add_found(kek_pkcs11_token *t, const CK_OBJECT_HANDLE *objs, CK_ULONG n, kek_ring *ring,
                     ep_err *err) {
    key_order best;
    kek *best_kek = NULL;
    for (CK_ULONG i = 0; i < n; i++) {
        p11_kek *pk = NULL;
        key_order order;
        int rv = make_kek(t, objs[i], &pk, &order, err);
        char id[KEK_ID_MAX + 1];
        if (rv == 0) {
            memcpy(id, pk->base.id, sizeof(id));
            rv = kek_ring_add(ring, &pk->base, false, err);
        }
        if (rv != 0) {
            return rv;
        }
        if (!best_kek || sorts_after(&order, &best)) {
            best = order;
            best_kek = kek_ring_find(ring, str_cstr(id));
        }
    }
    ring->current = best_kek;
    return 0;
}

/* Collects the handles of the AES keys with the configured label (at most MAX_KEYS): they are
 * read only after the search ended, as some tokens allow no other call during a search.
 * Returns 0 or EP_ERR_PROVIDER. */
static int find_keys(kek_pkcs11_token *t, CK_OBJECT_HANDLE *objs, CK_ULONG *n, ep_err *err) {
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE type = CKK_AES;
    CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof(cls)},
                           {CKA_KEY_TYPE, &type, sizeof(type)},
                           {CKA_LABEL, (void *)t->cfg.key_label, strlen(t->cfg.key_label)}};
    CK_RV ck = t->fl->C_FindObjectsInit(t->session, tmpl, 3);
    if (ck != CKR_OK) {
        return ckr_fail(err, "C_FindObjectsInit", ck);
    }
    ck = t->fl->C_FindObjects(t->session, objs, MAX_KEYS, n);
    t->fl->C_FindObjectsFinal(t->session);
    return ck == CKR_OK ? 0 : ckr_fail(err, "C_FindObjects", ck);
}

int kek_pkcs11_load(kek_pkcs11_token *t, kek_ring *ring, ep_err *err) {
    CK_OBJECT_HANDLE objs[MAX_KEYS];
    CK_ULONG n = 0;
    int rv = find_keys(t, objs, &n, err);
    if (rv == 0 && n == 0) {
        rv = ep_err_set(err, EP_ERR_CONFIG, "no AES key labelled \"%s\" on token \"%s\"",
                        t->cfg.key_label, t->cfg.token_label);
    }
    return rv != 0 ? rv : add_found(t, objs, n, ring, err);
}
