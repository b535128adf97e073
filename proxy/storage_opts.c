/*
 * storage_opts: the flags of scan and rewrite, and the key range they select.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/storage_internal.h"

#define DEFAULT_PAGE_SIZE 1000
#define DEFAULT_TIMEOUT_MS 30000
#define DEFAULT_CONCURRENCY 8
#define DEFAULT_BATCH 100

enum {
    OPT_ENDPOINTS = 1,
    OPT_CONFIG,
    OPT_ETCD_PREFIX,
    OPT_PREFIX,
    OPT_OUTPUT,
    OPT_CACERT,
    OPT_CERT,
    OPT_KEY,
    OPT_PAGE_SIZE,
    OPT_TIMEOUT,
    OPT_VERIFY,
    OPT_FAIL_ON_STALE,
    OPT_DRY_RUN,
    OPT_CONCURRENCY,
    OPT_MAX_RPS,
    OPT_BATCH,
    OPT_RESUME_FROM,
    OPT_HELP,
};

static const struct option common_options[] = {
    {"endpoints", required_argument, NULL, OPT_ENDPOINTS},
    {"encryption-provider-config", required_argument, NULL, OPT_CONFIG},
    {"etcd-prefix", required_argument, NULL, OPT_ETCD_PREFIX},
    {"prefix", required_argument, NULL, OPT_PREFIX},
    {"output", required_argument, NULL, OPT_OUTPUT},
    {"cacert", required_argument, NULL, OPT_CACERT},
    {"cert", required_argument, NULL, OPT_CERT},
    {"key", required_argument, NULL, OPT_KEY},
    {"page-size", required_argument, NULL, OPT_PAGE_SIZE},
    {"request-timeout-ms", required_argument, NULL, OPT_TIMEOUT},
    {"resume-from", required_argument, NULL, OPT_RESUME_FROM},
    {"help", no_argument, NULL, OPT_HELP},
};

static const struct option scan_options[] = {
    {"verify", no_argument, NULL, OPT_VERIFY},
    {"fail-on-stale", no_argument, NULL, OPT_FAIL_ON_STALE},
};

static const struct option rewrite_options[] = {
    {"dry-run", no_argument, NULL, OPT_DRY_RUN},
    {"concurrency", required_argument, NULL, OPT_CONCURRENCY},
    {"max-rps", required_argument, NULL, OPT_MAX_RPS},
    {"batch", required_argument, NULL, OPT_BATCH},
};

#define COMMON_FLAGS                                                                               \
    "  --endpoints URLS                   etcd, comma-separated http:// or https:// URLs\n"        \
    "                                     (default http://127.0.0.1:2379); not a proxy\n"          \
    "  --encryption-provider-config FILE  the EncryptionConfiguration (YAML or JSON)\n"            \
    "  --etcd-prefix PREFIX               kube-apiserver's --etcd-prefix (default /registry)\n"    \
    "  --prefix KEYPREFIX                 only keys starting with this full etcd key prefix\n"     \
    "                                     (default: the --etcd-prefix path, e.g. /registry/)\n"    \
    "  -o, --output table|json            the result on stdout (default table)\n"                  \
    "  --cacert F, --cert F, --key F      etcd's CA, and a client certificate and key\n"           \
    "  --page-size N                      keys per Range request (default 1000)\n"                 \
    "  --request-timeout-ms N             deadline of each etcd request (default 30000)\n"         \
    "  --resume-from KEY                  start at KEY instead of the prefix's first key\n"

static const char scan_usage[] =
    "Usage: etcd-encrypt-proxy scan --encryption-provider-config FILE [flags]\n"
    "\n"
    "Reads every value under the prefix from etcd at one revision and reports, per resource, how\n"
    "the values are stored (identity, aesgcm:<key>, kms:v2:<name> + key ID, ...), how many are\n"
    "stale, plaintext under a rule that encrypts, or unreadable. Exit 0 when nothing is plaintext\n"
    "under an encrypting rule or unreadable, 1 otherwise, 2 on a usage, etcd or KMS error.\n"
    "\n" COMMON_FLAGS
    "  --verify                           decrypt and authenticate every value (KMS through the\n"
    "                                     plugins) instead of trusting its prefix\n"
    "  --fail-on-stale                    exit 1 also when some value is stale\n";

static const char rewrite_usage[] =
    "Usage: etcd-encrypt-proxy rewrite --encryption-provider-config FILE [flags]\n"
    "\n"
    "Re-encrypts every stale or plaintext value under an encrypting rule with the rule's current\n"
    "write provider (decrypts them under an identity-first rule), in Txns that compare each key's\n"
    "mod_revision and keep its lease: a key written in between is skipped, never overwritten.\n"
    "Exit 0 when everything is current, 1 when some value could not be read, 2 on an error that\n"
    "stopped the run, 130 on SIGINT/SIGTERM; the summary names the key to resume from.\n"
    "\n" COMMON_FLAGS
    "  --dry-run                          read, decrypt and re-encrypt, but write nothing\n"
    "  --concurrency N                    Txns in flight (default 8)\n"
    "  --max-rps N                        at most N keys rewritten per second (default: no cap)\n"
    "  --batch N                          keys per Txn (default 100; at most 1 MiB of values)\n";

const char *storage_usage(bool rewrite) {
    return rewrite ? rewrite_usage : scan_usage;
}

/* Parses a decimal in [min, max] into |*out|. Returns 0, or -1 after printing why. */
static int parse_long(const char *cmd, const char *flag, const char *text, long min, long max,
                      long *out) {
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < min || v > max) {
        fprintf(stderr, "%s: --%s: \"%s\" is not a number in %ld..%ld\n", cmd, flag, text, min,
                max);
        return -1;
    }
    *out = v;
    return 0;
}

