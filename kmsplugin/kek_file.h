/*
 * kek_file: a KEK read from a key file and kept in this process's memory.
 *
 * File format: exactly 32 bytes of raw key, or the standard padded base64 of 32 bytes (44
 * characters) with optional surrounding whitespace and newline. The file must be a regular file
 * with no permission bits for group or others (chmod 600), since it holds the key that opens
 * every DEK.
 */
#ifndef EP_KMSPLUGIN_KEK_FILE_H
#define EP_KMSPLUGIN_KEK_FILE_H

#include "common/err.h"
#include "kmsplugin/kek.h"

#define KEK_FILE_KEY_LEN 32

/* Checks that |path| is a regular file not accessible by group or others. Returns 0, EP_ERR_IO
 * (cannot stat), or EP_ERR_CONFIG (wrong type or mode; message says how to fix it). Shared with
 * the PKCS#11 PIN file. */
int kek_file_check_private(const char *path, const char *what, ep_err *err);

/* Parses key file contents |text| into |key| (32 bytes). Returns 0 or EP_ERR_CONFIG naming the
 * length found, never the bytes. */
int kek_file_parse(str text, uint8_t key[KEK_FILE_KEY_LEN], ep_err *err);

/* Makes a kek from 32 key bytes; its id is hex(SHA-256("etcd-encrypt-kms-plugin/kek-file/v1\0"
 * || key)[:16]). Returns 0, EP_ERR_NOMEM, or EP_ERR_PROVIDER. */
int kek_file_from_key(const uint8_t key[KEK_FILE_KEY_LEN], kek **out, ep_err *err);

/* Reads, checks and parses |path| into a kek. Returns 0, EP_ERR_IO, EP_ERR_CONFIG, EP_ERR_NOMEM
 * or EP_ERR_PROVIDER; messages name the file. */
int kek_file_load(const char *path, kek **out, ep_err *err);

#endif
