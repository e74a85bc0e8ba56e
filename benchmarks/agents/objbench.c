/* Object-store and hostcall timings from inside a wasm agent (benchmarks/objects_bench.py).
 *
 *   objbench.wasm objects LABEL SIZE N   -> "put LABEL ns..." and "get LABEL ns..." lines
 *   objbench.wasm hostcall N             -> bare, memory-touching and store round trips
 */
#include <spear.h>
#include <stdio.h>
#include <stdlib.h>

static uint64_t now(void) {
    uint64_t t = 0;
    spear_time_now(SPEAR_CLOCK_MONOTONIC, &t);
    return t;
}

static int objects(const char *label, uint32_t size, int n) {
    char *value = malloc(size), *back = malloc(size);
    if (!value || !back) return 2;
    for (uint32_t i = 0; i < size; i++) value[i] = (char)(i * 31 + 7);
    uint64_t *puts = malloc(sizeof(uint64_t) * n), *gets = malloc(sizeof(uint64_t) * n);
    char key[64];
    for (int i = 0; i < n; i++) {
        int k = snprintf(key, sizeof key, "bench/wasm/%s/%d", label, i);
        uint64_t t0 = now();
        if (spear_obj_put(key, (uint32_t)k, value, size, SPEAR_ANY_VERSION, NULL) != 0) return 3;
        uint64_t t1 = now();
        uint32_t len = size;
        if (spear_obj_get(key, (uint32_t)k, back, &len, NULL) != (int32_t)size) return 4;
        uint64_t t2 = now();
        if (back[size - 1] != value[size - 1]) return 5;
        spear_obj_delete(key, (uint32_t)k, SPEAR_ANY_VERSION);
        puts[i] = t1 - t0;
        gets[i] = t2 - t1;
    }
    printf("put %s", label);
    for (int i = 0; i < n; i++) printf(" %llu", (unsigned long long)puts[i]);
    printf("\nget %s", label);
    for (int i = 0; i < n; i++) printf(" %llu", (unsigned long long)gets[i]);
    printf("\n");
    return 0;
}

static int hostcall(int n) {
    uint64_t t0 = now();
    for (int i = 0; i < n; i++) spear_abi_version();
    uint64_t t1 = now();
    uint64_t x;
    for (int i = 0; i < n; i++) spear_time_now(SPEAR_CLOCK_MONOTONIC, &x);
    uint64_t t2 = now();
    spear_obj_put("bench/rt", 8, "12345678", 8, SPEAR_ANY_VERSION, NULL);
    char buf[16];
    for (int i = 0; i < n; i++) {
        uint32_t len = sizeof buf;
        spear_obj_get("bench/rt", 8, buf, &len, NULL);
    }
    uint64_t t3 = now();
    printf("bare %llu\nmemory %llu\nobj_get %llu\n", (unsigned long long)((t1 - t0) / n),
           (unsigned long long)((t2 - t1) / n), (unsigned long long)((t3 - t2) / n));
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 5 && argv[1][0] == 'o') return objects(argv[2], (uint32_t)atol(argv[3]), atoi(argv[4]));
    if (argc >= 3 && argv[1][0] == 'h') return hostcall(atoi(argv[2]));
    fprintf(stderr, "usage: objbench objects LABEL SIZE N | hostcall N\n");
    return 2;
}