/* Applies one option. Returns 0, or -1 after printing why. */
static int apply(const char *cmd, int opt, const char *arg, storage_opts *o) {
    switch (opt) {
    case OPT_ENDPOINTS:
        o->endpoints = arg;
        return 0;
    case OPT_CONFIG:
        o->config_path = arg;
        return 0;
    case OPT_ETCD_PREFIX:
        o->etcd_prefix = arg;
        return 0;
    case OPT_PREFIX:
        o->prefix = arg;
        return 0;
    case 'o':
    case OPT_OUTPUT:
        if (strcmp(arg, "json") != 0 && strcmp(arg, "table") != 0) {
            fprintf(stderr, "%s: --output: \"%s\" is neither table nor json\n", cmd, arg);
            return -1;
        }
        o->json = strcmp(arg, "json") == 0;
        return 0;
    case OPT_CACERT:
        o->cacert = arg;
        return 0;
    case OPT_CERT:
        o->cert = arg;
        return 0;
    case OPT_KEY:
        o->key = arg;
        return 0;
    case OPT_PAGE_SIZE:
        return parse_long(cmd, "page-size", arg, 1, 100000, &o->page_size);
    case OPT_TIMEOUT:
        return parse_long(cmd, "request-timeout-ms", arg, 100, 3600000, &o->timeout_ms);
    case OPT_VERIFY:
        o->verify = true;
        return 0;
    case OPT_FAIL_ON_STALE:
        o->fail_on_stale = true;
        return 0;
    case OPT_DRY_RUN:
        o->dry_run = true;
        return 0;
    case OPT_CONCURRENCY:
        return parse_long(cmd, "concurrency", arg, 1, 256, &o->concurrency);
    case OPT_MAX_RPS:
        return parse_long(cmd, "max-rps", arg, 1, 100000000, &o->max_rps);
    case OPT_BATCH:
        return parse_long(cmd, "batch", arg, 1, 10000, &o->batch);
    case OPT_RESUME_FROM:
        o->resume_from = arg;
        return 0;
    case OPT_HELP:
        o->help = true;
        return 0;
    default:
        return -1;
    }
}

/* The long options of one command: the common ones and its own. */
static void build_options(bool rewrite, struct option *out) {
    size_t n = 0;
    for (size_t i = 0; i < sizeof(common_options) / sizeof(common_options[0]); i++) {
        out[n++] = common_options[i];
    }
    const struct option *own = rewrite ? rewrite_options : scan_options;
    size_t nown = rewrite ? sizeof(rewrite_options) / sizeof(rewrite_options[0])
                          : sizeof(scan_options) / sizeof(scan_options[0]);
    for (size_t i = 0; i < nown; i++) {
        out[n++] = own[i];
    }
    out[n] = (struct option){NULL, 0, NULL, 0};
}

static void set_defaults(storage_opts *o) {
    memset(o, 0, sizeof(*o));
    o->endpoints = "http://127.0.0.1:2379";
    o->page_size = DEFAULT_PAGE_SIZE;
    o->timeout_ms = DEFAULT_TIMEOUT_MS;
    o->concurrency = DEFAULT_CONCURRENCY;
    o->batch = DEFAULT_BATCH;
}

int storage_opts_parse(int argc, char **argv, bool rewrite, storage_opts *o) {
    struct option options[sizeof(common_options) / sizeof(common_options[0]) + 5];
    build_options(rewrite, options);
    set_defaults(o);
    const char *usage = storage_usage(rewrite);
    optind = 0; /* 0, not 1: glibc then also forgets a half-read bundle of short options */
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "o:", options, NULL)) != -1) {
        if (c == '?' || c == ':') {
            if (optopt > 0 && optopt < 128 && isalnum(optopt)) {
                fprintf(stderr, "%s: unknown or incomplete option -%c\n%s", argv[0], optopt, usage);
            } else {
                fprintf(stderr, "%s: unknown or incomplete option %s\n%s", argv[0],
                        argv[optind - 1], usage);
            }
            return 2;
        }
        if (apply(argv[0], c, optarg, o) != 0) {
            return 2;
        }
    }
    if (o->help) {
        return 0;
    }
    if (o->config_path == NULL || optind < argc) {
        fprintf(stderr, "%s: %s%s\n%s", argv[0],
                o->config_path ? "unexpected argument " : "missing --encryption-provider-config",
                o->config_path ? argv[optind] : "", usage);
        return 2;
    }
    return 0;
}

/* ---- the key range ---- */

int storage_range_init(storage_range *r, const storage_opts *o, const char *path_prefix) {
    memset(r, 0, sizeof(*r));
    str prefix = str_cstr(o->prefix ? o->prefix : path_prefix);
    str from = o->resume_from ? str_cstr(o->resume_from) : prefix;
    if (!str_has_prefix(from, prefix)) {
        fprintf(stderr, "--resume-from: \"%s\" does not start with the prefix \"%.*s\"\n",
                o->resume_from, (int)prefix.len, (const char *)prefix.ptr);
        return 2;
    }
    if (buf_append_str(&r->prefix, prefix) != 0 || buf_append_str(&r->from, from) != 0 ||
        etcd_kv_prefix_end(prefix, &r->range_end) != 0) {
        fprintf(stderr, "out of memory\n");
        storage_range_free(r);
        return 2;
    }
    if (from.len == 0 && buf_append(&r->from, "", 1) != 0) { /* etcd: an empty key is no key */
        storage_range_free(r);
        return 2;
    }
    return 0;
}

void storage_range_free(storage_range *r) {
    buf_free(&r->from);
    buf_free(&r->prefix);
    buf_free(&r->range_end);
}
