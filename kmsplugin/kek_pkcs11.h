/*
 * kek_pkcs11: KEKs that are AES-256 secret-key objects on a PKCS#11 token (e.g. SoftHSM2, an
 * HSM). Seal and open run CKM_AES_GCM on the token: the key never enters this process.
 *
 * Selection: every secret key of type CKK_AES whose CKA_LABEL is the configured key label is a
 * KEK the plugin can decrypt with; the one whose CKA_ID sorts highest (bytewise) is current.
 * Rotation is therefore: generate a new AES-256 key with the same label and a higher CKA_ID,
 * then SIGHUP the plugin. Keep the old key objects on the token while data wrapped under them
 * exists.
 *
 * key_id: "p11-" + hex(SHA-256("etcd-encrypt-kms-plugin/pkcs11/v1\0" || token label || key
 * label || CKA_ID || CKA_CHECK_VALUE)[:16]), each part length-prefixed. CKA_CHECK_VALUE (the
 * token's key check value) tells apart two keys with the same label and id.
 */
#ifndef EP_KMSPLUGIN_KEK_PKCS11_H
#define EP_KMSPLUGIN_KEK_PKCS11_H

#include "common/err.h"
#include "kmsplugin/kek.h"

typedef struct {
    const char *module_path; /* e.g. /usr/lib/softhsm/libsofthsm2.so */
    const char *token_label;
    const char *pin_file; /* the user PIN, one line; must be chmod 600 */
    const char *key_label;
} kek_pkcs11_config;

typedef struct kek_pkcs11_token kek_pkcs11_token;

/* Loads the module, finds the token by label, opens a session and logs in. Returns 0,
 * EP_ERR_IO (module or PIN file unreadable), EP_ERR_CONFIG (no such token, bad PIN file),
 * EP_ERR_PROVIDER (a PKCS#11 call failed; the CKR code is in the message), or EP_ERR_NOMEM. */
int kek_pkcs11_open(const kek_pkcs11_config *cfg, kek_pkcs11_token **out, ep_err *err);

/* Logs out, finalizes the module and frees. Call after freeing every kek loaded from |t|. */
void kek_pkcs11_close(kek_pkcs11_token *t);

/* Adds every key with the configured label to |ring| (known ones are kept as they are) and
 * makes the selected one current. Returns 0, EP_ERR_CONFIG (no such key, or not AES-256),
 * EP_ERR_PROVIDER, or EP_ERR_NOMEM. */
int kek_pkcs11_load(kek_pkcs11_token *t, kek_ring *ring, ep_err *err);

#endif
