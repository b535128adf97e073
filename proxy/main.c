/* Placeholder entry point, replaced by the CLI. */
#include <stdio.h>
int main(void) {
    fprintf(stderr, "etcd-encrypt-proxy: not built yet\n");
    return 1;
}
