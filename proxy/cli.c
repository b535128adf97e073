/*
 * check-config / encrypt / decrypt.
 *
 * encrypt and decrypt are the apiserver-compatibility loop in a shell: a value they write can
 * be put straight into etcd and read back through the proxy (or kube-apiserver with the same
 * config), and the other way round. They read the value from stdin and write the result to
 * stdout as raw bytes; messages go to stderr and never contain the value or key material.
 *
 * With kms providers they talk to the configured plugins the way the proxy does, on a private
 * event loop: the v2 write state is primed first (Status + Encrypt of a seed; reads need it
 * too, it says whether a value is stale), then the transform runs; when it answers
 * EP_ERR_AGAIN the recorded plugin calls are performed and it runs once more, final.
 * `check-config --probe` primes the same way and prints each provider's health.
 */
#include "proxy/cli.h"

#include <ctype.h>
#include <event2/event.h>
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
#include "proxy/cli_kms.h"
#include "proxy/kms_client.h"
#include "proxy/serve.h"

/* A value larger than this is not an etcd value (etcd refuses requests over 1.5 MiB by
 * default); the cap only stops a mistaken pipe from eating memory. */
#define CLI_MAX_VALUE (256u << 20)

typedef struct {
    const char *config_path;
    const char *etcd_prefix;
    const char *etcd_key;
    bool verbose;
    bool probe;
    bool help;
} cli_options;

enum { OPT_CONFIG = 1, OPT_PREFIX, OPT_KEY, OPT_VERBOSE, OPT_PROBE, OPT_HELP };

static const struct option long_options[] = {
    {"encryption-provider-config", required_argument, NULL, OPT_CONFIG},
    {"etcd-prefix", required_argument, NULL, OPT_PREFIX},
    {"key", required_argument, NULL, OPT_KEY},
    {"verbose", no_argument, NULL, OPT_VERBOSE},
    {"probe", no_argument, NULL, OPT_PROBE},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

static const char check_config_usage[] =
    "Usage: etcd-encrypt-proxy check-config --encryption-provider-config FILE\n"
    "                                       [--etcd-prefix PREFIX] [--probe]\n"
    "\n"
    "Validates FILE exactly as kube-apiserver would and prints which etcd key prefixes get\n"
    "which provider chain (names only, never secrets). Exit 0 when valid, 1 with\n"
    "FILE:LINE:COL: reason when not.\n"
    "\n"
    "  --encryption-provider-config FILE  EncryptionConfiguration (YAML or JSON)\n"
    "  --etcd-prefix PREFIX               kube-apiserver's --etcd-prefix (default /registry)\n"
    "  --probe                            also connect to every KMS plugin and print its\n"
    "                                     health; exit 1 when one is unhealthy\n";

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
    optind = 0; /* 0, not 1: glibc then also forgets a half-read bundle of short options */
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
        case OPT_PROBE:
            o->probe = true;
            break;
        case OPT_HELP:
            o->help = true;
            break;
        default:
            if (optopt > 0 && optopt < 128 && isalnum(optopt)) { /* a short one, maybe in -xy */
                fprintf(stderr, "%s: unknown or incomplete option -%c\n%s", argv[0], optopt, usage);
            } else {
                fprintf(stderr, "%s: unknown or incomplete option %s\n%s", argv[0],
                        argv[optind - 1], usage);
            }
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

/* ---- check-config ---- */

/* Prints kms_set_describe to stdout. Returns 0 when every provider is healthy, else 1. */
static int print_health(const kms_set *kms) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    kms_set_describe(kms, f);
    fclose(f);
    printf("KMS providers:\n%s", text);
    int status = strstr(text, "unhealthy") ? 1 : 0;
    free(text);
    return status;
}

/* Connects to every KMS plugin of the config, prints their health to stdout. Returns 0 when all
 * are healthy, 1 otherwise (or when they cannot be reached at all). */
