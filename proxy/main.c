/*
 * etcd-encrypt-proxy: one binary, several subcommands.
 */
#include <stdio.h>
#include <string.h>

#include "proxy/cli.h"
#include "proxy/serve.h"
#include "proxy/storage.h"

static const char usage[] =
    "Usage: etcd-encrypt-proxy COMMAND [FLAGS]\n"
    "\n"
    "A transparent encrypting proxy for etcd: kube-apiserver's EncryptionConfiguration applied\n"
    "outside the apiserver, writing byte-for-byte what kube-apiserver would write.\n"
    "\n"
    "Commands:\n"
    "  serve         run the proxy in front of etcd\n"
    "  check-config  validate an EncryptionConfiguration and print key prefix -> providers\n"
    "  encrypt       plaintext on stdin -> stored value for an etcd key on stdout\n"
    "  decrypt       stored value on stdin -> plaintext on stdout\n"
    "  scan          report how every value in etcd is stored (keys, stale, plaintext)\n"
    "  rewrite       re-encrypt every stale or plaintext value in etcd, in place\n"
    "\n"
    "Run 'etcd-encrypt-proxy COMMAND --help' for the flags of a command.\n";

/* jemalloc's options (read once at start; the MALLOC_CONF environment variable still overrides
 * them). By default freed pages go back to the kernel only as later allocations happen, so a
 * proxy that served a burst (10,000 streams, a big LIST) and then went quiet kept tens of MiB
 * for good: a background thread purges them after a second instead. Two arenas are plenty for
 * two workers, each with its own thread cache. */
const char *malloc_conf = "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:2";

typedef int (*command_fn)(int argc, char **argv);

static const struct {
    const char *name;
    command_fn fn;
} commands[] = {
    {"serve", proxy_serve_main},   {"check-config", cli_check_config_main},
    {"encrypt", cli_encrypt_main}, {"decrypt", cli_decrypt_main},
    {"scan", storage_scan_main},   {"rewrite", storage_rewrite_main},
};

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(argv[1], commands[i].name) == 0) {
            return commands[i].fn(argc - 1, argv + 1);
        }
    }
    fprintf(stderr, "etcd-encrypt-proxy: unknown command \"%s\"\n%s", argv[1], usage);
    return 2;
}
