/*
 * The offline subcommands of the etcd-encrypt-proxy binary: check-config, encrypt, decrypt.
 * They use the same config loader, keymap and transformers as the proxy, so what they print or
 * produce is exactly what the proxy would do for the same key.
 */
#ifndef EP_PROXY_CLI_H
#define EP_PROXY_CLI_H

/* Each returns the process exit status: 0 on success, 1 on any failure (message on stderr),
 * 2 for a usage error. |argv[0]| is the subcommand name. */
int cli_check_config_main(int argc, char **argv);
int cli_encrypt_main(int argc, char **argv);
int cli_decrypt_main(int argc, char **argv);

#endif