static int probe_plugins(const cli_options *o) {
    ep_err err = {{0}};
    crypto_transformer_set *set = NULL;
    cli_kms c;
    memset(&c, 0, sizeof(c));
    int rv = crypto_transformer_set_load(o->config_path, o->etcd_prefix, &set, &err);
    if (rv == EP_OK && proxy_uses_kms(set, 0)) {
        rv = cli_kms_open(&c, set, true, &err);
    }
    int status = 0;
    if (rv != EP_OK) {
        fprintf(stderr, "%s\n", err.msg);
        status = 1;
    } else if (c.kms) {
        status = print_health(c.kms);
    } else {
        printf("no KMS providers\n");
    }
    cli_kms_close(&c);
    crypto_transformer_set_free(set);
    return status;
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
    if (rv == EP_OK && o.probe) {
        fflush(stdout);
        return probe_plugins(&o);
    }
    return rv == EP_OK ? 0 : 1;
}

/* ---- encrypt / decrypt ---- */

/* Runs one transform of |in| into |out|, with a round of plugin calls when it asks for one.
 * Returns the transformer's status (message in |err|). */
static int transform(const crypto_transformer *t, str key, str in, bool decrypt, cli_kms *c,
                     buf *out, crypto_read_info *info, ep_err *err) {
    crypto_kms_pending pending = CRYPTO_KMS_PENDING_INIT;
    crypto_kms_pending *p = c->kms ? &pending : NULL;
    int status = EP_ERR_AGAIN;
    for (int round = 0; round < 2 && status == EP_ERR_AGAIN; round++) {
        if (round == 1) {
            cli_kms_perform(c, &pending); /* on failure the failed calls tell the rerun why */
        }
        buf_wipe(out);
        status = decrypt ? crypto_transformer_decrypt(t, key, in, out, info, p, err)
                         : crypto_transformer_encrypt(t, key, in, out, p, err);
    }
    if (status == EP_ERR_AGAIN) {
        status = ep_err_set(err, EP_ERR_UNAVAILABLE,
                            "the KMS plugin's answer was not available after a round of calls");
    }
    crypto_kms_pending_free(&pending);
    return status;
}

static void print_verbose(const crypto_transformer *t, bool decrypt, const crypto_read_info *info) {
    if (decrypt) {
        fprintf(stderr, "read by %s%s%s%s, stale=%s\n", info->provider,
                info->key_name[0] ? " key \"" : "", info->key_name, info->key_name[0] ? "\"" : "",
                info->stale ? "true" : "false");
    } else {
        fprintf(stderr, "written by %s\n",
                crypto_transformer_writes_plaintext(t) ? "identity (plaintext)"
                                                       : "the first provider");
    }
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
    cli_kms c;
    memset(&c, 0, sizeof(c));
    if (crypto_transformer_set_load(o.config_path, o.etcd_prefix, &set, &err) != EP_OK ||
        (proxy_uses_kms(set, 0) && cli_kms_open(&c, set, true, &err) != EP_OK)) {
        fprintf(stderr, "%s: %s\n", argv[0], err.msg);
        cli_kms_close(&c);
        crypto_transformer_set_free(set);
        return 1;
    }
    buf in = BUF_INIT, out = BUF_INIT;
    rv = read_stdin(argv[0], &in);
    if (rv == 0) {
        str key = str_cstr(o.etcd_key);
        const crypto_transformer *t = crypto_transformer_set_lookup(set, key);
        crypto_read_info info = {0};
        if (transform(t, key, buf_str(&in), decrypt, &c, &out, &info, &err) != EP_OK) {
            fprintf(stderr, "%s: %s: %s\n", argv[0], o.etcd_key, err.msg);
            rv = 1;
        } else {
            if (o.verbose) {
                print_verbose(t, decrypt, &info);
            }
            rv = write_stdout(argv[0], buf_str(&out));
        }
    }
    buf_free_secure(&in); /* one of the two is plaintext */
    buf_free_secure(&out);
    cli_kms_close(&c);
    crypto_transformer_set_free(set);
    return rv;
}

int cli_encrypt_main(int argc, char **argv) {
    return run_transform(argc, argv, encrypt_usage, false);
}

int cli_decrypt_main(int argc, char **argv) {
    return run_transform(argc, argv, decrypt_usage, true);
}
