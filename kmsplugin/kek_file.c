/*
 * kek_file: key-file KEKs (format in kek_file.h). Sealing and opening use the project's own
 * AES-GCM (crypto/aesgcm.h), whose layout is exactly the kek seal/open layout.
 */
#include "kmsplugin/kek_file.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/base64.h"
#include "crypto/aesgcm.h"

#define MAX_FILE_LEN 4096
#define ID_LABEL "etcd-encrypt-kms-plugin/kek-file/v1"

typedef struct {
    kek base;
    crypto_aesgcm_key *key;
} file_kek;

static int file_seal(kek *k, str aad, str plain, buf *out, ep_err *err) {
    return crypto_aesgcm_seal(((file_kek *)k)->key, aad, plain, out, err);
}

static int file_open(kek *k, str aad, str sealed, buf *out, ep_err *err) {
    return crypto_aesgcm_open(((file_kek *)k)->key, aad, sealed, out, err);
}

static void file_free(kek *k) {
    file_kek *fk = (file_kek *)k;
    crypto_aesgcm_key_free(fk->key);
    ep_free(fk);
}

static const kek_ops file_ops = {file_seal, file_open, file_free};

int kek_file_check_private(const char *path, const char *what, ep_err *err) {
    struct stat st;
    if (stat(path, &st) != 0) {
        return ep_err_set(err, EP_ERR_IO, "%s %s: %s", what, path, strerror(errno));
    }
    if (!S_ISREG(st.st_mode)) {
        return ep_err_set(err, EP_ERR_CONFIG, "%s %s is not a regular file", what, path);
    }
    if (st.st_mode & 077) {
        return ep_err_set(err, EP_ERR_CONFIG,
                          "%s %s is accessible by group or others (mode %03o); chmod 600 it", what,
                          path, (unsigned)(st.st_mode & 0777));
    }
    return 0;
}

static str trim(str s) {
    while (s.len && isspace(s.ptr[0])) {
        s = str_skip(s, 1);
    }
    while (s.len && isspace(s.ptr[s.len - 1])) {
        s.len--;
    }
    return s;
}

int kek_file_parse(str text, uint8_t key[KEK_FILE_KEY_LEN], ep_err *err) {
    if (text.len == KEK_FILE_KEY_LEN) {
        memcpy(key, text.ptr, KEK_FILE_KEY_LEN);
        return 0;
    }
    buf decoded = BUF_INIT;
    int rv = base64_decode(trim(text), &decoded);
    if (rv == EP_ERR_NOMEM) {
        buf_free_secure(&decoded);
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory reading a key file");
    }
    if (rv != 0 || decoded.len != KEK_FILE_KEY_LEN) {
        size_t got = rv == 0 ? decoded.len : text.len;
        buf_free_secure(&decoded);
        return ep_err_set(err, EP_ERR_CONFIG,
                          "needs a 32-byte AES-256 key, raw or base64; found %zu %s", got,
                          rv == 0 ? "bytes after base64 decoding" : "bytes that are not base64");
    }
    memcpy(key, decoded.data, KEK_FILE_KEY_LEN);
    buf_free_secure(&decoded);
    return 0;
}

int kek_file_from_key(const uint8_t key[KEK_FILE_KEY_LEN], kek **out, ep_err *err) {
    file_kek *fk = ep_calloc(1, sizeof(*fk));
    if (!fk) {
        return ep_err_set(err, EP_ERR_NOMEM, "out of memory for a KEK");
    }
    fk->base.ops = &file_ops;
    str material = str_make(key, KEK_FILE_KEY_LEN);
    int rv = crypto_aesgcm_key_new(material, &fk->key, err);
    if (rv == 0) {
        rv = kek_derive_id(&fk->base, "", STR_LIT(ID_LABEL "\0"), material, err);
    }
    if (rv != 0) {
        file_free(&fk->base);
        return rv;
    }
    *out = &fk->base;
    return 0;
}

/* Reads at most MAX_FILE_LEN bytes of |path| into |text| (MAX_FILE_LEN + 1 bytes so a longer
 * file shows). Returns 0 or EP_ERR_IO. */
static int read_small(const char *path, uint8_t *text, size_t *len, ep_err *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return ep_err_set(err, EP_ERR_IO, "key file %s: %s", path, strerror(errno));
    }
    size_t n = 0;
    ssize_t got = 0;
    while (n <= MAX_FILE_LEN && (got = read(fd, text + n, MAX_FILE_LEN + 1 - n)) > 0) {
        n += (size_t)got;
    }
    int saved = errno;
    close(fd);
    if (got < 0) {
        return ep_err_set(err, EP_ERR_IO, "key file %s: %s", path, strerror(saved));
    }
    *len = n;
    return 0;
}

int kek_file_load(const char *path, kek **out, ep_err *err) {
    uint8_t text[MAX_FILE_LEN + 1];
    uint8_t key[KEK_FILE_KEY_LEN];
    size_t len = 0;
    int rv = kek_file_check_private(path, "key file", err);
    if (rv == 0) {
        rv = read_small(path, text, &len, err);
    }
    if (rv == 0 && len > MAX_FILE_LEN) {
        rv = ep_err_set(err, EP_ERR_CONFIG, "key file %s: too long for a 32-byte key", path);
    }
    if (rv == 0 && (rv = kek_file_parse(str_make(text, len), key, err)) != 0) {
        ep_err_wrap(err, rv, "key file %s", path);
    }
    if (rv == 0) {
        rv = kek_file_from_key(key, out, err);
    }
    explicit_bzero(text, sizeof(text));
    explicit_bzero(key, sizeof(key));
    return rv;
}
