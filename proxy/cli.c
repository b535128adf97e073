/*
 * check-config / encrypt / decrypt.
 *
 * encrypt and decrypt are the apiserver-compatibility loop in a shell: a value they write can
 * be put straight into etcd and read back through the proxy (or kube-apiserver with the same
 * config), and the other way round. They read the value from stdin and write the result to
 * stdout as raw bytes; messages go to stderr and never contain the value or key material.
 */
#include "proxy/cli.h"

#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/buf.h"
#include "config/encryption_config.h"
#include "config/keymap.h"
#include "crypto/transformer_set.h"

/* A value larger than this is not an etcd value (etcd refuses requests over 1.5 MiB by
 * default); the cap only stops a mistaken pipe from eating memory. */
#define CLI_MAX_VALUE (256u << 20)

typedef struct {
    const char *config_path;
    const char *etcd_prefix;
    const char *etcd_key;
    bool verbose;
    bool help;
} cli_options;

enum { OPT_CONFIG = 1, OPT_PREFIX, OPT_KEY, OPT_VERBOSE, OPT_HELP };

static const struct option long_options[] = {
    {"encryption-provider-config", required_argument, NULL, OPT_CONFIG},
    {"etcd-prefix", required_argument, NULL, OPT_PREFIX},
    {"key", required_argument, NULL, OPT_KEY},
    {"verbose", no_argument, NULL, OPT_VERBOSE},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

static const char check_config_usage[] =
    "Usage: etcd-encrypt-proxy check-config --encryption-provider-config FILE\n"
    "                                       [--etcd-prefix PREFIX]\n"
    "\n"
    "Validates FILE exactly as kube-apiserver would and prints which etcd key prefixes get\n"
    "which provider chain (names only, never secrets). Exit 0 when valid, 1 with\n"
    "FILE:LINE:COL: reason when not.\n"
    "\n"
    "  --encryption-provider-config FILE  EncryptionConfiguration (YAML or JSON)\n"
    "  --etcd-prefix PREFIX               kube-apiserver's --etcd-prefix (default /registry)\n";

static const char encrypt_usage[] =
    "Usage: etcd-encrypt-proxy encrypt --encryption-provider-config FILE --key ETCD_KEY\n"
    "                                  [--etcd-prefix PREFIX] [--verbose]\n"
    "\n"
    "Reads a plaintext value on stdin and writes the value kube-apiserver would store in etcd\n"
    "at ETCD_KEY (e.g. /registry/secrets/default/db) to stdout, using the write provider of the\n"
    "rule that matches the key (the value is written unchanged when no rule encrypts it).\n"
    "\n"
    "  --encryption-provider-config FILE  EncryptionConfiguration (YAML or JSON)\n"
    "  --key ETCD_KEY                     the full etcd key, prefix included\n"
    "  --etcd-prefix PREFIX               kube-apiserver's --etcd-prefix (default /registry)\n"
    "  --verbose                          say on stderr which provider wrote the value\n";

static const char decrypt_usage[] =
    "Usage: etcd-encrypt-proxy decrypt --encryption-provider-config FILE --key ETCD_KEY\n"
    "                                  [--etcd-prefix PREFIX] [--verbose]\n"
    "\n"
    "Reads a value as stored in etcd at ETCD_KEY on stdin and writes the plaintext to stdout.\n"
    "Exits 1 with the reason when it cannot be read (wrong key, tampered, moved to another\n"
    "etcd key under an AEAD provider, truncated, unknown prefix).\n"
    "\n"
    "  --encryption-provider-config FILE  EncryptionConfiguration (YAML or JSON)\n"
    "  --key ETCD_KEY                     the full etcd key, prefix included\n"
    "  --etcd-prefix PREFIX               kube-apiserver's --etcd-prefix (default /registry)\n"
    "  --verbose                          say on stderr which provider and key read it and\n"
    "                                     whether it is stale (should be rewritten)\n";

/* Parses |argv| into |o|. Returns 0, or 2 after printing a usage error. */
static int parse_options(int argc, char **argv, const char *usage, bool need_key, cli_options *o) {
    memset(o, 0, sizeof(*o));
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", long_options, NULL)) != -1) {
        switch (c) {
        case OPT_CONFIG:
            o->config_path = optarg;
            break;
        case OPT_PREFIX:
            o->etcd_prefix = optarg;
            break;
        case OPT_KEY:
            o->etcd_key = optarg;
            break;
        case OPT_VERBOSE:
            o->verbose = true;
            break;
        case OPT_HELP:
            o->help = true;
            break;
        default:
            fprintf(stderr, "%s: unknown or incomplete option %s\n%s", argv[0], argv[optind - 1],
                    usage);
            return 2;
        }
    }
    if (o->help) {
        return 0;
    }
    const char *missing = NULL;
    if (o->config_path == NULL) {
        missing = "--encryption-provider-config";
    } else if (need_key && o->etcd_key == NULL) {
        missing = "--key";
    }
    if (missing != NULL || optind < argc) {
        fprintf(stderr, "%s: %s%s\n%s", argv[0], missing ? "missing " : "unexpected argument ",
                missing ? missing : argv[optind], usage);
        return 2;
    }
    return 0;
}

