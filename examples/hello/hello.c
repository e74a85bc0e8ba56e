/* The bundled example agent: greets, echoes its arguments and environment, and, when
 * a directory is preopened at /data, appends a line to /data/visits.txt.
 *
 * Build (Debian: apt-get install clang lld wasi-libc libclang-rt-dev-wasm32):
 *   clang --target=wasm32-wasi -O2 -o hello.wasm hello.c
 * Run:
 *   spear run hello.wasm world
 *   spear run --dir /tmp/data::/data --env GREETING=Hi hello.wasm world
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
    const char *greeting = getenv("GREETING");
    const char *who = argc > 1 ? argv[1] : "spear";
    printf("%s, %s!\n", greeting ? greeting : "Hello", who);
    for (int i = 2; i < argc; i++) printf("arg[%d] = %s\n", i, argv[i]);

    FILE *f = fopen("/data/visits.txt", "a");
    if (f) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        fprintf(f, "%s visited at %lld\n", who, (long long)ts.tv_sec);
        fclose(f);
        printf("recorded the visit in /data/visits.txt\n");
    }
    return 0;
}
