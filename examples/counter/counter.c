/* Increments a counter object under optimistic concurrency, retrying on conflict.
 *
 * Run many at once and the counter ends at exactly their number: each read-modify-write
 * is a put conditional on the version it read, and a stale one (-ESTALE) is retried.
 *
 *   clang --target=wasm32-wasi -O2 -I sdk/c -o counter.wasm examples/counter/counter.c
 *   spear run counter.wasm [KEY]        # prints the value it wrote
 *   spear obj get counter
 */
#include <spear.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    const char *key = argc > 1 ? argv[1] : "counter";
    if (spear_check_abi() != 0) return 70;
    uint64_t seed = 0;
    spear_time_now(SPEAR_CLOCK_MONOTONIC, &seed);
    srand((unsigned)(seed ^ (seed >> 32)));
    for (int attempt = 0; attempt < 100000; attempt++) {
        char buf[32];
        uint32_t len = sizeof buf - 1;
        uint64_t version = 0;
        long value = 0;
        int64_t expected = SPEAR_ABSENT;
        int32_t r = spear_get_str(key, buf, &len, &version);
        if (r >= 0) {
            buf[r] = '\0';
            value = strtol(buf, NULL, 10);
            expected = (int64_t)version;
        } else if (r != -ENOENT) {
            fprintf(stderr, "counter: get %s failed: %d\n", key, r);
            return 1;
        }
        int n = snprintf(buf, sizeof buf, "%ld", value + 1);
        r = spear_put_str(key, buf, (uint32_t)n, expected, &version);
        if (r == 0) {
            printf("%ld\n", value + 1);
            return 0;
        }
        if (r != -ESTALE) {
            fprintf(stderr, "counter: put %s failed: %d\n", key, r);
            return 1;
        }
        /* Lost the race: back off a random while (up to ~2 ms) and try again. */
        spear_sleep((int64_t)(rand() % 2000 + 1) * 1000);
    }
    fprintf(stderr, "counter: gave up\n");
    return 1;
}