/* Reads all of stdin into |out|. Returns 0, or 1 after printing why. */
static int read_stdin(const char *cmd, buf *out) {
    for (;;) {
        if (buf_reserve(out, 65536) != EP_OK) {
            fprintf(stderr, "%s: out of memory reading stdin\n", cmd);
            return 1;
        }
        ssize_t n = read(STDIN_FILENO, out->data + out->len, out->cap - out->len);
        if (n == 0) {
            return 0;
        }
        if (n < 0) {
            perror("read stdin");
            return 1;
        }
        out->len += (size_t)n;
        if (out->len > CLI_MAX_VALUE) {
            fprintf(stderr, "%s: value on stdin is larger than %u bytes\n", cmd, CLI_MAX_VALUE);
            return 1;
        }
    }
}

static int write_stdout(const char *cmd, str s) {
    size_t off = 0;
    while (off < s.len) {
        ssize_t n = write(STDOUT_FILENO, s.ptr + off, s.len - off);
        if (n < 0) {
            perror("write stdout");
            return 1;
        }
        off += (size_t)n;
    }
    return 0;
}

int cli_check_config_main(int argc, char **argv) {
    cli_options o;
    int rv = parse_options(argc, argv, check_config_usage, false, &o);
    if (rv != 0 || o.help) {
        fputs(rv == 0 ? check_config_usage : "", stdout);
        return rv;
    }
    ep_err err = {{0}};
    config_encryption *cfg = NULL;
    config_keymap *map = NULL;
    rv = config_load_file(o.config_path, &cfg, &err);
    if (rv == EP_OK) {
        rv = config_keymap_build(cfg, o.etcd_prefix, &map, &err);
    }
    if (rv == EP_OK) {
        rv = config_keymap_print(map, stdout);
        if (rv != EP_OK) {
            ep_err_set(&err, rv, "cannot write the table to stdout");
        }
    }
    if (rv != EP_OK) {
        fprintf(stderr, "%s\n", err.msg);
    }
    config_keymap_free(map);
    config_encryption_free(cfg);
    return rv == EP_OK ? 0 : 1;
}

/* Shared body of encrypt and decrypt: load, read stdin, transform, write stdout. */
static int run_transform(int argc, char **argv, const char *usage, bool decrypt) {
    cli_options o;
    int rv = parse_options(argc, argv, usage, true, &o);
    if (rv != 0 || o.help) {
        fputs(rv == 0 ? usage : "", stdout);
        return rv;
    }
    ep_err err = {{0}};
    crypto_transformer_set *set = NULL;
    if (crypto_transformer_set_load(o.config_path, o.etcd_prefix, &set, &err) != EP_OK) {
        fprintf(stderr, "%s: %s\n", argv[0], err.msg);
        return 1;
    }
    buf in = BUF_INIT, out = BUF_INIT;
    rv = read_stdin(argv[0], &in);
    if (rv == 0) {
        str key = str_cstr(o.etcd_key);
        const crypto_transformer *t = crypto_transformer_set_lookup(set, key);
        crypto_read_info info = {0};
        int status = decrypt
                         ? crypto_transformer_decrypt(t, key, buf_str(&in), &out, &info, NULL, &err)
                         : crypto_transformer_encrypt(t, key, buf_str(&in), &out, NULL, &err);
        if (status != EP_OK) {
            fprintf(stderr, "%s: %s: %s\n", argv[0], o.etcd_key, err.msg);
            rv = 1;
        } else {
            if (o.verbose && decrypt) {
                fprintf(stderr, "read by %s%s%s%s, stale=%s\n", info.provider,
                        info.key_name[0] ? " key \"" : "", info.key_name,
                        info.key_name[0] ? "\"" : "", info.stale ? "true" : "false");
            } else if (o.verbose) {
                fprintf(stderr, "written by %s\n",
                        crypto_transformer_writes_plaintext(t) ? "identity (plaintext)"
                                                               : "the first provider");
            }
            rv = write_stdout(argv[0], buf_str(&out));
        }
    }
    buf_free_secure(&in); /* one of the two is plaintext */
    buf_free_secure(&out);
    crypto_transformer_set_free(set);
    return rv;
}

int cli_encrypt_main(int argc, char **argv) {
    return run_transform(argc, argv, encrypt_usage, false);
}

int cli_decrypt_main(int argc, char **argv) {
    return run_transform(argc, argv, decrypt_usage, true);
}
