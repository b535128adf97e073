/*
 * storage: the `scan` and `rewrite` subcommands, which work on etcd directly: what every stored
 * value is encrypted with, and re-encrypting whatever is stale (README, "Checking and rotating
 * what is stored"). They classify and transform values with the same transformer set as the
 * proxy, so what they report and write is what the proxy and kube-apiserver would read.
 */
#ifndef EP_PROXY_STORAGE_H
#define EP_PROXY_STORAGE_H

/* Each returns the process exit status (0, 1, 2, and 130 for an interrupted rewrite; README).
 * |argv[0]| is the subcommand name. */
int storage_scan_main(int argc, char **argv);
int storage_rewrite_main(int argc, char **argv);

#endif
