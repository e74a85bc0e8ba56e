/* A streaming agent: reads each message its caller sends, writes it back transformed
 * (upper-cased, prefixed with its sequence number), until the caller ends its input.
 *
 *   clang --target=wasm32-wasi -O2 -I sdk/c -o transform.wasm \
 *       examples/stream_transform/transform.c
 *   printf 'hello\nworld\n' | spear run --stream transform.wasm
 *   1: HELLO
 *   2: WORLD
 *
 * It waits with spear_poll (through spear_stream_recv/send), so it sleeps while there is
 * nothing to do and stops writing while its caller is slow to read (backpressure).
 */
#include <ctype.h>
#include <spear.h>
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    if (spear_check_abi() != 0) return 70;
    int32_t h = spear_stream_caller();
    if (h < 0) return 1;
    uint32_t cap = 4096;
    char *in = malloc(cap);
    char *out = malloc(cap + 32);
    long count = 0;
    for (;;) {
        uint32_t len = cap;
        int32_t r = spear_stream_recv(h, in, &len);
        if (r == -ENOSPC) { /* a longer message: grow and read it again */
            cap = len;
            in = realloc(in, cap);
            out = realloc(out, cap + 32);
            continue;
        }
        if (r == -EPIPE) break; /* the caller ended its input */
        if (r < 0) {
            fprintf(stderr, "transform: read failed: %d\n", r);
            return 1;
        }
        count++;
        int n = snprintf(out, 32, "%ld: ", count);
        for (int32_t i = 0; i < r; i++) out[n + i] = (char)toupper((unsigned char)in[i]);
        r = spear_stream_send(h, out, (uint32_t)(n + r));
        if (r < 0) {
            fprintf(stderr, "transform: write failed: %d\n", r);
            return 1;
        }
    }
    spear_close(h);
    printf("transformed %ld messages\n", count);
    return 0;
}
